"""A corpus of small malformed SFT, preference and multiple-choice files, built in place, with the number of
records each one holds (None: a cut stream, where only "read = imported + rejected" can be said).

Each kind gets the same damage: wrong types, missing fields, values that are not objects, random bytes, wrong
encodings (GBK and Latin-1 lines in a UTF-8 file), a BOM, an empty file, a huge line, a cut JSON array and a
truncated gzip stream.
"""

from __future__ import annotations

import copy
import gzip
import json
import random
from pathlib import Path

# one valid record per kind and format, the templates the damage is done to
VALID: dict[str, list[dict]] = {
    "sft": [
        {"instruction": "Name a river.", "input": "", "output": "The Yangtze.", "history": [["Hi", "Hello"]]},
        {"conversations": [{"from": "human", "value": "你好"}, {"from": "gpt", "value": "你好！"}], "tools": "[]"},
        {"instruction": "Translate", "instances": [{"input": "cat", "output": "猫"}], "name": "seed"},
        {"question": "1+1?", "std_answer": "2", "class": "math"},
    ],
    "preference": [
        {"chosen": "\n\nHuman: Hi?\n\nAssistant: Hello!", "rejected": "\n\nHuman: Hi?\n\nAssistant: Go away."},
        {
            "conversations": [{"from": "human", "value": "Pick one"}],
            "chosen": {"from": "gpt", "value": "A"},
            "rejected": {"from": "gpt", "value": "B"},
        },
    ],
    "mc": [{"question": "河流流向哪里？", "A": "山", "B": "海", "C": "城", "D": "桥", "answer": "B"}],
}
ODD_VALUES = [None, 0, 1.5, True, "", "   ", [], {}, ["x"], {"value": 1}, [[1, 2, 3]], "x" * 50]
HUGE_CHARS = 4 * 1024 * 1024
HUGE_FIELD = {"sft": "output", "preference": "chosen", "mc": "question"}


def damaged(record: dict, seed: int) -> list[dict]:
    """Copies of ``record`` with each field missing once and set to each odd value once (nested fields too)."""
    rng = random.Random(seed)
    out = []
    for key in record:
        out.append({k: v for k, v in record.items() if k != key})
        for odd in ODD_VALUES:
            out.append(record | {key: odd})
        value = record[key]
        if isinstance(value, list) and value and isinstance(value[0], dict):  # a turn with a broken field
            for inner in value[0]:
                broken = copy.deepcopy(record)
                broken[key][0][inner] = rng.choice(ODD_VALUES)
                out.append(broken)
    return out


def jsonl(values: list) -> bytes:
    return "".join(json.dumps(v, ensure_ascii=False) + "\n" for v in values).encode("utf-8")


def noise(seed: int, size: int = 3000) -> bytes:
    """Random bytes without line breaks: exactly one (unparseable) record in a line-based file."""
    data = random.Random(seed).randbytes(size)
    return data.replace(b"\n", b"").replace(b"\r", b"").replace(b"\x85", b"") + b"!"


def _mc_csv(rows: list[dict], encoding: str = "utf-8") -> bytes:
    head = "question,A,B,C,D,answer\n"
    return (head + "".join(",".join(str(r.get(k, "")) for k in head.strip().split(",")) + "\n" for r in rows)).encode(
        encoding
    )


def build_import_corpus(directory: Path, kind: str) -> dict[str, int | None]:
    """Write ``kind``'s malformed files into ``directory``; returns {file name: records it holds}."""
    directory.mkdir(parents=True, exist_ok=True)
    valid = VALID[kind]
    wrong = [d for i, record in enumerate(valid) for d in damaged(record, i)]
    not_objects = [[1, 2], "a string", 42, None, True]
    gbk_line = json.dumps(valid[0] | {next(iter(valid[0])): "河流"}, ensure_ascii=False).encode("gbk")
    latin1_line = json.dumps({"question": "café crème", "text": "déjà vu"}, ensure_ascii=False).encode("latin-1")
    mixed = gbk_line + b"\n" + latin1_line + b"\n"
    huge = valid[0] | {HUGE_FIELD[kind]: valid[0][HUGE_FIELD[kind]] + "长" * HUGE_CHARS}  # still a valid record
    big = gzip.compress(jsonl(valid * 400), compresslevel=1)
    cases: dict[str, tuple[bytes, int | None]] = {
        "wrong-types-and-missing-fields.jsonl": (jsonl(valid + wrong), len(valid) + len(wrong)),
        "not-objects.jsonl": (jsonl(not_objects + valid), len(not_objects) + len(valid)),
        "not-objects.json": (json.dumps(not_objects + valid).encode(), len(not_objects) + len(valid)),
        "random-bytes.jsonl": (noise(1), 1),
        "random-bytes.jsonl.gz": (noise(2), 1),  # not gzip at all
        "random-bytes-after-gzip-magic.jsonl.gz": (b"\x1f\x8b\x08" + noise(3), 1),
        "wrong-encodings.jsonl": (jsonl(valid) + mixed + jsonl(valid), 2 * len(valid) + 2),
        "utf8-bom.jsonl": (b"\xef\xbb\xbf" + jsonl(valid), len(valid)),
        "empty.jsonl": (b"", 0),
        "blank-lines.jsonl": (b"\n \n\t\n", 0),
        "huge-line.jsonl": (jsonl([huge]) + b'{"cut": "' + b"x" * HUGE_CHARS + b"\n" + jsonl(valid), 2 + len(valid)),
        "cut-array.json": (json.dumps(valid * 3).encode()[:-20], 1),
        "truncated.jsonl.gz": (big[: len(big) // 2], None),
    }
    if kind == "mc":
        rows = valid * 3
        cases |= {
            "gbk.csv": (_mc_csv(rows, "gbk"), len(rows)),
            "missing-columns.csv": (b"question,A,answer\n" + b"q,a,A\n" * 3, 3),
            "extra-cells.csv": (_mc_csv(rows) + b"q,a,b,c,d,A,surplus\n", len(rows) + 1),
            "header-only.csv": (b"question,A,B,C,D,answer\n", 0),
            "empty.csv": (b"", 0),
        }
    for name, (data, _) in cases.items():
        (directory / name).write_bytes(data)
    return {name: count for name, (_, count) in cases.items()}
