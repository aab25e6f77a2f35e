"""Line cleanup: removes boilerplate lines, keeps Chinese and English prose."""

import pyarrow as pa

from operators.cleanup import LineCleanup
from operators.text import data_dir

PAGE = "\n".join(
    [
        "Home | News | Sport | Weather",
        "The council approved the new budget on Tuesday after a long debate.",
        "We use cookies to improve your experience. Read our privacy policy.",
        "Please enable JavaScript to view the comments.",
        "----- * -----",
        "Share",
        "首页 > 财经 > 股票",
        "央行今日宣布下调存款准备金率0.5个百分点，释放长期资金约1万亿元。",
        "版权所有 © 网易公司",
        "分享到",
        "市场人士认为，此举有助于稳定市场预期",
    ]
)


def test_removes_boilerplate_and_counts_it():
    out = LineCleanup()(pa.table({"text": [PAGE]}))
    text = out.column("text")[0].as_py()
    assert text.splitlines() == [
        "The council approved the new budget on Tuesday after a long debate.",
        "央行今日宣布下调存款准备金率0.5个百分点，释放长期资金约1万亿元。",
        "市场人士认为，此举有助于稳定市场预期",
    ]
    assert out.column("cleanup_removed_lines")[0].as_py() == 8
    assert out.column("cleanup_removed_chars")[0].as_py() == len(PAGE) - len(text) - 8  # minus 8 newlines


def test_c4_options_keep_chinese_terminal_punctuation():
    op = LineCleanup(c4_terminal_punct=True, c4_min_words=3)
    page = "央行今日宣布下调存款准备金率。\n他说：“这是好事！”\n短\nNo terminal punctuation\nA fine line."
    text = op.clean(page)[0]
    assert text.splitlines() == ["央行今日宣布下调存款准备金率。", "他说：“这是好事！”", "A fine line."]


def test_chinese_gold_news_is_mostly_untouched():
    root = data_dir() / "web" / "cx-extractor" / "Text"
    texts = [(root / f"{i}.txt").read_bytes().decode("gbk") for i in range(1, 75)]
    out = LineCleanup()(pa.table({"text": texts}))
    removed = sum(out.column("cleanup_removed_chars").to_pylist())
    assert removed / sum(map(len, texts)) < 0.02
    assert out.num_rows == 74
