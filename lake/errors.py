"""Re-export: the error kinds live in ``core.errors`` (the bottom layer); the CLI maps them to exit codes."""

from core.errors import LakeError, UsageError

__all__ = ["LakeError", "UsageError"]
