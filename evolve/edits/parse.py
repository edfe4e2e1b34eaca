"""Reading edits from a reply: SEARCH/REPLACE blocks (``parse_edits``) or unified diffs
(``parse_unified_diff``), each into ``EditBlock`` objects.

Why SEARCH/REPLACE, and the counterpoint. aider measured its edit formats.
On its laziness benchmark (89 Python refactorings in large files, built to
provoke comments like "# ... original method body ...") gpt-4-1106-preview
scored 20% with SEARCH/REPLACE and 61% with unified diffs (lazy comments on 12
tasks vs 4); gpt-4-0613 26% vs 59%. So unified diffs can be much better for a
lazy model on large rewrites. We still default to SEARCH/REPLACE: harness
files are small and the optimizer makes one planned change per generation,
not large refactors; the lazy failure is caught here (a REPLACE line like
"# ... rest of code unchanged" fails the block with feedback instead of
deleting code); and blocks need no line numbers. We have no capable model
offline to measure formats ourselves, so this is a judgement, not a
measurement. It is cheap to revisit: ``parse_unified_diff`` reads the other format,
each parses into ``EditBlock`` objects and shares the tolerant matcher.
``parse_unified_diff`` is the second format: each hunk's ``-`` and context
lines become SEARCH, its ``+`` and context lines REPLACE (``@@`` line numbers
are ignored, as models get them wrong). ``parse_edits`` also falls back to it
when a reply holds a diff and no block. To measure: replay recorded plans
through the patch step with each format and compare first-round apply rates
and rounds per generation.

One unified-diff parser. The hunks' lines are read by ``unidiff`` (PyPI),
the parser the project uses for diffs. A model's diff is not one git made,
though: unidiff trusts the ``@@`` counts and silently cuts a hunk that says
fewer lines than it has. So ``parse_unified_diff`` first finds the file
headers and hunks tolerantly (fences, blank context lines that lost their
space, missing or wrong numbers) and rewrites each ``@@`` header with the
counts of the lines it has; unidiff then classifies the lines. The grader's
``evolve.grading.patch_paths`` is the only other diff reader, and it stays
hand-written on purpose (see its docstring): it reads headers of hostile
bytes, which unidiff decodes as UTF-8 only, and git's C-quoted names, which
unidiff leaves quoted and escaped.

"""

from __future__ import annotations

import re
from dataclasses import dataclass

from evolve.edits.text import _join, _normalize_newlines, _split_lines
from evolve.errors import EditFormatError


@dataclass(frozen=True)
class EditBlock:
    """One edit: replace the SEARCH lines of ``path`` with the REPLACE lines.

    An empty (or whitespace-only) ``search`` creates ``path``, or fills it if
    it exists and is empty.
    """

    path: str
    """As the model wrote it: repo-relative (``harness/agent.py``) or harness-relative (``agent.py``)."""
    search: str
    replace: str

_HEAD = re.compile(r"^\s*<{5,9}\s*SEARCH\s*$", re.IGNORECASE)

_DIVIDER = re.compile(r"^\s*={5,9}\s*$")

_TAIL = re.compile(r"^\s*>{5,9}\s*REPLACE\s*$", re.IGNORECASE)

_FENCE = re.compile(r"^\s*(`{3,}|~{3,})")

_LABEL = re.compile(r"^(?:file(?:name)?|path)\s*:\s*", re.IGNORECASE)

_BULLET = re.compile(r"^(?:[-+]|\d+[.)])\s+")

_LOOKBACK = 6
"""Lines above ``<<<<<<< SEARCH`` searched for the path (fences and blank lines are skipped)."""


