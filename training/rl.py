"""PPO and GRPO: a policy (the SFT model) optimised against a registered reward model on catalog prompts, with a
KL penalty toward a frozen reference. Both are stages of the one loop (``training.loop.Trainer``): the batch
iterator samples a rollout with the current policy whenever the previous rollout's minibatches are used up, and
each minibatch is one optimizer step; the losses are in ``training.losses`` as their formulas.

- **PPO** (InstructGPT / DeepSpeed-Chat): actor and critic are separate networks in one module. The critic is
  initialised from the reward model (DeepSpeed-Chat's choice: it starts out knowing what is rewarded) and reads
  a value at every completion position with the reward model's head. Per-token rewards are −β·KL plus the
  (running-normalised, clipped) reward-model score on the last token; GAE; clipped policy and value losses; an
  optional PPO-ptx term (γ × next-token NLL on pretraining chunks from a table or mix) against forgetting;
  β fixed or adaptive toward a target KL (Ziegler et al.).
- **GRPO** (Shao et al. 2024): G samples per prompt, the advantage of each is its score relative to its group
  (no critic), KL to the reference by the k3 estimator inside the loss.

Log-probs are computed exactly as sampled (left-padded prompts, positions over real tokens), so the policy's
log-probs right after sampling equal the sampler's and the first PPO ratio is 1. Held-out figures: the reward
model's mean score of sampled answers to held-out prompts (a fixed sampling seed, so before and after compare),
their KL to the reference, and the perplexity of held-out pretraining text.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from training import registry
from training.generation import Generated, positions_and_mask, sample
from training.losses import (
    AdaptiveKLController,
    causal_lm_loss,
    clipped_policy_loss,
    clipped_value_loss,
    entropy_from_logits,
    gae,
    group_advantages,
    grpo_loss,
    kl_penalised_rewards,
    masked_mean,
    masked_whiten,
    ptx_loss,
    token_logps,
)


def completion_hidden(model: nn.Module, generated: Generated) -> torch.Tensor:
    """Last hidden states at the positions that predict each completion token: [B, N, dim]."""
    positions, mask = positions_and_mask(generated.keep)
    hidden = model.model(generated.sequences, positions, mask)
    return hidden[:, generated.prompt_len - 1 : -1]


def completion_logps(model: nn.Module, generated: Generated) -> torch.Tensor:
    """log π(y_t | x, y_<t) of every completion token: [B, N] (read only where ``completion_mask`` is 1)."""
    logits = model.lm_head(completion_hidden(model, generated))
    return token_logps(logits, generated.completions)


def right_pad(rows: list[list[int]], pad_id: int) -> torch.Tensor:
    ids = torch.full((len(rows), max(len(r) for r in rows)), pad_id, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return ids


@torch.no_grad()
def reward_scores(reward_model: nn.Module, prompts: list[list[int]], generated: Generated) -> torch.Tensor:
    """The reward model's score of each prompt + completion (its EOS included), read at the last real token."""
    rows = [p + c for p, c in zip(prompts, generated.completion_lists(), strict=True)]
    device = next(reward_model.parameters()).device
    return reward_model(right_pad(rows, reward_model.pad_id).to(device)).float()


class ActorCritic(nn.Module):
    """PPO's trainable module: the policy and a separate critic (a backbone with a scalar head at every position).
    One ``forward`` computes what the loss needs, so a DDP wrapper's gradient sync sees every parameter."""

    def __init__(self, actor: nn.Module, critic: nn.Module) -> None:
        super().__init__()
        self.actor = actor
        self.critic = critic  # a RewardModel: ``model`` (backbone) + ``score`` (head)

    def values(self, generated: Generated) -> torch.Tensor:
        return self.critic.score(completion_hidden(self.critic, generated)).squeeze(-1).float()

    def forward(self, generated: Generated, ptx_ids: torch.Tensor | None = None):
        """(completion logits [B, N, V], values [B, N], pretraining logits [b, T, V] or None)."""
        logits = self.actor.lm_head(completion_hidden(self.actor, generated))
        return logits, self.values(generated), None if ptx_ids is None else self.actor(ptx_ids)


