"""``lake train pretrain CONFIG.yaml``: a Llama-style model pretrained on a pinned catalog snapshot with Ray Train.

Driver (``run_pretrain``): pin the snapshot and plan its files, fetch the registered tokenizer, open (or reopen)
the MLflow run, build the Ray datasets, run ``TorchTrainer`` while showing progress, then log the final checkpoint
and register it with lineage tags. Workers (``train_worker``): restore from Ray Train's latest checkpoint if there
is one (model, optimizer, RNG, data position), then run ``training.loop.Trainer`` on packed token windows.

Re-running the same command resumes: the run key (config digest + snapshot) names both the Ray Train run, which
Ray Train V2 resumes from its storage, and the MLflow run, which continues without repeated or missing steps.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from catalog.store import Lakehouse
from lake.config import LakeConfig
from lake.errors import LakeError, UsageError
from training import registry, runs
from training.config import PretrainConfig, from_dict
from training.data import DataPosition, SnapshotSource, resolve_mix_sources, resolve_source


@dataclass
class PretrainResult:
    model_uri: str
    run_id: str
    steps: int
    tokens: int
    seconds: float
    val_ppl_before: float | None
    val_ppl_after: float | None
    val_bpb_after: float | None
    tokens_per_s: float | None
    data_wait_frac: float | None
    resumed_from_step: int
    already_registered: bool = False

    def summary(self) -> str:
        if self.already_registered:
            return f"already trained: {self.model_uri} (run {self.run_id}); nothing to do"
        ppl = "no validation"
        if self.val_ppl_after:
            ppl = f"val ppl {self.val_ppl_before:.1f} -> {self.val_ppl_after:.1f}, {self.val_bpb_after:.3f} bits/byte"
        resumed = f", resumed at step {self.resumed_from_step}" if self.resumed_from_step else ""
        return (
            f"{self.steps} steps, {self.tokens:,} tokens in {self.seconds:.1f}s "
            f"({self.tokens_per_s or 0:,.0f} tokens/s per training step, median), {ppl}, registered "
            f"{self.model_uri}{resumed}"
        )


# ---- driver ---------------------------------------------------------------------------------------------------
def run_pretrain(cfg: LakeConfig, job: PretrainConfig, progress: bool = True) -> PretrainResult:
    """Train ``job`` (or resume it, or report it done) and register the model; see the module docstring."""
    started = time.time()
    lake = Lakehouse.from_config(cfg)
    d = job.data
    sources = (
        resolve_mix_sources(lake, d.mix, d.text_column)
        if d.mix
        else [
            resolve_source(lake, src.table, where=src.where, as_of=src.as_of, text_column=d.text_column,
                           id_column=d.id_column)
            for src in job.sources()
        ]
    )  # fmt: skip
    tok_ref = registry.resolve(cfg, job.tokenizer)
    if tok_ref.tags.get(registry.TAG_KIND) != "tokenizer":
        raise UsageError(f"{job.tokenizer} is not a tokenizer (registered by `lake train tokenizer`)")
    cache = cfg.home / "cache" / "models"
    tok_dir = registry.download(cfg, tok_ref, cache)
    from training.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(tok_dir)
    init_dir = (
        registry.download(cfg, registry.resolve(cfg, job.model.init_from), cache) if job.model.init_from else None
    )
    model_cfg = build_model_config(job, tokenizer.vocab_size, init_dir)
    check_memory(model_cfg, job)

    snapshots = "-".join(str(src.snapshot_id) for src in sources)
    snapshots += "".join(f"-a{a.snapshot_id}" for src in sources for a in src.attributes)
    snapshots += "".join(sorted({f"-m{src.selection.snapshot_id}" for src in sources if src.selection}))
    run_key = f"{job.name}-{job.digest()}-{registry.short_digest(snapshots)}"
    mlflow_client = registry.client(cfg)
    run_id, finished = find_or_create_run(cfg, job, sources, tok_ref, run_key)
    if finished:
        versions = registry.versions_of_run(cfg, run_id)
        if versions:
            return PretrainResult(versions[0].uri, run_id, 0, 0, 0.0, None, None, None, None, None, 0, True)

    from pipelines.ray_env import init_ray

    s = job.scaling
    # a local Ray gets room for the data pipeline beside the workers: the shuffle's tasks ask a whole CPU each
    init_ray(cfg, num_cpus=max(os.cpu_count() or 1, math.ceil(s.num_workers * s.cpus_per_worker) + 2))
    import ray

    runs.check_cluster(ray.cluster_resources(), job.scaling)
    from ray.util.queue import Queue

    from training.data import build_dataset, validation_windows

    tokenizer_file = tok_dir / "tokenizer.model"
    seed = job.optim.seed if d.shuffle else None
    train_data = build_dataset(sources, tokenizer_file, "train", d.val_fraction, shuffle_seed=seed)
    # the held-out slice is small (val_max_tokens): read once here, shipped to every worker with the plan
    val_rows, bytes_per_token = validation_windows(
        build_dataset(sources, tokenizer_file, "val", d.val_fraction, shuffle_seed=None).iter_batches(
            batch_size=128, batch_format="numpy"
        ),
        job.model.seq_len,
        d.val_max_tokens,
    )
    events = Queue(actor_options={"num_cpus": 0})
    plan = {
        "job": dataclasses.asdict(job),
        "model_config": model_cfg.to_dict(),
        "tokenizer_files": {p.name: p.read_bytes() for p in tok_dir.iterdir() if p.is_file() and p.name != ".complete"},
        "init_files": runs.folder_bytes(init_dir) if init_dir else None,
        "mlflow_uri": cfg.mlflow_uri_effective,
        "run_id": run_id,
        "events": events,
        "val_rows": val_rows,
        "bytes_per_token": bytes_per_token,
        "special_ids": {"bos": tokenizer.bos_id, "eos": tokenizer.eos_id, "pad": tokenizer.pad_id},
    }
    trainer = runs.torch_trainer(cfg, train_worker, plan, run_key, job.scaling, {"train": train_data})
    result, last = runs.fit_with_progress(trainer, events, job.optim.max_steps, progress, desc="pretrain")
    if result.error is not None:
        mlflow_client.set_terminated(run_id, status="FAILED")
        raise LakeError(f"training failed: {str(result.error).splitlines()[0]}")
    if result.checkpoint is None:
        raise LakeError("training ended without a checkpoint")
    with result.checkpoint.as_directory() as ckpt:
        state = json.loads((Path(ckpt) / "trainer_state.json").read_text())
        ref = publish_model(cfg, job, sources, tok_ref, run_id, Path(ckpt), state)
    runs.log_loss_curve(mlflow_client, run_id)
    mlflow_client.set_terminated(run_id, status="FINISHED")
    ray.kill(events.actor)
    final = state.get("final_metrics", {})
    return PretrainResult(
        model_uri=ref.uri,
        run_id=run_id,
        steps=state["step"],
        tokens=state["tokens"] * job.scaling.num_workers,
        seconds=time.time() - started,
        val_ppl_before=state.get("val_ppl_before"),
        val_ppl_after=final.get("val/ppl"),
        val_bpb_after=final.get("val/bpb"),
        tokens_per_s=last.get("train/tokens_per_s_median"),
        data_wait_frac=last.get("train/data_wait_frac"),
        resumed_from_step=state.get("resumed_from_step", 0),
    )


def build_model_config(job: PretrainConfig, vocab_size: int, init_dir: Path | None):
    from training.checkpoint import config_from_hf
    from training.model import ModelConfig

    try:
        if init_dir is not None:
            base = config_from_hf(json.loads((init_dir / "config.json").read_text()))
            if base.vocab_size > vocab_size:
                raise UsageError(
                    f"model.init_from has {base.vocab_size} tokens, more than the tokenizer's {vocab_size}"
                )
            values = base.to_dict() | {"vocab_size": vocab_size} | job.model.overrides
        else:
            values = ModelConfig.preset(job.model.size, vocab_size, **job.model.overrides).to_dict()
        values["max_seq_len"] = max(values["max_seq_len"], job.model.seq_len)
        return ModelConfig(**values)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"model: {exc}") from None


def check_memory(model_cfg, job: PretrainConfig) -> None:
    """Refuse a CPU job whose weights, gradients, AdamW moments and activations cannot fit in this machine."""
    if job.scaling.gpus_per_worker:
        return
    from training.model import LlamaModel

    with torch.device("meta"):
        n_params = LlamaModel(model_cfg, seed=None).num_params()
    o, c = job.optim, model_cfg
    # fp32 weights + grads + two AdamW moments; activations: ~ 34·T·d per layer per sequence + logits (Korthikanti)
    activations = o.batch_size * job.model.seq_len * (34 * c.dim * c.n_layers + 8 * c.vocab_size)
    need = (16 * n_params + activations) * job.scaling.num_workers
    have = runs.available_memory()
    if need > 0.8 * have:
        raise UsageError(
            f"model size {job.model.size!r} needs ~{need / 2**30:.1f} GiB for {n_params / 1e6:.0f}M parameters at "
            f"batch {o.batch_size} × {job.model.seq_len}, but {have / 2**30:.1f} GiB is available; "
            "pick a smaller size or batch, or use GPUs (scaling.gpus_per_worker)"
        )


def find_or_create_run(cfg: LakeConfig, job: PretrainConfig, sources: list[SnapshotSource], tok_ref, run_key: str):
    """The MLflow run of this job: the unfinished one with the same key (a resume), or a new one."""
    tags = lineage_tags(job, sources, tok_ref)
    return runs.find_or_create_run(cfg, run_key, f"pretrain {job.name}", job.as_flat_params(), tags, sources)


def lineage_tags(job: PretrainConfig, sources: list[SnapshotSource], tok_ref) -> dict[str, str]:
    """Tags that tie a run and its model version to the data, tokenizer, parent and code they came from."""
    tags = registry.dataset_tags(runs.training_datasets(sources)) | {
        registry.TAG_KIND: "model",
        registry.TAG_STAGE: "pretrain",
        registry.TAG_TOKENIZER: tok_ref.uri,
        registry.TAG_COMMIT: registry.code_commit(),
    }
    if job.model.init_from:
        tags[registry.TAG_PARENT] = job.model.init_from
    return tags


def publish_model(cfg, job, sources, tok_ref, run_id: str, ckpt: Path, state: dict) -> registry.ModelRef:
    """Log the checkpoint's model files (no optimizer state) to the run and register them."""
    tags = lineage_tags(job, sources, tok_ref) | {
        "lake.tokens": state["tokens"] * job.scaling.num_workers,
        "lake.steps": state["step"],
    }
    return runs.publish_model(cfg, job.name, run_id, ckpt, tags)


