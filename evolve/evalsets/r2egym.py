"""R2E-Gym rows as evolve tasks (``evolve evals import swe-bench``, rows that carry ``docker_image``),
and R2E-Gym's grading rule.

An R2E-Gym row (``R2E-Gym/R2E-Gym-Subset``, ``R2E-Gym/R2E-Gym-Lite``)::

    {"repo_name": "pandas", "docker_image": "<org>/pandas_final:<commit>", "commit_hash": "<new commit>",
     "problem_statement": "...", "expected_output_json": "{\\"TestX.test_y\\": \\"PASSED\\", ...}",
     "parsed_commit_content": "{\\"old_commit_hash\\": ..., \\"file_diffs\\": [...]}",
     "execution_result_content": "{\\"old_commit_res_stdout\\": ..., \\"new_commit_res_stdout\\": ...}", ...}

What R2E-Gym does (its ``agenthub/runtime/docker.py``, ``repo_analysis/execution_log_parser.py``,
``repo_analysis/execution_result_analysis.py`` and ``commit_models/diff_classes.py``; the package is not on
PyPI, so these rules are written here, in evolve's terms):

* The image holds the repository at /testbed at the commit before the fix, with its ``.venv``, and
  ``run_tests.sh`` (``.venv/bin/python -W ignore -m pytest -rA r2e_tests``); the tests are in
  ``/r2e_tests``. Its runtime puts the venv's python first, moves ``run_tests.sh`` out of the agent's
  sight, links ``/r2e_tests`` into /testbed and runs ``bash run_tests.sh`` in /testbed (ANSI codes and
  ``\\r`` removed). evolve's test command does the same in the grader's fresh container: PATH gets
  ``/testbed/.venv/bin`` first, ``/r2e_tests`` is copied (without bytecode) to /testbed/r2e_tests, then
  ``bash run_tests.sh``. The tests stay at ``/r2e_tests`` in the agent's container, readable as in
  R2E-Gym (which links them into /testbed), and ``run_tests.sh`` stays in /testbed (the grader restores
  it from the base if a patch changes it, and restores any file of the venv: ``package_metadata``).
* Log parser (``parse_log``): only the lines after pytest's "short test summary info"; a line holding
  ``PASSED``, else ``FAILED``, else ``ERROR`` names the test by its node id without the file, parts
  joined with ``.`` (``r2e_tests/test_1.py::TestX::test_y`` is ``TestX.test_y``), cut at ``" - "``.
* Resolved (``resolved``): the parsed outcomes equal ``expected_output_json`` exactly (same tests, same
  outcomes, after removing colour codes and cutting names at ``" - "``); R2E-Gym's reward is 1.0 then.
  Tests expected to FAIL must still fail, and an extra test (a collection error) is not resolved.
* FAIL_TO_PASS/PASS_TO_PASS (``split_expected``) are derived for evolve's reports: the tests
  ``expected_output_json`` says PASSED, split by their outcome in ``execution_result_content``'s
  ``old_commit_res_stdout`` (read with the same parser, as R2E-Gym's ``is_good_exec`` does): not PASSED
  before is FAIL_TO_PASS, PASSED before is PASS_TO_PASS. Without that log every PASSED test is
  FAIL_TO_PASS. Resolution always uses the whole expected map.
* Dropped: R2E-Gym's runtime also installs ``chardet`` into the venv when it starts (for its agent's
  tools) and gives the tests 300 seconds; evolve's sandboxes have no network, and the test timeout is
  evolve's setting.
* The reference ``patch`` is the commit's non-test Python file diffs rebuilt from
  ``parsed_commit_content`` (R2E-Gym's ``ParsedCommit.get_patch(test_file=False)``), or empty.
"""

from __future__ import annotations

import json
import re

__all__ = ["ENV", "TESTS", "parse_log", "r2egym_fields", "reference_patch", "resolved", "split_expected"]

ENV = ['export PATH="/testbed/.venv/bin:$PATH"',
       "rm -rf r2e_tests && cp -r /r2e_tests r2e_tests && find r2e_tests -name __pycache__ -prune -exec rm -rf {} +"]
TESTS = ["bash run_tests.sh"]
_SUMMARY = "short test summary info"


def _name(key: str) -> str:
    return re.sub(r"\x1b\[\d+m", "", key).split(" - ")[0]


def parse_log(output: str) -> dict[str, str]:
    """``{test name: "PASSED" | "FAILED" | "ERROR"}`` of an R2E-Gym test log, names normalised as its
    reward does (see the module docstring); ``{}`` without pytest's short test summary."""
    text = re.sub(r"\x1b\[[0-9;]*m|\r", "", output or "")
    if _SUMMARY not in text:
        return {}
    found: dict[str, str] = {}
    for line in text.split(_SUMMARY, 1)[1].strip().split("\n"):
        status = next((s for s in ("PASSED", "FAILED", "ERROR") if s in line), None)
        if status is not None:
            found[_name(".".join(line.split("::")[1:]))] = status
    return found


