"""Problem statements for synthesized tasks, written like bug reports.

A statement is built from what a user would see: the names of the tests that
fail and their failure output (pytest's ``--tb=short`` report). Frames of
test files keep their source line (the test's own code); frames of library
code keep only their location (``pkg/mod.py:12: in func``), because their
source line may be the very line the bug is on. Then ``scrub`` drops every
line of the statement that contains a changed line of the reference patch,
so a statement never carries the fix (``leaks`` checks that).

Statements are deterministic: memory addresses and temporary paths that vary
between runs are normalized.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from evolve.testlog import strip_ansi

__all__ = ["Failure", "history_statement", "leaks", "mutation_statement", "parse_failures", "patch_lines",
           "scrub"]

MAX_DETAILED = 3
"""Failing tests whose output is quoted."""
MAX_LISTED = 12
"""Failing tests listed by name."""
MAX_DETAIL_LINES = 24
MAX_LINE = 240
MIN_PATCH_LINE = 4
"""Changed patch lines shorter than this (``)``, ``else:``) are too common to scrub for."""

_HEADER = re.compile(r"^_+ (?P<title>.+?) _+$")
_SECTION = re.compile(r"^={3,} (?P<name>[A-Za-z ]+?) ={3,}$")
_CAPTURED = re.compile(r"^-{3,} (Captured|captured) .* -{3,}$")
_FRAME = re.compile(r"^(?P<path>[^\s:][^:]*):(?P<line>\d+): (?P<rest>.*)$")
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{6,}")
_TMP = re.compile(r"/tmp/pytest-of-[^/\s]+/pytest-\d+/")


@dataclass
class Failure:
    """One failing test's report: its traceback frames and error lines."""

    title: str
    """pytest's section title, e.g. ``TestIdx.test_idx[2]`` or ``ERROR at setup of test_x``."""
    lines: list[str] = field(default_factory=list)


def parse_failures(output: str) -> dict[str, Failure]:
    """The FAILURES and ERRORS sections of a pytest ``--tb=short`` report, by section title."""
    failures: dict[str, Failure] = {}
    current: Failure | None = None
    in_section = False
    for raw in output.split("\n"):
        line = strip_ansi(raw.rstrip("\r"))
        section = _SECTION.match(line)
        if section:
            in_section = section.group("name").strip() in ("FAILURES", "ERRORS")
            current = None
            continue
        if not in_section:
            continue
        header = _HEADER.match(line)
        if header:
            current = Failure(header.group("title"))
            failures.setdefault(current.title, current)
            continue
        if current is None:
            continue
        if _CAPTURED.match(line):
            current = None  # captured output is not part of the report
            continue
        current.lines.append(line)
    return failures


def _title_of(test_id: str) -> str:
    """pytest's section title of a node id: ``f.py::TestA::test_b[1]`` -> ``TestA.test_b[1]``."""
    return test_id.split("::", 1)[1].replace("::", ".") if "::" in test_id else test_id


def failure_for(test_id: str, failures: dict[str, Failure]) -> Failure | None:
    title = _title_of(test_id)
    for key in (title, f"ERROR at setup of {title}", f"ERROR at teardown of {title}",
                f"ERROR at call of {title}"):
        if key in failures:
            return failures[key]
    return None


def _is_test_path(path: str, test_files: set[str]) -> bool:
    path = path.lstrip("./")
    return path in test_files or bool(re.search(r"(^|/)(tests?|testing)/|(^|/)test_[^/]*\.py$|_test\.py$"
                                                r"|(^|/)conftest\.py$", path))


def _render(failure: Failure, test_files: set[str]) -> list[str]:
    """The report lines worth quoting: frames (library frames without source) and error lines."""
    out: list[str] = []
    keep_source = False
    for line in failure.lines:
        frame = _FRAME.match(line)
        if frame:
            keep_source = _is_test_path(frame.group("path"), test_files)
            out.append(line)
        elif line.startswith("E ") or line == "E":
            out.append(line)
        elif line.startswith("    ") or line.startswith("\t"):
            if keep_source:
                out.append(line)
        elif line.strip():
            # Collection-error prose, "ImportError while importing ...", etc.
            out.append(line)
    out = [_normalize(l)[:MAX_LINE] for l in out]
    if len(out) > MAX_DETAIL_LINES:
        out = out[:8] + ["..."] + out[-(MAX_DETAIL_LINES - 9):]
    return out


def _normalize(line: str) -> str:
    return _TMP.sub("/tmp/pytest/", _ADDRESS.sub("0x...", line))


def _error_summary(lines: list[str]) -> str:
    """The first ``E`` line without its prefix, e.g. ``IndexError: list index out of range``."""
    for line in lines:
        if line.startswith("E "):
            text = line[1:].strip()
            if text:
                return text[:160]
    return ""


