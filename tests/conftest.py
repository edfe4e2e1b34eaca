"""Shared fixtures: a real Docker engine, the base image, a tiny eval set, and stand-in model
providers (``provider_factory``, ``stub_script``; the helpers themselves are in tests/support.py).

The eval set is built from ``tests/fixtures/mini/repo`` into a real git repo:
three tasks with real bugs, real tests, a reference ``patch`` and a
``test_patch`` that adds the FAIL_TO_PASS tests. Docker tests are skipped only
when no engine exists; under CI (``CI=true``) a missing engine is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
REPO_ROOT = Path(__file__).parent.parent

# A task: (instance_id, split, problem_statement, {file: fixed content edit}, {test file: content}, F2P, P2P)
TEST_ADD = '''from calc import add


def test_add():
    assert add(2, 3) == 5


def test_add_negative():
    assert add(-2, -3) == -5
'''
TEST_CLAMP_HIGH = '''

def test_clamp_high():
    assert clamp(12, 0, 10) == 10
    assert clamp(10, 0, 10) == 10
'''
TEST_MEAN = '''from calc import mean


def test_mean():
    assert mean([1, 2, 3]) == 2
'''
TASKS = [
    dict(instance_id="mini__calc-1", split="search",
         problem_statement="calc.add returns the wrong result: add(2, 3) gives -1 instead of 5.",
         fix=("    return a - b\n\n\ndef sub", "    return a + b\n\n\ndef sub"),
         tests={"tests/test_add.py": TEST_ADD},
         FAIL_TO_PASS=["tests/test_add.py::test_add", "tests/test_add.py::test_add_negative"],
         PASS_TO_PASS=["tests/test_calc.py::test_sub"]),
    dict(instance_id="mini__calc-2", split="search",
         problem_statement="calc.clamp is wrong at the upper bound: clamp(12, 0, 10) returns 9, "
                           "it should return 10.",
         fix=("    if x >= hi:\n        return hi - 1", "    if x > hi:\n        return hi"),
         tests={"tests/test_calc.py": "APPEND" + TEST_CLAMP_HIGH},
         FAIL_TO_PASS=["tests/test_calc.py::test_clamp_high"],
         PASS_TO_PASS=["tests/test_calc.py::test_sub", "tests/test_calc.py::test_clamp_low",
                       "tests/test_calc.py::test_clamp_inside"]),
    dict(instance_id="mini__calc-3", split="holdout",
         problem_statement="calc.mean([1, 2, 3]) returns 3.0; the mean is 2.",
         fix=("(len(values) - 1)", "len(values)"),
         tests={"tests/test_mean.py": TEST_MEAN},
         FAIL_TO_PASS=["tests/test_mean.py::test_mean"], PASS_TO_PASS=["tests/test_calc.py::test_sub"]),
]


def build_mini_evalset(root: Path) -> Path:
    """Write the mini eval set to ``root`` (created) and return it."""
    import git

    repo_dir = root / "repos" / "mini"
    shutil.copytree(FIXTURES / "mini" / "repo", repo_dir)
    repo = git.Repo.init(repo_dir, initial_branch="main")
    with repo.config_writer() as cw:
        cw.set_value("user", "name", "fixture").set_value("user", "email", "fixture@localhost")
    repo.git.add(A=True)
    repo.index.commit("calc with bugs")
    base = repo.head.commit.hexsha
    splits: dict[str, list[dict]] = {"search": [], "holdout": []}
    for spec in TASKS:
        calc = repo_dir / "calc.py"
        original = calc.read_text()
        old, new = spec["fix"]
        assert old in original, spec["instance_id"]
        calc.write_text(original.replace(old, new, 1))
        patch = repo.git.diff() + "\n"
        repo.git.checkout("--", ".")
        for name, content in spec["tests"].items():
            path = repo_dir / name
            if content.startswith("APPEND"):
                path.write_text(path.read_text() + content[len("APPEND"):])
            else:
                path.write_text(content)
        repo.git.add(A=True)
        test_patch = repo.git.diff("--cached") + "\n"
        repo.git.reset("--hard", base)
        splits[spec["split"]].append({
            "instance_id": spec["instance_id"], "repo": "fixture/mini", "base_commit": base,
            "problem_statement": spec["problem_statement"], "patch": patch, "test_patch": test_patch,
            "FAIL_TO_PASS": spec["FAIL_TO_PASS"], "PASS_TO_PASS": spec["PASS_TO_PASS"],
            "repo_path": "repos/mini"})
    for split, rows in splits.items():
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "evalset.yaml").write_text("name: mini\ndescription: three real bugs in a tiny calculator\n")
    return root


@pytest.fixture(scope="session")
def mini_evalset(tmp_path_factory) -> Path:
    """Path of the mini eval set directory (search: calc-1, calc-2; holdout: calc-3)."""
    return build_mini_evalset(tmp_path_factory.mktemp("evals") / "mini")


@pytest.fixture(scope="session")
def docker_client():
    """A live docker client; skips without an engine (fails under CI)."""
    from evolve.errors import SandboxError
    from evolve.sandbox.docker import docker_client as connect

    try:
        return connect()
    except SandboxError as e:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs a Docker engine: {e}")
        pytest.skip(f"no Docker engine: {e}")


@pytest.fixture(scope="session")
def base_image(docker_client) -> str:
    """The sandbox base image, built offline if missing (about a minute, once)."""
    from evolve.sandbox.image import ensure_image

    return ensure_image(docker_client)


SOLVER_SCRIPT = FIXTURES / "mini" / "solver.yaml"


@pytest.fixture
def provider_factory():
    """``make(*answers, delay_s=0.0, api_key=...)`` starts a ``support.FakeProvider``; all are closed
    after the test."""
    from support import FakeProvider

    made: list[FakeProvider] = []

    def make(*answers: tuple[int, dict], **kw) -> FakeProvider:
        p = FakeProvider(*answers, **kw)
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


@pytest.fixture(scope="session")
def stub_script(tmp_path_factory) -> Path:
    """``support.STUB_SERVER`` written to a file, to run with ``support.stub_cfg``."""
    from support import STUB_SERVER

    path = tmp_path_factory.mktemp("stub") / "stub_server.py"
    path.write_text(STUB_SERVER)
    return path


# -- a wider eval set for the loop: one bug per function, each fixed only by a "careful" harness -------

WIDE_MARKER = "REPRODUCE FIRST"
"""The scripted solver fixes a wide task only when the harness's prompt says this."""


