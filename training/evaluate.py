"""``lake eval MODEL_URI --suite ppl,mc,judge``: perplexity and bits per byte on catalog slices, C-Eval/CMMLU
5-shot multiple choice by answer-letter log-likelihood, and reward-model judged win rates.

- **ppl**: every document of a slice (a table and a SQL predicate) is BOS + its tokens, scored in windows of the
  model's context (``training.perplexity``: every token after BOS predicted once). Perplexity is
  ``exp(Σ NLL / tokens)``, bits per byte ``Σ NLL / (ln 2 · UTF-8 bytes)`` and bits per character
  ``Σ NLL / (ln 2 · characters)`` of the same documents, so tokenizers of different sizes compare.
- **mc**: the C-Eval prompt (``以下是中国关于{subject}考试的单项选择题，请选出其中的正确答案。``), ``shots`` dev
  items of the same subject each ending ``答案：X``, then the question ending ``答案：``. The prediction is
  the letter whose tokens have the highest log-likelihood after the prompt: lm-evaluation-harness's
  ``cmmlu``/``ceval`` method (``acc``, not length-normalised; the continuation is split off the tokens of
  ``prompt + letter`` as its ``_encode_pair`` does, BOS first). OpenCompass's ppl mode scores whole options
  instead and is not comparable, so every score carries ``method``. The subject's prompt prefix (instruction
  and shots) runs once into a KV cache and every item of the subject continues from a copy of it, in batches:
  the shots are never recomputed. A prompt longer than the model's context is cut from the left, as
  lm-evaluation-harness does.
- **judge**: the evaluated model and a baseline answer the same prompts (greedy, their own chat templates); a
  reward model scores (prompt, answer) of both. A scalar reward model sees each answer alone, so "both orders"
  means the pair is scored as (A, B) and as (B, A) in the batch and the verdicts are averaged: the two agree
  (``order_agreement``) unless the scorer has a position bias, which a pairwise judge would have.

Results go to the model version's MLflow run (metrics, ``eval/mc_subjects.png``) and to ``eval.results`` (one row
per model, suite, subject and metric; a re-run of the same evaluation on the same snapshots adds nothing).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from catalog.store import Lakehouse
from lake.config import LakeConfig
from lake.errors import UsageError
from training import registry
from training.data import SnapshotSource, is_held_out, read_rows, resolve_source

MC_METHOD = "lm-eval-harness: log-likelihood of the answer letter after 答案： (acc)"
MC_INSTRUCTION = "以下是中国关于{subject}考试的单项选择题，请选出其中的正确答案。\n\n"
LETTERS = ("A", "B", "C", "D")
RESULTS_TABLE = "eval.results"
PPL_METHOD = "token NLL over whole documents (windows of the model context)"
JUDGE_METHOD = "reward model, both orders averaged"


@dataclass
class LoadedModel:
    """A registered language model in memory: weights, tokenizer, chat template and where it came from."""

    ref: registry.ModelRef
    model: Any
    cfg: Any
    tokenizer: Any
    folder: Path


def load_model(cfg: LakeConfig, uri: str) -> LoadedModel:
    from training.checkpoint import load_pretrained
    from training.tokenizer import load_tokenizer

    ref = registry.resolve(cfg, uri)
    if ref.tags.get(registry.TAG_KIND) != "model" or ref.tags.get(registry.TAG_STAGE) == "reward":
        raise UsageError(f"{uri} is not a language model (registered by `lake train pretrain` or `sft`)")
    folder = registry.download(cfg, ref, cfg.home / "cache" / "models")
    model, model_cfg = load_pretrained(folder, dtype=torch.float32)
    return LoadedModel(ref, model, model_cfg, load_tokenizer(folder), folder)


# ---- ppl ---------------------------------------------------------------------------------------------------------
def nll_of_texts(model, model_cfg, tokenizer, texts: Sequence[str], batch_tokens: int = 2048) -> tuple[float, int]:
    """Summed NLL (nats) and predicted-token count of whole documents (BOS + tokens, every token predicted once)."""
    from training.perplexity import document_windows, score_windows

    windows = []
    for ids in tokenizer.encode_batch(list(texts)):
        windows += [w for w in document_windows(ids, tokenizer.bos_id, model_cfg.max_seq_len, len(ids)) if len(w) > 1]
    if not windows:
        return 0.0, 0
    sums = score_windows(model, windows, batch_tokens)
    return float(sums.sum()), int(sum(len(w) - 1 for w in windows))


def ppl_figures(nll: float, tokens: int, texts: Sequence[str]) -> dict[str, float | int]:
    """Perplexity, bits per byte and bits per character with the counts behind them."""
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    chars = sum(len(t) for t in texts)
    return {
        "ppl": math.exp(nll / tokens) if tokens else float("nan"),
        "bits_per_byte": nll / (math.log(2) * n_bytes) if n_bytes else float("nan"),
        "bits_per_char": nll / (math.log(2) * chars) if chars else float("nan"),
        "nll": nll,
        "docs": len(texts),
        "tokens": tokens,
        "bytes": n_bytes,
        "chars": chars,
    }


def parse_slices(slices: Sequence[str]) -> dict[str, str | None]:
    """``NAME=SQL`` options as {name: predicate}; no option: the whole table as ``all``."""
    out: dict[str, str | None] = {}
    for item in slices:
        name, sep, predicate = item.partition("=")
        if not sep or not name.strip() or not predicate.strip():
            raise UsageError(f"--slice {item!r}: use NAME=SQL, e.g. zh=\"input_uri LIKE '%peoples_daily%'\"")
        out[name.strip()] = predicate.strip()
    return out or {"all": None}


def eval_ppl(
    cfg: LakeConfig,
    lm: LoadedModel,
    table: str,
    slices: dict[str, str | None],
    text_column: str = "text",
    held_out: float | None = None,
    limit: int | None = None,
    as_of: str | None = None,
) -> dict[str, Any]:
    """Figures per slice: the slice's documents (held out by the training split rule when ``held_out`` is a
    fraction), at most ``limit`` of them in id order."""
    lake = Lakehouse.from_config(cfg)
    out: dict[str, Any] = {}
    for name, predicate in slices.items():
        source = resolve_source(lake, table, where=predicate, as_of=as_of, text_column=text_column)
        rows = read_rows(lake, source, [text_column])
        if held_out:
            rows = [r for r in rows if is_held_out(str(r[source.id_column]), held_out)]
        texts = [r[text_column] for r in rows if r[text_column]][:limit]
        if not texts:
            raise UsageError(f"slice {name!r} of {table} has no documents to score (held out: {held_out})")
        nll, tokens = nll_of_texts(lm.model, lm.cfg, lm.tokenizer, texts)
        out[name] = ppl_figures(nll, tokens, texts) | _source_fields(source) | {"method": PPL_METHOD}
    return out


def _source_fields(source: SnapshotSource) -> dict[str, Any]:
    return {"table": source.table, "snapshot_id": source.snapshot_id, "predicate": source.predicate or ""}


# ---- mc ----------------------------------------------------------------------------------------------------------
def format_question(row: dict) -> str:
    choices = row["choices"]
    lines = [str(row["question"]).strip()] + [f"{letter}. {choices[i]}" for i, letter in enumerate(LETTERS)]
    return "\n".join(lines) + "\n答案："


def mc_prefix(subject: str, shots: Sequence[dict]) -> str:
    """The instruction and the solved shots: the part of every prompt of a subject that is the same."""
    return MC_INSTRUCTION.format(subject=subject) + "".join(f"{format_question(s)}{s['answer']}\n\n" for s in shots)


@dataclass
class McItem:
    """One question encoded: the context ids (BOS first) and each letter's continuation ids."""

    context: list[int]
    continuations: list[list[int]]
    answer: int


