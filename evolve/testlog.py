"""Read per-test outcomes out of pytest's console output.

The grader runs the task's tests with ``pytest -rA`` and hands the captured
output here. Like SWE-bench's ``parse_log_pytest`` (swebench/harness/log_parsers),
the parser reads one line at a time and recognises two shapes:

* the "short test summary info" lines that ``-rA`` prints, status first:
  ``PASSED path::test``, ``FAILED path::test - message``, ``ERROR ...``,
  ``XFAIL ...``, ``XPASS ...``;
* the lines ``-v`` prints while running, node id first:
  ``path::test PASSED  [ 50%]`` (also with pytest-xdist's ``[gw0] [ 50%]`` prefix).

Where SWE-bench cuts a node id at its first whitespace, this parser keeps the
whole id: a parametrized id such as ``test_x[a - b]`` may contain spaces and
even `` - ``, so the end of the id is found by matching the brackets (see
``status_of`` for looking up SWE-bench's cut ids). ANSI colour codes are
stripped first. A test reported more than once keeps its worst outcome (for
example ``PASSED`` for the call and ``ERROR`` at teardown gives ``ERROR``).

``SKIPPED [1] path:line: reason`` summary lines name a location, not a test,
and are ignored as in SWE-bench; skipped tests are known by id only from ``-v``
lines. Collection errors (``ERROR path.py``) name a file, not a test: they are
not in the per-test map; ``collection_errors`` lists them.
"""

from __future__ import annotations

import re

from evolve.types import TestStatus

__all__ = [
    "collection_errors",
    "parse_pytest_report",
    "status_of",
    "strip_ansi",
    "summary_counts",
]

_REPORTED = (TestStatus.PASSED, TestStatus.FAILED, TestStatus.ERROR, TestStatus.SKIPPED,
             TestStatus.XFAIL, TestStatus.XPASS)

_SEVERITY = {
    TestStatus.PASSED: 0,
    TestStatus.XFAIL: 1,
    TestStatus.SKIPPED: 2,
    TestStatus.XPASS: 3,
    TestStatus.FAILED: 4,
    TestStatus.ERROR: 5,
}
"""Higher is worse: the outcome kept when a test is reported several times."""

_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-Z\\-_]")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")

_STATUS = "|".join(s.value for s in _REPORTED)

_PATH_PART = re.compile(r"[^\s\[]+")
"""The part of a node id before its parametrize brackets: path and names."""
_STATUS_WORD = re.compile(rf"^(?P<status>{_STATUS})(?= )")
_STATUS_AFTER = re.compile(rf"^ (?P<status>{_STATUS})(?:\s|$)")
# Fallback when the brackets do not balance (a parameter id such as "]"):
# the lazy ".*?" ends the bracket part at the first "]" after which the rest
# of the line fits, preferring a " - message" tail.
_LAZY_STRICT = re.compile(r"^(?P<id>[^\s\[]+\[.*?\])(?P<rest>(?: - .*)?)$")
_LAZY_LOOSE = re.compile(r"^(?P<id>[^\s\[]+\[.*?\])(?P<rest>(?:\s.*)?)$")
_LAZY_ID_FIRST = re.compile(rf"^(?P<id>[^\s\[]+\[.*?\]) (?P<status>{_STATUS})(?:\s|$)")
_XDIST_PREFIX = re.compile(r"^\[gw\d+\] \[ *\d+%\] ")


def strip_ansi(text: str) -> str:
    """``text`` without ANSI escape sequences and stray control characters (tabs and newlines stay)."""
    return _CONTROL.sub("", _ANSI.sub("", text))


def _lines(output: str) -> list[str]:
    # Split on "\n" only: str.splitlines also splits on characters such as
    # U+2028 that may appear inside a test id or a message.
    return [strip_ansi(line.rstrip("\r")) for line in output.split("\n")]


def _split_node_id(text: str) -> tuple[str, str] | None:
    """``text`` split into a leading node id and the rest, matching brackets.

    ``"t.py::test_f[a - b] - msg"`` gives ``("t.py::test_f[a - b]", " - msg")``;
    ``"t.py::test_f[[1] - [2]]"`` keeps the nested brackets. None when
    ``text`` does not start with something shaped like a node id.
    """
    m = _PATH_PART.match(text)
    if m is None:
        return None
    end = m.end()
    if end < len(text) and text[end] == "[":
        depth = 0
        for i in range(end, len(text)):
            if text[i] == "[":
                depth += 1
            elif text[i] == "]":
                depth -= 1
                if depth == 0:
                    end = i + 1
                    break
        else:
            end = -1
        if end == -1 or (end < len(text) and not text[end].isspace()):
            # Unbalanced brackets inside a parameter id.
            lazy = _LAZY_STRICT.match(text) or _LAZY_LOOSE.match(text)
            if lazy is None:
                return None
            return lazy.group("id"), lazy.group("rest")
    elif end < len(text) and not text[end].isspace():
        return None
    return text[:end], text[end:]


