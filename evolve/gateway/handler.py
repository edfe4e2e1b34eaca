"""Answering requests: each becomes ``(HTTP status, JSON bytes)``, counted in the ledger and traced.

- ``key_ok``: whether a request's API keys may pass (the task's token, or none at all).
- ``chat``: a counted chat (or Anthropic Messages, translated) request's whole body, validated (a JSON
  object, non-empty ``messages``, ``stream`` a boolean) and forwarded to the backend without ``stream``:
  200 with the completion plus ``"evolve"`` totals (USD, requests), as JSON or as server-sent events
  (``stream: true``), or an error answer. Backend errors map to 400 ``context_window_exceeded``
  (ContextWindowError), 400 ``invalid_request`` (RequestError), 502 ``upstream_error`` (UpstreamError;
  infra), 502 ``model_error`` (ModelError; fatal), 500 ``gateway_error`` (anything else; infra).
- ``reject``: a counted request that is invalid (body, framing, route, method); its full trace line keeps
  only an excerpt (``EXCERPT_BYTES``) of what was sent.
- ``refuse``: a request ``Ledger.admit`` refused (403, 503): a summary line, or past the cap a count.
Nothing here raises for a bad request or a failing backend.
"""

from __future__ import annotations

import hmac
import json
import logging
from typing import Any

from evolve.errors import ContextWindowError, ModelError, RequestError, UpstreamError
from evolve.gateway import messages, sse
from evolve.gateway.limits import Ledger
from evolve.gateway.trace import EXCERPT_BYTES, TraceWriter, summary_record, trace_record
from evolve.gateway.wire import HTTPError, error_body, json_bytes
from evolve.models import ModelBackend

log = logging.getLogger(__name__)

JSON = "application/json"
SSE = "text/event-stream"


