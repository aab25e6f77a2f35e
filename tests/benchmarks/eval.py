"""``lake eval --suite mc`` against lm-evaluation-harness 0.4.x on the same CMMLU items and the same model.

Run: ``python tests/benchmarks/eval.py [--subjects 8] [--limit 40] [--threads 2] [--rounds 2]``; the last line
printed is one JSON object: both accuracies, the share of items on which the two predict the same letter, items/s
of each and their ratio (ours / lm-eval).

Setup, all in a temporary lake home on the shared data: the first ``--subjects`` CMMLU subjects (dev and test files)
are imported with ``lake import mc``; a sentencepiece tokenizer is trained on their text; a Llama-style model
(4 layers, d 256, random init with std 0.1, so that its letter choices vary from item to item) is exported in the
Hugging Face layout and registered in MLflow. ``--checkpoint DIR`` evaluates an exported model instead (e.g. a
trained one from ``$LAKE_HOME/cache/models/NAME/V``; with a short context both sides cut prompts from the left).

- **ours**: ``training.evaluate.eval_mc`` (what ``lake eval MODEL --suite mc`` runs): reads the pinned table,
  builds the 5-shot prompts, scores the letters with the shared prefix in a KV cache.
- **lm-eval** (its own venv, ``.bench/lm-eval``: ``torch==2.13.0`` CPU first, then ``lm-eval==0.4.13`` and
  ``transformers``; created on first use): ``simple_evaluate`` with ``HFLM`` on the exported checkpoint
  (``dtype=float32``, ``add_bos_token=True``: our models are trained with BOS), offline, on a local task per
  subject in the ``cmmlu`` task's format (``doc_to_text``, ``doc_to_choice`` A-D, ``first_n`` shots from ``dev``)
  with C-Eval's instruction as the description and ``target_delimiter: ""`` (each shot ends ``答案：X``). Its
  documents are the same catalog rows, written to JSON Lines (a CSV loader would turn ``0.50`` into ``0.5``).

Timing covers the scoring call on each side (items read, prompts built and tokenised, forwards), after the model
is loaded; both use ``--threads`` torch threads. The best of ``--rounds`` rounds is reported per side, as wall
time (``ratio``) and as process CPU time (``ratio_cpu``: steadier on a shared, loaded machine; ``load_avg_1m`` says
how loaded it was).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "tests")]
DATA = Path(os.environ.get("LAKE_DATA_DIR", REPO.parent / "shared" / "data")).resolve()
VENV = REPO / ".bench" / "lm-eval"
PACKAGES = (["torch==2.13.0"], ["lm-eval==0.4.13", "transformers==5.24.0", "safetensors", "sentencepiece"])
TASK_YAML = """task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {test}
    dev: {dev}
test_split: test
fewshot_split: dev
fewshot_config:
  sampler: first_n
output_type: multiple_choice
description: {description}
doc_to_text: "{{{{Question.strip()}}}}\\nA. {{{{A}}}}\\nB. {{{{B}}}}\\nC. {{{{C}}}}\\nD. {{{{D}}}}\\n答案："
doc_to_choice: ["A", "B", "C", "D"]
doc_to_target: "{{{{['A', 'B', 'C', 'D'].index(Answer)}}}}"
target_delimiter: ""
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""
PEER_SCRIPT = r"""
import json, sys, time
import torch
args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])
from lm_eval import simple_evaluate
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager
lm = HFLM(pretrained=args["ckpt"], dtype="float32", add_bos_token=True, batch_size=args["batch"], device="cpu")
manager = TaskManager(include_path=args["tasks_dir"])
runs, cpu = [], []
for _ in range(args["rounds"]):
    start, start_cpu = time.perf_counter(), time.process_time()
    out = simple_evaluate(model=lm, tasks=args["tasks"], num_fewshot=args["shots"], limit=args["limit"],
                          log_samples=True, task_manager=manager, bootstrap_iters=0)
    runs.append(time.perf_counter() - start)
    cpu.append(time.process_time() - start_cpu)
predictions = {}
for task, samples in out["samples"].items():
    ordered = sorted(samples, key=lambda s: s["doc_id"])
    predictions[task] = ["ABCD"[max(range(4), key=lambda i: s["filtered_resps"][i][0])] for s in ordered]
print(json.dumps({"seconds": min(runs), "cpu_seconds": min(cpu), "predictions": predictions}))
"""


