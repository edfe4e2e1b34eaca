"""`evolve evals synth --from history`: tasks mined from a real git history, built here commit by commit."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from evolve.config import EvalSettings
from evolve.evalsets.registry import load_evalset
from evolve.synth.env import SuiteFailsError, SynthError, SynthOptions
from evolve.synth.history import mine_commits
from evolve.synth.problem import leaks
from evolve.synth.synthesize import synthesize

CALC_V1 = '''def add(a, b):
    return a + b


def mul(a, b):
    return a * b


def clamp(x, lo, hi):
    if x < lo:
        return lo
    if x >= hi:
        return hi - 1
    return x
'''
CALC_V2 = CALC_V1.replace("    if x >= hi:\n        return hi - 1", "    if x > hi:\n        return hi")
CALC_V3 = CALC_V2.replace("def mul(a, b):\n    return a * b", "def mul(a, b):\n    result = a * b\n    return result")
CALC_V4 = CALC_V3 + '''

def sub(a, b):
    return a - b
'''
TESTS_V1 = '''from calc import add, clamp, mul


def test_add():
    assert add(2, 3) == 5


def test_mul():
    assert mul(2, 3) == 6


def test_clamp_low():
    assert clamp(-1, 0, 10) == 0
'''
TESTS_V2 = TESTS_V1 + '''

def test_clamp_high():
    assert clamp(12, 0, 10) == 10
    assert clamp(10, 0, 10) == 10
'''
TESTS_V3 = TESTS_V2 + '''

def test_mul_zero():
    assert mul(0, 5) == 0
'''
TEST_SUB = '''from calc import sub


def test_sub():
    assert sub(5, 3) == 2
'''
CALC_V5 = CALC_V4 + '''

def power(a, n):
    return a * n
'''
CALC_V6 = CALC_V5.replace("    return a * n", "    return a ** n")
TEST_POW = '''from calc import power


def test_pow_square():
    assert power(3, 2) == 9
'''
TEST_POW_V2 = TEST_POW + '''

def test_pow_cube():
    assert power(2, 3) == 8
'''


def _commit(repo: Path, files: dict[str, str], message: str) -> str:
    for name, content in files.items():
        path = repo / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    subprocess.run(["git", "-C", str(repo), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=dev", "-c", "user.email=dev@example.com", "commit",
                    "-qm", message], check=True)
    return subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()


def make_history(repo: Path) -> dict[str, str]:
    """A repo whose history holds two real fixes with tests, a docs commit and a refactor."""
    repo.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    shas = {}
    shas["initial"] = _commit(repo, {"calc.py": CALC_V1, "tests/test_calc.py": TESTS_V1, "pytest.ini": "[pytest]\n"},
                              "calc: add, mul, clamp")
    shas["fix"] = _commit(repo, {"calc.py": CALC_V2, "tests/test_calc.py": TESTS_V2},
                          "Fix clamp at the upper bound\n\nclamp(12, 0, 10) returned 9 instead of 10.\n\n"
                          "Signed-off-by: dev <dev@example.com>")
    shas["docs"] = _commit(repo, {"README.md": "# calc\n"}, "Add a README")
    shas["refactor"] = _commit(repo, {"calc.py": CALC_V3, "tests/test_calc.py": TESTS_V3},
                               "Name the product in mul, test mul(0, x)")
    shas["feature"] = _commit(repo, {"calc.py": CALC_V4, "tests/test_sub.py": TEST_SUB}, "Add sub()")
    # Broken on the main line for one commit: test_pow_square exists at the fix's base and fails there.
    shas["pow_wip"] = _commit(repo, {"calc.py": CALC_V5, "tests/test_pow.py": TEST_POW}, "Start power()")
    shas["pow_fix"] = _commit(repo, {"calc.py": CALC_V6, "tests/test_pow.py": TEST_POW_V2},
                              "Fix power for exponents above 1")
    return shas


def test_mining_takes_commits_that_change_code_and_tests(tmp_path):
    shas = make_history(tmp_path / "calc")
    stats: dict = {}
    commits = mine_commits(tmp_path / "calc", 100, stats)
    assert [c.sha for c in commits] == [shas["pow_fix"], shas["pow_wip"], shas["feature"], shas["refactor"],
                                        shas["fix"]]
    assert stats["commits"] == 7
    assert stats["not_candidates"] == {shas["docs"][:10]: "does not change both Python code and a test module",
                                       shas["initial"][:10]: "no parent commit (the first commit)"}
    fix = commits[4]
    assert fix.parent == shas["initial"]
    assert fix.patch.startswith("diff --git a/calc.py b/calc.py") and "tests/" not in fix.patch
    assert "tests/test_calc.py" in fix.test_patch and "calc.py b/calc.py" not in fix.test_patch
    assert fix.test_files == ["tests/test_calc.py"]
    assert commits[2].test_files == ["tests/test_sub.py"]


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=dev", "-c", "user.email=dev@example.com", *args],
                          capture_output=True, text=True, check=True).stdout.strip()


def test_mining_takes_the_main_line_where_a_merge_stands_for_its_branch(tmp_path):
    repo = tmp_path / "calc"
    shas = make_history(repo)
    main = _git(repo, "rev-parse", "--abbrev-ref", "HEAD")
    _git(repo, "checkout", "-qb", "topic")
    wip = _commit(repo, {"calc.py": CALC_V6 + "\n\ndef neg(a):\n    return a\n",
                         "tests/test_neg.py": "from calc import neg\n\n\ndef test_neg():\n    assert neg(2) == -2\n"},
                  "wip: neg")
    done = _commit(repo, {"calc.py": CALC_V6 + "\n\ndef neg(a):\n    return -a\n"}, "neg: negate")
    _git(repo, "checkout", "-q", main)
    _commit(repo, {"README.md": "# calc, again\n"}, "README")
    _git(repo, "merge", "-q", "--no-ff", "-m", "Merge topic: neg()", "topic")
    merge = _git(repo, "rev-parse", "HEAD")
    main_line = [c.sha for c in mine_commits(repo, 100)]
    assert main_line[0] == merge and wip not in main_line and done not in main_line
    merged = mine_commits(repo, 100)[0]
    assert "return -a" in merged.patch and merged.test_files == ["tests/test_neg.py"]
    assert merged.parent == _git(repo, "rev-parse", f"{merge}^1")
    every = [c.sha for c in mine_commits(repo, 100, first_parent=False)]
    assert wip in every and merge not in every and shas["fix"] in every


@pytest.fixture(scope="session")
def mined(tmp_path_factory, base_image):
    root = tmp_path_factory.mktemp("history")
    shas = make_history(root / "calc")
    dest = root / "evals" / "calc"
    meta = synthesize(root / "calc", dest, sources=("mutation", "history"),
                      opts=SynthOptions(max_tasks=3, seed=1, workers=2))
    return dest, meta, shas


pytestmark = pytest.mark.docker


def test_history_tasks_are_the_real_fixes(mined, docker_client, base_image):
    from evolve.grading import grade
    from evolve.sandbox.docker import Sandbox

    dest, meta, shas = mined
    es = load_evalset(dest)
    tasks = {t.instance_id: t for s in es.splits for t in es.tasks(s)}
    hist = {k: t for k, t in tasks.items() if "__hist-" in k}
    assert set(hist) == {f"calc__hist-{shas[k][:10]}" for k in ("fix", "feature", "pow_fix")}
    assert any("__mut-" in k for k in tasks)  # one repo gives both kinds of task
    history = meta["projects"]["calc"]["history"]
    assert history["verdicts"].get("equivalent") == 2  # the refactor and pow_wip: nothing fails then passes
    # The summary says why each candidate commit was dropped.
    assert set(history["dropped"]) == {shas["refactor"][:10], shas["pow_wip"][:10]}
    assert "no test fails without the fix and passes with it" in history["dropped"][shas["refactor"][:10]]
    assert "Name the product in mul" in history["dropped"][shas["refactor"][:10]]
    repo = dest / "repos" / "calc"
    settings = EvalSettings(model="x", test_timeout_s=300)
    for task in hist.values():
        commit = task.model_extra["synth"]["commit"]
        parent = task.model_extra["synth"]["parent"]
        # The base is the parent's tree, as a commit without history.
        base_tree = subprocess.run(["git", "--git-dir", str(repo), "rev-parse", f"{task.base_commit}^{{tree}}"],
                                   capture_output=True, text=True, check=True).stdout.strip()
        parent_tree = subprocess.run(["git", "-C", str(dest.parent.parent / "calc"), "rev-parse",
                                      f"{parent}^{{tree}}"], capture_output=True, text=True, check=True).stdout.strip()
        assert base_tree == parent_tree
        parents = subprocess.run(["git", "--git-dir", str(repo), "rev-list", "--parents", "-n", "1",
                                  task.base_commit], capture_output=True, text=True, check=True).stdout.split()
        assert parents == [task.base_commit]
        assert leaks(task.problem_statement, task.patch) == []
        assert "Signed-off-by" not in task.problem_statement
        assert task.test_patch and task.patch
        with Sandbox(docker_client, base_image, run_id="test-history", limits=settings.sandbox) as box:
            assert grade(box, task, es.repo_dir(task), task.patch, test_timeout_s=settings.test_timeout_s).resolved, commit
        with Sandbox(docker_client, base_image, run_id="test-history", limits=settings.sandbox) as box:
            assert not grade(box, task, es.repo_dir(task), "", test_timeout_s=settings.test_timeout_s).resolved
    fix = hist[f"calc__hist-{shas['fix'][:10]}"]
    assert fix.problem_statement.startswith("Fix clamp at the upper bound")
    assert fix.FAIL_TO_PASS == ["tests/test_calc.py::test_clamp_high"]
    assert "tests/test_calc.py::test_add" in fix.PASS_TO_PASS
    feature = hist[f"calc__hist-{shas['feature'][:10]}"]
    assert feature.FAIL_TO_PASS == ["tests/test_sub.py::test_sub"]  # its module did not even import before
    # Statements name only tests the agent's checkout has, failing there, with the lines it will see.
    assert "test_clamp_high" not in fix.problem_statement  # only the hidden test patch has it
    assert "test_sub" not in feature.problem_statement and feature.problem_statement.strip() == "Add sub()"
    pow_fix = hist[f"calc__hist-{shas['pow_fix'][:10]}"]
    assert pow_fix.FAIL_TO_PASS == ["tests/test_pow.py::test_pow_cube", "tests/test_pow.py::test_pow_square"]
    assert "tests/test_pow.py::test_pow_square" in pow_fix.problem_statement
    assert "test_pow_cube" not in pow_fix.problem_statement
    assert "assert power(3, 2) == 9" in pow_fix.problem_statement


def test_history_stops_with_a_diagnosis_when_no_test_passes_on_head(tmp_path, base_image):
    repo = tmp_path / "needs-dep"
    make_history(repo)
    _commit(repo, {"tests/conftest.py": "import freezegun  # a test dependency the image lacks\n"},
            "Freeze time in tests")
    with pytest.raises(SuiteFailsError) as e:
        synthesize(repo, tmp_path / "out", sources=("history",), opts=SynthOptions(max_tasks=1, workers=1))
    message = str(e.value)
    assert "no test passes on HEAD" in message and "No module named 'freezegun'" in message
    assert "--image" in message
    assert not (tmp_path / "out").exists()


def test_history_needs_a_git_repo(tmp_path):
    (tmp_path / "p" / "tests").mkdir(parents=True)
    (tmp_path / "p" / "tests" / "test_x.py").write_text("def test_x():\n    pass\n")
    with pytest.raises(SynthError, match="not a git repository"):
        synthesize(tmp_path / "p", tmp_path / "out", sources=("history",))
    assert not (tmp_path / "out").exists()


def test_the_summary_names_each_dropped_candidate_and_why(mined):
    from rich.console import Console

    from evolve.synth.commands import print_synth_summary

    dest, meta, shas = mined
    console = Console(record=True, width=300, force_terminal=False, color_system=None)
    print_synth_summary(console, meta, dest)
    text = console.export_text()
    assert f"dropped calc commit {shas['refactor'][:10]} 'Name the product in mul, test mul(0, x)'" in text
    assert f"dropped calc commit {shas['pow_wip'][:10]}" in text
    assert "calc: 2 of 7 commits were not candidates (no_code_or_tests 1, no_parent 1)" in text
