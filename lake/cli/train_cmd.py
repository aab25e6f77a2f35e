"""``lake train tokenizer|pretrain|sft|reward|dpo|ppo|grpo|bon``: training on catalog snapshots, in MLflow."""

from __future__ import annotations

import dataclasses

import click

from lake.cli.context import CliContext, pass_ctx
from lake.cli.output import emit_json


@click.group("train")
def train_group() -> None:
    """Train tokenizers and models on catalog snapshots (Ray Train; runs and versions in MLflow)."""


@train_group.command("tokenizer")
@click.option("--table", required=True, metavar="NS.TABLE", help="Table whose text the tokenizer learns.")
@click.option("--where", default=None, metavar="SQL", help="Predicate over the table's columns and labels.")
@click.option("--as-of", "as_of", default=None, metavar="ID|TAG", help="Snapshot id or tag (default: current).")
@click.option("--vocab-size", "vocab_size", type=int, required=True, help="Pieces (with --expand: pieces to learn).")
@click.option("--name", required=True, help="Registered model name of the tokenizer.")
@click.option("--expand", default=None, metavar="models:/NAME/V", help="Add pieces to this tokenizer; old ids stay.")
@click.option(
    "--sample-chars",
    "sample_chars",
    type=int,
    default=20_000_000,
    show_default=True,
    help="Characters of the deterministic training sample.",
)
@click.option("--text-column", "text_column", default="text", show_default=True)
@click.option(
    "--character-coverage",
    "character_coverage",
    type=float,
    default=0.9995,
    show_default=True,
    help="Share of characters that get their own piece; rarer ones fall back to bytes.",
)
@click.option(
    "--eval",
    "eval_slices",
    multiple=True,
    metavar="NAME=SQL",
    help="Report characters per token on the held-out rows matching SQL (repeatable).",
)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@pass_ctx
def tokenizer_command(
    obj: CliContext,
    table,
    where,
    as_of,
    vocab_size,
    name,
    expand,
    sample_chars,
    text_column,
    character_coverage,
    eval_slices,
    fmt,
) -> None:
    """Train (or expand) a sentencepiece BPE tokenizer with byte fallback on a pinned snapshot. Example:

    lake train tokenizer --table web.documents --where "dup_keep AND lang IN ('zh','en')" \
      --vocab-size 8000 --name web-tok
    """
    from training.tokenizer_job import parse_eval_slices, run_tokenizer_job

    result = run_tokenizer_job(
        obj.config,
        table=table,
        name=name,
        vocab_size=vocab_size,
        where=where,
        as_of=as_of,
        expand=expand,
        sample_chars=sample_chars,
        eval_slices=parse_eval_slices(eval_slices),
        text_column=text_column,
        character_coverage=character_coverage,
    )
    if fmt == "json":
        emit_json(dataclasses.asdict(result))
    else:
        click.echo(result.summary())


@train_group.command("pretrain")
@click.argument("config_file", metavar="CONFIG.yaml", type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@pass_ctx
def pretrain_command(obj: CliContext, config_file: str, fmt: str) -> None:
    """Pretrain a Llama-style model on a pinned snapshot with Ray Train and register it (`lake init` writes an
    example config). Re-running the same command resumes an interrupted run from its last checkpoint."""
    from training.config import load_yaml
    from training.pretrain import run_pretrain

    job = load_yaml(config_file)
    result = run_pretrain(obj.config, job, progress=fmt == "table")
    if fmt == "json":
        emit_json(dataclasses.asdict(result))
    else:
        click.echo(result.summary())


@train_group.command("quality-classifier")
@click.option("--name", required=True, help="Registered model name of the classifier.")
@click.option("--positive", multiple=True, required=True, metavar="SQL", help="Query returning high-quality `text`.")
@click.option("--negative", multiple=True, required=True, metavar="SQL", help="Query returning ordinary `text`.")
@click.option("--max-per-class", "max_per_class", type=int, default=20_000, show_default=True)
@click.option("--held-out", "held_out", type=float, default=0.1, show_default=True, help="Share kept for accuracy.")
@click.option("--epoch", type=int, default=20, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@pass_ctx
def quality_classifier_command(obj: CliContext, name, positive, negative, max_per_class, held_out, epoch, fmt) -> None:
    """Train a fastText quality classifier (DCLM recipe) and register it with its held-out accuracy. Example:

    lake train quality-classifier --name quality \
      --positive "SELECT text FROM text.corpus" --negative "SELECT text FROM web.documents"
    """
    from training.quality import ClassifierConfig, train_quality_classifier

    config = ClassifierConfig(max_per_class=max_per_class, held_out=held_out, epoch=epoch)
    result = train_quality_classifier(
        obj.config, name=name, positive=list(positive), negative=list(negative), config=config
    )
    if fmt == "json":
        emit_json(result.as_dict())
    else:
        click.echo(result.summary())


def _posttrain_command(stage: str, summary: str):
    @train_group.command(stage, help=summary)
    @click.argument("config_file", metavar="CONFIG.yaml", type=click.Path(dir_okay=False))
    @click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
    @pass_ctx
    def command(obj: CliContext, config_file: str, fmt: str) -> None:
        from training.config import load_yaml
        from training.posttrain import run_stage
        from training.stages import STAGES

        job = load_yaml(config_file, STAGES[stage].config)
        result = run_stage(obj.config, job, stage, progress=fmt == "table")
        if fmt == "json":
            emit_json(dataclasses.asdict(result))
        else:
            click.echo(result.summary())

    return command


_posttrain_command(
    "sft",
    "Supervised fine-tuning (full or LoRA) of a registered model on chat examples at a pinned snapshot, loss on "
    "answers only; registered with the parent model, snapshots and template (`lake init` writes an example).",
)
_posttrain_command(
    "reward",
    "A reward model (the SFT backbone with a scalar head, pairwise loss) on preference pairs at a pinned "
    "snapshot; held-out pairwise accuracy with its 95% interval (`lake init` writes an example).",
)
_posttrain_command(
    "dpo",
    "Direct preference optimisation (sigmoid, hinge or IPO loss) of an SFT model on preference pairs against a "
    "frozen reference whose log-probs are stored once as the pairs' `__ref_logps` attribute table.",
)
_posttrain_command(
    "ppo",
    "PPO against a registered reward model on catalog prompts: actor and critic (initialised from the reward "
    "model), per-token KL penalty (fixed or adaptive), GAE, clipped losses and the optional PPO-ptx term.",
)
_posttrain_command(
    "grpo",
    "GRPO against a registered reward model: G samples per prompt, group-relative advantages, no critic, KL to "
    "the reference.",
)


@train_group.command("bon")
@click.argument("config_file", metavar="CONFIG.yaml", type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@pass_ctx
def bon_command(obj: CliContext, config_file: str, fmt: str) -> None:
    """Best-of-N rejection sampling in rounds: N answers per prompt from the policy, the reward model's best kept
    (the best of all rounds so far) in a catalog table, then SFT on them; the next round samples from that."""
    from training.bon import run_best_of_n
    from training.config import BestOfNConfig, load_yaml

    result = run_best_of_n(obj.config, load_yaml(config_file, BestOfNConfig), progress=fmt == "table")
    if fmt == "json":
        emit_json(dataclasses.asdict(result))
    else:
        click.echo(result.summary())


COMMANDS = [train_group]
