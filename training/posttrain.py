"""``lake train sft CONFIG.yaml`` and ``lake train reward CONFIG.yaml``: post-training on pinned catalog snapshots
with Ray Train, registered in MLflow with the parent model, the snapshots and the chat template as tags.

- **SFT** reads ``sft.examples`` (``messages``, ``category``) at a pinned snapshot, renders each conversation with
  the chat template (``training.chat``: loss on answers and their EOS only, multi-turn, system prompt per
  category), optionally mixes in a share of pretraining text, packs examples into rows (positions and attention
  reset per example) and fine-tunes the whole model or LoRA adapters (merged into the export).
- **Reward model** reads ``pref.pairs`` (``prompt``, ``chosen``, ``rejected``), puts a scalar head on the SFT (or
  base) backbone, read at the last non-pad token, and trains it with the pairwise loss; held-out pairwise accuracy
  (with its 95% Wilson interval) and mean margin are the metrics.

Both are stages of the one loop (``training.loop.Trainer``): a stage here is a model builder, a batch source, a
loss_fn and a validate_fn. The driver reads and tokenises the (small) tables itself and ships the encoded examples
to the workers with the plan; bad examples are skipped with a reason (``no_assistant_turn``, ``empty_answer``,
``too_long``, ``chosen_equals_rejected``) and the counts go to the run summary, MLflow params and model tags.
Re-running the same config on the same snapshots finds the finished run (run key) and registers nothing new; an
interrupted run resumes from its last checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from catalog.store import Lakehouse
from lake.config import LakeConfig
from lake.errors import LakeError, UsageError
from training import registry, runs
from training.chat import TemplateConfig
from training.config import RewardConfig, SFTConfig, from_dict
from training.data import SnapshotSource, is_held_out, read_rows, resolve_source, row_hash

TAG_TEMPLATE = "lake.template"  # the chat template (JSON) a model was trained with
TAG_SKIPPED = "lake.skipped"  # JSON {reason: count} of examples skipped before training


@dataclass
class PosttrainResult:
    stage: str
    model_uri: str
    run_id: str
    steps: int
    examples: int  # training examples (pairs for a reward model)
    held_out: int
    skipped: dict[str, int]
    before: dict[str, float]  # held-out metrics before training
    after: dict[str, float]
    seconds: float
    already_registered: bool = False
    resumed_from_step: int = 0  # the checkpoint an interrupted run continued from (0: it ran straight through)

    def summary(self) -> str:
        if self.already_registered:
            return f"already trained: {self.model_uri} (run {self.run_id}); nothing to do"
        skipped = ", ".join(f"{n} {reason}" for reason, n in sorted(self.skipped.items())) or "none"
        from training.stages import STAGES

        figures = STAGES[self.stage].figures(self.before, self.after, self.held_out)
        resumed = f", resumed at step {self.resumed_from_step}" if self.resumed_from_step else ""
        return (
            f"{self.stage}: {self.steps} steps on {self.examples} examples in {self.seconds:.1f}s, {figures}; "
            f"skipped: {skipped}; registered {self.model_uri}{resumed}"
        )


# ---- driver ------------------------------------------------------------------------------------------------------
@dataclass
class Prepared:
    """What a stage's driver side hands to the common run: encoded examples, what it read and extra plan items."""

    train: list[dict]
    val: list[dict]
    skipped: Counter
    sources: list[SnapshotSource]
    plan: dict[str, Any] = dataclasses.field(default_factory=dict)  # more worker inputs (frozen models' files…)
    tags: dict[str, str] = dataclasses.field(default_factory=dict)  # more lineage tags


def run_sft(cfg: LakeConfig, job: SFTConfig, progress: bool = True) -> PosttrainResult:
    return run_stage(cfg, job, "sft", progress)


def run_reward(cfg: LakeConfig, job: RewardConfig, progress: bool = True) -> PosttrainResult:
    return run_stage(cfg, job, "reward", progress)


