"""Error kinds the CLI maps to exit codes: a user's mistake exits 2, an internal failure exits 1."""


class LakeError(Exception):
    """Base of llm-lake's own errors; the message is one line meant for the user."""

    exit_code = 1


class UsageError(LakeError):
    """Bad input from the user: unknown table, malformed SQL, missing file, bad option."""

    exit_code = 2
