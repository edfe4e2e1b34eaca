"""The per-task model gateway: OpenAI chat completions on a unix socket.

A harness runs in a container without network. Its only way out is the
gateway's unix socket, bind-mounted read-only into the container. The gateway runs on the
host, forwards each call through a ``ModelBackend`` (which holds the API keys;
nothing secret is ever sent to the container), enforces the task's limits and
appends every request to a JSONL trace: the record of model calls, independent
of what the harness logs.

A harness cannot flood it. Per task (``evolve.config.Limits``):

- Every request counts toward ``max_calls``, valid or not: a chat call, a body
  that is not JSON or has no messages, streaming, an oversize body, a malformed
  request line or headers, a wrong path or method. Only ``GET /health`` and
  ``GET /v1/models`` without a body are free (neither counted nor traced).
  Once a limit is used up, every further request gets 403 ``limit_exceeded``,
  decided before its body is read; the body is only thrown away (at most
  ``DISCARD_MAX_BYTES`` within ``DISCARD_S``, nothing at all from a client
  waiting for ``100 Continue``), never parsed or kept.
- A body over ``max_request_bytes`` gets 413 and is never held in memory: a
  Content-Length over the cap is refused before reading, a chunked body is read
  only up to the cap.
- At most ``max_connections`` connections are served at once, one thread each.
  One more connection takes the place of a keep-alive connection idle for
  ``IDLE_REAP_S`` or more (closing it); if there is none and no connection
  closes within ``ADMIT_WAIT_S`` it gets 429 ``too_many_connections``, without
  its request being read, and is closed. No thread is started for it.
- The trace holds full lines up to ``max_trace_bytes``. Past that each counted
  request gets one summary line (under ``SUMMARY_LINE_BYTES``) and requests
  refused without being counted get none; they are tallied in a note at close,
  as are connections turned away (never traced one by one). So the file stays
  under ``max_trace_bytes`` plus ``max_calls`` summary lines plus two notes.
  It is appended to, never read back.

HTTP API (all bodies JSON):

``POST /v1/chat/completions`` (also ``/chat/completions``)
    An OpenAI chat request; ``messages`` is required, ``stream: true`` is
    refused, ``model`` is ignored (the gateway's backend decides). 200 returns
    the OpenAI ``chat.completion`` plus a key ``"evolve"``:
    ``{"cost_usd", "total_cost_usd", "calls", "remaining_calls"}`` (USD;
    requests counted toward ``max_calls`` so far, and left).
    Errors are ``{"error": {"type", "message", "code"}}`` with status
     400 ``invalid_request`` (bad JSON, no messages, streaming, a malformed request line, headers
         or body framing, rejected by the provider),
     400 ``context_window_exceeded`` (code ``context_length_exceeded``),
     403 ``limit_exceeded`` (a task limit is used up; not 429, which clients retry),
     414, 431 ``invalid_request`` (a request line over 64 KiB, a header block over
         ``MAX_HEADER_BYTES``; the connection is closed),
     413 ``request_too_large`` (the body is over ``max_request_bytes``; the message gives
         the cap; the connection is closed),
     429 ``too_many_connections`` (over ``max_connections``; sent as the connection is accepted,
         within ``ADMIT_WAIT_S``, which is then closed: retry after an answer comes back),
     502 ``upstream_error`` (the provider kept failing; the task is labelled infra),
     502 ``model_error`` (bad key or unknown model; the evaluation stops),
     500 ``gateway_error`` (a bug; the task is labelled infra),
     503 ``gateway_closed`` (the task is over).
``GET /v1/models`` (also ``/models``)
    ``{"object": "list", "data": [{"id": <backend model>, "object": "model"}]}``.
``GET /health``
    ``{"ok": true}``.
Anything else
    404 ``not_found`` (no such path) or 405 ``method_not_allowed`` (a known path, another
    method); counted like any request.

Trace lines (JSON, one per line). A counted request while the trace is under its cap::

    {"call": n, "ts": ISO-8601 UTC, "latency_s": seconds, "status": http_status,
     "model": backend model, "request": the JSON body, "response": the JSON returned on
     success or null, "error": {"type", "message"} or null,
     "usage": {"prompt_tokens", "completion_tokens"}, "cost_usd": USD}

An invalid request's line has the same keys plus ``request_bytes``, and its
``request`` is only an excerpt of the raw body (its first ``EXCERPT_BYTES`` bytes, decoded with replacement; for a
malformed request, of the request line); ``request_bytes`` is the body's size in
bytes (as declared by Content-Length when the body was not read). A summary line
(past the cap, or for a request refused without being counted)::

    {"call", "ts", "latency_s", "status", "model", "summarized": true,
     "request_bytes": bytes, "response_bytes": bytes, "error": {"type", "message" (cut)} or null,
     "usage": {"prompt_tokens", "completion_tokens"}, "cost_usd": USD}

Notes, without ``call``: ``{"note": "trace_cap_reached", "ts", "max_trace_bytes",
"message"}`` once, where full lines stop, and at close, if anything went
untraced, ``{"note": "not_traced", "ts", "refused_requests", "refused_connections",
"message"}``.

``call`` numbers requests (all but the free GETs) in arrival order from 1;
lines are written in completion order.
"""

from __future__ import annotations

