"""Cutting long traces down to fit a model's context: head, tail and errors kept.

``trace_records`` reads a gateway trace (``trace.jsonl``) as a stream: the file
is never read whole, and no line longer than ``TRACE_LINE_BYTES`` is held whole.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterator

TRACE_LINE_BYTES = 1024 * 1024
"""Longest trace line parsed whole, in bytes; of a longer one only the head and the tail are kept."""
_HEAD_BYTES = 4096
_TAIL_BYTES = 256 * 1024

_ERROR = re.compile(r"Traceback|Error|Exception|FAILED|ERROR|assert|exit status|timed out|limit", re.I)


def cut(text: str, max_chars: int, *, head: float = 0.3, tail: float = 0.4) -> str:
    """``text`` if short enough, else its head, its tail, and in between the lines that look like errors.

    Sizes are in characters; the result is at most about ``max_chars`` long.
    """
    if len(text) <= max_chars:
        return text
    h, t = int(max_chars * head), int(max_chars * tail)
    middle = text[h:len(text) - t]
    budget = max_chars - h - t
    picked, used = [], 0
    for line in middle.splitlines():
        if _ERROR.search(line):
            line = line[:300]
            if used + len(line) + 1 > budget:
                break
            picked.append(line)
            used += len(line) + 1
    elided = len(middle) - used
    errors = ("\n".join(picked) + "\n") if picked else ""
    return f"{text[:h]}\n[... {elided} characters cut; error lines kept:]\n{errors}[...]\n{text[len(text) - t:]}"


def trace_records(path: Path) -> Iterator[dict]:
    """The JSON objects of the JSONL file ``path`` (nothing if it does not exist), line by line.

    Memory is bounded whatever the file holds: a line over ``TRACE_LINE_BYTES`` is read in pieces and
    only its first ``_HEAD_BYTES`` and last ``_TAIL_BYTES`` are kept; the record made from them has
    ``"truncated": true``, the ``call`` and ``status`` of the head and, when the tail holds them whole,
    the ``response``, ``error``, ``usage`` and ``cost_usd`` that end a gateway trace line. Lines that are
    not JSON objects are skipped.
    """
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return
    with f:
        while True:
            line = f.readline(TRACE_LINE_BYTES + 1)
            if not line:
                return
            if len(line) > TRACE_LINE_BYTES and not line.endswith(b"\n"):
                head, tail = line[:_HEAD_BYTES], line[-_TAIL_BYTES:]
                del line  # not held while the rest of the line is read
                while not tail.endswith(b"\n"):
                    more = f.readline(_TAIL_BYTES)
                    if not more:
                        break
                    tail = (tail + more)[-_TAIL_BYTES:]
                yield _partial_record(head, tail)
                continue
            try:
                record = json.loads(line)
            except ValueError:  # a torn or foreign line: not a record
                continue
            finally:
                del line
            if isinstance(record, dict):
                yield record


def _partial_record(head: bytes, tail: bytes) -> dict:
    record: dict = {"truncated": True}
    start = head.decode("utf-8", "replace")
    for key in ("call", "status"):
        m = re.search(rf'"{key}": (\d+)', start)
        if m:
            record[key] = int(m.group(1))
    end = tail.decode("utf-8", "replace")
    decoder = json.JSONDecoder()
    for key in ("response", "error", "usage", "cost_usd"):
        at = end.rfind(f'"{key}": ')
        if at < 0:
            continue
        try:
            value, _ = decoder.raw_decode(end, at + len(key) + 4)
        except ValueError:  # begins before the tail: left out
            continue
        record[key] = value
    return record