def encode_item(tokenizer, prompt: str, answer: str) -> McItem:
    """lm-evaluation-harness's ``_encode_pair``: the continuation is what ``prompt + letter`` adds to the prompt's
    tokens (the same split whatever the tokenizer merges at the boundary)."""
    context = tokenizer.encode(prompt, bos=True)
    conts = []
    for letter in LETTERS:
        whole = tokenizer.encode(prompt + letter, bos=True)
        conts.append(whole[len(context) :] or whole[-1:])
    return McItem(context, conts, LETTERS.index(answer))


def _letter_scores(logprobs: torch.Tensor, conts: list[list[int]]) -> list[float]:
    """Summed log-probabilities of each continuation; row ``j`` of ``logprobs`` [T, V] predicts its token ``j``."""
    return [float(logprobs[torch.arange(len(cont)), torch.tensor(cont)].sum()) for cont in conts]


def _rows_of(item: McItem, shared: int) -> list[tuple[list[int], list[int]]]:
    """The item's distinct rows after the ``shared`` prefix: (tokens, continuation indices read from it). A
    single-token letter needs no extra token, so the four letters of a usual item share one row."""
    rows: dict[tuple[int, ...], list[int]] = {}
    for c, cont in enumerate(item.continuations):
        rows.setdefault(tuple(item.context[shared:] + cont[:-1]), []).append(c)
    return [(list(tokens), cs) for tokens, cs in rows.items()]


