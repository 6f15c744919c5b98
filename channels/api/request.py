"""One chat request as the API channel understands it, whichever API it came in: OpenAI's or Ollama's. Pure.

:func:`conversation` checks a list of ``{role, content}`` messages (both APIs use that shape) and splits it into
the conversation so far and the customer's question (the last message, which must be the user's). Refusals are
:class:`~channels.errors.RequestRejected` (400/413/422) with a message the client's developer can act on; each
API renders them in its own error shape.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from channels.errors import RequestRejected
from channels.http import require_unicode
from models.envelope import printable

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
MAX_MESSAGES = 200
MAX_USER_CHARS = 128  # OpenAI's ``user``: the end user's id, which names the conversation


@dataclass(frozen=True)
class ChatRequest:
    model: str
    history: tuple[tuple[str, str], ...]  # (role, text) before the question, system messages included
    question: str
    stream: bool
    user: str | None = None  # the client's id for its end user; None: the conversation is named by its opening

    def peer(self) -> str:
        """The conversation's peer: the client's ``user``, else a digest of the conversation's first message, so
        a client that sends the whole conversation each time stays in one conversation (history, stickiness)."""
        if self.user:
            return "u:" + self.user
        first = self.history[0] if self.history else ("user", self.question)
        opening = "\x1f".join((self.model, *first)).encode()
        return "c:" + hashlib.sha256(opening).hexdigest()[:32]


def text_of(content: Any, where: str) -> str:
    """A message's text: a string, or OpenAI's list of ``{"type": "text", "text": …}`` parts (joined)."""
    if isinstance(content, str):
        require_unicode(where, content)
        return printable(content)
    if isinstance(content, list):
        parts: list[str] = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise RequestRejected(400, "unsupported_content", f"{where}: only text parts are supported "
                                      "(images, audio and files are not)")
            parts.append(part["text"])
        return text_of("".join(parts), where)
    raise RequestRejected(400, "invalid_content", f"{where}.content must be a string or a list of text parts")


def conversation(messages: Any, max_chars: int) -> tuple[tuple[tuple[str, str], ...], str]:
    """(the conversation before the question, the question). ``max_chars``: the question's limit (413 above)."""
    if not isinstance(messages, list) or not messages:
        raise RequestRejected(400, "missing_messages", "'messages' must be a non-empty list of {role, content}")
    if len(messages) > MAX_MESSAGES:
        raise RequestRejected(413, "too_many_messages", f"{len(messages)} messages; the limit is {MAX_MESSAGES}")
    turns: list[tuple[str, str]] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise RequestRejected(400, "invalid_message", f"{where} must be an object with 'role' and 'content'")
        role = message.get("role")
        if role not in ROLES:
            raise RequestRejected(400, "unsupported_role", f"{where}.role {role!r} is not supported (use system, "
                                  "user or assistant; tool calls are not supported)")
        turns.append((ROLES[role], text_of(message.get("content", ""), where)))
    role, question = turns[-1]
    if role != "user":
        raise RequestRejected(400, "last_message_not_user", "the last message must be the user's: Kefu answers it")
    question = question.strip()
    if not question:
        raise RequestRejected(422, "empty_question", "the last (user) message has no text")
    if len(question) > max_chars:
        raise RequestRejected(413, "text_too_long", f"the last message is {len(question)} characters; the limit "
                              f"is {max_chars}")
    return tuple(turns[:-1]), question


def model_name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise RequestRejected(400, "missing_model", "'model' is required (GET /v1/models or /api/tags lists them)")
    require_unicode("model", value)
    return value.strip()[:128]


def flag(data: dict[str, Any], name: str, default: bool) -> bool:
    value = data.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise RequestRejected(400, f"invalid_{name}", f"'{name}' must be true or false")
    return value


def end_user(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > MAX_USER_CHARS:
        raise RequestRejected(400, "invalid_user", f"'user' must be a string of at most {MAX_USER_CHARS} characters")
    require_unicode("user", value)
    return value
