"""SWE-smith rows as evolve tasks (``evolve evals import swe-bench``, rows that carry ``image_name``).

A SWE-smith row (``SWE-bench/SWE-smith`` and sets made with the swesmith toolkit)::

    {"instance_id": "oauthlib__oauthlib.1fd52536.func_basic__x", "repo": "swesmith/oauthlib__oauthlib.1fd52536",
     "patch": "<diff that INTRODUCES the bug>", "FAIL_TO_PASS": [...], "PASS_TO_PASS": [...],
     "image_name": "<org>/swesmith.x86_64.oauthlib_1776_oauthlib.1fd52536", "problem_statement": "..."}

What SWE-smith does, and what evolve does with it (sources: the swesmith package 0.0.9,
``swesmith/harness/utils.py``, ``swesmith/harness/grading.py``, ``swesmith/profiles/python.py``):

* The image holds the repository at /testbed, clean (the profile's commit). SWE-smith checks out the
  instance's branch (the bug commit, then a commit that removes the FAIL_TO_PASS test files) with
  ``git fetch``; evolve has no network in sandboxes, so the row's ``patch`` becomes the task's
  ``setup_patch``, applied to /testbed before the snapshot (``evolve.testbed.setup_patch``): the agent
  and the grader start from the buggy tree. **Gap:** the FAIL_TO_PASS test files stay visible to the
  agent (SWE-smith's branch removes them); grading is unchanged, since the grader restores every
  test file from the base tree.
* The row's ``patch`` is the bug, and SWE-smith's gold fix is its reverse (``git apply --reverse``:
  "gold patches = bug patches, so fix = revert"); the task's reference ``patch`` is ``reverse_diff``.
* Test command: SWE-smith's Python profiles run the whole suite with ``pytest --disable-warnings
  --color=no --tb=no --verbose`` in the ``testbed`` conda env; evolve adds ``-rA`` so the outcomes
  can be read by swebench's ``parse_log_pytest`` (SWE-smith's own parser reads the ``--verbose`` lines,
  which report the same outcomes). Resolution: SWE-smith's ``get_eval_tests_report`` is swebench's
  FAIL_TO_PASS/PASS_TO_PASS report, and both end in swebench's ``get_resolution_status(...) == FULL``,
  so the task is graded as an imported SWE-bench task (``evolve.evalsets.swebench_grading``). One
  difference, on purpose: swesmith 0.0.9 keeps its own copy of swebench's older report, where a
  SKIPPED FAIL_TO_PASS test is neither passed nor failed (a patch that makes it skip is resolved);
  swebench 5, and so evolve, never resolves a skipped FAIL_TO_PASS test.
* **Gap:** the swesmith package (0.0.9, the newest on PyPI) imports names that swebench 5 removed
  (``DOCKER_USER``, ``swebench.harness.dockerfiles``), so it cannot be installed next to the swebench
  that evolve grades with, and its per-repo profiles are not read. Of its 133 Python profiles, 113
  run the default command and parser above on the whole suite; 11 run it on the instance's test files
  only (``min_testing``, e.g. pandas, sympy, dask: give ``--test-cmd`` with the same command and the
  files are appended); 9 have their own command or parser (give ``--test-cmd``/``--log-parser``).
  Rows whose tests are not pytest ids (SWE-smith's Go, Rust, JavaScript, ... profiles) are dropped
  with that reason.
"""

from __future__ import annotations

import re

from evolve.diffwalk import HUNK, DiffLine, walk

__all__ = ["DEFAULT_TEST_CMD", "reverse_diff", "swesmith_fields"]

DEFAULT_ENV = ["source /opt/miniconda3/bin/activate", "conda activate testbed"]
DEFAULT_TEST_CMD = "pytest --disable-warnings --color=no --tb=no --verbose -rA"
"""SWE-smith's ``PythonProfile.test_cmd`` (after its conda lines, ``DEFAULT_ENV``), plus ``-rA``."""

_REFUSED = (b"rename ", b"copy ", b"similarity ", b"Binary files ", b"GIT binary patch")
_SWAPPED = ((b"new file mode ", b"deleted file mode "), (b"deleted file mode ", b"new file mode "),
            (b"old mode ", b"new mode "), (b"new mode ", b"old mode "))


def reverse_diff(diff: str) -> str | None:
    """The unified (git) diff that undoes ``diff``, or None if it renames, copies or changes binary files
    (which evolve does not reverse). Headers are swapped (git's C-quoted names too), hunk ranges
    swapped, ``-``/``+`` lines exchanged (within each changed run the removed lines come first, as
    git writes them); hunk lines are told from headers by ``evolve.diffwalk``. ``diff --git a/X b/X``
    stays as it is: without renames both names are the same."""
    out: list[bytes] = []
    run: list[bytes] = []  # one changed run, each line with any "\ No newline" marker after it
    after_old_name = False  # the line before was a "---" file header
    for d in walk(diff.encode("utf-8", "surrogateescape")):
        line = d.text
        if d.kind in ("-", "+"):
            run.append((b"+" if d.kind == "-" else b"-") + line[1:])
        elif d.kind == "\\" and run:
            run[-1] += b"\n" + line  # stays with the line it belongs to
        else:
            out += _flush(run)
            reversed_line = _reverse_line(d)
            if reversed_line is None:
                return None
            out.append(reversed_line)
            if after_old_name and line.startswith(b"+++ "):
                _swap_names(out)
        after_old_name = d.kind == "header" and line.startswith(b"--- ")
    out += _flush(run)
    return b"\n".join(out).decode("utf-8", "surrogateescape")


