"""Re-export: file locks live in ``core.locks`` (the bottom layer)."""

from core.locks import file_lock, first_use_lock, sqlite_path

__all__ = ["file_lock", "first_use_lock", "sqlite_path"]