def _parse_line(line: str) -> tuple[str, TestStatus] | None:
    line = _XDIST_PREFIX.sub("", line)
    status_word = _STATUS_WORD.match(line)
    if status_word is not None:
        # "-rA" summary: "STATUS nodeid", then " - message" or, for XPASS
        # before pytest 8, " reason".
        status = status_word.group("status")
        split = _split_node_id(line[status_word.end() + 1:])
        if split is None:
            # As SWE-bench does: the id ends at the first whitespace.
            parts = line.split()
            split = (parts[1], "") if len(parts) > 1 else None
    else:
        # "-v" progress: "nodeid STATUS [ 50%]", "nodeid SKIPPED (reason) [ 60%]".
        split = _split_node_id(line)
        after = _STATUS_AFTER.match(split[1]) if split is not None else None
        if after is None:
            after = _LAZY_ID_FIRST.match(line)
            if after is None:
                return None
            split = (after.group("id"), "")
        status = after.group("status")
    if split is None:
        return None
    node_id = split[0]
    if "::" not in node_id:
        return None  # a collection error ("ERROR path.py") or a skip location ("[1]")
    return node_id, TestStatus(status)


def parse_pytest_report(output: str) -> dict[str, TestStatus]:
    """Each test's outcome, by pytest node id, from pytest's console output.

    Reads both the ``-rA`` short summary and ``-v`` progress lines (see the
    module docstring). A test that appears several times keeps its worst
    outcome: ``ERROR`` > ``FAILED`` > ``XPASS`` > ``SKIPPED`` > ``XFAIL`` >
    ``PASSED``. Output without any result line (pytest crashed, a collection
    error interrupted the session, the run timed out) gives ``{}``.
    ``TestStatus.MISSING`` is never returned: that is for the caller to assign
    to the tests it expected and did not find.
    """
    statuses: dict[str, TestStatus] = {}
    for line in _lines(output):
        parsed = _parse_line(line)
        if parsed is None:
            continue
        node_id, status = parsed
        old = statuses.get(node_id)
        if old is None or _SEVERITY[status] > _SEVERITY[old]:
            statuses[node_id] = status
    return statuses


def status_of(statuses: dict[str, TestStatus], test_id: str) -> TestStatus:
    """The outcome of ``test_id`` in a parsed report, ``MISSING`` if absent.

    SWE-bench's datasets name some parametrized tests by their id cut at the
    first whitespace (its parser splits lines on whitespace), e.g.
    ``test_x.py::test_f[a`` for ``test_x.py::test_f[a b]``. When ``test_id`` is
    not in the report verbatim, it matches the reported ids whose cut form is
    ``test_id`` and gets the worst of their outcomes.
    """
    if test_id in statuses:
        return statuses[test_id]
    cut = [s for node_id, s in statuses.items()
           if " " in node_id and node_id.split()[0] == test_id]
    if not cut:
        return TestStatus.MISSING
    return max(cut, key=_SEVERITY.__getitem__)


def collection_errors(output: str) -> list[str]:
    """Paths pytest could not collect (``ERROR path.py`` summary lines), in order, without repeats."""
    found: list[str] = []
    for line in _lines(output):
        m = re.match(r"^ERROR (\S+?)(?: - .*)?$", line)
        if m and "::" not in m.group(1) and m.group(1) not in found:
            found.append(m.group(1))
    return found


# pytest's final line: "==== 2 failed, 5 passed, 1 skipped, 2 warnings in 0.09s ====",
# "no tests ran in 0.01s", or without the "=" frame under -q.
_FINAL = re.compile(
    r"^=*\s*(?P<body>[^=]*?)\s+in\s+(?P<secs>\d+(?:\.\d+)?)\s*s(?:econds)?"
    r"(?:\s+\(\d+:\d\d:\d\d(?:\.\d+)?\))?\s*=*\s*$"
)
_COUNT = re.compile(r"^(?P<n>\d+) (?P<what>[a-z][a-z ]*)$")
_KEYS = {"error": "errors", "warning": "warnings", "rerun": "reruns"}


def summary_counts(output: str) -> dict[str, int] | None:
    """The counts on pytest's final summary line, or None if there is none.

    ``"== 2 failed, 5 passed, 1 skipped, 2 warnings in 0.09s =="`` gives
    ``{"failed": 2, "passed": 5, "skipped": 1, "warnings": 2}``. Keys are
    pytest's words with ``error``/``warning``/``rerun`` always plural
    (``errors``, ``warnings``, ``reruns``); other words (``xfailed``,
    ``xpassed``, ``deselected``, plugin words such as ``subtests passed``)
    are kept as printed. ``no tests ran`` gives ``{}``. None means pytest
    never got to print its summary: it crashed, was killed or timed out.
    When the output holds several sessions, the last line counts.
    """
    result: dict[str, int] | None = None
    for line in _lines(output):
        m = _FINAL.match(line)
        if m is None:
            continue
        counts = _parse_counts(m.group("body"))
        if counts is not None:
            result = counts
    return result


def _parse_counts(body: str) -> dict[str, int] | None:
    counts: dict[str, int] = {}
    for part in body.split(","):
        part = part.strip()
        if part == "no tests ran":
            continue
        c = _COUNT.match(part)
        if c is None:
            return None  # not pytest's summary line after all
        what = c.group("what").strip()
        what = _KEYS.get(what, what)
        counts[what] = counts.get(what, 0) + int(c.group("n"))
    return counts
