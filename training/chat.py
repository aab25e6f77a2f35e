"""Conversations -> token ids with an answer mask, for SFT and reward models; padding and packing into batches.

The template (``TemplateConfig``, part of every SFT/reward config and tagged on the registered model):

- ``style: roles`` (default) uses the tokenizer's role tokens, one turn each::

      <s><|system|>\\n{system}<|end|>\\n<|user|>\\n{question}<|end|>\\n<|assistant|>\\n{answer}</s>

  The role tokens are single ids that raw text never splits, so a turn boundary is never ambiguous.
- ``style: text`` is the seed's ``<bos>【USER】：…【BOT】：…<eos>`` shape with configurable markers encoded as
  ordinary text (useful with a tokenizer without role tokens, or to match an existing chat model)::

      <s>【SYSTEM】：{system}【USER】：{question}【BOT】：{answer}</s>【USER】：…【BOT】：…</s>

Either way every assistant answer ends with EOS (``</s>``): the answer tokens and that EOS are the only ones in the
loss (``mask == 1``), so a trained model learns to stop by emitting EOS, and a multi-turn conversation trains on
every answer (the seed's multi-turn shape, as in Baichuan/ChatGLM). Everything else (BOS, markers, system, user
turns) is context only. ``function_call`` turns render as assistant turns (the model writes them, so they are
trained), ``observation`` turns as user turns (tool output is input to the model).

Each piece is encoded separately and concatenated, so the mask is exact (no offset mapping), which the lossless
tokenizer (no dummy prefix, identity normalisation) makes equal to encoding the whole string. A role token's text
inside user or answer content (``"<|user|>"`` typed by someone) is escaped to its UTF-8 byte pieces, so content
can never forge a turn.

Packing (``pack_rows``): several short examples share one row; positions restart at 0 for each example and the
attention mask is block-diagonal causal (``training.model.block_causal_mask``), so no example attends to another
and each sees exactly the positions it would see alone: the loss equals the unpacked loss (tested).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from training.losses import IGNORE_INDEX
from training.tokenizer import FIRST_BYTE_ID, ROLE_IDS, ROLE_TOKENS, Tokenizer

# catalog roles -> template roles (tool calls are written by the model; tool output is input to it)
ROLE_OF = {"system": "system", "user": "user", "assistant": "assistant", "function_call": "assistant",
           "observation": "user"}  # fmt: skip
STYLES = ("roles", "text")


@dataclass(kw_only=True)
class TemplateConfig:
    style: str = "roles"  # roles: <|user|>\n…<|end|>\n tokens | text: the seed's 【USER】：…【BOT】：… markers
    system_prefix: str = "【SYSTEM】："  # text style markers
    user_prefix: str = "【USER】："
    assistant_prefix: str = "【BOT】："
    system_prompts: dict[str, str] = field(default_factory=dict)  # category -> system prompt (examples without one)
    default_system: str | None = None  # system prompt for examples with neither a system turn nor a listed category

    def problems(self) -> list[str]:
        found = []
        if self.style not in STYLES:
            found.append(f"template.style: {self.style!r} is not one of {', '.join(STYLES)}")
        if self.style == "text" and not (self.user_prefix and self.assistant_prefix):
            found.append("template.user_prefix and template.assistant_prefix must not be empty")
        return found


@dataclass
class Encoded:
    """One example: token ids and the answer mask (1 = in the loss), same length."""

    ids: list[int]
    mask: list[int]

    def __len__(self) -> int:
        return len(self.ids)


class ChatTemplate:
    """Renders message lists with a ``TemplateConfig`` and a tokenizer; ``encode`` returns ``Encoded`` or the
    reason the example is skipped (``no_assistant_turn``, ``empty_answer``, ``too_long``)."""

    def __init__(self, cfg: TemplateConfig, tokenizer: Tokenizer) -> None:
        self.cfg = cfg
        self.tok = tokenizer
        self._escape = {i: [FIRST_BYTE_ID + b for b in ROLE_TOKENS[name].encode()] for name, i in ROLE_IDS.items()}
        if cfg.style == "roles":
            self._open = {role: tokenizer.encode(f"{ROLE_TOKENS[role]}\n") for role in ("system", "user", "assistant")}
            self._close = tokenizer.encode(f"{ROLE_TOKENS['end']}\n")
        else:
            prefixes = {"system": cfg.system_prefix, "user": cfg.user_prefix, "assistant": cfg.assistant_prefix}
            self._open = {role: tokenizer.encode(text) for role, text in prefixes.items()}
            self._close = []

    def content(self, text: str) -> list[int]:
        """Content ids with role-token ids escaped to their bytes (content cannot open or close a turn)."""
        ids = self.tok.encode(text)
        if not any(i in self._escape for i in ids):
            return ids
        return [b for i in ids for b in self._escape.get(i, (i,))]

    def with_system(self, messages: Sequence[dict], category: str | None = None) -> list[dict]:
        """Messages with the configured system prompt first, unless the example brings its own."""
        messages = list(messages)
        if messages and messages[0]["role"] == "system":
            return messages
        system = self.cfg.system_prompts.get(category or "", self.cfg.default_system)
        return [{"role": "system", "content": system}, *messages] if system else messages

    def encode(
        self, messages: Sequence[dict], category: str | None = None, max_len: int | None = None
    ) -> Encoded | str:
        """The whole conversation, BOS first; the answers (and the EOS after each) masked in."""
        messages = self.with_system(messages, category)
        roles = [ROLE_OF.get(m["role"], "user") for m in messages]
        if "assistant" not in roles:
            return "no_assistant_turn"
        ids, mask = [self.tok.bos_id], [0]
        for message, role in zip(messages, roles, strict=True):
            text = message["content"] or ""
            if role == "assistant":
                if not text.strip():
                    return "empty_answer"
                answer = self.content(text) + [self.tok.eos_id]
                ids += self._open[role]
                mask += [0] * len(self._open[role])
                ids += answer
                mask += [1] * len(answer)
            else:
                turn = self._open[role] + self.content(text) + self._close
                ids += turn
                mask += [0] * len(turn)
        if max_len is not None and len(ids) > max_len:
            return "too_long"
        return Encoded(ids, mask)

    def prompt(self, messages: Sequence[dict], category: str | None = None) -> list[int]:
        """Ids that ask for the next answer: the conversation so far, then an open assistant turn."""
        ids = [self.tok.bos_id]
        for message in self.with_system(messages, category):
            role = ROLE_OF.get(message["role"], "user")
            if role == "assistant":
                ids += self._open[role] + self.content(message["content"]) + [self.tok.eos_id]
            else:
                ids += self._open[role] + self.content(message["content"]) + self._close
        return ids + self._open["assistant"]

    def encode_pair(
        self, prompt: Sequence[dict], chosen: str, rejected: str, max_len: int | None = None
    ) -> tuple[list[int], list[int], int] | str:
        """A preference pair as two full conversations (prompt + answer + EOS) and how many leading prompt turns
        were dropped to fit ``max_len`` (the reward reads the answer in the context of the latest turns), or the
        reason it is skipped (``chosen_equals_rejected``, ``empty_answer``, ``no_prompt``, ``too_long``: even the
        last prompt turn and the answer do not fit)."""
        if (chosen or "").strip() == (rejected or "").strip():
            return "chosen_equals_rejected"
        if not (chosen or "").strip() or not (rejected or "").strip():
            return "empty_answer"
        if not prompt:
            return "no_prompt"
        for dropped in range(len(prompt)):
            if dropped and ROLE_OF.get(prompt[dropped]["role"]) == "assistant":
                continue  # the kept context starts with a user (or system) turn
            pair = [self.encode([*prompt[dropped:], {"role": "assistant", "content": a}]) for a in (chosen, rejected)]
            if max_len is None or max(len(e) for e in pair) <= max_len:
                return pair[0].ids, pair[1].ids, dropped
        return "too_long"


# ---- batches -----------------------------------------------------------------------------------------------------
@dataclass
class LMBatch:
    """input_ids/labels [B, T]; position_ids only for packed rows (then the attention is block-causal)."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    position_ids: torch.Tensor | None = None
    n_tokens: int = 0  # tokens that are not padding (what a tokens/s figure counts)

    def to(self, device: torch.device) -> LMBatch:
        pos = None if self.position_ids is None else self.position_ids.to(device)
        return LMBatch(self.input_ids.to(device), self.labels.to(device), pos, self.n_tokens)


