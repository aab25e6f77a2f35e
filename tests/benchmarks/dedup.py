"""Near-duplicate benchmark: planted duplicates in real shared pages, speed against datasketch and datatrove.

Run: ``python tests/benchmarks/dedup.py [--scale N] [--skip-peer]``; the last line printed is one JSON object.

Corpora (all text read in place from ``../shared/data``)
- **real pages**: magic-html gold texts (en, zh, ja and 13 other languages), cx-extractor gold texts (GBK, zh),
  the C4 sample, English Wikipedia articles, Chinese Wikipedia paragraphs.
- **planted**: every real page plus one edited copy at a controlled Jaccard similarity (levels 1.0 as a
  case/spacing/punctuation-only change, 0.95, 0.9, 0.85, 0.7, 0.6, 0.5, in turn). Edits are token
  substitutions, deletions and insertions (a token is a word, or one character in Chinese/Japanese) at random
  positions; the number of edits is searched so that the copy's Jaccard similarity to its page lands on the
  level. Truth is brute-force Jaccard over all pairs on the same shingles (sparse matrix product): pairs with
  J >= 0.8. Found pairs are the pairs that share a ``dup_cluster_id``. Recall = found true pairs / true pairs,
  precision = found true pairs / found pairs.
- **scale**: N (and 4N) documents, each 3-8 real paragraphs drawn at random (same script family), 20% of them
  followed by an edited copy (random level 0.7-1.0): realistic unique text at any size.

Speed
- ``signatures_per_s``: ``operators.dedup.minhash_signatures`` (text in, signatures out) on the real pages, per CPU
  second (``time.process_time``, best of 3), one process, side by side with datasketch (one ``update`` per
  shingle as people write it by hand, ``update_batch``, and ``MinHash.bulk``, its fastest path) and rensa
  (``RMinHash.digest_matrix_from_token_sets``, its batch path), all with 128 permutations on 5-gram shingles of
  the same tokens. The peers are handed n-grams: ``<peer>_per_s`` times their hashing alone, ``<peer>_e2e_per_s``
  adds the n-gram building (``peer_ngram_seconds``, timed once, the same for every peer), which ours includes;
  ``<peer>_e2e_ratio`` = ours / peer end to end.
- ``docs_per_s``: ``pipelines.dedup.dedup_table`` end to end on the 4N table (read from Iceberg, signatures,
  buckets, components, keepers, labels written as a new snapshot), **Ray start-up included** (``init_ray`` in a
  fresh driver process: ``ray_start_seconds``; ``docs_per_s_after_ray_start`` leaves it out), peak driver RSS
  ``driver_peak_rss_mb``; ``scaling_ratio`` = time(4N) / time(N).
- ``peer_docs_per_s``: datatrove 0.10.1 (own venv, ``tests/benchmarks/peer.py``) MinHash dedup (signature,
  buckets, cluster, filter stages; LocalPipelineExecutor with one task per core, its start-up included; the same
  bands x rows, 5-gram shingles, 64-bit hashes) on the same 4N documents, from JSONL; ``peer_ratio`` = ours / peer
  docs per second. ``peer_process_seconds`` adds the interpreter start-up.
- ``peer_recall`` / ``peer_precision``: datatrove on the planted set, scored like ours: its clusters
  (``save_cluster_id`` / ``load_cluster_ids``, removed documents kept through an exclusion writer) as pairs
  against the brute-force truth.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from operators.dedup import shingle_hashes  # noqa: E402
from operators.text import CJK_CHARS, data_dir, is_cjk  # noqa: E402

LEVELS = (1.0, 0.95, 0.9, 0.85, 0.7, 0.6, 0.5)
THRESHOLD = 0.8
NGRAM = 5
_UNIT_RE = re.compile(f"[{CJK_CHARS}]|[^\\W{CJK_CHARS}]+|[\\W]+")
_TOKEN_RE = re.compile(f"[{CJK_CHARS}]|[^\\W{CJK_CHARS}]+")


# ---- real pages ---------------------------------------------------------------------------------------------
def real_pages(data: Path | None = None, min_chars: int = 200) -> list[dict]:
    """Real documents: {"text", "title", "lang", "url", "source"}."""
    data = Path(data or data_dir())
    pages: list[dict] = []
    magic = data / "web" / "magic-html"
    for line in (magic / "index.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        text = (magic / row["gold_text_path"]).read_text(encoding="utf-8")
        pages.append(
            {
                "text": text,
                "title": f"magic-html/{row['id'][:12]}",
                "lang": row["language"],
                "url": row.get("url"),
                "source": "magic-html",
            }
        )
    cx = data / "web" / "cx-extractor"
    for line in (cx / "index.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        text = (cx / row["gold_text_path"]).read_bytes().decode("gbk", errors="replace")
        pages.append(
            {
                "text": text,
                "title": f"cx-extractor/{row['id']}",
                "lang": "zh",
                "url": row.get("url"),
                "source": "cx-extractor",
            }
        )
    for n, line in enumerate((data / "text" / "c4_demo.jsonl").read_text(encoding="utf-8").splitlines()):
        pages.append({"text": json.loads(line)["text"], "title": f"c4/{n}", "lang": "en", "url": None, "source": "c4"})
    for n, line in enumerate((data / "text" / "wiki_demo.txt").read_text(encoding="utf-8").splitlines()):
        if line.strip():
            pages.append({"text": line, "title": f"wiki/{n}", "lang": "en", "url": None, "source": "wiki"})
    cmrc = data / "text" / "cmrc2018_trial_zh_wiki_paragraphs.jsonl"
    for line in cmrc.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        pages.append({"text": row["text"], "title": f"cmrc/{row['id']}", "lang": "zh", "url": None, "source": "cmrc"})
    return [p for p in pages if len(p["text"].strip()) >= min_chars]


# ---- controlled edits ---------------------------------------------------------------------------------------
class Editor:
    """Edits of one text at a fixed random sequence of token positions: ``edited(k)`` applies the first k."""

    def __init__(self, text: str, seed: int) -> None:
        self.units = _UNIT_RE.findall(text)
        self.token_pos = [i for i, u in enumerate(self.units) if _TOKEN_RE.fullmatch(u)]
        rng = random.Random(seed)
        self.order = self.token_pos[:]
        rng.shuffle(self.order)
        vocab = [self.units[i] for i in self.token_pos] or ["x"]
        self.ops = []
        for pos in self.order:
            kind = rng.random()
            other = rng.choice(vocab)
            if kind < 0.5:
                self.ops.append((pos, other if other != self.units[pos] else other + "x"))
            elif kind < 0.75:
                self.ops.append((pos, ""))
            else:
                sep = "" if len(other) == 1 and len(self.units[pos]) == 1 else " "
                self.ops.append((pos, self.units[pos] + sep + other))

    def edited(self, k: int) -> str:
        units = self.units[:]
        for pos, value in self.ops[:k]:
            units[pos] = value
        return "".join(units)


def surface_change(text: str) -> str:
    """Same tokens, different surface: case, spacing and punctuation only (an exact duplicate after normalising)."""
    out = re.sub(r"[ \t]+", "  ", text)
    out = out.replace(",", " ,").replace("，", "、")
    return out.upper() if not is_cjk(text) else out


def shingles(text: str) -> set[int]:
    hashes, _, _ = shingle_hashes([text], NGRAM)
    return set(hashes.tolist())


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def plant(text: str, level: float, seed: int) -> tuple[str, float]:
    """An edited copy of ``text`` whose shingle Jaccard to it is about ``level``; returns (copy, exact J)."""
    base = shingles(text)
    if level >= 1.0:
        copy = surface_change(text)
        return copy, jaccard(base, shingles(copy))
    editor = Editor(text, seed)
    lo, hi = 0, len(editor.ops)
    # largest k with J >= level for duplicate levels, smallest k with J <= level below the threshold
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if jaccard(base, shingles(editor.edited(mid))) >= level:
            lo = mid
        else:
            hi = mid - 1
    k = lo if level >= THRESHOLD else min(lo + 1, len(editor.ops))
    copy = editor.edited(k)
    return copy, jaccard(base, shingles(copy))


def planted_corpus(pages: list[dict], seed: int = 7, levels: tuple[float, ...] = LEVELS) -> list[dict]:
    """Every page, then one edited copy per page at the next level in turn."""
    docs = [dict(p, group=i, level=None) for i, p in enumerate(pages)]
    for i, page in enumerate(pages):
        level = levels[i % len(levels)]
        copy, j = plant(page["text"], level, seed * 100_003 + i)
        docs.append(
            dict(page, text=copy, title=f"{page['title']}~{level}", group=i, level=level, planted_j=j, url=None)
        )
    return docs


def scale_corpus(pages: list[dict], n: int, seed: int = 11, dup_share: float = 0.2) -> list[dict]:
    """``n`` documents of 3-8 random real paragraphs; ``dup_share`` of them are edited copies of another."""
    rng = random.Random(seed)
    pools: dict[bool, list[str]] = {True: [], False: []}
    for page in pages:
        for para in page["text"].splitlines():
            # long paragraphs (a Wikipedia article is one line) are cut at sentence ends into <= 800 characters
            for piece in re.findall(r".{1,800}(?:[.!?。！？]\s*|$)", para.strip()):
                piece = piece.strip()
                if len(piece) >= (30 if is_cjk(piece) else 80):
                    pools[is_cjk(piece)].append(piece)
    docs: list[dict] = []
    originals = int(n * (1 - dup_share))
    for i in range(originals):
        pool = pools[rng.random() < 0.4]
        docs.append({"text": "\n".join(rng.sample(pool, rng.randint(3, 8))), "title": f"scale/{i}"})
    while len(docs) < n:
        src = docs[rng.randrange(originals)]
        editor = Editor(src["text"], rng.randrange(1 << 30))
        k = rng.randint(0, max(1, len(editor.ops) // 25))
        docs.append({"text": editor.edited(k), "title": f"{src['title']}~{k}"})
    rng.shuffle(docs)
    return docs


# ---- truth --------------------------------------------------------------------------------------------------
def brute_force_pairs(texts: list[str], threshold: float = THRESHOLD) -> dict[tuple[int, int], float]:
    """Every pair (i < j) with exact shingle Jaccard >= threshold, by a sparse doc x shingle product."""
    from scipy.sparse import csr_matrix

    hashes, offsets, _ = shingle_hashes(texts, NGRAM)
    doc = np.repeat(np.arange(len(texts)), np.diff(offsets))
    pairs = np.unique(np.stack([doc, hashes.view(np.int64)], axis=1), axis=0)  # a set per document
    _, col = np.unique(pairs[:, 1], return_inverse=True)
    x = csr_matrix((np.ones(len(pairs), np.int32), (pairs[:, 0], col)), shape=(len(texts), int(col.max()) + 1))
    sizes = np.asarray(x.sum(axis=1)).ravel()
    inter = (x @ x.T).tocoo()
    i, j, v = inter.row, inter.col, inter.data
    upper = i < j
    i, j, v = i[upper], j[upper], v[upper]
    jac = v / (sizes[i] + sizes[j] - v)
    keep = jac >= threshold
    # documents without shingles are equal to each other only when both are empty: left out here
    return {(int(a), int(b)): float(s) for a, b, s in zip(i[keep], j[keep], jac[keep], strict=True)}


def cluster_pairs(cluster_ids: list[str]) -> set[tuple[int, int]]:
    groups: dict[str, list[int]] = {}
    for i, c in enumerate(cluster_ids):
        groups.setdefault(c, []).append(i)
    out = set()
    for members in groups.values():
        for a in range(len(members)):
            for b in range(a + 1, len(members)):
                out.add((min(members[a], members[b]), max(members[a], members[b])))
    return out


def recall_precision(found: set, truth: set) -> tuple[float, float]:
    hit = len(found & truth)
    recall = hit / len(truth) if truth else 1.0
    precision = hit / len(found) if found else 1.0
    return recall, precision


# ---- peer: datatrove ----------------------------------------------------------------------------------------
PEER_SCRIPT = r"""
import json, sys, time
from pathlib import Path

