"""The mini-swe-agent template end to end: the real mini-swe-agent from PyPI in its own harness
environment, a scripted model behind evolve's OpenAI-compatible endpoint, real Docker and git.

1. ``evolve eval``: the scripted solver drives mini to fix a task; mini writes its own trajectory.
2. ``evolve run``: a scripted optimizer edits mini's config.yaml; the loop evaluates the candidate
   and accepts it because the solver fixes the wide tasks only when the prompt says REPRODUCE FIRST.

The harness environment is built once in $EVOLVE_HOME (scripts/setup.sh builds it ahead).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import FIXTURES, SOLVER_SCRIPT, WIDE_MARKER, build_wide_evalset, write_wide_solver
from evolve.harness import template_dir

pytestmark = pytest.mark.docker
EVOLVE = str(Path(sys.executable).parent / "evolve")
OPTIMIZER = FIXTURES / "mini_swe_agent" / "optimizer.yaml"


def evolve(*args: str, cwd: Path, timeout: float = 1200) -> subprocess.CompletedProcess:
    proc = subprocess.run([EVOLVE, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, f"evolve {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


def test_scripted_model_drives_mini_swe_agent_to_resolve_a_task(mini_evalset, base_image, tmp_path):
    runs = tmp_path / "runs"
    evolve("eval", "--harness", str(template_dir("mini-swe-agent")), "--evals", str(mini_evalset),
           "--split", "search", "-i", "mini__calc-1", "--model", f"scripted/{SOLVER_SCRIPT}",
           "--runs-dir", str(runs), cwd=tmp_path)
    run_dir = next(p for p in runs.iterdir() if p.name.startswith("eval-"))
    (result,) = map(json.loads, (run_dir / "results.jsonl").read_text().splitlines())
    task_dir = run_dir / "tasks" / "mini__calc-1" / "r0"
    assert result["resolved"] is True, (task_dir / "harness.log").read_text()
    assert "+    return a + b" in result["model_patch"]

    # mini's own trajectory format, written by mini's DefaultAgent.save.
    traj = json.loads((task_dir / "trajectory.json").read_text())
    assert traj["trajectory_format"] == "mini-swe-agent-1.1"
    assert traj["info"]["exit_status"] == "Submitted" and traj["info"]["mini_version"] == "2.4.6"
    assert traj["info"]["config"]["model"]["model_name"] == "openai/scripted"
    roles = [m["role"] for m in traj["messages"]]
    assert roles[:2] == ["system", "user"] and roles[-1] == "exit" and roles.count("assistant") == 3
    assert "add(2, 3) gives -1" in traj["messages"][1]["content"]
    # The model's command ran in the repository and its output came back (the fix's check printed 5).
    assert "<returncode>0</returncode>" in traj["messages"][5]["content"] and "5" in traj["messages"][5]["content"]

    # Every model call went through evolve's gateway and is traced.
    trace = [json.loads(line) for line in (task_dir / "trace.jsonl").read_text().splitlines()]
    assert len(trace) == 3 and result["usage"]["calls"] == 3


@pytest.fixture
def project(tmp_path, base_image) -> Path:
    """`evolve init --template mini-swe-agent`, configured for a small wide eval set and scripted models."""
    evals = build_wide_evalset(tmp_path / "evals" / "wide", n_search=3, n_holdout=1)
    solver = write_wide_solver(tmp_path / "solver.yaml", n=4)
    repo = tmp_path / "proj"
    evolve("init", str(repo), "--template", "mini-swe-agent", cwd=tmp_path)
    cfg = yaml.safe_load((repo / "evolve.yaml").read_text())
    cfg["models"]["solver"]["model"] = f"scripted/{solver}"
    cfg["models"]["optimizer"]["model"] = f"scripted/{OPTIMIZER}"
    cfg["evals"].update(name=str(evals), workers=2, harness_timeout_s=300, test_timeout_s=120)
    # Three tasks, all fixed by the child and none by the parent: p = 1/8 under a sign test.
    cfg["acceptance"].update(confidence=0.8, rerun_discordant=0)
    cfg["budget"]["generations"] = 1
    (repo / "evolve.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    git(repo, "add", "evolve.yaml")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "configure evolve")
    return repo


def test_loop_evolves_mini_swe_agents_config(project):
    assert "harness/requirements.txt" in git(project, "ls-files").splitlines()
    assert WIDE_MARKER not in (project / "harness" / "config.yaml").read_text()
    evolve("run", cwd=project)
    status = json.loads(evolve("status", "--json", cwd=project).stdout)
    (gen,) = status["generations"]
    assert gen["status"] == "accepted", gen
    assert sorted(gen["fixed"]) == ["wide__f-1", "wide__f-2", "wide__f-3"]
    run = status["state"]["run_id"]
    best = git(project, "rev-parse", f"evolve/{run}/best")
    config = yaml.safe_load(git(project, "show", f"{best}:harness/config.yaml"))
    assert WIDE_MARKER in config["agent"]["system_template"]
    assert config["agent"]["step_limit"] == 30  # the optimizer's other edit: a step limit
    assert git(project, "diff", "--name-only", status["state"]["base"], best, "--", "harness") == \
        "harness/config.yaml"