def build_wide_evalset(root: Path, n_search: int = 6, n_holdout: int = 2) -> Path:
    """An eval set of ``n_search + n_holdout`` one-line bugs in ``funcs.py`` (function fK returns x + K + 1)."""
    import git

    n = n_search + n_holdout
    repo_dir = root / "repos" / "wide"
    (repo_dir / "tests").mkdir(parents=True)
    (repo_dir / "funcs.py").write_text("".join(f"def f{k}(x):\n    return x + {k} + 1\n\n\n" for k in range(1, n + 1)))
    (repo_dir / "tests" / "test_smoke.py").write_text("import funcs\n\n\ndef test_import():\n    assert funcs\n")
    (repo_dir / "pytest.ini").write_text("[pytest]\npythonpath = .\n")
    repo = git.Repo.init(repo_dir, initial_branch="main")
    with repo.config_writer() as cw:
        cw.set_value("user", "name", "fixture").set_value("user", "email", "fixture@localhost")
    repo.git.add(A=True)
    repo.index.commit("funcs with bugs")
    base = repo.head.commit.hexsha
    rows = []
    for k in range(1, n + 1):
        src = repo_dir / "funcs.py"
        original = src.read_text()
        src.write_text(original.replace(f"return x + {k} + 1\n", f"return x + {k}\n"))
        patch = repo.git.diff() + "\n"
        repo.git.checkout("--", ".")
        (repo_dir / "tests" / f"test_f{k}.py").write_text(
            f"from funcs import f{k}\n\n\ndef test_f{k}():\n    assert f{k}(1) == {1 + k}\n")
        repo.git.add(A=True)
        test_patch = repo.git.diff("--cached") + "\n"
        repo.git.reset("--hard", base)
        rows.append({"instance_id": f"wide__f-{k}", "repo": "fixture/wide", "base_commit": base,
                     "problem_statement": f"`f{k}(1)` returns {2 + k}, but it should return {1 + k}.",
                     "patch": patch, "test_patch": test_patch, "FAIL_TO_PASS": [f"tests/test_f{k}.py::test_f{k}"],
                     "PASS_TO_PASS": ["tests/test_smoke.py::test_import"], "repo_path": "repos/wide"})
    (root / "search.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:n_search]))
    (root / "holdout.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[n_search:]))
    (root / "evalset.yaml").write_text("name: wide\ndescription: one-line bugs, fixed only by a careful harness\n")
    return root


def write_wide_solver(path: Path, n: int = 8) -> Path:
    """Scripted solver: fixes fK only when the harness's prompt contains WIDE_MARKER."""
    import yaml

    rules = []
    for k in range(1, n + 1):
        rules.append({"when": {"contains": [f"`f{k}(1)` returns", WIDE_MARKER]}, "replies": [
            f"THOUGHT: off by one in f{k}.\n\n```bash\nsed -i 's/return x + {k} + 1$/return x + {k}/' funcs.py\n```",
            "```bash\necho COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT\n```"]})
    script = {"rules": rules, "default": ["THOUGHT: nothing to do.\n\n```bash\necho COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT\n```"]}
    path.write_text(yaml.safe_dump(script, sort_keys=False))
    return path


def pytest_sessionfinish(session, exitstatus) -> None:
    """What test processes killed on purpose (kill -9, os._exit) left in the temp directory is
    swept, as the next evolve command would: a test run leaves no evolve-* directory behind."""
    from evolve import owner

    owner.sweep_temp_dirs()