def load_base(cfg: LakeConfig, uri: str):
    """A registered language model (pretrain/SFT/… stage) and its local folder."""
    ref = registry.resolve(cfg, uri)
    if ref.tags.get(registry.TAG_KIND) != "model" or ref.tags.get(registry.TAG_STAGE) == "reward":
        raise UsageError(f"{uri} is not a language model (registered by `lake train pretrain`, `sft`, `dpo`, …)")
    return ref, registry.download(cfg, ref, cfg.home / "cache" / "models")


def template_of(ref) -> TemplateConfig:
    """The chat template a model was fine-tuned with (its tag); the default one for a pretrained base."""
    return from_dict(TemplateConfig, json.loads(ref.tags.get(TAG_TEMPLATE) or "{}"))


def run_stage(
    cfg: LakeConfig, job, stage: str, progress: bool = True, tags: dict[str, str] | None = None
) -> PosttrainResult:
    """The driver of every post-training stage: resolve the base model, let the stage read and encode its data
    (``STAGES[stage].prepare``), find or create the MLflow run (a finished one registers nothing new), train with
    Ray Train and register the result with its lineage tags (and ``tags``: the caller's, e.g. best-of-N's)."""
    from training.chat import ChatTemplate
    from training.tokenizer import load_tokenizer

    started = time.time()
    lake = Lakehouse.from_config(cfg)
    base_ref, base_dir = load_base(cfg, job.base)
    tokenizer = load_tokenizer(base_dir)
    template_cfg = getattr(job, "template", None) or template_of(base_ref)
    template = ChatTemplate(template_cfg, tokenizer)
    from training.stages import STAGES

    stage_fns = STAGES[stage]
    prepared = stage_fns.prepare(cfg, lake, job, template, base_ref)
    train, val, skipped = prepared.train, prepared.val[: job.data.val_max_examples], prepared.skipped
    if not train or not val:
        raise UsageError(
            f"{job.data.table}: {len(train)} training and {len(val)} held-out examples after skipping "
            f"{dict(skipped) or 'nothing'}; widen the predicate, raise seq_len or change data.val_fraction"
        )
    sources = prepared.sources
    snapshots = "-".join(str(s.snapshot_id) for s in sources)
    run_key = f"{job.name}-{job.digest()}-{registry.short_digest(snapshots + base_ref.uri)}"
    tags = stage_tags(template_cfg, stage, sources, base_ref) | prepared.tags | (tags or {})
    tags[TAG_SKIPPED] = json.dumps(dict(sorted(skipped.items())))
    params = job.as_flat_params() | {f"skipped.{k}": v for k, v in skipped.items()}
    params |= {"examples.train": len(train), "examples.held_out": len(val)}
    run_id, finished = runs.find_or_create_run(cfg, run_key, f"{stage} {job.name}", params, tags, sources)
    if finished and (versions := registry.versions_of_run(cfg, run_id)):
        return PosttrainResult(stage, versions[0].uri, run_id, 0, len(train), len(val), dict(skipped), {}, {},
                               0.0, already_registered=True)  # fmt: skip

    from pipelines.ray_env import init_ray

    s = job.scaling
    init_ray(cfg, num_cpus=max(os.cpu_count() or 1, math.ceil(s.num_workers * s.cpus_per_worker)))
    import ray
    from ray.util.queue import Queue

    runs.check_cluster(ray.cluster_resources(), job.scaling, data_cpus=0)
    events = Queue(actor_options={"num_cpus": 0})
    plan = {
        "stage": stage,
        "job": dataclasses.asdict(job),
        "template": dataclasses.asdict(template_cfg),
        "base_files": runs.folder_bytes(base_dir),
        "train": train,
        "val": val,
        "mlflow_uri": cfg.mlflow_uri_effective,
        "run_id": run_id,
        "events": events,
    } | prepared.plan
    trainer = runs.torch_trainer(cfg, posttrain_worker, plan, run_key, job.scaling)
    result, _ = runs.fit_with_progress(trainer, events, job.optim.max_steps, progress, desc=stage)
    mlflow_client = registry.client(cfg)
    if result.error is not None:
        mlflow_client.set_terminated(run_id, status="FAILED")
        raise LakeError(f"training failed: {runs.error_line(result.error)}")
    if result.checkpoint is None:
        raise LakeError("training ended without a checkpoint")
    with result.checkpoint.as_directory() as ckpt:
        state = json.loads((Path(ckpt) / "trainer_state.json").read_text())
        final = state["final_metrics"]
        figures = {k: v for k, v in final.items() if k.startswith("val/")}
        ref = runs.publish_model(cfg, job.name, run_id, Path(ckpt), tags | {"lake.steps": state["step"]} | figures)
    runs.log_loss_curve(mlflow_client, run_id, stage_fns.curves, ylabel=stage_fns.curve_label)
    mlflow_client.set_terminated(run_id, status="FINISHED")
    ray.kill(events.actor)
    return PosttrainResult(stage, ref.uri, run_id, state["step"], len(train), len(val), dict(skipped),
                           state["before"], figures, time.time() - started,
                           resumed_from_step=state.get("resumed_from_step", 0))  # fmt: skip