# ---- the driver side -----------------------------------------------------------------------------------------------
def prompt_messages(messages: list[dict]) -> list[dict] | None:
    """The conversation up to (not including) its last assistant turn: what the policy is asked to continue."""
    last = max((i for i, m in enumerate(messages) if m["role"] in ("assistant", "function_call")), default=None)
    return None if last is None or last == 0 else list(messages[:last])


def encode_prompts(lake, source, template, max_prompt: int, exclude: set[str] | None = None):
    """Prompt token ids of a chat table's rows (``{"id", "prompt"}``) and the skip counts by reason."""
    from training.data import read_rows

    columns = ["messages"] + (["category"] if "category" in source.schema.names else [])
    items, skipped = [], Counter()
    for row in read_rows(lake, source, columns):
        row_id = str(row[source.id_column])
        if exclude and row_id in exclude:
            continue
        messages = prompt_messages(row["messages"] or [])
        if messages is None:
            skipped["no_prompt"] += 1
            continue
        ids = template.prompt(messages, row.get("category"))
        if len(ids) > max_prompt:
            skipped["too_long"] += 1
            continue
        items.append({"id": row_id, "prompt": ids})
    return items, skipped


def text_chunks(lake, source, tokenizer, seq_len: int, held_out: bool, limit: int) -> list[list[int]]:
    """Up to ``limit`` chunks of ``seq_len`` tokens of documents (BOS … EOS, concatenated) on one side of the 5%
    hash split of a text table, documents in a seeded hash order (a sample of the whole table, not its first ids)."""
    from training.data import is_held_out, read_rows, row_hash

    chunks, stream = [], []
    rows = read_rows(lake, source, [source.text_column])
    for row in sorted(rows, key=lambda r: row_hash(str(r[source.id_column]), "ptx")):
        if is_held_out(str(row[source.id_column]), 0.05) != held_out or not row[source.text_column]:
            continue
        stream += tokenizer.encode(row[source.text_column], bos=True, eos=True)
        while len(stream) >= seq_len and len(chunks) < limit:
            chunks.append(stream[:seq_len])
            stream = stream[seq_len:]
        if len(chunks) >= limit:
            break
    return chunks


def prepare_rl(cfg, lake, job, template, base_ref):
    """Driver: prompts (train, held out), pretraining chunks (PPO-ptx and the perplexity check), and the frozen
    reference and reward model shipped to the workers."""
    from lake.errors import UsageError
    from training.data import is_held_out, resolve_source
    from training.posttrain import Prepared, load_base

    d = job.data
    max_prompt = job.seq_len - job.sampling.max_new_tokens
    source = resolve_source(lake, d.table, where=d.where, as_of=d.as_of, text_column="messages",
                            id_column=d.id_column)  # fmt: skip
    sources = [source]
    if job.val_where:  # held-out prompts named by a predicate (an eval set), never trained on
        val_source = resolve_source(lake, d.table, where=job.val_where, as_of=source.snapshot_id,
                                    text_column="messages", id_column=d.id_column)  # fmt: skip
        val, skipped = encode_prompts(lake, val_source, template, max_prompt)
        train, more = encode_prompts(lake, source, template, max_prompt, exclude={v["id"] for v in val})
        skipped += more
        sources.append(val_source)
    else:
        items, skipped = encode_prompts(lake, source, template, max_prompt)
        train = [it for it in items if not is_held_out(it["id"], d.val_fraction)]
        val = [it for it in items if is_held_out(it["id"], d.val_fraction)]
    val = val[: job.val_max_prompts]

    rm_ref = registry.resolve(cfg, job.reward_model)
    if rm_ref.tags.get(registry.TAG_STAGE) != "reward":
        raise UsageError(f"{job.reward_model} is not a reward model (registered by `lake train reward`)")
    tokenizer = base_ref.tags.get(registry.TAG_TOKENIZER)
    if rm_ref.tags.get(registry.TAG_TOKENIZER) != tokenizer:
        raise UsageError(f"{job.reward_model} reads another tokenizer ({rm_ref.tags.get(registry.TAG_TOKENIZER)}) "
                         f"than {job.base} ({tokenizer})")  # fmt: skip
    reference = job.reference or job.base
    _, ref_dir = load_base(cfg, reference)
    rm_dir = registry.download(cfg, rm_ref, cfg.home / "cache" / "models")
    from training import runs

    plan: dict[str, Any] = {"reference_files": runs.folder_bytes(ref_dir), "reward_files": runs.folder_bytes(rm_dir)}
    p = job.ptx
    if p.table:
        ptx_source = resolve_source(lake, p.table, where=p.where, as_of=p.as_of, text_column=p.text_column)
        sources.append(ptx_source)
        plan["ptx_train"] = text_chunks(lake, ptx_source, template.tok, job.seq_len, False, p.max_chunks)
        plan["ptx_val"] = text_chunks(lake, ptx_source, template.tok, job.seq_len, True, p.val_chunks)
    tags = {registry.TAG_REWARD_MODEL: rm_ref.uri, registry.TAG_REFERENCE: reference}
    return Prepared(train, val, skipped, sources, plan=plan, tags=tags)