import datetime as _dt
import http.client
import http.server
import json
import logging
import os
import socket
import socketserver
import stat
import sys
import threading
import time
from http import HTTPStatus
from pathlib import Path
from typing import Any, Iterator

from evolve.config import Limits
from evolve.errors import ContextWindowError, InfraError, ModelError, RequestError, UpstreamError
from evolve.models import ModelBackend
from evolve.types import Usage

log = logging.getLogger(__name__)

IDLE_TIMEOUT_S = 3600.0
"""Seconds an idle keep-alive connection is kept open (a harness may run tests for long between calls)."""
IDLE_REAP_S = 1.0
"""Seconds a connection must have been idle before a new connection over ``limits.max_connections``
closes it to take its place."""
ADMIT_WAIT_S = 0.25
"""Seconds a connection over ``limits.max_connections`` waits for one to close (a client that closes a
connection and opens the next may be a moment ahead of the server) before it gets 429."""
DRAIN_S = 30.0
"""Seconds ``close()`` waits by default for calls still in flight, so their usage is counted."""
DISCARD_MAX_BYTES = 64 * 1024 * 1024
"""Bytes of an unwanted request body (refused, oversize, misrouted) read and thrown away so that the
client gets to read the answer; a longer body is cut off by closing the connection."""
DISCARD_S = 5.0
"""Seconds spent at most reading and throwing away one unwanted body."""
MAX_HEADER_BYTES = 64 * 1024
"""Bytes of a request's header block (all header lines); more gets 431, so headers cannot be used to
make the gateway hold megabytes either."""
EXCERPT_BYTES = 1024
"""Bytes of an invalid request's raw body (or request line) kept in its trace line."""
SUMMARY_LINE_BYTES = 1024
"""Upper bound of a summary trace line, in bytes (the error message is cut to fit)."""
_MESSAGE_BYTES = 300  # UTF-8 bytes of an error message kept in a summary line
_QUOTE_CHARS = 200  # characters of a request's path or method quoted in an error message
_PIECE = 64 * 1024  # bytes read at a time from a request body
_CHAT_ROUTES = ("/v1/chat/completions", "/chat/completions")
_FREE_ROUTES = ("/health", "/v1/models", "/models")
_SUN_PATH_MAX = 100  # Linux allows 107 bytes plus NUL; stay clear of it


class _HTTPError(Exception):
    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message


def _error_body(kind: str, message: str) -> dict:
    code = "context_length_exceeded" if kind == "context_window_exceeded" else kind
    return {"error": {"type": kind, "message": message, "code": code}}


