"""Packing, the resumable data position, the held-out split and the schedules, without Ray."""

from __future__ import annotations

import numpy as np
import pytest

from lake.errors import UsageError
from training.config import OptimConfig, PretrainConfig, from_dict
from training.data import DataPosition, Packer, is_held_out, iter_documents, predicate_frame, validation_windows
from training.optim import lr_at


def _corpus(n_docs: int = 37, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    docs = []
    for i in range(n_docs):
        length = int(rng.integers(1, 60))
        docs.append(np.concatenate([rng.integers(10, 1000, size=length), [2]]))  # 2 = EOS ends every document
        docs[-1][0] = 10_000 + i  # a token that names the document
    return docs


def _passes(docs: list[np.ndarray], per_batch: int = 5):
    def one_pass():
        for start in range(0, len(docs), per_batch):
            yield {"ids": docs[start : start + per_batch]}

    return one_pass


def test_windows_are_the_concatenated_stream_with_nothing_truncated_or_padded():
    docs = _corpus()
    packer = Packer(seq_len=16, batch_size=3)
    windows = list(packer.batches(iter_documents(_passes(docs), DataPosition(), epochs=1)))
    stream = np.concatenate(docs)
    assert len(windows) == (len(stream) - 1) // 48
    for k, (x, y) in enumerate(windows):
        assert x.shape == y.shape == (3, 16)
        np.testing.assert_array_equal(x.reshape(-1), stream[k * 48 : k * 48 + 48])
        np.testing.assert_array_equal(y.reshape(-1), stream[k * 48 + 1 : k * 48 + 49])


@pytest.mark.parametrize("stop_after", [1, 2, 5, 9])
def test_resuming_from_a_saved_position_neither_repeats_nor_skips_tokens(stop_after):
    docs = _corpus(53, seed=stop_after)
    uninterrupted = list(Packer(8, 2).batches(iter_documents(_passes(docs), DataPosition(), epochs=3)))

    first = Packer(8, 2)
    before = []
    for batch in first.batches(iter_documents(_passes(docs), DataPosition(), epochs=3)):
        before.append(batch)
        if len(before) == stop_after:
            break
    saved = DataPosition(**first.position.as_dict())  # what a checkpoint stores
    resumed = Packer(8, 2, saved)
    after = list(resumed.batches(iter_documents(_passes(docs), saved, epochs=3)))

    assert len(before) + len(after) == len(uninterrupted)
    for got, want in zip(before + after, uninterrupted, strict=True):
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


def test_position_crosses_epochs():
    docs = _corpus(4)
    packer = Packer(4, 1)
    list(packer.batches(iter_documents(_passes(docs), DataPosition(), epochs=2)))
    assert packer.position.epoch == 1


def test_held_out_split_is_stable_and_near_its_fraction():
    ids = [f"doc-{i}" for i in range(20_000)]
    held = [i for i in ids if is_held_out(i, 0.05)]
    assert 0.04 < len(held) / len(ids) < 0.06
    assert held == [i for i in ids if is_held_out(i, 0.05)]
    assert not any(is_held_out(i, 0.0) for i in ids[:100])


def test_validation_windows_and_bytes_per_token():
    batch = {"ids": [np.arange(30), np.arange(50)], "n_bytes": np.array([60, 100])}
    rows, bytes_per_token = validation_windows([batch], seq_len=9, max_tokens=10_000)
    assert rows.shape == (8, 10)
    assert bytes_per_token == pytest.approx(160 / 80)


def test_schedules_warm_up_then_follow_their_shape():
    cosine = OptimConfig(lr=1.0, min_lr_ratio=0.1, warmup_steps=10, max_steps=110, schedule="cosine")
    assert lr_at(0, cosine) == pytest.approx(0.1)
    assert lr_at(9, cosine) == pytest.approx(1.0)
    assert lr_at(60, cosine) == pytest.approx(0.55)
    assert lr_at(110, cosine) == pytest.approx(0.1)
    wsd = OptimConfig(lr=1.0, min_lr_ratio=0.0, warmup_steps=10, max_steps=100, schedule="wsd", decay_fraction=0.2)
    assert lr_at(50, wsd) == 1.0 and lr_at(79, wsd) == 1.0
    assert lr_at(90, wsd) == pytest.approx(0.5)
    assert lr_at(100, wsd) == pytest.approx(0.0)


def test_unknown_config_keys_and_bad_values_are_usage_errors():
    with pytest.raises(UsageError, match="unknown config key optim.learning_rate"):
        from_dict(PretrainConfig, {"optim": {"learning_rate": 1}})
    with pytest.raises(UsageError, match="optim.schedule"):
        from_dict(
            PretrainConfig,
            {"name": "m", "tokenizer": "models:/t/1", "data": {"table": "a.b"}, "optim": {"schedule": "linear"}},
        ).validate()


def test_row_predicates_select_rows_but_read_no_files(tmp_path):
    """``where`` predicates of jobs, evals and mixes run in ``lake query``'s dialect and under its rules."""
    import polars as pl

    secret = tmp_path / "secret.csv"
    pl.DataFrame({"a": [2]}).write_csv(secret)
    rows = pl.LazyFrame({"doc_id": ["x", "y"], "input_uri": ["a/belle_eval.json", "b/alpaca.json"]})
    assert predicate_frame(rows, "input_uri LIKE '%belle_eval%'").collect()["doc_id"].to_list() == ["x"]
    assert predicate_frame(rows, "doc_id IN (SELECT doc_id FROM rows WHERE doc_id > 'x')").collect().height == 1
    for predicate, error in [
        (f"EXISTS (SELECT 1 FROM read_csv('{secret}') WHERE a = 2)", "not files"),  # a file-content oracle
        (f"doc_id IN (SELECT a::text FROM read_parquet('{tmp_path}/*.parquet'))", "not files"),
        ("true; DROP TABLE rows", "one statement"),
        ("doc_id IN (SELECT doc_id FROM sft.examples)", "unknown table"),
    ]:
        with pytest.raises(UsageError, match=error):
            predicate_frame(rows, predicate)