def labels_of(example: Encoded) -> list[int]:
    return [i if m else IGNORE_INDEX for i, m in zip(example.ids, example.mask, strict=True)]


def pad_rows(examples: Sequence[Encoded], pad_id: int) -> LMBatch:
    """One example per row, right-padded to the longest (causal attention never sees the pads on the right)."""
    width = max(len(e) for e in examples)
    ids = np.full((len(examples), width), pad_id, dtype=np.int64)
    labels = np.full((len(examples), width), IGNORE_INDEX, dtype=np.int64)
    for row, example in enumerate(examples):
        ids[row, : len(example)] = example.ids
        labels[row, : len(example)] = labels_of(example)
    return LMBatch(torch.from_numpy(ids), torch.from_numpy(labels), None, sum(len(e) for e in examples))


def pack_rows(examples: Sequence[Encoded], seq_len: int, pad_id: int) -> list[LMBatch]:
    """Greedy packing in the given order: each row takes examples until the next would overflow ``seq_len``.

    Returns one single-row ``LMBatch`` per packed row (the caller groups rows into batches); positions restart at
    0 per example, and the padding tail is its own block, so ``block_causal_mask`` isolates every example.
    """
    rows, current, used = [], [], 0
    for example in examples:
        if current and used + len(example) > seq_len:
            rows.append(current)
            current, used = [], 0
        current.append(example)
        used += len(example)
    if current:
        rows.append(current)
    batches = []
    for row in rows:
        ids = [i for e in row for i in e.ids]
        labels = [lab for e in row for lab in labels_of(e)]
        positions = [p for e in row for p in range(len(e))]
        tail = seq_len - len(ids)
        batch = LMBatch(
            torch.tensor([ids + [pad_id] * tail]),
            torch.tensor([labels + [IGNORE_INDEX] * tail]),
            torch.tensor([positions + list(range(tail))]),
            len(ids),
        )
        batches.append(batch)
    return batches


def stack_rows(rows: Sequence[LMBatch]) -> LMBatch:
    """Packed single-row batches (same width) into one batch."""
    batch = LMBatch(
        torch.cat([r.input_ids for r in rows]),
        torch.cat([r.labels for r in rows]),
        torch.cat([r.position_ids for r in rows]),
        sum(r.n_tokens for r in rows),
    )
    return batch


def pad_pairs(pairs: Sequence[tuple[list[int], list[int]]], pad_id: int) -> torch.Tensor:
    """Preference pairs as one right-padded batch [2B, T]: every chosen row, then every rejected row (one
    forward, then ``.chunk(2)``, as TRL does)."""
    seqs = [p[0] for p in pairs] + [p[1] for p in pairs]
    width = max(len(s) for s in seqs)
    ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
    for row, seq in enumerate(seqs):
        ids[row, : len(seq)] = seq
    return torch.from_numpy(ids)