@torch.inference_mode()
def score_with_prefix(model, prefix: list[int], items: list[McItem], batch_size: int = 16) -> list[list[float]]:
    """Letter log-likelihoods of items whose contexts all start with ``prefix``: the prefix runs once into a KV
    cache, then each batch of item rows continues from a copy of it (right-padded; causal attention keeps the pads
    invisible to real tokens)."""
    from training.model import KVCache

    p = len(prefix)
    jobs = [(i, tokens, cs) for i, item in enumerate(items) for tokens, cs in _rows_of(item, p)]
    longest = max(len(t) for _, t, _ in jobs) if jobs else 0
    capacity = p + max(longest, 1)
    cfg = model.cfg
    base = KVCache(cfg, 1, capacity, "cpu", model.lm_head.weight.dtype)
    ids = torch.tensor([prefix])
    positions = torch.arange(p)[None]
    mask = torch.ones(p, p, dtype=torch.bool).tril()[None, None]
    model.model(ids, positions, mask, base)  # fills the cache; the prefix's own outputs are never needed
    scores = [[0.0] * len(LETTERS) for _ in items]
    jobs.sort(key=lambda j: len(j[1]))
    for start in range(0, len(jobs), batch_size):
        batch = jobs[start : start + batch_size]
        width = max(len(t) for _, t, _ in batch)
        cache = KVCache(cfg, len(batch), p + width, "cpu", model.lm_head.weight.dtype)
        for layer in range(cfg.n_layers):
            cache.keys[layer][:, :, :p] = base.keys[layer][:, :, :p]
            cache.values[layer][:, :, :p] = base.values[layer][:, :, :p]
        cache.length = p
        tokens = torch.zeros((len(batch), width), dtype=torch.long)
        for row, (_, t, _) in enumerate(batch):
            tokens[row, : len(t)] = torch.tensor(t, dtype=torch.long)
        causal = torch.ones(width, width, dtype=torch.bool).tril()
        mask = torch.cat([torch.ones(width, p, dtype=torch.bool), causal], dim=1)[None, None]
        pos = (p + torch.arange(width))[None].expand(len(batch), -1)
        hidden = model.model(tokens, pos, mask, cache)
        for row, (i, t, cs) in enumerate(batch):
            # the row is context[p:] + continuation[:-1]: position n_ctx - 1 + j predicts continuation token j,
            # so the LM head runs only there (one position for a single-token letter)
            n_ctx = len(items[i].context) - p
            logprobs = torch.log_softmax(model.lm_head(hidden[row, n_ctx - 1 : len(t)]).float(), dim=-1)
            conts = [items[i].continuations[c] for c in cs]
            for c, value in zip(cs, _letter_scores(logprobs, conts), strict=True):
                scores[i][c] = value
    return scores


@torch.inference_mode()
def score_truncated(model, items: list[McItem], max_len: int, batch_size: int = 16) -> list[list[float]]:
    """Items whose prompt does not fit the context: BOS + context + continuation cut to its last ``max_len + 1``
    tokens, the last one dropped (lm-evaluation-harness's left truncation). Distinct inputs only (single-token
    letters share one), batched by length (cut inputs are all ``max_len`` long: no padding)."""
    reads: dict[tuple[int, ...], int] = {}  # input -> how many last positions are read
    plans = []
    for item in items:
        keys = [tuple((item.context + cont)[-(max_len + 1) :][:-1]) for cont in item.continuations]
        for key, cont in zip(keys, item.continuations, strict=True):
            reads[key] = max(reads.get(key, 0), len(cont))
        plans.append(keys)
    by_length: dict[int, list[tuple[int, ...]]] = defaultdict(list)
    for key in reads:
        by_length[len(key)].append(key)
    logprobs: dict[tuple[int, ...], torch.Tensor] = {}
    for group in by_length.values():
        for start in range(0, len(group), batch_size):
            chunk = group[start : start + batch_size]
            last = max(reads[k] for k in chunk)
            hidden = model.model(torch.tensor(chunk))[:, -last:]  # the LM head only where it is read
            for key, row in zip(chunk, torch.log_softmax(model.lm_head(hidden).float(), dim=-1), strict=True):
                logprobs[key] = row
    return [
        [
            _letter_scores(logprobs[key][-len(cont) :], [cont])[0]
            for key, cont in zip(keys, item.continuations, strict=True)
        ]
        for keys, item in zip(plans, items, strict=True)
    ]