def parse_edits(text: str) -> list[EditBlock]:
    """Parse the SEARCH/REPLACE blocks of a model reply, in order.

    Tolerated: prose before, between and after blocks; fences of any length
    and language tag, or none; the path on the line before the fence, before
    ``<<<<<<< SEARCH`` or a few lines up across fences and blank lines; a path
    in backticks, bold, after ``#``/``-``/``File:``, or ending in ``:``; 5 to 9
    marker characters; CRLF line ends. A reply with no block but a unified
    diff is parsed with ``parse_unified_diff``. A reply with neither gives [].

    A path must contain ``/`` or ``.`` to be told from prose: write
    ``harness/Makefile``, not ``Makefile``.

    Inside a block every line is content, fences included. In the REPLACE
    part a ``=======`` line is content too (prompt files use them as rules).

    Raises:
        EditFormatError: a block without a path, without ``=======`` or
            without ``>>>>>>> REPLACE``, or a ``>>>>>>> REPLACE`` without a
            ``<<<<<<< SEARCH``. The message names the block and what is missing.
    """
    lines = _split_lines(_normalize_newlines(text))
    blocks: list[EditBlock] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if _TAIL.match(line):
            raise EditFormatError(
                f"block {len(blocks) + 1}: `>>>>>>> REPLACE` on line {i + 1} of your reply has no "
                f"`<<<<<<< SEARCH` line before it", block=len(blocks) + 1)
        if not _HEAD.match(line):
            i += 1
            continue
        number = len(blocks) + 1
        path = _find_path(lines, i)
        where = f"block {number}" + (f" ({path})" if path else "")
        search: list[str] = []
        j = i + 1
        while j < len(lines) and not _DIVIDER.match(lines[j]):
            if _HEAD.match(lines[j]) or _TAIL.match(lines[j]):
                marker = "`<<<<<<< SEARCH`" if _HEAD.match(lines[j]) else "`>>>>>>> REPLACE`"
                raise EditFormatError(
                    f"{where}: missing the `=======` line between the SEARCH and REPLACE lines "
                    f"(found {marker} on line {j + 1} of your reply first)", block=number)
            search.append(lines[j])
            j += 1
        if j == len(lines):
            raise EditFormatError(f"{where}: missing the `=======` line between the SEARCH and REPLACE "
                                  f"lines (your reply ended first)", block=number)
        replace: list[str] = []
        j += 1
        while j < len(lines) and not _TAIL.match(lines[j]):
            if _HEAD.match(lines[j]):
                raise EditFormatError(
                    f"{where}: missing the `>>>>>>> REPLACE` line that ends the block (found the next "
                    f"`<<<<<<< SEARCH` on line {j + 1} of your reply first)", block=number)
            replace.append(lines[j])
            j += 1
        if j == len(lines):
            raise EditFormatError(f"{where}: missing the `>>>>>>> REPLACE` line that ends the block "
                                  f"(your reply ended first)", block=number)
        if path is None:
            raise EditFormatError(
                f"block {number}: no file path before `<<<<<<< SEARCH` (line {i + 1} of your reply). "
                f"Put the file's path, like harness/agent.py, alone on the line before the opening fence",
                block=number)
        blocks.append(EditBlock(path, "".join(search), "".join(replace)))
        i = j + 1
    if not blocks and re.search(r"^@@", text, re.MULTILINE) and re.search(r"^\+\+\+ ", text, re.MULTILINE):
        return parse_unified_diff(text)
    return blocks


def _find_path(lines: list[str], head: int) -> str | None:
    for j in range(head - 1, max(-1, head - 1 - _LOOKBACK), -1):
        s = lines[j].strip()
        if not s or _FENCE.match(s):
            continue
        return _clean_path(s)
    return None


def _clean_path(s: str) -> str | None:
    s = s.replace("`", "").replace("*", "").replace("\\_", "_")
    s = _LABEL.sub("", _BULLET.sub("", s.lstrip("#").strip()))
    s = re.sub(r"\s*\([^()]*\)$", "", s)
    s = s.strip().rstrip(":").strip().strip("'\"")
    if (not s or any(c.isspace() for c in s) or not ("/" in s or "." in s) or re.fullmatch(r"[\d.]+", s)
            or any(c in s for c in "<>|")):
        return None
    return s


