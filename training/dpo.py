"""DPO's pieces for the one training loop: preference pairs as (prompt, chosen, rejected) token ids, the answer
log-probs of a batch (chosen rows then rejected rows, one forward, as TRL does), the reference log-probs computed
once, and held-out preference metrics. The loss itself is ``training.losses.dpo_loss``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from training.losses import dpo_loss, token_logps


@dataclass
class DPOBatch:
    """``input_ids``/``completion_mask`` [2B, T]: chosen rows, then rejected rows, right-padded; the mask is 1 on
    answer tokens (and their EOS). ``ref_logps`` [2B]: the frozen reference's answer log-probs, same order."""

    input_ids: torch.Tensor
    completion_mask: torch.Tensor
    ref_logps: torch.Tensor
    n_tokens: int

    def to(self, device: torch.device) -> DPOBatch:
        return DPOBatch(self.input_ids.to(device), self.completion_mask.to(device), self.ref_logps.to(device),
                        self.n_tokens)  # fmt: skip

    @property
    def answer_tokens(self) -> torch.Tensor:
        """Answer lengths [2B] (IPO divides each side's log-ratio by them)."""
        return self.completion_mask.sum(-1)


def encode_preference(template, prompt: Sequence[dict], chosen: str, rejected: str, max_len: int) -> dict | str:
    """A pair as ``{"prompt": ids, "chosen": answer ids, "rejected": answer ids}`` (answers end with EOS), or the
    reason it is skipped (``training.chat.ChatTemplate.encode_pair``'s)."""
    encoded = template.encode_pair(prompt, chosen, rejected, max_len=max_len)
    if isinstance(encoded, str):
        return encoded
    full_chosen, full_rejected, dropped = encoded
    prompt_ids = template.prompt(prompt[dropped:])
    return {"prompt": prompt_ids, "chosen": full_chosen[len(prompt_ids) :],
            "rejected": full_rejected[len(prompt_ids) :]}  # fmt: skip


def pair_batch(pairs: Sequence[dict], pad_id: int, ref_logps: Sequence[Sequence[float]] | None = None) -> DPOBatch:
    """Pairs (``encode_preference`` dicts) as one batch; ``ref_logps``: one (chosen, rejected) per pair."""
    rows = [p["prompt"] + p["chosen"] for p in pairs] + [p["prompt"] + p["rejected"] for p in pairs]
    answers = [len(p["chosen"]) for p in pairs] + [len(p["rejected"]) for p in pairs]
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, (row, answer) in enumerate(zip(rows, answers, strict=True)):
        ids[i, : len(row)] = row
        mask[i, len(row) - answer : len(row)] = 1
    refs = (
        torch.zeros(len(rows))
        if ref_logps is None
        else torch.tensor([r[0] for r in ref_logps] + [r[1] for r in ref_logps])
    )
    return DPOBatch(torch.from_numpy(ids), torch.from_numpy(mask), refs.float(), sum(len(r) for r in rows))


def answer_logps(model: torch.nn.Module, input_ids: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    """Σ log π(answer token | everything before it) per row [2B]. The LM head runs only where the next token is
    an answer token (the same sum; most of a pair is prompt), unless the model is wrapped (DDP, whose forward
    must run for gradient sync)."""
    targets, answer = input_ids[:, 1:], completion_mask[:, 1:].bool()
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not hasattr(lm, "lm_head"):
        logits = model(input_ids)[:, :-1]
        return (token_logps(logits, targets) * answer).sum(-1)
    hidden = lm.model(input_ids)[:, :-1]
    logits = lm.lm_head(hidden[answer])  # [answer tokens, V]
    logps = token_logps(logits[None], targets[answer][None])[0]
    rows = torch.arange(len(input_ids), device=input_ids.device)[:, None].expand_as(answer)[answer]
    return torch.zeros(len(input_ids), device=input_ids.device, dtype=logps.dtype).index_add(0, rows, logps)


def dpo_batch_loss(model, batch: DPOBatch, beta: float, loss_type: str, label_smoothing: float = 0.0):
    """(loss, metrics) of one batch: ``dpo_loss`` on the policy's and the stored reference's answer log-probs."""
    policy = answer_logps(model, batch.input_ids, batch.completion_mask)
    chosen, rejected = policy.chunk(2)
    ref_chosen, ref_rejected = batch.ref_logps.chunk(2)
    chosen_tokens, rejected_tokens = batch.answer_tokens.chunk(2)
    return dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta, loss_type, label_smoothing, chosen_tokens,
                    rejected_tokens)  # fmt: skip


@torch.no_grad()
def reference_logps(model, pairs: Sequence[dict], pad_id: int, batch_size: int = 16, device="cpu") -> list[list[float]]:
    """(chosen, rejected) answer log-probs of every pair under ``model`` (the frozen reference), computed once."""
    was_training = model.training
    model.eval()
    out: list[list[float]] = []
    for start in range(0, len(pairs), batch_size):
        batch = pair_batch(pairs[start : start + batch_size], pad_id).to(device)
        chosen, rejected = answer_logps(model, batch.input_ids, batch.completion_mask).chunk(2)
        out += [[c, r] for c, r in zip(chosen.tolist(), rejected.tolist(), strict=True)]
    model.train(was_training)
    return out


@torch.no_grad()
def preference_metrics(model, pairs: Sequence[dict], refs, pad_id: int, beta: float, loss_type: str,
                       device="cpu") -> dict[str, float]:  # fmt: skip
    """Held-out DPO metrics: the loss, implicit rewards of chosen and rejected, their margin (β × the
    chosen-minus-rejected log-ratio) and the pairwise accuracy, averaged over pairs."""
    was_training = model.training
    model.eval()
    sums: dict[str, float] = {}
    for start in range(0, len(pairs), 16):
        chunk = pairs[start : start + 16]
        batch = pair_batch(chunk, pad_id, refs[start : start + 16]).to(device)
        loss, metrics = dpo_batch_loss(model, batch, beta, loss_type)
        for key, value in {"loss": loss, **metrics}.items():
            sums[key] = sums.get(key, 0.0) + float(value) * len(chunk)
    model.train(was_training)
    return {f"val/{key}": value / max(len(pairs), 1) for key, value in sums.items()}
