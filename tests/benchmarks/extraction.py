"""Main-text extraction benchmark: our ``extract_main_text`` (combined) vs plain trafilatura and plain
resiliparse, scored as tuned on all sets, leave-one-set-out, and on dev/test halves.

Run: ``python tests/benchmarks/extraction.py [--limit N] [--sets magic-html,cx-extractor,trafilatura-eval]``.

"Ours" is what the default recipe writes: ``extract_main_text`` followed by ``line_cleanup`` (which owns boilerplate
lines). Plain trafilatura is ``trafilatura.extract`` with comments and tables on and no deduplication (its
defaults); plain resiliparse is ``extract_plain_text(main_content=True)``.

Scores
- magic-html, cx-extractor: shingle F1 against the gold text, averaged over pages (macro). Text is lower-cased and
  tokenised into words, except that every CJK character is a token; shingles are 3-grams of those tokens, so
  space-separated languages get word 3-grams and Chinese/Japanese get character 3-grams. Shingles are counted as a
  multiset (a repeated paragraph counts twice). An empty gold text (the magic-html list page) scores 1 only for an
  empty extraction.
- trafilatura-eval: trafilatura's own snippet scoring, summed over the pages: a must-contain snippet found is a true
  positive (missing: false negative), a must-not-contain snippet found is a false positive; precision =
  tp/(tp+fp), recall = tp/(tp+fn), F1 of those. Whitespace is collapsed on both sides before matching.

Tuning honesty. Our rules and thresholds that a benchmark could tune form a small grid (``GRID``: cutting trailing
sections at lexicon headings, teaser-list detection, the sibling share of the main block); every grid point
extracts every page once. Selection maximises the mean over the training sets of each
set's score. Reported per set:
- ``tuned_on_all``: the grid point best on all sets, scored on this set (an optimistic upper bound);
- ``leave_one_set_out``: the grid point best on the *other* sets, scored on this one (this set never seen);
- ``dev`` / ``test``: pages split in halves by a hash of the page id; the grid point best on the dev halves of all
  sets, scored on each half. The shipped defaults (``default``) are the dev-selected point; ``test`` is the honest
  figure.
Plain trafilatura and resiliparse have nothing tuned: their scores are per set and per half.

Speed: ``pages_per_s`` = pages / summed per-page CPU seconds (``time.process_time``) of our default configuration
(extraction + line cleanup), in one process (one core); ``trafilatura_pages_per_s`` the same for plain
trafilatura on the same pages; ``speed_ratio`` = ours / trafilatura. ``fallback_share``: pages where our default ran
trafilatura. All methods see the same pages, decoded the same way, scored by the same function.
The last line printed is one JSON object with the figures per set.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import itertools
import json
import re
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from operators.cleanup import LineCleanup  # noqa: E402
from operators.extract import ExtractMainText  # noqa: E402
from operators.text import CJK_CHARS, data_dir  # noqa: E402

_TOKEN_RE = re.compile(f"[{CJK_CHARS}]|[^\\W{CJK_CHARS}]+")
SETS = ("magic-html", "cx-extractor", "trafilatura-eval")
SNIPPET_SETS = frozenset({"trafilatura-eval"})
PLAIN = ("trafilatura", "resiliparse")
# The tunable rules and thresholds of ``ExtractMainText``: every combination is one grid point.
GRID_AXES = {
    "cut_trailing": (True, False),
    "teaser_lists": (True, False),
    "sibling_share": (0.2, 0.35),
}
GRID = [dict(zip(GRID_AXES, values, strict=True)) for values in itertools.product(*GRID_AXES.values())]


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


@dataclass(frozen=True)
class Page:
    set_name: str
    page_id: str
    html: str
    url: str | None
    gold: str | dict  # gold text, or {"with": [...], "without": [...]} snippets

    @property
    def half(self) -> str:
        """ "dev" or "test", by a hash of the page id (stable across runs and machines)."""
        digest = hashlib.sha1(f"{self.set_name}/{self.page_id}".encode()).digest()
        return "dev" if digest[0] % 2 == 0 else "test"


def load_pages(name: str, limit: int | None = None) -> Iterator[Page]:
    """The pages of one benchmark set, decoded as their index says."""
    root = data_dir() / "web" / name
    snippets = json.loads((root / "snippets.json").read_text()) if name in SNIPPET_SETS else {}
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
            if name in SNIPPET_SETS:
                gold: str | dict = snippets[row["html_path"]]
            else:
                gold = (root / row["gold_text_path"]).read_bytes().decode(encoding, errors="replace")
            yield Page(name, str(row.get("id") or row["html_path"]), html, row.get("url"), gold)


def load_set(name: str, limit: int | None = None) -> Iterator[tuple[str, str | None, str | dict]]:
    """Yield (html, url, gold text or snippet dict) for one benchmark set."""
    for page in load_pages(name, limit):
        yield page.html, page.url, page.gold


def page_score(text: str, gold: str | dict) -> tuple[float, ...]:
    """Per-page figures: (F1,) against a gold text, or (tp, fn, fp) against snippets."""
    return snippet_counts(text, gold) if isinstance(gold, dict) else (shingle_f1(text, gold),)


def set_score(set_name: str, figures: list[tuple[float, ...]]) -> float:
    """Macro F1 over pages, or F1 of the summed snippet counts."""
    if set_name in SNIPPET_SETS:
        tp, fn, fp = (sum(f[k] for f in figures) for k in range(3))
        precision, recall = tp / max(1, tp + fp), tp / max(1, tp + fn)
        return 2 * precision * recall / max(1e-9, precision + recall)
    return sum(f[0] for f in figures) / max(1, len(figures))


def config_name(config: dict) -> str:
    return ",".join(f"{k}={int(v) if isinstance(v, bool) else v}" for k, v in config.items())


class Ours:
    """Our extraction as the default recipe runs it: ``extract_main_text`` then ``line_cleanup``."""

    def __init__(self, **config) -> None:
        self.extractor = ExtractMainText(**config)
        self.cleanup = LineCleanup()

    def __call__(self, page: Page) -> tuple[str, str]:
        text, _, method, _ = self.extractor.extract_one(page.html, page.url)
        return self.cleanup.clean(text)[0], method


def plain(method: str):
    extractor = ExtractMainText(method=method)
    return lambda page: (extractor.extract_one(page.html, page.url)[0], method)


@dataclass
class Measured:
    figures: list[tuple[float, ...]]
    seconds: float = 0.0  # summed CPU seconds
    fallbacks: int = 0  # pages where trafilatura ran inside ours


def measure(pages: list[Page], extractors: dict) -> dict[str, Measured]:
    """Run every extractor on each page in turn (side by side, so load on a shared machine hits all alike)."""
    out = {name: Measured([]) for name in extractors}
    for page in pages:
        for name, extract in extractors.items():
            t0 = time.process_time()
            text, method = extract(page)
            out[name].seconds += time.process_time() - t0
            out[name].fallbacks += method == "trafilatura"
            out[name].figures.append(page_score(text, page.gold))
    return out


def select(grid_figures: dict[str, dict[str, list]], pages: dict[str, list[Page]], sets, half: str | None) -> str:
    """The grid point with the best mean score over ``sets`` (restricted to one half when given)."""

    def mean_score(name: str) -> float:
        scores = []
        for s in sets:
            figures = [f for f, p in zip(grid_figures[name][s], pages[s], strict=True) if half in (None, p.half)]
            scores.append(set_score(s, figures))
        return sum(scores) / len(scores)

    return max(grid_figures, key=lambda name: (mean_score(name), name == DEFAULT_NAME))


def score_on(figures: list, pages: list[Page], set_name: str, half: str | None = None) -> float:
    return round(set_score(set_name, [f for f, p in zip(figures, pages, strict=True) if half in (None, p.half)]), 4)


def default_config() -> dict:
    """The shipped defaults of ``ExtractMainText`` on the grid's axes."""
    op = ExtractMainText()
    values = {"cut_trailing": op.cut_trailing}
    values |= {k: getattr(op.block_config, k) for k in ("teaser_lists", "sibling_share")}
    return {k: values[k] for k in GRID_AXES}


