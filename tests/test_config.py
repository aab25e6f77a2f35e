"""One reader of ``data_dir``: lake.toml's setting reaches the operators' resource paths; the environment wins."""

from __future__ import annotations

import os

from core.config import load_config, publish
from operators import resources_paths, text


def _data_dir_with_stop_words(root, words):
    folder = root / "lexicons" / "stopwords" / "en"
    folder.mkdir(parents=True)
    (folder / "gopher_stopwords.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    return root


def test_lake_toml_data_dir_reaches_operators_and_env_overrides_it(tmp_path, monkeypatch):
    for name in ("LAKE_DATA_DIR", "LAKE_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    ours = _data_dir_with_stop_words(tmp_path / "mydata", ["alpha", "beta"])
    (tmp_path / "lake.toml").write_text('[lake]\ndata_dir = "mydata"\n', encoding="utf-8")
    monkeypatch.chdir(tmp_path)

    assert resources_paths.data_dir() == text.data_dir() == ours.resolve()
    assert resources_paths.resolve(None, "blocklists/ut1") == ours.resolve() / "blocklists" / "ut1"
    assert text.load_stop_words.__wrapped__("en") == {"alpha", "beta"}, "an operator's lexicon comes from lake.toml"

    other = _data_dir_with_stop_words(tmp_path / "envdata", ["gamma"])
    monkeypatch.setenv("LAKE_DATA_DIR", str(other))
    assert text.load_stop_words.__wrapped__("en") == {"gamma"}, "the environment overrides the file"


def test_a_config_file_named_on_the_command_line_is_published_to_later_readers(tmp_path, monkeypatch):
    for name in ("LAKE_DATA_DIR", "LAKE_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    ours = _data_dir_with_stop_words(tmp_path / "cfg" / "data", ["delta"])
    (tmp_path / "cfg" / "elsewhere.toml").write_text('[lake]\ndata_dir = "data"\n', encoding="utf-8")
    monkeypatch.chdir(tmp_path)  # no ./lake.toml here: only --config names the file
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    publish(load_config(tmp_path / "cfg" / "elsewhere.toml"))  # what `lake --config cfg/elsewhere.toml` does
    try:
        assert resources_paths.data_dir() == ours.resolve()
        assert os.environ["LAKE_DATA_DIR"] == str(ours.resolve()), "Ray workers inherit it"
    finally:  # publish() set it behind monkeypatch's back: drop it, and monkeypatch restores any earlier value
        os.environ.pop("LAKE_DATA_DIR", None)