# ---- the worker side ---------------------------------------------------------------------------------------------
def build_actor_critic(base_dir: Path, job, plan: dict):
    from training import runs
    from training.checkpoint import load_reward_model
    from training.posttrain import load_lm

    actor, model_cfg, special = load_lm(base_dir)
    critic, _ = load_reward_model(runs.write_folder(plan["reward_files"], "lake-critic-"))
    model = ActorCritic(actor, critic.float())
    model.train()
    return model, model_cfg, special


def policy_of(model: nn.Module) -> nn.Module:
    return model.actor if isinstance(model, ActorCritic) else model


def setup_rl(ctx) -> None:
    """Frozen reference and reward model; the KL coefficient and reward statistics of a resumed run."""
    from training.checkpoint import load_pretrained, load_reward_model

    reference, _ = load_pretrained(ctx.folder("reference_files", "lake-ref-"), dtype=torch.float32)
    reward_model, _ = load_reward_model(ctx.folder("reward_files", "lake-rm-"))
    for frozen in (reference, reward_model):
        frozen.float().to(ctx.device).eval().requires_grad_(False)
    ctx.extras |= {"reference": reference, "reward_model": reward_model}
    job = ctx.job
    ctx.state.setdefault("kl_coef", job.kl_coef)
    ctx.state.setdefault("reward_stats", [0, 0.0, 0.0])  # Welford: count, mean, M2
    ctx.extras["kl"] = AdaptiveKLController(ctx.state["kl_coef"], job.kl_target, job.kl_horizon)


@dataclass
class Experience:
    """One minibatch of a rollout, with the loss's settings (the loop's loss hook sees only the batch)."""

    generated: Generated
    old_logps: torch.Tensor  # [B, N] under the policy that sampled
    ref_logps: torch.Tensor  # [B, N] under the frozen reference
    advantages: torch.Tensor  # PPO: [B, N] (GAE, whitened); GRPO: [B] (group-relative)
    old_values: torch.Tensor | None = None  # PPO: [B, N]
    returns: torch.Tensor | None = None  # PPO: [B, N]
    ptx_ids: torch.Tensor | None = None  # PPO-ptx: pretraining chunks [b, T]
    settings: dict[str, float] = dataclasses.field(default_factory=dict)
    rollout: dict[str, float] = dataclasses.field(default_factory=dict)  # the rollout's figures, logged per step

    @property
    def mask(self) -> torch.Tensor:
        return self.generated.completion_mask

    @property
    def n_tokens(self) -> int:
        return int(self.mask.sum()) + (0 if self.ptx_ids is None else self.ptx_ids.numel())

    def to(self, device) -> Experience:
        def move(x):
            return None if x is None else x.to(device)

        g = self.generated
        generated = Generated(g.sequences.to(device), g.prompt_len, g.completion_mask.to(device),
                              g.prompt_keep.to(device))  # fmt: skip
        return dataclasses.replace(
            self, generated=generated, old_logps=move(self.old_logps), ref_logps=move(self.ref_logps),
            advantages=move(self.advantages), old_values=move(self.old_values), returns=move(self.returns),
            ptx_ids=move(self.ptx_ids),
        )  # fmt: skip

    def rows(self, index: torch.Tensor) -> Experience:
        """The experience of rows ``index`` (a minibatch); the prompt columns stay as they are."""
        g = self.generated
        generated = Generated(g.sequences[index], g.prompt_len, g.completion_mask[index], g.prompt_keep[index])

        def pick(x):
            return None if x is None else x[index]

        return dataclasses.replace(
            self, generated=generated, old_logps=self.old_logps[index], ref_logps=self.ref_logps[index],
            advantages=self.advantages[index], old_values=pick(self.old_values), returns=pick(self.returns),
        )  # fmt: skip