def common_prefix(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the longest common leading run of token ids."""
    first = seqs[0]
    n = min(len(s) for s in seqs)
    for k in range(n):
        if any(s[k] != first[k] for s in seqs):
            return k
    return n


def score_subject(model, model_cfg, items: list[McItem], batch_size: int = 16) -> list[list[float]]:
    """Letter scores of one subject's items: the shared-prefix path for prompts that fit the context."""
    max_len = model_cfg.max_seq_len
    fits = [i for i, it in enumerate(items) if len(it.context) + max(len(c) for c in it.continuations) - 1 <= max_len]
    long = sorted(set(range(len(items))) - set(fits))
    scores: list[list[float]] = [[]] * len(items)
    if fits:
        # the shared prefix stops one token short of the shortest context: every row has a token to run
        shared = min(common_prefix([items[i].context for i in fits]), min(len(items[i].context) for i in fits) - 1)
        prefix = items[fits[0]].context[: max(shared, 1)]
        for i, s in zip(fits, score_with_prefix(model, prefix, [items[i] for i in fits], batch_size), strict=True):
            scores[i] = s
    for i, s in zip(long, score_truncated(model, [items[i] for i in long], max_len, batch_size), strict=True):
        scores[i] = s
    return scores


def file_order(row: dict) -> tuple:
    """Subject, then the order of the imported files and rows (CSV record keys are row numbers)."""
    key = str(row["record_key"])
    return row["subject"], row["input_uri"] or "", int(key) if key.isdigit() else 0, key


def mc_rows(
    cfg: LakeConfig,
    table: str,
    split: str | None,
    shots_split: str,
    subjects: Sequence[str] | None,
    limit: int | None,
    as_of: str | None = None,
) -> tuple[dict[str, list[dict]], dict[str, list[dict]], SnapshotSource]:
    """(items by subject, shots by subject, the pinned source) of an ``mc`` table."""
    lake = Lakehouse.from_config(cfg)
    source = resolve_source(lake, table, as_of=as_of, text_column="question")
    rows = read_rows(lake, source, ["subject", "split", "question", "choices", "answer", "input_uri", "record_key"])
    wanted = set(subjects or [])
    items: dict[str, list[dict]] = defaultdict(list)
    shots: dict[str, list[dict]] = defaultdict(list)
    for row in sorted(rows, key=file_order):
        if wanted and row["subject"] not in wanted:
            continue
        if row["split"] == shots_split:
            shots[row["subject"]].append(row)
        elif split is None or row["split"] == split:
            items[row["subject"]].append(row)
    missing = sorted(wanted - set(items))
    if missing:
        raise UsageError(f"{table} has no {split or 'non-' + shots_split} items for subjects: {', '.join(missing)}")
    if not items:
        raise UsageError(f"{table} has no items of split {split or '(any but ' + shots_split + ')'}")
    return {s: v[:limit] for s, v in sorted(items.items())}, shots, source


def eval_mc(
    cfg: LakeConfig,
    lm: LoadedModel,
    table: str,
    split: str | None = "test",
    shots_split: str = "dev",
    n_shots: int = 5,
    subjects: Sequence[str] | None = None,
    limit: int | None = None,
    batch_size: int = 16,
    as_of: str | None = None,
) -> dict[str, Any]:
    """Per-subject and overall accuracy (micro average over items), with the per-item predictions."""
    items, shots, source = mc_rows(cfg, table, split, shots_split, subjects, limit, as_of)
    return score_mc(lm.model, lm.cfg, lm.tokenizer, items, shots, n_shots, batch_size) | _source_fields(source)


def score_mc(model, model_cfg, tokenizer, items: dict[str, list[dict]], shots: dict[str, list[dict]],
             n_shots: int = 5, batch_size: int = 16) -> dict[str, Any]:  # fmt: skip
    """The mc figures of rows (``question``, ``choices``, ``answer``) by subject, with shots by subject in file
    order (the first ``n_shots`` are used: lm-eval's ``first_n`` sampler)."""
    per_subject, predictions = {}, {}
    correct_total = n_total = 0
    for subject, rows in items.items():
        subject_shots = shots.get(subject, [])[:n_shots]
        prefix = mc_prefix(subject, subject_shots)
        encoded = [encode_item(tokenizer, prefix + format_question(r), r["answer"]) for r in rows]
        scores = score_subject(model, model_cfg, encoded, batch_size)
        predicted = [int(np.argmax(s)) for s in scores]
        correct = sum(p == e.answer for p, e in zip(predicted, encoded, strict=True))
        per_subject[subject] = {"n": len(rows), "accuracy": correct / len(rows), "shots": len(subject_shots)}
        predictions[subject] = [LETTERS[p] for p in predicted]
        correct_total += correct
        n_total += len(rows)
    return {
        "n": n_total,
        "accuracy": correct_total / n_total if n_total else float("nan"),
        "method": MC_METHOD,
        "shots": n_shots,
        "subjects": per_subject,
        "predictions": predictions,
    }


# ---- judge -------------------------------------------------------------------------------------------------------
def chat_template_of(ref: registry.ModelRef, tokenizer):
    """The chat template a version was trained with (its tag; the default for a pretrained base)."""
    from training.chat import ChatTemplate, TemplateConfig
    from training.config import from_dict
    from training.posttrain import TAG_TEMPLATE

    return ChatTemplate(from_dict(TemplateConfig, json.loads(ref.tags.get(TAG_TEMPLATE) or "{}")), tokenizer)


def answer_prompts(lm: LoadedModel, prompts: list[list[dict]], categories: list[str | None],
                   max_new_tokens: int, batch_size: int = 8) -> list[str]:  # fmt: skip
    """Greedy answers of ``lm`` to each prompt conversation, rendered with the model's own chat template (prompts
    cut from the left to leave room for the answer)."""
    from training.generation import SamplingConfig, sample

    template = chat_template_of(lm.ref, lm.tokenizer)
    room = lm.cfg.max_seq_len - max_new_tokens
    if room < 8:
        raise UsageError(f"--max-new-tokens {max_new_tokens} leaves no room in {lm.ref.uri}'s context")
    encoded = [template.prompt(p, c)[-room:] for p, c in zip(prompts, categories, strict=True)]
    sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0)
    answers = [""] * len(encoded)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))  # similar lengths: little padding
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        out = sample(lm.model, [encoded[i] for i in chunk], sampling, lm.tokenizer.eos_id, lm.tokenizer.pad_id)
        for i, ids in zip(chunk, out.completion_lists(), strict=True):
            answers[i] = lm.tokenizer.decode([t for t in ids if t != lm.tokenizer.eos_id])
    return answers