def parse_unified_diff(text: str) -> list[EditBlock]:
    """Parse a unified diff into one ``EditBlock`` per hunk.

    A hunk's ``-`` and context lines become SEARCH, its ``+`` and context
    lines REPLACE, so hunks go through the same tolerant matcher as blocks.
    ``@@`` line numbers are ignored. A file created from ``/dev/null`` gets an
    empty SEARCH. ``a/`` and ``b/`` prefixes are dropped. An empty line inside
    a hunk counts as an empty context line (models drop the leading space).

    Raises:
        EditFormatError: a hunk before any ``---``/``+++`` header, or a diff
            that deletes a file (not supported: empty it instead).
    """
    lines = _normalize_newlines(text).split("\n")
    hunks_found: list[tuple[str, str, list[str]]] = []
    old = new = None
    hunks = 0
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ "):
            old, new = _diff_path(line[4:]), _diff_path(lines[i + 1][4:])
            # git's a/ and b/ prefixes, only when the pair shows them (a real dir may be named b/)
            if old.startswith("a/") and new.startswith("b/"):
                old, new = old[2:], new[2:]
            elif old == "/dev/null" and new.startswith("b/"):
                new = new[2:]
            elif new == "/dev/null" and old.startswith("a/"):
                old = old[2:]
            i += 2
            continue
        if not line.startswith("@@"):
            i += 1
            continue
        hunks += 1
        if new is None:
            raise EditFormatError(f"hunk {hunks}: no `--- a/PATH` and `+++ b/PATH` lines before its `@@` line",
                                  block=hunks)
        if new == "/dev/null":
            raise EditFormatError(f"hunk {hunks}: deletes {old}; deleting files is not supported, "
                                  f"empty the file instead", block=hunks)
        body: list[str] = []
        i += 1
        while i < len(lines):
            ln = lines[i]
            if ln.startswith(("@@", "```", "~~~", "diff ")):
                break
            if ln.startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ "):
                break
            if ln and ln[0] not in " +-\\":
                break
            body.append(ln)
            i += 1
        while body and body[-1] == "":
            body.pop()
        hunks_found.append((old, new, body))
    blocks = []
    for (old, new, _body), hunk in zip(hunks_found, _parsed_hunks(hunks_found)):
        search = [ln.value.rstrip("\n") for ln in hunk if ln.is_context or ln.is_removed]
        replace = [ln.value.rstrip("\n") for ln in hunk if ln.is_context or ln.is_added]
        blocks.append(EditBlock(new, "" if old == "/dev/null" else _join(search), _join(replace)))
    return blocks


def _parsed_hunks(found: list[tuple[str, str, list[str]]]) -> list:
    """Each found hunk parsed by ``unidiff``, its ``@@`` header rewritten with the counts of the
    lines it has (models get them wrong, and unidiff trusts them: a short count cuts the hunk)."""
    from unidiff import PatchSet
    from unidiff.errors import UnidiffParseError

    text = []
    for n, (_old, _new, body) in enumerate(found, 1):
        lines = [ln or " " for ln in body]  # an empty line is an empty context line whose space was dropped
        removed = sum(ln[0] in " -" for ln in lines)
        added = sum(ln[0] in " +" for ln in lines)
        text += [f"--- a/hunk{n}", f"+++ b/hunk{n}", f"@@ -1,{removed} +1,{added} @@", *lines]
    try:
        files = PatchSet("\n".join(text) + "\n") if text else []
    except UnidiffParseError as e:  # not expected: the hunks were cut and counted above
        raise EditFormatError(f"the unified diff cannot be parsed: {e}") from None
    return [f[0] if len(f) else [] for f in files]


def _diff_path(s: str) -> str:
    return s.split("\t")[0].strip().strip('"')

"""Reply parsers by format name; each returns ``EditBlock`` objects for ``apply_edits``."""