def main(work, bands, rows, tasks):
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter
    from datatrove.pipeline.dedup import MinhashDedupSignature
    from datatrove.pipeline.dedup.minhash import MinhashConfig
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter
    from datatrove.utils.hashing import HashConfig

    work = Path(work)
    cfg = MinhashConfig(hash_config=HashConfig(precision=64), num_buckets=bands, hashes_per_bucket=rows, n_grams=5)
    logs = str(work / "logs")
    t0 = time.perf_counter()
    s1 = LocalPipelineExecutor(pipeline=[JsonlReader(str(work / "input")),
                                         MinhashDedupSignature(output_folder=str(work / "sigs"), config=cfg)],
                               tasks=tasks, workers=tasks, logging_dir=logs + "/s1")
    s2 = LocalPipelineExecutor(pipeline=[MinhashDedupBuckets(input_folder=str(work / "sigs"),
                                                             output_folder=str(work / "buckets"), config=cfg)],
                               tasks=cfg.num_buckets, workers=tasks, logging_dir=logs + "/s2", depends=s1)
    s3 = LocalPipelineExecutor(pipeline=[MinhashDedupCluster(input_folder=str(work / "buckets"),
                                                             output_folder=str(work / "remove"), config=cfg,
                                                             save_cluster_id=True)],
                               tasks=1, logging_dir=logs + "/s3", depends=s2)
    s4 = LocalPipelineExecutor(pipeline=[JsonlReader(str(work / "input")),
                                         MinhashDedupFilter(input_folder=str(work / "remove"), load_cluster_ids=True,
                                                            exclusion_writer=JsonlWriter(str(work / "removed"))),
                                         JsonlWriter(str(work / "output"))],
                               tasks=tasks, workers=tasks, logging_dir=logs + "/s4", depends=s3)
    s4.run()
    seconds = time.perf_counter() - t0
    kept = sum(1 for f in (work / "output").glob("*.jsonl*") for _ in __import__("gzip").open(f, "rt"))
    print(json.dumps({"seconds": seconds, "kept": kept}))

