"""Real SWE-bench (issue 11 item 4): importing rows, splits that are never empty, the image check before
any agent runs, and grading parity with swebench's own report function on logs of real test runs."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("swebench", reason="the swebench extra (bash scripts/setup.sh installs it)")

from swebench.harness.constants import APPLY_PATCH_PASS, END_TEST_OUTPUT, START_TEST_OUTPUT, TEST_EXIT_CODE  # noqa: E402
from swebench.harness.grading import get_eval_report  # noqa: E402
from swebench.types import TestSpec as SwebenchSpec  # noqa: E402

from conftest import SOLVER_SCRIPT  # noqa: E402
from evolve.errors import EvalSetError  # noqa: E402
from evolve.evalsets import load_evalset  # noqa: E402
from evolve.evalsets.swebench import ImportOptions, import_swebench, split_tasks, to_task  # noqa: E402
from evolve.grading import grade_log  # noqa: E402
from evolve.types import Task  # noqa: E402

EVOLVE = str(Path(sys.executable).parent / "evolve")
HARNESS = str(Path(__file__).resolve().parents[1] / "evolve" / "templates" / "minimal")

EVAL_SCRIPT = """#!/bin/bash
set -uxo pipefail
source /opt/miniconda3/bin/activate
conda activate testbed
cd /testbed
git config --global --add safe.directory /testbed
git -c core.fileMode=false diff 0000
python -m pip install -e .
git checkout 0000 tests/test_x.py
git apply -v - <<'EOF_114329324912'
diff --git a/tests/test_x.py b/tests/test_x.py
EOF_114329324912
: '>>>>> Start Test Output'
./tests/runtests.py --verbosity 2 --settings=test_sqlite --parallel 1 utils_tests.test_x
: '>>>>> End Test Output'
git checkout 0000 tests/test_x.py
"""


def swebench_row(i: int, **extra) -> dict:
    return {"instance_id": f"django__django-1100{i}", "repo": "django/django", "base_commit": "0" * 40,
            "patch": "diff --git a/x b/x\n", "test_patch": "diff --git a/tests/test_x.py b/tests/test_x.py\n",
            "problem_statement": f"bug {i}", "version": "3.0", "hints_text": "", "created_at": "2020-01-01",
            "FAIL_TO_PASS": json.dumps(["test_a (utils_tests.test_x.T)"]), "PASS_TO_PASS": "[]",
            "image": f"evolve-test-missing/sweb.eval.x86_64.django_1776_django-1100{i}:latest",
            "eval_script": EVAL_SCRIPT, "log_parser": "parse_log_django", "eval_type": "pass_and_fail", **extra}


def evolve(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([EVOLVE, *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": "300", "EVOLVE_HOME": str(cwd / "home"), **env})


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# -- import -----------------------------------------------------------------------------------------

def test_import_two_rows_gives_one_task_per_split_with_the_rows_image_command_and_parser(tmp_path):
    src = write_jsonl(tmp_path / "lite.jsonl", [swebench_row(0), swebench_row(1)])
    out = evolve("evals", "import", "swe-bench", str(src), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "search 1, holdout 1" in out.stdout
    es = load_evalset(tmp_path / "home" / "evals" / "lite")
    tasks = es.tasks("search") + es.tasks("holdout")
    assert sorted(t.instance_id for t in tasks) == ["django__django-11000", "django__django-11001"]
    for t in tasks:
        assert t.image == swebench_row(int(t.instance_id[-1]))["image"] and t.repo_path is None
        assert t.model_extra["swebench"]["log_parser"] == "parse_log_django"
        assert "./tests/runtests.py --verbosity 2" in t.test_cmd and "conda activate testbed" in t.test_cmd
        assert "git apply" not in t.test_cmd and "EOF_114329324912" not in t.test_cmd  # evolve applies test_patch
    shown = evolve("evals", "show", "lite", cwd=tmp_path)
    assert shown.returncode == 0 and "django__django-11000" in shown.stdout


def test_a_parquet_export_imports_like_jsonl(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([swebench_row(i) for i in range(3)]), tmp_path / "verified.parquet")
    imported = import_swebench(str(tmp_path / "verified.parquet"), tmp_path / "v", ImportOptions(seed=7))
    assert imported.counts == {"search": 2, "holdout": 1} and not imported.dropped


def test_the_test_command_runs_in_bash_with_the_graders_appended_files_ignored(tmp_path):
    row = swebench_row(0, eval_script="#!/bin/bash\nset -uxo pipefail\nexport EVOLVE_T=env-ok\n"
                                      ": '>>>>> Start Test Output'\necho \"$EVOLVE_T args=$#\"\n"
                                      ": '>>>>> End Test Output'\n")
    task = to_task(row, ImportOptions())
    assert isinstance(task, Task)
    out = subprocess.run(f"{task.test_cmd} tests/a.py tests/b.py", shell=True, capture_output=True, text=True,
                         env={**os.environ, "PYTEST_ADDOPTS": "-p evolve_no_such_plugin_x"})
    assert out.returncode == 0 and out.stdout.strip() == "env-ok args=2"


@pytest.mark.parametrize("n", [1, 2, 3, 10, 50])
def test_splits_are_never_empty_and_follow_the_seed(n):
    tasks = [Task(instance_id=f"t-{i}", repo="r", base_commit="0", problem_statement="p", FAIL_TO_PASS=["a"])
             for i in range(n)]
    if n < 2:
        with pytest.raises(EvalSetError, match="at least 2"):
            split_tasks(tasks, 0.3, seed=0)
        return
    a, b = split_tasks(tasks, 0.3, seed=0), split_tasks(tasks, 0.3, seed=1)
    assert a["search"] and a["holdout"] and len(a["search"]) + len(a["holdout"]) == n
    assert a == split_tasks(tasks, 0.3, seed=0)
    assert len(a["holdout"]) == min(n - 1, max(1, round(0.3 * n)))
    if n >= 10:
        assert a != b  # another seed, another split


def test_one_row_is_an_error_not_a_silent_empty_split(tmp_path):
    src = write_jsonl(tmp_path / "one.jsonl", [swebench_row(0)])
    out = evolve("evals", "import", "swe-bench", str(src), cwd=tmp_path)
    assert out.returncode == 1 and "at least 2" in out.stderr and "Traceback" not in out.stderr


def test_classic_rows_need_a_test_command_and_get_swebench_image_names(tmp_path):
    classic = [{k: v for k, v in swebench_row(i).items() if k not in ("image", "eval_script", "log_parser",
                                                                      "eval_type")} for i in range(3)]
    src = write_jsonl(tmp_path / "gym.jsonl", classic)
    out = evolve("evals", "import", "swe-bench", str(src), cwd=tmp_path)
    assert out.returncode == 1 and "--test-cmd" in out.stderr
    out = evolve("evals", "import", "swe-bench", str(src), "--test-cmd", "python -m pytest -rA",
                 "--namespace", "xingyaoww", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    task = load_evalset(tmp_path / "home" / "evals" / "gym").tasks("search")[0]
    assert task.image.startswith("xingyaoww/sweb.eval.x86_64.django_1776_django-1100")
    assert 'python -m pytest -rA "$@"' in task.test_cmd
    assert task.model_extra["swebench"]["log_parser"] == "parse_log_pytest"


def test_incomplete_swe_smith_and_r2e_gym_rows_are_dropped_with_their_reason(tmp_path):
    rows = [swebench_row(0), swebench_row(1), swebench_row(2),
            {"instance_id": "oauthlib__oauthlib.1fd52536.combine_file__x", "image_name": "swesmith/x"},
            {"instance_id": "r2e-1", "docker_image": "r2e/x"}, swebench_row(3, log_parser="parse_log_nothing")]
    imported = import_swebench(str(write_jsonl(tmp_path / "mix.jsonl", rows)), tmp_path / "mix", ImportOptions())
    assert sum(imported.counts.values()) == 3
    assert "a SWE-smith row needs image_name and patch" in imported.dropped["oauthlib__oauthlib.1fd52536.combine_file__x"]
    assert "an R2E-Gym row needs docker_image and a non-empty expected_output_json" in imported.dropped["r2e-1"]
    assert "no log parser 'parse_log_nothing'" in imported.dropped["django__django-11003"]
    assert "3 rows dropped" in (tmp_path / "mix" / "evalset.yaml").read_text()


def test_a_dataset_name_without_network_is_a_clear_error(tmp_path):
    out = evolve("evals", "import", "swe-bench", "SWE-bench/SWE-bench_Lite", cwd=tmp_path, HF_HUB_OFFLINE="1",
                 HF_DATASETS_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "could not download the Hugging Face dataset 'SWE-bench/SWE-bench_Lite'" in out.stderr
    missing = evolve("evals", "import", "swe-bench", "nope.parquet", cwd=tmp_path)
    assert missing.returncode == 1 and "no such file" in missing.stderr


# -- evaluation refuses before any agent runs ---------------------------------------------------------

def test_eval_stops_naming_every_missing_image_before_any_agent_runs(tmp_path, docker_client):
    src = write_jsonl(tmp_path / "lite.jsonl", [swebench_row(i) for i in range(4)])
    imported = import_swebench(str(src), tmp_path / "evals" / "lite", ImportOptions(holdout_fraction=0.5))
    out = evolve("eval", "--evals", str(imported.path), "--model", f"scripted/{SOLVER_SCRIPT}", "--harness", HARNESS, cwd=tmp_path)
    assert out.returncode == 1, out.stdout + out.stderr
    err = " ".join(out.stderr.split())
    assert "2 image(s) of split 'search' are not present and cannot be pulled, so no agent was started" in err
    for t in load_evalset(imported.path).tasks("search"):
        assert t.image in err and t.instance_id in err
    assert "swebench images build" in err
    assert not list((tmp_path / "runs").glob("*/results/*"))


def test_eval_of_an_empty_split_exits_1(tmp_path, mini_evalset):
    es = tmp_path / "half"
    es.mkdir()
    (es / "search.jsonl").write_text((mini_evalset / "search.jsonl").read_text())
    (es / "holdout.jsonl").write_text("")
    (es / "repos").symlink_to(mini_evalset / "repos")
    out = evolve("eval", "--evals", str(es), "--split", "holdout", "--model", f"scripted/{SOLVER_SCRIPT}", "--harness", HARNESS,
                 cwd=tmp_path)
    assert out.returncode == 1 and "has no task: nothing to evaluate" in out.stderr


def test_eval_of_tasks_without_repo_or_image_exits_1(tmp_path):
    rows = [{k: v for k, v in swebench_row(i).items() if k not in ("image", "eval_script", "log_parser",
                                                                   "eval_type")} for i in range(6)]
    out = evolve("eval", "--evals", str(write_jsonl(tmp_path / "bare.jsonl", rows)), "--model",
                 f"scripted/{SOLVER_SCRIPT}", "--harness", HARNESS, cwd=tmp_path)
    assert out.returncode == 1 and "empty /testbed" in out.stderr


# -- grading parity with swebench's report function ----------------------------------------------------

PYTEST_MODULE = '''import pytest

def test_ok(): pass
def test_fail(): assert 1 == 2
@pytest.mark.skip(reason="no")
def test_skip(): pass
@pytest.mark.xfail(reason="known")
def test_xfail(): assert 1 == 2
@pytest.mark.xfail(reason="fixed", strict=False)
def test_xpass(): pass
@pytest.mark.parametrize("p", ["/usr-bin", "a-b"])
def test_join(p): assert p != "a-b"
@pytest.fixture
def broken(): raise RuntimeError("setup")
def test_error(broken): pass
'''

UNITTEST_MODULE = '''import unittest
class T(unittest.TestCase):
    def test_ok(self): pass
    def test_ok2(self): pass
    def test_fail(self): self.assertEqual(1, 2)
    def test_err(self): raise RuntimeError("x")
    @unittest.skip("no")
    def test_skip(self): pass
'''


def real_log(tmp_path: Path, name: str, module: str, cmd: list[str]) -> tuple[str, int]:
    work = tmp_path / name
    work.mkdir()
    (work / f"{name}.py").write_text(module)
    run = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=120)
    return run.stdout + run.stderr, run.returncode


def swebench_resolved(tmp_path: Path, task: Task, log_parser: str, output: str, rc: int) -> bool:
    log = tmp_path / f"log-{abs(hash((task.instance_id, output, rc)))}.txt"
    log.write_text(f"{APPLY_PATCH_PASS}\n{START_TEST_OUTPUT}\n{output}\n{END_TEST_OUTPUT}\n{TEST_EXIT_CODE}: {rc}\n")
    spec = SwebenchSpec(instance_id=task.instance_id, image="i", eval_script_list=[], repo=task.repo, version="1",
                    FAIL_TO_PASS=task.FAIL_TO_PASS, PASS_TO_PASS=task.PASS_TO_PASS, log_parser=log_parser,
                    eval_type="pass_and_fail")
    report = get_eval_report(spec, {"instance_id": task.instance_id, "model_patch": "x"}, str(log), False)
    return report[task.instance_id]["resolved"]


def parity(tmp_path: Path, ids: list[str], log_parser: str, output: str, rc: int) -> tuple[int, int]:
    """Every task with 1 FAIL_TO_PASS test and 0-2 PASS_TO_PASS tests from ``ids``: evolve's grader and
    swebench's report must agree. Returns (resolved, total) so a test can see both outcomes occurred."""
    resolved = total = 0
    for f2p in ids:
        for p2p in itertools.chain.from_iterable(itertools.combinations([i for i in ids if i != f2p], k)
                                                 for k in range(3)):
            task = Task(instance_id=f"x-{total}", repo="o/r", base_commit="0", problem_statement="p",
                        FAIL_TO_PASS=[f2p], PASS_TO_PASS=list(p2p),
                        swebench={"log_parser": log_parser, "eval_type": "pass_and_fail", "version": "1"})
            ours = grade_log(task, output, rc).resolved
            assert ours == swebench_resolved(tmp_path, task, log_parser, output, rc), (f2p, p2p, rc)
            resolved += ours
            total += 1
    return resolved, total


