"""`evolve evals synth` from mutations, end to end: real Docker, real git, the real grader.

The project is a small library written here with a real pytest suite; tasks
are synthesized once per session and then checked independently of the
synthesizer's own verification: the reference patch resolves every task
through ``evolve.grading.grade``, the empty patch resolves none, no
statement contains the fix, and the snapshot repository holds no fixed tree.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from evolve.config import EvalSettings
from evolve.evalsets.registry import load_evalset
from evolve.synth.env import NoTestsError, SuiteFailsError, SynthError, SynthOptions, SynthProgress
from evolve.synth.output import OutputError
from evolve.synth.problem import leaks, patch_lines
from evolve.synth.synthesize import synthesize

LIB = '''"""tinylib: small helpers with a real test suite."""


def clamp(x, lo, hi):
    """x limited to [lo, hi]."""
    if x < lo:
        return lo
    if x > hi:
        return hi
    return x


def mean(values):
    total = 0
    for v in values:
        total += v
    return total / len(values)


def chunks(seq, n):
    out = []
    for i in range(0, len(seq), n):
        out.append(seq[i:i + n])
    return out


def is_palindrome(text):
    text = text.lower()
    return text == text[::-1]


def never_tested(x):
    return x * 2 + 1
'''
TESTS = '''from tinylib import chunks, clamp, is_palindrome, mean


def test_clamp_inside():
    assert clamp(5, 0, 10) == 5


def test_clamp_low():
    assert clamp(-3, 0, 10) == 0


def test_clamp_high():
    assert clamp(12, 0, 10) == 10


def test_clamp_edges():
    assert clamp(0, 0, 10) == 0
    assert clamp(10, 0, 10) == 10


def test_mean():
    assert mean([1, 2, 3, 6]) == 3


def test_chunks():
    assert chunks([1, 2, 3, 4, 5], 2) == [[1, 2], [3, 4], [5]]


def test_chunks_exact():
    assert chunks("abcdef", 3) == ["abc", "def"]


def test_palindrome():
    assert is_palindrome("Level")
    assert not is_palindrome("levels")
'''


def make_project(root: Path, *, tests: str | None = TESTS, git: bool = True,
                 extra_tests: dict[str, str] | None = None) -> Path:
    (root / "tinylib").mkdir(parents=True)
    (root / "tinylib" / "__init__.py").write_text(LIB)
    (root / "pytest.ini").write_text("[pytest]\n")
    if tests is not None:
        (root / "tests").mkdir()
        (root / "tests" / "test_tinylib.py").write_text(tests)
    for name, text in (extra_tests or {}).items():
        (root / "tests" / name).write_text(text)
    if git:
        subprocess.run(["git", "init", "-q", str(root)], check=True)
        subprocess.run(["git", "-C", str(root), "add", "-A"], check=True)
        subprocess.run(["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm",
                        "tinylib"], check=True)
    return root


OPTS = SynthOptions(max_tasks=4, seed=7, workers=2)


class Notes(SynthProgress):
    def __init__(self) -> None:
        self.notes: list[str] = []

    def note(self, message: str) -> None:
        self.notes.append(message)


SYNTH_NOTES = Notes()
NEEDS_DEP = {"test_needs_dep.py": "import freezegun_not_here\n\n\ndef test_t():\n    pass\n"}


@pytest.fixture(scope="session")
def synthesized(tmp_path_factory, base_image):
    """(eval-set dir, synth metadata) of tinylib with 4 mutation tasks; one of its test files needs a
    module the image lacks and must be dropped with a note, not end the run."""
    root = tmp_path_factory.mktemp("synth")
    project = make_project(root / "tinylib-src", extra_tests=NEEDS_DEP)
    dest = root / "evals" / "tinylib"
    meta = synthesize(project, dest, name="tinylib", opts=OPTS, progress=SYNTH_NOTES)
    return dest, meta


pytestmark = pytest.mark.docker


def _grade(task, evalset, docker_client, image, patch):
    from evolve.grading import grade
    from evolve.sandbox.docker import Sandbox

    with Sandbox(docker_client, image, run_id="test-synth", limits=EvalSettings(model="x").sandbox) as box:
        return grade(box, task, evalset.repo_dir(task), patch, test_timeout_s=300)


def test_synthesized_tasks_are_valid_under_the_real_grader(synthesized, docker_client, base_image):
    dest, meta = synthesized
    es = load_evalset(dest)
    tasks = es.tasks("search") + es.tasks("holdout")
    assert len(tasks) == 4 == meta["tasks"]
    assert set(es.splits) == {"search", "holdout"}
    for task in tasks:
        assert task.instance_id.startswith("tinylib__mut-")
        assert task.test_patch == "" and task.repo_path == "repos/tinylib"
        assert task.FAIL_TO_PASS and all(t.startswith("tests/test_tinylib.py::") for t in task.FAIL_TO_PASS)
        assert not set(task.FAIL_TO_PASS) & set(task.PASS_TO_PASS)
        assert leaks(task.problem_statement, task.patch) == []
        assert task.patch not in task.problem_statement
        assert not any("x * 2" in line for line in patch_lines(task.patch))  # code no test calls: never mutated
        ref = _grade(task, es, docker_client, base_image, task.patch)
        assert ref.resolved, (task.instance_id, ref.FAIL_TO_PASS, ref.PASS_TO_PASS, ref.test_output[-2000:])
        empty = _grade(task, es, docker_client, base_image, "")
        assert not empty.resolved
        assert not any(s.passing for s in empty.FAIL_TO_PASS.values())


def test_a_test_file_that_does_not_collect_is_dropped_with_the_error_quoted(synthesized):
    dest, meta = synthesized
    said = [n for n in SYNTH_NOTES.notes if "do not collect" in n]
    assert len(said) == 1 and "tests/test_needs_dep.py" in said[0], SYNTH_NOTES.notes
    assert "No module named 'freezegun_not_here'" in said[0]
    for task in load_evalset(dest).tasks("search") + load_evalset(dest).tasks("holdout"):
        assert not any("test_needs_dep" in t for t in task.FAIL_TO_PASS + task.PASS_TO_PASS)


def test_snapshots_hold_only_buggy_trees(synthesized):
    dest, _ = synthesized
    es = load_evalset(dest)
    repo = dest / "repos" / "tinylib"
    lines = subprocess.run(["git", "--git-dir", str(repo), "rev-list", "--all", "--parents"], capture_output=True,
                           text=True, check=True).stdout.split("\n")
    commits = [l.split() for l in lines if l]
    assert all(len(c) == 1 for c in commits)  # no commit has a parent: no history
    tasks = es.tasks("search") + es.tasks("holdout")
    assert {c[0] for c in commits} == {t.base_commit for t in tasks}
    original = LIB
    for task in tasks:
        buggy = subprocess.run(["git", "--git-dir", str(repo), "show", f"{task.base_commit}:tinylib/__init__.py"],
                               capture_output=True, text=True, check=True).stdout
        assert buggy != original  # the base is the mutant; the fix is only in the task's patch


def test_same_seed_same_tasks(synthesized, tmp_path):
    dest, _ = synthesized
    again = tmp_path / "again"
    synthesize(make_project(tmp_path / "tinylib-src", extra_tests=NEEDS_DEP), again, name="tinylib", opts=OPTS)
    for split in ("search.jsonl", "holdout.jsonl"):
        assert (again / split).read_text() == (dest / split).read_text()


def test_synth_cli_lists_and_shows(synthesized, tmp_path):
    dest, _ = synthesized
    env = dict(os.environ, EVOLVE_HOME=str(dest.parent.parent))
    # The eval set lives in $EVOLVE_HOME/evals/tinylib, so it is found by name.
    evolve = str(Path(__file__).parent.parent / ".venv" / "bin" / "evolve")
    if not Path(evolve).exists():
        evolve = "evolve"
    listed = subprocess.run([evolve, "evals", "list"], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "tinylib" in listed.stdout
    shown = subprocess.run([evolve, "evals", "show", "tinylib"], env=env, capture_output=True, text=True,
                           cwd=tmp_path)
    assert shown.returncode == 0 and "tinylib__mut-" in shown.stdout
    first = json.loads((dest / "search.jsonl").read_text().split("\n")[0] or
                       (dest / "holdout.jsonl").read_text().split("\n")[0])
    one = subprocess.run([evolve, "evals", "show", "tinylib", first["instance_id"]], env=dict(env, COLUMNS="200"),
                         capture_output=True, text=True, cwd=tmp_path)
    assert one.returncode == 0
    assert "FAIL_TO_PASS" in one.stdout and first["FAIL_TO_PASS"][0] in one.stdout
    missing = subprocess.run([evolve, "evals", "show", "tinylib", "nope"], env=env, capture_output=True, text=True,
                             cwd=tmp_path)
    assert missing.returncode == 1 and "no task 'nope'" in missing.stderr


def _nothing_left(parent: Path) -> None:
    assert not parent.exists() or list(parent.iterdir()) == []


def test_repo_without_tests_is_a_clear_error(tmp_path):
    project = make_project(tmp_path / "notests", tests=None)
    with pytest.raises(NoTestsError, match="no pytest tests"):
        synthesize(project, tmp_path / "evals" / "x", opts=OPTS)
    _nothing_left(tmp_path / "evals")


def test_suite_failing_before_mutation_is_a_clear_error(tmp_path, base_image):
    broken = TESTS.replace("== 5\n", "== 6\n").replace("== 0\n", "== 1\n").replace("== 10\n", "== 11\n")
    broken = broken.replace("== 3\n", "== 4\n").replace("[5]]", "[6]]")
    project = make_project(tmp_path / "broken", tests=broken)
    with pytest.raises(SuiteFailsError, match="fails before any mutation"):
        synthesize(project, tmp_path / "evals" / "x", opts=OPTS)
    _nothing_left(tmp_path / "evals")


def test_suite_that_does_not_import_is_a_clear_error(tmp_path, base_image):
    project = make_project(tmp_path / "noimport", tests="import not_installed_anywhere\n\n\ndef test_x():\n    pass\n")
    with pytest.raises(SuiteFailsError, match="could not collect") as raised:
        synthesize(project, tmp_path / "evals" / "x", opts=OPTS)
    assert "No module named 'not_installed_anywhere'" in str(raised.value)  # the cause, quoted
    _nothing_left(tmp_path / "evals")


def test_foreign_destination_is_refused_before_any_work(tmp_path):
    dest = tmp_path / "evals" / "mine"
    dest.mkdir(parents=True)
    (dest / "notes.txt").write_text("mine")
    with pytest.raises(OutputError):
        synthesize(make_project(tmp_path / "p"), dest, opts=OPTS)
    assert [p.name for p in dest.iterdir()] == ["notes.txt"]


def test_unknown_source_is_refused(tmp_path):
    with pytest.raises(SynthError, match="unknown task source"):
        synthesize(make_project(tmp_path / "p"), tmp_path / "out", sources=("magic",), opts=OPTS)
