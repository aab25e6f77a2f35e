"""``lake eval MODEL_URI --suite ppl,mc,judge|pairs``: evaluation suites for registered models (``training.evaluate``,
``training.posttrain.eval_pairs``); figures go to the model's MLflow run and to ``eval.results``."""

from __future__ import annotations

import click

from lake.cli.context import CliContext, pass_ctx
from lake.cli.output import emit_json, emit_rows, format_option
from lake.errors import UsageError

SUITES = ("ppl", "mc", "judge", "pairs")


def _suites(ctx, param, value: tuple[str, ...]) -> list[str]:
    names = [s.strip() for v in value for s in v.split(",") if s.strip()]
    unknown = sorted(set(names) - set(SUITES))
    if unknown:
        raise click.BadParameter(f"{', '.join(unknown)}; choose from {', '.join(SUITES)}")
    return list(dict.fromkeys(names))


@click.command("eval")
@click.argument("model_uri", metavar="MODEL_URI")
@click.option("--suite", "suites", multiple=True, default=("pairs",), show_default=True, callback=_suites,
              help="Comma-separated: ppl, mc, judge (language models), pairs (reward models).")  # fmt: skip
@click.option("--table", "ppl_table", default=None, metavar="NS.TABLE", help="ppl: text table to score.")
@click.option("--slice", "slices", multiple=True, metavar="NAME=SQL", help="ppl: a named predicate (repeatable).")
@click.option("--held-out", "held_out", is_flag=True, help="ppl: only rows the model's training split held out.")
@click.option("--mc-table", default="eval.cmmlu", show_default=True, metavar="NS.TABLE", help="mc: items and shots.")
@click.option("--mc-split", default="test", show_default=True, help="mc: split scored ('any': all but the shots).")
@click.option("--shots", default=5, show_default=True, type=click.IntRange(0, 20), help="mc: dev items per prompt.")
@click.option("--subjects", default=None, metavar="A,B", help="mc: only these subjects.")
@click.option("--limit", default=None, type=click.IntRange(1), help="Items per subject (mc), documents per slice "
              "(ppl), prompts (judge).")  # fmt: skip
@click.option("--baseline", default=None, metavar="MODEL_URI", help="judge: the model to compare against.")
@click.option("--reward-model", "reward_model", default=None, metavar="MODEL_URI", help="judge: the scorer.")
@click.option("--prompts-table", default="sft.examples", show_default=True, metavar="NS.TABLE",
              help="judge: conversations whose last user turn is answered.")  # fmt: skip
@click.option("--max-new-tokens", default=48, show_default=True, type=click.IntRange(1), help="judge: answer length.")
@click.option("--tie-margin", default=0.0, show_default=True, type=click.FloatRange(0), help="judge: rewards this "
              "close are a tie.")  # fmt: skip
