"""OpenAI's chat-completions wire: the request Kefu reads and the JSON it writes. Pure.

Shapes follow OpenAI's API reference (``chat.completion``, ``chat.completion.chunk`` for ``stream: true`` as
server-sent events ending ``data: [DONE]``, ``{"error": {"message", "type", "param", "code"}}``), which is what the
official ``openai`` client parses. Sampling fields (``temperature``, ``top_p``, ``max_tokens``…) are accepted and
ignored: the operator's settings decide how the model samples; ``n`` other than 1 and tools are refused (400).
"""

from __future__ import annotations

import json
from typing import Any

from channels.api.request import ChatRequest, conversation, end_user, flag, model_name
from channels.errors import RequestRejected

_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
          413: "invalid_request_error", 415: "invalid_request_error", 422: "invalid_request_error",
          429: "rate_limit_exceeded", 503: "server_error", 504: "server_error"}


def parse(data: dict[str, Any], max_chars: int) -> tuple[ChatRequest, bool]:
    """The request, and whether the client asked for a final usage chunk (``stream_options.include_usage``)."""
    model = model_name(data.get("model"))
    if data.get("n") not in (None, 1):
        raise RequestRejected(400, "unsupported_n", "only n=1 is supported: Kefu gives one answer per message")
    if data.get("tools") or data.get("functions"):
        raise RequestRejected(400, "unsupported_tools", "tools and function calling are not supported")
    history, question = conversation(data.get("messages"), max_chars)
    stream = flag(data, "stream", False)
    options = data.get("stream_options") or {}
    if not isinstance(options, dict):
        raise RequestRejected(400, "invalid_stream_options", "'stream_options' must be an object")
    usage = flag(options, "include_usage", False)
    return ChatRequest(model, history, question, stream, end_user(data.get("user"))), usage


def error(status: int, code: str, message: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": _TYPES.get(status, "invalid_request_error"), "param": param,
                      "code": code}}


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion(id_: str, created: int, model: str, text: str, finish_reason: str, prompt_tokens: int,
               completion_tokens: int) -> dict[str, Any]:
    return {"id": id_, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                         "finish_reason": finish_reason}],
            "usage": usage(prompt_tokens, completion_tokens)}


def chunk(id_: str, created: int, model: str, delta: dict[str, Any], finish_reason: str | None = None,
          with_usage: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {"id": id_, "object": "chat.completion.chunk", "created": created, "model": model,
                            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}
    if with_usage:
        body["usage"] = None  # OpenAI: null on every chunk but the last when include_usage is set
    return body


def usage_chunk(id_: str, created: int, model: str, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {"id": id_, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [],
            "usage": usage(prompt_tokens, completion_tokens)}


def event(body: dict[str, Any] | str) -> bytes:
    """One server-sent event."""
    data = body if isinstance(body, str) else json.dumps(body, ensure_ascii=False)
    return f"data: {data}\n\n".encode()


def models(names: list[str], created: int) -> dict[str, Any]:
    return {"object": "list",
            "data": [{"id": name, "object": "model", "created": created, "owned_by": "kefu"} for name in names]}
