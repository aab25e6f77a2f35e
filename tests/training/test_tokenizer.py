"""Tokenizer training, loading, HF parity, vocabulary expansion and embedding resizing on real shared text.

Base tokenizer: English-heavy (20 Wikipedia articles, 200 C4 documents, 200 People's Daily sentences), 4000 pieces.
Expansion: People's Daily sentences 0-4999. Held out: People's Daily 6000-, Wikipedia articles 25-, CMRC paragraphs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from sentencepiece import sentencepiece_model_pb2 as sp_pb2

from training.tokenizer import (
    BOS,
    BOS_ID,
    EOS_ID,
    FIRST_BYTE_ID,
    FIRST_LEARNED_ID,
    PAD_ID,
    ROLE_IDS,
    ROLE_TOKENS,
    SPECIAL_IDS,
    UNK_ID,
    ExpansionInfo,
    Tokenizer,
    chars_per_token,
    expand_embeddings,
    expand_tokenizer,
    load_tokenizer,
    split_for_training,
    train_tokenizer,
)

NORMAL = sp_pb2.ModelProto.SentencePiece.NORMAL
BASE_VOCAB, EXTRA_VOCAB = 4000, 4000


@dataclass(frozen=True)
class Corpus:
    wiki: list[str]  # one English Wikipedia article per item
    c4: list[str]
    daily: list[str]  # People's Daily sentences
    zh_wiki: list[str]  # CMRC 2018 Chinese Wikipedia paragraphs

    @property
    def base_texts(self) -> list[str]:
        return self.wiki[:20] + self.c4[:200] + self.daily[:200]

    @property
    def held_out_zh(self) -> list[str]:
        return self.daily[6000:]

    @property
    def held_out_en(self) -> list[str]:
        return [chunk for article in self.wiki[25:] for chunk in split_for_training(article)]


@pytest.fixture(scope="module")
def corpus(data_dir: Path) -> Corpus:
    text = data_dir / "text"
    jsonl = lambda name: [json.loads(line)["text"] for line in (text / name).read_text("utf-8").splitlines()]  # noqa: E731
    return Corpus(
        wiki=(text / "wiki_demo.txt").read_text("utf-8").splitlines(),
        c4=jsonl("c4_demo.jsonl"),
        daily=(text / "peoples_daily_ner_sentences.txt").read_text("utf-8").splitlines(),
        zh_wiki=jsonl("cmrc2018_trial_zh_wiki_paragraphs.jsonl"),
    )


@pytest.fixture(scope="module")
def base_dir(corpus: Corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("base")
    train_tokenizer(corpus.base_texts, BASE_VOCAB, out)
    return out


@pytest.fixture(scope="module")
def expansion(corpus: Corpus, base_dir: Path, tmp_path_factory) -> ExpansionInfo:
    return expand_tokenizer(base_dir, corpus.daily[:5000], EXTRA_VOCAB, tmp_path_factory.mktemp("expanded"))


@pytest.fixture(scope="module")
def expanded_dir(expansion: ExpansionInfo) -> Path:
    return expansion.path


# --- training -------------------------------------------------------------------------------------------------------


def test_split_for_training_bounds_bytes_and_loses_nothing(corpus: Corpus):
    long_lines = corpus.wiki[:5] + ["中" * 1000 + "。" + "文" * 10]  # articles are one line each; CJK with no cut point
    for line in long_lines:
        chunks = list(split_for_training(line, max_bytes=512))
        assert len(chunks) > 1
        assert all(len(chunk.encode()) <= 512 for chunk in chunks)
        assert "".join(chunks) == line
    assert list(split_for_training("a\n\n  \nb\r\nc")) == ["a", "b", "c"]


def test_train_writes_files_and_reports(corpus: Corpus, tmp_path: Path):
    info = train_tokenizer(corpus.base_texts, BASE_VOCAB, tmp_path)
    for name in ("tokenizer.model", "tokenizer.vocab", "tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / name).is_file(), name
    assert info.vocab_size == BASE_VOCAB == load_tokenizer(tmp_path).vocab_size
    assert info.sha256 == hashlib.sha256((tmp_path / "tokenizer.model").read_bytes()).hexdigest()
    sentences = [s for text in corpus.base_texts for s in split_for_training(text)]
    assert (info.num_sentences, info.num_characters) == (len(sentences), sum(map(len, sentences)))
    assert info.special_ids == SPECIAL_IDS
    assert len((tmp_path / "tokenizer.vocab").read_text("utf-8").splitlines()) == BASE_VOCAB


def test_special_tokens_have_fixed_ids_and_are_single_pieces(base_dir: Path):
    tok = load_tokenizer(base_dir)
    assert {tok.piece(i): i for i in range(FIRST_BYTE_ID)} == SPECIAL_IDS
    assert (tok.unk_id, tok.bos_id, tok.eos_id, tok.pad_id) == (UNK_ID, BOS_ID, EOS_ID, PAD_ID)
    assert tok.role_ids == ROLE_IDS
    assert [tok.piece(FIRST_BYTE_ID + b) for b in range(256)] == [f"<0x{b:02X}>" for b in range(256)]
    assert tok.sp.is_byte(FIRST_LEARNED_ID - 1) and not tok.sp.is_byte(FIRST_LEARNED_ID)
    # role tokens are matched in raw text and never split or merged with their neighbours
    for name, piece in ROLE_TOKENS.items():
        ids = tok.encode(f"x{piece}y")
        assert ROLE_IDS[name] in ids
        assert tok.decode(ids) == f"x{piece}y"
    # BOS/EOS come only from the flags, never from text
    assert BOS_ID not in tok.encode(f"a {BOS} b")
    ids = tok.encode("hello", bos=True, eos=True)
    assert ids[0] == BOS_ID and ids[-1] == EOS_ID and ids[1:-1] == tok.encode("hello")


def test_digits_are_split(base_dir: Path):
    tok = load_tokenizer(base_dir)
    digit_count = lambda piece: sum(c in "0123456789" for c in piece)  # noqa: E731
    assert all(digit_count(tok.piece(i)) <= 1 for i in range(FIRST_LEARNED_ID, tok.vocab_size))
    text = "In 2024, 1234567 people paid 3.14 yuan; 1998年5月"
    ids = tok.encode(text)
    assert all(digit_count(tok.piece(i)) <= 1 for i in ids)
    assert sum(digit_count(tok.piece(i)) for i in ids) == digit_count(text)


def test_byte_fallback_round_trips(base_dir: Path, corpus: Corpus):
    tok = load_tokenizer(base_dir)
    assert tok.encode("😀") == [FIRST_BYTE_ID + b for b in "😀".encode()]
    odd = "emoji 😀, rare CJK 𠮷 and 龘, tabs\t\tand   spaces\n\nnew lines, full-width ，。０１２ "
    for text in [odd, *corpus.held_out_zh[:200], *corpus.held_out_en, *corpus.zh_wiki[:50]]:
        ids = tok.encode(text)
        assert UNK_ID not in ids
        assert tok.decode(ids) == text


def test_training_is_deterministic(corpus: Corpus, tmp_path: Path):
    texts = corpus.wiki[:6] + corpus.daily[:400]
    first = train_tokenizer(texts, 2500, tmp_path / "a")
    second = train_tokenizer(iter(texts), 2500, tmp_path / "b")
    assert first.sha256 == second.sha256
    assert (tmp_path / "a" / "tokenizer.model").read_bytes() == (tmp_path / "b" / "tokenizer.model").read_bytes()
    # sampling keeps the same sentences whatever the input order
    limited = train_tokenizer(texts, 2500, tmp_path / "c", seed_sentence_limit=300)
    reordered = train_tokenizer(texts[::-1], 2500, tmp_path / "d", seed_sentence_limit=300)
    assert limited.num_sentences == reordered.num_sentences == 300
    assert limited.num_characters == reordered.num_characters


def test_unsupported_vocab_sizes_and_empty_samples_raise(corpus: Corpus, tmp_path: Path):
    small = corpus.wiki[:1]
    with pytest.raises(ValueError, match=r"vocab_size 60000 is too large .* at most \d+") as err:
        train_tokenizer(small, 60000, tmp_path)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"vocab_size 600 is too small .* character_coverage"):
        train_tokenizer(corpus.daily[:500], 600, tmp_path)
    with pytest.raises(ValueError, match="no room for learned pieces"):
        train_tokenizer(small, FIRST_LEARNED_ID, tmp_path)
    for empty in ([], ["", "  \n\n", "\t"]):
        with pytest.raises(ValueError, match="empty"):
            train_tokenizer(empty, 1000, tmp_path)
    assert not (tmp_path / "tokenizer.model").exists()


# --- Hugging Face files ---------------------------------------------------------------------------------------------


def test_autotokenizer_encodes_like_sentencepiece(base_dir: Path, expanded_dir: Path, corpus: Corpus, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    chat = "<|system|>\nBe brief.<|end|>\n<|user|>\n北京的天气 weather in 2024?<|end|>\n<|assistant|>\n"
    texts = [*corpus.held_out_zh[:300], *corpus.held_out_en, *corpus.zh_wiki[:50], chat, "  x\t\ty  😀 𠮷 \n"]
    for directory in (base_dir, expanded_dir):
        tok, hf = load_tokenizer(directory), AutoTokenizer.from_pretrained(directory)
        assert len(hf) == tok.vocab_size
        assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id, hf.unk_token_id) == (BOS_ID, EOS_ID, PAD_ID, UNK_ID)
        for text in texts:
            ids = tok.encode(text)
            assert hf.encode(text, add_special_tokens=False) == ids, text[:60]
            assert hf.decode(ids) == text
        assert hf("hello")["input_ids"] == [BOS_ID, *tok.encode("hello")]
        # documented edge: HF matches literal control-token text unless told to split it, sentencepiece never does
        literal = "a <s> b </s> <pad>"
        assert hf.encode(literal, add_special_tokens=False, split_special_tokens=True) == tok.encode(literal)
        messages = [{"role": "user", "content": "你好"}]
        rendered = hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        assert rendered == f"{BOS}<|user|>\n你好<|end|>\n<|assistant|>\n"
        ids = hf.encode(rendered, add_special_tokens=False)
        assert ids == [BOS_ID, *tok.encode(rendered.removeprefix(BOS))]
        assert [i for i in ids if i in ROLE_IDS.values()] == [ROLE_IDS["user"], ROLE_IDS["end"], ROLE_IDS["assistant"]]


# --- expansion ------------------------------------------------------------------------------------------------------


def test_expansion_keeps_old_ids_and_compresses_chinese(base_dir: Path, expansion: ExpansionInfo, corpus: Corpus):
    old, new = load_tokenizer(base_dir), load_tokenizer(expansion.path)
    assert (expansion.base_vocab_size, expansion.vocab_size) == (old.vocab_size, new.vocab_size)
    assert expansion.added_pieces == new.vocab_size - old.vocab_size
    assert expansion.sha256 == hashlib.sha256((expansion.path / "tokenizer.model").read_bytes()).hexdigest()
    old_proto, new_proto = old.model_proto(), new.model_proto()
    for i, piece in enumerate(old_proto.pieces):
        added = new_proto.pieces[i]
        assert (added.piece, added.type, added.score) == (piece.piece, piece.type, piece.score), i
    new_pieces = new_proto.pieces[old.vocab_size :]
    assert 0 < len(new_pieces) <= EXTRA_VOCAB
    assert len({p.piece for p in new_proto.pieces}) == new.vocab_size  # no duplicate pieces
    floor = min(p.score for p in old_proto.pieces if p.type == NORMAL)
    assert all(p.type == NORMAL and p.score < floor for p in new_pieces)

    # new merges rank below every old one, so no text ever needs more tokens than before
    held_out = corpus.held_out_zh + corpus.held_out_en
    assert all(len(n) <= len(o) for n, o in zip(new.encode_batch(held_out), old.encode_batch(held_out), strict=True))
    before = {lang: chars_per_token(old, getattr(corpus, f"held_out_{lang}")) for lang in ("zh", "en")}
    after = {lang: chars_per_token(new, getattr(corpus, f"held_out_{lang}")) for lang in ("zh", "en")}
    print(f"chars/token before {before} after {after}")
    assert after["zh"] > before["zh"]
    assert after["en"] >= before["en"]


def test_expand_embeddings(base_dir: Path, expanded_dir: Path):
    old, new = load_tokenizer(base_dir), load_tokenizer(expanded_dir)
    torch.manual_seed(0)
    d = 16
    state = {
        "model.embed_tokens.weight": torch.randn(old.vocab_size, d),
        "lm_head.weight": torch.randn(old.vocab_size, d),
        "model.norm.weight": torch.ones(d),
    }
    grown = expand_embeddings(state, old, new, tie_embeddings=False)
    assert grown["model.norm.weight"] is state["model.norm.weight"]
    for key in ("model.embed_tokens.weight", "lm_head.weight"):
        assert grown[key].shape == (new.vocab_size, d)
        assert torch.equal(grown[key][: old.vocab_size], state[key])
        assert state[key].shape == (old.vocab_size, d)  # input untouched

    # a new piece whose characters the base never learned is spelled by its UTF-8 byte pieces in the old model
    def byte_ids(piece: str) -> list[int]:
        return [FIRST_BYTE_ID + b for b in piece.replace("▁", " ").encode()]

    unknown = [i for i in range(old.vocab_size, new.vocab_size) if all(old.token_id(c) == UNK_ID for c in new.piece(i))]
    single = next(i for i in unknown if len(new.piece(i)) == 1)
    multi = next(i for i in unknown if len(new.piece(i)) > 1)
    for i in (single, multi):
        for key in ("model.embed_tokens.weight", "lm_head.weight"):
            expected = state[key][byte_ids(new.piece(i))].mean(dim=0)
            torch.testing.assert_close(grown[key][i], expected)

    # a new piece made of pieces the base has: mean over its old encoding
    known = next(i for i in range(old.vocab_size, new.vocab_size) if UNK_ID not in map(old.token_id, new.piece(i)))
    expected = state["model.embed_tokens.weight"][old.encode(new.piece(known).replace("▁", " "))].mean(dim=0)
    torch.testing.assert_close(grown["model.embed_tokens.weight"][known], expected)

    # tied embeddings: no lm_head in or out; dtype kept
    tied = {"model.embed_tokens.weight": state["model.embed_tokens.weight"].to(torch.bfloat16)}
    grown = expand_embeddings(tied, old, new, tie_embeddings=True)
    assert set(grown) == {"model.embed_tokens.weight"}
    assert grown["model.embed_tokens.weight"].dtype == torch.bfloat16
    assert grown["model.embed_tokens.weight"].shape == (new.vocab_size, d)
    with pytest.raises(ValueError, match="lm_head"):
        expand_embeddings(tied, old, new, tie_embeddings=False)
    with pytest.raises(ValueError, match="does not extend"):
        expand_embeddings(state, new, old, tie_embeddings=False)


def test_encode_batch_and_chars_per_token(base_dir: Path, corpus: Corpus):
    tok: Tokenizer = load_tokenizer(base_dir, num_threads=2)
    texts = corpus.held_out_zh[:100] + corpus.held_out_en[:10]
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]
    assert tok.encode_batch(texts[:3], bos=True, eos=True) == [tok.encode(t, bos=True, eos=True) for t in texts[:3]]
    expected = sum(map(len, texts)) / sum(len(tok.encode(t)) for t in texts)
    assert chars_per_token(tok, texts) == pytest.approx(expected)


def test_unigram_model_type_also_matches_hf(corpus: Corpus, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    train_tokenizer(corpus.wiki[:3] + corpus.daily[:300], 3000, tmp_path, model_type="unigram")
    tok, hf = load_tokenizer(tmp_path), AutoTokenizer.from_pretrained(tmp_path)
    assert {tok.piece(i): i for i in range(FIRST_BYTE_ID)} == SPECIAL_IDS
    for text in [*corpus.held_out_zh[:100], *corpus.held_out_en[:10], "<|user|>\n你好 hi 2024 😀<|end|>"]:
        assert hf.encode(text, add_special_tokens=False) == tok.encode(text)
        assert tok.decode(tok.encode(text)) == text
    with pytest.raises(ValueError, match="unknown model_type"):
        train_tokenizer(corpus.wiki[:1], 1000, tmp_path, model_type="wordpiece")
    with pytest.raises(ValueError, match="needs a BPE base"):
        expand_tokenizer(tmp_path, corpus.daily[:100], 500, tmp_path / "expanded")
