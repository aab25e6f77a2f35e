"""Job configuration: one nested, typed config per training job, read from YAML and validated before anything runs.

Unknown keys and impossible values are user mistakes (``UsageError``, exit 2) named with their dotted path, so a
typo in a YAML file never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from lake.errors import UsageError
from training.chat import TemplateConfig
from training.generation import SamplingConfig


@dataclass(kw_only=True)
class SourceConfig:
    table: str = ""
    where: str | None = None
    as_of: str | None = None


@dataclass(kw_only=True)
class DataConfig:
    table: str = ""  # NS.TABLE to read (or several in `sources`)
    where: str | None = None  # SQL predicate over the table's columns and labels
    as_of: str | None = None  # snapshot id or tag; None pins the current snapshot when the job starts
    text_column: str = "text"
    id_column: str | None = None  # stable row id used for the held-out split; default: doc_id / first *_id column
    val_fraction: float = 0.02  # share of rows (by a hash of the row id) held out for validation
    val_max_tokens: int = 65536
    sources: list[dict[str, Any]] = field(default_factory=list)  # more tables: [{table, where, as_of}, ...]
    mix: str | None = None  # a mix built by `lake mix` (NAME or NAME@TAG) instead of table/sources
    shuffle: bool = True  # documents in a seeded hash order (a reproducible global shuffle); false: file order


@dataclass(kw_only=True)
class ModelSection:
    size: str = "tiny"  # a preset of training.model.ModelConfig
    seq_len: int = 256
    init_from: str | None = None  # models:/NAME/V to continue from (vocabulary-expanded checkpoints included)
    overrides: dict[str, Any] = field(default_factory=dict)  # ModelConfig fields over the preset


@dataclass(kw_only=True)
class OptimConfig:
    batch_size: int = 8  # sequences per micro-batch per worker
    grad_accum: int = 1
    max_steps: int = 100  # optimizer steps
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 10
    schedule: str = "cosine"  # cosine | wsd (warmup-stable-decay) | constant
    decay_fraction: float = 0.2  # wsd: share of steps spent decaying
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    eval_every: int = 50
    checkpoint_every: int = 50
    log_every: int = 10
    seed: int = 0
    precision: str = "auto"  # auto: bf16 autocast on GPU, fp32 on CPU | fp32 | bf16
    compile: str = "auto"  # auto: torch.compile on GPU only | on | off


@dataclass(kw_only=True)
class ScalingSection:
    num_workers: int = 1
    gpus_per_worker: float = 0
    cpus_per_worker: float = 1
    torch_threads: int = 0  # 0: as Ray sets it (cpus_per_worker); more lets a worker use idle cores on its node
    max_failures: int = 1


class JobConfig:
    """What every job config shares: its resume digest and its MLflow params."""

    def digest(self) -> str:
        """A short stable digest of everything that determines the run (its resume key)."""
        text = json.dumps(dataclasses.asdict(self), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def as_flat_params(self) -> dict[str, Any]:
        """``section.key`` -> value, for MLflow params."""
        flat: dict[str, Any] = {}
        for key, value in dataclasses.asdict(self).items():
            if isinstance(value, dict):
                for sub, v in value.items():
                    flat[f"{key}.{sub}"] = json.dumps(v) if isinstance(v, dict | list) else v
            else:
                flat[key] = value
        return flat


def optim_problems(o: OptimConfig) -> list[str]:
    problems = []
    for key in ("batch_size", "grad_accum", "max_steps", "eval_every", "checkpoint_every", "log_every"):
        if getattr(o, key) < 1:
            problems.append(f"optim.{key}: must be at least 1")
    if o.schedule not in ("cosine", "wsd", "constant"):
        problems.append(f"optim.schedule: {o.schedule!r} is not one of cosine, wsd, constant")
    if o.precision not in ("auto", "fp32", "bf16"):
        problems.append(f"optim.precision: {o.precision!r} is not one of auto, fp32, bf16")
    if o.compile not in ("auto", "on", "off"):
        problems.append(f"optim.compile: {o.compile!r} is not one of auto, on, off")
    if not 0 <= o.warmup_steps < o.max_steps:
        problems.append("optim.warmup_steps: must be below optim.max_steps")
    return problems


def scaling_problems(s: ScalingSection) -> list[str]:
    return ["scaling.num_workers: must be at least 1"] if s.num_workers < 1 else []


@dataclass(kw_only=True)
class PretrainConfig(JobConfig):
    name: str = ""  # registered model name
    tokenizer: str = ""  # models:/NAME/V of a tokenizer registered by `lake train tokenizer`
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelSection = field(default_factory=ModelSection)
    optim: OptimConfig = field(default_factory=OptimConfig)
    scaling: ScalingSection = field(default_factory=ScalingSection)

    def validate(self) -> PretrainConfig:
        problems = []
        if not self.name:
            problems.append("name: the registered model name is required")
        if not self.tokenizer.startswith("models:/"):
            problems.append("tokenizer: give a registered tokenizer as models:/NAME/VERSION")
        if not self.data.table and not self.data.sources and not self.data.mix:
            problems.append("data.table: the NS.TABLE to train on is required (or data.sources, or data.mix)")
        if self.data.mix and (self.data.table or self.data.sources or self.data.where):
            problems.append("data.mix: a mix already chooses its documents; drop data.table/where/sources")
        if not 0 <= self.data.val_fraction < 0.5:
            problems.append("data.val_fraction: must be in [0, 0.5)")
        problems += optim_problems(self.optim) + scaling_problems(self.scaling)
        if self.model.seq_len < 8:
            problems.append("model.seq_len: must be at least 8")
        if problems:
            raise UsageError("; ".join(problems))
        self.sources()  # unknown keys in data.sources fail here, before anything runs
        return self

    def sources(self) -> list[SourceConfig]:
        """Every table the job reads: ``data.table`` (if set) then ``data.sources``."""
        first = [SourceConfig(table=self.data.table, where=self.data.where, as_of=self.data.as_of)]
        more = [from_dict(SourceConfig, item, f"data.sources[{i}]") for i, item in enumerate(self.data.sources)]
        return (first if self.data.table else []) + more


def from_dict(cls, values: dict[str, Any], where: str = ""):
    """Build dataclass ``cls`` from ``values``, recursing into nested dataclasses; unknown keys are errors."""
    if not isinstance(values, dict):
        raise UsageError(f"{where or 'config'}: expected a mapping, got {type(values).__name__}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        prefix = f"{where}." if where else ""
        raise UsageError(f"unknown config key {prefix}{unknown[0]}; known: {', '.join(sorted(names))}")
    kwargs = {}
    for key, value in values.items():
        hint = hints[key]
        path = f"{where}.{key}" if where else key
        if dataclasses.is_dataclass(hint):
            kwargs[key] = from_dict(hint, value or {}, path)
        else:
            kwargs[key] = _coerce(hint, value, path)
    return cls(**kwargs)


def _coerce(hint, value, path: str):
    if value is None:
        return None
    try:
        if hint is bool:
            if not isinstance(value, bool):
                raise TypeError
            return value
        if hint is int and not isinstance(value, bool):
            return int(value)
        if hint is float:
            return float(value)
        if hint in (str, str | None):
            return str(value)
    except (TypeError, ValueError):
        raise UsageError(f"config {path}: expected {getattr(hint, '__name__', hint)}, got {value!r}") from None
    return value


def load_yaml(path: str | Path, cls=PretrainConfig):
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"config file {p} does not exist")
    try:
        values = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise UsageError(f"cannot parse {p}: {str(exc).splitlines()[0]}") from None
    return from_dict(cls, values).validate()


# ---- post-training: SFT and reward models --------------------------------------------------------------------
@dataclass(kw_only=True)
class ChatDataConfig:
    table: str = "sft.examples"  # sft.examples (messages) for SFT, pref.pairs (prompt/chosen/rejected) for rewards
    where: str | None = None  # SQL predicate, e.g. "category = 'open qa'" or "source_format = 'alpaca'"
    as_of: str | None = None  # snapshot id or tag; None pins the current snapshot when the job starts
    id_column: str | None = None  # held-out split key; default example_id / pair_id
    val_fraction: float = 0.05  # share of rows held out by a hash of the id (never trained on)
    val_max_examples: int = 2048  # held-out rows evaluated at most (the first by hash order)


@dataclass(kw_only=True)
class MixConfig:
    """Pretraining text mixed into SFT (keeps the base model's language modelling; loss on every token)."""

    table: str = ""  # NS.TABLE of text; empty: no mixing
    where: str | None = None
    as_of: str | None = None
    text_column: str = "text"
    fraction: float = 0.0  # share of training sequences that are pretraining text


@dataclass(kw_only=True)
class LoraConfig:
    rank: int = 0  # 0: full fine-tuning; > 0: LoRA adapters of this rank (peft), merged into the export
    alpha: float = 16.0  # scaling alpha / rank
    dropout: float = 0.0
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


def _post_problems(job, default_table: str) -> list[str]:
    problems = []
    if not job.name:
        problems.append("name: the registered model name is required")
    if not job.base.startswith("models:/"):
        problems.append("base: give the model to start from as models:/NAME/VERSION")
    if not job.data.table:
        problems.append(f"data.table: the NS.TABLE to train on is required (e.g. {default_table})")
    if not 0 < job.data.val_fraction < 1:
        problems.append("data.val_fraction: must be in (0, 1)")
    if job.seq_len < 16:
        problems.append("seq_len: must be at least 16")
    lora = getattr(job, "lora", None)  # preference and RL stages train the full model and use the base's template
    if lora is not None and lora.rank < 0:
        problems.append("lora.rank: must be >= 0 (0 is full fine-tuning)")
    if lora is not None and not 0 <= lora.dropout < 1:
        problems.append("lora.dropout: must be in [0, 1)")
    template = getattr(job, "template", None)
    problems += template.problems() if template is not None else []
    return problems + optim_problems(job.optim) + scaling_problems(job.scaling)


@dataclass(kw_only=True)
class SFTConfig(JobConfig):
    name: str = ""  # registered model name
    base: str = ""  # models:/NAME/V of the pretrained model to fine-tune (its tokenizer comes with it)
    data: ChatDataConfig = field(default_factory=ChatDataConfig)
    mix: MixConfig = field(default_factory=MixConfig)
    template: TemplateConfig = field(default_factory=TemplateConfig)
    seq_len: int = 256  # longer conversations are skipped (counted as too_long), never truncated
    packing: bool = True  # several examples per row, positions and attention reset per example
    lora: LoraConfig = field(default_factory=LoraConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, weight_decay=0.0))
    scaling: ScalingSection = field(default_factory=ScalingSection)

    def validate(self) -> SFTConfig:
        problems = _post_problems(self, "sft.examples")
        if not 0 <= self.mix.fraction < 1:
            problems.append("mix.fraction: must be in [0, 1)")
        if self.mix.fraction > 0 and not self.mix.table:
            problems.append("mix.table: name the pretraining text table to mix in")
        if problems:
            raise UsageError("; ".join(problems))
        return self