def verdicts(rewards_a: Sequence[float], rewards_b: Sequence[float], tie_margin: float) -> list[str]:
    """win / tie / loss of A against B per prompt."""
    out = []
    for a, b in zip(rewards_a, rewards_b, strict=True):
        out.append("tie" if abs(a - b) <= tie_margin else "win" if a > b else "loss")
    return out


def tally(orders: list[list[str]]) -> dict[str, float]:
    """win/tie/loss shares averaged over the orders, and the share of prompts on which the orders agree."""
    n = len(orders[0])
    shares = {k: float(np.mean([sum(v == k for v in o) / n for o in orders])) for k in ("win", "tie", "loss")}
    agree = sum(len({o[i] for o in orders}) == 1 for i in range(n)) / n
    return {"n": n, **{f"{k}_rate": v for k, v in shares.items()}, "order_agreement": agree}


def eval_judge(
    cfg: LakeConfig,
    lm: LoadedModel,
    baseline_uri: str,
    reward_uri: str,
    table: str,
    where: str | None = None,
    limit: int | None = 32,
    max_new_tokens: int = 48,
    tie_margin: float = 0.0,
    as_of: str | None = None,
) -> dict[str, Any]:
    """Both models answer the conversation of each example (its reference answer dropped; the first ``limit`` in
    id order, a hash order); the reward model scores both answers, the pair in both orders; win/tie/loss of the
    evaluated model (a tie: rewards within ``tie_margin``) overall and per class."""
    from training.checkpoint import load_reward_model
    from training.posttrain import score_pairs
    from training.tokenizer import load_tokenizer

    lake = Lakehouse.from_config(cfg)
    source = resolve_source(lake, table, where=where, as_of=as_of, text_column="messages")
    rows = read_rows(lake, source, ["messages", "category"] if "category" in source.schema.names else ["messages"])
    prompts, categories = [], []
    for row in rows:
        messages = list(row["messages"] or [])
        while messages and messages[-1]["role"] == "assistant":
            messages.pop()
        if messages:
            prompts.append(messages)
            categories.append(row.get("category"))
    prompts, categories = prompts[:limit], categories[:limit]
    if not prompts:
        raise UsageError(f"{table} has no prompt to answer (where {where!r})")
    baseline = load_model(cfg, baseline_uri)
    rm_ref = registry.resolve(cfg, reward_uri)
    if rm_ref.tags.get(registry.TAG_STAGE) != "reward":
        raise UsageError(f"{reward_uri} is not a reward model (registered by `lake train reward`)")
    rm_folder = registry.download(cfg, rm_ref, cfg.home / "cache" / "models")
    rm, rm_cfg = load_reward_model(rm_folder)
    answers_a = answer_prompts(lm, prompts, categories, max_new_tokens)
    answers_b = answer_prompts(baseline, prompts, categories, max_new_tokens)
    rm_template = chat_template_of(rm_ref, load_tokenizer(rm_folder))
    encode = [
        (
            _encode_answer(rm_template, p, c, a, rm_cfg.max_seq_len),
            _encode_answer(rm_template, p, c, b, rm_cfg.max_seq_len),
        )
        for p, c, a, b in zip(prompts, categories, answers_a, answers_b, strict=True)
    ]
    ab = score_pairs(rm, [(x, y) for x, y in encode], rm.pad_id)
    ba = score_pairs(rm, [(y, x) for x, y in encode], rm.pad_id)
    orders = [verdicts(ab[0], ab[1], tie_margin), verdicts(ba[1], ba[0], tie_margin)]
    per_class: dict[str, list[int]] = defaultdict(list)
    for i, c in enumerate(categories):
        per_class[c or "(none)"].append(i)
    classes = {c: tally([[o[i] for i in idx] for o in orders]) for c, idx in sorted(per_class.items())}
    figures = {
        "method": JUDGE_METHOD,
        "baseline": baseline.ref.uri,
        "reward_model": rm_ref.uri,
        "tie_margin": tie_margin,
        "mean_reward": float(np.mean(ab[0])),
        "baseline_mean_reward": float(np.mean(ab[1])),
        "classes": classes,
        "examples": [
            {"prompt": p[-1]["content"][:200], "answer": a[:200], "baseline": b[:200]}
            for p, a, b in list(zip(prompts, answers_a, answers_b, strict=True))[:3]
        ],
    }
    return tally(orders) | figures | _source_fields(source)


