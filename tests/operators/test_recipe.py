"""Recipe loading: the default recipe, and one-line errors before any data is read."""

from __future__ import annotations

import pytest
import yaml

from operators.base import RecipeError
from operators.ingest import MAX_PAYLOAD_BYTES, iter_warc_records, rows_to_table
from operators.recipe import DEFAULT_RECIPE, load_recipe
from operators.resources_paths import data_dir

ORDER = [
    "url_filter",
    "extract_main_text",
    "line_cleanup",
    "language_id",
    "gopher_quality",
    "c4_quality",
    "fineweb_quality",
    "sensitive_content",
    "pii",
]
OWN = """
name: own
languages: [zh, en]
operators:
  - url_filter: {categories: [gambling], url_words: true}
  - language_id: {}
hard_filters:
  - {name: url_blocked, when: "url_blocked", detail: url_block_reason}
  - {name: empty_text, when: "coalesce(trim(text), '') = ''"}
  - {name: lang_not_kept, when: "coalesce(lang, '') NOT IN $languages", detail: lang}
"""


def write(tmp_path, text: str):
    path = tmp_path / "recipe.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_default_recipe_order_and_filters():
    spec = yaml.safe_load(DEFAULT_RECIPE.read_text())
    assert [next(iter(step)) for step in spec["operators"]] == ORDER
    assert spec["languages"] == ["zh", "en"]
    assert [f["name"] for f in spec["hard_filters"]] == [
        "url_blocked",
        "non_text_payload",
        "empty_extraction",
        "lang_not_kept",
    ]


def test_default_recipe_validates(tmp_path):
    recipe = load_recipe()  # needs every operator of the default recipe to be registered
    assert recipe.max_payload_bytes == MAX_PAYLOAD_BYTES
    assert load_recipe(write(tmp_path, OWN + "max_payload_bytes: 4096\n")).max_payload_bytes == 4096
    assert [op.name for op in recipe.operators] == ORDER
    stages = {f.name: f.stage for f in recipe.decision.hard_filters}
    assert stages["url_blocked"] == "url_filter" and stages["lang_not_kept"] == "language_id"
    assert stages["non_text_payload"] == "ingest"


def test_own_operators_end_to_end(tmp_path):
    recipe = load_recipe(write(tmp_path, OWN))
    assert [op.name for op in recipe.operators] == ["url_filter", "language_id"]
    # WET text is Spanish (es): dropped for language; the clipped WARC record is dropped at ingest.
    rows = list(iter_warc_records(str(data_dir() / "warc" / "cc-2024-22-whirlwind.warc.wet.gz")))
    rows += list(iter_warc_records(str(data_dir() / "warc" / "clipped-truncated-resiliparse.warc.gz")))
    kept, rejected = recipe.decision.split(recipe.apply(rows_to_table(rows)))
    assert kept.num_rows == 0
    assert rejected.select(["reject_stage", "reject_reason", "reject_detail"]).to_pylist()[0] == {
        "reject_stage": "language_id",
        "reject_reason": "lang_not_kept",
        "reject_detail": "lang=es",
    }
    assert rejected.column("reject_reason").to_pylist()[1] == "warc_truncated"


def test_languages_null_keeps_every_language(tmp_path):
    recipe = load_recipe(write(tmp_path, OWN.replace("languages: [zh, en]", "languages: null")))
    assert [f.name for f in recipe.decision.hard_filters] == ["url_blocked", "empty_text"]
    rows = list(iter_warc_records(str(data_dir() / "warc" / "cc-2024-22-whirlwind.warc.wet.gz")))
    kept, _ = recipe.decision.split(recipe.apply(rows_to_table(rows)))
    assert kept.num_rows == 1


@pytest.mark.parametrize(
    "old,new,message",
    [
        ("language_id: {}", "langid: {}", "unknown operator 'langid'"),
        ("language_id: {}", "language_id: {max_char: 10}", "has no option"),
        ("url_words: true", "url_words: 'yes'", "option 'url_words'='yes' is not"),
        ("categories: [gambling]", "categories: [nope]", "no UT1 lists for category 'nope'"),
        ("language_id: {}", "language_id: {model_path: /nonexistent.ftz}", "model not found"),
        ("name: own", "nmae: own", "unknown recipe key"),
        ("NOT IN $languages", "NOT IN $langs", "unknown variable \\$langs"),
        ("NOT IN $languages", "NOT IN [zh, en]", "cannot parse expression"),
        ("coalesce(trim(text), '') = ''", "quality > 1", "column 'quality', which no step writes"),
        ("  - language_id: {}\n", "", "column 'lang', which no step writes"),
        ("languages: [zh, en]", "languages: zh", "'languages' must be a list"),
        ("operators:", "operators: []\nx:", "unknown recipe key"),
        ("languages: [zh, en]", "languages: [zh]\nmax_payload_bytes: 10 MB", "'max_payload_bytes' must be"),
        ("languages: [zh, en]", "languages: [zh]\nmax_payload_bytes: 0", "'max_payload_bytes' must be"),
    ],
)
def test_errors_are_one_line_recipe_errors(tmp_path, old, new, message):
    assert old in OWN
    with pytest.raises(RecipeError, match=message) as exc:
        load_recipe(write(tmp_path, OWN.replace(old, new)))
    assert "\n" not in str(exc.value) and str(exc.value).startswith(str(tmp_path))


def test_unreadable_yaml(tmp_path):
    with pytest.raises(RecipeError, match="recipe.yaml"):
        load_recipe(write(tmp_path, "operators: [\n  - {"))
    with pytest.raises(RecipeError, match="non-empty list"):
        load_recipe(write(tmp_path, "name: x\noperators: {}\n"))