if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
"""


def run_peer(docs: list[dict], work: Path, bands: int, rows: int, tasks: int = 2) -> dict:
    """datatrove's four MinHash stages on ``docs`` (JSONL, ``tasks`` files); returns its seconds (interpreter and
    executor start-up included, as ours includes Ray's), kept count and a cluster label per document."""
    from peer import ensure_datatrove_venv, offline_env

    python = ensure_datatrove_venv()
    (work / "input").mkdir(parents=True, exist_ok=True)
    for t in range(tasks):
        with open(work / "input" / f"part{t}.jsonl", "w", encoding="utf-8") as fh:
            for i in range(t, len(docs), tasks):
                fh.write(json.dumps({"id": str(i), "text": docs[i]["text"]}, ensure_ascii=False) + "\n")
    script = work / "peer_minhash.py"
    script.write_text(PEER_SCRIPT)
    t0 = time.perf_counter()
    result = subprocess.run(
        [str(python), str(script), str(work), str(bands), str(rows), str(tasks)],
        capture_output=True,
        text=True,
        env=offline_env(python, work / "hf"),
        cwd=work,
        timeout=3600,
    )
    seconds = time.perf_counter() - t0
    if result.returncode != 0:
        raise RuntimeError(f"datatrove failed:\n{result.stderr[-3000:]}")
    out = json.loads(result.stdout.strip().splitlines()[-1])
    return out | {"process_seconds": seconds, "labels": read_peer_labels(work, len(docs))}