def stage_tags(template: TemplateConfig, stage: str, sources: list[SnapshotSource], base_ref) -> dict[str, str]:
    """Lineage: the parent model version, its tokenizer, the snapshots read and the chat template."""
    return registry.dataset_tags(sources) | {
        registry.TAG_KIND: "model",
        registry.TAG_STAGE: stage,
        registry.TAG_PARENT: base_ref.uri,
        registry.TAG_TOKENIZER: base_ref.tags.get(registry.TAG_TOKENIZER, ""),
        registry.TAG_COMMIT: registry.code_commit(),
        TAG_TEMPLATE: json.dumps(dataclasses.asdict(template), ensure_ascii=False, sort_keys=True),
    }


def prepare_sft(cfg: LakeConfig, lake: Lakehouse, job: SFTConfig, template, base_ref) -> Prepared:
    d = job.data
    source = resolve_source(lake, d.table, where=d.where, as_of=d.as_of, text_column="messages",
                            id_column=d.id_column)  # fmt: skip
    train, val, skipped = encode_sft(lake, source, template, job.seq_len, d.val_fraction)
    sources = [source]
    if job.mix.fraction > 0 and train:
        m = job.mix
        mix_source = resolve_source(lake, m.table, where=m.where, as_of=m.as_of, text_column=m.text_column)
        sources.append(mix_source)
        train += mix_examples(lake, mix_source, template.tok, job.seq_len, job.mix.fraction, len(train))
    return Prepared(train, val, skipped, sources)


def prepare_reward(cfg: LakeConfig, lake: Lakehouse, job: RewardConfig, template, base_ref) -> Prepared:
    d = job.data
    source = resolve_source(lake, d.table, where=d.where, as_of=d.as_of, text_column="chosen",
                            id_column=d.id_column)  # fmt: skip
    train, val, skipped = encode_pairs(lake, source, template, job.seq_len, d.val_fraction)
    return Prepared(train, val, skipped, [source])


def encode_sft(lake: Lakehouse, source: SnapshotSource, template, seq_len: int, val_fraction: float):
    """Train and held-out examples (dicts of id, ids, mask) and the skip counts by reason."""
    columns = ["messages"] + (["category"] if "category" in source.schema.names else [])
    train, val, skipped = [], [], Counter()
    for row in read_rows(lake, source, columns):
        row_id = str(row[source.id_column])
        encoded = template.encode(row["messages"] or [], row.get("category"), max_len=seq_len)
        if isinstance(encoded, str):
            skipped[encoded] += 1
            continue
        item = {"id": row_id, "ids": encoded.ids, "mask": encoded.mask}
        (val if is_held_out(row_id, val_fraction) else train).append(item)
    return train, val, skipped


