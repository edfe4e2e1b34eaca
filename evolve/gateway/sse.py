"""Server-sent events for a streamed chat answer (``"stream": true``), as the OpenAI API sends them.

The gateway answers a streamed request once the model call has ended (the backend's call is
the same one as for any request: traced, counted and limited alike), then sends the whole answer
as events in one HTTP body (``Content-Type: text/event-stream``):

- ``chat_events(completion, include_usage, extra)``: per choice a ``chat.completion.chunk`` with
  the message as its ``delta`` (``role``, ``content``, ``tool_calls`` with their ``index``), then one
  with its ``finish_reason``; with ``include_usage`` (``stream_options.include_usage``, as in the
  OpenAI API) a last chunk with ``"choices": []`` and ``usage``; ``extra`` (evolve's totals) goes
  in the last chunk; then ``data: [DONE]``.
- ``event(data, name)``: one event's bytes.

So a client sees the first token only when the whole answer is ready: streaming here changes
the framing, not the timing.
"""

from __future__ import annotations

from typing import Any

from evolve.gateway.wire import json_bytes

DONE = b"data: [DONE]\n\n"


def event(data: Any, name: str | None = None) -> bytes:
    """One server-sent event: ``event: NAME`` (if any) and ``data: <JSON>``."""
    head = f"event: {name}\n".encode() if name else b""
    return head + b"data: " + json_bytes(data) + b"\n\n"


def _delta(message: dict) -> dict:
    delta: dict[str, Any] = {"role": message.get("role") or "assistant"}
    if message.get("content") is not None:
        delta["content"] = message["content"]
    for key in ("reasoning_content", "refusal"):
        if message.get(key):
            delta[key] = message[key]
    calls = message.get("tool_calls")
    if isinstance(calls, list) and calls:
        delta["tool_calls"] = [{"index": i, **{k: v for k, v in call.items() if k != "index"}}
                               for i, call in enumerate(calls) if isinstance(call, dict)]
    return delta


def chat_events(completion: dict, include_usage: bool, extra: dict | None = None) -> bytes:
    """A ``chat.completion`` (OpenAI JSON) as the events of a streamed answer, ``[DONE]`` included."""
    head = {"id": completion.get("id") or "chatcmpl-evolve", "object": "chat.completion.chunk",
            "created": completion.get("created") or 0, "model": completion.get("model") or ""}
    if completion.get("system_fingerprint"):
        head["system_fingerprint"] = completion["system_fingerprint"]
    chunks: list[dict] = []
    for i, choice in enumerate(completion.get("choices") or []):
        index = choice.get("index", i)
        chunks.append({**head, "choices": [{"index": index, "delta": _delta(choice.get("message") or {}),
                                            "logprobs": None, "finish_reason": None}]})
        chunks.append({**head, "choices": [{"index": index, "delta": {}, "logprobs": None,
                                            "finish_reason": choice.get("finish_reason") or "stop"}]})
    if include_usage:
        chunks.append({**head, "choices": [], "usage": completion.get("usage")})
    if not chunks:
        chunks.append({**head, "choices": []})
    if extra:
        chunks[-1] = {**chunks[-1], **extra}
    return b"".join(event(c) for c in chunks) + DONE