class CallHandler:
    """Turns requests into answers for one task: ``backend`` answers, ``ledger`` counts, ``trace`` records."""

    def __init__(self, backend: ModelBackend, ledger: Ledger, trace: TraceWriter, token: str | None = None) -> None:
        self.backend, self.ledger, self.trace = backend, ledger, trace
        self.limits = ledger.limits
        self.token = token
        self.bridge_ready = False
        """Whether the loopback bridge announced itself (``GET /health`` with ``X-Evolve-Bridge``)."""

    def models_payload(self) -> dict:
        return {"object": "list", "data": [{"id": self.backend.model, "object": "model",
                                            "created": 0, "owned_by": "evolve"}]}

    def refuse(self, seq: int, start: float, refusal: HTTPError, request_bytes: int) -> tuple[int, bytes]:
        """Answer a request ``admit`` refused: (status, JSON body)."""
        data = json_bytes(error_body(refusal.kind, refusal.message))
        self.trace.record(summary_record(call=seq, start=start, status=refusal.status, model=self.backend.model,
                                         request_bytes=request_bytes, response_bytes=len(data),
                                         error={"type": refusal.kind, "message": refusal.message}),
                          counted=False)
        return refusal.status, data

    def reject(self, seq: int, start: float, error: HTTPError, excerpt: bytes,
               request_bytes: int) -> tuple[int, bytes]:
        """Answer a counted request that is invalid: (status, JSON body)."""
        self.ledger.count_error()
        data = json_bytes(error_body(error.kind, error.message))
        err = {"type": error.kind, "message": error.message}
        full = trace_record(call=seq, start=start, status=error.status, model=self.backend.model,
                            request=excerpt[:EXCERPT_BYTES].decode("utf-8", "replace"), response=None, error=err)
        full["request_bytes"] = request_bytes
        self.trace.record(summary_record(call=seq, start=start, status=error.status, model=self.backend.model,
                                         request_bytes=request_bytes, response_bytes=len(data), error=err),
                          full)
        return error.status, data

    def key_ok(self, keys: list[str]) -> bool:
        """Whether a request carrying the API keys ``keys`` (from ``Authorization: Bearer`` and
        ``x-api-key``) may go on: without a task token, or without any key, yes; else every key must be
        the task's token."""
        if self.token is None:
            return True
        return all(hmac.compare_digest(k.encode(), self.token.encode()) for k in keys)

    def chat(self, seq: int, start: float, raw: bytes, api: str = "chat") -> tuple[int, bytes, str]:
        """Answer one counted request whose whole body is ``raw``: (HTTP status, body, content type).

        ``api`` is ``"chat"`` (OpenAI chat completions) or ``"messages"`` (Anthropic Messages,
        translated to a chat request and back, ``evolve.gateway.messages``). ``"stream": true`` gets
        the same call, answered as server-sent events (``evolve.gateway.sse``)."""
        try:
            body = _decode(raw)
            if api == "messages":
                if not isinstance(body, dict):
                    raise HTTPError(400, "invalid_request", "the request body must be a JSON object")
                _stream_flag(body)
                request, tool_names = messages.to_chat(body, self.backend.model)
            else:
                request, tool_names = _validate(body), {}
            stream = _stream_flag(body)
        except HTTPError as e:
            status, data = self.reject(seq, start, e, raw, len(raw))
            return status, data, JSON
        forwarded = {k: v for k, v in request.items() if k not in ("stream", "stream_options")}
        pt = ct = 0
        cost = 0.0
        answer: bytes | None = None
        try:
            self.ledger.begin_call()
            try:
                completion = self._forward(forwarded)
                pt, ct, cost = completion.prompt_tokens, completion.completion_tokens, completion.cost_usd
                totals = self.ledger.charge(pt, ct, cost)
                payload = dict(completion.response)
                payload["evolve"] = totals
                answer = self._render(api, stream, body, completion.response, tool_names, totals)
            finally:
                self.ledger.end_call()
            status, error = 200, None
        except Exception as e:  # noqa: BLE001 - every request gets an answer and a trace line
            if not isinstance(e, HTTPError):
                log.exception("gateway: unexpected error while handling a call")
                text = f"{type(e).__name__}: {e}"
                self.ledger.infra(f"gateway: {text}")
                e = HTTPError(500, "gateway_error", f"internal gateway error: {text}")
            self.ledger.count_error()
            status, payload, error = e.status, error_body(e.kind, e.message), {"type": e.kind, "message": e.message}
            answer = None
        data = answer if answer is not None else json_bytes(payload)
        model = self.backend.model
        extra = {} if api == "chat" else {"api": api}

        def full() -> dict:
            return {**trace_record(call=seq, start=start, status=status, model=model,
                                   request=request if api == "chat" else {**request, "stream": stream},
                                   response=payload if status == 200 else None, error=error, prompt_tokens=pt,
                                   completion_tokens=ct, cost_usd=cost), **extra}

        self.trace.record({**summary_record(call=seq, start=start, status=status, model=model,
                                            request_bytes=len(raw), response_bytes=len(data), error=error,
                                            prompt_tokens=pt, completion_tokens=ct, cost_usd=cost), **extra},
                          full, size_hint=len(raw) + len(data))
        return status, data, (SSE if stream and status == 200 else JSON)

    @staticmethod
    def _render(api: str, stream: bool, body: dict, response: dict, tool_names: dict[str, str],
                totals: dict) -> bytes:
        """The answer's bytes for a successful call, in the shape the request asked for."""
        if api == "messages":
            message = messages.to_message(response, tool_names)
            if stream:
                return messages.message_events(message, {"evolve": totals})
            return json_bytes({**message, "evolve": totals})
        if stream:
            options = body.get("stream_options")
            include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
            return sse.chat_events(response, include_usage, {"evolve": totals})
        return json_bytes({**response, "evolve": totals})

    def _forward(self, body: dict) -> Any:
        """Call the backend, turning its errors into HTTP answers and recording them."""
        try:
            return self.backend.complete(body)
        except ContextWindowError as e:
            raise HTTPError(400, "context_window_exceeded", str(e)) from None
        except RequestError as e:
            raise HTTPError(400, "invalid_request", str(e)) from None
        except UpstreamError as e:
            self.ledger.infra(f"upstream: {e}")
            raise HTTPError(502, "upstream_error", str(e)) from None
        except ModelError as e:
            self.ledger.set_fatal(e)
            raise HTTPError(502, "model_error", str(e)) from None
        except Exception as e:  # noqa: BLE001 - a gateway bug must not kill the server thread
            log.exception("gateway: backend %r raised", self.backend)
            text = f"{type(e).__name__}: {e}"
            self.ledger.infra(f"gateway: {text}")
            raise HTTPError(500, "gateway_error", f"internal gateway error: {text}") from None


def _decode(raw: bytes | None) -> Any:
    def no_constants(name: str) -> Any:
        raise ValueError(f"{name} is not valid JSON")

    try:
        return json.loads(raw or b"", parse_constant=no_constants)
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise HTTPError(400, "invalid_request", f"the request body is not valid JSON: {e}") from None


def _validate(body: Any) -> dict:
    """The body if it is a chat request evolve serves. Raises HTTPError 400."""
    if not isinstance(body, dict):
        raise HTTPError(400, "invalid_request", "the request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise HTTPError(400, "invalid_request", "'messages' is required: a non-empty list of chat messages")
    _stream_flag(body)
    return body


def _stream_flag(body: dict) -> bool:
    """The request's ``stream``: absent, null, true or false. Raises HTTPError 400 for anything else."""
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise HTTPError(400, "invalid_request", f"'stream' must be true or false, not {json.dumps(stream)[:40]}")
    return bool(stream)
