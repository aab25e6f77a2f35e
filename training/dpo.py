"""DPO's pieces for the one training loop: preference pairs as (prompt, chosen, rejected) token ids, the answer
log-probs of a batch (chosen rows then rejected rows, one forward, as TRL does), the reference log-probs computed
once, and held-out preference metrics. The loss itself is ``training.losses.dpo_loss``."""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import torch

from catalog.attributes import attribute_table
from training import registry
from training.losses import dpo_loss, token_logps


@dataclass
class DPOBatch:
    """``input_ids``/``completion_mask`` [2B, T]: chosen rows, then rejected rows, right-padded; the mask is 1 on
    answer tokens (and their EOS). ``ref_logps`` [2B]: the frozen reference's answer log-probs, same order."""

    input_ids: torch.Tensor
    completion_mask: torch.Tensor
    ref_logps: torch.Tensor
    n_tokens: int
    beta: float = 0.1  # the objective's settings travel with the batch (the loop's loss hook sees only the batch)
    loss_type: str = "sigmoid"
    label_smoothing: float = 0.0

    def to(self, device: torch.device) -> DPOBatch:
        moved = (self.input_ids.to(device), self.completion_mask.to(device), self.ref_logps.to(device))
        return dataclasses.replace(self, input_ids=moved[0], completion_mask=moved[1], ref_logps=moved[2])

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


# ---- the `lake train dpo` stage ----------------------------------------------------------------------------------
REF_LABELER = "ref_logps"  # the preference table's attribute table of reference log-probs: NS.TABLE__ref_logps


def prepare_dpo(cfg, lake, job, template, base_ref):
    """Driver: encode the pairs, then attach each pair's reference log-probs, read from the preference table's
    ``__ref_logps`` attribute table when this reference (model, template, seq_len) already scored them, computed
    (and stored) otherwise: once per reference and snapshot, reused by every later DPO run."""
    from training.data import is_held_out, read_rows, resolve_source
    from training.posttrain import Prepared

    d = job.data
    source = resolve_source(lake, d.table, where=d.where, as_of=d.as_of, text_column="chosen",
                            id_column=d.id_column)  # fmt: skip
    pairs, skipped = [], Counter()
    for row in read_rows(lake, source, ["prompt", "chosen", "rejected"]):
        encoded = encode_preference(template, row["prompt"] or [], row["chosen"], row["rejected"], job.seq_len)
        if isinstance(encoded, str):
            skipped[encoded] += 1
        else:
            pairs.append({"id": str(row[source.id_column])} | encoded)
    reference = job.reference or job.base
    refs, attr_snapshot = stored_reference_logps(cfg, lake, source, reference, template, job.seq_len, pairs)
    for pair in pairs:
        pair["ref"] = refs[pair["id"]]
    train = [p for p in pairs if not is_held_out(p["id"], d.val_fraction)]
    val = [p for p in pairs if is_held_out(p["id"], d.val_fraction)]
    tags = {registry.TAG_REFERENCE: reference,
            TAG_REF_LOGPS: f"{attribute_table(d.table, REF_LABELER)}@{attr_snapshot}"}  # fmt: skip
    return Prepared(train, val, skipped, [source], tags=tags)


TAG_REF_LOGPS = "lake.ref_logps"  # NS.TABLE__ref_logps@SNAPSHOT: the stored reference log-probs a run read


