"""Main-text extraction benchmark: our ``extract_main_text`` (combined) vs plain trafilatura and plain
resiliparse.

Run: ``python tests/benchmarks/extraction.py [--limit N] [--sets magic-html,cx-extractor,trafilatura-eval]``.

Scores
- magic-html, cx-extractor: shingle F1 against the gold text, averaged over pages (macro). Text is
  lower-cased and
  tokenised into words, except that every CJK character is a token; shingles are 3-grams of those tokens, so
  space-separated languages get word 3-grams and Chinese/Japanese get character 3-grams. Shingles are
  counted as a
  multiset (a repeated paragraph counts twice). An empty gold text (the magic-html list page) scores 1 only
  for an
  empty extraction.
- trafilatura-eval: trafilatura's own snippet scoring, summed over all pages: a must-contain snippet found
  is a true
  positive (missing: false negative), a must-not-contain snippet found is a false positive; precision =
  tp/(tp+fp), recall = tp/(tp+fn), F1 of those. Whitespace is collapsed on both sides before matching.
- pages_per_s: pages / summed per-page CPU seconds (``time.process_time``) of the combined method, in one
  process, so it is the rate on one core; fallback_share: share of pages where combined ran trafilatura.
All methods see the same pages, decoded the same way, scored by the same function.
The last line printed is one JSON object with the figures per set.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from operators.extract import ExtractMainText  # noqa: E402
from operators.text import CJK_CHARS, data_dir  # noqa: E402

_TOKEN_RE = re.compile(f"[{CJK_CHARS}]|[^\\W{CJK_CHARS}]+")
METHODS = ("combined", "trafilatura", "resiliparse")


def shingles(text: str, n: int = 3) -> Counter:
    tokens = _TOKEN_RE.findall(text.lower())
    if len(tokens) < n:
        return Counter([tuple(tokens)]) if tokens else Counter()
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def shingle_f1(pred: str, gold: str) -> float:
    g, p = shingles(gold), shingles(pred)
    if not g:
        return 1.0 if not p else 0.0
    overlap = sum((g & p).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / sum(p.values()), overlap / sum(g.values())
    return 2 * precision * recall / (precision + recall)


def snippet_counts(pred: str, snippets: dict) -> tuple[int, int, int]:
    """(tp, fn, fp) for one page."""
    text = " ".join(pred.split())
    found_with = sum(" ".join(s.split()) in text for s in snippets["with"])
    found_without = sum(" ".join(s.split()) in text for s in snippets["without"])
    return found_with, len(snippets["with"]) - found_with, found_without


def load_set(name: str, limit: int | None = None) -> Iterator[tuple[str, str | None, str | dict]]:
    """Yield (html, url, gold text or snippet dict) for one benchmark set."""
    root = data_dir() / "web" / name
    snippets = json.loads((root / "snippets.json").read_text()) if name == "trafilatura-eval" else {}
    with open(root / "index.jsonl", encoding="utf-8") as index:
        for i, line in enumerate(index):
            if limit is not None and i >= limit:
                break
            row = json.loads(line)
            raw = (root / row["html_path"]).read_bytes()
            if row["html_path"].endswith(".gz"):
                raw = gzip.decompress(raw)
            encoding = row.get("encoding", "utf-8")
            html = raw.decode(encoding, errors="replace")
            if name == "trafilatura-eval":
                gold: str | dict = snippets[row["html_path"]]
            else:
                gold = (root / row["gold_text_path"]).read_bytes().decode(encoding, errors="replace")
            yield html, row.get("url"), gold


def run_set(name: str, limit: int | None) -> dict[str, float]:
    extractors = {m: ExtractMainText(method=m) for m in METHODS}
    f1s: dict[str, list[float]] = {m: [] for m in METHODS}
    counts = {m: [0, 0, 0] for m in METHODS}
    seconds = 0.0
    pages = fallbacks = 0
    for html, url, gold in load_set(name, limit):
        pages += 1
        for method, extractor in extractors.items():
            t0 = time.process_time()
            text, _, used, _ = extractor.extract_one(html, url)
            if method == "combined":
                seconds += time.process_time() - t0
                fallbacks += used == "trafilatura"
            if isinstance(gold, dict):
                for k, v in enumerate(snippet_counts(text, gold)):
                    counts[method][k] += v
            else:
                f1s[method].append(shingle_f1(text, gold))
    scores = {}
    for method in METHODS:
        if name == "trafilatura-eval":
            tp, fn, fp = counts[method]
            precision, recall = tp / max(1, tp + fp), tp / max(1, tp + fn)
            scores[method] = 2 * precision * recall / max(1e-9, precision + recall)
        else:
            scores[method] = sum(f1s[method]) / max(1, len(f1s[method]))
    return {
        "pages": pages,
        "f1": round(scores["combined"], 4),
        "trafilatura_f1": round(scores["trafilatura"], 4),
        "resiliparse_f1": round(scores["resiliparse"], 4),
        "pages_per_s": round(pages / max(seconds, 1e-9), 1),
        "fallback_share": round(fallbacks / max(1, pages), 3),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="pages per set (default: all)")
    parser.add_argument(
        "--sets", default="magic-html,cx-extractor,trafilatura-eval", help="comma-separated set names"
    )
    args = parser.parse_args(argv)
    results = {name: run_set(name, args.limit) for name in args.sets.split(",")}
    print(f"{'set':<18}{'pages':>6}{'combined':>10}{'trafilatura':>12}{'resiliparse':>12}{'pages/s':>9}")
    for name, r in results.items():
        print(
            f"{name:<18}{r['pages']:>6}{r['f1']:>10.4f}{r['trafilatura_f1']:>12.4f}"
            f"{r['resiliparse_f1']:>12.4f}{r['pages_per_s']:>9.1f}"
        )
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
