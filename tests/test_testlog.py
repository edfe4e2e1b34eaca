"""Parsing real pytest output: the output is produced by running pytest here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from evolve.testlog import (
    collection_errors,
    parse_pytest_report,
    status_of,
    strip_ansi,
    summary_counts,
)
from evolve.types import TestStatus as Status  # "Test*" names would be collected

SAMPLE = '''
import pytest

@pytest.fixture
def broken():
    raise RuntimeError("fixture exploded")

@pytest.fixture
def bad_teardown():
    yield
    raise RuntimeError("teardown exploded")

def test_pass():
    assert True

def test_fail():
    assert 1 == 2, "one is not two"

def test_fixture_error(broken):
    pass

def test_teardown_error(bad_teardown):
    pass

@pytest.mark.skip(reason="not today")
def test_skipped():
    pass

@pytest.mark.xfail(reason="known bug")
def test_xfail():
    assert False

@pytest.mark.xfail(reason="fixed already")
def test_xpass():
    pass

@pytest.mark.parametrize("expr", ["a - b", "x y", "[1] - [2]", "plain"])
def test_param(expr):
    print("PASSED looks like a result line but is captured output")
    assert expr != "x y"

class TestGroup:
    def test_method(self):
        pass
'''

F = "test_sample.py"
RA_EXPECTED = {
    f"{F}::test_pass": Status.PASSED,
    f"{F}::test_fail": Status.FAILED,
    f"{F}::test_fixture_error": Status.ERROR,
    # PASSED for the call, ERROR at teardown: the worst outcome wins.
    f"{F}::test_teardown_error": Status.ERROR,
    f"{F}::test_xfail": Status.XFAIL,
    f"{F}::test_xpass": Status.XPASS,
    f"{F}::test_param[a - b]": Status.PASSED,
    f"{F}::test_param[x y]": Status.FAILED,
    f"{F}::test_param[[1] - [2]]": Status.PASSED,
    f"{F}::test_param[plain]": Status.PASSED,
    f"{F}::TestGroup::test_method": Status.PASSED,
}
# "-rA" reports skips as "SKIPPED [1] test_sample.py:25: not today": a location,
# not a node id, so only "-v" output names the skipped test.
V_EXPECTED = {**RA_EXPECTED, f"{F}::test_skipped": Status.SKIPPED}
COUNTS = {"failed": 2, "passed": 6, "skipped": 1, "xfailed": 1, "xpassed": 1, "errors": 2}


def run_pytest(directory: Path, *args: str) -> str:
    """Run the venv's pytest on ``directory`` and return stdout+stderr."""
    (directory / "pytest.ini").write_text("[pytest]\n")  # pin rootdir and config
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["COLUMNS"] = "80"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=directory, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode in (0, 1, 2, 5), proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("sample")
    (d / F).write_text(SAMPLE)
    return d


def test_ra_report_gives_every_outcome(sample_dir: Path) -> None:
    out = run_pytest(sample_dir, "-rA", "--color=no", F)
    assert "short test summary info" in out  # really pytest's -rA output
    assert "SKIPPED [1] test_sample.py" in out
    assert parse_pytest_report(out) == RA_EXPECTED
    assert summary_counts(out) == COUNTS
    assert collection_errors(out) == []


def test_verbose_report_names_skipped_tests(sample_dir: Path) -> None:
    out = run_pytest(sample_dir, "-v", "-rN", "--color=no", F)  # -rN: no short summary
    assert "short test summary info" not in out
    assert f"{F}::test_skipped SKIPPED" in out
    assert parse_pytest_report(out) == V_EXPECTED
    assert summary_counts(out) == COUNTS


def test_verbose_and_ra_with_colour(sample_dir: Path) -> None:
    out = run_pytest(sample_dir, "-v", "-rA", "--color=yes", F)
    assert "\x1b[" in out
    assert parse_pytest_report(out) == V_EXPECTED
    assert summary_counts(out) == COUNTS
    assert "\x1b" not in strip_ansi(out)


def test_quiet_run_summary_line_without_frame(sample_dir: Path) -> None:
    out = run_pytest(sample_dir, "-q", "-rA", "--color=no", F)
    assert parse_pytest_report(out) == RA_EXPECTED
    assert summary_counts(out) == COUNTS


def test_collection_error_parses_no_tests(tmp_path: Path) -> None:
    (tmp_path / "test_broken.py").write_text("import not_a_module_xyz\n\ndef test_a():\n    pass\n")
    (tmp_path / "test_fine.py").write_text("def test_ok():\n    pass\n")
    out = run_pytest(tmp_path, "-rA", "--color=no")
    assert "Interrupted: 1 error during collection" in out
    assert parse_pytest_report(out) == {}
    assert collection_errors(out) == ["test_broken.py"]
    assert summary_counts(out) == {"errors": 1}


def test_no_tests_ran(tmp_path: Path) -> None:
    out = run_pytest(tmp_path, "-rA", "--color=no")
    assert parse_pytest_report(out) == {}
    assert summary_counts(out) == {}


