"""``lake train bon CONFIG.yaml``: best-of-N rejection sampling in rounds (Llama 2 §3.2.3), kept in the catalog.

Each round samples ``n`` answers per prompt from the current policy, scores them with a registered reward model
and keeps each prompt's best answer, or the best kept in an earlier round when that scored higher (so the kept
set only improves: Llama 2 keeps the best samples of all rounds). The kept samples are one append to a catalog
table (``example_id`` = the prompt's id, ``prompt``, ``messages`` = prompt + answer, ``answer``, ``score``,
``round``, ``sampled_round``, ``policy``, ``reward_model``, ``run_key``), then the policy is fine-tuned on them
with the SFT stage (registered as ``NAME`` version per round, with the reward model and the round as tags), and
the next round samples from it.

A re-run finds each round's rows (by run key and round) and each round's finished SFT run, so it samples and
registers nothing again; an interrupted run continues with the first unfinished round. Sampling runs on the
driver (tiny policies); the fine-tuning runs on Ray Train.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

import pyarrow as pa
import torch

from catalog.rewrite import ensure_side_table
from catalog.runs import record_run
from catalog.schemas import MESSAGE
from catalog.store import Lakehouse
from lake.config import LakeConfig
from lake.errors import UsageError
from training import registry
from training.config import BestOfNConfig, ChatDataConfig, SFTConfig
from training.data import resolve_source, row_hash

KIND = "best_of_n"
SCHEMA = pa.schema([
    pa.field("example_id", pa.string()),  # the prompt's id (one kept answer per prompt and round)
    pa.field("prompt", pa.list_(MESSAGE)),  # the conversation the answer continues
    pa.field("messages", pa.list_(MESSAGE)),  # the prompt then the kept answer: what SFT reads
    pa.field("answer", pa.string()),
    pa.field("score", pa.float64()),
    pa.field("round", pa.int32()),  # the round this row is the kept set of
    pa.field("sampled_round", pa.int32()),  # the round the answer was sampled in (<= round)
    pa.field("policy", pa.string()),  # models:/NAME/V that sampled the answer
    pa.field("reward_model", pa.string()),
    pa.field("run_key", pa.string()),
])  # fmt: skip
TAG_ROUND = "lake.bon.round"


@dataclass
class BestOfNResult:
    name: str
    rounds: list[dict]  # per round: the policy sampled, the mean score of all its samples, of each prompt's best
    # of n and of the kept set (best of all rounds), and the model fine-tuned on the kept set
    table: str
    seconds: float

    def summary(self) -> str:
        kept = " -> ".join(f"{r['kept_mean_score']:.3f}" for r in self.rounds)
        return (
            f"best-of-N: {len(self.rounds)} rounds into {self.table}; mean reward of the kept samples {kept}; "
            f"registered {', '.join(r['model_uri'] for r in self.rounds)} in {self.seconds:.1f}s"
        )


def run_best_of_n(cfg: LakeConfig, job: BestOfNConfig, progress: bool = True) -> BestOfNResult:
    from training.chat import ChatTemplate
    from training.checkpoint import load_reward_model
    from training.posttrain import load_base, run_stage, template_of
    from training.rl import encode_prompts
    from training.tokenizer import load_tokenizer

    started = time.time()
    lake = Lakehouse.from_config(cfg)
    base_ref, base_dir = load_base(cfg, job.base)
    template_cfg = template_of(base_ref)
    template = ChatTemplate(template_cfg, load_tokenizer(base_dir))
    rm_ref = registry.resolve(cfg, job.reward_model)
    if rm_ref.tags.get(registry.TAG_STAGE) != "reward":
        raise UsageError(f"{job.reward_model} is not a reward model (registered by `lake train reward`)")
    reward_model, _ = load_reward_model(registry.download(cfg, rm_ref, cfg.home / "cache" / "models"))
    d = job.data
    source = resolve_source(lake, d.table, where=d.where, as_of=d.as_of, text_column="messages",
                            id_column=d.id_column)  # fmt: skip
    prompts, _ = encode_prompts(lake, source, template, job.seq_len - job.sampling.max_new_tokens)
    prompts = sorted(prompts, key=lambda it: row_hash(it["id"], "bon"))[: job.max_prompts]
    if not prompts:
        raise UsageError(f"{d.table}: no prompt fits seq_len {job.seq_len} with max_new_tokens to spare")
    messages = prompt_conversations(lake, source, {p["id"] for p in prompts})
    run_key = f"{job.name}-{job.digest()}-{registry.short_digest(f'{source.snapshot_id}{base_ref.uri}{rm_ref.uri}')}"
    table = ensure_side_table(lake, job.table, SCHEMA, KIND, {})
    missing = [f for f in SCHEMA if f.name not in table.schema().column_names]
    if missing:  # a table written by an older version: evolve it
        lake.add_columns(job.table, missing)
    policy, rounds, kept = base_ref.uri, [], {}
    for round_no in range(1, job.rounds + 1):
        rows = round_rows(lake, job.table, run_key, round_no)
        round_tag = f"{run_key}-round-{round_no}"  # pins the round's SFT data, so a re-run finds the same run
        policy_mean = best_mean = None
        if rows is None:
            samples = sample_and_score(cfg, job, policy, template, reward_model, prompts, round_no)
            policy_mean = sum(s["mean_of_n"] for s in samples) / len(samples)
            best_mean = sum(s["score"] for s in samples) / len(samples)
            for sample in samples:
                if sample["id"] not in kept or sample["score"] > kept[sample["id"]]["score"]:
                    kept[sample["id"]] = sample
            rows = [kept[p["id"]] | {"round": round_no} for p in prompts]
            lake.tag(job.table, round_tag, write_round(lake, job.table, rows, messages, rm_ref.uri, run_key, round_no))
        elif round_tag not in lake.tags(job.table):  # interrupted between the append and the tag
            lake.tag(job.table, round_tag)
        kept = {r["id"]: r for r in rows}
        sft = SFTConfig(name=job.name, base=policy, template=template_cfg, seq_len=job.seq_len,
                        data=ChatDataConfig(table=job.table, where=f"run_key = '{run_key}' AND round = {round_no}",
                                            as_of=round_tag, val_fraction=job.val_fraction),
                        optim=job.optim, scaling=job.scaling).validate()  # fmt: skip
        result = run_stage(cfg, sft, "sft", progress,
                           tags={registry.TAG_REWARD_MODEL: rm_ref.uri, TAG_ROUND: str(round_no)})  # fmt: skip
        rounds.append({"round": round_no, "policy": policy, "policy_mean_score": policy_mean,
                       "best_of_n_mean_score": best_mean,
                       "kept_mean_score": sum(r["score"] for r in rows) / len(rows), "model_uri": result.model_uri,
                       "sft_held_out_loss": result.after.get("val/loss")})  # fmt: skip
        policy = result.model_uri
    return BestOfNResult(job.name, rounds, job.table, time.time() - started)


def prompt_conversations(lake: Lakehouse, source, ids: set[str]) -> dict[str, list[dict]]:
    from training.data import read_rows
    from training.rl import prompt_messages

    return {str(r[source.id_column]): prompt_messages(r["messages"]) for r in read_rows(lake, source, ["messages"])
            if str(r[source.id_column]) in ids}  # fmt: skip


def round_rows(lake: Lakehouse, table: str, run_key: str, round_no: int) -> list[dict] | None:
    """The kept rows of a finished round of this run (``None``: not written yet)."""
    import polars as pl

    snapshot = lake.resolve_snapshot(table, None)
    if snapshot is None:
        return None
    frame = pl.scan_iceberg(lake.table(table), snapshot_id=snapshot)
    rows = frame.filter((pl.col("run_key") == run_key) & (pl.col("round") == round_no)).collect()
    if rows.height == 0:
        return None
    return [{"id": r["example_id"], "answer": r["answer"], "score": r["score"], "sampled_round": r["sampled_round"],
             "policy": r["policy"], "round": round_no} for r in rows.to_dicts()]  # fmt: skip


@torch.no_grad()
def sample_and_score(cfg, job: BestOfNConfig, policy_uri: str, template, reward_model, prompts, round_no: int):
    """Each prompt's best of ``n`` sampled answers under the reward model: ``{"id", "answer", "score", …}``."""
    from training.checkpoint import load_pretrained
    from training.generation import sample
    from training.posttrain import load_base
    from training.rl import reward_scores

    _, folder = load_base(cfg, policy_uri)
    policy, _ = load_pretrained(folder, dtype=torch.float32)
    tok = template.tok
    generator = torch.Generator().manual_seed(job.optim.seed * 7919 + round_no)
    best = []
    for start in range(0, len(prompts), 8):
        chunk = prompts[start : start + 8]
        ids = [p["prompt"] for p in chunk for _ in range(job.n)]
        generated = sample(policy, ids, job.sampling, tok.eos_id, tok.pad_id, generator)
        scores = reward_scores(reward_model, ids, generated).view(len(chunk), job.n)
        completions = generated.completion_lists()
        for i, item in enumerate(chunk):
            j = int(scores[i].argmax())
            answer = completions[i * job.n + j]
            text = tok.decode([t for t in answer if t != tok.eos_id])
            best.append({"id": item["id"], "answer": text, "score": float(scores[i, j]), "sampled_round": round_no,
                         "policy": policy_uri, "mean_of_n": float(scores[i].mean())})  # fmt: skip
    return best


