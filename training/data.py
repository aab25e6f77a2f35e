"""From a pinned catalog snapshot to packed token batches, with a data position that survives a restart.

- ``resolve_source``: pins the snapshot, checks the SQL predicate against the table and counts what it selects,
  and plans the snapshot's Parquet files. Only that plan (a list of file URIs) travels to Ray: a lazy
  ``read_iceberg`` dataset cannot be pickled into ``TorchTrainer(datasets=…)`` (shared/notes/stack.md §4), so the
  dataset is ``read_parquet`` over the planned files. The driver never holds the corpus.
- ``build_dataset``: Ray Data reads, filters (the same polars SQL predicate as ``lake query``, and a held-out
  split by a hash of the row id), tokenises in ``map_batches`` on an actor pool (the tokenizer loads once per
  actor) and keeps the stream order, so that every run sees the documents in the same order.
- ``Packer``: in the training worker, documents (each ending with EOS) are concatenated and cut into
  ``batch × seq_len`` windows; no document is truncated and nothing is padded. Its ``DataPosition`` (documents
  already finished, tokens already used of the next one) goes into every checkpoint; a resumed run skips exactly
  that far, so no token is repeated or skipped.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from catalog import attributes
from catalog.attributes import AttributeFiles, join_attributes, read_parquet_columns
from catalog.store import Lakehouse
from lake.errors import UsageError

FILTER_TABLE = "rows"  # the name the predicate's SELECT uses internally
SPLIT_BUCKETS = 10_000


@dataclass(frozen=True)
class Selection:
    """Rows of a mix table that choose (and repeat) documents of one source snapshot: ``doc_id``, ``repeat``
    and ``phase_index`` (training reads phase after phase)."""

    table: str
    snapshot_id: int
    files: tuple[str, ...]
    source_table: str
    source_snapshot_id: int
    tag: str = ""


_SELECTIONS: dict[tuple, pl.DataFrame] = {}


def load_selection(sel: Selection) -> pl.DataFrame:
    """The selection's rows for its source (cached per process: every batch of a worker joins against it)."""
    key = (sel.table, sel.snapshot_id, sel.source_table, sel.source_snapshot_id)
    if key not in _SELECTIONS:
        columns = ["doc_id", "source_table", "source_snapshot_id", "repeat", "phase_index"]
        parts = [read_parquet_columns(path, columns) for path in sel.files]
        frame = pl.from_arrow(pa.concat_tables(parts, promote_options="permissive")) if parts else None
        if frame is None or frame.height == 0:
            frame = pl.DataFrame(schema={c: pl.String for c in columns})
        _SELECTIONS[key] = frame.filter(
            (pl.col("source_table") == sel.source_table) & (pl.col("source_snapshot_id") == sel.source_snapshot_id)
        ).select(
            pl.col("doc_id").cast(pl.String), pl.col("repeat").cast(pl.Int64), pl.col("phase_index").cast(pl.Int64)
        )
    return _SELECTIONS[key]


@dataclass(frozen=True)
class SnapshotSource:
    """A pinned, picklable description of what a job reads: a table snapshot, a predicate over its columns and
    its attribute tables' labels (also pinned), or a mix's selection of its documents."""

    table: str
    snapshot_id: int
    predicate: str | None
    files: tuple[str, ...]
    text_column: str
    id_column: str
    schema: pa.Schema
    rows_selected: int
    rows_in_snapshot: int
    attributes: tuple[AttributeFiles, ...] = ()
    selection: Selection | None = None

    def lineage(self) -> dict:
        out = {
            "table": self.table,
            "snapshot_id": self.snapshot_id,
            "predicate": self.predicate or "",
            "rows_selected": self.rows_selected,
            "rows_in_snapshot": self.rows_in_snapshot,
        }
        if self.attributes:
            out["attributes"] = json.dumps([a.lineage() for a in self.attributes])
        if self.selection is not None:
            out["mix"] = f"{self.selection.table}@{self.selection.snapshot_id}"
        return out


