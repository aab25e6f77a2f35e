"""Batched sampling with a KV cache: what every post-training stage (best-of-N, PPO, GRPO) and evaluation uses.

Prompts of different lengths are left-padded into one batch (so every row's next token is in the same column);
positions count real tokens only (``cumsum(keep) - 1``, as transformers does) and the attention mask hides the
pads, so a row's outputs do not depend on its neighbours. The prompt is run once (prefill), then one token per
step against the cache; the LM head runs only at the last position. Logits are processed in transformers' order:
temperature, top-k, top-p. A row that emitted EOS keeps emitting ``pad_id`` (as ``generate`` does); the loop ends
when every row is done or after ``max_new_tokens``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from training.model import KVCache, LlamaModel


@dataclass(kw_only=True)
class SamplingConfig:
    max_new_tokens: int = 64
    temperature: float = 1.0  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off (nucleus sampling below 1)

    def problems(self) -> list[str]:
        found = []
        if self.max_new_tokens < 1:
            found.append("sampling.max_new_tokens: must be at least 1")
        if self.temperature < 0 or self.top_k < 0:
            found.append("sampling.temperature and sampling.top_k: must be >= 0")
        if not 0 < self.top_p <= 1:
            found.append("sampling.top_p: must be in (0, 1]")
        return found


@dataclass
class Generated:
    """``sequences`` [B, P + N]: left-padded prompts then completions (``pad_id`` after EOS); ``prompt_len`` = P;
    ``completion_mask`` [B, N]: 1 on generated tokens up to and including EOS; ``prompt_keep`` [B, P]: True on
    real (not padding) prompt tokens."""

    sequences: torch.Tensor
    prompt_len: int
    completion_mask: torch.Tensor
    prompt_keep: torch.Tensor

    @property
    def keep(self) -> torch.Tensor:
        """[B, P + N]: what attention may see (every generated position; pads after EOS are never in a loss)."""
        return torch.cat([self.prompt_keep, torch.ones_like(self.completions, dtype=torch.bool)], dim=1)

    @property
    def completions(self) -> torch.Tensor:
        return self.sequences[:, self.prompt_len :]

    def completion_lists(self) -> list[list[int]]:
        return [row[mask.bool()].tolist() for row, mask in zip(self.completions, self.completion_mask, strict=True)]


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts as one left-padded batch: (ids [B, P], keep [B, P] True on real tokens)."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    keep = torch.zeros((len(prompts), width), dtype=torch.bool)
    for row, prompt in enumerate(prompts):
        if prompt:
            ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            keep[row, width - len(prompt) :] = True
    return ids, keep


def positions_and_mask(keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Position ids counting real tokens only, and the causal mask [B, 1, T, T] that hides pads (each pad may see
    itself: a fully masked row would give NaN; nobody sees a pad)."""
    positions = (keep.long().cumsum(-1) - 1).clamp(min=0)
    T = keep.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=keep.device).tril()
    return positions, (causal & keep[:, None, None, :]) | torch.eye(T, dtype=torch.bool, device=keep.device)


def process_logits(logits: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    """Temperature, then top-k, then top-p (keep the smallest set of tokens whose probability reaches top_p; the
    most likely token always stays)."""
    logits = logits / cfg.temperature
    if cfg.top_k:
        kth = torch.topk(logits, min(cfg.top_k, logits.shape[-1])).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative - sorted_logits.softmax(dim=-1) >= cfg.top_p  # mass before this token already enough
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


@torch.inference_mode()
def sample(
    model: LlamaModel,
    prompts: Sequence[Sequence[int]],
    cfg: SamplingConfig,
    eos_id: int | None,
    pad_id: int,
    generator: torch.Generator | None = None,
) -> Generated:
    """Continue every prompt (token id lists) by up to ``cfg.max_new_tokens`` tokens."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    ids, keep = left_pad(prompts, pad_id)
    ids, keep = ids.to(device), keep.to(device)
    batch, prompt_len = ids.shape
    capacity = prompt_len + cfg.max_new_tokens
    cache = KVCache(model.cfg, batch, capacity, device, model.lm_head.weight.dtype)
    prompt_keep = keep
    keep = torch.cat([keep, torch.ones(batch, cfg.max_new_tokens, dtype=torch.bool, device=device)], dim=1)
    positions = (keep.long().cumsum(-1) - 1).clamp(min=0)
    _, mask = positions_and_mask(prompt_keep)  # prefill
    step_ids, step_positions = ids, positions[:, :prompt_len]
    out = [ids]
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    for step in range(cfg.max_new_tokens):
        hidden = model.model(step_ids, step_positions, mask, cache)
        logits = model.lm_head(hidden[:, -1]).float()
        if cfg.temperature <= 0:
            token = logits.argmax(dim=-1)
        else:
            probs = process_logits(logits, cfg).softmax(dim=-1)
            token = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        token = torch.where(done, torch.full_like(token, pad_id), token)
        out.append(token[:, None])
        if eos_id is not None:
            done |= token == eos_id
            if bool(done.all()):
                break
        end = prompt_len + step + 1
        step_ids, step_positions = token[:, None], positions[:, end - 1 : end]
        mask = keep[:, None, None, :end]
    model.train(was_training)
    sequences = torch.cat(out, dim=1)
    completions = sequences[:, prompt_len:]
    completion_mask = torch.ones_like(completions)
    if eos_id is not None:  # generated tokens up to and including the first EOS
        is_eos = (completions == eos_id).long()
        completion_mask = (is_eos.cumsum(-1) - is_eos == 0).long()
    return Generated(sequences, prompt_len, completion_mask, prompt_keep)


def generate(
    model: LlamaModel,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    eos_id: int | None = None,
    temperature: float = 0.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
    pad_id: int = 0,
) -> torch.Tensor:
    """Tensor-in, tensor-out shortcut over ``sample`` for equal-length prompts [B, T] (smoke tests, examples)."""
    cfg = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k or 0)
    return sample(model, input_ids.tolist(), cfg, eos_id, pad_id, generator).sequences