def write_round(
    lake: Lakehouse, table: str, rows: list[dict], messages: dict, rm_uri: str, run_key: str, round_no: int
) -> int:
    """One append: the round's kept set, each answer as the assistant turn after its prompt. Returns its snapshot."""
    data = {
        "example_id": [r["id"] for r in rows],
        "prompt": [messages[r["id"]] for r in rows],
        "messages": [messages[r["id"]] + [{"role": "assistant", "content": r["answer"]}] for r in rows],
        "answer": [r["answer"] for r in rows],
        "score": [r["score"] for r in rows],
        "round": [round_no] * len(rows),
        "sampled_round": [r["sampled_round"] for r in rows],
        "policy": [r["policy"] for r in rows],
        "reward_model": [rm_uri] * len(rows),
        "run_key": [run_key] * len(rows),
    }
    iceberg = lake.table(table)
    target = iceberg.schema().as_arrow()  # column order of the table (an evolved one lists new columns last)
    rows_table = pa.Table.from_pydict(data, schema=SCHEMA).select(target.names).cast(target)
    started = datetime.now(UTC)
    iceberg.append(rows_table, snapshot_properties={"lake.run_key": run_key, TAG_ROUND: str(round_no)})
    snapshot = lake.resolve_snapshot(table, None)
    record_run(lake, command=f"train bon: round {round_no}", target_table=table, run_id=f"{run_key}-r{round_no}",
               started_at=started, inputs=[], counts={"prompts": len(rows), "reward_model": rm_uri},
               snapshot_id=snapshot)  # fmt: skip
    return snapshot
