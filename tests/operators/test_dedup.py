"""Dedup building blocks on real shared pages: tokens and shingles, vectorised MinHash, LSH bands, exact keys."""

from __future__ import annotations

import json
import re
from itertools import pairwise

import numpy as np
import pyarrow as pa
import pytest
from benchmarks import dedup as bench  # tests/ is on pytest's pythonpath

from operators.dedup import (
    MINHASH_ENGINES,
    MinHashSignature,
    band_hashes,
    candidate_probability,
    choose_bands,
    decode_signatures,
    minhash_signatures,
    normalize_text,
    normalize_url,
    shingle_hashes,
    shingle_set,
    signature_algorithm,
    signature_similarity,
    text_hashes,
    token_hashes,
)
from operators.text import CJK_CHARS


@pytest.fixture(scope="module")
def zh_pages(data_dir) -> list[str]:
    folder = data_dir / "web" / "cx-extractor" / "Text"
    return [(folder / f"{i}.txt").read_bytes().decode("gbk", errors="replace") for i in range(1, 9)]


@pytest.fixture(scope="module")
def en_pages(data_dir) -> list[str]:
    lines = (data_dir / "text" / "c4_demo.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["text"] for line in lines[:8]]


# a plain-Python reference of the tokenizer: one CJK character, or a run of other letters/digits
_REF_TOKEN = re.compile(f"[{CJK_CHARS}]|[^\\W_{CJK_CHARS}]+")


def reference_shingles(text: str, n: int) -> set[tuple[str, ...]]:
    tokens = _REF_TOKEN.findall(normalize_text(text))
    if 0 < len(tokens) < n:
        return {tuple(tokens)}
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


def test_chinese_is_shingled_by_characters_not_as_one_word(zh_pages):
    page = zh_pages[0]
    han = len(re.findall(f"[{CJK_CHARS}]", page))
    hashes, offsets = token_hashes([page])
    assert offsets[1] >= han, "every Han character is a token"
    # one character changed every ~100: character 5-grams keep most shingles; whitespace "words" keep almost none
    edited = "".join("X" if i % 100 == 50 and "\u4e00" <= c <= "\u9fff" else c for i, c in enumerate(page))
    auto = bench.jaccard(shingle_set(page, 5, "auto"), shingle_set(edited, 5, "auto"))
    words = bench.jaccard(shingle_set(page, 5, "word"), shingle_set(edited, 5, "word"))
    assert auto > 0.8
    assert words < 0.5
    _, word_offsets = token_hashes([page], "word")
    assert word_offsets[1] < han / 5, "the naive rule sees clause-long giant words"


def test_vectorised_shingles_match_a_python_reference(zh_pages, en_pages):
    texts = zh_pages[:4] + en_pages[:4]
    hashes, offsets, _ = shingle_hashes(texts, 5)
    for i, text in enumerate(texts):
        ref = reference_shingles(text, 5)
        mine = set(hashes[offsets[i] : offsets[i + 1]].tolist())
        assert len(mine) == len(ref), "distinct n-grams <-> distinct 64-bit hashes"
    for a, b in pairwise(texts[:4]):
        ref = bench.jaccard(reference_shingles(a, 5), reference_shingles(b, 5))
        assert bench.jaccard(shingle_set(a), shingle_set(b)) == pytest.approx(ref, abs=1e-12)


def test_normalisation_ignores_case_width_digits_and_punctuation():
    assert normalize_text("ＡＢＣ Straße ２０２４") == "abc straße 0000"
    assert shingle_set("Hello, World! It is 2024 now.", 3) == shingle_set("hello world it is 1999 NOW", 3)
    th = text_hashes(["Hello,   world!", "hello world", "hello there", "", "。！"])
    assert th[0] == th[1] != th[2]
    assert th[3] == 0 and th[4] == 0, "no tokens: no exact key"


def test_short_texts_get_one_shingle_and_empty_texts_none():
    _, offsets, counts = shingle_hashes(["one two", "", "a b c d e f"], 5)
    assert list(np.diff(offsets)) == [1, 0, 2]
    assert list(counts) == [2, 0, 6]


@pytest.mark.parametrize("engine", MINHASH_ENGINES)
def test_signatures_do_not_depend_on_batch_composition(zh_pages, en_pages, engine):
    texts = [en_pages[0], "", zh_pages[0], en_pages[1] * 30]  # the last one spans many chunks
    together, sh, _ = minhash_signatures(texts, chunk_shingles=512, engine=engine)
    for i, text in enumerate(texts):
        alone, _, _ = minhash_signatures([text], engine=engine)
        assert np.array_equal(together[i], alone[0])
    assert sh[1] == 0 and (together[1] == 0xFFFFFFFF).all()


@pytest.mark.parametrize("engine", MINHASH_ENGINES)
def test_signature_similarity_estimates_jaccard_on_planted_pairs(zh_pages, en_pages, engine):
    errors = []
    for n, text in enumerate(zh_pages[:4] + en_pages[:4]):
        for level in (0.95, 0.85, 0.7, 0.5):
            copy, truth = bench.plant(text, level, seed=n)
            sigs, _, _ = minhash_signatures([text, copy], num_perm=256, engine=engine)
            errors.append(signature_similarity(sigs[0], sigs[1]) - truth)
    errors = np.array(errors)
    assert np.abs(errors).max() < 0.12  # ~4 standard deviations at 256 permutations
    assert abs(errors.mean()) < 0.02, "unbiased"


def test_lsh_parameters_from_threshold_and_weights():
    bands, rows = choose_bands(0.8, 128)
    assert bands * rows <= 128
    assert candidate_probability(0.85, bands, rows) > 0.95
    assert candidate_probability(0.5, bands, rows) < 0.05
    balanced = choose_bands(0.8, 128, 0.5, 0.5)
    assert candidate_probability(0.8, *balanced) < candidate_probability(0.8, bands, rows), "recall-weighted"
    with pytest.raises(ValueError):
        choose_bands(1.2, 128)


def test_band_hashes_collide_exactly_on_equal_bands():
    rng = np.random.default_rng(0)
    sigs = rng.integers(0, 2**32, size=(3, 128), dtype=np.uint32)
    sigs[1, :9] = sigs[0, :9]  # same first band only
    keys = band_hashes(sigs, 14, 9)
    assert keys.shape == (3, 14)
    assert keys[0, 0] == keys[1, 0] and (keys[0, 1:] != keys[1, 1:]).all()
    assert len(set(keys[2].tolist())) == 14, "band index is part of the key"


def test_url_normalisation():
    assert (
        normalize_url("HTTPS://www.Example.com:443/a/b/?utm_source=x&b=2&a=1#top") == "http://example.com/a/b?a=1&b=2"
    )
    assert normalize_url("http://example.com:8080/") == "http://example.com:8080/"
    assert normalize_url("  ") is None


def test_operator_adds_signature_columns(zh_pages):
    batch = pa.table(
        {
            "doc_id": ["a", "b", "c"],
            "text": [zh_pages[0], zh_pages[0].upper(), ""],
            "url": ["http://x.cn/1", None, "http://www.x.cn/1/"],
        }
    )
    out = MinHashSignature(num_perm=64)(batch)
    assert out.schema.field("dup_sig").type == pa.binary()
    sigs = decode_signatures(out["dup_sig"], 64)
    assert sigs.shape == (3, 64) and np.array_equal(sigs[0], sigs[1])
    assert out["dup_text_hash"][0] == out["dup_text_hash"][1] and not out["dup_text_hash"][2].is_valid
    hashes = out["dup_url_hash"].to_pylist()
    assert hashes[0] == hashes[2] and hashes[1] is None
    assert decode_signatures(out["dup_sig"].slice(1, 2), 64).shape == (2, 64)
    with pytest.raises(ValueError, match="needs columns"):
        MinHashSignature()(pa.table({"doc_id": ["a"]}))


def test_signatures_are_seeded_and_named_by_engine():
    """The same text and seed give the same signature in any process and release (pinned values: a rensa release
    that changes them must change its ALGORITHM_VERSION too); another seed or engine gives other values, and
    ``signature_algorithm`` names the engine so stored signatures can be told apart."""
    text = "The council approved the budget after a long debate about schools, roads and the new library."
    first, _, _ = minhash_signatures([text], num_perm=16)
    other_seed, _, _ = minhash_signatures([text], num_perm=16, seed=7)
    numpy_engine, _, _ = minhash_signatures([text], num_perm=16, engine="numpy")
    assert first[0, :4].tolist() == [1002514469, 1876496622, 124645329, 1514732798]
    assert not np.array_equal(first, other_seed) and not np.array_equal(first, numpy_engine)
    assert signature_algorithm("rensa").startswith("rensa-") and signature_algorithm("numpy") != signature_algorithm()
    with pytest.raises(ValueError):
        minhash_signatures(["text"], engine="magic")
    with pytest.raises(ValueError):
        MinHashSignature(engine="magic")


def test_text_rules_and_dedup_share_one_cjk_definition():
    from operators.text import CJK_RE, split_words

    # supplementary-plane ideographs, half-width and small katakana, BMP Han, a Latin word
    text = "\U00020000\U00020001\U0002a700 ｱｲｳ ㇰㇱ 漢字 word"
    assert len(CJK_RE.findall(text)) == 10
    hashes, offsets = token_hashes([text])
    assert int(offsets[1] - offsets[0]) == len(split_words(text)) == 11