class Gateway:
    """OpenAI-compatible chat completions on a unix socket; one per task; records every request.

    Args:
        socket_path: where to create the socket (its parent directory must exist).
        trace_path: JSONL file every request is appended to (parents are created).
        backend: forwards the calls; its ``model`` names the model in traces.
        limits: per-task limits: requests (every request counts, valid or not), tokens and USD,
            checked as each request arrives; body size, trace size and connections at once.
            A call in flight can overshoot the token and USD limits; the request limit is exact.
            Every backend knows its price (``evolve.models.model_price``), so the USD limit always
            counts; a model priced at 0 (a local server) never reaches it.
    """

    def __init__(self, socket_path: Path, trace_path: Path, backend: ModelBackend, limits: Limits) -> None:
        self.socket_path = Path(socket_path)
        self.trace_path = Path(trace_path)
        self.backend = backend
        self.limits = limits
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._inflight = 0
        self._trace_lock = threading.Lock()
        self._trace_bytes = 0
        self._trace_full = True  # full lines still go in (the trace is under limits.max_trace_bytes)
        self._trace_failed = False
        self._untraced = 0  # refused requests past the trace cap
        self._refused_connections = 0
        self._seq = 0
        self._calls = 0
        self._prompt_tokens = 0
        self._completion_tokens = 0
        self._cost_usd = 0.0
        self._errors = 0
        self._infra_errors: list[str] = []
        self._fatal: ModelError | None = None
        self._server: _UnixHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._socket_ino: int | None = None
        self._closed = False

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> None:
        """Bind the socket (mode 0o666, so any uid in the container can connect; who can reach it is
        decided by its directory, see ``evolve.runner.run_agent``) and serve.

        Raises:
            InfraError: kind ``"gateway"``: the socket cannot be created.
        """
        if self._server is not None:
            return
        if self._closed:
            raise InfraError("gateway", "a closed gateway cannot be restarted; create a new one")
        path = self.socket_path
        try:
            self.trace_path.parent.mkdir(parents=True, exist_ok=True)
            try:
                self._trace_bytes = self.trace_path.stat().st_size
            except FileNotFoundError:
                self._trace_bytes = 0
            if path.is_symlink() or path.exists():
                if not stat.S_ISSOCK(path.lstat().st_mode):
                    raise InfraError("gateway", f"{path} exists and is not a socket; refusing to replace it")
                path.unlink()
            server = _UnixHTTPServer(path, self)
            os.chmod(path, 0o666)
            self._socket_ino = path.stat().st_ino
        except InfraError:
            raise
        except OSError as e:
            raise InfraError("gateway", f"cannot create the gateway socket {path}: {e}") from e
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name=f"evolve-gateway:{path.name}", daemon=True)
        self._thread.start()
        log.debug("gateway serving %s for %s", path, getattr(self.backend, "model", "?"))

    def close(self, drain_s: float = DRAIN_S) -> None:
        """Stop serving and remove the socket. Idempotent.

        New connections are refused and new calls on open connections get 503
        ``gateway_closed``. Calls already forwarded to the model are waited for,
        at most ``drain_s`` seconds, so that ``usage`` and the trace include them
        (one finishing later is still counted and traced when it ends). Then, if
        requests or connections were refused without a trace line of their own,
        a ``not_traced`` note with their numbers ends the trace.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
        server, thread = self._server, self._thread
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)
        with self._idle:
            self._idle.wait_for(lambda: self._inflight == 0, timeout=max(0.0, drain_s))
        try:
            st = self.socket_path.lstat()
            if self._socket_ino is not None and st.st_ino == self._socket_ino:
                self.socket_path.unlink()
        except FileNotFoundError:
            log.debug("gateway socket %s was already gone", self.socket_path)
        except OSError as e:
            log.warning("cannot remove gateway socket %s: %s", self.socket_path, e)
        with self._lock:
            requests, connections = self._untraced, self._refused_connections
        if requests or connections:
            with self._trace_lock:
                self._append(_line(_note(
                    "not_traced", f"{requests} requests refused past the trace cap (limit reached or gateway "
                                  f"closed) and {connections} connections over limits.max_connections "
                                  f"({self.limits.max_connections}) got no trace line of their own",
                    refused_requests=requests, refused_connections=connections)))

    def __enter__(self) -> "Gateway":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- state ----------------------------------------------------------------

    @property
    def usage(self) -> Usage:
        """Usage so far (thread-safe snapshot): ``calls`` is requests counted toward
        ``limits.max_calls`` (model calls and invalid requests alike), then tokens, USD, and
        requests answered with an error (refused ones included)."""
        with self._lock:
            return Usage(calls=self._calls, prompt_tokens=self._prompt_tokens,
                         completion_tokens=self._completion_tokens, cost_usd=self._cost_usd,
                         errors=self._errors)

    @property
    def refused_connections(self) -> int:
        """Connections answered 429 ``too_many_connections`` (over ``limits.max_connections``)."""
        with self._lock:
            return self._refused_connections

    @property
    def infra_errors(self) -> list[str]:
        """Upstream failures that persisted after retries, and gateway faults.

        Any entry makes the task an infrastructure failure, never scored
        against the harness.
        """
        with self._lock:
            return list(self._infra_errors)

    @property
    def fatal_error(self) -> ModelError | None:
        """The first bad-credentials or unknown-model error: the whole evaluation must stop."""
        with self._lock:
            return self._fatal

    @property
    def closed(self) -> bool:
        return self._closed

    # -- request handling ----------------------------------------------------------

    def models_payload(self) -> dict:
        return {"object": "list", "data": [{"id": self.backend.model, "object": "model",
                                            "created": 0, "owned_by": "evolve"}]}

    def _limit_reason(self) -> str | None:
        """Why no further request may be made, or None. Caller holds ``self._lock``."""
        lim = self.limits
        if self._calls >= lim.max_calls:
            return (f"call limit reached: {self._calls} of {lim.max_calls} calls used for this task (every "
                    "request counts, valid or not); stop and submit what you have")
        tokens = self._prompt_tokens + self._completion_tokens
        if tokens >= lim.max_tokens:
            return (f"token limit reached: {tokens} of {lim.max_tokens} tokens (prompt plus completion) "
                    "used for this task; stop and submit what you have")
        if self._cost_usd >= lim.max_cost_usd:
            return (f"cost limit reached: {self._cost_usd:.4f} of {lim.max_cost_usd:.4f} USD used for this "
                    "task; stop and submit what you have")
        return None

    def admit(self) -> tuple[int, "_HTTPError | None"]:
        """Number one arriving request and count it toward the limits, before its body is read.

        Returns ``(call number, None)`` for a counted request, or ``(call number, refusal)``
        (403 ``limit_exceeded``, 503 ``gateway_closed``) for one to answer at once without
        counting it; a refusal counts in ``usage.errors``.
        """
        with self._lock:
            self._seq += 1
            seq = self._seq
            refusal = None
            if self._closed:
                refusal = _HTTPError(503, "gateway_closed", "the task is over: the gateway has shut down")
            else:
                reason = self._limit_reason()
                if reason is not None:
                    refusal = _HTTPError(403, "limit_exceeded", reason)
            if refusal is None:
                self._calls += 1
            else:
                self._errors += 1
        return seq, refusal

    def refuse(self, seq: int, start: float, refusal: "_HTTPError", request_bytes: int) -> tuple[int, bytes]:
        """Answer a request ``admit`` refused: (status, JSON body). Traced as a summary line while the
        trace is under its cap, else only counted (see ``close``)."""
        data = _json_bytes(_error_body(refusal.kind, refusal.message))
        self._record(summary_record(call=seq, start=start, status=refusal.status, model=self.backend.model,
                                    request_bytes=request_bytes, response_bytes=len(data),
                                    error={"type": refusal.kind, "message": refusal.message}),
                     counted=False)
        return refusal.status, data

    def reject(self, seq: int, start: float, error: "_HTTPError", excerpt: bytes,
               request_bytes: int) -> tuple[int, bytes]:
        """Answer a counted request that is invalid (bad body, framing, route, method): (status, JSON
        body). Its trace line keeps only ``excerpt`` (cut to ``EXCERPT_BYTES``) of what was sent."""
        with self._lock:
            self._errors += 1
        data = _json_bytes(_error_body(error.kind, error.message))
        err = {"type": error.kind, "message": error.message}
        full = trace_record(call=seq, start=start, status=error.status, model=self.backend.model,
                            request=excerpt[:EXCERPT_BYTES].decode("utf-8", "replace"), response=None, error=err)
        full["request_bytes"] = request_bytes
        self._record(summary_record(call=seq, start=start, status=error.status, model=self.backend.model,
                                    request_bytes=request_bytes, response_bytes=len(data), error=err),
                     full)
        return error.status, data

    def chat(self, seq: int, start: float, raw: bytes) -> tuple[int, bytes]:
        """Answer one counted chat request whose whole body is ``raw``: (HTTP status, JSON body).

        Never raises for a bad request or a failing backend: every outcome is
        an HTTP answer, counted in ``usage`` and appended to the trace.
        """
        try:
            body = self._validate(self._decode(raw))
        except _HTTPError as e:
            return self.reject(seq, start, e, raw, len(raw))
        pt = ct = 0
        cost = 0.0
        try:
            with self._lock:
                if self._closed:
                    raise _HTTPError(503, "gateway_closed", "the task is over: the gateway has shut down")
                if self._fatal is not None:
                    raise _HTTPError(502, "model_error", str(self._fatal))
                self._inflight += 1
            try:
                completion = self._forward(body)
                pt, ct, cost = completion.prompt_tokens, completion.completion_tokens, completion.cost_usd
                with self._lock:
                    self._prompt_tokens += pt
                    self._completion_tokens += ct
                    self._cost_usd += cost
                    payload = dict(completion.response)
                    payload["evolve"] = {"cost_usd": cost, "total_cost_usd": self._cost_usd,
                                         "calls": self._calls,
                                         "remaining_calls": max(0, self.limits.max_calls - self._calls)}
            finally:
                with self._idle:
                    self._inflight -= 1
                    self._idle.notify_all()
            status, error = 200, None
        except Exception as e:  # noqa: BLE001 - every request gets an answer and a trace line
            if not isinstance(e, _HTTPError):
                log.exception("gateway: unexpected error while handling a call")
                text = f"{type(e).__name__}: {e}"
                with self._lock:
                    self._infra_errors.append(f"gateway: {text}")
                e = _HTTPError(500, "gateway_error", f"internal gateway error: {text}")
            with self._lock:
                self._errors += 1
            status, payload, error = e.status, _error_body(e.kind, e.message), {"type": e.kind, "message": e.message}
        data = _json_bytes(payload)
        self._record(summary_record(call=seq, start=start, status=status, model=self.backend.model,
                                    request_bytes=len(raw), response_bytes=len(data), error=error,
                                    prompt_tokens=pt, completion_tokens=ct, cost_usd=cost),
                     lambda: trace_record(call=seq, start=start, status=status, model=self.backend.model,
                                          request=body, response=payload if status == 200 else None,
                                          error=error, prompt_tokens=pt, completion_tokens=ct, cost_usd=cost),
                     size_hint=len(raw) + len(data))
        return status, data

    @staticmethod
    def _decode(raw: bytes | None) -> Any:
        def no_constants(name: str) -> Any:
            raise ValueError(f"{name} is not valid JSON")

        try:
            return json.loads(raw or b"", parse_constant=no_constants)
        except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise _HTTPError(400, "invalid_request", f"the request body is not valid JSON: {e}") from None

    @staticmethod
    def _validate(body: Any) -> dict:
        """The body if it is a chat request evolve serves. Raises _HTTPError 400."""
        if not isinstance(body, dict):
            raise _HTTPError(400, "invalid_request", "the request body must be a JSON object")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _HTTPError(400, "invalid_request", "'messages' is required: a non-empty list of chat messages")
        if body.get("stream"):
            raise _HTTPError(400, "invalid_request",
                             "streaming is not supported by the evolve gateway: send 'stream': false")
        return body

    def _forward(self, body: dict) -> Any:
        """Call the backend, turning its errors into HTTP answers and recording them."""
        try:
            return self.backend.complete(body)
        except ContextWindowError as e:
            raise _HTTPError(400, "context_window_exceeded", str(e)) from None
        except RequestError as e:
            raise _HTTPError(400, "invalid_request", str(e)) from None
        except UpstreamError as e:
            with self._lock:
                self._infra_errors.append(f"upstream: {e}")
            raise _HTTPError(502, "upstream_error", str(e)) from None
        except ModelError as e:
            with self._lock:
                if self._fatal is None:
                    self._fatal = e
            raise _HTTPError(502, "model_error", str(e)) from None
        except Exception as e:  # noqa: BLE001 - a gateway bug must not kill the server thread
            log.exception("gateway: backend %r raised", self.backend)
            text = f"{type(e).__name__}: {e}"
            with self._lock:
                self._infra_errors.append(f"gateway: {text}")
            raise _HTTPError(500, "gateway_error", f"internal gateway error: {text}") from None

    # -- the trace -------------------------------------------------------------------

    def _record(self, summary: dict, full: "dict | Any | None" = None, *, size_hint: int = 0,
                counted: bool = True) -> None:
        """Append one request's line: ``full`` (a record, or a function making it) while the trace stays
        within ``limits.max_trace_bytes``, else ``summary``; without ``full`` the summary is the line.
        Past the cap a request that was not ``counted`` gets no line, only a count (see ``close``).
        ``size_hint`` is a lower bound of the full line's bytes: over the room left, it is not even made.
        """
        cap = self.limits.max_trace_bytes
        with self._trace_lock:
            if self._trace_full:
                line = None
                if full is None:
                    line = _line(summary)
                elif self._trace_bytes + size_hint <= cap:
                    line = _line(full() if callable(full) else full)
                if line is not None and self._trace_bytes + len(line) <= cap:
                    self._append(line)
                    return
                self._trace_full = False
                self._append(_line(_note(
                    "trace_cap_reached", f"the trace reached limits.max_trace_bytes ({cap} bytes): from here on "
                                         "each counted request gets a summary line (sizes, status, usage, cost, "
                                         "error type; no request or response body), and requests refused "
                                         "without being counted are only counted", max_trace_bytes=cap)))
            if counted:
                self._append(_line(summary))
                return
        with self._lock:
            self._untraced += 1

    def _append(self, line: bytes) -> None:
        """Append ``line`` to the trace file. A failure is an infrastructure error (reported once)."""
        try:
            with open(self.trace_path, "ab") as f:
                f.write(line)
            self._trace_bytes += len(line)
        except OSError as e:
            log.error("gateway: cannot append to trace %s: %s", self.trace_path, e)
            with self._lock:
                if not self._trace_failed:
                    self._trace_failed = True
                    self._infra_errors.append(f"gateway: cannot write the trace {self.trace_path}: {e}")

    def _connection_refused(self) -> None:
        with self._lock:
            self._refused_connections += 1


def _json_bytes(payload: Any) -> bytes:
    return json.dumps(payload, ensure_ascii=False, default=str).encode("utf-8")


def _line(record: dict) -> bytes:
    return _json_bytes(record) + b"\n"


def _note(kind: str, message: str, **fields: Any) -> dict:
    return {"note": kind, "ts": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds"),
            **fields, "message": message}


def _cut(text: str, max_bytes: int) -> str:
    """``text`` cut to at most ``max_bytes`` bytes of UTF-8."""
    data = text.encode("utf-8", "replace")
    return text if len(data) <= max_bytes else data[:max_bytes].decode("utf-8", "ignore")


def summary_record(*, call: int, start: float, status: int, model: str, request_bytes: int, response_bytes: int,
                   error: dict | None, prompt_tokens: int = 0, completion_tokens: int = 0,
                   cost_usd: float = 0.0) -> dict:
    """A summary trace line (see the module docstring): no bodies, sizes in bytes, the error message cut,
    under ``SUMMARY_LINE_BYTES`` once serialized; ``start`` is the ``time.monotonic()`` of the call's start."""
    return {
        "call": call,
        "ts": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds"),
        "latency_s": round(time.monotonic() - start, 6),
        "status": status,
        "model": _cut(str(model), 120),
        "summarized": True,
        "request_bytes": request_bytes,
        "response_bytes": response_bytes,
        "error": None if error is None else {"type": _cut(str(error.get("type")), 60),
                                             "message": _cut(str(error.get("message")), _MESSAGE_BYTES)},
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens},
        "cost_usd": cost_usd,
    }


