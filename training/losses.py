"""Every training objective as its formula: pure tensor functions, tested without a model.

Each stage's loss lives here (pretraining, SFT, reward model; DPO and PPO join them), each written as the
paper's formula. ``tests/training/test_losses_trl.py`` checks the SFT and reward losses against TRL's trainers on
the same checkpoint and batch.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def causal_lm_loss(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Mean next-token negative log-likelihood: -1/N · Σ log p(y_t | x_<t) over targets != ignore_index.

    ``logits`` [B, T, V] are already aligned with ``targets`` [B, T] (the caller shifts by one).
    """
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=ignore_index)


def sft_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Supervised fine-tuning on answers only (InstructGPT, Ouyang et al. 2022, §3.5; the loss of TRL's
    ``SFTTrainer`` with ``assistant_only_loss``):

        L = -1/|A| · Σ_{t ∈ A} log p(x_t | x_<t),   A = positions whose label is an answer token

    ``labels`` [B, T] are aligned with the inputs (HF convention): ``labels[t] = input_ids[t]`` on assistant tokens
    (the EOS that ends each answer included), ``ignore_index`` on prompt, template and padding tokens. The shift
    happens here: logits at t predict label t+1.
    """
    return causal_lm_loss(logits[:, :-1], labels[:, 1:], ignore_index)


def pairwise_reward_loss(
    chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | float = 0.0
) -> torch.Tensor:
    """Bradley–Terry pairwise ranking loss of a reward model (InstructGPT eq. 1; the margin of Llama 2, Touvron
    et al. 2023, eq. 2; TRL ``RewardTrainer``):

        L = -E[ log σ(r(x, y_chosen) - r(x, y_rejected) - m) ]

    ``chosen``/``rejected``: rewards [B]; ``margin``: scalar or [B] (0: plain Bradley–Terry).
    """
    return -F.logsigmoid(chosen.float() - rejected.float() - margin).mean()


def ranking_reward_loss(rewards: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """K-wise ranking loss (InstructGPT eq. 1): each prompt's K responses ranked best first give C(K, 2)
    comparisons, all averaged:

        L = -1/C(K,2) · E_x[ Σ_{i<j} log σ(r(x, y_i) - r(x, y_j) - m) ]

    ``rewards`` [B, K] in rank order (column 0 best). K = 2 is ``pairwise_reward_loss``.
    """
    k = rewards.shape[-1]
    if k < 2:
        raise ValueError(f"a ranking needs at least 2 responses per prompt, got {k}")
    better, worse = zip(*itertools.combinations(range(k), 2), strict=True)
    diffs = rewards[:, list(better)].float() - rewards[:, list(worse)].float()  # [B, C(K,2)]
    return -F.logsigmoid(diffs - margin).mean()
