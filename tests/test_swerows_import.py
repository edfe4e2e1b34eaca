"""SWE-smith and R2E-Gym rows (issue 11 item 4): importing them, splits that are never empty, the image
check before any agent runs, grading parity with each project's own rule on logs of real test runs,
and tasks graded in real containers built to look like their images."""

from __future__ import annotations

import ast
import importlib.util
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("swebench", reason="the swebench extra (bash scripts/setup.sh installs it)")

from conftest import FIXTURES, SOLVER_SCRIPT  # noqa: E402
from evolve.errors import EvalSetError  # noqa: E402
from evolve.evalsets import load_evalset  # noqa: E402
from evolve.evalsets import r2egym  # noqa: E402
from evolve.evalsets.swebench import ImportOptions, import_swebench, to_task  # noqa: E402
from evolve.evalsets.swesmith import reverse_diff  # noqa: E402
from evolve.grading import grade_log  # noqa: E402
from evolve.types import Task  # noqa: E402

EVOLVE = str(Path(sys.executable).parent / "evolve")
HARNESS = str(Path(__file__).resolve().parents[1] / "evolve" / "templates" / "minimal")
SMITH = FIXTURES / "swerows" / "swesmith.jsonl"
R2E = FIXTURES / "swerows" / "r2egym.jsonl"


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_jsonl(path: Path, items: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in items))
    return path


