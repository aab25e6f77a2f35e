"""``lake import KIND PATH... --table NS.TABLE``: bring curated corpora into the catalog.

Each KIND has one converter from a parsed record (see ``pipelines.files``) to zero or more table rows, or a
``Reject`` with a stable reason. The driver accounts for every record (read = imported + rejected + already
present), writes rows and rejects in one idempotent append each, and records the run in ``lake.runs``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import PurePosixPath

import pyarrow as pa
from tqdm import tqdm

from catalog.runs import record_run
from catalog.schemas import IMPORT_KINDS, rejects_table_for, schema_for
from catalog.store import Lakehouse, parse_identifier
from core.errors import UsageError
from pipelines.files import RAW_SNIPPET_CHARS, Reject, check_inputs, file_digest, iter_records

Row = dict
Converted = list[Row] | Reject


def _sha1(*parts: str) -> str:
    return hashlib.sha1("\x1f".join(parts).encode("utf-8")).hexdigest()


def _clean(value) -> str:
    return value.strip() if isinstance(value, str) else ""


# ---- text ---------------------------------------------------------------------------------------------------
def convert_text(value: dict | str, context: dict) -> Converted:
    if isinstance(value, str):
        text, title, fmt = value, None, "txt"
    else:
        text = value.get("text", value.get("content"))
        if not isinstance(text, str):
            return Reject("no_text_field", f"keys: {sorted(value)[:10]}")
        title, fmt = value.get("title"), context["format"]
    if not text.strip():
        return Reject("empty_text")
    # doc_id is set from the record's identity by the import loop
    return [{"doc_id": None, "text": text, "title": title if isinstance(title, str) else None, "source_format": fmt}]


# ---- sft ----------------------------------------------------------------------------------------------------
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
    "function_call": "function_call",
    "observation": "observation",
    "function": "observation",
    "tool": "observation",
}


def _message(role: str, content: str) -> dict:
    return {"role": role, "content": content}


def _sft_row(messages: list[dict], fmt: str, tools: str | None = None, category: str | None = None) -> Row:
    return {
        "example_id": _sha1(json.dumps(messages, ensure_ascii=False), tools or ""),
        "messages": messages,
        "tools": tools,
        "category": category,
        "source_format": fmt,
    }


def _non_text(value: dict, *names: str) -> Reject | None:
    """A field that is present but not a string is a reject that says so: dropping or coercing it would import
    a different example than the file holds."""
    for name in names:
        if value.get(name) is not None and not isinstance(value[name], str):
            return Reject("non_text_field", f"{name} is {type(value[name]).__name__}: {value[name]!r}"[:200])
    return None


def _is_text_pair(turn) -> bool:
    return isinstance(turn, list | tuple) and len(turn) == 2 and all(isinstance(t, str) for t in turn)


def _sharegpt_messages(turns) -> list[dict] | Reject:
    if not isinstance(turns, list) or not turns:
        return Reject("empty_conversation")
    messages = []
    for turn in turns:
        if not isinstance(turn, dict):
            return Reject("malformed_turn", f"turn is {type(turn).__name__}")
        role = SHAREGPT_ROLES.get(str(turn.get("from", turn.get("role", ""))).lower())
        content = turn.get("value", turn.get("content"))
        if role is None or not isinstance(content, str):
            return Reject("malformed_turn", f"turn keys {sorted(turn)}; role {turn.get('from', turn.get('role'))!r}")
        messages.append(_message(role, content))
    return messages


def convert_sft(value: dict | str, context: dict) -> Converted:
    if not isinstance(value, dict):
        return Reject("not_an_object")
    if "conversations" in value or "messages" in value:  # ShareGPT / OpenAI messages
        messages = _sharegpt_messages(value.get("conversations", value.get("messages")))
        if isinstance(messages, Reject):
            return messages
        if isinstance(value.get("system"), str) and value["system"].strip():
            messages.insert(0, _message("system", value["system"]))
        if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
            return Reject("no_assistant_turn")
        tools = value.get("tools")
        return [
            _sft_row(messages, "sharegpt", tools if isinstance(tools, str) else json.dumps(tools) if tools else None)
        ]
    if "instruction" in value and "output" in value:  # Alpaca
        if bad := _non_text(value, "instruction", "input", "output", "system"):
            return bad
        prompt = "\n\n".join(p for p in (_clean(value["instruction"]), _clean(value.get("input"))) if p)
        if not prompt:
            return Reject("empty_prompt")
        if not _clean(value["output"]):
            return Reject("empty_output")
        history = value.get("history") or []
        if not isinstance(history, list) or not all(_is_text_pair(turn) for turn in history):
            return Reject("malformed_turn", f"history is not a list of [prompt, response] texts: {history!r}"[:200])
        messages = [_message("system", value["system"])] if _clean(value.get("system")) else []
        for prompt_turn, response_turn in history:
            messages += [_message("user", prompt_turn), _message("assistant", response_turn)]
        messages += [_message("user", prompt), _message("assistant", value["output"])]
        return [_sft_row(messages, "alpaca")]
    if "instruction" in value and "instances" in value:  # self-instruct seed tasks (BELLE)
        if bad := _non_text(value, "instruction", "name"):
            return bad
        if not isinstance(value["instances"] or [], list):
            return Reject("malformed_turn", f"instances is {type(value['instances']).__name__}, not a list")
        rows = []
        for inst in value["instances"] or []:
            if isinstance(inst, dict) and (bad := _non_text(inst, "input", "output")):
                return bad
            if not isinstance(inst, dict) or not _clean(inst.get("output")):
                continue
            prompt = "\n\n".join(p for p in (_clean(value["instruction"]), _clean(inst.get("input"))) if p)
            rows.append(
                _sft_row(
                    [_message("user", prompt), _message("assistant", inst["output"])],
                    "self_instruct",
                    category=value.get("name"),
                )
            )
        return rows or Reject("empty_output", "no instance with an output")
    if "question" in value and "std_answer" in value:  # BELLE eval set
        if bad := _non_text(value, "question", "std_answer"):
            return bad
        if not _clean(value["question"]):
            return Reject("empty_prompt")
        if not _clean(value["std_answer"]):
            return Reject("empty_output", "BELLE item without a reference answer")
        category = re.sub(r"\s+", " ", str(value.get("class") or "")).strip() or None  # 'closed\xa0qa'
        messages = [_message("user", value["question"]), _message("assistant", value["std_answer"])]
        return [_sft_row(messages, "belle", category=category)]
    return Reject("unrecognized_sft_format", f"keys: {sorted(value)[:10]}")


# ---- preference ---------------------------------------------------------------------------------------------
HH_TURN = re.compile(r"\n\n(Human|Assistant):")
HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def _split_hh(chosen: str, rejected: str) -> tuple[str, str, str] | None:
    """(prompt, chosen response, rejected response) of two HH-RLHF transcripts.

    The prompt is the longest common prefix cut at its last ``Assistant:`` turn (TRL's rule), so pairs whose
    transcripts diverge before the final turn keep the divergent turns in their responses instead of being lost.
    """
    common = os.path.commonprefix([chosen, rejected])
    marks = [m for m in HH_TURN.finditer(common) if m.group(1) == "Assistant"]
    if not marks:
        return None
    cut = marks[-1].end()
    return chosen[:cut], chosen[cut:].strip(), rejected[cut:].strip()


def _hh_messages(prompt: str) -> list[dict]:
    parts = HH_TURN.split(prompt)
    # parts: [preamble, role, text, role, text, ...]; the last role is the empty Assistant turn to be answered
    messages = [_message(HH_ROLES[parts[i]], parts[i + 1].strip()) for i in range(1, len(parts) - 1, 2)]
    return [m for m in messages if m["content"]]


def convert_preference(value: dict | str, context: dict) -> Converted:
    if not isinstance(value, dict):
        return Reject("not_an_object")
    chosen, rejected = value.get("chosen"), value.get("rejected")
    if isinstance(chosen, str) and isinstance(rejected, str):  # HH-RLHF transcripts
        split = _split_hh(chosen, rejected)
        if split is None:
            return Reject("no_assistant_turn")
        prompt, fmt = _hh_messages(split[0]), "hh_rlhf"
        chosen, rejected = split[1], split[2]
    elif isinstance(chosen, dict) and isinstance(rejected, dict):  # LLaMA-Factory DPO demo
        prompt = _sharegpt_messages(value.get("conversations"))
        if isinstance(prompt, Reject):
            return prompt
        chosen, rejected, fmt = chosen.get("value"), rejected.get("value"), "sharegpt_dpo"
        if not isinstance(chosen, str) or not isinstance(rejected, str):
            return Reject("malformed_turn", "chosen/rejected without a text value")
    else:
        return Reject("unrecognized_preference_format", f"keys: {sorted(value)[:10]}")
    if not chosen.strip() and not rejected.strip():
        return Reject("empty_response")
    if chosen.strip() == rejected.strip():
        return Reject("chosen_equals_rejected")
    pair_id = _sha1(json.dumps(prompt, ensure_ascii=False), chosen, rejected)
    return [{"pair_id": pair_id, "prompt": prompt, "chosen": chosen, "rejected": rejected, "source_format": fmt}]


# ---- multiple choice ----------------------------------------------------------------------------------------
SPLITS = {"dev", "val", "valid", "validation", "test", "train"}


def convert_mc(value: dict | str, context: dict) -> Converted:
    if not isinstance(value, dict):
        return Reject("not_an_object")
    fields = {str(k).strip().lower(): v for k, v in value.items() if k is not None}
    question = fields.get("question")
    choices = [fields.get(letter) for letter in "abcd"]
    answer = _clean(fields.get("answer")).upper()
    if not _clean(question) or any(c is None for c in choices):
        return Reject("missing_field", f"columns: {sorted(fields)[:10]}")
    if answer not in ("A", "B", "C", "D"):
        return Reject("bad_answer", f"answer {answer!r} is not one of A-D")
    path = PurePosixPath(context["uri"])
    subject, split = path.name.split(".")[0], path.parent.name if path.parent.name in SPLITS else None
    for suffix in ("dev", "val", "test", "train"):  # C-Eval names files subject_split.csv
        if subject.endswith(f"_{suffix}"):
            subject, split = subject.removesuffix(f"_{suffix}"), suffix
    item_id = _sha1(subject, question, *[str(c) for c in choices])
    return [
        {
            "item_id": item_id,
            "subject": subject,
            "split": split,
            "question": question,
            "choices": [str(c) for c in choices],
            "answer": answer,
        }
    ]


CONVERTERS: dict[str, Callable[[dict | str, dict], Converted]] = {
    "text": convert_text,
    "sft": convert_sft,
    "preference": convert_preference,
    "mc": convert_mc,
}


# ---- driver -------------------------------------------------------------------------------------------------
@dataclass
class ImportReport:
    table: str
    read: int = 0
    imported: int = 0
    rejected: int = 0
    already_present: int = 0
    reasons: Counter = field(default_factory=Counter)
    snapshot_id: int | None = None
    run_id: str = ""

    def summary(self) -> str:
        line = f"{self.read} read, {self.imported} imported, {self.rejected} rejected"
        if self.already_present:
            line += f", {self.already_present} already present"
        return line

    def as_dict(self) -> dict:
        return {
            "table": self.table,
            "read": self.read,
            "imported": self.imported,
            "rejected": self.rejected,
            "already_present": self.already_present,
            "reasons": dict(self.reasons),
            "snapshot_id": self.snapshot_id,
            "run_id": self.run_id,
        }


def import_files(lake: Lakehouse, kind: str, paths: Iterable[str], table: str, progress: bool = True) -> ImportReport:
    """Import ``paths`` as ``kind`` rows into ``table``; rejects go to the namespace's ``rejects`` table."""
    if kind not in CONVERTERS:
        raise UsageError(f"unknown import kind {kind!r}; one of: {', '.join(CONVERTERS)}")
    parse_identifier(table)
    if table.split(".", 1)[1] in ("rejects", "runs"):
        raise UsageError(f"{table} is a bookkeeping table; import into another name")
    uris = check_inputs(list(paths))
    lake.ensure_table(table, IMPORT_KINDS[kind])
    rejects_table = rejects_table_for(table)
    lake.ensure_table(rejects_table, "rejects")

    report = ImportReport(table=table, run_id=uuid.uuid4().hex)
    started = datetime.now(UTC)
    rows: list[Row] = []
    rejects: list[Row] = []
    inputs = []
    converter = CONVERTERS[kind]
    for uri in tqdm(uris, desc=f"import {kind}", unit="file", disable=not progress or len(uris) < 2):
        digest = file_digest(uri)
        inputs.append({"uri": uri, "digest": digest})
        context = {"uri": uri, "format": uri.rsplit(".", 1)[-1]}
        lineage = {"input_uri": uri, "input_digest": digest, "ingested_at": started, "run_id": report.run_id}
        for key, value in iter_records(uri):
            report.read += 1
            result = value if isinstance(value, Reject) else converter(value, context)
            if isinstance(result, Reject):
                report.reasons[result.reason] += 1
                raw = result.raw or (
                    value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
                )
                rejects.append(
                    {
                        "stage": f"import_{kind}",
                        "reason": result.reason,
                        "detail": result.detail,
                        "target_table": table,
                        "raw": raw[:RAW_SNIPPET_CHARS],
                        "record_key": key,
                        **lineage,
                    }
                )
                continue
            for n, row in enumerate(result):
                row.update(lineage, record_key=key if len(result) == 1 else f"{key}.{n}")
                if "doc_id" in row:  # one id per record: a repeated text is a second document, which dedup labels
                    row["doc_id"] = _sha1(digest, row["record_key"])
                rows.append(row)

    table_schema = schema_for(IMPORT_KINDS[kind])
    written = lake.append(
        table, pa.Table.from_pylist(rows, schema=table_schema), snapshot_properties={"lake.run_id": report.run_id}
    )
    rejected = lake.append(
        rejects_table,
        pa.Table.from_pylist(rejects, schema=schema_for("rejects")),
        snapshot_properties={"lake.run_id": report.run_id},
    )
    report.imported = written.written
    report.rejected = len(rejects)
    report.already_present = written.offered - written.written
    report.snapshot_id = written.snapshot_id or lake.resolve_snapshot(table, None)
    counts = report.as_dict() | {"rejects_written": rejected.written}
    record_run(
        lake,
        command=f"import {kind}",
        target_table=table,
        run_id=report.run_id,
        started_at=started,
        inputs=inputs,
        counts=counts,
        snapshot_id=report.snapshot_id,
    )
    return report