def read_peer_labels(work: Path, n: int) -> list[str]:
    """A cluster label per document from datatrove's kept and removed JSONL (``minhash_cluster_id``; -1 or no id:
    a document of its own)."""
    import gzip

    labels = [f"own-{i}" for i in range(n)]
    for folder in ("output", "removed"):
        for path in (work / folder).glob("*.jsonl*"):
            opener = gzip.open if path.suffix == ".gz" else open
            with opener(path, "rt", encoding="utf-8") as fh:
                for line in fh:
                    doc = json.loads(line)
                    cluster = doc.get("metadata", {}).get("minhash_cluster_id", -1)
                    if cluster is not None and cluster >= 0:
                        labels[int(doc["id"])] = f"c{cluster}"
    return labels


# ---- our runs (a fresh driver process each) -----------------------------------------------------------------
def worker(home: str, table: str) -> None:
    """``--worker``: time Ray's start-up and ``dedup_table``; print its report, both times and peak RSS."""
    os.environ.update(LAKE_HOME=home, RAY_AUTH_MODE="disabled", MLFLOW_DISABLE_TELEMETRY="true", LAKE_PROGRESS="0")
    from catalog.store import Lakehouse
    from lake.config import load_config
    from pipelines.dedup import DedupConfig, dedup_table
    from pipelines.ray_env import init_ray

    cfg = load_config()
    lake = Lakehouse.from_config(cfg)
    t0 = time.perf_counter()
    init_ray(cfg)
    ray_start = time.perf_counter() - t0
    report = dedup_table(lake, cfg, table, DedupConfig(), progress=False)
    seconds = time.perf_counter() - t0
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = {"seconds": seconds, "ray_start_seconds": ray_start, "driver_peak_rss_mb": rss_mb}
    print(json.dumps(out | {"report": report.as_dict()}))


