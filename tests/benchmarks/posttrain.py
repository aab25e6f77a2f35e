"""Post-training step throughput: our SFT, reward-model and DPO steps against TRL's SFTTrainer, RewardTrainer and
DPOTrainer, and our KV-cache sampler against transformers' ``generate``.

Run: ``python tests/benchmarks/posttrain.py [--steps N] [--batch 8] [--seq-len 256] [--rounds 2]
[--stages sft,reward,dpo,generation]``; the last line printed is one JSON object.

DPO: both sides use precomputed reference log-probs (TRL's ``precompute_ref_log_probs``; ours are catalog
attributes), so a step is one policy forward and backward over chosen + rejected rows. Generation: greedy, the same
left-padded chat prompts, ``--new-tokens`` new tokens each (no EOS stop, so both sides produce the same count), on
the exported checkpoint; ``generation_greedy_identical`` says whether the token ids are equal.

PPO and GRPO (``--stages ppo,grpo``): our loops in process on the same tiny model (a fresh reward model as the
critic's start and the judge), 8 prompts per rollout (GRPO: 4 samples each), ``--new-tokens`` sampled at
temperature 1; reported: rollout tokens/s and the shares of wall time in generation, scoring and training. TRL
removed its PPO trainer, so these have no peer line; the sampler's own ratio against ``generate`` is above.

Side by side in one process, same tiny model (our ``tiny`` preset, exported in the HF Llama layout and loaded by
transformers for TRL), same tokenizer, same examples (real Alpaca-en chat examples and HH-RLHF helpful-base pairs,
encoded once with our chat template; TRL gets them pre-tokenised with ``assistant_masks`` / ``chosen_ids`` and
``rejected_ids``), same optimizer (AdamW, same lr), same torch threads. Each side trains one pass over the same
``steps × batch`` examples (TRL's sampler shuffles them, so only the batch composition may differ). TRL runs at its
best CPU settings: fp32, no gradient checkpointing, no logging/saving during the run, ``dataloader_num_workers=0``
(padding-free packing needs flash-attention, unavailable on CPU). Tokens/s counts non-pad tokens over the training
time (TRL's ``train_runtime``, our loop's wall time); the best of ``--rounds`` alternating rounds is reported per
side (a shared machine is noisy).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "tests")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pipelines.imports import convert_preference, convert_sft  # noqa: E402
from training.chat import ChatTemplate, TemplateConfig, pad_pairs, pad_rows  # noqa: E402
from training.checkpoint import save_pretrained  # noqa: E402
from training.config import OptimConfig  # noqa: E402
from training.dpo import dpo_batch_loss, encode_preference, pair_batch, reference_logps  # noqa: E402
from training.generation import SamplingConfig, left_pad, sample  # noqa: E402
from training.loop import Trainer  # noqa: E402
from training.model import LlamaModel, ModelConfig, RewardModel  # noqa: E402
from training.optim import build_optimizer  # noqa: E402
from training.posttrain import PairBatch, reward_loss_fn, sft_loss_fn  # noqa: E402
from training.tokenizer import load_tokenizer, train_tokenizer  # noqa: E402


def examples_and_pairs(data: Path, template: ChatTemplate, seq_len: int, n: int):
    sft = []
    for value in json.loads((data / "sft" / "alpaca_en_demo.json").read_text(encoding="utf-8")):
        rows = convert_sft(value, {})
        if isinstance(rows, list) and not isinstance(e := template.encode(rows[0]["messages"], max_len=seq_len), str):
            sft.append(e)
    pairs = []
    with gzip.open(data / "preference" / "hh_rlhf_helpful_base_test.jsonl.gz", "rt") as lines:
        for line in lines:
            rows = convert_preference(json.loads(line), {})
            if isinstance(rows, list):
                r = rows[0]
                if not isinstance(p := template.encode_pair(r["prompt"], r["chosen"], r["rejected"], seq_len), str):
                    pairs.append(p[:2])
    return sft[:n], pairs[:n]


def optim_cfg(steps: int, lr: float) -> OptimConfig:
    return OptimConfig(max_steps=steps, lr=lr, warmup_steps=0, schedule="constant", weight_decay=0.0,
                       eval_every=10**9, checkpoint_every=10**9, log_every=10**9)  # fmt: skip


def ours_sft(cfg, examples, batch: int, lr: float, pad_id: int) -> float:
    model = LlamaModel(cfg, seed=0)
    batches = [pad_rows(examples[i : i + batch], pad_id) for i in range(0, len(examples), batch)]
    o = optim_cfg(len(batches), lr)
    started = time.perf_counter()
    Trainer(model, build_optimizer(model, o, "cpu"), o, torch.device("cpu"), sft_loss_fn).run(iter(batches))
    return sum(b.n_tokens for b in batches) / (time.perf_counter() - started)


def ours_reward(cfg, pairs, batch: int, lr: float, pad_id: int) -> float:
    model = RewardModel(cfg, pad_id=pad_id, seed=0)
    batches = [PairBatch(pad_pairs(pairs[i : i + batch], pad_id), 0.0, sum(len(c) + len(r) for c, r in
               pairs[i : i + batch])) for i in range(0, len(pairs), batch)]  # fmt: skip
    o = optim_cfg(len(batches), lr)
    started = time.perf_counter()
    Trainer(model, build_optimizer(model, o, "cpu"), o, torch.device("cpu"), reward_loss_fn).run(iter(batches))
    return sum(b.n_tokens for b in batches) / (time.perf_counter() - started)


def trl_args(cls, out: Path, batch: int, steps: int, lr: float):
    return cls(output_dir=str(out), report_to="none", use_cpu=True, per_device_train_batch_size=batch,
               max_steps=steps, learning_rate=lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
               logging_steps=10**6, save_strategy="no", dataloader_num_workers=0, max_length=None,
               gradient_checkpointing=False, bf16=False, disable_tqdm=True)  # fmt: skip


def trl_sft(ckpt: Path, examples, batch: int, lr: float, out: Path) -> float:
    from datasets import Dataset
    from transformers import AutoTokenizer, LlamaForCausalLM
    from trl import SFTConfig, SFTTrainer

    dataset = Dataset.from_list([{"input_ids": e.ids, "assistant_masks": e.mask} for e in examples])
    steps = len(examples) // batch
    trainer = SFTTrainer(model=LlamaForCausalLM.from_pretrained(ckpt), args=trl_args(SFTConfig, out, batch, steps, lr),
                         train_dataset=dataset, processing_class=AutoTokenizer.from_pretrained(ckpt))  # fmt: skip
    runtime = trainer.train().metrics["train_runtime"]
    return sum(len(e) for e in examples) / runtime


def trl_reward(ckpt: Path, pairs, batch: int, lr: float, out: Path) -> float:
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    dataset = Dataset.from_list([{"chosen_ids": c, "rejected_ids": r} for c, r in pairs])
    steps = len(pairs) // batch
    trainer = RewardTrainer(model=AutoModelForSequenceClassification.from_pretrained(ckpt),
                            args=trl_args(RewardConfig, out, batch, steps, lr), train_dataset=dataset,
                            processing_class=AutoTokenizer.from_pretrained(ckpt))  # fmt: skip
    runtime = trainer.train().metrics["train_runtime"]
    return sum(len(c) + len(r) for c, r in pairs) / runtime


def preference_pairs(data: Path, template: ChatTemplate, seq_len: int, n: int) -> list[dict]:
    pairs = []
    with gzip.open(data / "preference" / "hh_rlhf_helpful_base_test.jsonl.gz", "rt") as lines:
        for line in lines:
            rows = convert_preference(json.loads(line), {})
            if isinstance(rows, list):
                r = rows[0]
                if not isinstance(p := encode_preference(template, r["prompt"], r["chosen"], r["rejected"], seq_len),
                                  str):  # fmt: skip
                    pairs.append(p)
            if len(pairs) == n:
                break
    return pairs


def ours_dpo(cfg, pairs, refs, batch: int, lr: float, pad_id: int) -> float:
    model = LlamaModel(cfg, seed=0)
    batches = [pair_batch(pairs[i : i + batch], pad_id, refs[i : i + batch]) for i in range(0, len(pairs), batch)]
    o = optim_cfg(len(batches), lr)

    def loss_fn(m, b):
        return dpo_batch_loss(m, b, 0.1, "sigmoid")[0], b.n_tokens

    started = time.perf_counter()
    Trainer(model, build_optimizer(model, o, "cpu"), o, torch.device("cpu"), loss_fn).run(iter(batches))
    return sum(b.n_tokens for b in batches) / (time.perf_counter() - started)


def trl_dpo(ckpt: Path, pairs, refs, batch: int, lr: float, out: Path) -> float:
    from datasets import Dataset
    from transformers import AutoTokenizer, LlamaForCausalLM
    from trl import DPOConfig, DPOTrainer

    steps = len(pairs) // batch
    args = trl_args(DPOConfig, out, batch, steps, lr)
    args.beta, args.precompute_ref_log_probs, args.remove_unused_columns = 0.1, True, False
    trainer = DPOTrainer(model=LlamaForCausalLM.from_pretrained(ckpt), args=args,
                         train_dataset=Dataset.from_list([{"prompt": "a", "chosen": "b", "rejected": "c"}]),
                         processing_class=AutoTokenizer.from_pretrained(ckpt))  # fmt: skip
    trainer.train_dataset = Dataset.from_list([
        {"prompt_ids": p["prompt"], "chosen_ids": p["chosen"], "rejected_ids": p["rejected"],
         "ref_chosen_logps": r[0], "ref_rejected_logps": r[1]} for p, r in zip(pairs, refs, strict=True)
    ])  # fmt: skip
    runtime = trainer.train().metrics["train_runtime"]
    return sum(2 * len(p["prompt"]) + len(p["chosen"]) + len(p["rejected"]) for p in pairs) / runtime


def generation_rates(ckpt: Path, cfg, prompts: list[list[int]], new_tokens: int, pad_id: int):
    """(ours tokens/s, transformers tokens/s, identical greedy outputs)."""
    from transformers import LlamaForCausalLM

    from training.checkpoint import load_pretrained

    ours, _ = load_pretrained(ckpt)
    started = time.perf_counter()
    mine = sample(ours, prompts, SamplingConfig(max_new_tokens=new_tokens, temperature=0), None, pad_id).sequences
    ours_rate = len(prompts) * new_tokens / (time.perf_counter() - started)
    hf = LlamaForCausalLM.from_pretrained(ckpt).eval()
    ids, keep = left_pad(prompts, pad_id)
    started = time.perf_counter()
    with torch.no_grad():
        theirs = hf.generate(ids, attention_mask=keep.long(), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                             do_sample=False, pad_token_id=pad_id)  # fmt: skip
    hf_rate = len(prompts) * new_tokens / (time.perf_counter() - started)
    return ours_rate, hf_rate, bool(torch.equal(mine, theirs))


def rl_figures(kind: str, root: Path, prompts: list[list[int]], special: dict, new_tokens: int, steps: int):
    """Our PPO or GRPO loop in process (the stage's own hooks, no Ray): rollout tokens/s (sampled tokens over
    sampling time) and the share of the run's wall time in generation, in scoring the rollout (policy,
    reference, critic and reward-model forwards) and in training (loss, backward, optimizer)."""
    from training.config import RLConfig
    from training.posttrain import StageContext, build_lm
    from training.rl import (
        build_actor_critic,
        grpo_loss_fn,
        grpo_rollout,
        ppo_loss_fn,
        ppo_rollout,
        rl_batches,
        setup_rl,
    )
    from training.runs import folder_bytes

    job = RLConfig(name="bench", base="models:/bench/1", reward_model="models:/bench-rm/1", rollout_prompts=8,
                   group_size=4, sampling=SamplingConfig(max_new_tokens=new_tokens, temperature=1.0),
                   optim=OptimConfig(max_steps=steps, lr=1e-5, warmup_steps=0, schedule="constant",
                                     eval_every=10**6, checkpoint_every=10**6, log_every=10**6))  # fmt: skip
    plan = {"train": [{"id": str(i), "prompt": p} for i, p in enumerate(prompts)],
            "reference_files": folder_bytes(root / "lm"), "reward_files": folder_bytes(root / "rm")}  # fmt: skip
    build, rollout, loss_fn = {"ppo": (build_actor_critic, ppo_rollout, ppo_loss_fn),
                               "grpo": (build_lm, grpo_rollout, grpo_loss_fn)}[kind]  # fmt: skip
    model, _, ids = build(root / "lm", job, plan)
    ctx = StageContext(plan, job, ids, torch.device("cpu"), 0, 1, model)
    setup_rl(ctx)
    seen = []

    def recorded(c, index):
        experience = rollout(c, index)
        seen.append(experience.rollout)
        return experience

    o = job.optim
    started = time.perf_counter()
    Trainer(model, build_optimizer(model, o, "cpu"), o, torch.device("cpu"), loss_fn).run(rl_batches(recorded)(ctx, 0))
    total = time.perf_counter() - started
    generate = sum(r["rl/generate_s"] for r in seen)
    scoring = sum(r["rl/rollout_s"] for r in seen) - generate
    return {f"{kind}_rollout_tokens_per_s": round(sum(r["rl/rollout_tokens"] for r in seen) / generate, 1),
            f"{kind}_generation_share": round(generate / total, 3), f"{kind}_scoring_share": round(scoring / total, 3),
            f"{kind}_training_share": round(1 - (generate + scoring) / total, 3), f"{kind}_rollouts": len(seen),
            f"{kind}_steps": steps}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", dest="seq_len", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--stages", default="sft,reward,dpo,generation,ppo,grpo")
    parser.add_argument("--new-tokens", dest="new_tokens", type=int, default=64)
    parser.add_argument("--prompts", type=int, default=8)
    args = parser.parse_args()
    stages = set(args.stages.split(","))
    data = Path(os.environ.get("LAKE_DATA_DIR", REPO.parent / "shared" / "data")).resolve()
    root = Path(tempfile.mkdtemp(prefix="lake-bench-posttrain-"))
    texts = (data / "text" / "wiki_demo.txt").read_text(encoding="utf-8").splitlines()
    texts += [json.loads(line)["text"] for line in (data / "text" / "c4_demo.jsonl").read_text().splitlines()]
    train_tokenizer(texts, args.vocab, root / "tok")
    tokenizer = load_tokenizer(root / "tok")
    template = ChatTemplate(TemplateConfig(), tokenizer)
    n = args.steps * args.batch
    examples, pairs = examples_and_pairs(data, template, args.seq_len, n)
    cfg = ModelConfig.preset("tiny", tokenizer.vocab_size, max_seq_len=args.seq_len)
    special = dict(bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id)
    save_pretrained(LlamaModel(cfg, seed=0), cfg, root / "lm", root / "tok", **special)
    save_pretrained(RewardModel(cfg, tokenizer.pad_id, seed=0), cfg, root / "rm", root / "tok", **special)
    dpo_pairs = preference_pairs(data, template, args.seq_len, n)
    from training.checkpoint import load_pretrained

    refs = reference_logps(load_pretrained(root / "lm")[0], dpo_pairs, tokenizer.pad_id)
    prompts = [p["prompt"] for p in dpo_pairs if len(p["prompt"]) + args.new_tokens <= args.seq_len][: args.prompts]
    rates: dict[str, list[float]] = {}
    identical = []
    for round_ in range(args.rounds):
        if "sft" in stages:
            rates.setdefault("sft_ours", []).append(ours_sft(cfg, examples, args.batch, args.lr, tokenizer.pad_id))
            rates.setdefault("sft_trl", []).append(trl_sft(root / "lm", examples, args.batch, args.lr,
                                                           root / f"trl-sft-{round_}"))  # fmt: skip
        if "reward" in stages:
            rates.setdefault("reward_ours", []).append(ours_reward(cfg, pairs, args.batch, args.lr, tokenizer.pad_id))
            rates.setdefault("reward_trl", []).append(trl_reward(root / "rm", pairs, args.batch, args.lr,
                                                                 root / f"trl-rm-{round_}"))  # fmt: skip
        if "dpo" in stages:
            rates.setdefault("dpo_ours", []).append(ours_dpo(cfg, dpo_pairs, refs, args.batch, args.lr,
                                                             tokenizer.pad_id))  # fmt: skip
            rates.setdefault("dpo_trl", []).append(trl_dpo(root / "lm", dpo_pairs, refs, args.batch, args.lr,
                                                           root / f"trl-dpo-{round_}"))  # fmt: skip
        if "generation" in stages:
            ours_rate, hf_rate, same = generation_rates(root / "lm", cfg, prompts, args.new_tokens, tokenizer.pad_id)
            rates.setdefault("generation_ours", []).append(ours_rate)
            rates.setdefault("generation_hf", []).append(hf_rate)
            identical.append(same)
        print({k: round(v[-1], 1) for k, v in rates.items()}, file=sys.stderr)
    best = {k: max(v) for k, v in rates.items()}
    figures = {}
    for ours_key, theirs_key, name in (("sft_ours", "sft_trl", "sft"), ("reward_ours", "reward_trl", "reward"),
                                       ("dpo_ours", "dpo_trl", "dpo"),
                                       ("generation_ours", "generation_hf", "generation")):  # fmt: skip
        if ours_key in best:
            peer = "hf" if name == "generation" else "trl"
            figures |= {f"{name}_tokens_per_s": round(best[ours_key], 1),
                        f"{name}_{peer}_tokens_per_s": round(best[theirs_key], 1),
                        f"{name}_ratio": round(best[ours_key] / best[theirs_key], 3)}  # fmt: skip
    if identical:
        figures["generation_greedy_identical"] = all(identical)
    special_ids = {"bos": tokenizer.bos_id, "eos": tokenizer.eos_id, "pad": tokenizer.pad_id}
    rl_prompts = [p["prompt"] for p in dpo_pairs if len(p["prompt"]) + args.new_tokens <= args.seq_len]
    for kind in ("ppo", "grpo"):
        if kind in stages:  # one run each: these are our own figures (TRL has no PPO; see the docstring)
            figures |= rl_figures(kind, root, rl_prompts, special_ids, args.new_tokens, args.steps)
    result = {
        "benchmark": "posttrain",
        "model": {"preset": "tiny", "params": LlamaModel(cfg).num_params(), "vocab": tokenizer.vocab_size},
        "threads": torch.get_num_threads(),
        "steps": args.steps,
        "batch": args.batch,
        "seq_len": args.seq_len,
        "sft_examples": len(examples),
        "reward_pairs": len(pairs),
        "dpo_pairs": len(dpo_pairs),
        "generation_prompts": len(prompts),
        "new_tokens": args.new_tokens,
        **figures,
        "runs_tokens_per_s": {k: [round(x, 1) for x in v] for k, v in rates.items()},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