def trace_record(*, call: int, start: float, status: int, model: str, request: Any, response: dict | None,
                 error: dict | None, prompt_tokens: int = 0, completion_tokens: int = 0,
                 cost_usd: float = 0.0) -> dict:
    """One trace line (see the module docstring); ``start`` is the ``time.monotonic()`` of the call's start.

    Shared by the gateway (solver calls) and ``evolve.roles`` (optimizer calls), so
    every model call evolve makes is recorded in the same shape.
    """
    return {
        "call": call,
        "ts": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds"),
        "latency_s": round(time.monotonic() - start, 6),
        "status": status,
        "model": model,
        "request": request,
        "response": response,
        "error": error,
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens},
        "cost_usd": cost_usd,
    }


def append_trace(path: Path, record: dict) -> None:
    """Append one record as a JSON line to ``path`` (parents created). Callers serialize writers.

    Raises:
        OSError: the file cannot be written.
    """
    line = json.dumps(record, ensure_ascii=False, default=str) + "\n"
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()


def _with_short_path(op: Any, path: str) -> None:
    """Call ``op(address)`` for a unix socket at ``path``, even a path too long for sockaddr_un.

    A long path is reached through ``/proc/self/fd/<parent dir fd>/<name>`` (Linux).
    """
    if len(os.fsencode(path)) <= _SUN_PATH_MAX:
        op(path)
        return
    parent, name = os.path.split(path)
    fd = os.open(parent or ".", os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        op(f"/proc/self/fd/{fd}/{name}")
    finally:
        os.close(fd)


class _Conn:
    """One open connection: since when it has been waiting for a request (None while one is handled)."""

    __slots__ = ("idle_since",)

    def __init__(self, idle_since: float | None) -> None:
        self.idle_since = idle_since


def _raw_answer(status: int, kind: str, message: str) -> bytes:
    """A whole HTTP/1.1 error answer that closes the connection, as bytes."""
    data = _json_bytes(_error_body(kind, message))
    head = (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nServer: evolve-gateway\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\nConnection: close\r\n\r\n")
    return head.encode("ascii") + data


class _UnixHTTPServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    """One thread per connection, at most ``limits.max_connections`` of them (see ``process_request``)."""

    address_family = socket.AF_UNIX
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = False
    request_queue_size = 64

    def __init__(self, path: Path, gateway: Gateway) -> None:
        self.gateway = gateway
        self._conn_lock = threading.Lock()
        self._conn_freed = threading.Condition(self._conn_lock)
        self._conns: dict[socket.socket, _Conn] = {}
        super().__init__(str(path), _Handler)

    def server_bind(self) -> None:
        _with_short_path(self.socket.bind, self.server_address)
        self.server_name = "evolve-gateway"
        self.server_port = 0

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        conn, _ = self.socket.accept()
        # AF_UNIX peers have no address; give the handler one it can log.
        return conn, ("unix", 0)

    def process_request(self, request: socket.socket, client_address: Any) -> None:
        """Serve the connection in a thread of its own, or, when ``limits.max_connections`` are open and
        none has been idle for ``IDLE_REAP_S`` or closes within ``ADMIT_WAIT_S``, answer 429 (from the
        accepting thread, without reading the request) and close it."""
        if not self._admit(request):
            self._turn_away(request)
            return
        thread = threading.Thread(target=self._serve_connection, args=(request, client_address),
                                  name="evolve-gateway-conn", daemon=True)
        try:
            thread.start()
        except RuntimeError as e:  # the host cannot start another thread
            log.error("gateway: cannot start a connection thread: %s", e)
            self._release(request)
            self._turn_away(request)

    def _admit(self, sock: socket.socket) -> bool:
        deadline = time.monotonic() + ADMIT_WAIT_S
        with self._conn_freed:
            while len(self._conns) >= self.gateway.limits.max_connections:
                now = time.monotonic()
                idle = [(c.idle_since, s) for s, c in self._conns.items()
                        if c.idle_since is not None and now - c.idle_since >= IDLE_REAP_S]
                if idle:
                    _, victim = min(idle, key=lambda item: item[0])
                    del self._conns[victim]
                    try:
                        victim.shutdown(socket.SHUT_RDWR)  # its handler's wait for a request ends at once
                    except OSError as e:
                        log.debug("gateway: closing an idle connection: %s", e)
                    break
                if now >= deadline:
                    return False
                self._conn_freed.wait(deadline - now)
            self._conns[sock] = _Conn(idle_since=time.monotonic())
        return True

    def _release(self, sock: socket.socket) -> None:
        with self._conn_freed:
            self._conns.pop(sock, None)
            self._conn_freed.notify_all()

    def _turn_away(self, sock: socket.socket) -> None:
        self.gateway._connection_refused()
        limit = self.gateway.limits.max_connections
        answer = _raw_answer(429, "too_many_connections",
                             f"more than {limit} connections at once to the model gateway "
                             f"(limits.max_connections): this one is closed; wait for an answer before sending "
                             "another request, and reuse or close connections")
        try:
            sock.setblocking(False)  # a fresh socket's buffer takes the whole answer; never wait for the peer
            sock.send(answer)
        except OSError as e:
            log.debug("gateway: could not answer a connection over the limit: %s", e)
        self.shutdown_request(sock)

    def _serve_connection(self, request: socket.socket, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:  # noqa: BLE001 - logged by handle_error; the server goes on
            self.handle_error(request, client_address)
        finally:
            self._release(request)
            self.shutdown_request(request)

    def mark_busy(self, sock: socket.socket) -> bool:
        """A request is arriving on ``sock``; False if the connection was closed to make room for another."""
        with self._conn_lock:
            conn = self._conns.get(sock)
            if conn is None:
                return False
            conn.idle_since = None
            return True

    def mark_idle(self, sock: socket.socket) -> None:
        with self._conn_lock:
            conn = self._conns.get(sock)
            if conn is not None:
                conn.idle_since = time.monotonic()

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):  # the client went away or timed out
            log.debug("gateway: connection ended: %r", sys.exc_info()[1])
        else:
            log.exception("gateway: error while serving a request")


class _Malformed(Exception):
    """The request body's framing is broken (chunk sizes, a body shorter than announced)."""


class _BodyError(Exception):
    """The chat body could not be taken: ``error`` is the answer; ``excerpt`` and ``nbytes`` (bytes
    announced or seen) go in the trace; ``rest`` yields what is left of a chunked body."""

    def __init__(self, error: _HTTPError, excerpt: bytes = b"", nbytes: int = 0,
                 rest: Iterator[bytes] | None = None) -> None:
        super().__init__(error.message)
        self.error, self.excerpt, self.nbytes, self.rest = error, excerpt, nbytes, rest


class _HeaderBudget:
    """``rfile`` while the headers are parsed: ``readline`` fails once ``budget`` bytes were read."""

    def __init__(self, rfile: Any, budget: int) -> None:
        self.rfile, self.budget = rfile, budget

    def readline(self, limit: int = -1) -> bytes:
        n = self.budget + 1 if limit is None or limit < 0 else min(limit, self.budget + 1)
        line = self.rfile.readline(n)
        self.budget -= len(line)
        if self.budget < 0:
            raise http.client.LineTooLong(f"header block over {MAX_HEADER_BYTES} bytes")
        return line


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _UnixHTTPServer
    protocol_version = "HTTP/1.1"
    server_version = "evolve-gateway"
    sys_version = ""
    timeout = IDLE_TIMEOUT_S
    _expect_continue = False
    _start = 0.0

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("gateway: " + format, *args)

    # -- reading requests ---------------------------------------------------------

    def handle_one_request(self) -> None:
        """Read and answer one request. Unlike the stdlib's, every method goes to ``_dispatch`` (no 501),
        so every request is counted, and the connection is marked busy while it is handled."""
        try:
            self.raw_requestline = self.rfile.readline(65537)
            if not self.raw_requestline or not self.server.mark_busy(self.connection):
                self.close_connection = True
                return
            try:
                self._start = time.monotonic()
                self._expect_continue = False
                if len(self.raw_requestline) > 65536:
                    self.requestline, self.request_version, self.command = "", "", ""
                    self.send_error(HTTPStatus.REQUEST_URI_TOO_LONG)
                    return
                if not self.parse_request():  # answered by send_error, or a blank line
                    return
                self._dispatch()
                self.wfile.flush()
            finally:
                self.server.mark_idle(self.connection)
        except TimeoutError as e:
            log.debug("gateway: a connection timed out: %r", e)
            self.close_connection = True

    def parse_request(self) -> bool:
        """The stdlib's parsing, with the header block held to ``MAX_HEADER_BYTES``."""
        rfile = self.rfile
        self.rfile = _HeaderBudget(rfile, MAX_HEADER_BYTES)
        try:
            return super().parse_request()
        finally:
            self.rfile = rfile

    def handle_expect_100(self) -> bool:
        """Hold ``100 Continue`` back until the body is wanted (``_continue``): a refused or oversize
        request is answered without the client ever sending its body."""
        self._expect_continue = True
        return True

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """A request too malformed to route (request line, headers): counted like any other request,
        answered in JSON, and the connection closed."""
        self.close_connection = True
        self.request_version = self.protocol_version  # not HTTP/0.9, which would get a body without a status line
        gateway = self.server.gateway
        seq, refusal = gateway.admit()
        if refusal is not None:
            status, data = gateway.refuse(seq, self._start, refusal, 0)
        else:
            reason = _cut(": ".join(filter(None, [message or HTTPStatus(code).phrase, explain])), _QUOTE_CHARS)
            status, data = gateway.reject(seq, self._start,
                                          _HTTPError(int(code), "invalid_request", f"malformed HTTP request: {reason}"),
                                          (self.raw_requestline or b"")[:EXCERPT_BYTES], 0)
        self._send(status, data)

    def _route(self) -> str:
        return self.path.split("?", 1)[0].rstrip("/") or "/"

    def _framing(self) -> tuple[str, int]:
        """How the body is sent: ``("chunked", -1)``, ``("length", bytes)`` or ``("invalid", -1)``."""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            return "chunked", -1
        value = self.headers.get("Content-Length")
        if value is None:
            return "length", 0
        try:
            length = int(value.strip())
        except ValueError:
            return "invalid", -1
        return ("length", length) if length >= 0 else ("invalid", -1)

    def _continue(self) -> None:
        """Send ``100 Continue`` if the client waits for it before sending the body."""
        if self._expect_continue:
            self._expect_continue = False
            self.send_response_only(HTTPStatus.CONTINUE)
            self.end_headers()

    def _pieces(self, length: int) -> Iterator[bytes]:
        """The next ``length`` bytes, at most ``_PIECE`` at a time. Raises _Malformed if they end early."""
        while length:
            piece = self.rfile.read(min(length, _PIECE))
            if not piece:
                raise _Malformed("the request body ended before its Content-Length")
            length -= len(piece)
            yield piece

    def _chunks(self) -> Iterator[bytes]:
        """A chunked body, at most ``_PIECE`` bytes at a time. Raises _Malformed on broken framing."""
        while True:
            line = self.rfile.readline(1026)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16) if line.endswith(b"\n") else -1
            except ValueError:
                size = -1
            if size < 0:
                raise _Malformed("malformed chunked request body")
            if size == 0:
                for _ in range(64):  # trailers, up to the blank line
                    trailer = self.rfile.readline(1026)
                    if trailer in (b"\r\n", b"\n"):
                        return
                    if not trailer.endswith(b"\n"):
                        break
                raise _Malformed("malformed trailers after a chunked request body")
            yield from self._pieces(size)
            if self.rfile.readline(3) not in (b"\r\n", b"\n"):
                raise _Malformed("malformed chunked request body")

    def _read_body(self, cap: int) -> bytes:
        """The chat body, at most ``cap`` bytes, never more in memory. Raises _BodyError: 413 over the cap
        (a Content-Length over it is refused unread), 400 for broken framing."""
        kind, length = self._framing()
        if kind == "invalid":
            raise _BodyError(_HTTPError(400, "invalid_request", "invalid Content-Length header"))
        if kind == "length" and length > cap:
            raise _BodyError(_too_large(cap, length), nbytes=length)
        self._continue()
        if kind == "length":
            data = self.rfile.read(length)
            if len(data) < length:
                raise _BodyError(_HTTPError(400, "invalid_request", f"the request body ended after {len(data)} "
                                                                    f"of its {length} bytes (Content-Length)"),
                                 data[:EXCERPT_BYTES], len(data))
            return data
        parts: list[bytes] = []
        total = 0
        chunks = self._chunks()
        try:
            for piece in chunks:
                total += len(piece)
                if total > cap:
                    head = (parts[0] if parts else piece)[:EXCERPT_BYTES]
                    raise _BodyError(_too_large(cap, None), head, total, rest=chunks)
                parts.append(piece)
        except _Malformed as e:
            raise _BodyError(_HTTPError(400, "invalid_request", str(e)),
                             (parts[0] if parts else b"")[:EXCERPT_BYTES], total) from None
        return b"".join(parts)

    def _discard_body(self) -> tuple[bytes, int]:
        """Read and throw away the body of a request that is answered without it: (its first
        ``EXCERPT_BYTES``, bytes announced or seen). The connection is closed after the answer unless
        the body was consumed whole (at most ``DISCARD_MAX_BYTES`` within ``DISCARD_S``)."""
        kind, length = self._framing()
        if kind == "length" and length == 0:
            return b"", 0
        if kind == "invalid" or self._expect_continue or length > DISCARD_MAX_BYTES:
            self.close_connection = True  # the client has not sent it yet, or it is too long to wait for
            return b"", max(length, 0)
        return self._drain(self._chunks() if kind == "chunked" else self._pieces(length), b"", 0)

    def _drain(self, pieces: Iterator[bytes], excerpt: bytes, seen: int) -> tuple[bytes, int]:
        """Consume ``pieces`` within ``DISCARD_MAX_BYTES`` and ``DISCARD_S``, keeping an excerpt."""
        deadline = time.monotonic() + DISCARD_S
        complete = False
        try:
            for piece in pieces:
                if len(excerpt) < EXCERPT_BYTES:
                    excerpt += piece[:EXCERPT_BYTES - len(excerpt)]
                seen += len(piece)
                left = deadline - time.monotonic()
                if seen > DISCARD_MAX_BYTES or left <= 0:
                    break
                self.connection.settimeout(left)
            else:
                complete = True
        except (_Malformed, OSError) as e:  # TimeoutError is an OSError
            log.debug("gateway: gave up reading an unwanted request body: %r", e)
        finally:
            self.connection.settimeout(self.timeout)
        if not complete:
            self.close_connection = True
        return excerpt, seen

    # -- answering ---------------------------------------------------------------------

    def _dispatch(self) -> None:
        gateway = self.server.gateway
        route = self._route()
        kind, length = self._framing()
        bodiless = kind == "length" and length == 0
        if self.command == "GET" and route in _FREE_ROUTES and bodiless:
            self._send(200, _json_bytes({"ok": True} if route == "/health" else gateway.models_payload()))
            return
        seq, refusal = gateway.admit()
        if refusal is not None:
            _, nbytes = self._discard_body()
            if refusal.status == 503:
                self.close_connection = True
            self._send(*gateway.refuse(seq, self._start, refusal, nbytes))
            return
        if self.command == "POST" and route in _CHAT_ROUTES:
            self._chat(seq)
            return
        excerpt, nbytes = self._discard_body()
        where = _cut(f"{self.command} {self.path}", _QUOTE_CHARS)
        if route in _CHAT_ROUTES or route in _FREE_ROUTES:
            if self.command == "GET" and route in _FREE_ROUTES:
                error = _HTTPError(400, "invalid_request", f"{route} takes no request body")
            else:
                error = _HTTPError(405, "method_not_allowed",
                                   f"{where}: wrong method; use POST for chat completions, GET for /v1/models "
                                   "and /health")
        else:
            error = _HTTPError(404, "not_found", f"no route for {where}; use POST /v1/chat/completions")
        self._send(*gateway.reject(seq, self._start, error, excerpt, nbytes))

    def _chat(self, seq: int) -> None:
        gateway = self.server.gateway
        try:
            raw = self._read_body(gateway.limits.max_request_bytes)
        except _BodyError as e:
            self.close_connection = True
            excerpt, nbytes = e.excerpt, e.nbytes
            if e.rest is not None:
                excerpt, nbytes = self._drain(e.rest, excerpt, nbytes)
            elif e.error.status == 413:
                excerpt, _ = self._discard_body()
            self._send(*gateway.reject(seq, self._start, e.error, excerpt, nbytes))
            return
        status, data = gateway.chat(seq, self._start, raw)
        if status == 503:
            self.close_connection = True
        self._send(status, data)

    def _send(self, status: int, data: bytes) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":  # an answer to HEAD has no body
                self.wfile.write(data)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            log.debug("gateway: client went away before the response was sent")


def _too_large(cap: int, length: int | None) -> _HTTPError:
    size = f"is {length} bytes" if length is not None else "goes on"
    return _HTTPError(413, "request_too_large",
                      f"the request body {size}, over the gateway's limit of {cap} bytes per request "
                      "(limits.max_request_bytes): send less (drop or shorten old messages and long tool "
                      "outputs), or raise limits.max_request_bytes in evolve.yaml")


class UnixHTTPConnection(http.client.HTTPConnection):
    """``http.client`` connection to an HTTP server on a unix socket, e.g. the gateway.

    ``UnixHTTPConnection("/evolve/gw/gateway.sock", timeout=600)``; then use
    ``request``/``getresponse`` as usual (the Host header is ``localhost``).
    """

    def __init__(self, socket_path: str | os.PathLike, timeout: float | None = None) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = os.fspath(socket_path)

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if self.timeout is not None:
            sock.settimeout(self.timeout)
        try:
            _with_short_path(sock.connect, self.socket_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock
