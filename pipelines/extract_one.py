"""The extraction path for a single page, as ``lake extract`` shows it: same operators as ingest, no catalog."""

from __future__ import annotations

import gzip

from core.errors import UsageError
from operators.base import RecipeError
from operators.ingest import decode_html, rows_to_table
from operators.recipe import DEFAULT_RECIPE, load_recipe

LABEL_SKIP = {"html", "text", "title", "reject_reason", "reject_detail"}


def extract_page(payload: bytes, url: str | None = None, recipe_path: str | None = None, gzipped: bool = False) -> dict:
    if gzipped or payload[:2] == b"\x1f\x8b":
        try:
            payload = gzip.decompress(payload)
        except (OSError, EOFError) as exc:
            raise UsageError(f"cannot decompress input: {exc}") from None
    if not payload.strip():
        raise UsageError("empty input")
    try:
        recipe = load_recipe(recipe_path or DEFAULT_RECIPE)
    except RecipeError as exc:
        raise UsageError(f"recipe: {exc}") from None
    html, charset = decode_html(payload)
    row = {
        "url": url,
        "source_uri": "-",
        "source_offset": 0,
        "content_type": "text/html",
        "charset": charset,
        "html": html,
        "text": None,
        "payload_bytes": len(payload),
    }
    batch = recipe.apply(rows_to_table([row]))
    out = batch.to_pylist()[0]
    labels = {k: v for k, v in out.items() if k not in LABEL_SKIP and v is not None}
    return {
        "url": url,
        "title": out.get("title"),
        "text": out.get("text") or "",
        "lang": out.get("lang"),
        "labels": labels,
    }
