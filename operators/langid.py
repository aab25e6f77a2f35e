"""Language identification with fastText's lid.176 model (176 languages, ISO 639 codes)."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa

from operators.base import Operator, Resources, register, with_columns
from operators.resources_paths import resolve

_LABEL_PREFIX = "__label__"


@register("language_id")
class LanguageID(Operator):
    """Writes ``lang`` (e.g. ``zh``, ``en``, ``ja``) and ``lang_score`` (the model's probability) from
    ``text``.

    Rows with no text (null or blank) get null ``lang`` and ``lang_score``. Only the first ``max_chars``
    characters are scored: language is settled long before that, and fastText's cost grows with length.
    """

    input_columns = ("text",)
    output_columns = {"lang": pa.string(), "lang_score": pa.float32()}
    resources = Resources(num_cpus=1, batch_size=512, stateful=True)

    def __init__(self, model_path: str | None = None, max_chars: int = 10_000):
        self.model_path = resolve(model_path, "models/lid.176.ftz")
        if not Path(self.model_path).is_file():
            raise ValueError(f"language_id: fastText model not found at {self.model_path} (set model_path)")
        self.max_chars = max_chars
        self._model = None  # loaded on first call, in the worker: fastText models are not picklable

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_model": None}

    def _load(self):
        import fasttext  # fasttext-numpy2-wheel: the only fastText build whose predict() works with numpy 2

        return fasttext.load_model(os.fspath(self.model_path))

    def apply(self, batch: pa.Table) -> pa.Table:
        if self._model is None:
            self._model = self._load()
        texts = batch.column("text").to_pylist()
        # fastText predicts one line at a time and rejects "\n" in its input.
        todo = [(i, " ".join(t[: self.max_chars].split())) for i, t in enumerate(texts) if t and t.strip()]
        langs: list[str | None] = [None] * len(texts)
        scores: list[float | None] = [None] * len(texts)
        if todo:
            labels, probs = self._model.predict([t for _, t in todo], k=1)
            for (i, _), label, prob in zip(todo, labels, probs, strict=True):
                langs[i] = label[0].removeprefix(_LABEL_PREFIX)
                scores[i] = min(float(prob[0]), 1.0)  # fastText can return 1.00001
        return with_columns(batch, {"lang": pa.array(langs, pa.string()), "lang_score": pa.array(scores, pa.float32())})