def test_pytest_logs_resolve_as_swebench_reports(tmp_path):
    output, rc = real_log(tmp_path, "test_mod", PYTEST_MODULE,
                          [sys.executable, "-m", "pytest", "-rA", "-p", "no:cacheprovider", "test_mod.py"])
    assert rc == 1
    ids = ["test_mod.py::test_ok", "test_mod.py::test_fail", "test_mod.py::test_skip", "test_mod.py::test_xfail",
           "test_mod.py::test_xpass", "test_mod.py::test_join[/usr-bin]", "test_mod.py::test_join[a-b]",
           "test_mod.py::test_error", "test_mod.py::test_absent"]
    resolved, total = parity(tmp_path, ids, "parse_log_pytest", output, rc)
    assert 0 < resolved < total
    # A log of PASSED lines from a command that exited nonzero: neither trusts it (SWE-bench #620).
    passed_only = "\n".join(f"PASSED {i}" for i in ids)
    assert parity(tmp_path, ids, "parse_log_pytest", passed_only, 1)[0] == 0
    assert parity(tmp_path, ids, "parse_log_pytest", passed_only, 0)[0] > 0


def test_django_style_logs_resolve_as_swebench_reports(tmp_path):
    output, rc = real_log(tmp_path, "mod_t", UNITTEST_MODULE, [sys.executable, "-m", "unittest", "-v", "mod_t"])
    assert rc == 1
    ids = [f"{name} (mod_t.T.{name})" for name in ("test_ok", "test_ok2", "test_fail", "test_err", "test_skip")]
    resolved, total = parity(tmp_path, ids + ["test_gone (mod_t.T.test_gone)"], "parse_log_django", output, rc)
    assert 0 < resolved < total


