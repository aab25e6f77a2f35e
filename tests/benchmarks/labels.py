"""Labels and mixes: `lake label ppl` against a plain transformers loop, `lake label quality` end to end, `lake mix`.

Run: ``python tests/benchmarks/labels.py [--docs 20000] [--ppl-docs 1000]``; the last line printed is one JSON
object. Everything runs on a fresh lake in a temporary LAKE_HOME, on the shared data:

- a corpus of ``--docs`` distinct documents: overlapping windows of 2-6 real paragraphs (English Wikipedia, C4,
  People's Daily, Chinese Wikipedia, SFT answers), imported as ``web.bench``;
- a tokenizer and a tiny reference LM trained with ``lake train tokenizer`` / ``lake train pretrain``;
- **perplexity** on the first ``--ppl-docs`` documents (table ``web.ppl``): ``label_ppl`` (Ray Data actor pool,
  length-sorted padded batches, one torch thread per actor) against the plain way, ``transformers``
  ``LlamaForCausalLM`` of the same checkpoint scoring one document at a time over the same windows (torch threads
  = all cores). Both must give the same perplexities (max relative difference reported);
- **quality**: a fastText classifier trained with ``lake train quality-classifier`` (reference text and SFT answers
  vs C4), then ``label_quality`` over all ``--docs`` documents; fastText's own predict rate on the same lines is
  the ceiling;
- **mix**: a two-bucket, two-phase spec over ``web.bench`` resolved twice: seconds and digests.

Ray starts once, before the timed label calls (its start-up is reported on its own, ``ray_start_s``): on a
cluster it is already up; each ``lake label`` command pays it once per run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "tests")]
DATA = Path(os.environ.get("LAKE_DATA_DIR", REPO.parent / "shared" / "data")).resolve()


def lake(env: dict, *args: str) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "lake", *args], env=env, capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        raise SystemExit(f"lake {' '.join(args[:3])} failed: {out.stderr.strip().splitlines()[-1:]}")
    return out


def paragraphs() -> list[str]:
    """Real paragraphs of the shared text and SFT answers."""
    out = []
    for line in (DATA / "text/wiki_demo.txt").read_text(encoding="utf-8").split("\n\n"):
        if len(line.strip()) > 80:
            out.append(line.strip())
    for name in ("text/c4_demo.jsonl", "text/cmrc2018_trial_zh_wiki_paragraphs.jsonl"):
        for line in (DATA / name).read_text(encoding="utf-8").splitlines():
            text = json.loads(line).get("text") or ""
            out += [p.strip() for p in text.split("\n") if len(p.strip()) > 40]
    sentences = (DATA / "text/peoples_daily_ner_sentences.txt").read_text(encoding="utf-8").splitlines()
    out += ["".join(sentences[i : i + 4]) for i in range(0, len(sentences), 4)]
    for path in sorted((DATA / "sft").glob("*.json"))[:2]:
        for item in json.loads(path.read_text(encoding="utf-8"))[:2000]:
            answer = item.get("output") or item.get("response") or ""
            if isinstance(answer, str) and len(answer) > 80:
                out.append(answer)
    return out


def corpus(n: int, seed: int = 7) -> list[dict]:
    pool = paragraphs()
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        start = rng.randrange(len(pool))
        text = "\n".join(pool[(start + k) % len(pool)] for k in range(rng.randint(2, 6)))
        docs.append({"text": f"{text}\n[{i}]", "title": f"doc {i}"})  # distinct documents
    return docs


def write_jsonl(path: Path, docs: list[dict]) -> str:
    with open(path, "w", encoding="utf-8") as fh:
        for d in docs:
            fh.write(json.dumps(d, ensure_ascii=False) + "\n")
    return str(path)


def plain_ppl(model_dir: Path, texts: list[str], max_tokens: int) -> tuple[list[float], float, int]:
    """transformers, one document at a time, the same windows: (perplexities, seconds, tokens scored)."""
    import torch
    from transformers import LlamaForCausalLM

    from training.perplexity import document_windows
    from training.tokenizer import load_tokenizer

    torch.set_num_threads(os.cpu_count() or 1)
    tok = load_tokenizer(model_dir)
    model = LlamaForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    seq_len = model.config.max_position_embeddings
    out, tokens = [], 0
    started = time.perf_counter()
    for text in texts:
        nll, n = 0.0, 0
        for w in document_windows(tok.encode(text), tok.bos_id, seq_len, max_tokens):
            if len(w) < 2:
                continue
            ids = torch.from_numpy(w)[None]
            with torch.inference_mode():
                logits = model(input_ids=ids[:, :-1]).logits
            nll += torch.nn.functional.cross_entropy(logits[0].float(), ids[0, 1:], reduction="sum").item()
            n += len(w) - 1
        out.append(math.exp(nll / n) if n else float("nan"))
        tokens += n
    return out, time.perf_counter() - started, tokens


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--ppl-docs", type=int, default=1000)
    parser.add_argument("--max-tokens", type=int, default=256)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="lake-bench-labels-"))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "LAKE_CONFIG")}
    env |= {"LAKE_HOME": str(work / "home"), "LAKE_DATA_DIR": str(DATA), "RAY_AUTH_MODE": "disabled",
            "MLFLOW_DISABLE_TELEMETRY": "true", "LAKE_PROGRESS": "0"}  # fmt: skip
    docs = corpus(args.docs)
    lake(env, "import", "text", write_jsonl(work / "bench.jsonl", docs), "--table", "web.bench")
    lake(env, "import", "text", write_jsonl(work / "ppl.jsonl", docs[: args.ppl_docs]), "--table", "web.ppl")
    text_files = [str(DATA / f) for f in ("text/wiki_demo.txt", "text/c4_demo.jsonl",
                                          "text/peoples_daily_ner_sentences.txt")]  # fmt: skip
    lake(env, "import", "text", *text_files, "--table", "text.corpus")
    lake(env, "train", "tokenizer", "--table", "text.corpus", "--vocab-size", "4000", "--name", "tok",
         "--sample-chars", "400000")  # fmt: skip
    job = {"name": "ref", "tokenizer": "models:/tok/1", "data": {"table": "text.corpus", "val_max_tokens": 2048},
           "model": {"size": "tiny", "seq_len": 256},
           "optim": {"batch_size": 8, "max_steps": 20, "warmup_steps": 2, "eval_every": 20,
                     "checkpoint_every": 20}}  # fmt: skip
    (work / "ref.yaml").write_text(yaml.safe_dump(job))
    lake(env, "train", "pretrain", str(work / "ref.yaml"))
    lake(env, "train", "quality-classifier", "--name", "quality",
         "--positive", "SELECT text FROM text.corpus WHERE input_uri NOT LIKE '%c4_demo%'",
         "--negative", "SELECT text FROM text.corpus WHERE input_uri LIKE '%c4_demo%'")  # fmt: skip

    os.environ.update(env)
    import pyarrow as pa  # noqa: F401 - imported before Ray to keep its start-up time clean

    from catalog.store import Lakehouse
    from lake.config import load_config
    from pipelines.ray_env import init_ray
    from training import registry
    from training.quality import label_ppl, label_quality

    cfg = load_config()
    store = Lakehouse.from_config(cfg)
    started = time.perf_counter()
    init_ray(cfg)
    ray_start_s = time.perf_counter() - started

    # perplexity: ours vs transformers one document at a time
    t0 = time.perf_counter()
    ours = label_ppl(cfg, "web.ppl", "models:/ref/1", max_tokens=args.max_tokens, progress=False)
    ours_s = time.perf_counter() - t0
    rows = store.read("web.ppl__ppl", columns=("doc_id", "ppl", "ppl_tokens")).to_pylist()
    texts = store.read("web.ppl", columns=("doc_id", "text")).to_pylist()
    by_id = {r["doc_id"]: r for r in rows}
    model_dir = registry.download(cfg, registry.resolve(cfg, "models:/ref/1"), cfg.home / "cache" / "models")
    plain, plain_s, plain_tokens = plain_ppl(model_dir, [t["text"] for t in texts], args.max_tokens)
    rel = max(abs(p - by_id[t["doc_id"]]["ppl"]) / p for p, t in zip(plain, texts, strict=True))
    our_tokens = sum(r["ppl_tokens"] for r in rows)

    # quality: end to end over every document, and fastText's own rate on the same lines
    t0 = time.perf_counter()
    quality = label_quality(cfg, "web.bench", "models:/quality/1", progress=False)
    quality_s = time.perf_counter() - t0
    import fasttext

    from operators.quality_model import fasttext_line

    classifier_dir = registry.download(cfg, registry.resolve(cfg, "models:/quality/1"), cfg.home / "cache" / "models")
    model = fasttext.load_model(str(classifier_dir / "model.bin"))
    lines = [fasttext_line(d["text"]) for d in docs]
    t0 = time.process_time()
    model.predict(lines, k=2)
    fasttext_rate = len(lines) / (time.process_time() - t0)

    # mix: two buckets, two phases, twice
    spec = {
        "name": "bench-mix", "tokenizer": "models:/tok/1", "budget_tokens": 2_000_000,
        "sources": {"bench": {"table": "web.bench"}},
        "buckets": {"high": {"source": "bench", "where": "quality_score > 0.5", "max_epochs": 3},
                    "rest": {"source": "bench", "max_epochs": 1}},
        "phases": [{"name": "stable", "share": 0.8, "weights": {"high": 0.4, "rest": 0.6}},
                   {"name": "anneal", "share": 0.2, "weights": {"high": 0.9, "rest": 0.1}}],
    }  # fmt: skip
    from training.mix import parse_spec, run_mix

    timings, digests, reports = [], [], []
    for _ in range(2):
        t0 = time.perf_counter()
        report = run_mix(cfg, parse_spec(spec))
        timings.append(time.perf_counter() - t0)
        digests.append(report.digest)
        reports.append(report)

    result = {
        "docs": args.docs,
        "ray_start_s": round(ray_start_s, 2),
        "ppl": {
            "docs": len(rows),
            "ours_docs_per_s": round(len(rows) / ours_s, 1),
            "ours_tokens_per_s": round(our_tokens / ours_s, 1),
            "plain_docs_per_s": round(len(texts) / plain_s, 1),
            "plain_tokens_per_s": round(plain_tokens / plain_s, 1),
            "speedup": round(plain_s / ours_s, 2),
            "max_rel_diff": rel,
            "labelled": ours.labelled,
        },
        "quality": {
            "docs": quality.labelled,
            "seconds": round(quality_s, 2),
            "docs_per_s": round(quality.labelled / quality_s, 1),
            "fasttext_predict_docs_per_s_per_core": round(fasttext_rate, 1),
        },
        "mix": {
            "seconds": [round(t, 2) for t in timings],
            "digests_equal": digests[0] == digests[1],
            "digest": digests[0][:16],
            "second_unchanged": reports[1].unchanged,
            "tokens": reports[0].tokens,
            "buckets": {
                b["name"]: {"effective_epochs": b["effective_epochs"], "documents": b["documents_available"]}
                for b in reports[0].buckets
            },  # fmt: skip
        },
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
