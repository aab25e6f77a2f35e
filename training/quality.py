"""``lake train quality-classifier`` (DCLM's fastText recipe) and the ``lake label ppl|quality`` entry points.

The classifier: positives are what the user's SQL queries call high quality (reference text, SFT answers),
negatives random web documents. Texts are de-duplicated, the classes balanced, and a hash of each text decides
the held-out tenth; fastText trains with one thread (deterministic), word bigrams, and is registered in MLflow
with its held-out accuracy, a confusion-matrix PNG and tags naming every table snapshot its queries read.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from catalog.query import referenced_tables, run_query
from catalog.store import Lakehouse
from lake.config import LakeConfig
from lake.errors import UsageError
from operators.quality_model import NEGATIVE, POSITIVE, QualityScore, fasttext_line
from pipelines.label import Labeler, LabelReport, run_labeler
from training import registry
from training.data import row_hash

EXPERIMENT = "quality-classifier"
KIND = "quality_classifier"
MODEL_FILE = "model.bin"


@dataclass(frozen=True, kw_only=True)
class ClassifierConfig:
    max_per_class: int = 20_000
    held_out: float = 0.1
    # fastText's defaults (5 epochs, lr 0.1) leave every probability within 0.01 of 0.5 on sets of a few thousand
    # texts (measured on the shared data: same accuracy, no usable score); 20 passes at lr 0.5 separate them
    epoch: int = 20
    lr: float = 0.5
    word_ngrams: int = 2
    dim: int = 32
    bucket: int = 200_000
    max_chars: int = 4000

    def __post_init__(self) -> None:
        if not 0.0 < self.held_out < 0.5:
            raise UsageError("--held-out must be between 0 and 0.5")
        if self.max_per_class < 10:
            raise UsageError("--max-per-class must be at least 10")


@dataclass
class ClassifierResult:
    uri: str
    run_id: str
    train: dict[str, int]
    held_out: dict[str, int]
    accuracy: float
    confusion: list[list[int]]
    already_registered: bool = False
    datasets: list[dict] = field(default_factory=list)

    def summary(self) -> str:
        if self.already_registered:
            return f"{self.uri} already holds this classifier (same queries, snapshots and settings)"
        n = sum(self.held_out.values())
        return f"registered {self.uri}: held-out accuracy {self.accuracy:.3f} on {n} texts"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _query_texts(lake: Lakehouse, sql: str) -> list[str]:
    frame = run_query(lake, sql)
    if "text" not in frame.columns:
        raise UsageError(f"query must return a column named text (got {', '.join(frame.columns)}): {sql[:80]}")
    return [t for t in frame["text"].to_list() if isinstance(t, str) and t.strip()]


def _pinned(lake: Lakehouse, queries: list[str]) -> list[dict]:
    known = lake.list_tables()
    tables = sorted({t for q in queries for t in referenced_tables(q, known)})
    return [{"table": t, "snapshot_id": lake.resolve_snapshot(t, None), "predicate": ""} for t in tables]


def class_examples(texts: list[str], limit: int, salt: str) -> list[str]:
    """Distinct texts in a seeded hash order, at most ``limit``: the same choice every run."""
    unique = sorted(set(texts), key=lambda t: row_hash(t, salt))
    return unique[:limit]


def train_quality_classifier(
    cfg: LakeConfig, *, name: str, positive: list[str], negative: list[str], config: ClassifierConfig | None = None
) -> ClassifierResult:
    import fasttext
    import mlflow

    from pipelines.tracking import log_png, start_run

    config = config or ClassifierConfig()
    if not positive or not negative:
        raise UsageError("give at least one --positive and one --negative query")
    lake = Lakehouse.from_config(cfg)
    datasets = _pinned(lake, positive + negative)
    run_key = registry.short_digest(json.dumps([positive, negative, datasets, asdict(config)], default=str))
    done = registry.find_version(cfg, name, run_key)
    if done is not None:
        metrics = json.loads(done.tags.get("lake.classifier", "{}"))
        return ClassifierResult(done.uri, done.run_id or "", metrics.get("train", {}), metrics.get("held_out", {}),
                                float(done.tags.get("lake.heldout_accuracy", "nan")), metrics.get("confusion", []),
                                already_registered=True, datasets=datasets)  # fmt: skip
    pos = [t for q in positive for t in _query_texts(lake, q)]
    neg = [t for q in negative for t in _query_texts(lake, q)]
    overlap = set(pos) & set(neg)
    pos, neg = [t for t in pos if t not in overlap], [t for t in neg if t not in overlap]
    per_class = min(len(set(pos)), len(set(neg)), config.max_per_class)
    if per_class < 10:
        raise UsageError(f"too few distinct texts to train on: {len(set(pos))} positive, {len(set(neg))} negative")
    examples = [(t, POSITIVE) for t in class_examples(pos, per_class, "pos")]
    examples += [(t, NEGATIVE) for t in class_examples(neg, per_class, "neg")]
    bound = int(config.held_out * 10_000)
    held = [(t, y) for t, y in examples if row_hash(t, "heldout") % 10_000 < bound]
    train = sorted((e for e in examples if row_hash(e[0], "heldout") % 10_000 >= bound), key=lambda e: row_hash(e[0]))
    with tempfile.TemporaryDirectory(prefix="lake-quality-") as tmp:
        train_file = Path(tmp) / "train.txt"
        train_file.write_text(
            "".join(f"{label} {fasttext_line(text, config.max_chars)}\n" for text, label in train), encoding="utf-8"
        )
        model = fasttext.train_supervised(
            input=os.fspath(train_file), epoch=config.epoch, lr=config.lr, wordNgrams=config.word_ngrams,
            dim=config.dim, bucket=config.bucket, minCount=1, thread=1, verbose=0,
        )  # fmt: skip
        labels, _ = model.predict([fasttext_line(t, config.max_chars) for t, _ in held], k=1)
        truth = np.array([y == POSITIVE for _, y in held])
        guess = np.array([label[0] == POSITIVE for label in labels])
        confusion = [[int(np.sum(~truth & ~guess)), int(np.sum(~truth & guess))],
                     [int(np.sum(truth & ~guess)), int(np.sum(truth & guess))]]  # fmt: skip
        accuracy = float(np.mean(truth == guess)) if len(held) else float("nan")
        counts = {
            "train": {
                "positive": sum(y == POSITIVE for _, y in train),
                "negative": sum(y == NEGATIVE for _, y in train),
            },
            "held_out": {"positive": int(truth.sum()), "negative": int((~truth).sum())},
            "confusion": confusion,
        }
        folder = Path(tmp) / "classifier"
        folder.mkdir()
        model.save_model(os.fspath(folder / MODEL_FILE))
        (folder / "classifier.json").write_text(json.dumps({"labels": [POSITIVE, NEGATIVE], **asdict(config)}))
        params = asdict(config) | {"positive": json.dumps(positive), "negative": json.dumps(negative)}
        with start_run(cfg, EXPERIMENT, run_name=f"quality-classifier {name}", params=params) as run:
            for item in datasets:
                registry.log_snapshot_input(item["table"], item["snapshot_id"], None, {})
            mlflow.log_metrics(
                {"heldout_accuracy": accuracy, "train_examples": len(train), "heldout_examples": len(held)}
            )
            log_png(confusion_figure(confusion, accuracy), "confusion.png")
            mlflow.log_artifacts(os.fspath(folder), artifact_path="classifier")
            tags = {
                registry.TAG_KIND: KIND,
                registry.TAG_STAGE: "quality-classifier",
                registry.TAG_DATASETS: json.dumps(datasets),
                registry.TAG_COMMIT: registry.code_commit(),
                registry.TAG_RUN_KEY: run_key,
                "lake.heldout_accuracy": f"{accuracy:.6f}",
                "lake.classifier": json.dumps(counts),
            }
            mlflow.set_tags(tags)
            ref = registry.register(cfg, name, run.info.run_id, "classifier", tags)
    return ClassifierResult(ref.uri, ref.run_id or "", counts["train"], counts["held_out"], accuracy, confusion,
                            datasets=datasets)  # fmt: skip


def confusion_figure(confusion: list[list[int]], accuracy: float):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4, 3.6), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(np.asarray(confusion), cmap="Blues")
    for i in range(2):
        for j in range(2):
            ax.text(j, i, str(confusion[i][j]), ha="center", va="center", fontsize=12)
    ax.set_xticks([0, 1], ["low", "high"])
    ax.set_yticks([0, 1], ["low", "high"])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"held-out accuracy {accuracy:.3f}")
    fig.tight_layout()
    return fig


class QualityLabeler(Labeler):
    name = "quality"

    def __init__(self, model_uri: str, model_bytes: bytes, max_chars: int = 4000) -> None:
        self.version = model_uri
        self.operator = QualityScore(model_bytes, max_chars=max_chars)

    def finish(self, rows: pa.Table, previous: dict[str, str]) -> tuple[pa.Table, dict[str, Any]]:
        scores = rows["quality_score"].to_numpy(zero_copy_only=False).astype(np.float64)
        scores = scores[~np.isnan(scores)]
        stats = (
            {"score_mean": float(scores.mean()), "share_above_half": float((scores > 0.5).mean())}
            if len(scores)
            else {}
        )
        return rows, stats

    def figure(self, rows: pa.Table, stats: dict[str, Any]):
        from matplotlib.figure import Figure

        fig = Figure(figsize=(6, 3.5), dpi=100)
        ax = fig.add_subplot(1, 1, 1)
        scores = rows["quality_score"].to_numpy(zero_copy_only=False).astype(np.float64)
        ax.hist(scores[~np.isnan(scores)], bins=20, range=(0, 1), color="#4472c4")
        ax.set_xlabel("quality_score")
        ax.set_ylabel("documents")
        ax.set_title(f"quality under {self.version}")
        fig.tight_layout()
        return fig


def _model_files(cfg: LakeConfig, uri: str, kind: str | None) -> dict[str, bytes]:
    ref = registry.resolve(cfg, uri)
    if kind is not None and ref.tags.get(registry.TAG_KIND) != kind:
        raise UsageError(f"{uri} is a {ref.tags.get(registry.TAG_KIND) or 'untagged'} version, not a {kind}")
    folder = registry.download(cfg, ref, cfg.home / "cache" / "models")
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and p.name != ".complete"}


def label_quality(
    cfg: LakeConfig, table: str, model_uri: str, progress: bool = True, executor: str = "auto"
) -> LabelReport:
    lake = Lakehouse.from_config(cfg)
    lake.table(table)  # an unknown table is reported before any model is fetched
    files = _model_files(cfg, model_uri, KIND)
    labeler = QualityLabeler(model_uri, files[MODEL_FILE])
    return run_labeler(lake, cfg, table, labeler, progress=progress, executor=executor)


def label_ppl(
    cfg: LakeConfig,
    table: str,
    model_uri: str,
    *,
    max_tokens: int = 1024,
    batch_tokens: int = 2048,
    progress: bool = True,
    num_actors: int | None = None,
    executor: str = "auto",
) -> LabelReport:
    from training.perplexity import PerplexityLabeler

    lake = Lakehouse.from_config(cfg)
    lake.table(table)  # an unknown table is reported before any model is fetched
    files = _model_files(cfg, model_uri, "model")
    if "tokenizer.model" not in files:
        raise UsageError(f"{model_uri} carries no tokenizer.model: register a checkpoint made by lake train")
    # a GPU per actor where the cluster has GPUs (the runner drops the request elsewhere); one thread per CPU actor
    labeler = PerplexityLabeler(model_uri, files, max_tokens=max_tokens, batch_tokens=batch_tokens, num_gpus=1.0)
    params = {"max_tokens": max_tokens, "batch_tokens": batch_tokens}
    return run_labeler(lake, cfg, table, labeler, progress=progress, num_actors=num_actors, executor=executor,
                       extra_params=params)  # fmt: skip