def rollout_prompts(ctx, index: int) -> list[list[int]]:
    """This rank's prompts of rollout ``index``: consecutive prompts of the seeded epoch orders, so every prompt
    is used once per epoch."""
    from training.posttrain import epoch_order

    items, n = ctx.plan["train"], ctx.job.rollout_prompts
    first = (index * ctx.world + ctx.rank) * n
    out = []
    for position in range(first, first + n):
        epoch, offset = divmod(position, len(items))
        out.append(epoch_order(items, ctx.job.optim.seed, epoch)[offset]["prompt"])
    return out


def sampler_seed(ctx, index: int) -> torch.Generator:
    return torch.Generator(device=ctx.device).manual_seed(ctx.job.optim.seed * 1_000_003 + index * 97 + ctx.rank)


def normalise_scores(ctx, scores: torch.Tensor) -> torch.Tensor:
    """Scores standardised by the running mean and std of every score so far (Welford), then clipped."""
    job = ctx.job
    if job.normalize_reward:
        count, mean, m2 = ctx.state["reward_stats"]
        for value in scores.tolist():
            count += 1
            delta = value - mean
            mean += delta / count
            m2 += delta * (value - mean)
        ctx.state["reward_stats"] = [count, mean, m2]
        std = math.sqrt(m2 / max(count - 1, 1)) or 1.0
        scores = (scores - mean) / std
    return scores.clamp(-job.reward_clip, job.reward_clip)