@dataclass(kw_only=True)
class RewardConfig(JobConfig):
    name: str = ""
    base: str = ""  # models:/NAME/V of the SFT (or base) model whose backbone gets the scalar head
    data: ChatDataConfig = field(default_factory=lambda: ChatDataConfig(table="pref.pairs"))
    template: TemplateConfig = field(default_factory=TemplateConfig)
    seq_len: int = 256  # a pair longer than this drops its earliest prompt turns; skipped if it still does not fit
    margin: float = 0.0  # m in -log σ(r_chosen - r_rejected - m)
    lora: LoraConfig = field(default_factory=LoraConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, weight_decay=0.0))
    scaling: ScalingSection = field(default_factory=ScalingSection)

    def validate(self) -> RewardConfig:
        problems = _post_problems(self, "pref.pairs")
        if problems:
            raise UsageError("; ".join(problems))
        return self


# ---- preference optimisation and RL --------------------------------------------------------------------------------
@dataclass(kw_only=True)
class DPOConfig(JobConfig):
    name: str = ""
    base: str = ""  # models:/NAME/V of the SFT model to optimise (its tokenizer and chat template come with it)
    reference: str | None = None  # the frozen reference; default: the base model itself
    data: ChatDataConfig = field(default_factory=lambda: ChatDataConfig(table="pref.pairs"))
    seq_len: int = 256  # a pair longer than this drops its earliest prompt turns; skipped if it still does not fit
    loss: str = "sigmoid"  # sigmoid (DPO) | hinge (SLiC) | ipo
    beta: float = 0.1
    label_smoothing: float = 0.0  # conservative DPO (sigmoid only)
    lora: LoraConfig = field(default_factory=LoraConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=5e-4, weight_decay=0.0))
    scaling: ScalingSection = field(default_factory=ScalingSection)

    def validate(self) -> DPOConfig:
        problems = _post_problems(self, "pref.pairs")
        if self.loss not in ("sigmoid", "hinge", "ipo"):
            problems.append(f"loss: {self.loss!r} is not one of sigmoid, hinge, ipo")
        if self.beta <= 0:
            problems.append("beta: must be > 0")
        if self.reference is not None and not self.reference.startswith("models:/"):
            problems.append("reference: give the frozen reference as models:/NAME/VERSION")
        if problems:
            raise UsageError("; ".join(problems))
        return self


