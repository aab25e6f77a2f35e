"""Per-document perplexity under a reference LM from our registry, and CCNet-style head/middle/tail buckets.

``document_windows`` and ``score_windows`` are the maths (also used by the benchmark's plain loop for the same
numbers): a document is BOS + its tokens, cut into windows of at most ``seq_len`` predicted tokens that share
one boundary token, so every token after BOS is predicted exactly once; the document's perplexity is
``exp(Σ NLL / n_predicted)`` over its first ``max_tokens`` tokens. ``PerplexityScore`` is the batch operator:
windows of a whole batch sorted by length and packed into padded micro-batches of about ``batch_tokens`` (right
padding needs no mask under a causal model), scored in ``torch.inference_mode``.

Buckets (Wenzek et al. 2019, CCNet §3.3): per language, documents under the corpus's 30th percentile of
perplexity are ``head``, under the 60th ``middle``, the rest ``tail``. The cut-offs are computed on the first
labelling of a table (per language with enough documents, else over all), stored on the attribute table and
reused for later crawl batches, so a document's bucket does not move when new documents arrive.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from operators.base import Operator, Resources, with_columns
from pipelines.label import Labeler

PERCENTILE_HEAD = 30
PERCENTILE_TAIL = 60
MIN_DOCS_PER_LANGUAGE = 50  # fewer documents of a language: it uses the all-language cut-offs
ALL_LANGUAGES = "*"
PROP_CUTOFFS = "lake.ppl.cutoffs"


def document_windows(ids: list[int], bos_id: int, seq_len: int, max_tokens: int) -> list[np.ndarray]:
    """BOS + the first ``max_tokens`` ids, cut into windows of ≤ ``seq_len + 1`` tokens overlapping by one."""
    stream = np.asarray([bos_id, *ids[:max_tokens]], dtype=np.int64)
    return [stream[start : start + seq_len + 1] for start in range(0, max(len(stream) - 1, 1), seq_len)]


def score_windows(model, windows: list[np.ndarray], batch_tokens: int, device: str = "cpu") -> np.ndarray:
    """Summed next-token NLL of each window (``len(w) - 1`` predictions), length-sorted into padded batches."""
    import torch
    import torch.nn.functional as F

    sums = np.zeros(len(windows), dtype=np.float64)
    order = sorted(range(len(windows)), key=lambda i: len(windows[i]))
    start = 0
    with torch.inference_mode():
        while start < len(order):
            longest = len(windows[order[start]])
            end = start + 1
            while end < len(order):  # grow while the padded batch stays within the token budget
                longest = max(longest, len(windows[order[end]]))
                if (end - start + 1) * longest > batch_tokens:
                    break
                end += 1
            chunk = order[start:end]
            width = max(len(windows[i]) for i in chunk)
            tokens = torch.zeros((len(chunk), width), dtype=torch.long)
            targets = torch.full((len(chunk), width - 1), -100, dtype=torch.long)
            for row, i in enumerate(chunk):
                w = torch.from_numpy(windows[i])
                tokens[row, : len(w)] = w
                targets[row, : len(w) - 1] = w[1:]
            logits = model(tokens[:, :-1].to(device)).float()
            # flattened rows: cross_entropy over a [B, V, T] transposed view is several times slower on CPU
            nll = F.cross_entropy(
                logits.reshape(-1, logits.size(-1)), targets.to(device).reshape(-1), ignore_index=-100, reduction="none"
            )
            sums[chunk] = nll.view(len(chunk), -1).sum(dim=1).double().cpu().numpy()
            start = end
    return sums


class PerplexityScore(Operator):
    """Writes ``ppl`` (token perplexity of the document's first ``max_tokens`` tokens) and ``ppl_tokens``."""

    name = "perplexity"
    input_columns = ("text",)
    output_columns = {"ppl": pa.float32(), "ppl_tokens": pa.int32()}
    resources = Resources(num_cpus=1, batch_size=256, stateful=True)

    def __init__(
        self,
        model_files: dict[str, bytes],
        max_tokens: int = 1024,
        batch_tokens: int = 2048,  # measured on 2 CPU cores: 8192 is 20% slower (bigger logits, worse cache use)
        torch_threads: int = 0,  # 0: as the process has (Ray gives an actor of 1 CPU one thread; local: all)
        num_gpus: float = 0.0,
    ) -> None:
        self.model_files = model_files  # the checkpoint folder travels as bytes: workers need no shared disk
        self.max_tokens = max_tokens
        self.batch_tokens = batch_tokens
        self.torch_threads = torch_threads
        self.resources = Resources(num_cpus=1, num_gpus=num_gpus, batch_size=256, stateful=True)
        self._loaded: tuple | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_loaded": None}

    def _load(self):
        import tempfile

        import torch

        from training.checkpoint import load_pretrained
        from training.tokenizer import load_tokenizer

        folder = Path(tempfile.mkdtemp(prefix="lake-ppl-"))
        for name, data in self.model_files.items():
            (folder / name).write_bytes(data)
        device = "cuda" if torch.cuda.is_available() and self.resources.num_gpus else "cpu"
        if device == "cpu" and self.torch_threads:
            torch.set_num_threads(self.torch_threads)
        model, cfg = load_pretrained(folder, device=device, dtype=torch.float32)
        return model, cfg, load_tokenizer(folder), device

    def __call__(self, batch: pa.Table) -> pa.Table:
        self.check_input(batch)
        if self._loaded is None:
            self._loaded = self._load()
        model, cfg, tokenizer, device = self._loaded
        texts = [t or "" for t in batch.column("text").to_pylist()]
        ids = tokenizer.encode_batch(texts)
        windows, owner = [], []
        for doc, row in enumerate(ids):
            for w in document_windows(row, tokenizer.bos_id, cfg.max_seq_len, self.max_tokens):
                if len(w) > 1:  # an empty document is BOS alone: nothing to predict, perplexity null
                    windows.append(w)
                    owner.append(doc)
        sums = score_windows(model, windows, self.batch_tokens, device)
        nll = np.bincount(owner, weights=sums, minlength=len(texts))
        counts = np.bincount(owner, weights=[len(w) - 1 for w in windows], minlength=len(texts))
        ppl = [math.exp(s / n) if n else None for s, n in zip(nll, counts, strict=True)]
        return with_columns(
            batch,
            {"ppl": pa.array(ppl, pa.float32()), "ppl_tokens": pa.array(counts.astype(np.int32), pa.int32())},
        )


def percentile_table(ppl: np.ndarray, lang: np.ndarray) -> dict[str, list[float]]:
    """Perplexity at percentiles 0..99 per language with enough documents, and over all (``*``): the shape of
    CCNet's ``cutoff.csv``."""
    table = {ALL_LANGUAGES: np.percentile(ppl, range(100)).tolist()} if len(ppl) else {}
    for code in sorted(set(lang.tolist()) - {None}):
        values = ppl[lang == code]
        if len(values) >= MIN_DOCS_PER_LANGUAGE:
            table[code] = np.percentile(values, range(100)).tolist()
    return table


def assign_buckets(ppl: np.ndarray, lang: np.ndarray, cutoffs: dict[str, list[float]]) -> list[str | None]:
    out: list[str | None] = []
    fallback = cutoffs.get(ALL_LANGUAGES)
    for value, code in zip(ppl, lang, strict=True):
        cut = cutoffs.get(code, fallback)
        if cut is None or value is None or np.isnan(value):
            out.append(None)
        elif value < cut[PERCENTILE_HEAD]:
            out.append("head")
        elif value < cut[PERCENTILE_TAIL]:
            out.append("middle")
        else:
            out.append("tail")
    return out


class PerplexityLabeler(Labeler):
    name = "ppl"
    optional_columns = ("lang",)

    def __init__(self, model_uri: str, model_files: dict[str, bytes], **options: Any) -> None:
        self.version = model_uri
        self.operator = PerplexityScore(model_files, **options)
        self.cutoffs: dict[str, list[float]] = {}

    def stored_fields(self) -> list[pa.Field]:
        return [*super().stored_fields(), pa.field("ppl_bucket", pa.string())]

    def finish(self, rows: pa.Table, previous: dict[str, str]) -> tuple[pa.Table, dict[str, Any]]:
        ppl = rows["ppl"].to_numpy(zero_copy_only=False).astype(np.float64)
        lang = (
            np.asarray(rows["lang"].to_pylist(), dtype=object)
            if "lang" in rows.column_names
            else np.full(rows.num_rows, None, dtype=object)
        )
        stored = json.loads(previous.get(PROP_CUTOFFS) or "{}")
        fixed = stored.get("version") == self.version and stored.get("cutoffs")
        finite = ~np.isnan(ppl)
        self.cutoffs = stored["cutoffs"] if fixed else percentile_table(ppl[finite], lang[finite])
        rows = with_columns(rows, {"ppl_bucket": pa.array(assign_buckets(ppl, lang, self.cutoffs), pa.string())})
        stats: dict[str, Any] = {"cutoffs_reused": bool(fixed)}
        if finite.any():
            stats |= {"ppl_median": float(np.median(ppl[finite])), "ppl_mean": float(np.mean(ppl[finite]))}
        for bucket in ("head", "middle", "tail"):
            stats[f"bucket_{bucket}"] = int(pc.sum(pc.equal(rows["ppl_bucket"], bucket)).as_py() or 0)
        stats["cutoffs"] = {
            code: {"p30": cut[PERCENTILE_HEAD], "p60": cut[PERCENTILE_TAIL]} for code, cut in self.cutoffs.items()
        }
        return rows, stats

    def properties(self) -> dict[str, str]:
        return {PROP_CUTOFFS: json.dumps({"version": self.version, "cutoffs": self.cutoffs})}

    def figure(self, rows: pa.Table, stats: dict[str, Any]):
        from matplotlib.figure import Figure

        fig = Figure(figsize=(6.5, 3.5), dpi=100)
        ax = fig.add_subplot(1, 1, 1)
        ppl = rows["ppl"].to_numpy(zero_copy_only=False).astype(np.float64)
        ppl = ppl[~np.isnan(ppl)]
        if len(ppl):
            ax.hist(np.log10(ppl), bins=40, color="#4472c4")
            cut = self.cutoffs.get(ALL_LANGUAGES)
            if cut:
                for p, name in ((PERCENTILE_HEAD, "p30"), (PERCENTILE_TAIL, "p60")):
                    ax.axvline(math.log10(cut[p]), color="#c00000", linestyle="--")
                    ax.text(math.log10(cut[p]), ax.get_ylim()[1] * 0.9, name, color="#c00000")
        ax.set_xlabel("log10 perplexity")
        ax.set_ylabel("documents")
        ax.set_title(f"perplexity under {self.version} ({len(ppl)} documents)")
        fig.tight_layout()
        return fig

    def artifacts(self) -> dict[str, str]:
        return {"ppl_cutoffs.csv": self.cutoff_csv()}

    def cutoff_csv(self) -> str:
        """The cut-offs in CCNet's ``cutoff.csv`` shape: a row per percentile, a column per language."""
        codes = list(self.cutoffs)
        lines = ["," + ",".join(codes)]
        for p in range(100):
            lines.append(f"{p}," + ",".join(f"{self.cutoffs[c][p]:.2f}" for c in codes))
        return "\n".join(lines) + "\n"