def test_a_skipped_pass_to_pass_test_is_kept_only_by_swebenchs_rule(tmp_path):
    output, rc = real_log(tmp_path, "test_mod", PYTEST_MODULE,
                          [sys.executable, "-m", "pytest", "-rA", "-v", "-p", "no:cacheprovider", "test_mod.py"])
    task = Task(instance_id="e", repo="o/r", base_commit="0", problem_statement="p",
                FAIL_TO_PASS=["test_mod.py::test_ok"], PASS_TO_PASS=["test_mod.py::test_skip"])
    assert not grade_log(task, output, rc).resolved  # evolve's rule: a skipped PASS_TO_PASS test is not passing
    output, rc = real_log(tmp_path, "mod_t", UNITTEST_MODULE, [sys.executable, "-m", "unittest", "-v", "mod_t"])
    task = Task(instance_id="s", repo="o/r", base_commit="0", problem_statement="p",
                FAIL_TO_PASS=["test_ok (mod_t.T.test_ok)"], PASS_TO_PASS=["test_skip (mod_t.T.test_skip)"],
                swebench={"log_parser": "parse_log_django"})
    assert grade_log(task, output, rc).resolved  # SWE-bench's: a skipped PASS_TO_PASS test is no regression
    assert swebench_resolved(tmp_path, task, "parse_log_django", output, rc)


