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

__all__ = ["DEFAULT_TEST_CMD", "reverse_diff", "swesmith_fields"]

DEFAULT_ENV = ["source /opt/miniconda3/bin/activate", "conda activate testbed"]
DEFAULT_TEST_CMD = "pytest --disable-warnings --color=no --tb=no --verbose -rA"
"""SWE-smith's ``PythonProfile.test_cmd`` (after its conda lines, ``DEFAULT_ENV``), plus ``-rA``."""

_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@(.*)$")


def reverse_diff(diff: str) -> str | None:
    """The unified (git) diff that undoes ``diff``, or None if it renames, copies or changes binary files
    (which evolve does not reverse). Headers are swapped, hunk ranges swapped, ``-``/``+`` lines
    exchanged (within each changed run the removed lines come first, as git writes them)."""
    lines = diff.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        m = _HUNK.match(line)
        if m:
            old_n = int(m.group(2)) if m.group(2) is not None else 1
            new_n = int(m.group(4)) if m.group(4) is not None else 1
            old = f"{m.group(1)}" + (f",{m.group(2)}" if m.group(2) is not None else "")
            new = f"{m.group(3)}" + (f",{m.group(4)}" if m.group(4) is not None else "")
            out.append(f"@@ -{new} +{old} @@{m.group(5)}")
            i += 1
            run: list[list[str]] = []  # one changed run: [line, optional "\ No newline" marker]
            while i < len(lines) and (old_n > 0 or new_n > 0 or lines[i].startswith("\\")):
                body = lines[i]
                if body.startswith("\\"):
                    (run[-1] if run else out).append(body)  # stays with the line it belongs to
                    i += 1
                    continue
                tag = body[:1]
                if tag in ("-", "+"):
                    old_n -= tag == "-"
                    new_n -= tag == "+"
                    run.append([("+" if tag == "-" else "-") + body[1:]])
                else:
                    out.extend(_flush(run))
                    old_n, new_n = old_n - 1, new_n - 1
                    out.append(body)
                i += 1
            out.extend(_flush(run))
            continue
        if line.startswith(("rename ", "copy ", "similarity ", "Binary files ", "GIT binary patch")):
            return None
        if line.startswith("diff --git a/") and " b/" in line:
            a, b = line[len("diff --git a/"):].split(" b/", 1)
            out.append(f"diff --git a/{b} b/{a}")
        elif line.startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ "):
            src, dst = line[4:].split("\t", 1)[0], lines[i + 1][4:].split("\t", 1)[0]
            out.append("--- " + (dst if dst == "/dev/null" else "a/" + dst.removeprefix("b/")))
            out.append("+++ " + (src if src == "/dev/null" else "b/" + src.removeprefix("a/")))
            i += 1
        elif line.startswith("new file mode "):
            out.append("deleted file mode " + line[len("new file mode "):])
        elif line.startswith("deleted file mode "):
            out.append("new file mode " + line[len("deleted file mode "):])
        elif line.startswith("old mode "):
            out.append("new mode " + line[len("old mode "):])
        elif line.startswith("new mode "):
            out.append("old mode " + line[len("new mode "):])
        elif line.startswith("index ") and ".." in line:
            ids, _, mode = line[len("index "):].partition(" ")
            a, b = ids.split("..", 1)
            out.append(f"index {b}..{a}" + (f" {mode}" if mode else ""))
        else:
            out.append(line)
        i += 1
    return "\n".join(out)


def _flush(run: list[list[str]]) -> list[str]:
    ordered = [x for x in run if x[0].startswith("-")] + [x for x in run if x[0].startswith("+")]
    run.clear()
    return [part for x in ordered for part in x]


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

