"""SentencePiece BPE tokenizer: train, load, expand the vocabulary (Chinese-LLaMA method), resize embeddings.

Library only (no catalog, MLflow or Ray here); ``lake train tokenizer`` builds on these functions.

Design choices
- **Fixed id layout**: ``<unk>``=0, ``<s>``=1, ``</s>``=2, ``<pad>``=3, the chat-role tokens 4-7, the 256 byte
  pieces ``<0x00>``..``<0xFF>`` 8-263, learned pieces from 264 on (sentencepiece's own order: meta pieces at their
  ids, user-defined symbols next, then bytes, then pieces by score). Every tokenizer and every expansion keeps it.
- **Chat roles** are sentencepiece *user-defined* symbols: never split, never merged, matched in raw text. A turn is
  ``<|system|>`` / ``<|user|>`` / ``<|assistant|>``, then ``\\n``, the content and ``<|end|>``; ``</s>`` ends a
  document, never a turn (see ``CHAT_TEMPLATE``). Because they match raw text, SFT must keep them out of user
  content. BOS/EOS/PAD are *control* pieces: raw text never produces them (a literal "<s>" in text encodes as
  ordinary pieces), only ``bos=True``/``eos=True``/padding do.
- **Lossless**: ``byte_fallback`` (an unseen character becomes its UTF-8 byte pieces, never ``<unk>``),
  ``normalization_rule_name="identity"`` (NFKC would fold full-width CJK punctuation and digits into ASCII, so
  ``decode(encode(x)) != x`` and the model could never produce them), ``remove_extra_whitespaces=False`` and
  ``add_dummy_prefix=False`` (Gemma-style: no invented leading "▁", so a Chinese text does not start with a spurious
  space piece, a role token is not preceded by one, and ``decode(encode(x)) == x`` for every string).
- ``split_digits`` (numbers are read digit by digit) and ``allow_whitespace_only_pieces`` (runs of spaces in code
  and tables become one piece).
- **Deterministic**: the same texts give a byte-identical ``tokenizer.model``. Sentencepiece's trainer output depends
  on its thread count (1, 2, 4 and 8 threads gave four different models), so it always trains with one thread
  (BPE training is quick: 0.6 s for the 3.1 MB of shared text at 8k pieces, 0.9 s at 32k, on one core). Its own
  random sampling (``input_sentence_size``/``shuffle_input_sentence``) is off; over ``seed_sentence_limit``
  sentences we keep those with the smallest content hash, in input order: a choice that depends neither on threads
  nor on input order.
- **Bounded sentences**: sentencepiece silently drops sentences longer than ``max_sentence_length`` bytes, so every
  line is cut at sentence ends (then at character boundaries) into chunks of at most that many bytes.
- **Hugging Face files**: ``tokenizer.json`` + ``tokenizer_config.json`` + ``chat_template.jinja`` are built from
  the sentencepiece proto by transformers' own ``SpmConverter.build_tokenizer_from_spm_proto``; load them with
  ``AutoTokenizer.from_pretrained(dir)`` (class ``TokenizersBackend``), which encodes exactly like sentencepiece.
  ``LlamaTokenizer.from_pretrained(dir)`` does NOT: it forces the Llama dummy prefix. Known edges where HF differs:
  HF matches the literal strings "<s>", "</s>", "<unk>", "<pad>" in raw text as special tokens unless called with
  ``split_special_tokens=True``; ``add_special_tokens=True`` (HF default) prepends ``<s>``.
- **Expansion** appends the pieces of a BPE model trained on the new text that the base lacks, after every old id,
  with scores below the old minimum: sentencepiece BPE merges the highest-scoring pair first, so every old merge
  keeps priority over every new one. New merges only fire where the base would have stopped (byte fallback, single
  characters), so no text needs more tokens than before and the trained embeddings keep their contexts. The new
  pieces keep their own relative order, so their merge chains still fire.
"""

from __future__ import annotations

import hashlib
import heapq
import io
import os
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import sentencepiece as spm
import torch
from sentencepiece import sentencepiece_model_pb2 as sp_pb2

