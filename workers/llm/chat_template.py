"""A GGUF's own chat template (``tokenizer.chat_template``), rendered in a sandbox and tokenized safely. Pure.

For a local model that is not a Qwen3 (a Llama 3, Mistral, Gemma, SmolLM2… GGUF) the prompt is the file's own
template rather than ChatML; Qwen3 keeps its exact ChatML path (:func:`workers.llm.prompts.chatml_tokens`), chosen by
:func:`for_model`.

Guarantees:
- The template runs in jinja2's ``ImmutableSandboxedEnvironment`` (``trim_blocks``, ``lstrip_blocks``, ``loopcontrols``
  as transformers renders it) with ``messages``, ``add_generation_prompt=True``, ``bos_token``, ``eos_token``,
  ``enable_thinking``, ``raise_exception`` and ``strftime_now``; a template cannot reach Python objects or the file
  system.
- The special/plain split of :func:`~workers.llm.prompts.chatml_tokens` holds: each message's content is rendered as a
  unique sentinel, the output is split on the sentinels, the template's own text is tokenized with special tokens
  parsed and each message's text without (a customer typing ``<|eot_id|>`` or ``<|im_start|>system`` gets literal
  characters, never a control token).
- The prompt's text is the template's rendering of the real messages whenever the template does not rewrite
  message text beyond trimming it (trimmed text is inserted trimmed). A template that rewrites it otherwise is logged
  once and gets the text as given.
- Templates that refuse Kefu's conversation shape are tried again in a shape they accept: consecutive turns of one
  role merged into one message, then the system turns folded into the first user message (templates without a
  system role, or that insist on alternating user/assistant turns).
- A prompt says how many of its leading tokens are the system block (the same in every conversation with that
  system prompt): the batched engine shares their KV.

Raises :class:`TemplateError` (a ValueError) when the template does not compile, or no shape renders every message.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from models.envelope import Turn
from workers.llm.prompts import Prompt, Tokenize

log = logging.getLogger(__name__)

PROBE = (Turn("system", "S"), Turn("system", "K"), Turn("user", "Q1"), Turn("assistant", "A1"), Turn("user", "Q2"))
_warned: set[str] = set()


class TemplateError(ValueError):
    """The chat template cannot be used; the message says why."""


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


# a template sees messages as {"role", "content"}; each shape lists, per message, the turns whose texts it carries
Shape = list[tuple[str, list[int]]]


def _as_is(turns: Sequence[Turn]) -> Shape:
    return [(t.role, [i]) for i, t in enumerate(turns)]


def _merged(turns: Sequence[Turn]) -> Shape:
    shape: Shape = []
    for i, t in enumerate(turns):
        if shape and shape[-1][0] == t.role:
            shape[-1][1].append(i)
        else:
            shape.append((t.role, [i]))
    return shape


def _folded(turns: Sequence[Turn]) -> Shape:
    """The system turns put in front of the first user message, then consecutive roles merged."""
    systems = [i for i, t in enumerate(turns) if t.role == "system"]
    rest = [(t.role, [i]) for i, t in enumerate(turns) if t.role != "system"]
    first_user = next((n for n, (role, _) in enumerate(rest) if role == "user"), None)
    if first_user is None:
        return _merged(turns)
    rest[first_user] = ("user", systems + rest[first_user][1])
    shape: Shape = []
    for role, indices in rest:
        if shape and shape[-1][0] == role:
            shape[-1][1].extend(indices)
        else:
            shape.append((role, list(indices)))
    return shape


SHAPES: tuple[Callable[[Sequence[Turn]], Shape], ...] = (_as_is, _merged, _folded)
JOIN = "\n\n"  # between the texts of turns merged into one message


class ChatTemplate:
    """A compiled chat template. ``bos_token``/``eos_token``: the model's texts for them; ``prepend_bos``: a BOS id to
    put first when the model wants one (``tokenizer.ggml.add_bos_token``) and the template did not write it."""

    def __init__(self, source: str, *, bos_token: str = "", eos_token: str = "", prepend_bos: int | None = None,
                 name: str = "model") -> None:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
        env.filters["tojson"] = _tojson
        env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now)
        try:
            self._template = env.from_string(source)
        except jinja2.TemplateError as exc:
            raise TemplateError(f"the chat template does not compile: {exc}") from None
        self.source = source
        self.bos_token, self.eos_token = bos_token, eos_token
        self.prepend_bos = prepend_bos
        self.name = name

    def render(self, messages: Sequence[Mapping[str, str]], **context: Any) -> str:
        """The template's own rendering (add_generation_prompt=True). Raises TemplateError for any failure in it."""
        try:
            return self._template.render(messages=list(messages), add_generation_prompt=True,
                                         bos_token=self.bos_token, eos_token=self.eos_token, **context)
        except TemplateError:
            raise
        except Exception as exc:  # a template's own raise_exception, an undefined name, a type error in it
            raise TemplateError(f"{type(exc).__name__}: {exc}") from None

    def pieces(self, turns: Sequence[Turn], **context: Any) -> list[tuple[str, int | None]]:
        """The prompt as (text, turn index): the template's text with index None, each turn's text with its index.

        Raises TemplateError when no shape (:data:`SHAPES`) renders every turn."""
        reason = "no turns"
        for shape_of in SHAPES:
            shape = shape_of(turns)
            nonce = secrets.token_hex(6)
            marks = {i: f"\u27e6kefu-{nonce}-{i}\u27e7" for i in range(len(turns))}
            messages = [{"role": role, "content": JOIN.join(marks[i] for i in indices)} for role, indices in shape]
            try:
                rendered = self.render(messages, **context)
            except TemplateError as exc:
                reason = str(exc)
                continue
            split = re.split(f"\u27e6kefu-{nonce}-(\\d+)\u27e7", rendered)
            found = {int(index) for index in split[1::2]}
            if found != set(marks):
                reason = f"the template leaves out message(s) {sorted(set(marks) - found)} in shape {shape_of.__name__}"
                continue
            pieces: list[tuple[str, int | None]] = []
            for n, part in enumerate(split):
                if n % 2:
                    pieces.append((turns[int(part)].text, int(part)))
                elif part:
                    pieces.append((part, None))
            return self._faithful(pieces, turns, shape, context)
        raise TemplateError(f"the chat template renders no usable prompt: {reason}")

    def _faithful(self, pieces: list[tuple[str, int | None]], turns: Sequence[Turn], shape: Shape,
                  context: Mapping[str, Any]) -> list[tuple[str, int | None]]:
        """``pieces`` with each turn's text as the template writes it: as given, or trimmed (Llama 3's ``| trim``)."""
        messages = [{"role": role, "content": JOIN.join(turns[i].text for i in indices)} for role, indices in shape]
        try:
            expected = self.render(messages, **context)
        except TemplateError:
            return pieces
        if "".join(text for text, _ in pieces) == expected:
            return pieces
        trimmed = [(text.strip() if index is not None else text, index) for text, index in pieces]
        if "".join(text for text, _ in trimmed) == expected:
            return trimmed
        if self.name not in _warned:
            _warned.add(self.name)
            log.warning("the chat template of %s rewrites message text; Kefu inserts the text as given", self.name)
        return pieces

    def tokens(self, tokenize: Tokenize, turns: Sequence[Turn], **context: Any) -> Prompt:
        """The prompt as token ids: template text with special tokens parsed, turn texts as plain text."""
        ids: list[int] = []
        shared = 0
        system_first = bool(turns) and turns[0].role == "system"
        for text, index in self.pieces(turns, **context):
            ids += tokenize(text, index is None)
            if index == 0 and system_first:
                shared = len(ids)
        if self.prepend_bos is not None and (not ids or ids[0] != self.prepend_bos):
            ids.insert(0, self.prepend_bos)
            shared += 1 if shared else 0
        return Prompt(ids, shared)


def for_model(metadata: Mapping[str, str], architecture: str, *, bos_token: str, eos_token: str,
              bos_id: int | None, name: str) -> ChatTemplate | None:
    """The template to prompt a local model with; None: ChatML (a Qwen3, which keeps its exact ChatML path, or a file
    without a usable template: logged once, with the reason)."""
    if architecture.startswith("qwen3"):
        return None
    source = metadata.get("tokenizer.chat_template")
    if not source:
        log.info("%s (architecture %s) carries no chat template: prompting it with ChatML", name, architecture)
        return None
    add_bos = str(metadata.get("tokenizer.ggml.add_bos_token", "false")).lower() == "true"
    try:
        template = ChatTemplate(source, bos_token=bos_token, eos_token=eos_token,
                                prepend_bos=bos_id if add_bos and bos_id is not None and bos_id >= 0 else None, name=name)
        template.pieces(PROBE)
    except TemplateError as exc:
        log.warning("the chat template of %s cannot be used (%s): prompting it with ChatML", name, exc)
        return None
    log.info("%s (architecture %s): prompting it with its own chat template", name, architecture)
    return template
