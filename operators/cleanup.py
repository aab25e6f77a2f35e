"""Line-level boilerplate removal (a modifier: rewrites ``text``, records what it removed).

Default rules are the ones that only hit boilerplate: cookie/privacy/terms lines, "enable javascript" notices,
lines of only punctuation/digits/nav separators, and share/login/navigation labels (en + zh, the lexicon
``operators/lexicons/nav_lines.txt``). This operator, not extraction, owns boilerplate lines. C4's
stricter
line rules (terminal punctuation, >= 3 words) are options, off by default; when on they are CJK-aware: Chinese
lines may end in 。！？…” etc., and each CJK character counts as a word.
"""

from __future__ import annotations

import re

import pyarrow as pa

from operators.base import Operator, Resources, register, with_columns
from operators.lexicon import line_regex
from operators.text import TERMINAL_PUNCT, is_cjk, is_symbol_word, split_words

# matched against the lower-cased line (5x faster than re.IGNORECASE on these alternations)
_POLICY_RE = re.compile(
    r"cookie|privacy policy|privacy notice|terms of (use|service)|terms and conditions|all rights reserved|"
    r"隐私政策|隐私条款|使用条款|服务条款|用户协议|版权所有|版权声明|免责声明"
)
_JS_RE = re.compile(
    r"javascript|enable js|请(启用|开启|打开)\s*javascript|浏览器不支持|your browser (does not|doesn't) support"
)
# whole-line navigation / widget labels (share, login, pagination; en + zh): a lexicon file with its provenance
_NAV_RE = line_regex("nav_lines")
_NAV_SEPARATORS = re.compile(r"\s*[|»›>/·•]\s*")


@register("line_cleanup")
class LineCleanup(Operator):
    input_columns = ("text",)
    output_columns = {
        "text": pa.string(),
        "cleanup_removed_lines": pa.int64(),
        "cleanup_removed_chars": pa.int64(),
    }
    resources = Resources(num_cpus=1, batch_size=1024)

    def __init__(
        self,
        remove_policy: bool = True,
        remove_javascript: bool = True,
        remove_symbol_lines: bool = True,
        remove_nav_lines: bool = True,
        policy_max_chars: int = 400,
        c4_terminal_punct: bool = False,
        c4_min_words: int | None = None,
        lang_column: str = "lang",
    ):
        self.remove_policy, self.remove_javascript = remove_policy, remove_javascript
        self.remove_symbol_lines, self.remove_nav_lines = remove_symbol_lines, remove_nav_lines
        # a long paragraph that mentions cookies is probably an article about cookies: keep it
        self.policy_max_chars = policy_max_chars
        self.c4_terminal_punct, self.c4_min_words = c4_terminal_punct, c4_min_words
        self.lang_column = lang_column

    def drop_line(self, line: str, cjk: bool) -> bool:
        s = line.strip()
        if not s:
            return False  # blank lines are layout, not content: kept and not counted
        if self.remove_symbol_lines and not any(c.isalpha() for c in s):
            return True
        if self.remove_nav_lines and (_NAV_RE.fullmatch(s) or _is_nav_breadcrumb(s)):
            return True
        if len(s) <= self.policy_max_chars and (self.remove_policy or self.remove_javascript):
            lower = s.lower()
            if self.remove_policy and _POLICY_RE.search(lower):
                return True
            if self.remove_javascript and _JS_RE.search(lower):
                return True
        if self.c4_terminal_punct and not s.endswith(TERMINAL_PUNCT if cjk else (".", "!", "?", '"', "'")):
            return True
        if self.c4_min_words is not None:
            words = split_words(s) if cjk else s.split()
            if sum(not is_symbol_word(w) for w in words) < self.c4_min_words:
                return True
        return False

    def clean(self, text: str, lang: str | None = None) -> tuple[str, int, int]:
        cjk = is_cjk(text, lang)
        kept, removed_lines, removed_chars = [], 0, 0
        for line in text.splitlines():
            if self.drop_line(line, cjk):
                removed_lines += 1
                removed_chars += len(line)
            else:
                kept.append(line)
        return "\n".join(kept).strip("\n"), removed_lines, removed_chars

    def apply(self, batch: pa.Table) -> pa.Table:
        texts = batch.column("text").to_pylist()
        has_lang = self.lang_column in batch.column_names
        langs = batch.column(self.lang_column).to_pylist() if has_lang else [None] * len(texts)
        out = [self.clean(t or "", lang) for t, lang in zip(texts, langs, strict=True)]
        return with_columns(
            batch,
            {
                "text": pa.array([o[0] for o in out], type=pa.string()),
                "cleanup_removed_lines": pa.array([o[1] for o in out], type=pa.int64()),
                "cleanup_removed_chars": pa.array([o[2] for o in out], type=pa.int64()),
            },
        )


def _is_nav_breadcrumb(line: str) -> bool:
    """Breadcrumbs ("Home | News | Sport", "首页 > 财经 > 股票"): 3+ short items between separators."""
    parts = [p for p in _NAV_SEPARATORS.split(line) if p]
    return len(parts) >= 3 and len(_NAV_SEPARATORS.findall(line)) >= 2 and all(len(p) <= 12 for p in parts)