def encode_pairs(lake: Lakehouse, source: SnapshotSource, template, seq_len: int, val_fraction: float):
    """Train and held-out pairs (dicts of id, chosen ids, rejected ids) and the skip counts by reason."""
    train, val, skipped = [], [], Counter()
    for row in read_rows(lake, source, ["prompt", "chosen", "rejected"]):
        row_id = str(row[source.id_column])
        encoded = template.encode_pair(row["prompt"] or [], row["chosen"], row["rejected"], max_len=seq_len)
        if isinstance(encoded, str):
            skipped[encoded] += 1
            continue
        chosen, rejected, _ = encoded
        item = {"id": row_id, "chosen": chosen, "rejected": rejected}
        (val if is_held_out(row_id, val_fraction) else train).append(item)
    return train, val, skipped


def mix_examples(lake: Lakehouse, source: SnapshotSource, tokenizer, seq_len: int, fraction: float, n_chat: int):
    """Pretraining text as examples with every token in the loss: documents (BOS … EOS) concatenated and cut into
    ``seq_len`` chunks, enough for ``fraction`` of the training sequences; held-out documents are left out."""
    want = math.ceil(n_chat * fraction / (1 - fraction))
    chunks, stream = [], []
    for row in read_rows(lake, source, [source.text_column]):
        if is_held_out(str(row[source.id_column]), 0.05) or not row[source.text_column]:
            continue
        stream += tokenizer.encode(row[source.text_column], bos=True, eos=True)
        while len(stream) >= seq_len and len(chunks) < want:
            chunk, stream = stream[:seq_len], stream[seq_len:]
            chunks.append({"id": f"mix-{len(chunks)}", "ids": chunk, "mask": [1] * seq_len})
        if len(chunks) >= want:
            break
    return chunks


# ---- worker ------------------------------------------------------------------------------------------------------
@dataclass
class StageContext:
    """What a stage's worker hooks see: the plan, the job, special token ids, this worker's place, the trainable
    module (unwrapped), frozen models the stage loads (``extras``) and the stage's own resumable state."""

    plan: dict[str, Any]
    job: Any
    special: dict[str, int]
    device: torch.device
    rank: int
    world: int
    model: torch.nn.Module
    extras: dict[str, Any] = dataclasses.field(default_factory=dict)
    state: dict[str, Any] = dataclasses.field(default_factory=dict)  # JSON; saved with every checkpoint

    def folder(self, key: str, prefix: str) -> Path:
        """A model folder shipped in the plan (``key``: its files as bytes), written locally once."""
        if key not in self.extras:
            self.extras[key] = runs.write_folder(self.plan[key], prefix)
        return self.extras[key]