def test_deselected_and_warnings(tmp_path: Path) -> None:
    (tmp_path / "test_w.py").write_text(
        "import warnings\n"
        "def test_warns():\n    warnings.warn(UserWarning('careful'))\n"
        "def test_other():\n    pass\n")
    out = run_pytest(tmp_path, "-rA", "--color=no", "-k", "warns")
    assert parse_pytest_report(out) == {"test_w.py::test_warns": Status.PASSED}
    assert summary_counts(out) == {"passed": 1, "deselected": 1, "warnings": 1}


def test_truncated_output_has_no_summary() -> None:
    # pytest killed by a timeout: results so far, but no final line.
    out = ("============================= test session starts ==============================\n"
           "collected 3 items\n\n"
           "t.py::test_a PASSED                                             [ 33%]\n"
           "t.py::test_b ")
    assert parse_pytest_report(out) == {"t.py::test_a": Status.PASSED}
    assert summary_counts(out) is None
    assert summary_counts("") is None
    assert parse_pytest_report("") == {}


def test_summary_count_variants() -> None:
    assert summary_counts("=== 1 error in 0.05s ===") == {"errors": 1}
    assert summary_counts("==== 3 failed, 10 passed, 1 skipped, 1 warning in 0.12s ====") == {
        "failed": 3, "passed": 10, "skipped": 1, "warnings": 1}
    assert summary_counts("== 2 passed in 61.02s (0:01:01) ==") == {"passed": 2}
    assert summary_counts("no tests ran in 0.01s") == {}
    # Not a pytest summary line.
    assert summary_counts("the download finished in 3s") is None
    # The last session wins.
    assert summary_counts("== 1 failed in 1s ==\n...\n== 1 passed in 1s ==") == {"passed": 1}


def test_worst_outcome_wins_regardless_of_order() -> None:
    for lines in (["PASSED t.py::test_a", "FAILED t.py::test_a - boom"],
                  ["FAILED t.py::test_a - boom", "PASSED t.py::test_a"]):
        assert parse_pytest_report("\n".join(lines)) == {"t.py::test_a": Status.FAILED}
    out = "t.py::test_b PASSED [ 50%]\r\nt.py::test_b ERROR [ 50%]\r\nPASSED t.py::test_b\r\n"
    assert parse_pytest_report(out) == {"t.py::test_b": Status.ERROR}


def test_bracket_aware_node_ids() -> None:
    out = "\n".join([
        "FAILED t.py::test_f[a - b] - AssertionError: x - y",
        "FAILED t.py::test_g - assert [1] == [2]",
        "PASSED t.py::test_h[[1] - [2]]",
        "PASSED t.py::test_i[]]",          # a parameter id that is just "]"
        "XPASS t.py::test_j[p q] reason without dash (pytest < 8)",
        "t.py::test_k[a PASSED b] FAILED                    [ 40%]",
        "[gw1] [ 50%] PASSED t.py::test_l[with space]",
        "SKIPPED [2] t.py:12: needs a::b",
        "ERROR t.py - ModuleNotFoundError: nope",
        "    PASSED t.py::indented_is_not_a_result",
    ])
    assert parse_pytest_report(out) == {
        "t.py::test_f[a - b]": Status.FAILED,
        "t.py::test_g": Status.FAILED,
        "t.py::test_h[[1] - [2]]": Status.PASSED,
        "t.py::test_i[]]": Status.PASSED,
        "t.py::test_j[p q]": Status.XPASS,
        "t.py::test_k[a PASSED b]": Status.FAILED,
        "t.py::test_l[with space]": Status.PASSED,
    }
    assert collection_errors(out) == ["t.py"]


def test_status_of_matches_swebench_cut_ids() -> None:
    statuses = {"t.py::test_f[a b]": Status.PASSED, "t.py::test_g": Status.FAILED}
    assert status_of(statuses, "t.py::test_f[a b]") is Status.PASSED
    assert status_of(statuses, "t.py::test_f[a") is Status.PASSED  # SWE-bench's cut form
    assert status_of(statuses, "t.py::test_g") is Status.FAILED
    assert status_of(statuses, "t.py::test_missing") is Status.MISSING
    # Two ids cut to the same form: the worst outcome counts.
    statuses["t.py::test_f[a c]"] = Status.FAILED
    assert status_of(statuses, "t.py::test_f[a") is Status.FAILED


def test_grader_script_copies_the_one_test_path_pattern():
    """The grader's script runs under ``python3 -I`` and cannot import evolve: its copy of the
    test-path pattern must be ``evolve.testfiles``'s string, character for character."""
    import ast
    from importlib import resources

    from evolve.testfiles import TEST_LIKE, TEST_LIKE_PATTERN

    source = resources.files("evolve.sandbox.scripts").joinpath("grade_neutralise.py").read_text()
    copies = [node.value.args[0].value for node in ast.walk(ast.parse(source))
              if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["TEST_LIKE"]]
    assert copies == [TEST_LIKE_PATTERN]
    assert TEST_LIKE.pattern == TEST_LIKE_PATTERN
    for path in ("tests/test_a.py", "pkg/testing/util.py", "a/tests", "conftest.py", "pkg/x_test.py"):
        assert TEST_LIKE.search(path), path
    for path in ("pkg/contest.py", "src/attest/x.py", "pkg/testsuite.py"):
        assert not TEST_LIKE.search(path), path
