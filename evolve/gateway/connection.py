"""One connection's requests: read within caps, routed, answered (``evolve.gateway`` has the contract).

- The request line is at most 64 KiB (414), the header block at most ``MAX_HEADER_BYTES`` (431); either
  malformed is answered 400 (all counted), and the connection closed.
- ``GET /health`` and ``GET /v1/models`` without a body (and without a wrong API key) are free; every
  other request is numbered and counted (``Ledger.admit``) before its body is read. A request whose
  ``Authorization: Bearer`` or ``x-api-key`` is not the task's token (``CallHandler.key_ok``) gets 401.
- ``POST /v1/chat/completions`` and ``POST /v1/messages`` go to ``CallHandler.chat``; the answer's
  ``Content-Type`` is JSON or, for ``"stream": true``, ``text/event-stream``. A refused one's body is only thrown away (at most
  ``DISCARD_MAX_BYTES`` within ``DISCARD_S`` seconds; nothing from a client waiting for ``100 Continue``).
- A chat body is held whole only within ``limits.max_request_bytes``: a Content-Length over it gets 413
  unread, a chunked body is read only up to it (then thrown away as above).
- A connection waits ``IDLE_TIMEOUT_S`` seconds at most for its next request.
"""

from __future__ import annotations

import http.client
import http.server
import logging
import time
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Iterator

from evolve.gateway.trace import EXCERPT_BYTES
from evolve.gateway.wire import HTTPError, cut, json_bytes

if TYPE_CHECKING:
    from evolve.gateway.server import UnixHTTPServer

log = logging.getLogger(__name__)

IDLE_TIMEOUT_S = 3600.0
"""Seconds an idle keep-alive connection is kept open (a harness may run tests for long between calls)."""
DISCARD_MAX_BYTES = 64 * 1024 * 1024
"""Bytes of an unwanted request body (refused, oversize, misrouted) read and thrown away so that the
client gets to read the answer; a longer body is cut off by closing the connection."""
DISCARD_S = 5.0
"""Seconds spent at most reading and throwing away one unwanted body."""
MAX_HEADER_BYTES = 64 * 1024
"""Bytes of a request's header block (all header lines); more gets 431, so headers cannot be used to
make the gateway hold megabytes either."""
_QUOTE_CHARS = 200  # characters of a request's path or method quoted in an error message
_PIECE = 64 * 1024  # bytes read at a time from a request body
_CHAT_ROUTES = ("/v1/chat/completions", "/chat/completions")
_MESSAGES_ROUTES = ("/v1/messages", "/messages")
_FREE_ROUTES = ("/health", "/v1/models", "/models")
BRIDGE_HEADER = "X-Evolve-Bridge"
"""Sent by the loopback bridge with its ``GET /health`` once it listens (``evolve.gateway.bridge_ready``)."""


class _Malformed(Exception):
    """The request body's framing is broken (chunk sizes, a body shorter than announced)."""


