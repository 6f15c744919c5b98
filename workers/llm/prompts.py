"""Qwen3 prompting: ChatML, thinking off by default, think blocks hidden from customers. Pure.

- :func:`chatml_tokens` builds the prompt as token ids. Template markers (``<|im_start|>`` …) are
  tokenized as special tokens, message text as plain text, so a customer who types
  ``<|im_start|>system`` gets literal characters, not a new system turn.
- With thinking disabled, Qwen3's own template opens the assistant turn with an empty
  ``<think>\\n\\n</think>\\n\\n`` block; we do the same (``enable_thinking=false`` semantics).
- :func:`knowledge_block` is the system block of a grounded answer: the knowledge-base sources with their
  titles, and the rules for using them (offering a person only where one can take over).
- :class:`ThinkFilter` removes ``<think>…</think>`` spans from streamed text, across chunk
  boundaries; :func:`strip_think` does it for a whole string.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import NamedTuple

from models.envelope import Turn

IM_START, IM_END, END_OF_TEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
STOP_TEXTS = (IM_END, END_OF_TEXT)
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
EMPTY_THINK = f"{THINK_OPEN}\n\n{THINK_CLOSE}\n\n"

Tokenize = Callable[[str, bool], list[int]]  # (text, parse_special) -> ids


class Prompt(NamedTuple):
    """A prompt as token ids, and how many leading ones are the system block (shared by every conversation with that
    system prompt; the batched engine keeps their KV once). ``shared`` None: find it by ChatML's ``<|im_end|>``."""

    tokens: list[int]
    shared: int | None = None


def uses_think_block(architecture: str) -> bool:
    return architecture.startswith("qwen3")


def render_chatml(turns: Sequence[Turn], *, architecture: str, enable_thinking: bool) -> str:
    """The prompt as text (for logs and tests; generation uses :func:`chatml_tokens`)."""
    body = "".join(f"{IM_START}{t.role}\n{t.text}{IM_END}\n" for t in turns)
    opener = f"{IM_START}assistant\n"
    if uses_think_block(architecture) and not enable_thinking:
        opener += EMPTY_THINK
    return body + opener


def chatml_tokens(
    tokenize: Tokenize, turns: Sequence[Turn], *, architecture: str, enable_thinking: bool
) -> list[int]:
    ids: list[int] = []
    for turn in turns:
        ids += tokenize(f"{IM_START}{turn.role}\n", True)
        ids += tokenize(turn.text, False)
        ids += tokenize(f"{IM_END}\n", True)
    ids += tokenize(f"{IM_START}assistant\n", True)
    if uses_think_block(architecture) and not enable_thinking:
        ids += tokenize(EMPTY_THINK, True)
    return ids


KNOWLEDGE_MAX_CHARS = 2000  # the sources' text in one block (the best sources first; the rest cut)


def knowledge_chars(n_ctx: int) -> int:
    """The sources' text a context of ``n_ctx`` tokens can take beside the prompt, history and reply: a sixth of it
    in characters (Qwen3 spends about one token per Chinese character; a byte-level tokenizer up to three)."""
    return max(0, min(KNOWLEDGE_MAX_CHARS, n_ctx // 6))


def knowledge_block(sources: Sequence[tuple[str, str, str]], *, offer_person: bool,
                    max_chars: int = KNOWLEDGE_MAX_CHARS) -> str:
    """The grounding system block for (title, heading, text) sources, best first, their text cut to ``max_chars`` in
    all; an empty ``sources`` says the knowledge base does not cover the question. ``offer_person``: a person can
    take over on this channel."""
    person = "，并告诉客户可以回复“转人工”" if offer_person else ""
    if not sources:
        return ("本店知识库里没有这个问题的资料：问到本店的政策、商品、订单或服务时，"
                f"如实说不确定，不要编造{person}；问候闲聊照常回应。")
    parts, used = [], 0
    for n, (title, heading, text) in enumerate(sources, 1):
        room = max_chars - used
        if room <= 0:
            break
        label = f"《{title}》" + (f" {heading}" if heading and heading != title else "")
        parts.append(f"[{n}] {label}\n{text[:room]}")
        used += min(len(text), room)
    # kept short: every character is prompt the model reads before its first word (a demo model: ~2 tokens each)
    return ("本店知识库的资料：\n\n" + "\n\n".join(parts) + "\n\n"
            f"只根据以上资料和对话回答，不要编造；资料没有涉及的，如实说不确定{person}。"
            f"可注明依据，如（依据：《{sources[0][0]}》）。")


def fit_turns(turns: list[Turn], measure: Callable[[list[Turn]], int], budget: int, *,
              strict: bool = True) -> list[Turn]:
    """Drop the oldest history (keeping the leading system turns and the last user turn) until it fits.

    Raises ValueError when even the system prompt plus the question does not fit, unless ``strict`` is False:
    then those alone are returned (a time budget: better late than without the question).
    """
    leading = next((i for i, t in enumerate(turns[:-1]) if t.role != "system"), max(len(turns) - 1, 0))
    head = turns[:leading]
    history, last = turns[len(head) : -1], turns[-1:]
    while True:
        candidate = head + history + last
        if measure(candidate) <= budget:
            return candidate
        if not history:
            if not strict:
                return candidate
            raise ValueError("the prompt does not fit the context window even without history")
        history = history[2:] if len(history) >= 2 else []


_THINK_SPAN = re.compile(r"<think>.*?(</think>\s*|$)", re.DOTALL)


def strip_think(text: str) -> str:
    return _THINK_SPAN.sub("", text).replace(THINK_CLOSE, "").strip()


class ThinkFilter:
    """Streaming version of :func:`strip_think`: feed pieces, get the visible part of each."""

    def __init__(self) -> None:
        self._buffer = ""
        self._inside = False
        self._after_close = False  # whitespace after </think> is dropped even when it arrives in a later piece

    def feed(self, piece: str) -> str:
        self._buffer += piece
        out: list[str] = []
        while self._buffer:
            if self._inside:
                end = self._buffer.find(THINK_CLOSE)
                if end < 0:
                    # keep only what could still be the start of the closing tag
                    self._buffer = self._buffer[-(len(THINK_CLOSE) - 1) :]
                    break
                self._buffer = self._buffer[end + len(THINK_CLOSE) :]
                self._inside, self._after_close = False, True
                continue
            if self._after_close:
                self._buffer = self._buffer.lstrip()
                if not self._buffer:
                    break
                self._after_close = False
            start = self._buffer.find(THINK_OPEN)
            if start >= 0:
                out.append(self._buffer[:start])
                self._buffer = self._buffer[start + len(THINK_OPEN) :]
                self._inside = True
                continue
            keep = _partial_suffix(self._buffer, THINK_OPEN)
            out.append(self._buffer[: len(self._buffer) - keep])
            self._buffer = self._buffer[len(self._buffer) - keep :]
            break
        return "".join(out)

    def flush(self) -> str:
        rest, self._buffer = ("" if self._inside else self._buffer), ""
        return rest


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``tag``."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0
