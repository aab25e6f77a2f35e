"""Where local resources (models, blocklists) live: nothing is downloaded at run time (style guide rule 7)."""

from __future__ import annotations

import os
from pathlib import Path

from core.config import data_dir

__all__ = ["data_dir", "resolve"]


def resolve(path: str | os.PathLike[str] | None, default: str) -> Path:
    """``path`` when given, else ``default`` relative to the configured data dir (``core.config.data_dir``)."""
    return Path(path) if path else data_dir() / default
