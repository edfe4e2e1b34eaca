"""The task's trace: a JSONL file, appended to and never read back (line shapes: ``evolve.gateway``).

- ``TraceWriter.record``: a request's full line while the file stays within ``max_bytes``; the first line
  that would go over it is replaced by a ``trace_cap_reached`` note, and from then on each counted request
  gets a summary line (under ``SUMMARY_LINE_BYTES``) and a refused one only a count (``untraced``).
- ``TraceWriter.note``: a line without ``call`` (``not_traced`` at close).
- A write failure is logged and reported once through ``on_failure`` (an infrastructure error); nothing
  here raises after ``open``.
- ``trace_record`` and ``append_trace`` are shared with ``evolve.roles`` (optimizer calls), so every model
  call evolve makes is recorded in the same shape.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable

from evolve.gateway.wire import cut, json_bytes

log = logging.getLogger(__name__)

EXCERPT_BYTES = 1024
"""Bytes of an invalid request's raw body (or request line) kept in its trace line."""
SUMMARY_LINE_BYTES = 1024
"""Upper bound of a summary trace line, in bytes (the error message is cut to fit)."""
_MESSAGE_BYTES = 300  # UTF-8 bytes of an error message kept in a summary line


class TraceWriter:
    """Appends lines to ``path``, full ones up to ``max_bytes`` (bytes), then summaries. Thread-safe."""

    def __init__(self, path: Path, max_bytes: int, on_failure: Callable[[str], None]) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self._on_failure = on_failure
        self._lock = threading.Lock()
        self._bytes = 0
        self._full = True  # full lines still go in (the trace is under max_bytes)
        self._failed = False
        self._untraced = 0  # refused requests past the cap

    def open(self) -> None:
        """Create the parent directories and count the bytes already there. Raises OSError."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._bytes = self.path.stat().st_size
        except FileNotFoundError:
            self._bytes = 0

    @property
    def untraced(self) -> int:
        """Requests refused without being counted, past the cap: they got no line."""
        with self._lock:
            return self._untraced

    def record(self, summary: dict, full: "dict | Callable[[], dict] | None" = None, *, size_hint: int = 0,
               counted: bool = True) -> None:
        """Append one request's line: ``full`` (a record, or a function making it) while the trace stays
        within ``max_bytes``, else ``summary``; without ``full`` the summary is the line.
        Past the cap a request that was not ``counted`` gets no line, only a count (``untraced``).
        ``size_hint`` is a lower bound of the full line's bytes: over the room left, it is not even made.
        """
        cap = self.max_bytes
        with self._lock:
            if self._full:
                line = None
                if full is None:
                    line = _line(summary)
                elif self._bytes + size_hint <= cap:
                    line = _line(full() if callable(full) else full)
                if line is not None and self._bytes + len(line) <= cap:
                    self._append(line)
                    return
                self._full = False
                self._append(_line(_note(
                    "trace_cap_reached", f"the trace reached limits.max_trace_bytes ({cap} bytes): from here on "
                                         "each counted request gets a summary line (sizes, status, usage, cost, "
                                         "error type; no request or response body), and requests refused "
                                         "without being counted are only counted", max_trace_bytes=cap)))
            if counted:
                self._append(_line(summary))
                return
            self._untraced += 1

    def note(self, kind: str, message: str, **fields: Any) -> None:
        """Append a note line ``{"note": kind, "ts", **fields, "message"}``."""
        with self._lock:
            self._append(_line(_note(kind, message, **fields)))

    def _append(self, line: bytes) -> None:
        """Append ``line`` to the file. Caller holds ``self._lock``."""
        try:
            with open(self.path, "ab") as f:
                f.write(line)
            self._bytes += len(line)
        except OSError as e:
            log.error("gateway: cannot append to trace %s: %s", self.path, e)
            if not self._failed:
                self._failed = True
                self._on_failure(f"gateway: cannot write the trace {self.path}: {e}")


def _line(record: dict) -> bytes:
    return json_bytes(record) + b"\n"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def _note(kind: str, message: str, **fields: Any) -> dict:
    return {"note": kind, "ts": _now(), **fields, "message": message}


def summary_record(*, call: int, start: float, status: int, model: str, request_bytes: int, response_bytes: int,
                   error: dict | None, prompt_tokens: int = 0, completion_tokens: int = 0,
                   cost_usd: float = 0.0) -> dict:
    """A summary trace line (see ``evolve.gateway``): no bodies, sizes in bytes, the error message cut,
    under ``SUMMARY_LINE_BYTES`` once serialized; ``start`` is the ``time.monotonic()`` of the call's start."""
    return {
        "call": call,
        "ts": _now(),
        "latency_s": round(time.monotonic() - start, 6),
        "status": status,
        "model": cut(str(model), 120),
        "summarized": True,
        "request_bytes": request_bytes,
        "response_bytes": response_bytes,
        "error": None if error is None else {"type": cut(str(error.get("type")), 60),
                                             "message": cut(str(error.get("message")), _MESSAGE_BYTES)},
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens},
        "cost_usd": cost_usd,
    }


def trace_record(*, call: int, start: float, status: int, model: str, request: Any, response: dict | None,
                 error: dict | None, prompt_tokens: int = 0, completion_tokens: int = 0,
                 cost_usd: float = 0.0) -> dict:
    """One full trace line (see ``evolve.gateway``); ``start`` is the ``time.monotonic()`` of the call's start."""
    return {
        "call": call,
        "ts": _now(),
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