# --- special tokens and the fixed id layout ---------------------------------------------------------------------

UNK, BOS, EOS, PAD = "<unk>", "<s>", "</s>", "<pad>"
SYSTEM, USER, ASSISTANT, END = "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"
ROLE_TOKENS = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT, "end": END}
UNK_ID, BOS_ID, EOS_ID, PAD_ID = 0, 1, 2, 3
ROLE_IDS = {name: 4 + i for i, name in enumerate(ROLE_TOKENS)}  # system=4, user=5, assistant=6, end=7
SPECIAL_IDS = {UNK: UNK_ID, BOS: BOS_ID, EOS: EOS_ID, PAD: PAD_ID} | {ROLE_TOKENS[n]: i for n, i in ROLE_IDS.items()}
FIRST_BYTE_ID = len(SPECIAL_IDS)  # 8
FIRST_LEARNED_ID = FIRST_BYTE_ID + 256  # 264

# One turn: role token, newline, content, <|end|>, newline; the generation prompt opens an assistant turn.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

MODEL_FILE, VOCAB_FILE = "tokenizer.model", "tokenizer.vocab"
EMBED_KEY, LM_HEAD_KEY = "model.embed_tokens.weight", "lm_head.weight"
MODEL_TYPES = ("bpe", "unigram")
DEFAULT_SENTENCE_LIMIT = 1_000_000
DEFAULT_MAX_SENTENCE_BYTES = 4096

_META = "▁"  # sentencepiece's whitespace symbol
_SENTENCE_END = re.compile(r"(?<=[.!?。！？；;])")  # split *after* a terminator, so no character is lost


@dataclass(frozen=True)
class TokenizerInfo:
    """What ``train_tokenizer`` wrote, for logging and registration."""

    path: Path  # the directory holding tokenizer.model, tokenizer.vocab and the Hugging Face files
    vocab_size: int
    num_sentences: int  # training sentences after splitting and sampling
    num_characters: int
    sha256: str  # of tokenizer.model
    seconds: float  # wall time of the sentencepiece training
    special_ids: dict[str, int] = field(default_factory=lambda: dict(SPECIAL_IDS))

    def to_dict(self) -> dict:
        return asdict(self) | {"path": str(self.path)}


@dataclass(frozen=True)
class ExpansionInfo:
    """What ``expand_tokenizer`` wrote: ids below ``base_vocab_size`` are the base model's, unchanged."""

    path: Path
    base_vocab_size: int
    vocab_size: int
    added_pieces: int  # new pieces appended after the base ones (= vocab_size - base_vocab_size)
    num_sentences: int
    num_characters: int
    sha256: str
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self) | {"path": str(self.path)}


# --- preparing the training sentences -----------------------------------------------------------------------------


def split_for_training(text: str, max_bytes: int = DEFAULT_MAX_SENTENCE_BYTES) -> Iterator[str]:
    """Cut a document into non-blank lines of at most ``max_bytes`` UTF-8 bytes, losing no character.

    A line that is too long is cut after sentence ends and the sentences are packed greedily; a sentence that is
    still too long is cut at character boundaries.
    """
    for line in text.splitlines():
        if not line.strip():
            continue
        if len(line.encode()) <= max_bytes:
            yield line
            continue
        chunk, size = [], 0
        for sentence in _SENTENCE_END.split(line):
            for part in _cut_bytes(sentence, max_bytes):
                n = len(part.encode())
                if size + n > max_bytes and chunk:
                    yield "".join(chunk)
                    chunk, size = [], 0
                chunk.append(part)
                size += n
        if chunk:
            yield "".join(chunk)


def _cut_bytes(text: str, max_bytes: int) -> Iterator[str]:
    data, start = text.encode(), 0
    while start < len(data):
        head = data[start : start + max_bytes].decode("utf-8", "ignore")  # drops a partial last character
        if not head:
            raise ValueError(f"max_sentence_length {max_bytes} is below one UTF-8 character; use at least 4 bytes")
        yield head
        start += len(head.encode())