# -- an imported task graded in a real container --------------------------------------------------

CALC = "def add(a, b):\n    return a - b\n\n\ndef sub(a, b):\n    return a - b\n"
FIX = ("diff --git a/calc.py b/calc.py\n--- a/calc.py\n+++ b/calc.py\n@@ -1,5 +1,5 @@\n def add(a, b):\n"
       "-    return a - b\n+    return a + b\n \n \n def sub(a, b):\n")
TESTS = "import unittest\n\nfrom calc import add, sub\n\n\nclass T(unittest.TestCase):\n    def test_sub(self):\n" \
        "        self.assertEqual(sub(5, 3), 2)\n"
TEST_PATCH = ("diff --git a/tests/test_calc.py b/tests/test_calc.py\n--- a/tests/test_calc.py\n"
              "+++ b/tests/test_calc.py\n@@ -6,3 +6,6 @@ from calc import add, sub\n class T(unittest.TestCase):\n"
              "     def test_sub(self):\n         self.assertEqual(sub(5, 3), 2)\n+\n+    def test_add(self):\n"
              "+        self.assertEqual(add(2, 3), 5)\n")


@pytest.fixture(scope="module")
def instance_image(docker_client, base_image):
    """An image holding the repo at /testbed, as SWE-bench's instance images do (built offline)."""
    import io
    import tarfile

    files = {"Dockerfile": f"FROM {base_image}\nCOPY testbed /testbed\n", "testbed/calc.py": CALC,
             "testbed/tests/__init__.py": "", "testbed/tests/test_calc.py": TESTS}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, text in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(text.encode())
            tar.addfile(info, io.BytesIO(text.encode()))
    tag = "evolve-test-swebench-instance:latest"
    docker_client.images.build(fileobj=io.BytesIO(buf.getvalue()), custom_context=True, tag=tag, rm=True,
                               network_mode="none", pull=False)
    yield tag
    docker_client.images.remove(tag, force=True)


