"""Model-based quality score (the DCLM recipe): a fastText classifier of "reference-like" vs random web text."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pyarrow as pa

from operators.base import Operator, Resources, with_columns
from operators.text import CJK_RE, split_words

POSITIVE = "__label__hq"
NEGATIVE = "__label__lq"


def fasttext_line(text: str | None, max_chars: int = 4000) -> str:
    """The classifier's view of a text: lower-cased words on one line, each CJK character a word of its own
    (fastText splits on spaces only; with word bigrams, Chinese then gets character bigrams)."""
    text = (text or "")[:max_chars].lower()
    if CJK_RE.search(text):
        return " ".join(split_words(text))
    return " ".join(text.split())  # the same words, without the regex pass (2x faster on Latin text)


class QualityScore(Operator):
    """Writes ``quality_score`` in [0, 1]: the classifier's probability that the text is high quality."""

    name = "quality_model"
    input_columns = ("text",)
    output_columns = {"quality_score": pa.float32()}
    resources = Resources(num_cpus=1, batch_size=2048, stateful=True)

    def __init__(self, model_bytes: bytes, max_chars: int = 4000) -> None:
        self.model_bytes = model_bytes  # travels with the operator: workers need no shared disk
        self.max_chars = max_chars
        self._model = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_model": None}

    def _load(self):
        import fasttext

        with tempfile.TemporaryDirectory(prefix="lake-quality-") as tmp:
            path = Path(tmp) / "model.bin"
            path.write_bytes(self.model_bytes)
            return fasttext.load_model(os.fspath(path))

    def apply(self, batch: pa.Table) -> pa.Table:
        if self._model is None:
            self._model = self._load()
        lines = [fasttext_line(t, self.max_chars) for t in batch.column("text").to_pylist()]
        labels, probs = self._model.predict(lines, k=2)
        scores = []
        for line, names, p in zip(lines, labels, probs, strict=True):
            if not line:
                scores.append(None)
                continue
            by_label = dict(zip(names, p, strict=True))
            scores.append(min(1.0, float(by_label.get(POSITIVE, 1.0 - by_label.get(NEGATIVE, 1.0)))))
        return with_columns(batch, {"quality_score": pa.array(scores, pa.float32())})
