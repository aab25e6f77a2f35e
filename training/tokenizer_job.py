"""``lake train tokenizer``: a sentencepiece tokenizer trained on a deterministic sample of a pinned snapshot, or
an existing one expanded with pieces learnt on new text, registered in MLflow with the snapshot it came from.

The sample: rows selected by the predicate, minus the held-out rows (the same hash split the pretraining job
validates on), ordered by a hash of their id and taken until ``sample_chars``. The held-out rows of each
``--eval`` slice are where characters per token are measured (before and after, for an expansion).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from catalog.store import Lakehouse
from lake.config import LakeConfig
from lake.errors import UsageError
from training import registry
from training.data import SnapshotSource, is_held_out, predicate_frame, resolve_source, source_frame, split_bucket

EXPERIMENT = "tokenizer"
HELD_OUT_FRACTION = 0.02  # the pretraining default, so a tokenizer never trains on the text its model validates on


@dataclass
class TokenizerJobResult:
    model_uri: str
    run_id: str
    vocab_size: int
    sample_rows: int
    sample_chars: int
    added_pieces: int | None
    chars_per_token: dict[str, float] = field(default_factory=dict)
    base_chars_per_token: dict[str, float] = field(default_factory=dict)
    already_registered: bool = False

    def summary(self) -> str:
        if self.already_registered:
            return f"already registered: {self.model_uri} (same table snapshot and settings); nothing to do"
        parts = [f"registered {self.model_uri}: vocab {self.vocab_size:,}"]
        if self.added_pieces is not None:
            parts.append(f"{self.added_pieces:,} pieces added")
        parts.append(f"trained on {self.sample_rows:,} rows / {self.sample_chars:,} chars")
        for name, value in self.chars_per_token.items():
            before = self.base_chars_per_token.get(name)
            parts.append(f"{name} {before:.2f} -> {value:.2f} chars/token" if before else f"{name} {value:.2f} c/t")
        return "; ".join(parts)


def _frame(lake: Lakehouse, source: SnapshotSource, predicate: str | None) -> pl.LazyFrame:
    return predicate_frame(source_frame(lake, source), predicate).select(
        pl.col(source.id_column).cast(pl.String).fill_null("").alias("id"),
        pl.col(source.text_column).fill_null("").alias("text"),
    )


def sample_texts(lake: Lakehouse, source: SnapshotSource, sample_chars: int) -> list[str]:
    """Training rows (not held out) in hash order until ``sample_chars`` characters: the same every run."""
    sizes = _frame(lake, source, source.predicate).select("id", pl.col("text").str.len_chars().alias("n")).collect()
    chosen, total = [], 0
    order = sorted((split_bucket(i), i, n) for i, n in zip(sizes["id"], sizes["n"], strict=True))
    for _, row_id, n in order:
        if is_held_out(row_id, HELD_OUT_FRACTION) or n == 0:
            continue
        chosen.append(row_id)
        total += n
        if total >= sample_chars:
            break
    rows = _frame(lake, source, source.predicate).filter(pl.col("id").is_in(chosen)).collect()
    by_id = dict(zip(rows["id"], rows["text"], strict=True))
    return [by_id[i] for i in chosen if i in by_id]


def held_out_texts(lake: Lakehouse, source: SnapshotSource, predicate: str | None) -> list[str]:
    frame = _frame(lake, source, predicate).collect()
    return [t for i, t in zip(frame["id"], frame["text"], strict=True) if t and is_held_out(i, HELD_OUT_FRACTION)]


def parse_eval_slices(specs: tuple[str, ...]) -> dict[str, str | None]:
    slices: dict[str, str | None] = {}
    for spec in specs:
        name, sep, predicate = spec.partition("=")
        if not sep or not name.strip():
            raise UsageError(f"--eval {spec!r}: give NAME=SQL, e.g. zh=\"input_uri LIKE '%people%'\"")
        slices[name.strip()] = predicate.strip() or None
    return slices


def run_tokenizer_job(
    cfg: LakeConfig,
    *,
    table: str,
    name: str,
    vocab_size: int,
    where: str | None = None,
    as_of: str | None = None,
    expand: str | None = None,
    sample_chars: int = 20_000_000,
    eval_slices: dict[str, str | None] | None = None,
    text_column: str = "text",
    character_coverage: float = 0.9995,
) -> TokenizerJobResult:
    import mlflow

    from pipelines.tracking import start_run
    from training.tokenizer import chars_per_token, expand_tokenizer, load_tokenizer, train_tokenizer

    if vocab_size < 1:
        raise UsageError("--vocab-size must be positive")
    lake = Lakehouse.from_config(cfg)
    source = resolve_source(lake, table, where=where, as_of=as_of, text_column=text_column)
    inputs = [table, source.snapshot_id, where, vocab_size, expand, sample_chars, character_coverage]
    inputs.append(sorted((eval_slices or {}).items()))
    run_key = registry.short_digest(json.dumps(inputs, default=str))
    done = registry.find_version(cfg, name, run_key)
    if done is not None:  # the same tokenizer from the same snapshot: re-running registers nothing new
        tags = done.tags
        return TokenizerJobResult(done.uri, done.run_id or "", int(tags.get("lake.vocab_size", 0)), 0, 0, None,
                                  already_registered=True)  # fmt: skip
    texts = sample_texts(lake, source, sample_chars)
    if not texts:
        raise UsageError(f"no training text left in {table} after holding out {HELD_OUT_FRACTION:.0%} of rows")
    base_ref = registry.resolve(cfg, expand) if expand else None
    if base_ref is not None and base_ref.tags.get(registry.TAG_KIND) != "tokenizer":
        raise UsageError(f"{expand} is not a registered tokenizer")
    slices = {"heldout": where} | (eval_slices or {})
    held = {label: held_out_texts(lake, source, predicate) for label, predicate in slices.items()}

    with tempfile.TemporaryDirectory(prefix="lake-tokenizer-") as tmp:
        out = Path(tmp) / "tokenizer"
        added = None
        base_cpt: dict[str, float] = {}
        try:
            if base_ref is not None:
                base_dir = registry.download(cfg, base_ref, cfg.home / "cache" / "models")
                info = expand_tokenizer(base_dir, texts, vocab_size, out, character_coverage=character_coverage)
                added = info.added_pieces
                base = load_tokenizer(base_dir)
                base_cpt = {k: chars_per_token(base, v) for k, v in held.items() if v}
            else:
                train_tokenizer(texts, vocab_size, out, character_coverage=character_coverage)
        except ValueError as exc:
            raise UsageError(str(exc).splitlines()[0]) from None
        tok = load_tokenizer(out)
        cpt = {k: chars_per_token(tok, v) for k, v in held.items() if v}
        lineage = source.lineage()
        params = {"table": table, "where": where, "as_of": as_of, "vocab_size": vocab_size, "expand": expand}
        with start_run(cfg, EXPERIMENT, run_name=f"tokenizer {name}", params=params) as run:
            registry.log_snapshot_input(source.table, source.snapshot_id, source.predicate, lineage)
            metrics = {f"chars_per_token/{k}": v for k, v in cpt.items()}
            metrics |= {f"base_chars_per_token/{k}": v for k, v in base_cpt.items()}
            metrics |= {"vocab_size": tok.vocab_size, "sample_rows": len(texts), "sample_chars": sum(map(len, texts))}
            mlflow.log_metrics(metrics)
            mlflow.log_artifacts(str(out), artifact_path="tokenizer")
            tags = {
                registry.TAG_KIND: "tokenizer",
                registry.TAG_STAGE: "tokenizer",
                registry.TAG_TABLE: table,
                registry.TAG_SNAPSHOT: source.snapshot_id,
                registry.TAG_PREDICATE: where or "",
                registry.TAG_COMMIT: registry.code_commit(),
                registry.TAG_RUN_KEY: run_key,
                "lake.vocab_size": tok.vocab_size,
            }
            if base_ref is not None:
                tags[registry.TAG_PARENT] = base_ref.uri
            mlflow.set_tags(tags)
            ref = registry.register(cfg, name, run.info.run_id, "tokenizer", tags)
    return TokenizerJobResult(
        ref.uri, ref.run_id or "", tok.vocab_size, len(texts), sum(map(len, texts)), added, cpt, base_cpt
    )