@click.option("--pairs-table", "pairs_table", default=None, metavar="NS.TABLE", help="pairs: preference pairs.")
@click.option("--where", default=None, metavar="SQL", help="Predicate over the pairs or prompts table.")
@click.option("--as-of", "as_of", default=None, metavar="ID|TAG", help="Snapshot id or tag (default: current).")
@click.option("--no-record", "no_record", is_flag=True, help="Do not write MLflow metrics or eval.results rows.")
@format_option()
@pass_ctx
def eval_command(obj: CliContext, model_uri, suites, ppl_table, slices, held_out, mc_table, mc_split, shots,
                 subjects, limit, baseline, reward_model, prompts_table, max_new_tokens, tie_margin, pairs_table,
                 where, as_of, no_record, fmt) -> None:  # fmt: skip
    """Score a registered model: a language model on ppl, mc, judge; a reward model on pairs. Examples:

    \b
    lake eval models:/tiny-chat/1 --suite ppl,mc --table text.corpus \\
        --slice zh="input_uri LIKE '%daily%'" --mc-table eval.cmmlu --subjects anatomy,astronomy --limit 20
    lake eval models:/tiny-chat/1 --suite judge --baseline models:/tiny-web/1 \\
        --reward-model models:/tiny-rm/1 --where "source_format = 'belle'"
    lake eval models:/tiny-rm/1 --suite pairs --pairs-table pref.pairs --format json
    """
    from training import evaluate as ev

    report: dict = {}
    if "pairs" in suites:
        from training.posttrain import eval_pairs

        if not pairs_table:
            raise UsageError("--suite pairs needs --pairs-table NS.TABLE")
        report["pairs"] = eval_pairs(obj.config, model_uri, pairs_table, where=where, as_of=as_of)
    lm_suites = [s for s in suites if s != "pairs"]
    if lm_suites:
        if "ppl" in lm_suites and not ppl_table:
            raise UsageError("--suite ppl needs --table NS.TABLE (and --slice NAME=SQL to split it)")
        if "judge" in lm_suites and not (baseline and reward_model):
            raise UsageError("--suite judge needs --baseline MODEL_URI and --reward-model MODEL_URI")
        lm = ev.load_model(obj.config, model_uri)
        if "ppl" in lm_suites:
            fraction = ev.held_out_fraction(obj.config, lm.ref) if held_out else None
            report["ppl"] = ev.eval_ppl(obj.config, lm, ppl_table, ev.parse_slices(slices), held_out=fraction,
                                        limit=limit, as_of=as_of)  # fmt: skip
            for figures in report["ppl"].values():
                figures["options"] = {"limit": limit, "held_out": fraction}
        if "mc" in lm_suites:
            chosen = [s.strip() for s in subjects.split(",")] if subjects else None
            report["mc"] = ev.eval_mc(obj.config, lm, mc_table, None if mc_split == "any" else mc_split,
                                      n_shots=shots, subjects=chosen, limit=limit, as_of=as_of)  # fmt: skip
            report["mc"]["options"] = {"limit": limit, "shots": shots, "split": mc_split, "subjects": chosen}
        if "judge" in lm_suites:
            report["judge"] = ev.eval_judge(obj.config, lm, baseline, reward_model, prompts_table, where=where,
                                            limit=limit or 32, max_new_tokens=max_new_tokens, tie_margin=tie_margin,
                                            as_of=as_of)  # fmt: skip
            report["judge"]["options"] = {"limit": limit or 32, "max_new_tokens": max_new_tokens,
                                          "tie_margin": tie_margin}  # fmt: skip
        if not no_record:
            rows = ev.result_rows(report)
            report["recorded"] = {
                "eval.results": ev.write_results(obj.config, lm.ref, rows),
                "mlflow_run": lm.ref.run_id,
            }
            ev.log_to_mlflow(obj.config, lm.ref, rows, report)
    if fmt == "json":
        emit_json({k: ({kk: vv for kk, vv in v.items() if kk != "predictions"} if k == "mc" else v)
                   for k, v in report.items()})  # fmt: skip
        return
    if "pairs" in report:
        figures = report["pairs"]
        emit_rows([{"suite": "pairs"} | {k: figures[k] for k in ("n", "accuracy", "ci95", "mean_margin")}], fmt,
                  ["suite", "n", "accuracy", "ci95", "mean_margin"])  # fmt: skip
    rows = [{"suite": r.suite, "subject": r.subject, "metric": r.metric, "value": round(r.value, 4), "n": r.n}
            for r in ev.result_rows(report)]  # fmt: skip
    if rows:
        emit_rows(rows, fmt, ["suite", "subject", "metric", "value", "n"])
        methods = sorted({r.method for r in ev.result_rows(report)})
        click.echo("method: " + " | ".join(methods))
    if "recorded" in report:
        rec = report["recorded"]
        click.echo(
            f"recorded: {rec['eval.results']} new rows in eval.results; metrics on MLflow run {rec['mlflow_run']}"
        )


COMMANDS = [eval_command]