def stored_reference_logps(cfg, lake, source, reference: str, template, seq_len: int, pairs: list[dict]):
    """``{pair id: [chosen, rejected]}`` under the frozen reference for every encoded pair, and the attribute
    table snapshot holding them. Only pairs without a stored value are scored (a new snapshot's pairs); a different
    reference, template or ``seq_len`` (other answers, other truncation) replaces the table."""
    import pyarrow as pa

    from catalog.attributes import ensure_attribute_table, label_state, write_labels
    from catalog.runs import record_run
    from training.checkpoint import load_pretrained
    from training.posttrain import load_base

    ref_ref, ref_dir = load_base(cfg, reference)
    template_json = json.dumps(dataclasses.asdict(template.cfg), sort_keys=True, ensure_ascii=False)
    version = f"{ref_ref.uri} seq_len={seq_len} template={registry.short_digest(template_json)}"
    fields = [pa.field("ref_chosen_logp", pa.float64()), pa.field("ref_rejected_logp", pa.float64())]
    ensure_attribute_table(lake, source.table, REF_LABELER, fields, version)
    ident = attribute_table(source.table, REF_LABELER)
    state = label_state(lake, source.table, REF_LABELER)
    stored: dict[str, list[float]] = {}
    if state.version == version:
        for row in lake.read(ident, columns=("doc_id", "ref_chosen_logp", "ref_rejected_logp")).to_pylist():
            stored[row["doc_id"]] = [row["ref_chosen_logp"], row["ref_rejected_logp"]]
    missing = [p for p in pairs if p["id"] not in stored]
    if missing:
        model, _ = load_pretrained(ref_dir, dtype=torch.float32)
        values = reference_logps(model, missing, template.tok.pad_id)
        rows = pa.table({"doc_id": [p["id"] for p in missing], "ref_chosen_logp": [v[0] for v in values],
                         "ref_rejected_logp": [v[1] for v in values]})  # fmt: skip
        started, run_id = datetime.now(UTC), uuid.uuid4().hex
        snapshot = write_labels(lake, source.table, REF_LABELER, rows, version=version,
                                source_snapshot=source.snapshot_id, run_id=run_id,
                                replace=state.version not in (None, version))  # fmt: skip
        record_run(lake, command="train dpo: reference log-probs", target_table=ident, run_id=run_id,
                   started_at=started, inputs=[], counts={"pairs": len(missing), "reference": ref_ref.uri},
                   snapshot_id=snapshot)  # fmt: skip
        stored.update({p["id"]: v for p, v in zip(missing, values, strict=True)})
    return stored, lake.resolve_snapshot(ident, None)


def dpo_batches(ctx, start: int):
    from training.posttrain import epoch_groups

    job, pad, b = ctx.job, ctx.special["pad"], ctx.job.optim.batch_size
    for group in epoch_groups(ctx, start, lambda items: [items[i : i + b] for i in range(0, len(items) - b + 1, b)]):
        batch = pair_batch(group, pad, [p["ref"] for p in group])
        yield dataclasses.replace(batch, beta=job.beta, loss_type=job.loss, label_smoothing=job.label_smoothing)


def dpo_loss_fn(model, batch: DPOBatch):
    loss, metrics = dpo_batch_loss(model, batch, batch.beta, batch.loss_type, batch.label_smoothing)
    return loss, batch.n_tokens, {f"train/{key}": value for key, value in metrics.items()}


def dpo_validate(model, ctx) -> dict[str, float]:
    val = ctx.plan["val"]
    return preference_metrics(model, val, [p["ref"] for p in val], ctx.special["pad"], ctx.job.beta, ctx.job.loss,
                              device=ctx.device)  # fmt: skip


def dpo_figures(before: dict, after: dict, held_out: int) -> str:
    def f(key: str, metrics: dict) -> str:
        return f"{round(metrics[key], 3) or 0.0:.3f}"  # no "-0.000" for a margin of -1e-9

    margin, accuracy = "val/rewards/margins", "val/rewards/accuracies"
    return (
        f"held-out margin {f(margin, before)} -> {f(margin, after)}, accuracy {f(accuracy, before)} -> "
        f"{f(accuracy, after)} on {held_out} pairs (accuracy counts ties, as at the start, as misses)"
    )


def dpo_stage():
    from training.config import DPOConfig
    from training.posttrain import Stage, build_lm

    return Stage(DPOConfig, prepare_dpo, build_lm, dpo_batches, dpo_loss_fn, dpo_validate, dpo_figures,
                 curves=("train/loss", "val/loss", "val/rewards/margins", "val/rewards/accuracies"),
                 curve_label="loss / margin / accuracy")  # fmt: skip
