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


# ---- preference optimisation: DPO and its variants -------------------------------------------------------------
def sequence_logps(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Σ_t log p(y_t | x, y_<t) over the masked completion tokens of each row: [B]. ``logits`` [B, T, V] are
    aligned with ``targets``/``mask`` [B, T] (already shifted)."""
    return (token_logps(logits, targets) * mask).sum(-1)


def token_logps(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target_t) at each position, [B, T] (fp32). Positions with an ignored target (-100) read token 0;
    callers mask them."""
    logp = logits.float().log_softmax(-1)
    return logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)


def _dpo_sigmoid(chosen: torch.Tensor, rejected: torch.Tensor, c_len, r_len, beta: float, eps: float):
    """DPO (Rafailov et al. 2023, eq. 7), with conservative-DPO label smoothing ε (0: plain DPO):
    L = -(1-ε) log σ(β h) - ε log σ(-β h),  h = chosen log-ratio - rejected log-ratio."""
    h = chosen - rejected
    return -(1 - eps) * F.logsigmoid(beta * h) - eps * F.logsigmoid(-beta * h)


def _dpo_hinge(chosen: torch.Tensor, rejected: torch.Tensor, c_len, r_len, beta: float, eps: float):
    """SLiC-style hinge (Zhao et al. 2023): L = max(0, 1 - β h)."""
    return torch.relu(1 - beta * (chosen - rejected))


def _dpo_ipo(chosen: torch.Tensor, rejected: torch.Tensor, c_len, r_len, beta: float, eps: float):
    """IPO (Azar et al. 2023, eq. 17) with τ = β on per-token log-ratios (each side divided by its answer length,
    as TRL and the IPO authors do): L = (chosen/|y_w| - rejected/|y_l| - 1/(2τ))²."""
    return (chosen / c_len.clamp(min=1) - rejected / r_len.clamp(min=1) - 1 / (2 * beta)) ** 2


