"""One training loop for every stage (nanoGPT / torchtitan shape): a stage supplies its loss and its batches,
the loop owns accumulation, clipping, the schedule, precision, validation, checkpoints and throughput figures.

Stage hooks (all plain callables):
- ``loss_fn(model, batch) -> (loss, n_tokens[, metrics])``: the stage's objective on one micro-batch
  (``training.losses``), optionally with the stage's own figures (DPO rewards, PPO KL…), averaged over the
  step's micro-batches;
- ``validate_fn(model) -> dict``: held-out metrics, run every ``eval_every`` steps and at the end;
- ``checkpoint_fn(step, metrics)``: persist model + optimizer + data position (every ``checkpoint_every`` steps
  and at the end);
- ``record_fn(step, metrics)``: every step's metrics (a tracker);
- ``log_fn(step, metrics)``: progress (every ``log_every`` steps).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from training.config import OptimConfig
from training.optim import lr_at

# dense bf16 peak of common accelerators, for MFU (FLOP/s)
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12}

LossFn = Callable[[torch.nn.Module, Any], tuple]


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_BF16_FLOPS.items() if key in name), None)


def autocast_for(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on GPU unless fp32 is asked for; fp32 on CPU unless bf16 is asked for."""
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if use_bf16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@dataclass
class LoopState:
    step: int = 0  # optimizer steps done
    tokens: int = 0  # tokens trained on (this worker)
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass
class Trainer:
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    cfg: OptimConfig
    device: torch.device
    loss_fn: LossFn
    validate_fn: Callable[[torch.nn.Module], dict[str, float]] | None = None
    checkpoint_fn: Callable[[int, dict[str, float]], None] | None = None
    record_fn: Callable[[int, dict[str, float]], None] | None = None
    log_fn: Callable[[int, dict[str, float]], None] | None = None
    flops_per_token: float | None = None
    state: LoopState = field(default_factory=LoopState)

    def run(self, batches: Iterator[Any]) -> LoopState:
        """Train from ``state.step`` to ``cfg.max_steps`` (or until ``batches`` runs out)."""
        cfg = self.cfg
        peak = peak_flops(self.device)
        self.model.train()
        while self.state.step < cfg.max_steps:
            step = self.state.step
            lr = lr_at(step, cfg)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            started = time.perf_counter()
            wait = 0.0
            loss_sum, tokens = 0.0, 0
            stage_metrics: dict[str, float] = {}
            for _ in range(cfg.grad_accum):
                t0 = time.perf_counter()
                batch = next(batches, None)
                wait += time.perf_counter() - t0
                if batch is None:
                    return self._finish("data exhausted")
                with autocast_for(self.device, cfg.precision):
                    loss, n_tokens, *extra = self.loss_fn(self.model, batch)
                (loss / cfg.grad_accum).backward()
                for key, value in (extra[0] if extra else {}).items():
                    stage_metrics[key] = stage_metrics.get(key, 0.0) + float(value) / cfg.grad_accum
                loss_sum += loss.item()
                tokens += n_tokens
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            seconds = time.perf_counter() - started
            self.state.step += 1
            self.state.tokens += tokens
            metrics = {
                "train/loss": loss_sum / cfg.grad_accum,
                "train/lr": lr,
                "train/grad_norm": float(grad_norm),
                "train/tokens_per_s": tokens / seconds,
                "train/data_wait_frac": wait / seconds,
                "train/step_s": seconds,
                "train/tokens": float(self.state.tokens),
                **stage_metrics,
            }
            if peak and self.flops_per_token:
                metrics["train/mfu"] = self.flops_per_token * tokens / seconds / peak
            if not math.isfinite(metrics["train/loss"]):
                raise FloatingPointError(f"loss is {metrics['train/loss']} at step {self.state.step}")
            self._after_step(metrics)
        return self._finish("max_steps")

    def _after_step(self, metrics: dict[str, float]) -> None:
        step, cfg = self.state.step, self.cfg
        last = step >= cfg.max_steps
        if self.validate_fn and (step % cfg.eval_every == 0 or last):
            metrics |= self.validate_fn(self.model)
            self.model.train()
        self.state.history.append({"step": step, **metrics})
        if self.record_fn:
            self.record_fn(step, metrics)
        if self.log_fn and (step % cfg.log_every == 0 or last or step == 1):
            self.log_fn(step, metrics)
        if self.checkpoint_fn and (step % cfg.checkpoint_every == 0 or last):
            self.checkpoint_fn(step, metrics)

    def _finish(self, reason: str) -> LoopState:
        if reason == "data exhausted" and self.checkpoint_fn and self.state.history:
            self.checkpoint_fn(self.state.step, self.state.history[-1])
        return self.state


@torch.no_grad()
def evaluate_windows(
    model: torch.nn.Module, windows: torch.Tensor, batch_size: int, device: torch.device, precision: str
) -> float:
    """Mean next-token negative log-likelihood (nats) over ``windows`` [N, T+1]."""
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(windows), batch_size):
        chunk = windows[start : start + batch_size].to(device)
        with autocast_for(device, precision):
            logits = model(chunk[:, :-1])
        nll = torch.nn.functional.cross_entropy(
            logits.float().reshape(-1, logits.size(-1)), chunk[:, 1:].reshape(-1), reduction="sum"
        )
        total += nll.item()
        count += chunk[:, 1:].numel()
    return total / max(count, 1)