def _encode_answer(template, prompt: list[dict], category: str | None, answer: str, max_len: int) -> list[int]:
    """The conversation with ``answer`` as the final assistant turn (EOS-terminated, as the reward model was
    trained; an empty answer is just the EOS), cut from the left to the reward model's context."""
    ids = template.prompt(prompt, category) + template.content(answer) + [template.tok.eos_id]
    return ids[-max_len:]


# ---- results -----------------------------------------------------------------------------------------------------
@dataclass
class ResultRow:
    suite: str
    subject: str
    metric: str
    value: float
    n: int
    method: str
    table: str
    snapshot_id: int | None
    predicate: str = ""
    options: str = "{}"  # JSON of the settings that change the figure (shots, limit, ...)


def result_rows(report: dict[str, Any]) -> list[ResultRow]:
    """One row per (suite, subject, metric) of a report; ``subject`` is ``*`` for a suite's overall figure. A ppl
    row's ``n`` is the count its figure divides by (tokens, bytes or characters)."""
    rows: list[ResultRow] = []
    for name, fig in report.get("ppl", {}).items():
        data = (fig["table"], fig["snapshot_id"], fig["predicate"], _options(fig))
        for metric, count in (("ppl", "tokens"), ("bits_per_byte", "bytes"), ("bits_per_char", "chars")):
            rows.append(ResultRow("ppl", name, metric, fig[metric], fig[count], fig["method"], *data))
    if mc := report.get("mc"):
        data = (mc["table"], mc["snapshot_id"], mc["predicate"], _options(mc))
        rows.append(ResultRow("mc", "*", "accuracy", mc["accuracy"], mc["n"], mc["method"], *data))
        for subject, fig in mc["subjects"].items():
            rows.append(ResultRow("mc", subject, "accuracy", fig["accuracy"], fig["n"], mc["method"], *data))
    if judge := report.get("judge"):
        method = f"{judge['method']}; vs {judge['baseline']} judged by {judge['reward_model']}"
        data = (judge["table"], judge["snapshot_id"], judge["predicate"], _options(judge))
        for subject, fig in [("*", judge), *judge["classes"].items()]:
            for metric in ("win_rate", "tie_rate", "loss_rate"):
                rows.append(ResultRow("judge", subject, metric, fig[metric], fig["n"], method, *data))
    return rows