def evolve(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([EVOLVE, *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": "300", "EVOLVE_HOME": str(cwd / "home"), **env})


def git(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, capture_output=True,
                          text=True, check=check)


# -- SWE-smith: the bug patch and its reverse ------------------------------------------------------

ORIGINAL = {"pkg/calc.py": "def add(a, b):\n    \"\"\"Sum.\"\"\"\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n",
            "pkg/gone.py": "X = 1\n", "pkg/tail.py": "last = 1"}


def test_the_fix_is_the_bug_patch_reversed_byte_for_byte(tmp_path):
    """A bug patch made by git (a changed run, a deleted file, a new file, a file without a final newline),
    reversed: applying bug then fix gives the clean tree back, and the fix alone is what SWE-smith's
    ``git apply --reverse`` of the bug does."""
    repo = tmp_path / "r"
    for path, text in ORIGINAL.items():
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_text(text)
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "clean")
    (repo / "pkg/calc.py").write_text(ORIGINAL["pkg/calc.py"].replace("a + b", "a - b").replace("Sum.", "Sum!"))
    (repo / "pkg/gone.py").unlink()
    (repo / "pkg/new.py").write_text("Y = 2\n")
    (repo / "pkg/tail.py").write_text("last = 2")
    git(repo, "add", "-A")
    bug = git(repo, "diff", "--cached", "HEAD").stdout
    git(repo, "commit", "-qm", "bug")
    fix = reverse_diff(bug)
    assert fix is not None and fix != bug
    (tmp_path / "fix.patch").write_text(fix)
    git(repo, "apply", str(tmp_path / "fix.patch"))
    for path, text in ORIGINAL.items():
        assert (repo / path).read_text() == text
    assert not (repo / "pkg/new.py").exists()
    git(repo, "add", "-A")
    assert git(repo, "diff", "--cached", "HEAD~1", "--stat").stdout == ""  # exactly the clean tree
    assert reverse_diff(fix) == bug  # reversing twice is the identity
    renamed = "diff --git a/x.py b/y.py\nsimilarity index 100%\nrename from x.py\nrename to y.py\n"
    assert reverse_diff(renamed) is None


# -- import ----------------------------------------------------------------------------------------

def test_swe_smith_rows_import_with_the_bug_as_setup_patch_and_the_python_profile_command(tmp_path):
    out = evolve("evals", "import", "swe-bench", str(SMITH), "--name", "smith", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "search 2, holdout 1" in out.stdout
    assert "gin-gonic__gin.3c12d2a8.lm_rewrite__a1b2c3d4" in out.stdout and "not pytest ids" in out.stdout
    es = load_evalset(tmp_path / "home" / "evals" / "smith")
    tasks = {t.instance_id: t for t in es.tasks("search") + es.tasks("holdout")}
    source = {r["instance_id"]: r for r in rows(SMITH)}
    assert len(tasks) == 3
    for iid, t in tasks.items():
        row = source[iid]
        assert t.image == row["image_name"] and t.repo_path is None and t.repo == row["repo"]
        assert t.model_extra["setup_patch"] == row["patch"] and t.patch == reverse_diff(row["patch"])
        assert t.FAIL_TO_PASS == row["FAIL_TO_PASS"] and t.PASS_TO_PASS == row["PASS_TO_PASS"]
        assert t.base_commit == "1fd52536" and "image_name" not in t.model_extra
        assert "source /opt/miniconda3/bin/activate" in t.test_cmd and "conda activate testbed" in t.test_cmd
        assert "pytest --disable-warnings --color=no --tb=no --verbose -rA" in t.test_cmd
        assert t.model_extra["swebench"] == {"style": "swe-smith", "log_parser": "parse_log_pytest",
                                             "eval_type": "pass_and_fail", "version": ""}
    assert "-    return a - b\n+    return a + b" in tasks[
        "oauthlib__oauthlib.1fd52536.func_pm_op_change__k3n2v9xa"].patch  # the fix undoes the bug


def test_a_non_python_swe_smith_row_imports_with_a_test_command_given(tmp_path):
    gin = [r for r in rows(SMITH) if r["instance_id"].startswith("gin")][0]
    task = to_task(gin, ImportOptions(test_cmd="go test -v ./...", log_parser="parse_log_gotest"))
    assert isinstance(task, Task), task
    assert 'go test -v ./... "$@"' in task.test_cmd and task.model_extra["swebench"]["log_parser"] == "parse_log_gotest"


def test_r2e_gym_rows_import_with_outcomes_derived_from_expected_output_json(tmp_path):
    imported = import_swebench(str(R2E), tmp_path / "r2e", ImportOptions(seed=3))
    assert imported.counts == {"search": 2, "holdout": 1} and not imported.dropped
    source = {f"{r['repo_name']}_{r['commit_hash']}": r for r in rows(R2E)}
    es = load_evalset(tmp_path / "r2e")
    tasks = es.tasks("search") + es.tasks("holdout")
    assert sorted(t.instance_id for t in tasks) == sorted(source)
    for t in tasks:
        row = source[t.instance_id]
        parsed = json.loads(row["parsed_commit_content"])
        assert t.image == row["docker_image"] and t.repo == row["repo_name"] and t.repo_path is None
        assert t.base_commit == parsed["old_commit_hash"] and t.problem_statement == row["problem_statement"]
        # PASSED in expected_output_json, and not PASSED in the old commit's log: FAIL_TO_PASS
        assert t.FAIL_TO_PASS == ["TestCalc.test_add"] and t.PASS_TO_PASS == ["TestCalc.test_sub"]
        assert t.model_extra["swebench"] == {"style": "r2e-gym", "expected": json.loads(row["expected_output_json"])}
        assert "bash run_tests.sh" in t.test_cmd and "cp -r /r2e_tests r2e_tests" in t.test_cmd
        assert "/testbed/.venv/bin" in t.test_cmd
        assert "execution_result_content" not in t.model_extra and "parsed_commit_content" not in t.model_extra
        # the reference patch: the non-test Python file of the commit, as R2E-Gym's ParsedCommit.get_patch
        path = parsed["file_diffs"][0]["header"]["file"]["path"]
        assert t.patch.startswith(f"diff --git a/{path} b/{path}\nindex 1a2b3c4..5d6e7f8 100644\n--- a/{path}\n")
        assert "-    return a - b\n+    return a + b\n" in t.patch and "pandas/tests/test_x.py" not in t.patch
    # the rebuilt patch applies to the old code
    repo = tmp_path / "old"
    (repo / "pandas/core").mkdir(parents=True)
    (repo / "pandas/core/calc.py").write_text("\n" * 9 + "def add(a, b):\n    return a - b\n\n")
    git(repo, "init", "-q")
    patch = [t for t in tasks if "calc.py" in t.patch][0].patch
    (tmp_path / "p.patch").write_text(patch)
    assert git(repo, "apply", "--check", str(tmp_path / "p.patch"), check=False).returncode == 0


def test_r2e_rows_without_the_old_log_or_with_nothing_to_fix(tmp_path):
    row = rows(R2E)[0]
    no_log = {k: v for k, v in row.items() if k != "execution_result_content"}
    task = to_task(no_log, ImportOptions())
    assert isinstance(task, Task) and task.FAIL_TO_PASS == ["TestCalc.test_add", "TestCalc.test_sub"]
    same = {**row, "expected_output_json": json.dumps({"TestCalc.test_sub": "PASSED"})}
    assert "nothing to fix" in to_task(same, ImportOptions())
    assert "expected_output_json" in to_task({**row, "expected_output_json": "{}"}, ImportOptions())


def test_one_row_of_either_kind_is_an_error_not_an_empty_split(tmp_path):
    for name, src in (("smith", SMITH), ("r2e", R2E)):
        one = write_jsonl(tmp_path / f"{name}.jsonl", rows(src)[:1])
        out = evolve("evals", "import", "swe-bench", str(one), cwd=tmp_path)
        assert out.returncode == 1 and "at least 2" in out.stderr and "Traceback" not in out.stderr


# -- the image check, before any agent runs ------------------------------------------------------------

def test_eval_stops_naming_missing_swe_smith_and_r2e_images_and_how_to_get_them(tmp_path, docker_client):
    mixed = write_jsonl(tmp_path / "mixed.jsonl", rows(SMITH)[:3] + rows(R2E))
    imported = import_swebench(str(mixed), tmp_path / "evals" / "mixed", ImportOptions(holdout_fraction=0.5))
    out = evolve("eval", "--evals", str(imported.path), "--model", f"scripted/{SOLVER_SCRIPT}", "--harness", HARNESS,
                 cwd=tmp_path)
    assert out.returncode == 1, out.stdout + out.stderr
    err = " ".join(out.stderr.split())
    search = load_evalset(imported.path).tasks("search")
    images = {t.image for t in search}
    assert f"{len(images)} image(s) of split 'search' are not present and cannot be pulled" in err
    for t in search:
        assert t.image in err
    styles = {t.model_extra["swebench"]["style"] for t in search}
    assert ("SWE-smith's: pull them by name from your own registry's copy" in err) == ("swe-smith" in styles)
    assert ("R2E-Gym's: pull them by name" in err) == ("r2e-gym" in styles)
    assert "docker load -i FILE" in err and "[" not in err.replace("[a-b]", "")  # plain text, no markup
    assert not list((tmp_path / "runs").glob("*/results/*"))


# -- grading parity on logs of real test runs -----------------------------------------------------------

SMITH_TESTS = '''import pytest

class TestCalc:
    def test_add(self): assert 2 + 3 == 5
    def test_sub(self): assert 2 - 3 == 5
def test_skip(): pytest.skip("no")
@pytest.mark.xfail(reason="known")
def test_xfail(): assert 0
@pytest.mark.parametrize("p", ["a-b", "c"])
def test_param(p): assert p == "c"
@pytest.fixture
def broken(): raise RuntimeError("setup")
def test_error(broken): pass
'''


def swesmith_source(module: str, names: list[str], namespace: dict, cls: str | None = None) -> dict:
    """Functions of the installed swesmith package, taken from its source by name, at module level or in
    class ``cls`` (swesmith 0.0.9 cannot be imported next to swebench 5, see evolve.evalsets.swesmith)."""
    spec = importlib.util.find_spec("swesmith")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("the swesmith package is not installed (bash scripts/setup.sh installs the test extra)")
    path = Path(list(spec.submodule_search_locations)[0]) / module
    text = path.read_text()
    tree = ast.parse(text)
    scope = tree if cls is None else next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls)
    for node in scope.body:
        if isinstance(node, ast.FunctionDef) and node.name in names:
            src = textwrap.dedent(ast.get_source_segment(text, node))
            exec(compile(src, str(path), "exec"), namespace)
    assert all(n in namespace for n in names), names
    return namespace


def swesmith_resolved(task: Task, test_output: str) -> bool:
    """SWE-smith's verdict on a log: its Python profile's log parser and its report, then swebench's
    resolution status (swesmith.harness.grading.get_eval_report without its file handling)."""
    from swebench.harness import constants
    from swebench.harness.grading import get_resolution_status

    ns = {"re": re, "TestStatus": constants.TestStatus, **{k: getattr(constants, k) for k in
                                                         ("FAIL_TO_PASS", "PASS_TO_PASS", "FAIL_TO_FAIL", "PASS_TO_FAIL")}}
    swesmith_source("profiles/python.py", ["log_parser"], ns, cls="PythonProfile")
    swesmith_source("harness/grading.py", ["test_passed", "test_failed", "get_eval_tests_report"], ns)
    status = ns["log_parser"](None, test_output)
    report = ns["get_eval_tests_report"](status, {"FAIL_TO_PASS": task.FAIL_TO_PASS, "PASS_TO_PASS": task.PASS_TO_PASS})
    return get_resolution_status(report) == constants.ResolvedStatus.FULL.value


def real_log(tmp_path: Path, files: dict[str, str], cmd: list[str]) -> tuple[str, int]:
    work = tmp_path / f"w{len(list(tmp_path.iterdir()))}"
    for path, text in files.items():
        (work / path).parent.mkdir(parents=True, exist_ok=True)
        (work / path).write_text(text)
    run = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=120)
    return run.stdout + run.stderr, run.returncode


def test_swe_smith_logs_resolve_as_swesmiths_own_report(tmp_path):
    output, rc = real_log(tmp_path, {"tests/test_calc.py": SMITH_TESTS},
                          [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--disable-warnings", "--color=no",
                           "--tb=no", "--verbose", "-rA"])
    assert rc == 1
    ids = [f"tests/test_calc.py::{n}" for n in ("TestCalc::test_add", "TestCalc::test_sub", "test_skip", "test_xfail",
                                                "test_param[a-b]", "test_param[c]", "test_error", "test_absent")]
    row = [r for r in rows(SMITH) if r["instance_id"].endswith("k3n2v9xa")][0]
    resolved = total = 0
    skipped_theirs: list[bool] = []
    for f2p in ids:
        for p2p in ([], [i for i in ids if i != f2p][:1], [i for i in ids if i not in (f2p, ids[3])][:2]):
            task = to_task({**row, "FAIL_TO_PASS": [f2p], "PASS_TO_PASS": p2p}, ImportOptions())
            ours, theirs = grade_log(task, output, rc).resolved, swesmith_resolved(task, output)
            if f2p.endswith("test_skip"):
                # The one known difference: swesmith 0.0.9's own report counts a skipped FAIL_TO_PASS test as
                # neither passed nor failed, so it can be RESOLVED_FULL; swebench 5 (evolve) never resolves it.
                assert not ours
                skipped_theirs.append(theirs)
                continue
            assert ours == theirs, (f2p, p2p)
            resolved += ours
            total += 1
    assert 0 < resolved < total
    assert True in skipped_theirs  # the difference is real, not a test that cannot fail


R2E_TESTS = '''import pytest

class TestCalc:
    def test_add(self): assert ADD(2, 3) == 5
    def test_sub(self): assert 2 - 3 == -1
def test_known_bug(): raise NotImplementedError
@pytest.mark.parametrize("p", ["x", "y"])
def test_param(p): assert p
def test_skip(): pytest.skip("no")
'''


def r2e_run(tmp_path: Path, add: str, extra: str = "") -> tuple[str, int]:
    return real_log(tmp_path, {"r2e_tests/test_1.py": R2E_TESTS.replace("ADD(2, 3)", add) + extra},
                    [sys.executable, "-W", "ignore", "-m", "pytest", "-p", "no:cacheprovider", "-rA", "r2e_tests"])


def test_r2e_gym_logs_resolve_as_r2e_gyms_reward(tmp_path):
    fixed, rc_fixed = r2e_run(tmp_path, "2 + 3")
    expected = r2egym.parse_log(fixed)
    # R2E-Gym's names: the node id without its file, joined with dots; skipped tests are not named
    assert expected == {"TestCalc.test_add": "PASSED", "TestCalc.test_sub": "PASSED", "test_known_bug": "FAILED",
                        "test_param[x]": "PASSED", "test_param[y]": "PASSED"}
    row = {**rows(R2E)[0], "expected_output_json": json.dumps(expected)}
    task = to_task(row, ImportOptions())
    assert isinstance(task, Task) and task.FAIL_TO_PASS[0] == "TestCalc.test_add"
    assert grade_log(task, fixed, rc_fixed).resolved
    buggy, rc = r2e_run(tmp_path, "2 - 3")
    g = grade_log(task, buggy, rc)
    assert not g.resolved and g.FAIL_TO_PASS["TestCalc.test_add"] == "FAILED"
    # an expected failure that now passes, or an extra test, is not R2E-Gym's expected outcome
    over, rc = real_log(tmp_path, {"r2e_tests/test_1.py": R2E_TESTS.replace("ADD(2, 3)", "5").replace(
        "raise NotImplementedError", "pass")}, [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", "r2e_tests"])
    assert not grade_log(task, over, rc).resolved
    extra, rc = r2e_run(tmp_path, "2 + 3", "\ndef test_more(): pass\n")
    assert r2egym.parse_log(extra)["test_more"] == "PASSED" and not grade_log(task, extra, rc).resolved
    # colour codes and carriage returns are removed as R2E-Gym's runtime does
    coloured = fixed.replace("PASSED", "\x1b[32mPASSED\x1b[0m").replace("\n", "\r\n")
    assert r2egym.parse_log(coloured) == expected and grade_log(task, coloured, rc_fixed).resolved
    assert r2egym.parse_log("no summary here\nPASSED r2e_tests/t.py::test_a") == {}


# -- graded in real containers made like the projects' images ---------------------------------------

CALC = "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n"
TESTS = ("from calc import add, sub\n\n\nclass TestCalc:\n    def test_add(self):\n        assert add(2, 3) == 5\n\n"
         "    def test_sub(self):\n        assert sub(5, 3) == 2\n")
BUG = ("diff --git a/calc.py b/calc.py\n--- a/calc.py\n+++ b/calc.py\n@@ -1,5 +1,5 @@\n def add(a, b):\n"
       "-    return a + b\n+    return a - b\n \n \n def sub(a, b):\n")


def build_image(docker_client, base_image: str, tag: str, files: dict[str, str], run: str = "") -> str:
    docker = f"FROM {base_image}\nCOPY ctx /\n" + (f"RUN {run}\n" if run else "")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, text in {"Dockerfile": docker, **{f"ctx/{k}": v for k, v in files.items()}}.items():
            info = tarfile.TarInfo(name)
            info.size = len(text.encode())
            info.mode = 0o755 if name.endswith(".sh") or "/bin/" in name else 0o644
            tar.addfile(info, io.BytesIO(text.encode()))
    docker_client.images.build(fileobj=io.BytesIO(buf.getvalue()), custom_context=True, tag=tag, rm=True,
                               network_mode="none", pull=False)
    return tag


@pytest.fixture(scope="module")
def smith_image(docker_client, base_image):
    """The clean repo at /testbed and a conda stand-in (``conda activate testbed`` is a no-op), as in
    SWE-smith's images."""
    tag = build_image(docker_client, base_image, "evolve-test-swesmith-instance:latest",
                      {"testbed/calc.py": CALC, "testbed/tests/__init__.py": "", "testbed/tests/test_calc.py": TESTS,
                       "opt/miniconda3/bin/activate": "conda() { :; }\n"},
                      run="cd /testbed && git init -q && git add -A && git -c user.name=s -c user.email=s@s commit -qm c")
    yield tag
    docker_client.images.remove(tag, force=True)


VENV_SITE = "testbed/.venv/lib/python3/site-packages"


@pytest.fixture(scope="module")
def r2e_image(docker_client, base_image):
    """The repo before the fix at /testbed with its venv and run_tests.sh, the tests at /r2e_tests, as in
    R2E-Gym's images (the venv's python is the image's, with its packages)."""
    tag = build_image(docker_client, base_image, "evolve-test-r2egym-instance:latest",
                      {"testbed/calc.py": CALC.replace("a + b", "a - b", 1),
                       "testbed/run_tests.sh": ".venv/bin/python -W ignore -m pytest -rA r2e_tests\n",
                       "testbed/.venv/pyvenv.cfg": "home = /usr/bin\ninclude-system-site-packages = true\n",
                       f"{VENV_SITE}/helper.py": "X = 1\n",
                       "r2e_tests/__init__.py": "", "r2e_tests/test_1.py": "import sys\nsys.path.insert(0, '.')\n" + TESTS},
                      run="mkdir -p /testbed/.venv/bin && ln -s /usr/bin/python3 /testbed/.venv/bin/python")
    yield tag
    docker_client.images.remove(tag, force=True)


def grade_in(docker_client, image: str, task: Task, patch: str):
    from evolve.config import EvalSettings
    from evolve.grading import grade
    from evolve.sandbox.docker import Sandbox

    settings = EvalSettings(model="x", test_timeout_s=120)
    with Sandbox(docker_client, image, run_id="test-swerows", limits=settings.sandbox) as box:
        return grade(box, task, None, patch, test_timeout_s=120)


def test_a_swe_smith_task_starts_from_the_bug_and_its_reference_fix_resolves(smith_image, docker_client):
    from evolve.config import EvalSettings
    from evolve.sandbox.docker import Sandbox
    from evolve.testbed import prepare_testbed

    row = {**rows(SMITH)[0], "patch": BUG, "image_name": smith_image, "FAIL_TO_PASS": ["tests/test_calc.py::TestCalc::test_add"],
           "PASS_TO_PASS": ["tests/test_calc.py::TestCalc::test_sub"]}
    task = to_task(row, ImportOptions())
    assert isinstance(task, Task)
    with Sandbox(docker_client, smith_image, run_id="test-swerows", limits=EvalSettings(model="x").sandbox) as box:
        prepare_testbed(box, task, None)  # what the agent sees: the buggy tree, one commit, no bug diff
        seen = box.exec("cat /testbed/calc.py; git -C /testbed log --oneline | wc -l; git -C /testbed status --short",
                        timeout_s=60)
    assert "return a - b\n\n\ndef sub" in seen.output and seen.output.strip().endswith("1")
    fixed = grade_in(docker_client, smith_image, task, task.patch)
    assert fixed.resolved, (fixed.failure_class, fixed.apply_log, fixed.test_output[-2000:])
    assert fixed.FAIL_TO_PASS == {"tests/test_calc.py::TestCalc::test_add": "PASSED"} and fixed.channel
    empty = grade_in(docker_client, smith_image, task, "")
    assert not empty.resolved and empty.FAIL_TO_PASS["tests/test_calc.py::TestCalc::test_add"] == "FAILED"
    assert empty.PASS_TO_PASS["tests/test_calc.py::TestCalc::test_sub"] == "PASSED"


def test_a_setup_patch_that_does_not_apply_is_the_eval_sets_problem(smith_image, docker_client):
    from evolve.errors import InfraError

    row = {**rows(SMITH)[0], "image_name": smith_image}  # its bug names oauthlib/common.py, not in this image
    task = to_task(row, ImportOptions())
    with pytest.raises(InfraError) as e:
        grade_in(docker_client, smith_image, task, "")
    assert e.value.kind == "eval_set" and "setup_patch does not apply" in str(e.value)


def test_an_r2e_gym_task_runs_its_hidden_tests_and_resolves_by_expected_outcomes(r2e_image, docker_client):
    expected = {"TestCalc.test_add": "PASSED", "TestCalc.test_sub": "PASSED"}
    row = {**rows(R2E)[0], "docker_image": r2e_image, "expected_output_json": json.dumps(expected)}
    task = to_task(row, ImportOptions())
    assert isinstance(task, Task) and task.FAIL_TO_PASS == ["TestCalc.test_add"]
    fix = ("diff --git a/calc.py b/calc.py\n--- a/calc.py\n+++ b/calc.py\n@@ -1,2 +1,2 @@\n def add(a, b):\n"
           "-    return a - b\n+    return a + b\n")
    fixed = grade_in(docker_client, r2e_image, task, fix)
    assert fixed.resolved, (fixed.failure_class, fixed.notes, fixed.test_output[-2000:])
    assert fixed.FAIL_TO_PASS == {"TestCalc.test_add": "PASSED"} and fixed.PASS_TO_PASS == {"TestCalc.test_sub": "PASSED"}
    assert fixed.channel  # evolve's own record, its node ids named as R2E-Gym's parser names them
    empty = grade_in(docker_client, r2e_image, task, "")
    assert not empty.resolved and empty.FAIL_TO_PASS["TestCalc.test_add"] == "FAILED"
    # a correct fix that also changes the venv inside /testbed is not resolved: the venv is the runner's
    venv = fix + (f"diff --git a/{VENV_SITE[8:]}/helper.py b/{VENV_SITE[8:]}/helper.py\n--- a/{VENV_SITE[8:]}/helper.py\n"
                  f"+++ b/{VENV_SITE[8:]}/helper.py\n@@ -1 +1 @@\n-X = 1\n+X = 2\n")
    gamed = grade_in(docker_client, r2e_image, task, venv)
    assert not gamed.resolved and gamed.failure_class == "tampering" and "package_metadata" in gamed.flags
    assert any("virtual environment file modified: .venv/" in n for n in gamed.notes), gamed.notes
    # a patch that writes its own r2e_tests gets the image's tests anyway
    fake = ("diff --git a/r2e_tests/test_1.py b/r2e_tests/test_1.py\nnew file mode 100644\n--- /dev/null\n"
            "+++ b/r2e_tests/test_1.py\n@@ -0,0 +1,6 @@\n+class TestCalc:\n+    def test_add(self):\n+        pass\n+\n"
            "+    def test_sub(self):\n+        pass\n")
    assert not grade_in(docker_client, r2e_image, task, fake).resolved



def agent_fixes(tmp_path: Path, solvable: dict, other: dict):
    """Import two rows, run the scripted solver's agent on ``solvable`` in its split, return its result."""
    from evolve.config import EvalSettings
    from evolve.evaluate import Evaluation
    from evolve.harness import resolve_harness

    imported = import_swebench(str(write_jsonl(tmp_path / "two.jsonl", [solvable, other])), tmp_path / "two",
                               ImportOptions(holdout_fraction=0.5))
    es = load_evalset(imported.path)
    iid = [t.instance_id for t in es.tasks("search") + es.tasks("holdout") if "gives -1" in t.problem_statement][0]
    split = next(s for s in ("search", "holdout") if iid in {t.instance_id for t in es.tasks(s)})
    settings = EvalSettings(model=f"scripted/{SOLVER_SCRIPT}", harness_timeout_s=180, test_timeout_s=120)
    ev = Evaluation(evalset=es, split=split, harness=resolve_harness(HARNESS, workdir=tmp_path / "harnesses"),
                    settings=settings, runs_dir=tmp_path / "runs", workers=1, instance_ids=[iid])
    (result,) = ev.run().results
    assert not result.is_infra, result.error
    return result


def test_an_agent_fixes_a_swe_smith_bug_end_to_end(smith_image, docker_client, tmp_path):
    """The whole path: import, the agent's sandbox starts from the bug, its patch is graded in the image."""
    base = {**rows(SMITH)[0], "patch": BUG, "image_name": smith_image,
            "FAIL_TO_PASS": ["tests/test_calc.py::TestCalc::test_add"], "PASS_TO_PASS": ["tests/test_calc.py::TestCalc::test_sub"]}
    result = agent_fixes(tmp_path, {**base, "instance_id": "calc__calc.0000aaaa.op__solv", "problem_statement": "add(2, 3) gives -1"},
                         {**base, "instance_id": "calc__calc.0000aaaa.op__othr", "problem_statement": "something else"})
    assert result.resolved, (result.failure_class, result.model_patch)
    assert "-    return a - b\n+    return a + b" in result.model_patch  # the agent saw the bug, and fixed it


def test_an_agent_fixes_an_r2e_gym_bug_end_to_end(r2e_image, docker_client, tmp_path):
    expected = json.dumps({"TestCalc.test_add": "PASSED", "TestCalc.test_sub": "PASSED"})
    rest = rows(R2E)
    result = agent_fixes(tmp_path, {**rest[0], "docker_image": r2e_image, "expected_output_json": expected,
                                    "problem_statement": "add(2, 3) gives -1"},
                         {**rest[1], "docker_image": r2e_image, "expected_output_json": expected})
    assert result.resolved, (result.failure_class, result.model_patch)
    assert result.FAIL_TO_PASS == {"TestCalc.test_add": "PASSED"} and ".venv" not in result.model_patch
