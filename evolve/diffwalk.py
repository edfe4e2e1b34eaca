"""One walker over the lines of a unified (git) diff: which lines are file headers and which are
hunk lines, decided by counting each hunk's lines as ``git apply`` does.

Counting is what keeps a removed line that reads ``-- x`` (shown as ``--- x``) or an added
``++ y`` from passing for a file header. The walker reads bytes, so a candidate's patch
(hostile, maybe not UTF-8) is read as git reads it; callers with text encode it with
``surrogateescape`` and decode what they keep the same way.

Why not ``unidiff`` here (``evolve.edits.parse`` does use it for model-written diffs): unidiff 1.0
decodes a patch as UTF-8 only (a Latin-1 patch raises ``UnicodeDecodeError``) and keeps git's
C-quoted names quoted and escaped; the two callers (``evolve.grading.patch_paths`` and
``evolve.evalsets.swesmith.reverse_diff``) need bytes and the header lines as git wrote them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterator, Literal

HUNK = re.compile(rb"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@(.*)$", re.DOTALL)
"""A hunk header; groups: old start, old count (absent: 1), new start, new count (absent: 1),
and the rest of the line (git's function context, with its leading space)."""

Kind = Literal["header", "hunk", "-", "+", " ", "\\"]


@dataclass(frozen=True)
class DiffLine:
    """One line of a diff (without its ``\\n``).

    ``kind``: ``header`` (any line outside a hunk: ``diff --git``, ``index``, ``---``/``+++``,
    ``rename from``, ``GIT binary patch`` and its data, ...), ``hunk`` (an ``@@`` line), ``-``
    (removed), ``+`` (added), `` `` (context; git may strip a blank context line's space) or
    ``\\`` (``\\ No newline at end of file``, kept with the hunk it follows).
    """

    kind: Kind
    text: bytes


def walk(diff: bytes) -> Iterator[DiffLine]:
    """Every line of ``diff`` (split at ``\\n`` only), classified. A hunk ends when its ``@@``
    counts are used up (and any ``\\`` lines after its last line are read), as ``git apply``
    counts; a diff cut short ends inside its last hunk. Never raises."""
    lines = diff.split(b"\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        m = HUNK.match(line)
        i += 1
        if not m:
            yield DiffLine("header", line)
            continue
        yield DiffLine("hunk", line)
        old = int(m.group(2)) if m.group(2) is not None else 1
        new = int(m.group(4)) if m.group(4) is not None else 1
        while i < len(lines) and (old > 0 or new > 0 or lines[i].startswith(b"\\")):
            body = lines[i]
            i += 1
            tag = body[:1]
            if tag == b"\\":
                yield DiffLine("\\", body)
            elif tag == b"-":
                old -= 1
                yield DiffLine("-", body)
            elif tag == b"+":
                new -= 1
                yield DiffLine("+", body)
            else:  # context (a blank line is a context line whose space was stripped)
                old, new = old - 1, new - 1
                yield DiffLine(" ", body)