def _options(figures: dict[str, Any]) -> str:
    return json.dumps(figures.get("options") or {}, sort_keys=True)


def write_results(cfg: LakeConfig, ref: registry.ModelRef, rows: list[ResultRow]) -> int:
    """Append to ``eval.results``; a row's key is (model version, suite, data snapshot and predicate, method,
    options) + (subject, metric), so the same evaluation run twice adds nothing. Returns the rows written."""
    lake = Lakehouse.from_config(cfg)
    lake.ensure_table(RESULTS_TABLE, "eval_results")
    now = datetime.now(UTC)
    records = []
    for r in rows:
        identity = json.dumps([ref.uri, r.suite, r.table, r.snapshot_id, r.predicate, r.method, r.options])
        records.append({
            "model": ref.name, "version": ref.version, "suite": r.suite, "subject": r.subject, "metric": r.metric,
            "value": float(r.value), "n": int(r.n), "method": r.method, "data_table": r.table,
            "data_snapshot_id": r.snapshot_id, "data_predicate": r.predicate, "options": r.options,
            "input_uri": f"iceberg://lake/{r.table}?snapshot_id={r.snapshot_id}",
            "input_digest": hashlib.sha256(identity.encode()).hexdigest(),
            "record_key": f"{r.suite}/{r.subject}/{r.metric}", "ingested_at": now, "run_id": ref.run_id,
        })  # fmt: skip
    from catalog.schemas import schema_for

    written = lake.append(RESULTS_TABLE, pa.Table.from_pylist(records, schema=schema_for("eval_results")))
    return written.written


def metric_key(r: ResultRow) -> str:
    subject = "" if r.subject == "*" else f"/{r.subject}"
    safe = "".join(ch if ch.isalnum() or ch in "_-./ " else "_" for ch in f"eval/{r.suite}{subject}/{r.metric}")
    return safe


def log_to_mlflow(cfg: LakeConfig, ref: registry.ModelRef, rows: list[ResultRow], report: dict[str, Any]) -> None:
    """Metrics on the model version's run, and the per-subject accuracy chart."""
    if not ref.run_id:
        return
    client = registry.client(cfg)
    for r in rows:
        client.log_metric(ref.run_id, metric_key(r), float(r.value))
    if "mc" in report:
        client.log_figure(ref.run_id, subject_figure(report["mc"], ref.uri), "eval/mc_subjects.png")


def subject_figure(mc: dict[str, Any], title: str):
    from matplotlib.figure import Figure

    subjects = list(mc["subjects"])
    fig = Figure(figsize=(7, 1.5 + 0.28 * len(subjects)), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    ax.barh(subjects, [mc["subjects"][s]["accuracy"] for s in subjects], color="#4472c4")
    ax.axvline(0.25, color="#c00000", linestyle="--", label="chance")
    ax.axvline(mc["accuracy"], color="#333333", linestyle=":", label=f"overall {mc['accuracy']:.3f}")
    ax.set_xlim(0, 1)
    ax.set_xlabel("accuracy (answer-letter log-likelihood, 5-shot)")
    ax.set_title(f"{title}: {mc['n']} items")
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def held_out_fraction(cfg: LakeConfig, ref: registry.ModelRef) -> float:
    """The model's training split share (``data.val_fraction`` of its run): the rows it never trained on."""
    run = registry.client(cfg).get_run(ref.run_id) if ref.run_id else None
    value = (run.data.params if run else {}).get("data.val_fraction")
    if value is None:
        raise UsageError(f"{ref.uri}'s run records no data.val_fraction; drop --held-out or pick the slices")
    return float(value)
