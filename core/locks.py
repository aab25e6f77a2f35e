"""Inter-process locks on files next to the embedded stores (two first runs into one fresh ``LAKE_HOME``)."""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the duration of the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///…`` URI (None for any other store)."""
    prefix = "sqlite:///"
    return Path(uri[len(prefix) :]) if uri.startswith(prefix) else None


@contextmanager
def first_use_lock(uri: str) -> Iterator[None]:
    """Serialise the first use of an embedded SQLite store: whoever opens it first creates its schema, and two
    processes doing that at once collide (MLflow's migrations, pyiceberg's catalog tables)."""
    database = sqlite_path(uri)
    if database is None:
        yield
        return
    with file_lock(database.with_name(database.name + ".init.lock")):
        yield
