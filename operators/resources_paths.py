"""Where local resources (models, blocklists) live: nothing is downloaded at run time (style guide rule 7)."""

from __future__ import annotations

import os
from pathlib import Path


def data_dir() -> Path:
    """Shared data root: env ``LAKE_DATA_DIR``, else ``<repo>/../shared/data``."""
    env = os.environ.get("LAKE_DATA_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"


def resolve(path: str | os.PathLike[str] | None, default: str) -> Path:
    """``path`` when given, else ``default`` relative to the data dir."""
    return Path(path) if path else data_dir() / default
