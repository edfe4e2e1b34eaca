"""What the gateway puts on the wire: JSON bytes and error answers.

- ``json_bytes(payload)``: UTF-8 JSON, non-ASCII kept as is, anything not JSON as its ``str``.
- ``HTTPError(status, kind, message)``: an answer other than 200; ``error_body`` is its JSON,
  ``{"error": {"type": kind, "message", "code"}}`` (``code`` is the kind, except
  ``context_length_exceeded`` for ``context_window_exceeded``, as OpenAI clients expect).
- ``cut(text, max_bytes)``: text cut to at most that many bytes of UTF-8 (quotes, summary lines).
"""

from __future__ import annotations

import json
from typing import Any


class HTTPError(Exception):
    """An HTTP error answer: ``status`` (e.g. 400), ``kind`` (the error's ``type``), ``message``."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message


def error_body(kind: str, message: str) -> dict:
    code = "context_length_exceeded" if kind == "context_window_exceeded" else kind
    return {"error": {"type": kind, "message": message, "code": code}}


def json_bytes(payload: Any) -> bytes:
    return json.dumps(payload, ensure_ascii=False, default=str).encode("utf-8")


def cut(text: str, max_bytes: int) -> str:
    """``text`` cut to at most ``max_bytes`` bytes of UTF-8."""
    data = text.encode("utf-8", "replace")
    return text if len(data) <= max_bytes else data[:max_bytes].decode("utf-8", "ignore")
