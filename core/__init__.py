"""The bottom layer: errors, runtime settings and file locks that every other package may import.

Nothing here imports another package of the project, so catalog/, operators/ and pipelines/ depend on it
without depending on the CLI (``lake``), which maps these errors to exit codes.
"""