def _listing(tests: list[str]) -> list[str]:
    lines = [f"- `{t}`" for t in tests[:MAX_LISTED]]
    if len(tests) > MAX_LISTED:
        lines.append(f"- ... and {len(tests) - MAX_LISTED} more")
    return lines


def _details(tests: list[str], output: str, test_files: set[str]) -> list[str]:
    failures = parse_failures(output)
    out: list[str] = []
    shown: list[Failure] = []
    for test in tests:
        if len(shown) >= MAX_DETAILED:
            break
        failure = failure_for(test, failures)
        label = f"`{test}`"
        if failure is None:  # the test module did not even import
            path = test.split("::", 1)[0]
            failure, label = failures.get(f"ERROR collecting {path}"), f"`{path}` (collecting)"
        if failure is None or any(f is failure for f in shown):
            continue
        body = _render(failure, test_files)
        if not body:
            continue
        shown.append(failure)
        out += ["", f"{label}:", "", "```", *body, "```"]
    return out


def _headline(tests: list[str], output: str) -> tuple[str, str]:
    """(short name of the first failing test, its error summary)."""
    first = tests[0]
    failure = failure_for(first, parse_failures(output))
    summary = _error_summary(failure.lines) if failure else ""
    return first.split("::")[-1], summary


def mutation_statement(tests: list[str], output: str, patch: str, *, test_files: set[str] | None = None) -> str:
    """A bug report for a synthesized bug: the failing ``tests`` and their output, never the fix."""
    test_files = test_files or {t.split("::", 1)[0] for t in tests}
    name, summary = _headline(tests, output)
    title = f"`{name}` fails" + (f": {summary}" if summary else "")
    if len(tests) > 1:
        title += f" (and {len(tests) - 1} other test{'s' if len(tests) > 2 else ''})"
    lines = [title, "",
             f"{'These tests fail' if len(tests) > 1 else 'This test fails'} on the current code, "
             "although the behaviour they check is the intended one:", "", *_listing(tests)]
    lines += _details(tests, output, test_files)
    lines += ["", "Please fix the library code so that the failing tests pass again, without changing the "
                  "tests and without breaking the tests that pass now."]
    return scrub("\n".join(lines) + "\n", patch)


_TRAILER = re.compile(r"^(Signed-off-by|Co-authored-by|Reviewed-by|Acked-by|Change-Id|Cc):", re.I)


def history_statement(message: str, tests: list[str], output: str, patch: str, *,
                      test_files: set[str] | None = None) -> str:
    """A bug report for a task mined from a commit: its message, then the tests that should pass.

    ``tests`` must be tests the agent's checkout has and that fail there, and ``output`` their run on
    that checkout (``evolve.synth.history``): ids and lines are the ones the agent sees. With no such
    test, the statement is the message alone (the fix is checked by tests the agent does not have, as
    in SWE-bench)."""
    test_files = test_files or {t.split("::", 1)[0] for t in tests}
    msg_lines = [l.rstrip() for l in message.strip().split("\n") if not _TRAILER.match(l.strip())]
    while msg_lines and not msg_lines[-1].strip():
        msg_lines.pop()
    subject = msg_lines[0].strip() if msg_lines else "Behaviour change needed"
    body = msg_lines[1:]
    if not tests:
        return scrub("\n".join([subject, *body]) + "\n", patch)
    lines = [subject, *body, "",
             f"{'These tests' if len(tests) > 1 else 'This test'} should pass once this is done, "
             f"but {'fail' if len(tests) > 1 else 'fails'} on the current code:", "", *_listing(tests)]
    lines += _details(tests, output, test_files)
    return scrub("\n".join(lines) + "\n", patch)


def patch_lines(patch: str) -> list[str]:
    """The changed lines of a unified diff (``+``/``-``, headers excluded), stripped, long enough to matter."""
    found: list[str] = []
    for line in patch.split("\n"):
        if line.startswith(("+++", "---")) or not line.startswith(("+", "-")):
            continue
        text = line[1:].strip()
        if len(text) >= MIN_PATCH_LINE and text not in found:
            found.append(text)
    return found


def scrub(statement: str, patch: str) -> str:
    """``statement`` without the lines that contain a changed line of ``patch``."""
    changed = patch_lines(patch)
    kept = [line for line in statement.split("\n") if not any(c in line for c in changed)]
    return "\n".join(kept)


def leaks(statement: str, patch: str) -> list[str]:
    """The changed lines of ``patch`` that ``statement`` contains ([] means it gives nothing away)."""
    return [c for c in patch_lines(patch) if c in statement]