DEFAULT_NAME = config_name(default_config())


def run(set_names: list[str], limit: int | None) -> dict:
    pages = {s: list(load_pages(s, limit)) for s in set_names}
    # timed side by side: our default configuration and the plain extractors, page by page
    side_by_side = {"ours": Ours(**default_config())} | {m: plain(m) for m in PLAIN}
    timed = {s: measure(pages[s], side_by_side) for s in set_names}
    grid_figures: dict[str, dict[str, list]] = {DEFAULT_NAME: {s: timed[s]["ours"].figures for s in set_names}}
    for config in GRID:  # the other grid points: scores only
        name = config_name(config)
        if name not in grid_figures:
            ours = Ours(**config)
            grid_figures[name] = {s: measure(pages[s], {name: ours})[name].figures for s in set_names}
        print(
            f"[extraction] {name}: "
            + " ".join(f"{s}={score_on(grid_figures[name][s], pages[s], s):.4f}" for s in set_names),
            file=sys.stderr,
        )
    if DEFAULT_NAME not in grid_figures:
        raise RuntimeError(f"the default configuration {DEFAULT_NAME} is not a grid point")
    on_all = select(grid_figures, pages, set_names, None)
    on_dev = select(grid_figures, pages, set_names, "dev")
    results: dict = {"default": DEFAULT_NAME, "selected_on_all": on_all, "selected_on_dev": on_dev}
    for s in set_names:
        others = [o for o in set_names if o != s] or [s]
        loso = select(grid_figures, pages, others, None)
        ours, tr, rp = (timed[s][name] for name in ("ours", "trafilatura", "resiliparse"))
        n = len(pages[s])
        halves = {}
        for half in ("dev", "test"):
            halves[half] = {
                "pages": sum(p.half == half for p in pages[s]),
                "f1": score_on(grid_figures[on_dev][s], pages[s], s, half),
                "trafilatura_f1": score_on(tr.figures, pages[s], s, half),
                "resiliparse_f1": score_on(rp.figures, pages[s], s, half),
            }
        results[s] = {
            "pages": n,
            "f1": score_on(grid_figures[DEFAULT_NAME][s], pages[s], s),
            "trafilatura_f1": score_on(tr.figures, pages[s], s),
            "resiliparse_f1": score_on(rp.figures, pages[s], s),
            "tuned_on_all_f1": score_on(grid_figures[on_all][s], pages[s], s),
            "leave_one_set_out_f1": score_on(grid_figures[loso][s], pages[s], s),
            "leave_one_set_out_config": loso,
            **halves,
            "pages_per_s": round(n / max(ours.seconds, 1e-9), 1),
            "trafilatura_pages_per_s": round(n / max(tr.seconds, 1e-9), 1),
            "speed_ratio": round(tr.seconds / max(ours.seconds, 1e-9), 2),
            "fallback_share": round(ours.fallbacks / max(1, n), 3),
        }
    return results


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="pages per set (default: all)")
    parser.add_argument("--sets", default=",".join(SETS), help="comma-separated set names")
    args = parser.parse_args(argv)
    set_names = args.sets.split(",")
    results = run(set_names, args.limit)
    print(
        f"default {results['default']}; selected on dev halves {results['selected_on_dev']}; "
        f"on all {results['selected_on_all']}"
    )
    columns = ("f1", "trafilatura_f1", "resiliparse_f1", "tuned_on_all_f1", "leave_one_set_out_f1")
    print(
        f"{'set':<18}{'pages':>6}"
        + "".join(f"{c.removesuffix('_f1'):>19}" for c in columns)
        + f"{'test':>7}{'tr test':>8}{'pages/s':>9}{'x tr':>6}"
    )
    for name in set_names:
        r = results[name]
        print(
            f"{name:<18}{r['pages']:>6}"
            + "".join(f"{r[c]:>19.4f}" for c in columns)
            + f"{r['test']['f1']:>7.4f}{r['test']['trafilatura_f1']:>8.4f}{r['pages_per_s']:>9.1f}"
            + f"{r['speed_ratio']:>6.2f}"
        )
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
