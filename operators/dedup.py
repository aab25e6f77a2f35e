"""Deduplication building blocks, pure and Ray-free: normalisation, shingling, vectorised MinHash, LSH bands.

Design choices
- Tokens: text is NFKC-normalised and lower-cased, digits map to ``0`` and punctuation separates tokens. With the
  default ``tokenizer="auto"`` every Han/kana character is one token and other letter/digit runs are words, so an
  n-gram shingle is a word n-gram in English and a character n-gram in Chinese or Japanese (a Chinese page is not
  one giant "word"); ``"char"`` makes every letter a token, ``"word"`` splits on spaces and punctuation only
  (the naive rule, kept for comparison).
- Vectorised: a whole batch is turned into one array of code points; tokens, token hashes (a polynomial hash
  mixed by splitmix64), shingle hashes and the ``num_perm`` MinHash values are numpy operations over that array.
  There is no Python loop per token or per shingle.
- MinHash over the 64-bit shingle hashes: by default rensa's compiled ``RMinHash`` (``engine="rensa"``, about 50x
  faster than the numpy minima, so the signature cost is the shingling); ``engine="numpy"`` keeps the pure numpy
  multiply-shift family, ``h_i(x) = (a_i * x + b_i) mod 2**64 >> 32`` with odd random ``a_i`` (Dietzfelbinger et
  al.). Signature values are uint32. Seeded and independent of the batch, so signatures computed today and stored
  in the catalog stay comparable with those of tomorrow's crawl batch; ``signature_algorithm`` names the values
  (stored with them), so a change of engine or of rensa's algorithm makes stored signatures recomputed.
- LSH: bands x rows from a target Jaccard threshold and the false positive / false negative weights, with
  datasketch's optimiser (``datasketch.lsh._optimal_param``). Candidate pairs are verified by the signature
  similarity (the share of equal MinHash values), an unbiased Jaccard estimate.
- Exact duplicates: a 64-bit hash of the token stream (so case, punctuation and spacing differences do not
  matter) and of the normalised URL.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from functools import lru_cache
from typing import ClassVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import numpy as np
import pyarrow as pa

from operators.base import Operator, Resources, register, with_columns
from operators.text import CJK_RANGES

TOKENIZERS = ("auto", "char", "word")
MAX_UNICODE = 0x110000
U64 = np.uint64
_SEP, _WORD, _SINGLE = 0, 1, 2  # code point classes: separator, part of a word, a token on its own


# ---- character tables ---------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _unicode_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(canonical code point, major category byte, CJK flag) for all of Unicode; built once per process (~0.5 s).

    The canonical form of a character is its NFKC form lower-cased when that is one character (full-width
    ``Ａ`` -> ``a``, compatibility ideographs -> unified ones, ``Ⅸ`` stays), with every decimal digit mapped to
    ``0``. Mapping characters one by one is what lets normalisation run as one table lookup over a batch.
    """
    categories = [unicodedata.category(chr(i)) for i in range(MAX_UNICODE)]
    major = np.frombuffer("".join(c[0] for c in categories).encode("ascii"), dtype=np.uint8)
    canon = np.arange(MAX_UNICODE, dtype=np.uint32)
    for cp in [*range(0xD800), *range(0xE000, 0x10000), *range(0x1D400, 0x1D800), *range(0x2F800, 0x2FA20)]:
        folded = unicodedata.normalize("NFKC", chr(cp)).lower()
        if len(folded) == 1:
            canon[cp] = ord(folded)
    digits = np.fromiter((c == "Nd" for c in categories), dtype=bool, count=MAX_UNICODE)
    canon[digits[canon]] = ord("0")
    cjk = np.zeros(MAX_UNICODE, dtype=bool)
    for lo, hi in CJK_RANGES:
        cjk[lo : hi + 1] = True
    return canon, major[canon], cjk[canon]