def _sample_sentences(texts: Iterable[str], limit: int, max_bytes: int) -> list[str]:
    """All sentences of ``texts``, or the ``limit`` with the smallest content hash, in input order either way."""
    heap: list[tuple[int, int, str]] = []  # (-hash, -index, sentence): heap[0] is the largest kept key
    index = 0
    for text in texts:
        for sentence in split_for_training(text, max_bytes):
            key = int.from_bytes(hashlib.blake2b(sentence.encode(), digest_size=8).digest(), "big")
            item = (-key, -index, sentence)
            if len(heap) < limit:
                heapq.heappush(heap, item)
            elif item[:2] > heap[0][:2]:
                heapq.heapreplace(heap, item)
            index += 1
    return [s for _, _, s in sorted(heap, key=lambda item: -item[1])]


# --- training -------------------------------------------------------------------------------------------------------


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    out_dir: Path,
    *,
    model_type: str = "bpe",
    character_coverage: float = 0.9995,
    seed_sentence_limit: int = DEFAULT_SENTENCE_LIMIT,
    max_sentence_length: int = DEFAULT_MAX_SENTENCE_BYTES,
) -> TokenizerInfo:
    """Train a sentencepiece model on ``texts`` and write tokenizer.model, tokenizer.vocab and Hugging Face files.

    ``seed_sentence_limit``: at most this many sentences (after splitting) are trained on, chosen deterministically.
    ``max_sentence_length``: sentences are cut to at most this many UTF-8 bytes before training.
    Raises ``ValueError`` for an empty sample or a vocab size the sample cannot support.
    """
    if model_type not in MODEL_TYPES:
        raise ValueError(f"unknown model_type {model_type!r}; use one of {', '.join(MODEL_TYPES)}")
    if vocab_size <= FIRST_LEARNED_ID:
        raise ValueError(
            f"vocab_size {vocab_size} leaves no room for learned pieces: the special tokens and 256 byte pieces take "
            f"{FIRST_LEARNED_ID} ids; use a vocab_size above {FIRST_LEARNED_ID} (typically 32000)"
        )
    sentences = _sample_sentences(texts, seed_sentence_limit, max_sentence_length)
    start = time.perf_counter()
    proto = _train_proto(sentences, vocab_size, model_type, character_coverage, max_sentence_length)
    seconds = time.perf_counter() - start
    digest = write_tokenizer(proto, out_dir)
    return TokenizerInfo(
        path=Path(out_dir),
        vocab_size=len(proto.pieces),
        num_sentences=len(sentences),
        num_characters=sum(map(len, sentences)),
        sha256=digest,
        seconds=seconds,
    )


def _train_proto(
    sentences: Sequence[str],
    vocab_size: int,
    model_type: str,
    character_coverage: float,
    max_sentence_length: int,
    size_name: str = "vocab_size",
    size_offset: int = 0,
) -> sp_pb2.ModelProto:
    """Run the sentencepiece trainer; errors name the caller's size argument (``size_name``, minus ``size_offset``)."""
    if not sentences:
        raise ValueError("the text sample is empty (no non-blank text); select rows that contain text")
    writer = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_writer=writer,
            model_type=model_type,
            vocab_size=vocab_size,
            character_coverage=character_coverage,
            byte_fallback=True,
            split_digits=True,
            allow_whitespace_only_pieces=True,
            remove_extra_whitespaces=False,
            add_dummy_prefix=False,
            normalization_rule_name="identity",
            unk_id=UNK_ID,
            bos_id=BOS_ID,
            eos_id=EOS_ID,
            pad_id=PAD_ID,
            unk_piece=UNK,
            bos_piece=BOS,
            eos_piece=EOS,
            pad_piece=PAD,
            user_defined_symbols=list(ROLE_TOKENS.values()),
            input_sentence_size=0,  # we sampled already; sentencepiece's own sampling is random
            shuffle_input_sentence=False,
            max_sentence_length=max_sentence_length,
            num_threads=1,  # the trained model depends on the thread count
            minloglevel=2,
        )
    except RuntimeError as error:
        translated = _vocab_error(str(error), size_name, size_offset, character_coverage)
        if translated is None:
            raise
        raise translated from None
    proto = sp_pb2.ModelProto()
    proto.ParseFromString(writer.getvalue())
    return proto