@pytest.mark.parametrize("runner,parser,ids", [
    ("python3 -m unittest -v tests.test_calc", "parse_log_django",
     ("test_add (tests.test_calc.T.test_add)", "test_sub (tests.test_calc.T.test_sub)")),
    ("python3 -m pytest -rA -p no:cacheprovider tests/test_calc.py", "parse_log_pytest",
     ("tests/test_calc.py::T::test_add", "tests/test_calc.py::T::test_sub")),
])
def test_an_imported_task_is_graded_in_its_image_with_its_command_and_parser(runner, parser, ids, instance_image,
                                                                              docker_client):
    from evolve.config import EvalSettings
    from evolve.grading import grade
    from evolve.sandbox.docker import Sandbox

    script = (f"#!/bin/bash\nset -uxo pipefail\nexport EVOLVE_SWEB_ENV=on\ncd /testbed\n"
              f"git checkout 0000 tests/test_calc.py\n: '{START_TEST_OUTPUT}'\n"
              f"test \"$EVOLVE_SWEB_ENV\" = on && {runner}\n: '{END_TEST_OUTPUT}'\n")
    row = swebench_row(0, image=instance_image, eval_script=script, log_parser=parser, patch=FIX,
                       test_patch=TEST_PATCH, FAIL_TO_PASS=json.dumps([ids[0]]), PASS_TO_PASS=json.dumps([ids[1]]))
    task = to_task(row, ImportOptions())
    assert isinstance(task, Task)
    settings = EvalSettings(model="x", test_timeout_s=120)
    with Sandbox(docker_client, instance_image, run_id="test-swebench", limits=settings.sandbox) as box:
        fixed = grade(box, task, None, FIX, test_timeout_s=120)
    assert fixed.resolved, (fixed.failure_class, fixed.test_output[-2000:])
    assert fixed.FAIL_TO_PASS == {ids[0]: "PASSED"} and fixed.PASS_TO_PASS == {ids[1]: "PASSED"}
    assert fixed.channel == (parser == "parse_log_pytest")  # evolve's own record where pytest runs
    with Sandbox(docker_client, instance_image, run_id="test-swebench", limits=settings.sandbox) as box:
        empty = grade(box, task, None, "", test_timeout_s=120)
    assert not empty.resolved and empty.FAIL_TO_PASS[ids[0]] in ("FAILED", "ERROR")


def test_a_run_with_an_empty_holdout_split_stops_before_any_generation(tmp_path, mini_evalset):
    import shutil

    import yaml

    from evolve.project import init_project

    root = tmp_path / "proj"
    init_project(root)
    es = root / "evals" / "half"
    shutil.copytree(mini_evalset, es)
    (es / "holdout.jsonl").write_text("")
    cfg = yaml.safe_load((root / "evolve.yaml").read_text())
    cfg["models"]["solver"]["model"] = cfg["models"]["optimizer"]["model"] = f"scripted/{SOLVER_SCRIPT}"
    cfg["evals"]["name"] = "half"
    (root / "evolve.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    subprocess.run(["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"],
                   check=True)
    out = evolve("run", "--generations", "1", cwd=root)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "split 'holdout' of eval set mini has no task" in " ".join(out.stderr.split())
    assert not list((root / "runs").glob("*/gen-*"))