def run_ours(home: Path, table: str) -> dict:
    result = subprocess.run(
        [sys.executable, __file__, "--worker", str(home), table], capture_output=True, text=True, timeout=3600
    )
    if result.returncode != 0:
        raise RuntimeError(f"dedup worker failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def import_docs(home: Path, table: str, docs: list[dict], work: Path) -> None:
    os.environ.update(LAKE_HOME=str(home))
    from catalog.store import Lakehouse
    from lake.config import load_config
    from pipelines.imports import import_files

    path = work / f"{table.replace('.', '_')}.jsonl"
    with open(path, "w", encoding="utf-8") as fh:
        for n, doc in enumerate(docs):
            fh.write(json.dumps({"text": doc["text"], "title": f"{n}|{doc['title']}"}, ensure_ascii=False) + "\n")
    import_files(Lakehouse.from_config(load_config()), "text", [str(path)], table, progress=False)


def read_labels(home: Path, table: str, n: int) -> list[str]:
    """dup_cluster_id of document i (titles carry the index)."""
    os.environ.update(LAKE_HOME=str(home))
    from catalog.query import run_query
    from catalog.store import Lakehouse
    from lake.config import load_config

    lake = Lakehouse.from_config(load_config())
    rows = run_query(lake, f"SELECT title, dup_cluster_id FROM {table}__labels").to_dicts()
    out = [""] * n
    for row in rows:
        out[int(row["title"].split("|", 1)[0])] = row["dup_cluster_id"]
    return out


# ---- signatures/s against datasketch and rensa -------------------------------------------------------------
def peer_ngrams(texts: list[str]) -> list[list[bytes]]:
    """The peers' input: the same tokens as ours (normalised text, CJK characters alone) joined into 5-grams."""
    from operators.dedup import normalize_text

    grams = []
    for text in texts:
        tokens = _TOKEN_RE.findall(normalize_text(text))
        grams.append([" ".join(tokens[i : i + NGRAM]).encode() for i in range(max(1, len(tokens) - NGRAM + 1))])
    return grams


def _cpu_seconds(fn, repeat: int = 3) -> float:
    """Best of ``repeat`` process-time runs (other work on a shared machine only ever slows a run down)."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best


def signature_speed(texts: list[str], num_perm: int = 128) -> dict:
    """Signatures per CPU second, side by side on the same texts: ours (text in, signatures out) against
    datasketch (one ``update`` per shingle, ``update_batch``, and ``MinHash.bulk``, its fastest path) and rensa
    (``RMinHash.digest_matrix_from_token_sets``, its batch path). The peers hash n-grams they are given; building
    those (same tokens as ours) is timed separately, so each peer has a hashing-only rate and an end-to-end rate."""
    import rensa
    from datasketch import MinHash

    from operators.dedup import minhash_signatures

    minhash_signatures(texts[:10])  # tables built once per process, as in a Ray worker
    n = len(texts)
    ngram_s = _cpu_seconds(lambda: peer_ngrams(texts))
    grams = peer_ngrams(texts)

    def datasketch_update() -> None:
        for doc in grams:
            m = MinHash(num_perm=num_perm, seed=1)
            for g in doc:
                m.update(g)

    def datasketch_update_batch() -> None:
        for doc in grams:
            MinHash(num_perm=num_perm, seed=1).update_batch(doc)

    peers = {
        "datasketch_update": datasketch_update,
        "datasketch_update_batch": datasketch_update_batch,
        "datasketch_bulk": lambda: MinHash.bulk(grams, num_perm=num_perm, seed=1),
        "rensa": lambda: rensa.RMinHash.digest_matrix_from_token_sets(grams, num_perm, 1),
    }
    ours_s = _cpu_seconds(lambda: [minhash_signatures(texts[i : i + 512]) for i in range(0, n, 512)])
    out = {"signature_docs": n, "signatures_per_s": round(n / ours_s, 1), "peer_ngram_seconds": round(ngram_s, 3)}
    for name, fn in peers.items():
        seconds = _cpu_seconds(fn, repeat=1 if name == "datasketch_update" else 3)
        out[f"{name}_per_s"] = round(n / seconds, 1)  # n-grams given
        out[f"{name}_e2e_per_s"] = round(n / (seconds + ngram_s), 1)  # n-grams built too, as ours does
        out[f"{name}_e2e_ratio"] = round((seconds + ngram_s) / ours_s, 2)  # ours / peer, end to end
    out["rensa_version"] = rensa_version()
    return out


def rensa_version() -> str:
    from importlib.metadata import version

    return version("rensa")


# ---- main ---------------------------------------------------------------------------------------------------
def describe_real_clusters(docs: list[dict], labels: list[str], limit: int = 8) -> list[dict]:
    groups: dict[str, list[int]] = {}
    for i, c in enumerate(labels):
        groups.setdefault(c, []).append(i)
    multi = sorted((m for m in groups.values() if len(m) > 1), key=len, reverse=True)
    out = []
    for members in multi[:limit]:
        head = docs[members[0]]["text"].strip().replace("\n", " ")[:60]
        out.append({"size": len(members), "titles": [docs[m]["title"] for m in members[:4]], "text": head})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=int, default=4000, help="N: the scaling run compares N and 4N documents")
    parser.add_argument("--skip-peer", action="store_true", help="do not run datatrove")
    parser.add_argument("--worker", nargs=2, metavar=("HOME", "TABLE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker)
        return
    out: dict = {}
    base = REPO / ".bench" / "dedup"
    base.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="run-", dir=base))
    home = work / "lake"
    pages = real_pages()
    print(f"[dedup] {len(pages)} real pages; work dir {work}", file=sys.stderr)

    # correctness: planted copies against brute force
    planted = planted_corpus(pages)
    import_docs(home, "bench.planted", planted, work)
    planted_run = run_ours(home, "bench.planted")
    labels = read_labels(home, "bench.planted", len(planted))
    truth = set(brute_force_pairs([d["text"] for d in planted]))
    found = cluster_pairs(labels)
    recall, precision = recall_precision(found, truth)
    by_level = {}
    for level in LEVELS:
        pairs = {(d["group"], len(pages) + d["group"]) for d in planted if d["level"] == level}
        by_level[str(level)] = round(len(pairs & found) / len(pairs), 3)
    planted_j = [d["planted_j"] for d in planted if d["level"] is not None]
    out |= {
        "recall": round(recall, 4),
        "precision": round(precision, 4),
        "true_pairs": len(truth),
        "found_pairs": len(found),
        "planted_docs": len(planted),
        "planted_seconds": round(planted_run["seconds"], 2),
        "planted_found_share_by_level": by_level,
        "planted_j_range": [round(min(planted_j), 3), round(max(planted_j), 3)],
    }
    print(f"[dedup] planted: recall {recall:.4f} precision {precision:.4f} ({len(truth)} true pairs)", file=sys.stderr)
    if not args.skip_peer:  # the peer on the same planted set, scored the same way
        peer_planted = run_peer(
            planted, work / "peer-planted", planted_run["report"]["bands"], planted_run["report"]["rows"]
        )
        peer_found = cluster_pairs(peer_planted["labels"])
        peer_recall, peer_precision = recall_precision(peer_found, truth)
        out |= {
            "peer_recall": round(peer_recall, 4),
            "peer_precision": round(peer_precision, 4),
            "peer_found_pairs": len(peer_found),
            "peer_planted_kept": peer_planted["kept"],
            "ours_planted_kept": len(planted) - planted_run["report"]["duplicates"],
        }

    # the real pages as they are
    import_docs(home, "bench.real", pages, work)
    real = run_ours(home, "bench.real")
    real_labels = read_labels(home, "bench.real", len(pages))
    real_truth = brute_force_pairs([p["text"] for p in pages])
    r_recall, r_precision = recall_precision(cluster_pairs(real_labels), set(real_truth))
    out["real_pages"] = {
        "docs": len(pages),
        "clusters": real["report"]["clusters"],
        "duplicates": real["report"]["duplicates"],
        "brute_force_pairs": len(real_truth),
        "recall": round(r_recall, 4),
        "precision": round(r_precision, 4),
        "largest": describe_real_clusters(pages, real_labels),
    }

    # scale: N and 4N in fresh drivers
    small, large = scale_corpus(pages, args.scale), scale_corpus(pages, 4 * args.scale, seed=12)
    import_docs(home, "bench.small", small, work)
    import_docs(home, "bench.large", large, work)
    out |= signature_speed([p["text"] for p in pages])
    run_n = run_ours(home, "bench.small")
    run_4n = run_ours(home, "bench.large")
    out |= {
        "docs": len(large),
        "seconds": round(run_4n["seconds"], 2),
        "seconds_n": round(run_n["seconds"], 2),
        "docs_per_s": round(len(large) / run_4n["seconds"], 1),
        "ray_start_seconds": round(run_4n["ray_start_seconds"], 2),
        "docs_per_s_after_ray_start": round(len(large) / (run_4n["seconds"] - run_4n["ray_start_seconds"]), 1),
        "scaling_ratio": round(run_4n["seconds"] / run_n["seconds"], 3),
        "driver_peak_rss_mb": round(run_4n["driver_peak_rss_mb"], 1),
        "driver_peak_rss_mb_n": round(run_n["driver_peak_rss_mb"], 1),
        "stage_seconds": run_4n["report"]["stage_seconds"],
        "large_duplicates": run_4n["report"]["duplicates"],
        "lsh": [run_4n["report"]["bands"], run_4n["report"]["rows"]],
    }

    if not args.skip_peer:
        peer = run_peer(large, work / "peer", *out["lsh"])
        out |= {
            "peer_docs_per_s": round(len(large) / peer["seconds"], 1),
            "peer_seconds": round(peer["seconds"], 2),
            "peer_process_seconds": round(peer["process_seconds"], 2),
            "peer_kept": peer["kept"],
            "ours_kept": len(large) - out["large_duplicates"],
        }
        out["peer_ratio"] = round(out["docs_per_s"] / out["peer_docs_per_s"], 2)
    else:
        out |= {"peer_docs_per_s": None, "peer_ratio": None}
    print(json.dumps(out, ensure_ascii=False))


if __name__ == "__main__":
    main()