@dataclass
class DataPosition:
    """Where the token stream stands: in pass ``epoch``, ``docs`` documents fully used, ``offset`` tokens into
    the next one."""

    epoch: int = 0
    docs: int = 0
    offset: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def default_id_column(schema: pa.Schema) -> str:
    names = schema.names
    for preferred in ("doc_id", "example_id", "pair_id", "item_id"):
        if preferred in names:
            return preferred
    return "record_key"


def predicate_frame(lazy: pl.LazyFrame, predicate: str | None) -> pl.LazyFrame:
    """Rows of ``lazy`` that satisfy the SQL predicate (polars SQL, the dialect of ``lake query``), which is held
    to ``lake query``'s rules: one read-only statement, no files (``EXISTS (SELECT … FROM read_csv(…))`` would
    otherwise read any file) and no tables but the rows themselves."""
    from catalog.query import check_read_only, check_sources

    if not predicate:
        return lazy
    text = check_read_only(f"SELECT * FROM {FILTER_TABLE} WHERE {predicate}")
    check_sources(text, [FILTER_TABLE])
    ctx = pl.SQLContext({FILTER_TABLE: lazy})
    return ctx.execute(text)


def resolve_source(
    lake: Lakehouse,
    table: str,
    *,
    where: str | None = None,
    as_of: str | int | None = None,
    text_column: str = "text",
    id_column: str | None = None,
) -> SnapshotSource:
    """Pin ``table`` at ``as_of`` (default: now), validate the predicate and plan the files to read."""
    iceberg = lake.table(table)
    snapshot_id = lake.resolve_snapshot(table, as_of)
    if snapshot_id is None:
        raise UsageError(f"table {table} has no rows yet")
    schema = iceberg.schema().as_arrow()
    if text_column not in schema.names:
        raise UsageError(f"table {table} has no column {text_column!r}; columns: {', '.join(schema.names)}")
    id_column = id_column or default_id_column(schema)
    if id_column not in schema.names:
        raise UsageError(f"table {table} has no column {id_column!r} to split held-out rows by")
    labels = tuple(attributes.attribute_sources(lake, table, exclude=set(schema.names))) if where else ()
    pins = {a.labeler: a.snapshot_id for a in labels}
    lazy = (
        attributes.joined_frame(lake, table, list(pins), snapshot_id, attribute_snapshots=pins)
        if labels
        else pl.scan_iceberg(iceberg, snapshot_id=snapshot_id)
        if as_of is not None
        else pl.scan_iceberg(iceberg)
    )
    try:
        selected = predicate_frame(lazy, where).select(pl.len()).collect().item()
    except (pl.exceptions.PolarsError, pl.exceptions.SQLInterfaceError) as exc:
        raise UsageError(f"predicate {where!r} does not apply to {table}: {str(exc).splitlines()[0]}") from None
    if selected == 0:
        raise UsageError(f"predicate {where!r} selects no rows of {table} at snapshot {snapshot_id}")
    scan = iceberg.scan(snapshot_id=snapshot_id)
    tasks = list(scan.plan_files())
    if any(task.delete_files for task in tasks):  # read_parquet would not apply them (stack.md §4)
        raise UsageError(f"table {table} has row-level deletes; compact it before training on it")
    files = tuple(sorted(task.file.file_path for task in tasks))
    total = lake.count(table, snapshot_id)
    return SnapshotSource(table, snapshot_id, where, files, text_column, id_column, schema, selected, total, labels)


def plan_files(lake: Lakehouse, table: str, snapshot_id: int) -> tuple[str, ...]:
    tasks = list(lake.table(table).scan(snapshot_id=snapshot_id).plan_files())
    if any(task.delete_files for task in tasks):  # read_parquet would not apply them (stack.md §4)
        raise UsageError(f"table {table} has row-level deletes; compact it before training on it")
    return tuple(sorted(task.file.file_path for task in tasks))