def _log(message: str) -> None:
    print(f"[eval-bench] {message}", file=sys.stderr, flush=True)


def ensure_venv() -> Path:
    python = VENV / "bin" / "python"
    marker = VENV / ".ready"
    if marker.exists() and python.exists():
        return python
    _log(f"creating {VENV} (torch first, then lm-eval; a few minutes)")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
    for packages in PACKAGES:
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", *packages], check=True)
    subprocess.run([str(python), "-c", "import lm_eval, transformers"], check=True)
    marker.write_text("\n".join(" ".join(p) for p in PACKAGES) + "\n")
    return python


def setup_lake(work: Path, subjects: list[str], checkpoint: Path | None):
    """A lake home with the subjects' CMMLU rows in ``eval.cmmlu`` and a registered model (``checkpoint``, or a
    random one with a tokenizer trained on the rows); returns (cfg, model uri, checkpoint folder, rows)."""
    os.environ |= {"LAKE_HOME": str(work / "home"), "LAKE_DATA_DIR": str(DATA), "RAY_AUTH_MODE": "disabled",
                   "MLFLOW_DISABLE_TELEMETRY": "true", "HF_HUB_OFFLINE": "1"}  # fmt: skip
    for name in ("MLFLOW_TRACKING_URI", "LAKE_CONFIG", "RAY_ADDRESS"):
        os.environ.pop(name, None)
    from catalog.store import Lakehouse
    from lake.config import load_config
    from pipelines.imports import import_files
    from training import registry, runs
    from training.checkpoint import save_pretrained
    from training.evaluate import format_question
    from training.model import LlamaModel, ModelConfig
    from training.tokenizer import load_tokenizer, train_tokenizer

    cfg = load_config()
    lake = Lakehouse.from_config(cfg)
    files = [str(DATA / "eval/cmmlu" / split / f"{s}.csv") for s in subjects for split in ("dev", "test")]
    import_files(lake, "mc", files, "eval.cmmlu", progress=False)
    rows = lake.read("eval.cmmlu").to_pylist()
    if checkpoint is not None:
        ckpt = checkpoint
    else:
        tok_dir = work / "tok"
        train_tokenizer([format_question(r) + r["answer"] for r in rows], 8000, tok_dir)
        tokenizer = load_tokenizer(tok_dir)
        model_cfg = ModelConfig(vocab_size=tokenizer.vocab_size, dim=256, n_layers=4, n_heads=4, n_kv_heads=2,
                                multiple_of=64, max_seq_len=2048, init_std=0.1)  # fmt: skip
        special = {"bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id, "pad_token_id": tokenizer.pad_id}
        ckpt = save_pretrained(LlamaModel(model_cfg, seed=0), model_cfg, work / "ckpt", tok_dir, **special)
    client = registry.client(cfg)
    experiment = client.get_experiment_by_name("bench") or client.get_experiment(client.create_experiment("bench"))
    run_id = client.create_run(experiment.experiment_id).info.run_id
    ref = runs.publish_model(
        cfg, "bench-lm", run_id, ckpt, {registry.TAG_KIND: "model", registry.TAG_STAGE: "pretrain"}
    )
    return cfg, ref.uri, ckpt, rows


def write_tasks(work: Path, rows: list[dict], subjects: list[str]) -> Path:
    """One lm-eval task per subject over the same catalog rows (JSON Lines, file order)."""
    from training.evaluate import MC_INSTRUCTION, file_order

    folder = work / "tasks"
    folder.mkdir()
    for subject in subjects:
        for split in ("dev", "test"):
            chosen = sorted((r for r in rows if r["subject"] == subject and r["split"] == split), key=file_order)
            with open(folder / f"{subject}_{split}.jsonl", "w", encoding="utf-8") as fh:
                for r in chosen:
                    doc = {
                        "Question": r["question"],
                        **dict(zip("ABCD", r["choices"], strict=True)),
                        "Answer": r["answer"],
                    }
                    fh.write(json.dumps(doc, ensure_ascii=False) + "\n")
        description = json.dumps(MC_INSTRUCTION.format(subject=subject), ensure_ascii=False)
        (folder / f"lake_cmmlu_{subject}.yaml").write_text(
            TASK_YAML.format(task=f"lake_cmmlu_{subject}", test=folder / f"{subject}_test.jsonl",
                             dev=folder / f"{subject}_dev.jsonl", description=description),
            encoding="utf-8",
        )  # fmt: skip
    return folder


def run_ours(cfg, uri: str, subjects: list[str], limit: int, rounds: int, threads: int):
    import torch

    from training.evaluate import eval_mc, load_model

    torch.set_num_threads(threads)
    lm = load_model(cfg, uri)
    times, cpu, result = [], [], None
    for _ in range(rounds):
        start, start_cpu = time.perf_counter(), time.process_time()
        result = eval_mc(cfg, lm, "eval.cmmlu", "test", subjects=subjects, limit=limit)
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return min(times), min(cpu), result


def run_peer(python: Path, ckpt: Path, tasks_dir: Path, subjects: list[str], args) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHONPATH"))}
    env |= {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONNOUSERSITE": "1",
            "HF_HOME": str(tasks_dir.parent / "hf"), "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
    payload = {"ckpt": str(ckpt), "tasks_dir": str(tasks_dir), "tasks": [f"lake_cmmlu_{s}" for s in subjects],
               "shots": 5, "limit": args.limit, "rounds": args.rounds, "threads": args.threads,
               "batch": args.batch}  # fmt: skip
    out = subprocess.run([str(python), "-c", PEER_SCRIPT, json.dumps(payload)], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"lm-eval failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=8)
    parser.add_argument("--limit", type=int, default=40, help="test items per subject")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16, help="lm-eval batch size")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="an exported model folder with a tokenizer (default: a random model)")  # fmt: skip
    args = parser.parse_args()
    subjects = sorted(p.stem for p in (DATA / "eval/cmmlu/test").glob("*.csv"))[: args.subjects]
    python = ensure_venv()
    with tempfile.TemporaryDirectory(prefix="lake-eval-bench-") as tmp:
        work = Path(tmp)
        cfg, uri, ckpt, rows = setup_lake(work, subjects, args.checkpoint)
        tasks_dir = write_tasks(work, rows, subjects)
        _log(f"{len(subjects)} subjects x {args.limit} items; model {uri}")
        ours_s, ours_cpu, ours = run_ours(cfg, uri, subjects, args.limit, args.rounds, args.threads)
        _log(f"ours: {ours['n']} items in {ours_s:.1f}s, accuracy {ours['accuracy']:.4f}")
        peer = run_peer(python, ckpt, tasks_dir, subjects, args)
    from training.evaluate import file_order

    peer_preds = {task.removeprefix("lake_cmmlu_"): p for task, p in peer["predictions"].items()}
    same = total = peer_correct = 0
    for subject in subjects:
        test_rows = sorted((r for r in rows if r["subject"] == subject and r["split"] == "test"), key=file_order)
        answers = [r["answer"] for r in test_rows][: args.limit]
        mine, theirs = ours["predictions"][subject], peer_preds[subject]
        assert len(mine) == len(theirs) == len(answers), (subject, len(mine), len(theirs), len(answers))
        same += sum(a == b for a, b in zip(mine, theirs, strict=True))
        peer_correct += sum(b == a for a, b in zip(answers, theirs, strict=True))
        total += len(mine)
    n = ours["n"]
    print(json.dumps({
        "benchmark": "eval_mc", "subjects": len(subjects), "items": n, "shots": 5, "threads": args.threads,
        "ours_accuracy": round(ours["accuracy"], 4), "lm_eval_accuracy": round(peer_correct / total, 4),
        "accuracy_diff_points": round(100 * abs(ours["accuracy"] - peer_correct / total), 2),
        "agreement": round(same / total, 4),
        "ours_items_per_s": round(n / ours_s, 2), "lm_eval_items_per_s": round(total / peer["seconds"], 2),
        "ratio": round((n / ours_s) / (total / peer["seconds"]), 2),
        "ours_cpu_s": round(ours_cpu, 1), "lm_eval_cpu_s": round(peer["cpu_seconds"], 1),
        "ratio_cpu": round(peer["cpu_seconds"] / ours_cpu, 2), "load_avg_1m": round(os.getloadavg()[0], 1),
        "model": "random d256x4" if args.checkpoint is None else str(args.checkpoint),
        "method": ours["method"], "peer": "lm-eval 0.4.13 HFLM float32 add_bos_token=True",
    }))  # fmt: skip


if __name__ == "__main__":
    main()