def _vocab_error(message: str, size_name: str, offset: int, character_coverage: float) -> ValueError | None:
    """Translate sentencepiece's vocabulary-size failures into a one-line ValueError that names the fix."""
    if m := re.search(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)", message):
        asked, most = int(m[1]) - offset, int(m[2]) - offset
        return ValueError(
            f"{size_name} {asked} is too large for this text sample (it supports at most {most}); "
            f"lower {size_name} or train on more text"
        )
    if m := re.search(r"smaller than required_chars\. (\d+) vs (\d+)", message):
        asked, needed = int(m[1]) - offset, int(m[2]) - offset
        return ValueError(
            f"{size_name} {asked} is too small for this text sample: its characters at "
            f"character_coverage={character_coverage} need at least {needed}; "
            f"raise {size_name} or lower character_coverage"
        )
    return None


def write_tokenizer(proto: sp_pb2.ModelProto, out_dir: Path) -> str:
    """Write tokenizer.model, tokenizer.vocab and the Hugging Face files into ``out_dir``; return the model's sha256."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = proto.SerializeToString(deterministic=True)
    (out_dir / MODEL_FILE).write_bytes(data)
    vocab = "".join(f"{p.piece}\t{p.score:g}\n" for p in proto.pieces)
    (out_dir / VOCAB_FILE).write_text(vocab, encoding="utf-8")
    _write_hf_files(proto, out_dir)
    return hashlib.sha256(data).hexdigest()


def _write_hf_files(proto: sp_pb2.ModelProto, out_dir: Path) -> None:
    # transformers is a heavy import (seconds): only here
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import SpmConverter

    if proto.trainer_spec.model_type == sp_pb2.TrainerSpec.UNIGRAM:
        vocab: dict | list = [(piece.piece, piece.score) for piece in proto.pieces]
    else:
        vocab = {piece.piece: i for i, piece in enumerate(proto.pieces)}
    backend = SpmConverter.build_tokenizer_from_spm_proto(proto=proto, vocab=vocab, legacy=False)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token=UNK,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        extra_special_tokens=list(ROLE_TOKENS.values()),
        add_bos_token=True,  # the Llama convention for tokenizer(text); our own encode() adds nothing unasked
        add_eos_token=False,
        chat_template=CHAT_TEMPLATE,
    )
    hf.save_pretrained(str(out_dir))


# --- loading and encoding -------------------------------------------------------------------------------------------


class Tokenizer:
    """A sentencepiece model with this project's special tokens; ids are plain ``list[int]``.

    ``num_threads`` is what ``encode_batch`` uses (0: all cores; pass the worker's CPU count inside Ray).
    """

    def __init__(self, processor: spm.SentencePieceProcessor, path: Path | None = None, num_threads: int = 0):
        _check_layout(processor, path)
        self.sp = processor
        self.path = path
        self.num_threads = num_threads or os.cpu_count() or 1  # for encode_batch
        self.role_ids = {name: processor.piece_to_id(piece) for name, piece in ROLE_TOKENS.items()}

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    bos_id, eos_id, pad_id, unk_id = BOS_ID, EOS_ID, PAD_ID, UNK_ID

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        return self.sp.encode(text, add_bos=bos, add_eos=eos)

    def encode_batch(self, texts: Sequence[str], bos: bool = False, eos: bool = False) -> list[list[int]]:
        """Encode many texts at once on ``num_threads`` sentencepiece threads (the GIL is released)."""
        return self.sp.encode(list(texts), add_bos=bos, add_eos=eos, num_threads=self.num_threads)

    def decode(self, ids: Sequence[int]) -> str:
        return self.sp.decode(list(ids))

    def piece(self, token_id: int) -> str:
        return self.sp.id_to_piece(token_id)

    def token_id(self, piece: str) -> int:
        """Id of a piece (``unk_id`` if the vocabulary lacks it)."""
        return self.sp.piece_to_id(piece)

    def model_proto(self) -> sp_pb2.ModelProto:
        proto = sp_pb2.ModelProto()
        proto.ParseFromString(self.sp.serialized_model_proto())
        return proto

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, path={self.path})"


def load_tokenizer(path: Path | str, num_threads: int = 0) -> Tokenizer:
    """Load ``tokenizer.model`` from a directory (or the model file itself)."""
    path = Path(path)
    model = path / MODEL_FILE if path.is_dir() else path
    if not model.is_file():
        raise FileNotFoundError(f"no sentencepiece model at {model}")
    return Tokenizer(spm.SentencePieceProcessor(model_file=str(model)), path=model, num_threads=num_threads)


def _check_layout(processor: spm.SentencePieceProcessor, path: Path | None) -> None:
    """Refuse a model whose special tokens or byte pieces are not where this project expects them."""
    found = {piece: processor.piece_to_id(piece) for piece in SPECIAL_IDS}
    first_byte = processor.id_to_piece(FIRST_BYTE_ID) if processor.get_piece_size() > FIRST_BYTE_ID else None
    if found != SPECIAL_IDS or first_byte != "<0x00>":
        raise ValueError(f"{path or 'model'} does not have the llm-lake special-token layout {SPECIAL_IDS}; retrain it")


def chars_per_token(tok: Tokenizer, texts: Iterable[str]) -> float:
    """Characters per token over ``texts`` (no BOS/EOS): higher means a more compact tokenizer."""
    texts = list(texts)
    tokens = sum(map(len, tok.encode_batch(texts)))
    return sum(map(len, texts)) / tokens if tokens else 0.0


# --- vocabulary expansion -------------------------------------------------------------------------------------------


def expand_tokenizer(
    base_dir: Path | str,
    texts: Iterable[str],
    extra_vocab_size: int,
    out_dir: Path,
    *,
    character_coverage: float = 0.9995,
    seed_sentence_limit: int = DEFAULT_SENTENCE_LIMIT,
    max_sentence_length: int = DEFAULT_MAX_SENTENCE_BYTES,
) -> ExpansionInfo:
    """Add pieces learned on ``texts`` to the base tokenizer without changing any old id, piece, type or score.

    A BPE model with ``extra_vocab_size`` learned pieces is trained on ``texts`` (same settings as the base); its
    normal pieces that the base lacks are appended in its merge order, so ``added_pieces <= extra_vocab_size``.
    """
    base = load_tokenizer(base_dir).model_proto()
    if base.trainer_spec.model_type != sp_pb2.TrainerSpec.BPE:
        raise ValueError("vocabulary expansion needs a BPE base tokenizer (piece scores are merge priorities)")
    if extra_vocab_size <= 0:
        raise ValueError(f"extra_vocab_size must be positive, got {extra_vocab_size}")
    sentences = _sample_sentences(texts, seed_sentence_limit, max_sentence_length)
    start = time.perf_counter()
    new = _train_proto(
        sentences,
        FIRST_LEARNED_ID + extra_vocab_size,
        "bpe",
        character_coverage,
        max_sentence_length,
        size_name="extra_vocab_size",
        size_offset=FIRST_LEARNED_ID,
    )
    seconds = time.perf_counter() - start
    merged, added = merge_pieces(base, new)
    digest = write_tokenizer(merged, out_dir)
    return ExpansionInfo(
        path=Path(out_dir),
        base_vocab_size=len(base.pieces),
        vocab_size=len(merged.pieces),
        added_pieces=added,
        num_sentences=len(sentences),
        num_characters=sum(map(len, sentences)),
        sha256=digest,
        seconds=seconds,
    )


def merge_pieces(base: sp_pb2.ModelProto, new: sp_pb2.ModelProto) -> tuple[sp_pb2.ModelProto, int]:
    """A copy of ``base`` with ``new``'s normal pieces that it lacks appended; returns (merged, number added)."""
    merged = sp_pb2.ModelProto()
    merged.CopyFrom(base)
    known = {p.piece for p in base.pieces}
    floor = min(p.score for p in base.pieces if p.type == sp_pb2.ModelProto.SentencePiece.NORMAL)
    # highest score first = merge order (ties broken by id, as sentencepiece does)
    ranked = sorted(enumerate(new.pieces), key=lambda item: (-item[1].score, item[0]))
    added = 0
    for _, piece in ranked:
        if piece.type != sp_pb2.ModelProto.SentencePiece.NORMAL or piece.piece in known:
            continue
        added += 1
        merged.pieces.add(piece=piece.piece, score=floor - added, type=sp_pb2.ModelProto.SentencePiece.NORMAL)
        known.add(piece.piece)
    merged.trainer_spec.vocab_size = len(merged.pieces)
    return merged, added


def expand_embeddings(
    state_dict: dict[str, torch.Tensor], old_tok: Tokenizer, new_tok: Tokenizer, tie_embeddings: bool
) -> dict[str, torch.Tensor]:
    """Grow ``model.embed_tokens.weight`` (and ``lm_head.weight`` unless tied) from old to new vocabulary rows.

    Old rows are unchanged; a new piece's row is the mean of the old rows of the old tokenizer's encoding of the
    piece's text ("▁" read as a space, encoded without a dummy prefix, so no spurious leading-space token). Other
    tensors are passed through. Returns a new dict; the input is not modified.
    """
    _check_extends(old_tok, new_tok)
    keys = [EMBED_KEY] if tie_embeddings else [EMBED_KEY, LM_HEAD_KEY]
    keys += [LM_HEAD_KEY] if tie_embeddings and LM_HEAD_KEY in state_dict else []  # a tied copy saved anyway
    for key in keys:
        if key not in state_dict:
            raise ValueError(f"state dict has no {key!r}; is the model tie_embeddings={not tie_embeddings}?")
        if state_dict[key].shape[0] != old_tok.vocab_size:
            raise ValueError(
                f"{key} has {state_dict[key].shape[0]} rows but the old tokenizer has {old_tok.vocab_size} pieces"
            )
    sources = new_piece_sources(old_tok, new_tok)
    out = dict(state_dict)
    for key in keys:
        out[key] = _append_mean_rows(state_dict[key], sources)
    return out


def new_piece_sources(old_tok: Tokenizer, new_tok: Tokenizer) -> list[list[int]]:
    """For each new id (in order), the old ids that spell the same text."""
    encoder = _surface_encoder(old_tok)
    texts = [new_tok.piece(i).replace(_META, " ") for i in range(old_tok.vocab_size, new_tok.vocab_size)]
    return encoder.encode(texts, num_threads=old_tok.num_threads)


def _surface_encoder(tok: Tokenizer) -> spm.SentencePieceProcessor:
    """The tokenizer with its dummy prefix off: a piece's text must not gain a leading "▁" it does not have."""
    proto = tok.model_proto()
    if not proto.normalizer_spec.add_dummy_prefix:
        return tok.sp
    proto.normalizer_spec.add_dummy_prefix = False
    return spm.SentencePieceProcessor(model_proto=proto.SerializeToString())


def _append_mean_rows(weight: torch.Tensor, sources: list[list[int]]) -> torch.Tensor:
    if not sources:
        return weight.clone()
    ids = torch.tensor([i for ids in sources for i in ids], dtype=torch.long, device=weight.device)
    offsets = torch.tensor([0] + [len(ids) for ids in sources[:-1]], device=weight.device).cumsum(0)
    with torch.no_grad():
        means = torch.nn.functional.embedding_bag(ids, weight.float(), offsets, mode="mean")  # mean in fp32
        return torch.cat([weight, means.to(weight.dtype)])


def _check_extends(old_tok: Tokenizer, new_tok: Tokenizer) -> None:
    old, new = old_tok.model_proto(), new_tok.model_proto()
    if len(new.pieces) < len(old.pieces) or any(
        (a.piece, a.type) != (b.piece, b.type) for a, b in zip(old.pieces, new.pieces, strict=False)
    ):
        raise ValueError("new_tok does not extend old_tok (some old id changed); expand with expand_tokenizer")