@dataclass(kw_only=True)
class PtxConfig:
    """Pretraining text for PPO-ptx (InstructGPT's γ·log π(x) term) and for the held-out perplexity check."""

    table: str = ""  # NS.TABLE of text (or a mix table); empty: neither the term nor the check
    where: str | None = None
    as_of: str | None = None
    text_column: str = "text"
    coef: float = 0.0  # γ; 0 measures held-out perplexity without training on the text
    batch_size: int = 4  # pretraining rows per PPO minibatch
    max_chunks: int = 512  # training chunks read at most
    val_chunks: int = 64  # held-out chunks (from the documents of a 5% hash split) for the perplexity check


@dataclass(kw_only=True)
class RLConfig(JobConfig):
    """``lake train ppo`` and ``lake train grpo``: a policy (the SFT model) optimised against a registered reward
    model on prompts from a catalog table, with a KL penalty to the frozen reference (the SFT model)."""

    name: str = ""
    base: str = ""  # models:/NAME/V of the SFT policy (also the frozen reference unless `reference` is set)
    reference: str | None = None
    reward_model: str = ""  # models:/NAME/V registered by `lake train reward`
    data: ChatDataConfig = field(default_factory=ChatDataConfig)  # prompts: conversations up to the last answer
    val_where: str | None = None  # held-out prompts (e.g. an eval set); default: the hash-held-out rows of `data`
    seq_len: int = 256  # prompt + completion
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(max_new_tokens=32, temperature=1.0))
    rollout_prompts: int = 16  # prompts per rollout (GRPO: each sampled group_size times)
    ppo_epochs: int = 2  # passes over each rollout's experience
    minibatches: int = 2  # minibatches per pass (one optimizer step each)
    clip: float = 0.2  # ε of the clipped surrogate
    # PPO
    value_clip: float = 0.2
    vf_coef: float = 0.5
    gamma: float = 1.0
    lam: float = 0.95
    kl_coef: float = 0.05  # β of the per-token KL penalty (initial value when kl_target is set)
    kl_target: float | None = None  # adaptive β toward this sequence KL (Ziegler et al.); None: fixed β
    kl_horizon: int = 10000
    reward_clip: float = 5.0  # normalised scores are clipped to ±reward_clip
    normalize_reward: bool = True  # running mean/std of reward-model scores
    ptx: PtxConfig = field(default_factory=PtxConfig)
    # GRPO
    group_size: int = 4  # G samples per prompt
    beta: float = 0.04  # GRPO's KL weight (k3 estimator)
    scale_rewards: bool = True  # divide by the group's std (False: Dr. GRPO)
    val_max_prompts: int = 64
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4, weight_decay=0.0, warmup_steps=0))
    scaling: ScalingSection = field(default_factory=ScalingSection)

    def validate(self) -> RLConfig:
        problems = _rl_problems(self)
        if problems:
            raise UsageError("; ".join(problems))
        return self


