"""The per-task model gateway: OpenAI chat completions (and Anthropic Messages) on a unix socket.

A harness runs in a container without network. Its only way out is the
gateway's unix socket, bind-mounted read-only into the container (and, the same
socket, ``http://127.0.0.1:<port>`` through the sandbox's loopback bridge,
``evolve/sandbox/scripts/bridge.py``, started by ``evolve.runner``). The gateway runs on the
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

Keys: a gateway made with a ``token`` (the runner's per-task key, ``OPENAI_API_KEY`` in the
sandbox) answers a request carrying any other key (``Authorization: Bearer``, ``x-api-key``) 401
``invalid_api_key``, counted like any request (even on the free GETs); the key is never traced. A
request with no key is served: the socket is the task's boundary.

``POST /v1/chat/completions`` (also ``/chat/completions``)
    An OpenAI chat request; ``messages`` is required, ``model`` is ignored (the
    gateway's backend decides). 200 returns the OpenAI ``chat.completion`` plus a
    key ``"evolve"``: ``{"cost_usd", "total_cost_usd", "calls", "remaining_calls"}``
    (USD; requests counted toward ``max_calls`` so far, and left). With
    ``"stream": true`` the same call is made, and its answer is sent as
    server-sent events (``evolve.gateway.sse``; usage in a last chunk with
    ``stream_options.include_usage``, ``"evolve"`` in the last chunk): the
    whole answer at once, once the model call has ended.
``POST /v1/messages`` (also ``/messages``)
    An Anthropic Messages request, translated to a chat request by litellm and
    answered as an Anthropic ``message`` (plus ``"evolve"``), or its events with
    ``"stream": true`` (``evolve.gateway.messages``). Counted, limited and traced
    like a chat request.
    Errors are ``{"error": {"type", "message", "code"}}`` with status
     400 ``invalid_request`` (bad JSON, no messages, ``stream`` not a boolean, a Messages request
         litellm cannot translate, a malformed request line, headers or body framing, rejected
         by the provider),
     401 ``invalid_api_key`` (a key that is not the task's token),
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
    ``{"ok": true}``. With the header ``X-Evolve-Bridge`` it also marks the loopback bridge as up
    (``Gateway.bridge_ready``).
Anything else
    404 ``not_found`` (no such path) or 405 ``method_not_allowed`` (a known path, another
    method); counted like any request.

Trace lines (JSON, one per line). A counted request while the trace is under its cap::

    {"call": n, "ts": ISO-8601 UTC, "latency_s": seconds, "status": http_status,
     "model": backend model, "request": the JSON body, "response": the JSON returned on
     success or null, "error": {"type", "message"} or null,
     "usage": {"prompt_tokens", "completion_tokens"}, "cost_usd": USD}

For a streamed call ``request`` keeps ``"stream": true`` and ``response`` is the whole completion.
A Messages call's line has ``"api": "messages"``; its ``request`` and ``response`` are the chat request
and completion the model saw and gave (as litellm translated them, with the request's ``stream``).

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

Modules, one job each: ``server`` (the socket, the connection cap, ``UnixHTTPConnection``),
``connection`` (reading a request within its caps, routing), ``limits`` (counting and the limit rule),
``handler`` (answering: the backend, error mapping, keys), ``sse`` (streamed chat answers), ``messages``
(the Anthropic Messages API through litellm), ``trace`` (the trace writer), ``wire`` (JSON and error bodies).
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from pathlib import Path
from typing import Any

from evolve.config import Limits
from evolve.errors import InfraError, ModelError
from evolve.gateway.connection import DISCARD_MAX_BYTES, DISCARD_S, IDLE_TIMEOUT_S, MAX_HEADER_BYTES
from evolve.gateway.handler import CallHandler
from evolve.gateway.limits import Ledger
from evolve.gateway.server import ADMIT_WAIT_S, IDLE_REAP_S, UnixHTTPConnection, UnixHTTPServer
from evolve.gateway.trace import (EXCERPT_BYTES, SUMMARY_LINE_BYTES, TraceWriter, append_trace, summary_record,
                                  trace_record)
from evolve.models import ModelBackend
from evolve.types import Usage

__all__ = ["ADMIT_WAIT_S", "DISCARD_MAX_BYTES", "DISCARD_S", "DRAIN_S", "EXCERPT_BYTES", "IDLE_REAP_S",
           "IDLE_TIMEOUT_S", "MAX_HEADER_BYTES", "SUMMARY_LINE_BYTES", "Gateway", "UnixHTTPConnection",
           "append_trace", "summary_record", "trace_record"]

log = logging.getLogger(__name__)

DRAIN_S = 30.0
"""Seconds ``close()`` waits by default for calls still in flight, so their usage is counted."""


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
        token: the task's API key (``OPENAI_API_KEY`` in the sandbox). A request carrying any other
            key (``Authorization: Bearer``, ``x-api-key``) gets 401 ``invalid_api_key``; one carrying
            none is served (the socket itself is the task's boundary). None: keys are not checked.
    """

    def __init__(self, socket_path: Path, trace_path: Path, backend: ModelBackend, limits: Limits,
                 token: str | None = None) -> None:
        self.socket_path = Path(socket_path)
        self.trace_path = Path(trace_path)
        self.backend = backend
        self.limits = limits
        self._ledger = Ledger(limits)
        self._trace = TraceWriter(self.trace_path, limits.max_trace_bytes, on_failure=self._ledger.infra)
        self._calls = CallHandler(backend, self._ledger, self._trace, token)
        self._server: UnixHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._socket_ino: int | None = None

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> None:
        """Bind the socket (mode 0o666, so any uid in the container can connect; who can reach it is
        decided by its directory, see ``evolve.runner.run_agent``) and serve.

        Raises:
            InfraError: kind ``"gateway"``: the socket cannot be created.
        """
        if self._server is not None:
            return
        if self._ledger.closed:
            raise InfraError("gateway", "a closed gateway cannot be restarted; create a new one")
        path = self.socket_path
        try:
            self._trace.open()
            if path.is_symlink() or path.exists():
                if not stat.S_ISSOCK(path.lstat().st_mode):
                    raise InfraError("gateway", f"{path} exists and is not a socket; refusing to replace it")
                path.unlink()
            server = UnixHTTPServer(path, self._calls)
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
        if not self._ledger.close():
            return
        server, thread = self._server, self._thread
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)
        self._ledger.wait_idle(drain_s)
        try:
            st = self.socket_path.lstat()
            if self._socket_ino is not None and st.st_ino == self._socket_ino:
                self.socket_path.unlink()
        except FileNotFoundError:
            log.debug("gateway socket %s was already gone", self.socket_path)
        except OSError as e:
            log.warning("cannot remove gateway socket %s: %s", self.socket_path, e)
        requests, connections = self._trace.untraced, self._ledger.refused_connections
        if requests or connections:
            self._trace.note("not_traced", f"{requests} requests refused past the trace cap (limit reached or gateway "
                                           f"closed) and {connections} connections over limits.max_connections "
                                           f"({self.limits.max_connections}) got no trace line of their own",
                             refused_requests=requests, refused_connections=connections)

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
        return self._ledger.usage()

    @property
    def refused_connections(self) -> int:
        """Connections answered 429 ``too_many_connections`` (over ``limits.max_connections``)."""
        return self._ledger.refused_connections

    @property
    def infra_errors(self) -> list[str]:
        """Upstream failures that persisted after retries, and gateway faults.

        Any entry makes the task an infrastructure failure, never scored
        against the harness.
        """
        return self._ledger.infra_errors

    @property
    def fatal_error(self) -> ModelError | None:
        """The first bad-credentials or unknown-model error: the whole evaluation must stop."""
        return self._ledger.fatal

    @property
    def closed(self) -> bool:
        return self._ledger.closed

    @property
    def bridge_ready(self) -> bool:
        """Whether the sandbox's loopback bridge reached the socket (``GET /health`` with the
        ``X-Evolve-Bridge`` header, sent once it listens, before the harness starts)."""
        return self._calls.bridge_ready