def resolve_mix_sources(lake: Lakehouse, mix: str, text_column: str = "text") -> list[SnapshotSource]:
    """The sources of a mix (``NAME`` or ``NAME@TAG``): each source snapshot it samples, with its selection."""
    name, _, tag = mix.partition("@")
    table = name if "." in name else f"mix.{name.replace('-', '_')}"
    if not lake.exists(table):
        raise UsageError(f"no mix {name!r} (table {table}); build it with lake mix SPEC.yaml")
    snapshot_id = lake.resolve_snapshot(table, tag or None)
    if snapshot_id is None:
        raise UsageError(f"mix {table} is empty")
    rows = lake.read(table, snapshot_id, columns=("source_table", "source_snapshot_id", "repeat"))
    counts = pl.from_arrow(rows).group_by("source_table", "source_snapshot_id").agg(pl.col("repeat").sum())
    if counts.height == 0:
        raise UsageError(f"mix {table}@{tag or snapshot_id} selects no documents")
    mix_files = plan_files(lake, table, snapshot_id)
    sources = []
    for source_table, source_snapshot, repeats in counts.sort("source_table", "source_snapshot_id").iter_rows():
        schema = lake.table(source_table).schema().as_arrow()
        if text_column not in schema.names or "doc_id" not in schema.names:
            raise UsageError(f"mix source {source_table} needs doc_id and {text_column!r} columns")
        selection = Selection(table, snapshot_id, mix_files, source_table, source_snapshot, tag)
        sources.append(
            SnapshotSource(
                source_table, source_snapshot, None, plan_files(lake, source_table, source_snapshot), text_column,
                "doc_id", schema, int(repeats), lake.count(source_table, source_snapshot), (), selection,
            )
        )  # fmt: skip
    return sources


def source_frame(lake: Lakehouse, source: SnapshotSource) -> pl.LazyFrame:
    """The pinned snapshot as a lazy frame, joined with its pinned attribute tables' labels."""
    pins = {a.labeler: a.snapshot_id for a in source.attributes}
    return attributes.joined_frame(lake, source.table, list(pins), source.snapshot_id, attribute_snapshots=pins)


def read_rows(lake: Lakehouse, source: SnapshotSource, columns: list[str]) -> list[dict]:
    """The selected rows of a pinned snapshot (predicate applied), with ``columns`` and the id column, in a
    deterministic order (by id). For the small tables of post-training (chat examples, preference pairs): the
    driver holds them; pretraining corpora go through ``build_dataset`` instead."""
    lazy = source_frame(lake, source)
    wanted = list(dict.fromkeys([source.id_column, *columns]))
    frame = predicate_frame(lazy, source.predicate).select(wanted).collect()
    return frame.sort(source.id_column).to_dicts()


def row_hash(row_id: str, salt: str = "") -> int:
    """A stable 63-bit hash of a row id (blake2b: the same on every machine and Python version)."""
    digest = hashlib.blake2b(row_id.encode("utf-8"), digest_size=8, person=salt.encode()[:16]).digest()
    return int.from_bytes(digest, "little") >> 1


def split_bucket(row_id: str) -> int:
    """A stable bucket in [0, SPLIT_BUCKETS) from the row id: the held-out split never moves between runs."""
    return row_hash(row_id) % SPLIT_BUCKETS


def is_held_out(row_id: str, val_fraction: float) -> bool:
    return split_bucket(row_id) < int(round(val_fraction * SPLIT_BUCKETS))


def select_rows(batch: pa.Table, source: SnapshotSource, split: str, val_fraction: float, seed: int = 0) -> pa.Table:
    """Ray Data stage: the predicate, then the train or validation side of the split; emits the text and a
    shuffle key (a seeded hash of the row id)."""
    batch = _conform(batch, source.schema)
    frame = join_attributes(pl.from_arrow(batch), list(source.attributes)).lazy()
    frame = predicate_frame(frame, source.predicate)
    rows = frame.select(pl.col(source.id_column).cast(pl.String), pl.col(source.text_column)).collect()
    phase = np.zeros(rows.height, dtype=np.int64)
    copies = [""] * rows.height
    if source.selection is not None:  # a mix: its documents only, each `repeat` times, phase after phase
        rows = rows.join(load_selection(source.selection), left_on=source.id_column, right_on="doc_id", how="inner")
        rows = rows.with_columns(pl.int_ranges(0, pl.col("repeat")).alias("copy")).explode("copy")
        phase = rows["phase_index"].to_numpy().astype(np.int64)
        copies = [f"#{c}" if c else "" for c in rows["copy"].to_list()]
    ids = rows[source.id_column].fill_null("").to_list()
    held = np.fromiter((is_held_out(i, val_fraction) for i in ids), dtype=bool, count=len(ids))
    keep = held if split == "val" else ~held
    # phases in order, a seeded hash order (a reproducible shuffle) within each
    shuffle = np.fromiter((row_hash(i + c, f"shuffle{seed}") >> 8 for i, c in zip(ids, copies, strict=True)),
                          dtype=np.int64, count=len(ids))  # fmt: skip
    order = pa.array((phase << 55) + shuffle, type=pa.int64())
    text = rows[source.text_column].fill_null("").to_arrow()
    return pa.table({"text": text, "order": order}).filter(pa.array(keep))


def read_and_select(
    files: pa.Table, sources: list[SnapshotSource], split: str, val_fraction: float, seed: int
) -> Iterator[pa.Table]:
    """Ray Data stage: stream each planned Parquet file by record batches through ``select_rows``."""
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    for path, index in zip(files["path"].to_pylist(), files["source"].to_pylist(), strict=True):
        filesystem, inner = pafs.FileSystem.from_uri(path)
        with filesystem.open_input_file(inner) as handle:
            for batch in pq.ParquetFile(handle).iter_batches(batch_size=1024):
                yield select_rows(pa.Table.from_batches([batch]), sources[index], split, val_fraction, seed)


class Tokenize:
    """Ray Data actor: text -> token ids (+ EOS) and the UTF-8 byte count (for bits per byte)."""

    def __init__(self, tokenizer_bytes: bytes) -> None:
        import tempfile

        from training.tokenizer import load_tokenizer

        folder = Path(tempfile.mkdtemp(prefix="lake-tok-"))
        (folder / "tokenizer.model").write_bytes(tokenizer_bytes)
        self.tokenizer = load_tokenizer(folder)

    def __call__(self, batch: pa.Table) -> pa.Table:
        texts = batch["text"].to_pylist()
        ids = self.tokenizer.encode_batch(texts)
        eos = self.tokenizer.eos_id
        tokens = pa.array([row + [eos] for row in ids], type=pa.list_(pa.int32()))
        n_bytes = pa.array([len(t.encode("utf-8")) for t in texts], type=pa.int64())
        return pa.table({"ids": tokens, "n_bytes": n_bytes})


def build_dataset(
    sources: list[SnapshotSource],
    tokenizer_file: Path,
    split: str,
    val_fraction: float,
    *,
    shuffle_seed: int | None = 0,
    tokenize_actors: int = 1,
):
    """The lazy Ray dataset of tokenised documents of one split, in a deterministic order: sorted by a seeded
    hash of the row id (a reproducible global shuffle that mixes sources and files), or file order (None)."""
    import ray

    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # the data position counts documents in stream order
    # small CPU shares: the training workers hold most of a small machine, and reading must never starve
    # one row per data file of the plan, read in small-CPU tasks (read_parquet's file listing asks a whole CPU,
    # which deadlocks a small node whose CPUs the training workers hold)
    files = [{"path": path, "source": index} for index, source in enumerate(sources) for path in source.files]
    ds = ray.data.from_items(files, override_num_blocks=len(files))
    ds = ds.map_batches(
        read_and_select,
        fn_kwargs={"sources": sources, "split": split, "val_fraction": val_fraction, "seed": shuffle_seed or 0},
        batch_format="pyarrow",
        batch_size=1,
        num_cpus=0.25,
    )
    if shuffle_seed is not None:
        ds = ds.sort("order")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        return ds.map_batches(
            Tokenize,
            fn_constructor_kwargs={"tokenizer_bytes": Path(tokenizer_file).read_bytes()},
            batch_format="pyarrow",
            batch_size=256,
            num_cpus=0.25,
            compute=ray.data.ActorPoolStrategy(size=tokenize_actors),
            # as in ingest: the tokenizer bytes sit in the object store, so Ray logs an error per restartable
            # actor; a dead actor fails the job instead, and re-running it resumes from the last checkpoint
            max_restarts=0,
        )


def _conform(batch: pa.Table, schema: pa.Schema) -> pa.Table:
    """Files written before a schema change lack the newer columns: add them as nulls."""
    missing = [f for f in schema if f.name not in batch.column_names]
    for f in missing:
        batch = batch.append_column(f, pa.nulls(batch.num_rows, f.type))
    return batch


Document = tuple[int, int, np.ndarray]  # (epoch, index in that epoch, token ids)


def iter_documents(passes: Callable[[], Iterable[dict]], start: DataPosition, epochs: int | None = None):
    """Documents as ``(epoch, index, ids)`` from numpy batches of ``ids``, pass after pass (``passes()`` starts
    a new one), beginning at ``start``'s document; ``epochs`` bounds the passes (None: endless)."""
    epoch = start.epoch
    while epochs is None or epoch < epochs:
        index, empty = 0, True
        for batch in passes():
            for ids in batch["ids"]:
                empty = False
                if epoch > start.epoch or index >= start.docs:
                    yield epoch, index, np.asarray(ids, dtype=np.int64)
                index += 1
        if empty:
            return
        epoch += 1


class Packer:
    """Concatenate documents and cut ``batch_size × seq_len`` windows (inputs and next-token targets).

    Consecutive windows share one token: the target of a window's last position is the first input of the next,
    as in nanoGPT's contiguous stream. ``position`` always names the first token not yet used as an input.
    """

    def __init__(self, seq_len: int, batch_size: int, start: DataPosition | None = None) -> None:
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.position = DataPosition(**(start.as_dict() if start else {}))
        self._pending: list[Document] = []  # the first one already cut at position.offset
        self._pending_tokens = 0

    def batches(self, documents: Iterable[Document]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        need = self.batch_size * self.seq_len + 1
        for epoch, index, ids in documents:
            if (epoch, index) == (self.position.epoch, self.position.docs) and self.position.offset:
                ids = ids[self.position.offset :]  # resuming inside this document
            self._pending.append((epoch, index, ids))
            self._pending_tokens += len(ids)
            while self._pending_tokens >= need:
                yield self._cut(need)

    def _cut(self, need: int) -> tuple[np.ndarray, np.ndarray]:
        arrays = [ids for _, _, ids in self._pending]
        window = np.concatenate(arrays)[:need] if len(arrays) > 1 else arrays[0][:need]
        self._advance(need - 1)
        x = window[:-1].reshape(self.batch_size, self.seq_len)
        y = window[1:].reshape(self.batch_size, self.seq_len)
        return x, y

    def _advance(self, used: int) -> None:
        """Drop ``used`` tokens from the front of the pending stream and move the position with them."""
        self._pending_tokens -= used
        while used:
            epoch, index, head = self._pending[0]
            offset = self.position.offset if (epoch, index) == (self.position.epoch, self.position.docs) else 0
            if len(head) <= used:
                used -= len(head)
                self._pending.pop(0)
                self.position = DataPosition(epoch, index + 1, 0)
            else:
                self._pending[0] = (epoch, index, head[used:])
                self.position = DataPosition(epoch, index, offset + used)
                used = 0
        if self._pending and self.position.offset == 0:  # point at the next pending document exactly
            epoch, index, _ = self._pending[0]
            self.position = DataPosition(epoch, index, 0)


def validation_windows(batches: Iterable[dict], seq_len: int, max_tokens: int) -> tuple[np.ndarray, float]:
    """Held-out documents packed into non-overlapping windows, and their bytes per token (for bits per byte)."""
    tokens, n_bytes = [], 0
    total = 0
    for batch in batches:
        for ids, size in zip(batch["ids"], batch["n_bytes"], strict=True):
            if total >= max_tokens:
                break
            tokens.append(np.asarray(ids, dtype=np.int64))
            n_bytes += int(size)
            total += len(ids)
    if not tokens:
        return np.zeros((0, seq_len + 1), dtype=np.int64), 0.0
    stream = np.concatenate(tokens)
    rows = len(stream) // (seq_len + 1)
    if rows == 0:  # less than one window of held-out text: use what there is as one shorter window
        return stream[None, :], n_bytes / len(stream)
    return stream[: rows * (seq_len + 1)].reshape(rows, seq_len + 1), n_bytes / len(stream)