def posttrain_worker(plan: dict[str, Any]) -> None:
    """Ray Train's per-worker function for every stage: build, restore, train, checkpoint."""
    import ray.train
    import ray.train.torch
    from safetensors.torch import load_model, save_model

    from training.checkpoint import save_pretrained
    from training.loop import LoopState, Trainer
    from training.optim import build_optimizer
    from training.stages import STAGES
    from training.state import load_training_state, save_training_state

    stage = plan["stage"]
    stage_fns = STAGES[stage]
    job = from_dict(stage_fns.config, plan["job"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if job.scaling.torch_threads:
        torch.set_num_threads(job.scaling.torch_threads)
    base_dir = runs.write_folder(plan["base_files"], "lake-base-")
    # the tokenizer travels with every export; the template lives in the model's tags, not in a jinja file
    tokenizer_files = {k: v for k, v in plan["base_files"].items() if k.startswith(("tokenizer", "special_tokens"))}
    tok_dir = runs.write_folder(tokenizer_files, "lake-tok-")
    model, model_cfg, special = stage_fns.build(base_dir, job, plan)
    resume_dir = runs.restore_checkpoint()
    if resume_dir is not None:
        load_model(model, str(resume_dir / TRAIN_WEIGHTS), strict=True)
    model.to(device)
    train_model = ray.train.torch.prepare_model(model) if world > 1 else model
    optimizer = build_optimizer(model, job.optim, device.type)
    loop_state, saved = LoopState(), {}
    if resume_dir is not None:
        saved = load_training_state(resume_dir, optimizer)
        loop_state = LoopState(step=saved["step"], tokens=saved["tokens"])
    else:
        torch.manual_seed(job.optim.seed + rank)
    stage_ctx = StageContext(plan, job, special, device, rank, world, model, state=saved.get("stage_state") or {})
    if stage_fns.setup is not None:
        stage_fns.setup(stage_ctx)

    start = loop_state.step * job.optim.grad_accum
    batches = (b.to(device) for b in stage_fns.batches(stage_ctx, start))

    def validate(m) -> dict[str, float]:
        return stage_fns.validate(m, stage_ctx)

    metrics_log = runs.MetricsLog(plan["mlflow_uri"], plan["run_id"], rank)
    before = saved.get("before") or {}
    if loop_state.step == 0:
        before = validate(model)
        metrics_log.remember(0, before)

    def checkpoint_fn(step: int, metrics: dict[str, float]) -> None:
        def write(folder: Path) -> None:
            if rank != 0:
                return
            state = {"step": step, "tokens": loop_state.tokens, "before": before, "final_metrics": metrics,
                     "stage_state": stage_ctx.state, "resumed_from_step": saved.get("step", 0)}  # fmt: skip
            save_pretrained(stage_fns.export(model), model_cfg, folder, tok_dir, **special_kwargs(special))
            save_model(model, str(folder / TRAIN_WEIGHTS))  # the trainable module as is (LoRA, critic…): resume
            save_training_state(folder, optimizer, state)
            metrics_log.flush()

        runs.report_checkpoint(step, metrics, write)

    def log_fn(step: int, metrics: dict[str, float]) -> None:
        if rank == 0:
            plan["events"].put_nowait((step, metrics))

    Trainer(
        model=train_model,
        optimizer=optimizer,
        cfg=job.optim,
        device=device,
        loss_fn=stage_fns.loss,
        validate_fn=validate,
        checkpoint_fn=checkpoint_fn,
        record_fn=metrics_log.remember,
        log_fn=log_fn,
        state=loop_state,
    ).run(batches)


TRAIN_WEIGHTS = "train_weights.safetensors"


def merged_export(model: torch.nn.Module) -> torch.nn.Module:
    """LoRA adapters folded in: the same HF layout as the base model."""
    from training.lora import merged

    return merged(model)


def special_kwargs(special: dict[str, int]) -> dict[str, int]:
    return {"bos_token_id": special["bos"], "eos_token_id": special["eos"], "pad_token_id": special["pad"]}


def load_lm(base_dir: Path):
    """The base checkpoint as a trainable fp32 ``LlamaModel``, its config and its special token ids."""
    from training.checkpoint import load_pretrained

    hf = json.loads((base_dir / "config.json").read_text())
    special = {"bos": hf.get("bos_token_id"), "eos": hf.get("eos_token_id"), "pad": hf.get("pad_token_id")}
    lm, model_cfg = load_pretrained(base_dir, dtype=torch.float32)
    return lm, model_cfg, special


def build_lm(base_dir: Path, job, plan: dict):
    """SFT, DPO, GRPO: the LM itself, LoRA-wrapped when the job has ``lora.rank`` > 0."""
    from training.lora import apply_lora

    model, model_cfg, special = load_lm(base_dir)
    lora = getattr(job, "lora", None)
    if lora is not None and lora.rank:
        model = apply_lora(model, lora)
    model.train()
    return model, model_cfg, special


def build_reward(base_dir: Path, job, plan: dict):
    """The base backbone under a fresh scalar head (LoRA-wrapped when ``lora.rank`` > 0; the head always learns)."""
    from training.lora import apply_lora
    from training.model import RewardModel

    lm, model_cfg, special = load_lm(base_dir)
    model = RewardModel(model_cfg, pad_id=special["pad"], seed=job.optim.seed)
    model.model.load_state_dict(lm.model.state_dict())
    if job.lora.rank:
        model = apply_lora(model, job.lora)
        for name, param in model.named_parameters():
            if name.endswith("score.weight"):
                param.requires_grad_(True)
    model.train()
    return model, model_cfg, special


# ---- stages: batches, loss, validation ---------------------------------------------------------------------------
def epoch_order(items: list[dict], seed: int, epoch: int) -> list[dict]:
    """A reproducible shuffle per epoch (seeded hash of each example id)."""
    return sorted(items, key=lambda item: row_hash(item["id"], f"shuffle{seed}-{epoch}"))


def epoch_groups(ctx: StageContext, start: int, groups_of: Callable[[list[dict]], list]) -> Iterator:
    """Micro-batches forever (epoch after epoch, each in its seeded order), this rank's share, skipping the first
    ``start`` (a resume); ``groups_of`` turns one epoch's ordered examples into its micro-batches."""
    index, epoch = 0, 0
    while True:
        for group in groups_of(epoch_order(ctx.plan["train"], ctx.job.optim.seed, epoch))[ctx.rank :: ctx.world]:
            if index >= start:
                yield group
            index += 1
        epoch += 1


def sft_batches(ctx: StageContext, start: int) -> Iterator:
    from training.chat import Encoded, pack_rows, pad_rows, stack_rows

    job, pad, b = ctx.job, ctx.special["pad"], ctx.job.optim.batch_size

    def groups_of(items: list[dict]) -> list:
        examples = [Encoded(it["ids"], it["mask"]) for it in items]
        if job.packing:
            rows = pack_rows(examples, job.seq_len, pad)
            return [stack_rows(rows[i : i + b]) for i in range(0, len(rows) - b + 1, b)]
        return [pad_rows(examples[i : i + b], pad) for i in range(0, len(examples) - b + 1, b)]

    return epoch_groups(ctx, start, groups_of)


def sft_loss_fn(model, batch) -> tuple[torch.Tensor, int]:
    """``sft_loss`` on the batch. Single-process, the LM head runs only at positions whose next token is an
    answer token (the same loss: the other positions carry no loss, so their logits are never needed; TRL's fused
    head does the same), which saves most of the vocabulary-sized work on prompt-heavy batches."""
    from training.losses import IGNORE_INDEX, causal_lm_loss, sft_loss
    from training.model import block_causal_mask

    mask = None if batch.position_ids is None else block_causal_mask(batch.position_ids)
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model  # LoRA: the injected model
    if not hasattr(lm, "lm_head"):  # DDP: the wrapper's forward must run for gradient sync
        return sft_loss(model(batch.input_ids, batch.position_ids, mask), batch.labels), batch.n_tokens
    hidden = lm.model(batch.input_ids, batch.position_ids, mask)[:, :-1]
    targets = batch.labels[:, 1:]
    answer = targets != IGNORE_INDEX
    logits = lm.lm_head(hidden[answer])
    return causal_lm_loss(logits[None], targets[answer][None]), batch.n_tokens


@torch.no_grad()
def sft_validate(model, ctx: StageContext) -> dict[str, float]:
    """Held-out answer loss: mean NLL over every answer token (and its EOS) of the held-out examples."""
    from training.chat import Encoded, pad_rows
    from training.losses import IGNORE_INDEX

    model.eval()
    items, total, count = ctx.plan["val"], 0.0, 0
    for i in range(0, len(items), 16):
        batch = pad_rows([Encoded(it["ids"], it["mask"]) for it in items[i : i + 16]], ctx.special["pad"])
        batch = batch.to(ctx.device)
        logits = model(batch.input_ids)[:, :-1].float()
        targets = batch.labels[:, 1:]
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
        )
        total += nll.item()
        count += int((targets != IGNORE_INDEX).sum())
    model.train()
    return {"val/loss": total / max(count, 1)}


@dataclass
class PairBatch:
    input_ids: torch.Tensor  # [2B, T]: chosen rows, then rejected rows
    margin: float
    n_tokens: int

    def to(self, device) -> PairBatch:
        return PairBatch(self.input_ids.to(device), self.margin, self.n_tokens)


def reward_batches(ctx: StageContext, start: int) -> Iterator:
    from training.chat import pad_pairs

    b = ctx.job.optim.batch_size
    for group in epoch_groups(ctx, start, lambda items: [items[i : i + b] for i in range(0, len(items) - b + 1, b)]):
        pairs = [(it["chosen"], it["rejected"]) for it in group]
        n_tokens = sum(len(c) + len(r) for c, r in pairs)
        yield PairBatch(pad_pairs(pairs, ctx.special["pad"]), ctx.job.margin, n_tokens)


def reward_loss_fn(model, batch: PairBatch) -> tuple[torch.Tensor, int]:
    from training.losses import pairwise_reward_loss

    chosen, rejected = model(batch.input_ids).chunk(2)
    return pairwise_reward_loss(chosen, rejected, batch.margin), batch.n_tokens


@torch.no_grad()
def score_pairs(model, pairs: list[tuple[list[int], list[int]]], pad_id: int, batch_size: int = 32, device="cpu"):
    """(chosen rewards, rejected rewards) of encoded pairs, as two lists, in the pairs' order. Batches are
    length-sorted (little padding) and run without autograd."""
    from training.chat import pad_pairs

    was_training = model.training
    model.eval()
    order = sorted(range(len(pairs)), key=lambda i: max(len(pairs[i][0]), len(pairs[i][1])))
    chosen, rejected = [0.0] * len(pairs), [0.0] * len(pairs)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            c, r = model(pad_pairs([pairs[i] for i in batch], pad_id).to(device)).chunk(2)
            for i, cv, rv in zip(batch, c.tolist(), r.tolist(), strict=True):
                chosen[i], rejected[i] = cv, rv
    model.train(was_training)
    return chosen, rejected


def pair_metrics(chosen: list[float], rejected: list[float], margin: float = 0.0) -> dict[str, float]:
    """Pairwise accuracy (chosen scored above rejected) with its 95% Wilson interval, mean margin, mean loss."""
    from training.losses import pairwise_reward_loss

    n = len(chosen)
    wins = sum(c > r for c, r in zip(chosen, rejected, strict=True))
    low, high = wilson_interval(wins, n)
    c, r = torch.tensor(chosen), torch.tensor(rejected)
    return {
        "val/accuracy": wins / n,
        "val/accuracy_ci_low": low,
        "val/accuracy_ci_high": high,
        "val/margin": float((c - r).mean()),
        "val/loss": float(pairwise_reward_loss(c, r, margin)),
        "val/pairs": float(n),
    }


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion (Wilson 1927): good near 0/1 and for small n."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def reward_validate(model, ctx: StageContext) -> dict[str, float]:
    pairs = [(it["chosen"], it["rejected"]) for it in ctx.plan["val"]]
    chosen, rejected = score_pairs(model, pairs, ctx.special["pad"], device=ctx.device)
    return pair_metrics(chosen, rejected, ctx.job.margin)


def sft_figures(before: dict, after: dict, held_out: int) -> str:
    return f"held-out answer loss {before['val/loss']:.3f} -> {after['val/loss']:.3f}"


def reward_figures(before: dict, after: dict, held_out: int) -> str:
    return (
        f"held-out accuracy {after['val/accuracy']:.3f} [{after['val/accuracy_ci_low']:.3f}, "
        f"{after['val/accuracy_ci_high']:.3f}] on {held_out} pairs, mean margin {after['val/margin']:.3f}"
    )


@dataclass(frozen=True)
class Stage:
    """A post-training stage for the one driver (``run_stage``) and the one worker (``posttrain_worker``)."""

    config: type
    prepare: Callable[..., Prepared]  # driver: read and encode the data (cfg, lake, job, template, base_ref)
    build: Callable  # worker: (base_dir, job, plan) -> (trainable module, model config, special ids)
    batches: Callable[[StageContext, int], Iterator]
    loss: Callable  # (model, batch) -> (loss, n_tokens[, metrics])
    validate: Callable[[torch.nn.Module, StageContext], dict[str, float]]
    figures: Callable[[dict, dict, int], str]  # the summary line's held-out figures (before, after, held out)
    export: Callable[[torch.nn.Module], torch.nn.Module] = merged_export  # what is registered
    setup: Callable[[StageContext], None] | None = None  # worker: load frozen models, restore stage state
    curves: tuple[str, ...] = ("train/loss", "val/loss")  # loss.png
    curve_label: str = "loss"


SFT = Stage(SFTConfig, prepare_sft, build_lm, sft_batches, sft_loss_fn, sft_validate, sft_figures)
REWARD = Stage(
    RewardConfig, prepare_reward, build_reward, reward_batches, reward_loss_fn, reward_validate, reward_figures,
    curves=("train/loss", "val/loss", "val/accuracy"), curve_label="loss / accuracy",
)  # fmt: skip


# ---- evaluation --------------------------------------------------------------------------------------------------
def eval_pairs(cfg: LakeConfig, model_uri: str, table: str, where: str | None = None, as_of: str | None = None):
    """``lake eval RM --suite pairs``: score every pair of a preference table with a registered reward model,
    using the chat template it was trained with. Returns ``{"n", "accuracy", "ci95", "mean_margin", "skipped"}``."""
    from training.chat import ChatTemplate, TemplateConfig
    from training.checkpoint import load_reward_model
    from training.tokenizer import load_tokenizer

    ref = registry.resolve(cfg, model_uri)
    if ref.tags.get(registry.TAG_STAGE) != "reward":
        raise UsageError(f"{model_uri} is not a reward model (registered by `lake train reward`)")
    folder = registry.download(cfg, ref, cfg.home / "cache" / "models")
    model, model_cfg = load_reward_model(folder)
    template = ChatTemplate(from_dict(TemplateConfig, json.loads(ref.tags.get(TAG_TEMPLATE, "{}"))),
                            load_tokenizer(folder))  # fmt: skip
    source = resolve_source(Lakehouse.from_config(cfg), table, where=where, as_of=as_of, text_column="chosen")
    pairs, skipped = [], Counter()
    for row in read_rows(Lakehouse.from_config(cfg), source, ["prompt", "chosen", "rejected"]):
        encoded = template.encode_pair(row["prompt"] or [], row["chosen"], row["rejected"], model_cfg.max_seq_len)
        if isinstance(encoded, str):
            skipped[encoded] += 1
        else:
            pairs.append(encoded[:2])
    if not pairs:
        raise UsageError(f"no pair of {table} can be scored (skipped: {dict(skipped)})")
    chosen, rejected = score_pairs(model, pairs, model.pad_id)
    m = pair_metrics(chosen, rejected)
    return {
        "n": len(pairs),
        "accuracy": m["val/accuracy"],
        "ci95": [m["val/accuracy_ci_low"], m["val/accuracy_ci_high"]],
        "mean_margin": m["val/margin"],
        "skipped": dict(sorted(skipped.items())),
        "model": ref.uri,
        "table": table,
        "snapshot_id": source.snapshot_id,
    }
