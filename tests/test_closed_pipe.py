"""A command whose stdout is closed early (``evolve status | head -1``, ``evolve run | head``) stops
quietly with exit 1: no traceback, no "Exception ignored" at exit, and a run stops the way Ctrl-C
stops it (state saved as interrupted, no container left, resumable).

Real pipes: the reader's end is closed before the command writes (``_closed_stdout``), or after
the first line is read, as ``head -1`` does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import build_wide_evalset, write_wide_solver
from loop_support import OPTIMIZER, make_project

SUPPORT = Path(__file__).parent / "loop_support.py"
ROOT = Path(__file__).resolve().parents[1]
NOISE = ("Traceback", "BrokenPipe", "Exception ignored", "Errno 32")


def _evolve(args: list[str], cwd: Path, stdout) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from evolve.cli import main; main()", *args], cwd=cwd,
                          stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"})


def _closed_stdout(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``args`` run with stdout a pipe whose reading end is already closed: every write fails (EPIPE)."""
    read, write = os.pipe()
    os.close(read)
    try:
        return _evolve(args, cwd, write)
    finally:
        os.close(write)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> tuple[Path, str]:
    """A repo with one finished run of the real loop (scripted optimizer, no Docker)."""
    repo = make_project(tmp_path_factory.mktemp("pipe"), generations=1)
    proc = subprocess.run([sys.executable, str(SUPPORT), str(repo)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    return repo, proc.stdout.split()[0]


@pytest.mark.parametrize("args", [["--version"], ["status"], ["status", "--json"], ["diff", "RUN"]],
                         ids=["version", "status", "status-json", "diff"])
def test_a_short_command_with_a_closed_stdout_exits_1_quietly(finished_run, args, tmp_path):
    repo, run = finished_run
    args = [run if a == "RUN" else a for a in args]
    with open(tmp_path / "out.txt", "w") as out:
        normal = _evolve(args, repo, out)
    assert normal.returncode == 0, normal.stderr
    assert (tmp_path / "out.txt").stat().st_size > 0  # the command does write to stdout

    closed = _closed_stdout(args, repo)
    assert closed.returncode == 1, closed.stderr
    assert not any(n in closed.stderr for n in NOISE), closed.stderr


def test_large_output_into_head_stops_early(finished_run):
    """A real reader that takes one line and goes away while the command is still writing."""
    repo, run = finished_run
    proc = subprocess.Popen([sys.executable, "-c", "from evolve.cli import main; main()", "status", "--json"],
                            cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"})
    first = proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.wait(timeout=120)
    assert first.strip()
    assert proc.returncode in (0, 1), err  # 0 when all of it fitted in the pipe before the reader left
    assert not any(n in err for n in NOISE), err


@pytest.mark.docker
def test_run_stops_like_ctrl_c_when_its_output_closes(tmp_path, base_image, docker_client):
    """`evolve run | sed '/started: /q'`: the run stops at once, mid-evaluation, saved as interrupted,
    nothing left running."""
    evals = build_wide_evalset(tmp_path / "evals" / "wide")
    solver = write_wide_solver(tmp_path / "solver.yaml")
    repo = tmp_path / "proj"
    assert _evolve(["init", str(repo)], tmp_path, subprocess.DEVNULL).returncode == 0
    cfg = yaml.safe_load((repo / "evolve.yaml").read_text())
    cfg["models"]["solver"]["model"] = f"scripted/{solver}"
    cfg["models"]["optimizer"]["model"] = f"scripted/{OPTIMIZER}"
    cfg["evals"].update(name=str(evals), workers=2, harness_timeout_s=120, test_timeout_s=120)
    cfg["budget"]["generations"] = 1
    (repo / "evolve.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    subprocess.run(["git", "add", "evolve.yaml"], cwd=repo, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "configure"], cwd=repo,
                   check=True)

    proc = subprocess.Popen([sys.executable, "-c", "from evolve.cli import main; main()", "run", "--log-every", "1"],
                            cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"})
    seen = []
    for line in proc.stdout:  # like `sed '/started: /q'`: read until the baseline's task-runs are going
        seen.append(line)
        if " started: " in line and "evaluation" in line:
            break
    proc.stdout.close()  # the next line (a heartbeat within a second) finds the pipe closed
    err = proc.stderr.read()
    proc.wait(timeout=600)
    assert any(" started: " in line for line in seen), "".join(seen) + err
    assert proc.returncode == 1, err
    assert not any(n in err for n in NOISE), err
    assert "output pipe was closed" in err and "evolve run --resume run-" in err, err

    (state_file,) = (repo / "runs").glob("run-*/state.json")
    state = json.loads(state_file.read_text())
    assert state["status"] == "interrupted" and state["generations"] == 0, state
    assert not docker_client.api.containers(all=True, filters={"label": f"evolve.pid={proc.pid}"})
    tmp = Path(os.environ.get("TMPDIR", "/tmp"))
    assert not [p for p in tmp.glob("evolve-*") if f"-{proc.pid}-" in p.name]  # its scratch directory is gone