# ---- worker ---------------------------------------------------------------------------------------------------
def train_worker(plan: dict[str, Any]) -> None:
    """Ray Train's per-worker function: restore, train, checkpoint."""
    import numpy as np
    import ray.train
    import ray.train.torch

    from training.checkpoint import read_safetensors_state, save_pretrained
    from training.data import Packer, iter_documents
    from training.loop import LoopState, Trainer, evaluate_windows
    from training.losses import causal_lm_loss
    from training.model import LlamaModel, ModelConfig
    from training.optim import build_optimizer
    from training.state import load_training_state, save_training_state

    job: PretrainConfig = from_dict(PretrainConfig, plan["job"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if job.scaling.torch_threads:
        torch.set_num_threads(job.scaling.torch_threads)
    model_cfg = ModelConfig(**plan["model_config"])
    tok_dir = runs.write_folder(plan["tokenizer_files"], "lake-tok-")
    special = plan["special_ids"]

    model = LlamaModel(model_cfg, seed=job.optim.seed)
    if plan["init_files"]:  # continue from a registered checkpoint (embedding rows grown for a larger vocab)
        _load_initial(model, runs.write_folder(plan["init_files"], "lake-init-"), tok_dir, model_cfg)

    resume_dir = runs.restore_checkpoint()
    if resume_dir is not None:
        model.load_state_dict(_tied_state(read_safetensors_state(resume_dir), model_cfg))
    model.to(device)
    train_model = ray.train.torch.prepare_model(model) if world > 1 else model
    optimizer = build_optimizer(model, job.optim, device.type)
    loop_state, position, saved = LoopState(), DataPosition(), {}
    if resume_dir is not None:
        saved = load_training_state(resume_dir, optimizer)
        loop_state = LoopState(step=saved["step"], tokens=saved["tokens"])
        own = resume_dir / f"data_position.{rank}.json"
        position = DataPosition(**(json.loads(own.read_text()) if rank else saved["data_positions"]["0"]))
    else:
        torch.manual_seed(job.optim.seed + rank)
    compiled = train_model
    if job.optim.compile == "on" or (job.optim.compile == "auto" and device.type == "cuda"):
        compiled = torch.compile(train_model)

    # data: this worker's shard of the training stream, and the whole held-out slice in memory
    seq_len, batch = job.model.seq_len, job.optim.batch_size
    shard = ray.train.get_dataset_shard("train")
    documents = iter_documents(
        lambda: shard.iter_batches(batch_size=128, batch_format="numpy", prefetch_batches=4), position
    )
    packer = Packer(seq_len, batch, position)
    pin = device.type == "cuda"

    def to_device(xy):
        x, y = (torch.from_numpy(a) for a in xy)
        if pin:
            x, y = x.pin_memory(), y.pin_memory()
        return x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    batches = (to_device(xy) for xy in packer.batches(documents))
    val_tensor = torch.from_numpy(np.array(plan["val_rows"]))
    bytes_per_token = plan["bytes_per_token"]

    def validate(m) -> dict[str, float]:
        if len(val_tensor) == 0:
            return {}
        nll = evaluate_windows(m, val_tensor, batch, device, job.optim.precision)
        bpb = nll / math.log(2) / bytes_per_token if bytes_per_token else float("nan")
        return {"val/loss": nll, "val/ppl": math.exp(min(nll, 50)), "val/bpb": bpb}

    def loss_fn(m, xy):
        x, y = xy
        return causal_lm_loss(m(x), y), y.numel()

    metrics_log = runs.MetricsLog(plan["mlflow_uri"], plan["run_id"], rank)
    remember = metrics_log.remember

    val_before = saved.get("val_ppl_before")
    if loop_state.step == 0:
        first = validate(model)
        val_before = first.get("val/ppl")
        remember(0, first)

    def checkpoint_fn(step: int, metrics: dict[str, float]) -> None:
        def write(folder: Path) -> None:
            state = {
                "step": step,
                "tokens": loop_state.tokens,
                "data_positions": {str(rank): packer.position.as_dict()},
                "val_ppl_before": val_before,
                "resumed_from_step": saved.get("step", 0),
                "final_metrics": metrics,
                "bytes_per_token": bytes_per_token,
            }
            if rank == 0:
                save_pretrained(
                    model,
                    model_cfg,
                    folder,
                    tok_dir,
                    bos_token_id=special["bos"],
                    eos_token_id=special["eos"],
                    pad_token_id=special["pad"],
                )
                save_training_state(folder, optimizer, state)
                metrics_log.flush()
            else:  # each rank's data position lands in the same checkpoint folder
                (folder / f"data_position.{rank}.json").write_text(json.dumps(packer.position.as_dict()))

        runs.report_checkpoint(step, metrics, write)

    def log_fn(step: int, metrics: dict[str, float]) -> None:
        if rank == 0:
            plan["events"].put_nowait((step, metrics))

    trainer = Trainer(
        model=compiled,
        optimizer=optimizer,
        cfg=job.optim,
        device=device,
        loss_fn=loss_fn,
        validate_fn=validate,
        checkpoint_fn=checkpoint_fn,
        record_fn=remember,
        log_fn=log_fn,
        flops_per_token=model.flops_per_token(seq_len),
        state=loop_state,
    )
    trainer.run(batches)


def _tied_state(state: dict[str, torch.Tensor], model_cfg) -> dict[str, torch.Tensor]:
    if model_cfg.tie_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    return state


def _load_initial(model, init_dir: Path, tok_dir: Path, model_cfg) -> None:
    """Weights of a registered checkpoint; rows for tokens its tokenizer lacked are grown (Chinese-LLaMA)."""
    from training.checkpoint import read_safetensors_state
    from training.tokenizer import expand_embeddings, load_tokenizer

    state = _tied_state(read_safetensors_state(init_dir), model_cfg)
    if state["model.embed_tokens.weight"].shape[0] != model_cfg.vocab_size:
        state = expand_embeddings(
            state, load_tokenizer(init_dir), load_tokenizer(tok_dir), tie_embeddings=model_cfg.tie_embeddings
        )
        state = _tied_state(state, model_cfg)
    model.load_state_dict(state)