def _rl_problems(job: RLConfig) -> list[str]:
    problems = _post_problems(job, "sft.examples")
    if not job.reward_model.startswith("models:/"):
        problems.append("reward_model: give the reward model as models:/NAME/VERSION")
    for key in ("rollout_prompts", "ppo_epochs", "minibatches", "group_size"):
        if getattr(job, key) < 1:
            problems.append(f"{key}: must be at least 1")
    if job.sampling.max_new_tokens >= job.seq_len:
        problems.append("sampling.max_new_tokens: must be below seq_len")
    if job.kl_target is not None and job.kl_target <= 0:
        problems.append("kl_target: must be > 0")
    if job.ptx.coef < 0:
        problems.append("ptx.coef: must be >= 0")
    if job.ptx.coef > 0 and not job.ptx.table:
        problems.append("ptx.table: name the pretraining text table of the ptx term")
    return problems + job.sampling.problems()


@dataclass(kw_only=True)
class BestOfNConfig(JobConfig):
    """``lake train bon``: rejection-sampling rounds (Llama 2): sample N answers per prompt from the policy, keep
    the reward model's best, keep the best of all rounds so far, fine-tune on them; the next round samples from
    the fine-tuned model."""

    name: str = ""  # the fine-tuned model's registered name (one version per round)
    base: str = ""  # models:/NAME/V of the SFT policy of round 1
    reward_model: str = ""
    data: ChatDataConfig = field(default_factory=ChatDataConfig)  # prompts: conversations up to the last answer
    table: str = "sft.best_of_n"  # the kept samples: prompt, answer, score, round, policy, reward model
    n: int = 4  # samples per prompt
    rounds: int = 2
    max_prompts: int = 64  # prompts per round (the first by hash order)
    val_fraction: float = 0.2  # kept samples held out (by a hash of the prompt id) to validate each round's SFT
    seq_len: int = 256
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(max_new_tokens=48, temperature=1.0))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, weight_decay=0.0, max_steps=20))
    scaling: ScalingSection = field(default_factory=ScalingSection)

    def validate(self) -> BestOfNConfig:
        problems = _post_problems(self, "sft.examples")
        if not self.reward_model.startswith("models:/"):
            problems.append("reward_model: give the reward model as models:/NAME/VERSION")
        for key in ("n", "rounds", "max_prompts"):
            if getattr(self, key) < 1:
                problems.append(f"{key}: must be at least 1")
        if not 0 < self.val_fraction < 1:
            problems.append("val_fraction: must be in (0, 1)")
        problems += self.sampling.problems()
        if problems:
            raise UsageError("; ".join(problems))
        return self
