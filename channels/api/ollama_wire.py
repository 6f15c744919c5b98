"""Ollama's chat and generate wire: the requests Kefu reads and the JSON it writes. Pure.

As Ollama's API docs (docs/api.md of ollama/ollama) describe them: ``stream`` defaults to true and streams
newline-delimited JSON objects, the last with ``"done": true``, ``done_reason`` and the counts and durations (in
nanoseconds); errors are ``{"error": "…"}`` with the HTTP status. ``/api/generate`` with an empty prompt only
"loads the model" in Ollama: Kefu answers it at once, ``done_reason`` ``load``. ``options`` (temperature…),
``format``, ``keep_alive`` and ``images`` other than empty are accepted or refused as OpenAI's wire does.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from channels.api.request import ChatRequest, conversation, flag, model_name, text_of
from channels.errors import RequestRejected

VERSION = "0.6.0"  # the Ollama API version Kefu answers /api/version with (the shapes it serves)


def parse_chat(data: dict[str, Any], max_chars: int) -> ChatRequest:
    model = model_name(data.get("model"))
    if data.get("tools"):
        raise RequestRejected(400, "unsupported_tools", "tools are not supported")
    history, question = conversation(data.get("messages"), max_chars)
    return ChatRequest(model, history, question, flag(data, "stream", True))


def parse_generate(data: dict[str, Any], max_chars: int) -> ChatRequest | None:
    """The request; None for an empty prompt (Ollama's "load the model")."""
    model = model_name(data.get("model"))
    if data.get("images"):
        raise RequestRejected(400, "unsupported_content", "images are not supported")
    prompt = text_of(data.get("prompt") or "", "prompt").strip()
    if not prompt:
        return None
    if len(prompt) > max_chars:
        raise RequestRejected(413, "text_too_long", f"the prompt is {len(prompt)} characters; the limit is {max_chars}")
    system = text_of(data.get("system") or "", "system").strip()
    history = (("system", system),) if system else ()
    return ChatRequest(model, history, prompt, flag(data, "stream", True))


def now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def error(message: str) -> dict[str, Any]:
    return {"error": message}


def piece(model: str, text: str, *, chat: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "created_at": now(), "done": False}
    if chat:
        body["message"] = {"role": "assistant", "content": text}
    else:
        body["response"] = text
    return body


def final(model: str, text: str, *, chat: bool, done_reason: str, total_ns: int, prompt_tokens: int,
          completion_tokens: int) -> dict[str, Any]:
    """The last object (``text``: the whole answer when not streaming, else "")."""
    body = piece(model, text, chat=chat)
    body.update(done=True, done_reason=done_reason, total_duration=total_ns, load_duration=0,
                prompt_eval_count=prompt_tokens, prompt_eval_duration=0, eval_count=completion_tokens,
                eval_duration=total_ns)
    if not chat:
        body["context"] = []
    return body


def line(body: dict[str, Any]) -> bytes:
    return (json.dumps(body, ensure_ascii=False) + "\n").encode()


def tags(names: list[str]) -> dict[str, Any]:
    stamp = now()
    return {"models": [{"name": name, "model": name, "modified_at": stamp, "size": 0, "digest": "",
                        "details": {"format": "gguf", "family": "", "families": None, "parameter_size": "",
                                    "quantization_level": ""}} for name in names]}