def sequence_kl(logps: torch.Tensor, ref_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Σ_t (log π − log π_ref) per sequence (the k1 estimate of KL(π‖π_ref) of a sampled answer): [B]."""
    return ((logps - ref_logps) * mask).sum(-1)


def timed_sample(ctx, policy: nn.Module, prompts: list[list[int]], index: int) -> tuple[Generated, dict[str, float]]:
    """Sample a rollout; its timing figures (generation seconds, tokens) go to the rollout's metrics."""
    started = time.perf_counter()
    generated = sample(policy, prompts, ctx.job.sampling, ctx.special["eos"], ctx.special["pad"],
                       sampler_seed(ctx, index))  # fmt: skip
    tokens = float(generated.completion_mask.sum())
    return generated, {"rl/generate_s": time.perf_counter() - started, "rl/rollout_tokens": tokens,
                       "rl/started": started}  # fmt: skip


def finish_timing(timing: dict[str, float]) -> dict[str, float]:
    """The rollout's wall time (sampling plus scoring by the policy, reference, critic and reward model)."""
    started = timing.pop("rl/started")
    return timing | {"rl/rollout_s": time.perf_counter() - started}


@torch.no_grad()
def ppo_rollout(ctx, index: int) -> Experience:
    job, model = ctx.job, ctx.model
    prompts = rollout_prompts(ctx, index)
    generated, timing = timed_sample(ctx, model.actor, prompts, index)
    mask = generated.completion_mask
    old_logps = completion_logps(model.actor, generated)
    ref_logps = completion_logps(ctx.extras["reference"], generated)
    values = model.values(generated) * mask
    scores = reward_scores(ctx.extras["reward_model"], prompts, generated)
    kl_coef = ctx.state["kl_coef"]
    rewards, kl = kl_penalised_rewards(normalise_scores(ctx, scores), old_logps, ref_logps, mask, kl_coef)
    advantages, returns = gae(rewards, values, mask, job.gamma, job.lam)
    seq_kl = float(kl.sum(-1).mean())
    ctx.state["kl_coef"] = ctx.extras["kl"].update(seq_kl, len(prompts))
    settings = {"clip": job.clip, "value_clip": job.value_clip, "vf_coef": job.vf_coef, "ptx_coef": job.ptx.coef}
    rollout = {"rl/reward": float(scores.mean()), "rl/kl": seq_kl, "rl/kl_coef": kl_coef,
               "rl/response_len": float(mask.sum(-1).float().mean())} | finish_timing(timing)  # fmt: skip
    return Experience(generated, old_logps, ref_logps, masked_whiten(advantages, mask), values, returns,
                      settings=settings, rollout=rollout)  # fmt: skip


@torch.no_grad()
def grpo_rollout(ctx, index: int) -> Experience:
    job, policy = ctx.job, ctx.model
    prompts = [p for p in rollout_prompts(ctx, index) for _ in range(job.group_size)]
    generated, timing = timed_sample(ctx, policy, prompts, index)
    mask = generated.completion_mask
    old_logps = completion_logps(policy, generated)
    ref_logps = completion_logps(ctx.extras["reference"], generated)
    scores = reward_scores(ctx.extras["reward_model"], prompts, generated)
    advantages = group_advantages(scores, job.group_size, job.scale_rewards)
    grouped = scores.view(-1, job.group_size)
    rollout = {"rl/reward": float(scores.mean()), "rl/reward_group_std": float(grouped.std(-1).mean()),
               "rl/kl": float(sequence_kl(old_logps, ref_logps, mask).mean()),
               "rl/response_len": float(mask.sum(-1).float().mean())} | finish_timing(timing)  # fmt: skip
    settings = {"clip": job.clip, "beta": job.beta}
    return Experience(generated, old_logps, ref_logps, advantages, settings=settings, rollout=rollout)


def rl_batches(rollout_fn):
    """The stage's batch iterator: a rollout, then ``ppo_epochs`` passes over it in ``minibatches`` seeded
    shuffles (one optimizer step each), then the next rollout, sampled by the updated policy. A resume starts at
    the rollout holding step ``start`` (re-sampled with the restored weights)."""

    def batches(ctx, start: int):
        job = ctx.job
        per_rollout = job.ppo_epochs * job.minibatches
        index, skip = divmod(start, per_rollout)
        ptx, ptx_at = ctx.plan.get("ptx_train") or [], index * per_rollout * job.ptx.batch_size
        while True:
            experience = rollout_fn(ctx, index)
            rows = experience.generated.sequences.shape[0]
            for epoch in range(job.ppo_epochs):
                order = torch.randperm(rows, generator=torch.Generator().manual_seed(index * 131 + epoch))
                for part in order.chunk(job.minibatches):
                    minibatch = experience.rows(part)
                    if ptx and job.ptx.coef > 0:
                        chunk = [ptx[(ptx_at + i) % len(ptx)] for i in range(job.ptx.batch_size)]
                        minibatch.ptx_ids = torch.tensor(chunk, dtype=torch.long)
                        ptx_at += job.ptx.batch_size
                    if skip:
                        skip -= 1
                        continue
                    yield minibatch
            index += 1

    return batches


def ppo_loss_fn(model, batch: Experience):
    """Clipped policy loss + vf_coef × clipped value loss (+ the ptx term), with PPO's diagnostics."""
    s, g, mask = batch.settings, batch.generated, batch.mask
    logits, values, ptx_logits = model(g, batch.ptx_ids)
    logps = token_logps(logits, g.completions)
    policy_loss, clip_frac = clipped_policy_loss(logps, batch.old_logps, batch.advantages, mask, s["clip"])
    value_loss = clipped_value_loss(values, batch.old_values, batch.returns, mask, s["value_clip"])
    loss = policy_loss + s["vf_coef"] * value_loss
    metrics = {"rl/policy_loss": policy_loss.detach(), "rl/value_loss": value_loss.detach(),
               "rl/clip_frac": clip_frac, "rl/entropy": masked_mean(entropy_from_logits(logits.detach()), mask),
               "rl/approx_kl_old": masked_mean((batch.old_logps - logps).detach(), mask)} | batch.rollout  # fmt: skip
    if ptx_logits is not None:
        ptx = ptx_loss(ptx_logits, batch.ptx_ids, s["ptx_coef"])
        loss = loss + ptx
        metrics["rl/ptx_loss"] = ptx.detach() / s["ptx_coef"]
    return loss, batch.n_tokens, metrics


def grpo_loss_fn(model, batch: Experience):
    g = batch.generated
    positions, mask = positions_and_mask(g.keep)
    logits = model(g.sequences, positions, mask)[:, g.prompt_len - 1 : -1]
    logps = token_logps(logits, g.completions)
    s = batch.settings
    loss, metrics = grpo_loss(logps, batch.old_logps, batch.ref_logps, batch.advantages, batch.mask, s["beta"],
                              s["clip"])  # fmt: skip
    metrics = {f"rl/{k}": v for k, v in metrics.items()} | batch.rollout
    metrics["rl/entropy"] = masked_mean(entropy_from_logits(logits.detach()), batch.mask)
    return loss, batch.n_tokens, metrics


@torch.no_grad()
def rl_validate(model, ctx) -> dict[str, float]:
    """Held-out prompts answered with a fixed sampling seed: the reward model's mean score, the answers' KL to the
    reference and their length; the perplexity of held-out pretraining chunks when a ptx table is set."""
    policy = policy_of(ctx.model)
    was_training = policy.training
    policy.eval()
    prompts = [it["prompt"] for it in ctx.plan["val"]]
    scores, kls, lengths = [], [], []
    generator = torch.Generator(device=ctx.device).manual_seed(ctx.job.optim.seed + 7919)
    for start in range(0, len(prompts), 32):
        chunk = prompts[start : start + 32]
        generated = sample(policy, chunk, ctx.job.sampling, ctx.special["eos"], ctx.special["pad"], generator)
        mask = generated.completion_mask
        logps = completion_logps(policy, generated)
        ref_logps = completion_logps(ctx.extras["reference"], generated)
        scores += reward_scores(ctx.extras["reward_model"], chunk, generated).tolist()
        kls += sequence_kl(logps, ref_logps, mask).tolist()
        lengths += mask.sum(-1).tolist()
    metrics = {"val/reward": sum(scores) / len(scores), "val/kl": sum(kls) / len(kls),
               "val/response_len": sum(lengths) / len(lengths)}  # fmt: skip
    if ctx.plan.get("ptx_val"):
        ids = torch.tensor(ctx.plan["ptx_val"], dtype=torch.long, device=ctx.device)
        nll = sum(float(causal_lm_loss(policy(ids[i : i + 8])[:, :-1], ids[i : i + 8, 1:])) * len(ids[i : i + 8])
                  for i in range(0, len(ids), 8)) / len(ids)  # fmt: skip
        metrics["val/ptx_ppl"] = math.exp(nll)
    policy.train(was_training)
    return metrics


def rl_figures(before: dict, after: dict, held_out: int) -> str:
    text = (
        f"held-out reward {before['val/reward']:.3f} -> {after['val/reward']:.3f} on {held_out} prompts, "
        f"KL to the reference {after['val/kl']:.3f}"
    )
    if "val/ptx_ppl" in after:
        text += f", pretraining-text perplexity {before['val/ptx_ppl']:.1f} -> {after['val/ptx_ppl']:.1f}"
    return text


def rl_stages() -> dict[str, Any]:
    from training.config import RLConfig
    from training.posttrain import Stage, build_lm

    curves = ("rl/reward", "val/reward", "val/kl")
    shared = {"validate": rl_validate, "figures": rl_figures, "setup": setup_rl, "curves": curves,
              "curve_label": "reward / KL"}  # fmt: skip
    return {
        "ppo": Stage(
            RLConfig, prepare_rl, build_actor_critic, rl_batches(ppo_rollout), ppo_loss_fn, export=policy_of, **shared
        ),  # fmt: skip
        "grpo": Stage(RLConfig, prepare_rl, build_lm, rl_batches(grpo_rollout), grpo_loss_fn, **shared),
    }