def node_name(nodeid: str) -> str:
    """The name R2E-Gym's parser gives the pytest node ``nodeid`` (for evolve's out-of-band record)."""
    return _name(".".join(nodeid.split("::")[1:]))


def resolved(parsed: dict[str, str], expected: dict[str, str]) -> bool:
    """R2E-Gym's reward rule: the same tests with the same outcomes (names normalised on both sides)."""
    got = {_name(k): v for k, v in parsed.items()}
    want = {_name(k): v for k, v in expected.items()}
    return len(got) == len(want) and all(want.get(k) == v for k, v in got.items())


def _json(value) -> object:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return None
    return value


def split_expected(expected: dict[str, str], old_log: str | None) -> tuple[list[str], list[str]]:
    """(FAIL_TO_PASS, PASS_TO_PASS) from the expected outcomes and the old commit's log (None: unknown)."""
    passing = [k for k, v in expected.items() if v == "PASSED"]
    if old_log is None:
        return passing, []
    before = parse_log(old_log)
    return [k for k in passing if before.get(k) != "PASSED"], [k for k in passing if before.get(k) == "PASSED"]


def _is_test_file(path: str) -> bool:
    parts = path.split("/")
    return (path.endswith("_test.py") or path.startswith("test_") or parts[-1].startswith("test_")
            or any(p in parts for p in ("tests", "Tests", "test", "Test")))


def reference_patch(parsed: dict) -> str:
    """The non-test Python file diffs of R2E-Gym's ``parsed_commit_content`` as one git diff ("" if none).

    Raises:
        KeyError, TypeError: a malformed ``parsed_commit_content``.
    """
    out = []
    for fd in parsed.get("file_diffs") or []:
        path = fd["header"]["file"]["path"]
        if not path.endswith(".py") or _is_test_file(path):
            continue
        text = f"diff --git a/{path} b/{path}\n" + (f"{fd['header']['misc_line']}\n" if fd["header"].get("misc_line")
                                                      else "")
        if fd.get("index_line"):
            ix = fd["index_line"]
            text += f"index {ix['old_commit_hash']}..{ix['new_commit_hash']}" + (f" {ix['mode']}" if ix.get("mode")
                                                                                  else "") + "\n"
        if fd.get("is_binary_file"):
            text += f"{fd.get('binary_line') or ''}\n"
        if fd.get("minus_file") and fd.get("plus_file"):
            text += f"--- {fd['minus_file']['path']}\n+++ {fd['plus_file']['path']}\n"
        for hunk in fd.get("hunks") or []:
            d = hunk["descriptor"]
            rng = [f"{r['start']}" + (f",{r['length']}" if r.get("length") is not None else "")
                   for r in (d["old_range"], d["new_range"])]
            text += f"@@ -{rng[0]} +{rng[1]} @@" + (f" {d['section']}" if d.get("section") else "") + "\n"
            mark = {"context": " ", "added": "+", "deleted": "-", "note": "\\ "}
            text += "".join(f"{mark[line['type']]}{line['content']}\n" for line in hunk["line_group"]["all_lines"])
        out.append(text)
    return "".join(out)


def r2egym_fields(row: dict) -> dict | str:
    """The task fields of an R2E-Gym row, or why the row is dropped."""
    expected = _json(row.get("expected_output_json"))
    if not row.get("docker_image") or not isinstance(expected, dict) or not expected:
        return "an R2E-Gym row needs docker_image and a non-empty expected_output_json (test name to outcome)"
    expected = {_name(str(k)): str(v) for k, v in expected.items()}
    execution = _json(row.get("execution_result_content"))
    old_log = execution.get("old_commit_res_stdout") if isinstance(execution, dict) else None
    f2p, p2p = split_expected(expected, old_log if isinstance(old_log, str) else None)
    if not f2p:
        return ("no test of expected_output_json goes from failing to PASSED (R2E-Gym's expected outcomes and "
                "the old commit's log agree), so there is nothing to fix")
    parsed = _json(row.get("parsed_commit_content"))
    parsed = parsed if isinstance(parsed, dict) else {}
    try:
        patch = reference_patch(parsed)
    except (KeyError, TypeError):
        return "its parsed_commit_content is not R2E-Gym's ParsedCommit shape"
    commit = str(row.get("commit_hash") or parsed.get("new_commit_hash") or "")
    repo = str(row.get("repo_name") or row.get("repo") or "")
    return {"instance_id": str(row.get("instance_id") or f"{repo}_{commit}"), "repo": repo,
            "base_commit": str(parsed.get("old_commit_hash") or commit or "unknown"),
            "image": row["docker_image"], "patch": patch, "test_patch": "", "FAIL_TO_PASS": f2p,
            "PASS_TO_PASS": p2p, "env": ENV, "tests": TESTS,
            "swebench": {"style": "r2e-gym", "expected": expected}}
