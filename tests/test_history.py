"""`evolve evals synth --from history`: tasks mined from a real git history, built here commit by commit."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from evolve.config import EvalSettings
from evolve.evalsets.registry import load_evalset
from evolve.synth.env import SynthError, SynthOptions
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
    return shas


def test_mining_takes_commits_that_change_code_and_tests(tmp_path):
    shas = make_history(tmp_path / "calc")
    stats: dict = {}
    commits = mine_commits(tmp_path / "calc", 100, stats)
    assert [c.sha for c in commits] == [shas["feature"], shas["refactor"], shas["fix"]]
    assert stats["commits"] == 5
    fix = commits[2]
    assert fix.parent == shas["initial"]
    assert fix.patch.startswith("diff --git a/calc.py b/calc.py") and "tests/" not in fix.patch
    assert "tests/test_calc.py" in fix.test_patch and "calc.py b/calc.py" not in fix.test_patch
    assert fix.test_files == ["tests/test_calc.py"]
    assert commits[0].test_files == ["tests/test_sub.py"]


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
    assert set(hist) == {f"calc__hist-{shas['fix'][:10]}", f"calc__hist-{shas['feature'][:10]}"}
    assert any("__mut-" in k for k in tasks)  # one repo gives both kinds of task
    assert meta["projects"]["calc"]["history"]["verdicts"].get("equivalent") == 1  # the refactor: nothing fails
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


def test_history_needs_a_git_repo(tmp_path):
    (tmp_path / "p" / "tests").mkdir(parents=True)
    (tmp_path / "p" / "tests" / "test_x.py").write_text("def test_x():\n    pass\n")
    with pytest.raises(SynthError, match="not a git repository"):
        synthesize(tmp_path / "p", tmp_path / "out", sources=("history",))
    assert not (tmp_path / "out").exists()
