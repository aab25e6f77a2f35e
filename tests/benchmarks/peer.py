"""Shared helper for benchmarks that compare llm-lake with datatrove (the peer tool).

datatrove pins ``trafilatura<1.12`` and so cannot live in the project venv (trafilatura 2.x); benchmarks install it
in a venv of their own, outside the project dependencies:

- ``ensure_datatrove_venv()`` creates (or reuses) ``<repo>/.bench/datatrove-venv`` (git-ignored) and returns its
  python executable. Creation is guarded by an ``fcntl`` file lock, so two benchmarks started at once share one
  venv: the second waits for the first, then reuses it. A venv counts as ready only once a marker file is written
  after a successful import check; a half-built one (an interrupted install) is rebuilt.
- ``lid_setup_code(model)`` returns Python source for the generated peer script that points datatrove's fastText
  language ID at a local model file (by default ``../shared/data/models/lid.176.ftz``), so the peer runs offline
  and uses the same language-ID model as the project (stack.md §7, way 2: ``FT176LID.MODEL_URL = "file://…"``).
- ``offline_env(venv_python, cache_dir)`` is the environment for that script: Hugging Face offline, a private
  assets cache (where datatrove copies the lid model), and no user site packages.

Packages (stack.md §7): ``datatrove[processing,io]`` (WarcReader needs warcio from ``io``), ``lxml_html_clean``
(trafilatura 1.11 with lxml 6), ``spacy`` (MinHash word tokenizer; no model download), ``aiohttp`` (only for
datatrove's default lid cache path). Usage::

    from peer import ensure_datatrove_venv, lid_setup_code, offline_env
    py = ensure_datatrove_venv()
    subprocess.run([str(py), "script.py"], env=offline_env(py, tmp / "hf"), check=True)
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BENCH_DIR = REPO / ".bench"
VENV_DIR = BENCH_DIR / "datatrove-venv"
PACKAGES = ("datatrove[processing,io]", "lxml_html_clean", "spacy", "aiohttp")
# The import check run after installing: every module the peer pipelines load.
IMPORT_CHECK = (
    "import datatrove, warcio, trafilatura, fasttext, lxml_html_clean, spacy, aiohttp; "
    "from datatrove.executor import LocalPipelineExecutor; "
    "from datatrove.pipeline.readers import WarcReader; "
    "from datatrove.pipeline.extractors import Trafilatura; "
    "from datatrove.pipeline.filters import LanguageFilter, GopherQualityFilter; "
    "from datatrove.utils.lid import FT176LID; "
    "print(datatrove.__version__ if hasattr(datatrove, '__version__') else 'ok')"
)
READY_MARKER = ".ready"
DEFAULT_LID_MODEL = REPO.parent / "shared" / "data" / "models" / "lid.176.ftz"


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _log(message: str) -> None:
    print(f"[peer] {message}", file=sys.stderr, flush=True)


def _check(python: Path) -> str | None:
    """The import check's output, or None when it fails."""
    result = subprocess.run([str(python), "-c", IMPORT_CHECK], capture_output=True, text=True, timeout=300)
    return result.stdout.strip() if result.returncode == 0 else None


def ensure_datatrove_venv(venv: Path = VENV_DIR, packages: tuple[str, ...] = PACKAGES) -> Path:
    """Create or reuse the datatrove venv; returns its python executable.

    Safe to call from several processes at once (exclusive ``fcntl`` lock on ``<venv>.lock``). The first call
    takes ~1 minute (pip from PyPI); later calls cost one import check (~2 s). Raises ``RuntimeError`` with pip's
    output when the install or the import check fails.
    """
    venv = Path(venv)
    venv.parent.mkdir(parents=True, exist_ok=True)
    python = _venv_python(venv)
    with open(venv.parent / f"{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        marker = venv / READY_MARKER
        if marker.exists() and python.exists() and marker.read_text().strip() == " ".join(packages):
            if _check(python) is not None:
                return python
            _log(f"{venv} fails its import check: reinstalling")
        t0 = time.perf_counter()
        _log(f"creating {venv} with {' '.join(packages)} (about a minute)")
        steps = [  # venv from a venv's python makes a venv of the base interpreter, as `python3 -m venv` would
            [sys.executable, "-m", "venv", "--clear", str(venv)],
            [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *packages],
        ]
        for cmd in steps:
            result = subprocess.run(cmd, capture_output=True, text=True)
            if result.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
        version = _check(python)
        if version is None:
            result = subprocess.run([str(python), "-c", IMPORT_CHECK], capture_output=True, text=True)
            raise RuntimeError(f"datatrove venv import check failed:\n{result.stderr[-3000:]}")
        marker.write_text(" ".join(packages) + "\n")
        _log(f"datatrove {version} ready in {time.perf_counter() - t0:.0f} s")
        return python


def lid_setup_code(model: Path = DEFAULT_LID_MODEL) -> str:
    """Python source (for a generated peer script) that makes datatrove's ``ft176`` language ID load ``model``.

    datatrove has no argument for a local model path; its ``FT176LID`` "downloads" ``MODEL_URL`` into the
    huggingface_hub assets cache, and a ``file://`` URL is simply copied there. Run the code before building the
    pipeline (and at import time of the script, so that spawned worker processes see it too).
    """
    model = Path(model).resolve()
    if not model.exists():
        raise FileNotFoundError(f"language-ID model not found: {model}")
    return f"from datatrove.utils.lid import FT176LID\nFT176LID.MODEL_URL = {model.as_uri()!r}\n"


def offline_env(venv_python: Path, cache_dir: Path) -> dict[str, str]:
    """Environment for a peer script: no network lookups, a private HF assets cache, venv isolation."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"))}
    cache_dir = Path(cache_dir)
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_HOME=str(cache_dir),
        HF_ASSETS_CACHE=str(cache_dir / "assets"),
        PYTHONNOUSERSITE="1",
        PATH=f"{Path(venv_python).parent}{os.pathsep}{env.get('PATH', '')}",
        # one thread per process: the executor already runs one task per core
        OMP_NUM_THREADS="1",
        OPENBLAS_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
    )
    return env


if __name__ == "__main__":
    print(ensure_datatrove_venv())
