"""Every training objective as its formula: pure tensor functions, tested without a model.

Later stages (SFT, reward model, DPO, PPO, GRPO) add theirs here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def causal_lm_loss(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Mean next-token negative log-likelihood: -1/N · Σ log p(y_t | x_<t) over targets != ignore_index.

    ``logits`` [B, T, V] are already aligned with ``targets`` [B, T] (the caller shifts by one).
    """
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=ignore_index)
