"""The command line without Docker: options validated like evolve.yaml before anything starts, and
commands that find their project from any subdirectory (real files, real git, the real `evolve`)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import git
import pytest
import yaml

from conftest import SOLVER_SCRIPT
from evolve.errors import ConfigError
from evolve.project import find_project, init_project
from evolve.runstate import GenerationRecord, RunState, RunStore

EVOLVE = str(Path(sys.executable).parent / "evolve")
SCRIPTED = f"scripted/{SOLVER_SCRIPT}"
IDENTITY = ["-c", "user.name=t", "-c", "user.email=t@t"]


def evolve(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([EVOLVE, *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "200"})


def sh(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def project(tmp_path) -> Path:
    """A repo made by `evolve init`, with scripted models (no server, no key needed)."""
    root = tmp_path / "proj"
    init_project(root)
    cfg = yaml.safe_load((root / "evolve.yaml").read_text())
    cfg["models"]["solver"]["model"] = SCRIPTED
    cfg["models"]["optimizer"]["model"] = SCRIPTED
    (root / "evolve.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    sh(root, *IDENTITY, "commit", "-qam", "scripted models")
    return root


def nothing_started(root: Path) -> bool:
    return not (root / "runs").exists() and not sh(root, "for-each-ref", "refs/heads/evolve/")


@pytest.mark.parametrize("args, named", [
    (["--generations", "-1"], "--generations -1"),
    (["--generations", "0"], "--generations 0"),
    (["--budget-usd", "-5"], "--budget-usd -5"),
    (["--max-hours", "-1"], "--max-hours -1"),
    (["--max-hours", "0"], "--max-hours 0"),
    (["--workers", "0"], "--workers 0"),
    (["--dry-run", "--tokens-per-task", "-1"], "--tokens-per-task -1"),
])
def test_run_rejects_bad_overrides_before_anything_starts(project, args, named):
    proc = evolve("run", *args, cwd=project / "harness")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert named in proc.stderr and "Traceback" not in proc.stderr
    assert nothing_started(project)


@pytest.mark.parametrize("args, named", [
    (["--workers", "0"], "--workers 0"),
    (["--repeats", "0"], "--repeats 0"),
    (["--timeout", "-1"], "--timeout -1"),
    (["--max-calls", "0"], "--max-calls 0"),
    (["--cpus", "0"], "--cpus 0"),
])
def test_eval_rejects_bad_options_before_anything_starts(tmp_path, args, named):
    proc = evolve("eval", "--evals", "no-such-set", "--model", SCRIPTED, "--runs-dir", str(tmp_path / "runs"),
                  *args, cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert named in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_run_with_an_unknown_solver_model_fails_before_a_run_exists(project):
    cfg = yaml.safe_load((project / "evolve.yaml").read_text())
    cfg["models"]["solver"]["model"] = "scripted/no/such/script.yaml"
    (project / "evolve.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    proc = evolve("run", cwd=project)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "no/such/script.yaml" in proc.stderr
    assert nothing_started(project)


def test_dry_run_from_a_subdirectory_reads_the_projects_eval_set(project, mini_evalset):
    shutil.copytree(mini_evalset, project / "evals" / "mini")
    cfg = yaml.safe_load((project / "evolve.yaml").read_text())
    cfg["evals"]["name"] = "mini"  # found in the project's evals/, wherever the command runs
    (project / "evolve.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    proc = evolve("run", "--dry-run", "--generations", "3", cwd=project / "harness" / "prompts")
    assert proc.returncode == 0, proc.stderr
    assert "mini: 2 search tasks, 1 holdout tasks; 3 generations" in proc.stdout
    assert nothing_started(project)


def test_the_cli_and_each_command_module_import_no_litellm_ray_or_docker():
    """`evolve --help` stays fast: every module of evolve/cli imports its heavy libraries inside its commands."""
    code = ("import importlib, pkgutil, sys, evolve.cli\n"
            "names = [m.name for m in pkgutil.iter_modules(evolve.cli.__path__)]\n"
            "assert {'common', 'eval', 'evals', 'run'} <= set(names), names\n"
            "for name in names:\n"
            "    importlib.import_module(f'evolve.cli.{name}')\n"
            "heavy = sorted({'litellm', 'ray', 'docker'} & {m.split('.')[0] for m in sys.modules})\n"
            "assert not heavy, f'imported at import time: {heavy}'\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_find_project_walks_up_but_not_past_the_git_root(tmp_path, project):
    assert find_project(project / "harness" / "prompts").root == project
    inner = tmp_path / "outer-has-yaml"
    (inner / "repo" / "sub").mkdir(parents=True)
    (inner / "evolve.yaml").write_text("")
    git.Repo.init(inner / "repo")
    with pytest.raises(ConfigError, match="git root"):
        find_project(inner / "repo" / "sub")


def make_run(root: Path) -> tuple[str, str, str]:
    """A finished run made by hand: generation 1 accepted. Returns (run id, base sha, best sha)."""
    base = sh(root, "rev-parse", "HEAD")
    (root / "harness" / "prompts" / "system.txt").write_text("a better prompt\n")
    sh(root, "add", "-A")
    sh(root, *IDENTITY, "commit", "-qm", "generation 1")
    best = sh(root, "rev-parse", "HEAD")
    sh(root, "reset", "-q", "--hard", base)
    run = "run-test"
    sh(root, "update-ref", f"refs/heads/evolve/{run}/base", base)
    sh(root, "update-ref", f"refs/heads/evolve/{run}/best", best)
    store = RunStore(root / "runs", run)
    store.save(RunState(run_id=run, repo=str(root), harness_dir="harness", evalset="mini", base=base, best=best,
                        status="stopped", generations=1, baseline_rate=0.0, best_rate=1.0))
    store.save_gen(GenerationRecord(gen=1, parent=base, status="accepted", candidate=best, verdict_commit=best,
                                    hypothesis="PLAN-A", child_rate=1.0))
    return run, base, best


def test_status_and_rollback_from_a_subdirectory_use_the_project_found(project):
    run, base, best = make_run(project)
    sub = project / "harness" / "prompts"
    status = evolve("status", "--json", cwd=sub)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["state"]["run_id"] == run
    assert "PLAN-A" in evolve("diff", cwd=sub).stdout
    proc = evolve("rollback", "--to", "0", cwd=sub)
    assert proc.returncode == 0, proc.stderr
    assert sh(project, "rev-parse", f"evolve/{run}/best") == base
    assert (project / "runs" / "evolve.lock").exists()
    assert not list((project / "harness").rglob("evolve.lock")) and not (project / "harness" / "runs").exists()


def test_a_copied_project_never_moves_the_original_repos_refs(project, tmp_path):
    run, base, best = make_run(project)
    copy = tmp_path / "copy"
    shutil.copytree(project, copy)
    proc = evolve("rollback", "--to", "0", cwd=copy / "harness")
    assert proc.returncode == 0, proc.stderr
    assert sh(copy, "rev-parse", f"evolve/{run}/best") == base
    assert sh(project, "rev-parse", f"evolve/{run}/best") == best  # state.repo names the original: a label only