def _reverse_line(d: DiffLine) -> bytes | None:
    """A line that is not part of a changed run, reversed (the ``---``/``+++`` pair is swapped by
    ``_swap_names`` after); None for one evolve does not reverse."""
    line = d.text
    if d.kind == "hunk":
        m = HUNK.match(line)
        old = m.group(1) + (b"," + m.group(2) if m.group(2) is not None else b"")
        new = m.group(3) + (b"," + m.group(4) if m.group(4) is not None else b"")
        return b"@@ -" + new + b" +" + old + b" @@" + m.group(5)
    if d.kind != "header":
        return line
    if line.startswith(_REFUSED):
        return None
    for a, b in _SWAPPED:
        if line.startswith(a):
            return b + line[len(a):]
    if line.startswith(b"index ") and b".." in line:
        ids, _, mode = line[len(b"index "):].partition(b" ")
        a, b = ids.split(b"..", 1)
        return b"index " + b + b".." + a + (b" " + mode if mode else b"")
    return line


def _swap_names(out: list[bytes]) -> None:
    """``out`` ends with a ``---`` and a ``+++`` line: make them the reversed pair."""
    (src, src_tail), (dst, dst_tail) = (_name(x[4:]) for x in out[-2:])
    out[-2:] = [b"--- " + _prefixed(dst, b"b/", b"a/") + dst_tail, b"+++ " + _prefixed(src, b"a/", b"b/") + src_tail]


def _name(field: bytes) -> tuple[bytes, bytes]:
    """A ``---``/``+++`` name and what follows it from its tab on (git ends a name holding a space
    with a tab; a C-quoted name has no raw tab)."""
    name, tab, tail = field.partition(b"\t")
    return name, tab + tail


def _prefixed(name: bytes, old: bytes, new: bytes) -> bytes:
    """``name`` with its ``old`` prefix (``a/``/``b/``) made ``new``, inside git's quotes if quoted."""
    if name == b"/dev/null":
        return name
    if name.startswith(b'"'):
        return b'"' + new + name[1:].removeprefix(old)
    return new + name.removeprefix(old)


def _flush(run: list[bytes]) -> list[bytes]:
    ordered = [x for x in run if x.startswith(b"-")] + [x for x in run if x.startswith(b"+")]
    run.clear()
    return ordered


def swesmith_fields(row: dict, test_cmd: str | None, log_parser: str) -> dict | str:
    """The task fields of a SWE-smith row (``image``, ``patch``, ``setup_patch``, the test command's
    parts and the grading fields), or why the row is dropped. ``test_cmd``: the user's ``--test-cmd``
    (run after ``DEFAULT_ENV`` with the FAIL_TO_PASS/PASS_TO_PASS files appended, as swesmith's
    ``min_testing`` profiles do), else ``DEFAULT_TEST_CMD`` (the whole suite, as its default profile
    does); ``log_parser``: a swebench parser name."""
    if not row.get("image_name") or not str(row.get("patch") or "").strip():
        return "a SWE-smith row needs image_name and patch (the bug it introduces)"
    tests = [*_ids(row.get("FAIL_TO_PASS")), *_ids(row.get("PASS_TO_PASS"))]
    if not test_cmd and not all("::" in t and ".py" in t.split("::", 1)[0] for t in tests):
        return ("a SWE-smith row whose tests are not pytest ids (a non-Python swesmith profile): its test "
                "command and log parser live in the swesmith package's profiles, which cannot be installed "
                "next to swebench 5; give --test-cmd and --log-parser to import it")
    fix = reverse_diff(str(row["patch"]))
    if fix is None:
        return "its patch renames, copies or changes binary files; evolve does not reverse such a bug patch"
    return {"image": row["image_name"], "setup_patch": str(row["patch"]), "patch": fix,
            "base_commit": str(row.get("base_commit") or _commit(row)), "test_patch": "",
            "env": DEFAULT_ENV, "tests": [f'{test_cmd} "$@"' if test_cmd else DEFAULT_TEST_CMD],
            "swebench": {"style": "swe-smith", "log_parser": log_parser, "eval_type": "pass_and_fail",
                         "version": ""}}


def _ids(value) -> list[str]:
    import json

    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return []
    return [str(v) for v in value] if isinstance(value, list) else []


def _commit(row: dict) -> str:
    """The profile's short commit from ``repo`` (``swesmith/<owner>__<repo>.<commit8>``), else ``unknown``."""
    tail = str(row.get("repo") or "").rsplit(".", 1)
    return tail[1] if len(tail) == 2 and re.fullmatch(r"[0-9a-f]{7,40}", tail[1]) else "unknown"