DPO_LOSSES = {"sigmoid": _dpo_sigmoid, "hinge": _dpo_hinge, "ipo": _dpo_ipo}


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    chosen_tokens: torch.Tensor | None = None,
    rejected_tokens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Direct preference optimisation against a frozen reference. With sequence log-probs [B]

        h = (log π(y_w|x) - log π_ref(y_w|x)) - (log π(y_l|x) - log π_ref(y_l|x))

    the loss is ``DPO_LOSSES[loss_type]`` averaged over pairs (IPO also needs the answer lengths ``chosen_tokens``,
    ``rejected_tokens`` [B]). Metrics (TRL's names): implicit rewards
    β·(log π - log π_ref) of chosen and rejected, their margin, and the accuracy (chosen reward above rejected).
    """
    if loss_type not in DPO_LOSSES:
        raise ValueError(f"unknown DPO loss {loss_type!r}; choose one of {', '.join(DPO_LOSSES)}")
    chosen_ratio = policy_chosen.float() - ref_chosen.float()
    rejected_ratio = policy_rejected.float() - ref_rejected.float()
    ones = torch.ones_like(chosen_ratio)
    c_len = ones if chosen_tokens is None else chosen_tokens.to(chosen_ratio.dtype)
    r_len = ones if rejected_tokens is None else rejected_tokens.to(chosen_ratio.dtype)
    losses = DPO_LOSSES[loss_type](chosen_ratio, rejected_ratio, c_len, r_len, beta, label_smoothing)
    chosen_rewards, rejected_rewards = beta * chosen_ratio.detach(), beta * rejected_ratio.detach()
    metrics = {
        "rewards/chosen": chosen_rewards.mean(),
        "rewards/rejected": rejected_rewards.mean(),
        "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean(),
    }
    return losses.mean(), metrics


# ---- RL from a reward model: PPO and GRPO -----------------------------------------------------------------------
def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(x - mean) / std over the masked entries (advantage normalisation)."""
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    return whitened if shift_mean else whitened + mean


def kl_penalised_rewards(
    score: torch.Tensor,
    logps: torch.Tensor,
    ref_logps: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards of RLHF PPO (Ziegler et al. 2019; InstructGPT eq. 2; DeepSpeed-Chat
    ``compute_rewards``): r_t = -β (log π(y_t) - log π_ref(y_t)), plus the sequence score on its last token.
    Returns (rewards [B, N], per-token KL estimate k1 [B, N]); ``mask`` [B, N] marks completion tokens."""
    kl = (logps - ref_logps) * mask
    rewards = -kl_coef * kl
    last = mask.long().cumsum(-1).argmax(-1)  # index of each row's last completion token
    rewards[torch.arange(len(score)), last] += score
    return rewards * mask, kl


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, eq. 16), over each row's completion tokens:

        δ_t = r_t + γ V_{t+1} - V_t,   A_t = δ_t + γλ A_{t+1},   A and V_{t+1} = 0 after the last token

    Returns (advantages, returns = A + V), both [B, N] and zero outside ``mask``."""
    mask = mask.to(values.dtype)
    advantages = torch.zeros_like(values)
    next_value = torch.zeros_like(values[:, 0])
    next_advantage = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = (delta + gamma * lam * next_advantage) * mask[:, t]
        advantages[:, t] = advantage
        next_value = values[:, t] * mask[:, t]
        next_advantage = advantage
    return advantages, (advantages + values) * mask


def clipped_policy_loss(
    logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip: float = 0.2
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate (Schulman et al. 2017, eq. 7), per token:
    L = E_t[ max(-A_t ρ_t, -A_t clip(ρ_t, 1-ε, 1+ε)) ],  ρ_t = π(y_t)/π_old(y_t). Returns (loss, clip fraction)."""
    ratio = torch.exp(logps - old_logps)
    unclipped, clipped = -advantages * ratio, -advantages * ratio.clamp(1 - clip, 1 + clip)
    return masked_mean(torch.max(unclipped, clipped), mask), masked_mean((clipped > unclipped).float(), mask)


def clipped_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip: float = 0.2
) -> torch.Tensor:
    """The critic's clipped regression (PPO2 / DeepSpeed-Chat ``critic_loss_fn``):
    L = ½ E_t[ max((V_t - R_t)², (clip(V_t, V_old ± ε) - R_t)²) ]."""
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    return 0.5 * masked_mean(torch.max((values - returns) ** 2, (clipped - returns) ** 2), mask)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """H = -Σ_v p_v log p_v per position."""
    logp = logits.float().log_softmax(-1)
    return -(logp.exp() * logp).sum(-1)


def ptx_loss(logits: torch.Tensor, targets: torch.Tensor, coef: float) -> torch.Tensor:
    """InstructGPT's PPO-ptx term (eq. 2, γ E_{x~D_pretrain}[log π(x)]) as a loss: γ · next-token NLL."""
    return coef * causal_lm_loss(logits[:, :-1], targets[:, 1:])


class AdaptiveKLController:
    """Ziegler et al. 2019 (§2.2): β ← β (1 + clip(KL/target - 1, -0.2, 0.2) · n/horizon); a fixed β when
    ``target`` is None."""

    def __init__(self, init_coef: float, target: float | None = None, horizon: int = 10000) -> None:
        self.value, self.target, self.horizon = init_coef, target, horizon

    def update(self, current_kl: float, n_steps: int) -> float:
        if self.target is not None:
            error = max(-0.2, min(0.2, current_kl / self.target - 1))
            self.value *= 1 + error * n_steps / self.horizon
        return self.value


def group_advantages(scores: torch.Tensor, group_size: int, scale: bool = True) -> torch.Tensor:
    """GRPO (Shao et al. 2024, §4.1.2): each completion's score relative to its prompt's G samples,
    A_i = (r_i - mean(r_group)) / (std(r_group) + 1e-4) (TRL's ε; ``scale=False``: Dr. GRPO, no division).
    ``scores`` [B·G] grouped consecutively."""
    grouped = scores.float().view(-1, group_size)
    advantages = grouped - grouped.mean(-1, keepdim=True)
    if scale:
        advantages = advantages / (grouped.std(-1, keepdim=True) + 1e-4)
    return advantages.flatten()


def grpo_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    ref_logps: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    beta: float = 0.0,
    clip: float = 0.2,
    clip_high: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GRPO's objective (Shao et al. 2024, eq. 3) per token, with the sequence advantage on every token and the
    KL to the reference by the k3 estimator (Schulman 2020): D = π_ref/π - log(π_ref/π) - 1 ≥ 0,

        ℓ_t = -min(ρ_t A, clip(ρ_t, 1-ε, 1+ε_high) A) + β D_t,   L = Σ_t ℓ_t / Σ_t 1  (token-level mean, DAPO)

    ``logps``/``old_logps``/``ref_logps``/``mask`` [B, N], ``advantages`` [B]."""
    ratio = torch.exp(logps - old_logps)
    adv = advantages[:, None]
    clipped_ratio = ratio.clamp(1 - clip, 1 + (clip if clip_high is None else clip_high))
    per_token = -torch.min(ratio * adv, clipped_ratio * adv)
    metrics: dict[str, torch.Tensor] = {}
    if beta and ref_logps is not None:
        kl = torch.exp(ref_logps - logps) - (ref_logps - logps) - 1
        per_token = per_token + beta * kl
        metrics["kl"] = masked_mean(kl.detach(), mask)
    metrics["clip_ratio"] = masked_mean(((ratio != clipped_ratio) & (adv != 0)).float(), mask)
    return masked_mean(per_token, mask), metrics