@lru_cache(maxsize=4)
def _tables(tokenizer: str) -> tuple[np.ndarray, np.ndarray]:
    """(token class, canonical code point) per code point for ``tokenizer``."""
    if tokenizer not in TOKENIZERS:
        raise ValueError(f"tokenizer {tokenizer!r} is not one of {TOKENIZERS}")
    canon, major, cjk = _unicode_tables()
    alnum = (major == ord("L")) | (major == ord("N")) | (major == ord("M"))
    cls = np.zeros(MAX_UNICODE, dtype=np.uint8)
    if tokenizer == "auto":
        cls[alnum] = _WORD
        cls[cjk & alnum] = _SINGLE
    elif tokenizer == "char":
        cls[alnum] = _SINGLE
    else:  # "word": letters of every script glue into words, Chinese included
        cls[alnum] = _WORD
    return cls, canon


def normalize_text(text: str | None) -> str:
    """The text as the hashing sees it: NFKC per character, lower case, digits as ``0``."""
    canon, _, _ = _unicode_tables()
    cps = np.frombuffer((text or "").encode("utf-32-le", "replace"), dtype=np.uint32)
    return canon[cps].astype("<u4").tobytes().decode("utf-32-le")


# ---- hashing primitives -------------------------------------------------------------------------------------
def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser, vectorised over a uint64 array (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = x.astype(U64, copy=True)
        z ^= z >> U64(30)
        z *= U64(0xBF58476D1CE4E5B9)
        z ^= z >> U64(27)
        z *= U64(0x94D049BB133111EB)
        z ^= z >> U64(31)
    return z


def _constants(seed: int, count: int, salt: int) -> np.ndarray:
    rng = np.random.Generator(np.random.PCG64([seed, salt]))
    return rng.integers(1, 2**63, size=count, dtype=np.uint64) * U64(2) + U64(1)  # odd, full 64-bit range


@lru_cache(maxsize=16)
def hash_family(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) of ``num_perm`` multiply-shift hash functions; ``a`` odd."""
    rng = np.random.Generator(np.random.PCG64([seed, 0x4D48]))
    a = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64) * U64(2) + U64(1)
    b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64) * U64(2)
    return a, b


# ---- tokens and shingles ------------------------------------------------------------------------------------
def _code_points(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """All texts as one uint32 code point array, separated by NUL; and each text's start offset."""
    norm = [t or "" for t in texts]
    lengths = np.fromiter((len(t) + 1 for t in norm), dtype=np.int64, count=len(norm))
    starts = np.zeros(len(norm), dtype=np.int64)
    if len(norm) > 1:
        np.cumsum(lengths[:-1], out=starts[1:])
    joined = "\x00".join(norm) + "\x00"
    cps = np.frombuffer(joined.encode("utf-32-le", "replace"), dtype=np.uint32)
    return cps, starts


def token_hashes(texts: list[str], tokenizer: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """64-bit hash of every token of every text, in order, and the index of the first token of each text.

    Returns ``(hashes, offsets)`` with ``offsets`` of length ``len(texts) + 1``: text ``i``'s tokens are
    ``hashes[offsets[i]:offsets[i + 1]]``.
    """
    cls_table, canon_table = _tables(tokenizer)
    cps, text_starts = _code_points(texts)
    cls = cls_table[cps]
    prev = np.empty_like(cls)
    prev[0] = _SEP
    prev[1:] = cls[:-1]
    start = (cls == _SINGLE) | ((cls == _WORD) & (prev != _WORD))
    in_token = cls != _SEP
    tok_starts = np.flatnonzero(start)
    if tok_starts.size == 0:
        return np.zeros(0, dtype=U64), np.zeros(len(texts) + 1, dtype=np.int64)
    # position of each character inside its token, for a polynomial hash summed per token with reduceat
    tok_index = np.cumsum(start) - 1
    pos = np.arange(cps.size, dtype=np.int64) - tok_starts[np.maximum(tok_index, 0)]
    pos = np.minimum(pos, 255)  # characters past 256 in one "word" (a base64 blob) reuse the last weight
    weights = _constants(0x70C, 256, 1)
    with np.errstate(over="ignore"):
        values = canon_table[cps].astype(U64) * weights[pos]
    values[~in_token] = 0
    hashes = splitmix64(np.add.reduceat(values, tok_starts))
    offsets = np.searchsorted(tok_starts, np.append(text_starts, cps.size)).astype(np.int64)
    return hashes, offsets


def shingle_hashes(
    texts: list[str], ngram: int = 5, tokenizer: str = "auto", tokens: tuple[np.ndarray, np.ndarray] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """64-bit hashes of the token ``ngram``-shingles of every text.

    Returns ``(hashes, offsets, token_counts)``: text ``i``'s shingles are ``hashes[offsets[i]:offsets[i + 1]]``.
    A text with fewer than ``ngram`` (but at least one) tokens has one shingle, its whole token sequence.
    ``tokens``: ``token_hashes(texts, tokenizer)`` when the caller has it already.
    """
    if ngram < 1:
        raise ValueError("ngram must be >= 1")
    toks, tok_off = tokens if tokens is not None else token_hashes(texts, tokenizer)
    counts = np.diff(tok_off)
    n_texts = len(texts)
    coef = _constants(0x5A1, ngram, 2)
    # full shingles: starting at token j of a text, j <= count - ngram
    n_full = np.maximum(counts - ngram + 1, 0)
    short = (counts > 0) & (counts < ngram)
    per_text = n_full + short
    offsets = np.zeros(n_texts + 1, dtype=np.int64)
    np.cumsum(per_text, out=offsets[1:])
    out = np.empty(int(offsets[-1]), dtype=U64)
    if toks.size:
        with np.errstate(over="ignore"):
            m = toks.size - ngram + 1
            if m > 0:
                acc = np.zeros(m, dtype=U64)
                for k in range(ngram):
                    acc += toks[k : k + m] * coef[k]
                acc = splitmix64(acc)
                # keep windows that start at a token j of text i with j - tok_off[i] < n_full[i]
                owner = np.repeat(np.arange(n_texts), counts)[:m]
                rel = np.arange(m) - tok_off[owner]
                keep = rel < n_full[owner]
                full_dest = offsets[owner[keep]] + rel[keep]
                out[full_dest] = acc[keep]
            for i in np.flatnonzero(short):  # one loop step per short text, not per shingle
                seq = toks[tok_off[i] : tok_off[i + 1]]
                out[offsets[i]] = splitmix64(np.array([np.sum(seq * coef[: seq.size])], dtype=U64))[0]
    return out, offsets, counts


def shingle_set(text: str, ngram: int = 5, tokenizer: str = "auto") -> set[int]:
    """The shingle hashes of one text as a set (for exact Jaccard in tests and benchmarks)."""
    hashes, _, _ = shingle_hashes([text], ngram, tokenizer)
    return set(hashes.tolist())


def jaccard(a: set, b: set) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


# ---- MinHash ------------------------------------------------------------------------------------------------
EMPTY_VALUE = np.uint32(0xFFFFFFFF)


MINHASH_ENGINES = ("rensa", "numpy")


def signature_algorithm(engine: str = "rensa") -> str:
    """A name for the signature values ``engine`` computes: stored with signatures, so that a change of engine (or of
    rensa's algorithm) makes them recomputed instead of compared with incomparable ones."""
    if engine == "rensa":
        import rensa

        return f"rensa-rminhash-v{rensa.RMinHash.ALGORITHM_VERSION}"
    if engine == "numpy":
        return "numpy-multiply-shift-v1"
    raise ValueError(f"engine must be one of {MINHASH_ENGINES}, got {engine!r}")


def minhash_signatures(
    texts: list[str],
    num_perm: int = 128,
    ngram: int = 5,
    tokenizer: str = "auto",
    seed: int = 42,
    chunk_shingles: int = 1 << 12,
    tokens: tuple[np.ndarray, np.ndarray] | None = None,
    engine: str = "rensa",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MinHash signatures, shape ``(len(texts), num_perm)`` uint32, plus shingle counts and token counts.

    Texts without a token get all-``0xFFFFFFFF`` signatures and a shingle count of 0 (callers keep them out of
    LSH). The shingle hashes are ours (vectorised numpy); the minima over ``num_perm`` hash functions come from
    ``engine``: ``"rensa"`` (rensa's compiled ``RMinHash`` over our 64-bit shingle hashes, seeded, one thread) or
    ``"numpy"`` (multiply-shift hashes, ``chunk_shingles`` shingles x ``num_perm`` at a time).
    """
    hashes, offsets, tok_counts = shingle_hashes(texts, ngram, tokenizer, tokens)
    if engine == "rensa":
        sigs = _rensa_minima(hashes, offsets, num_perm, seed)
    elif engine == "numpy":
        sigs = _numpy_minima(hashes, offsets, num_perm, seed, chunk_shingles)
    else:
        raise ValueError(f"engine must be one of {MINHASH_ENGINES}, got {engine!r}")
    sh_counts = np.diff(offsets)
    sigs[sh_counts == 0] = EMPTY_VALUE
    return sigs, sh_counts.astype(np.int32), tok_counts.astype(np.int32)


def _rensa_minima(hashes: np.ndarray, offsets: np.ndarray, num_perm: int, seed: int) -> np.ndarray:
    import rensa

    matrix = rensa.RMinHash.digest_matrix_from_flat_token_hashes(hashes, offsets.astype(np.uint64), num_perm, seed)
    rows = matrix.to_rows()
    return np.array(rows, dtype=np.uint32).reshape(len(offsets) - 1, num_perm)


def _numpy_minima(hashes: np.ndarray, offsets: np.ndarray, num_perm: int, seed: int, chunk_shingles: int) -> np.ndarray:
    a, b = hash_family(num_perm, seed)
    n = len(offsets) - 1
    sigs = np.full((n, num_perm), EMPTY_VALUE, dtype=np.uint32)
    sh_counts = np.diff(offsets)
    doc_starts, doc_ends = offsets[:-1], offsets[1:]
    for lo in range(0, hashes.size, chunk_shingles):
        hi = min(lo + chunk_shingles, hashes.size)
        # texts with shingles in [lo, hi): a long text spans several chunks, its minima are merged
        first = int(np.searchsorted(doc_ends, lo, side="right"))
        last = int(np.searchsorted(doc_starts, hi, side="left"))
        docs = np.arange(first, last)
        docs = docs[sh_counts[docs] > 0]
        with np.errstate(over="ignore"):
            mat = np.multiply.outer(a, hashes[lo:hi])
            mat += b[:, None]
        mat >>= U64(32)
        mins = np.minimum.reduceat(mat, np.maximum(doc_starts[docs], lo) - lo, axis=1).T.astype(np.uint32)
        sigs[docs] = np.minimum(sigs[docs], mins)
    return sigs


def signature_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray | float:
    """Share of equal MinHash values: an unbiased estimate of the Jaccard similarity (broadcasts)."""
    return np.mean(np.asarray(a) == np.asarray(b), axis=-1)


# ---- LSH ----------------------------------------------------------------------------------------------------
@lru_cache(maxsize=64)
def choose_bands(
    threshold: float, num_perm: int, false_positive_weight: float = 0.1, false_negative_weight: float = 0.9
) -> tuple[int, int]:
    """(bands, rows) minimising the weighted false positive + negative mass around ``threshold`` (datasketch).

    The default weights favour recall: candidates are verified by signature similarity afterwards, which
    removes the false positives that the looser banding lets through.
    """
    from datasketch.lsh import _optimal_param

    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    if abs(false_positive_weight + false_negative_weight - 1.0) > 1e-6:
        raise ValueError("false positive and false negative weights must sum to 1")
    bands, rows = _optimal_param(threshold, num_perm, false_positive_weight, false_negative_weight)
    return int(bands), int(rows)


def candidate_probability(similarity: float, bands: int, rows: int) -> float:
    """Probability that two documents of Jaccard ``similarity`` share at least one band bucket."""
    return 1.0 - (1.0 - similarity**rows) ** bands


def band_hashes(sigs: np.ndarray, bands: int, rows: int, seed: int = 42) -> np.ndarray:
    """One int64 bucket key per (document, band), shape ``(n, bands)``; the band index is mixed in."""
    if bands * rows > sigs.shape[1]:
        raise ValueError(f"{bands} bands x {rows} rows need {bands * rows} permutations, have {sigs.shape[1]}")
    coef = _constants(seed, rows, 3)
    salt = _constants(seed, bands, 4)
    out = np.empty((sigs.shape[0], bands), dtype=U64)
    with np.errstate(over="ignore"):
        for k in range(bands):
            block = sigs[:, k * rows : (k + 1) * rows].astype(U64)
            out[:, k] = splitmix64((block * coef).sum(axis=1, dtype=U64) ^ salt[k])
    return out.view(np.int64)


# ---- exact keys ---------------------------------------------------------------------------------------------
def text_hashes(
    texts: list[str], tokenizer: str = "auto", tokens: tuple[np.ndarray, np.ndarray] | None = None
) -> np.ndarray:
    """64-bit hash of each text's token stream (int64); texts without a token get 0 (callers treat it as null)."""
    toks, offsets = tokens if tokens is not None else token_hashes(texts, tokenizer)
    counts = np.diff(offsets)
    out = np.zeros(len(texts), dtype=U64)
    if toks.size:
        owner = np.repeat(np.arange(len(texts)), counts)
        pos = np.arange(toks.size, dtype=np.int64) - offsets[owner]
        with np.errstate(over="ignore"):
            mixed = splitmix64(toks ^ splitmix64(pos.astype(U64) + U64(0x9E3779B97F4A7C15)))
        nonempty = np.flatnonzero(counts > 0)
        sums = np.add.reduceat(mixed, offsets[nonempty])
        out[nonempty] = splitmix64(sums ^ counts[nonempty].astype(U64))
    return out.view(np.int64)


_TRACKING = re.compile(r"^(utm_|fbclid$|gclid$|yclid$|mc_cid$|mc_eid$|spm$|from$)", re.IGNORECASE)


def normalize_url(url: str | None) -> str | None:
    """Lower-cased scheme and host without ``www.``, default port and fragment; tracking parameters dropped."""
    if not url or not url.strip():
        return None
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return url.strip()
    host = (parts.hostname or "").lower().removeprefix("www.")
    default_port = {"http": 80, "https": 443}.get(parts.scheme.lower())
    if parts.port and parts.port != default_port:
        host = f"{host}:{parts.port}"
    params = parse_qsl(parts.query, keep_blank_values=True)
    query = urlencode(sorted((k, v) for k, v in params if not _TRACKING.match(k)))
    path = parts.path.rstrip("/") or "/"
    scheme = "http" if parts.scheme.lower() in ("http", "https") else parts.scheme.lower()
    return urlunsplit((scheme, host, path, query, ""))


def _hash64(value: str) -> int:
    digest = hashlib.blake2b(value.encode("utf-8", "replace"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def url_hashes(urls: list[str | None]) -> pa.Array:
    """int64 hash of each normalised URL; null where there is no URL."""
    out = []
    for url in urls:
        norm = normalize_url(url)
        out.append(None if norm is None else _hash64(norm))
    return pa.array(out, type=pa.int64())


def node_ids(batch: pa.Table) -> np.ndarray:
    """A stable int64 id per row: the row identity ``(input_digest, record_key)`` when present, else ``doc_id``.

    Non-negative and never 0, so it can be a graph node id and a component label everywhere.
    """
    names = batch.column_names
    if "input_digest" in names and "record_key" in names:
        keys = zip(batch["input_digest"].to_pylist(), batch["record_key"].to_pylist(), strict=True)
        raw = [f"{d}\x1f{k}" for d, k in keys]
    elif "doc_id" in names:
        raw = [str(d) for d in batch["doc_id"].to_pylist()]
    else:
        raise ValueError("rows need (input_digest, record_key) or doc_id to be told apart")
    out = np.fromiter((_hash64(r) & 0x7FFFFFFFFFFFFFFF for r in raw), dtype=np.int64, count=len(raw))
    out[out == 0] = 1
    return out


# ---- the operator -------------------------------------------------------------------------------------------
@register("minhash_signature")
class MinHashSignature(Operator):
    """Adds ``dup_node``, ``dup_sig`` (num_perm little-endian uint32), ``dup_shingles`` and the exact keys
    ``dup_text_hash`` and ``dup_url_hash``."""

    input_columns = ("text",)
    output_columns: ClassVar[dict[str, pa.DataType]] = {
        "dup_node": pa.int64(),
        "dup_sig": pa.binary(),
        "dup_shingles": pa.int32(),
        "dup_text_hash": pa.int64(),
        "dup_url_hash": pa.int64(),
    }
    resources = Resources(num_cpus=1, batch_size=512)

    def __init__(
        self,
        num_perm: int = 128,
        ngram: int = 5,
        tokenizer: str = "auto",
        seed: int = 42,
        url_column: str = "url",
        engine: str = "rensa",
    ) -> None:
        if num_perm < 8:
            raise ValueError("num_perm must be >= 8")
        if ngram < 1:
            raise ValueError("ngram must be >= 1")
        if tokenizer not in TOKENIZERS:
            raise ValueError(f"tokenizer must be one of {TOKENIZERS}, got {tokenizer!r}")
        signature_algorithm(engine)  # an unknown engine fails here, before any data is read
        self.num_perm, self.ngram, self.tokenizer, self.seed, self.engine = num_perm, ngram, tokenizer, seed, engine
        self.url_column = url_column

    def apply(self, batch: pa.Table) -> pa.Table:
        texts = [t or "" for t in batch["text"].to_pylist()]
        tokens = token_hashes(texts, self.tokenizer)  # shared by the signatures and the exact text hash
        sigs, sh_counts, _ = minhash_signatures(
            texts, self.num_perm, self.ngram, self.tokenizer, self.seed, tokens=tokens, engine=self.engine
        )
        width = self.num_perm * 4
        sig_col = pa.FixedSizeBinaryArray.from_buffers(
            pa.binary(width), len(texts), [None, pa.py_buffer(sigs.astype("<u4").tobytes())]
        ).cast(pa.binary())
        th = text_hashes(texts, self.tokenizer, tokens)
        text_hash = pa.array(th, type=pa.int64(), mask=th == 0)
        if self.url_column in batch.column_names:
            url_hash = url_hashes(batch[self.url_column].to_pylist())
        else:
            url_hash = pa.nulls(len(texts), pa.int64())
        return with_columns(
            batch,
            {
                "dup_node": pa.array(node_ids(batch), type=pa.int64()),
                "dup_sig": sig_col,
                "dup_shingles": pa.array(sh_counts, type=pa.int32()),
                "dup_text_hash": text_hash,
                "dup_url_hash": url_hash,
            },
        )


def decode_signatures(column: pa.Array | pa.ChunkedArray, num_perm: int) -> np.ndarray:
    """``dup_sig`` binary values back to a ``(n, num_perm)`` uint32 matrix."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks else pa.array([], pa.binary())
    width = num_perm * 4
    if len(column) == 0:
        return np.zeros((0, num_perm), dtype=np.uint32)
    fixed = column.cast(pa.binary(width))
    data = fixed.buffers()[1]
    start = fixed.offset * width
    return np.frombuffer(data, dtype="<u4", count=len(fixed) * num_perm, offset=start).reshape(-1, num_perm)
