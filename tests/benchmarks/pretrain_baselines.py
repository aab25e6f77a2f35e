"""Baselines for the pretraining benchmark (tests/benchmarks/pretrain.py): a minimal nanoGPT-style loop over
pre-tokenised tensors in memory, run once with our model and once with `transformers.LlamaForCausalLM` of the same
config. Same seed, same initial weights, same batches, same optimizer: only the model implementation differs.

Library code: importing this module does nothing; call the functions.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from training.checkpoint import config_to_hf
from training.model import LlamaModel, ModelConfig


def make_batches(
    tokens: torch.Tensor, seq_len: int, batch_size: int, n_batches: int, seed: int = 0
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """n_batches (inputs, targets) pairs [batch_size, seq_len] at seeded random offsets of a 1-D token tensor."""
    if tokens.ndim != 1 or tokens.numel() <= seq_len + 1:
        raise ValueError(f"need a 1-D token tensor longer than seq_len + 1 = {seq_len + 1}, got {tuple(tokens.shape)}")
    gen = torch.Generator().manual_seed(seed)
    tokens = tokens.long()
    batches = []
    for _ in range(n_batches):
        starts = torch.randint(0, tokens.numel() - seq_len - 1, (batch_size,), generator=gen)
        window = torch.stack([tokens[s : s + seq_len + 1] for s in starts.tolist()])
        batches.append((window[:, :-1].contiguous(), window[:, 1:].contiguous()))
    return batches


def _timed_loop(
    model: torch.nn.Module,
    logits_fn: Callable[[torch.Tensor], torch.Tensor],
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    warmup_steps: int,
    lr: float,
) -> dict:
    """AdamW steps over the batches; the clock starts after warmup_steps."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    model.train()
    loss = torch.tensor(float("nan"))
    step_times = []
    t0 = time.perf_counter()
    for step, (x, y) in enumerate(batches):
        if step == warmup_steps:
            t0 = time.perf_counter()
        started = time.perf_counter()
        logits = logits_fn(x)
        loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), y.view(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step >= warmup_steps:
            step_times.append(time.perf_counter() - started)
    elapsed = time.perf_counter() - t0
    timed = len(batches) - warmup_steps
    tokens = timed * batches[0][0].numel()
    return {
        "tokens_per_s": tokens / elapsed,
        "step_s": elapsed / timed,
        "step_times": step_times,
        "tokens_per_step": batches[0][0].numel(),
        "final_loss": float(loss.item()),
    }


def _check(steps: int, warmup_steps: int) -> None:
    if steps < 1 or warmup_steps < 0:
        raise ValueError(f"need steps >= 1 and warmup_steps >= 0, got {steps}, {warmup_steps}")


def hf_llama(cfg: ModelConfig, seed: int = 0) -> torch.nn.Module:
    """transformers.LlamaForCausalLM of cfg (sdpa attention), same initial weights as LlamaModel(cfg, seed)."""
    import transformers

    hf_cfg = {k: v for k, v in config_to_hf(cfg).items() if k not in ("model_type", "dtype", "rope_theta")}
    config = transformers.LlamaConfig(**hf_cfg)
    config._attn_implementation = "sdpa"
    model = transformers.LlamaForCausalLM(config)
    model.load_state_dict(LlamaModel(cfg, seed=seed).state_dict(), strict=True)
    return model


def loop_tokens_per_s(
    implementation: str,
    cfg: ModelConfig,
    tokens: torch.Tensor,
    seq_len: int,
    batch_size: int,
    steps: int,
    warmup_steps: int = 2,
    lr: float = 3e-4,
    seed: int = 0,
) -> dict:
    """The same fp32 single-process loop over the same batches with ``implementation`` "ours" (LlamaModel) or "hf"
    (transformers' LlamaForCausalLM, sdpa, no KV cache): {"tokens_per_s", "step_s", "final_loss"}."""
    _check(steps, warmup_steps)
    batches = make_batches(tokens, seq_len, batch_size, warmup_steps + steps, seed)
    torch.manual_seed(seed)
    if implementation == "hf":
        model = hf_llama(cfg, seed)
        return _timed_loop(model, lambda x: model(input_ids=x, use_cache=False).logits, batches, warmup_steps, lr)
    model = LlamaModel(cfg, seed=seed)
    return _timed_loop(model, model, batches, warmup_steps, lr)


def plain_loop_tokens_per_s(cfg: ModelConfig, tokens: torch.Tensor, seq_len: int, batch_size: int, steps: int,
                            **kwargs) -> dict:  # fmt: skip
    """Our LlamaModel in the plain loop (the nanoGPT baseline)."""
    return loop_tokens_per_s("ours", cfg, tokens, seq_len, batch_size, steps, **kwargs)


def hf_loop_tokens_per_s(cfg: ModelConfig, tokens: torch.Tensor, seq_len: int, batch_size: int, steps: int,
                         **kwargs) -> dict:  # fmt: skip
    """transformers' LlamaForCausalLM in the same loop."""
    return loop_tokens_per_s("hf", cfg, tokens, seq_len, batch_size, steps, **kwargs)
