"""The Anthropic Messages API (``POST /v1/messages``) on top of the chat backend, translated by litellm.

- ``to_chat(body, model)``: an Anthropic Messages request (JSON) as an OpenAI chat request, and the
  map of tool names litellm shortened (OpenAI allows 64 characters); translated by litellm's
  ``AnthropicAdapter`` (the adapter behind ``litellm.anthropic.messages`` for providers without a
  native Messages API). Raises ``HTTPError`` 400 for a request litellm cannot translate.
- ``to_message(completion, tool_names)``: the backend's ``chat.completion`` JSON as an Anthropic
  ``message``, by the same adapter.
- ``message_events(message, extra)``: that message as the server-sent events of a streamed answer
  (``message_start``, per content block ``content_block_start``/``_delta``/``_stop``, ``message_delta``,
  ``message_stop``), as the Anthropic API sends them; ``extra`` (evolve's totals) rides on
  ``message_delta``.

litellm is imported on the first Messages request (``evolve.models``: seconds, never at import).
"""

from __future__ import annotations

import json
from typing import Any

from evolve.gateway.sse import event
from evolve.gateway.wire import HTTPError


def _adapter() -> Any:
    from evolve.models import _litellm

    _litellm()  # configured once: local price map, no debug banners
    from litellm.llms.anthropic.messages.adapters.transformation import AnthropicAdapter

    return AnthropicAdapter()


def to_chat(body: dict, model: str) -> tuple[dict, dict[str, str]]:
    """(OpenAI chat request, shortened tool name -> original name) for an Anthropic Messages ``body``.
    ``stream`` is dropped (the gateway decides how to answer). Raises HTTPError 400."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise HTTPError(400, "invalid_request", "'messages' is required: a non-empty list of messages")
    kwargs = {k: v for k, v in body.items() if k not in ("stream", "model")}
    try:
        request, tool_names = _adapter().translate_completion_input_params_with_tool_mapping(
            {**kwargs, "model": model})
    except Exception as e:  # noqa: BLE001 - litellm raises ValueError, KeyError, TypeError, pydantic errors
        raise HTTPError(400, "invalid_request",
                        f"the Messages request could not be translated: {type(e).__name__}: {e}") from None
    if not request:
        raise HTTPError(400, "invalid_request", "the Messages request could not be translated")
    request = {k: v for k, v in dict(request).items() if k not in ("stream", "stream_options")}
    return json.loads(json.dumps(request, default=str)), dict(tool_names or {})


def to_message(completion: dict, tool_names: dict[str, str]) -> dict:
    """The Anthropic ``message`` JSON for an OpenAI ``chat.completion`` JSON."""
    from litellm import ModelResponse

    message = _adapter().translate_completion_output_params(ModelResponse(**completion), tool_names or None)
    raw = message.model_dump() if hasattr(message, "model_dump") else dict(message or {})
    return json.loads(json.dumps(raw, default=str))


def _block_events(index: int, block: dict) -> list[bytes]:
    kind = block.get("type")
    if kind == "text":
        start, delta = {"type": "text", "text": ""}, {"type": "text_delta", "text": block.get("text") or ""}
    elif kind == "tool_use":
        start = {"type": "tool_use", "id": block.get("id"), "name": block.get("name"), "input": {}}
        delta = {"type": "input_json_delta", "partial_json": json.dumps(block.get("input") or {})}
    elif kind == "thinking":
        start, delta = {"type": "thinking", "thinking": ""}, {"type": "thinking_delta",
                                                               "thinking": block.get("thinking") or ""}
    else:  # a block without deltas (redacted thinking, server tools): sent whole
        start, delta = block, None
    out = [event({"type": "content_block_start", "index": index, "content_block": start}, "content_block_start")]
    if delta is not None:
        out.append(event({"type": "content_block_delta", "index": index, "delta": delta}, "content_block_delta"))
    if kind == "thinking" and block.get("signature"):
        out.append(event({"type": "content_block_delta", "index": index,
                          "delta": {"type": "signature_delta", "signature": block["signature"]}},
                         "content_block_delta"))
    out.append(event({"type": "content_block_stop", "index": index}, "content_block_stop"))
    return out


def message_events(message: dict, extra: dict | None = None) -> bytes:
    """An Anthropic ``message`` as the events of a streamed answer."""
    usage = dict(message.get("usage") or {})
    start = {**message, "content": [], "stop_reason": None, "stop_sequence": None,
             "usage": {**usage, "output_tokens": 0}}
    out = [event({"type": "message_start", "message": start}, "message_start")]
    for i, block in enumerate(message.get("content") or []):
        if isinstance(block, dict):
            out.extend(_block_events(i, block))
    delta = {"type": "message_delta", "delta": {"stop_reason": message.get("stop_reason"),
                                                "stop_sequence": message.get("stop_sequence")},
             "usage": {"output_tokens": usage.get("output_tokens", 0)}, **(extra or {})}
    out.append(event(delta, "message_delta"))
    out.append(event({"type": "message_stop"}, "message_stop"))
    return b"".join(out)
