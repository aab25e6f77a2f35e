"""Example configuration files that ``lake init`` writes and ``make demo`` runs on."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

# target file name -> (package, resource); later stages add their examples here
EXAMPLES: dict[str, tuple[str, str]] = {
    "lake.toml": ("lake", "examples/lake.toml"),
    "recipes/web.yaml": ("operators", "recipes/default.yaml"),
    "train/reference.yaml": ("lake", "examples/reference.yaml"),
    "train/mix.yaml": ("lake", "examples/mix.yaml"),
    "train/pretrain.yaml": ("lake", "examples/pretrain.yaml"),
    "train/sft.yaml": ("lake", "examples/sft.yaml"),
    "train/reward.yaml": ("lake", "examples/reward.yaml"),
    "train/dpo.yaml": ("lake", "examples/dpo.yaml"),
    "train/ppo.yaml": ("lake", "examples/ppo.yaml"),
    "train/bon.yaml": ("lake", "examples/bon.yaml"),
}


def write_examples(directory: Path, force: bool = False) -> tuple[list[Path], list[Path]]:
    directory.mkdir(parents=True, exist_ok=True)
    written, kept = [], []
    for name, (package, resource) in EXAMPLES.items():
        target = directory / name
        if target.exists() and not force:
            kept.append(target)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(resources.files(package).joinpath(resource).read_text(encoding="utf-8"), encoding="utf-8")
        written.append(target)
    return written, kept