class _BodyError(Exception):
    """The chat body could not be taken: ``error`` is the answer; ``excerpt`` and ``nbytes`` (bytes
    announced or seen) go in the trace; ``rest`` yields what is left of a chunked body."""

    def __init__(self, error: HTTPError, excerpt: bytes = b"", nbytes: int = 0,
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


def _too_large(cap: int, length: int | None) -> HTTPError:
    size = f"is {length} bytes" if length is not None else "goes on"
    return HTTPError(413, "request_too_large",
                     f"the request body {size}, over the gateway's limit of {cap} bytes per request "
                     "(limits.max_request_bytes): send less (drop or shorten old messages and long tool "
                     "outputs), or raise limits.max_request_bytes in evolve.yaml")


class ConnectionHandler(http.server.BaseHTTPRequestHandler):
    """Serves one connection's requests in turn; the server's ``calls`` answers them."""

    server: UnixHTTPServer
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
        calls = self.server.calls
        seq, refusal = calls.ledger.admit()
        if refusal is not None:
            status, data = calls.refuse(seq, self._start, refusal, 0)
        else:
            reason = cut(": ".join(filter(None, [message or HTTPStatus(code).phrase, explain])), _QUOTE_CHARS)
            status, data = calls.reject(seq, self._start,
                                        HTTPError(int(code), "invalid_request", f"malformed HTTP request: {reason}"),
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
            raise _BodyError(HTTPError(400, "invalid_request", "invalid Content-Length header"))
        if kind == "length" and length > cap:
            raise _BodyError(_too_large(cap, length), nbytes=length)
        self._continue()
        if kind == "length":
            data = self.rfile.read(length)
            if len(data) < length:
                raise _BodyError(HTTPError(400, "invalid_request", f"the request body ended after {len(data)} "
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
            raise _BodyError(HTTPError(400, "invalid_request", str(e)),
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

    def _keys(self) -> list[str]:
        """The API keys the request carries (``Authorization: Bearer``, ``x-api-key``)."""
        keys = []
        for value in self.headers.get_all("Authorization") or []:
            scheme, _, key = value.strip().partition(" ")
            keys.append(key.strip() if scheme.lower() == "bearer" else value.strip())
        keys.extend(v.strip() for v in self.headers.get_all("x-api-key") or [])
        return keys

    def _dispatch(self) -> None:
        calls = self.server.calls
        route = self._route()
        kind, length = self._framing()
        bodiless = kind == "length" and length == 0
        key_ok = calls.key_ok(self._keys())
        if self.command == "GET" and route in _FREE_ROUTES and bodiless and key_ok:
            if route == "/health" and self.headers.get(BRIDGE_HEADER):
                calls.bridge_ready = True
            self._send(200, json_bytes({"ok": True} if route == "/health" else calls.models_payload()))
            return
        seq, refusal = calls.ledger.admit()
        if refusal is not None:
            _, nbytes = self._discard_body()
            if refusal.status == 503:
                self.close_connection = True
            self._send(*calls.refuse(seq, self._start, refusal, nbytes))
            return
        if not key_ok:
            excerpt, nbytes = self._discard_body()
            error = HTTPError(401, "invalid_api_key",
                              "the API key is not this task's: use the key evolve set in OPENAI_API_KEY and "
                              "ANTHROPIC_API_KEY inside the sandbox (the endpoint takes no other key)")
            self._send(*calls.reject(seq, self._start, error, excerpt, nbytes))
            return
        if self.command == "POST" and route in _CHAT_ROUTES + _MESSAGES_ROUTES:
            self._chat(seq, "messages" if route in _MESSAGES_ROUTES else "chat")
            return
        excerpt, nbytes = self._discard_body()
        where = cut(f"{self.command} {self.path}", _QUOTE_CHARS)
        if route in _CHAT_ROUTES or route in _MESSAGES_ROUTES or route in _FREE_ROUTES:
            if self.command == "GET" and route in _FREE_ROUTES:
                error = HTTPError(400, "invalid_request", f"{route} takes no request body")
            else:
                error = HTTPError(405, "method_not_allowed",
                                  f"{where}: wrong method; use POST for chat completions and messages, GET for /v1/models "
                                  "and /health")
        else:
            error = HTTPError(404, "not_found", f"no route for {where}; use POST /v1/chat/completions")
        self._send(*calls.reject(seq, self._start, error, excerpt, nbytes))

    def _chat(self, seq: int, api: str) -> None:
        calls = self.server.calls
        try:
            raw = self._read_body(calls.limits.max_request_bytes)
        except _BodyError as e:
            self.close_connection = True
            excerpt, nbytes = e.excerpt, e.nbytes
            if e.rest is not None:
                excerpt, nbytes = self._drain(e.rest, excerpt, nbytes)
            elif e.error.status == 413:
                excerpt, _ = self._discard_body()
            self._send(*calls.reject(seq, self._start, e.error, excerpt, nbytes))
            return
        status, data, content_type = calls.chat(seq, self._start, raw, api)
        if status == 503:
            self.close_connection = True
        self._send(status, data, content_type)

    def _send(self, status: int, data: bytes, content_type: str = "application/json") -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
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
