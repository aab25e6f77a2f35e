"""What PPO and GRPO share: per-token log-probs of sampled completions, computed exactly as they were sampled
(left-padded prompts, positions over real tokens), so a policy's log-probs right after sampling equal the
sampler's. The losses are in ``training.losses`` (``grpo_loss``, ``clipped_policy_loss``, ``gae``, …)."""

from __future__ import annotations

import torch

from training.generation import Generated, positions_and_mask
from training.losses import token_logps


def completion_hidden(model: torch.nn.Module, generated: Generated) -> torch.Tensor:
    """Last hidden states at the positions that predict each completion token: [B, N, dim]."""
    positions, mask = positions_and_mask(generated.keep)
    hidden = model.model(generated.sequences, positions, mask)
    return hidden[:, generated.prompt_len - 1 : -1]


def completion_logps(model: torch.nn.Module, generated: Generated) -> torch.Tensor:
    """log π(y_t | x, y_<t) of every completion token: [B, N] (read only where ``completion_mask`` is 1)."""
    logits = model.lm_head(completion_hidden(model, generated))
    return token_logps(logits, generated.completions)
