"""AdamW with decoupled weight decay on matrices only, and the learning-rate schedules.

Schedules are pure functions of the step so a resumed run computes exactly the rate it would have had.
- cosine: linear warmup, then cosine from ``lr`` down to ``min_lr_ratio * lr`` at ``max_steps``.
- wsd (warmup-stable-decay, MiniCPM / DeepSeek style): warmup, constant ``lr``, then a linear decay to the
  minimum over the last ``decay_fraction`` of steps; a checkpoint from the stable phase can be continued.
- constant: warmup, then ``lr``.
"""

from __future__ import annotations

import math

import torch

from training.config import OptimConfig


def lr_at(step: int, cfg: OptimConfig) -> float:
    """Learning rate for optimizer step ``step`` (0-based)."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    min_lr = cfg.lr * cfg.min_lr_ratio
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "cosine":
        span = max(1, cfg.max_steps - cfg.warmup_steps)
        progress = min(1.0, (step - cfg.warmup_steps) / span)
        return min_lr + 0.5 * (cfg.lr - min_lr) * (1 + math.cos(math.pi * progress))
    # wsd
    decay_steps = max(1, int(round(cfg.max_steps * cfg.decay_fraction)))
    decay_start = cfg.max_steps - decay_steps
    if step < decay_start:
        return cfg.lr
    progress = min(1.0, (step - decay_start) / decay_steps)
    return cfg.lr - (cfg.lr - min_lr) * progress


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig, device_type: str) -> torch.optim.AdamW:
    """Weight decay on 2-D weights (matmuls, embeddings), none on norms; fused AdamW on GPU."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.dim() >= 2 else no_decay).append(param)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    extra = {"fused": True} if device_type == "cuda" else {}
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), **extra)
