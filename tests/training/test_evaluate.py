"""The mc suite's scoring on real CMMLU rows with a real tiny model and a tokenizer trained on CMMLU text: the
shared-prefix KV-cache path equals a plain full forward, a model whose logits favour a letter scores exactly that
letter's share (100% on items whose answer it is), a random model scores about chance; perplexity figures add up.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

from conftest import DATA_DIR
from training.evaluate import (
    LETTERS,
    encode_item,
    format_question,
    mc_prefix,
    nll_of_texts,
    ppl_figures,
    score_mc,
    score_subject,
    score_truncated,
)
from training.model import LlamaModel, ModelConfig
from training.tokenizer import load_tokenizer, train_tokenizer

SUBJECTS = ["anatomy", "astronomy", "chinese_history", "college_law", "marketing", "virology"]


def _rows(split: str, subject: str) -> list[dict]:
    with open(DATA_DIR / "eval/cmmlu" / split / f"{subject}.csv", encoding="utf-8", newline="") as fh:
        return [{"question": r["Question"], "choices": [r[c] for c in LETTERS], "answer": r["Answer"]}
                for r in csv.DictReader(fh)]  # fmt: skip


@pytest.fixture(scope="module")
def data() -> tuple[dict, dict]:
    items = {s: _rows("test", s)[:20] for s in SUBJECTS}
    shots = {s: _rows("dev", s) for s in SUBJECTS}
    return items, shots


@pytest.fixture(scope="module")
def tokenizer(data, tmp_path_factory):
    items, shots = data
    texts = [format_question(r) + r["answer"] for rows in (*items.values(), *shots.values()) for r in rows]
    out = tmp_path_factory.mktemp("tok")
    train_tokenizer(texts * 3, 3000, out)
    return load_tokenizer(out)


def _model(tokenizer, seed: int = 0, max_seq_len: int = 1024) -> LlamaModel:
    cfg = ModelConfig(vocab_size=tokenizer.vocab_size, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, multiple_of=32,
                      max_seq_len=max_seq_len)  # fmt: skip
    return LlamaModel(cfg, seed=seed).eval()


def _favouring(tokenizer, letter_id: int) -> LlamaModel:
    """A real model whose LM head (zero weights, a bias) puts the highest logit on one token everywhere."""
    model = _model(tokenizer)
    head = torch.nn.Linear(model.cfg.dim, model.cfg.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[letter_id] = 5.0
    model.lm_head = head
    return model


def _encoded(tokenizer, items, shots, subject):
    prefix = mc_prefix(subject, shots[subject][:5])
    return [encode_item(tokenizer, prefix + format_question(r), r["answer"]) for r in items[subject]]


def test_shared_prefix_cache_equals_full_forward(tokenizer, data):
    items, shots = data
    model = _model(tokenizer, seed=3)
    for subject in SUBJECTS[:2]:
        encoded = _encoded(tokenizer, items, shots, subject)[:5]
        assert len(encoded[0].context) > 200  # a real 5-shot prompt
        cached = torch.tensor(score_subject(model, model.cfg, encoded, batch_size=4))
        plain = torch.tensor(score_truncated(model, encoded, max_len=10_000))
        torch.testing.assert_close(cached, plain, atol=2e-4, rtol=1e-4)


def test_too_long_prompts_are_cut_from_the_left(tokenizer, data):
    items, shots = data
    model = _model(tokenizer, max_seq_len=128)
    encoded = _encoded(tokenizer, items, shots, SUBJECTS[0])[:4]
    scores = score_subject(model, model.cfg, encoded)
    assert all(len(s) == 4 and all(math.isfinite(v) for v in s) for s in scores)


def test_accuracy_is_the_favoured_letters_share(tokenizer, data):
    items, shots = data
    letter_ids = {encode_item(tokenizer, "答案：", letter).continuations[i][0] for i, letter in enumerate(LETTERS)}
    assert len(letter_ids) == 4
    for i, letter in enumerate(LETTERS):
        token = encode_item(tokenizer, "答案：", letter).continuations[i][0]
        model = _favouring(tokenizer, token)
        only = {s: [r for r in rows if r["answer"] == letter] for s, rows in items.items()}
        result = score_mc(model, model.cfg, tokenizer, {s: r for s, r in only.items() if r}, shots)
        assert result["accuracy"] == 1.0 and result["n"] >= 15, (letter, result)
        if letter == "A":  # on every item: exactly the share of items whose answer is the favoured letter
            every = score_mc(model, model.cfg, tokenizer, items, shots)
            share = sum(r["answer"] == letter for rows in items.values() for r in rows) / every["n"]
            assert every["accuracy"] == pytest.approx(share) and 0 < share < 0.5
            assert {p for preds in every["predictions"].values() for p in preds} == {letter}


def test_random_model_scores_about_chance(tokenizer, data):
    items, shots = data
    results = [score_mc(_model(tokenizer, seed=s), _model(tokenizer).cfg, tokenizer, items, shots) for s in (1, 2)]
    assert all(0.12 < r["accuracy"] < 0.38 for r in results), [r["accuracy"] for r in results]
    assert results[0]["n"] == 120 and set(results[0]["subjects"]) == set(SUBJECTS)
    assert "log-likelihood" in results[0]["method"] and "lm-eval" in results[0]["method"]


def test_perplexity_figures_count_tokens_bytes_and_chars(tokenizer, data):
    items, _ = data
    texts = [format_question(r) for r in items["anatomy"][:5]]
    model = _model(tokenizer, max_seq_len=64)  # several windows per document
    nll, tokens = nll_of_texts(model, model.cfg, tokenizer, texts)
    assert tokens == sum(len(tokenizer.encode(t)) for t in texts)
    fig = ppl_figures(nll, tokens, texts)
    assert fig["bytes"] == sum(len(t.encode()) for t in texts) and fig["chars"] == sum(map(len, texts))
    assert fig["ppl"] == pytest.approx(math.exp(nll / tokens))
    assert fig["bits_per_byte"] == pytest.approx(nll / math.log(2) / fig["bytes"])
    assert fig["bits_per_char"] > fig["bits_per_byte"]  # Chinese: 3 bytes a character
    # a random model is near uniform over the vocabulary
    assert 0.5 * tokenizer.vocab_size < fig["ppl"] < 2 * tokenizer.vocab_size


def test_ceval_files_import_with_subject_and_split_from_the_name(lake, tmp_path: Path):
    from pipelines.imports import import_files

    header = "id,question,A,B,C,D,answer\n"
    dev, val = tmp_path / "computer_network_dev.csv", tmp_path / "computer_network_val.csv"
    dev.write_text(header + "0,问题一,甲,乙,丙,丁,A\n", encoding="utf-8")
    val.write_text(header + "0,问题二,甲,乙,丙,丁,C\n1,问题三,甲,乙,丙,丁,D\n", encoding="utf-8")
    report = import_files(lake, "mc", [str(dev), str(val)], "eval.ceval", progress=False)
    assert report.imported == 3 and report.rejected == 0
    rows = lake.read("eval.ceval").to_pylist()
    found = {(r["subject"], r["split"], r["answer"]) for r in rows}
    assert found == {
        ("computer_network", "dev", "A"),
        ("computer_network", "val", "C"),
        ("computer_network", "val", "D"),
    }
