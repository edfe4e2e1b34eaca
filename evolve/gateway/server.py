"""The unix-socket HTTP server, with its cap on connections, and the client to reach it.

- ``UnixHTTPServer(path, calls)`` binds ``path`` (even one too long for sockaddr_un) and serves each
  connection in a thread of its own (``evolve.gateway.connection``), at most ``limits.max_connections`` at
  once. One more connection closes a keep-alive connection idle for ``IDLE_REAP_S`` seconds or more and
  takes its place; if there is none and none closes within ``ADMIT_WAIT_S`` seconds, it gets 429
  ``too_many_connections`` from the accepting thread, without its request being read, and is closed
  (counted in ``Ledger.refused_connections``). No thread is started for it.
- ``UnixHTTPConnection``: an ``http.client`` connection to such a server.
"""

from __future__ import annotations

import http.client
import http.server
import logging
import os
import socket
import socketserver
import sys
import threading
import time
from http import HTTPStatus
from pathlib import Path
from typing import Any

from evolve.gateway.connection import ConnectionHandler
from evolve.gateway.handler import CallHandler
from evolve.gateway.wire import error_body, json_bytes

log = logging.getLogger(__name__)

IDLE_REAP_S = 1.0
"""Seconds a connection must have been idle before a new connection over ``limits.max_connections``
closes it to take its place."""
ADMIT_WAIT_S = 0.25
"""Seconds a connection over ``limits.max_connections`` waits for one to close (a client that closes a
connection and opens the next may be a moment ahead of the server) before it gets 429."""
_SUN_PATH_MAX = 100  # Linux allows 107 bytes plus NUL; stay clear of it


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
    data = json_bytes(error_body(kind, message))
    head = (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nServer: evolve-gateway\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\nConnection: close\r\n\r\n")
    return head.encode("ascii") + data


class UnixHTTPServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    """One thread per connection, at most ``limits.max_connections`` of them (see ``process_request``)."""

    address_family = socket.AF_UNIX
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = False
    request_queue_size = 64

    def __init__(self, path: Path, calls: CallHandler) -> None:
        self.calls = calls
        self._conn_lock = threading.Lock()
        self._conn_freed = threading.Condition(self._conn_lock)
        self._conns: dict[socket.socket, _Conn] = {}
        super().__init__(str(path), ConnectionHandler)

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
            while len(self._conns) >= self.calls.limits.max_connections:
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
        self.calls.ledger.connection_refused()
        limit = self.calls.limits.max_connections
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
