"""`evolve run` end to end in Docker: three generations (accept, roll back, refuse), then
diff, rollback, and a resume after the run process is killed with SIGKILL.

Only the models' words are scripted: the optimizer's replies (tests/fixtures/loop/optimizer.yaml)
and the solver's (conftest.write_wide_solver), which fix a task only when the harness's prompt
says REPRODUCE FIRST, so the harness change really matters.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import FIXTURES, WIDE_MARKER, build_wide_evalset, write_wide_solver

pytestmark = pytest.mark.docker
EVOLVE = str(Path(sys.executable).parent / "evolve")
OPTIMIZER = FIXTURES / "loop" / "optimizer.yaml"


def evolve(*args: str, cwd: Path, timeout: float = 900, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([EVOLVE, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "COLUMNS": "200"})
    if check:
        assert proc.returncode == 0, f"evolve {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def project(tmp_path, base_image) -> Path:
    """A user's repo made by `evolve init`, configured for the wide eval set and scripted models."""
    evals = build_wide_evalset(tmp_path / "evals" / "wide")
    solver = write_wide_solver(tmp_path / "solver.yaml")
    repo = tmp_path / "proj"
    evolve("init", str(repo), cwd=tmp_path)
    cfg = yaml.safe_load((repo / "evolve.yaml").read_text())
    cfg["models"]["solver"]["model"] = f"scripted/{solver}"
    cfg["models"]["optimizer"]["model"] = f"scripted/{OPTIMIZER}"
    cfg["evals"].update(name=str(evals), workers=2, harness_timeout_s=120, test_timeout_s=120)
    cfg["acceptance"]["rerun_discordant"] = 1
    cfg["budget"]["generations"] = 3
    (repo / "evolve.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    git(repo, "add", "evolve.yaml")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "configure evolve")
    # The user's own uncommitted work, which evolve must never touch.
    (repo / "notes.txt").write_text("my uncommitted notes\n")
    (repo / "harness" / "config.json").write_text((repo / "harness" / "config.json").read_text() + " ")
    return repo


def test_three_generations_then_diff_rollback(project, docker_client):
    branch, head = git(project, "branch", "--show-current"), git(project, "rev-parse", "HEAD")
    status_before = git(project, "status", "--porcelain")
    assert WIDE_MARKER not in (project / "harness/prompts/system.txt").read_text()

    proc = subprocess.Popen([EVOLVE, "run", "--log-every", "1"], cwd=project, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "200"})
    stdout, stderr = proc.communicate(timeout=900)
    run_pid = proc.pid
    assert proc.returncode == 0, stdout + stderr
    assert "held-out check" in stdout

    # stdout is not a terminal: plain timestamped lines, each step's start and end, heartbeats, no control codes
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", stdout), repr(stdout[:2000])
    log = [line for line in stdout.splitlines() if re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ run-\S+ ", line)]
    for step in ("baseline", "analyze", "plan", "patch", "check", "evaluate", "decide", "holdout"):
        assert any(f": {step} started" in line for line in log), step
        assert any(f": {step} done in" in line for line in log), step
    assert any(": evaluate still running after" in line and "g001-" in line for line in log), "\n".join(log)
    assert any("evaluation g001-child-r0 started" in line for line in log)
    assert any("generation 1: accepted (+100.0 pts)" in line for line in log)

    # The user's branch, HEAD and uncommitted work are untouched.
    assert git(project, "branch", "--show-current") == branch
    assert git(project, "rev-parse", "HEAD") == head
    assert git(project, "status", "--porcelain") == status_before
    assert WIDE_MARKER not in (project / "harness/prompts/system.txt").read_text()

    status = json.loads(evolve("status", "--json", cwd=project).stdout)
    state, gens = status["state"], status["generations"]
    run = state["run_id"]
    # the HTML report was refreshed by the run (after each generation and at its end)
    report = json.loads((project / "runs" / run / "report" / "report.json").read_text())
    assert [g["status"] for g in report["generations"]] == ["accepted", "rejected", "refused"]
    assert report["run"]["holdout"]["best"] == 1.0 and report["heatmap"]["columns"] == ["base", "g001 accepted"]
    assert any((project / "runs" / run / "report" / "tasks" / "g001").glob("*.html"))
    assert [g["status"] for g in gens] == ["accepted", "rejected", "refused"]
    g1, g2, g3 = gens
    assert g1["hypothesis"].startswith("PLAN-A") and g1["delta"] == pytest.approx(1.0)
    assert sorted(g1["fixed"]) == [f"wide__f-{k}" for k in range(1, 7)]
    assert g2["delta"] < 0 and g2["broken"]
    assert g3["reason"].startswith("edits refused") and "evolve.yaml" in g3["reason"] and g3["candidate"] is None
    assert g1["tampering"] == g2["tampering"] == [] and g1["flagged_tasks"] is not None
    assert g3["flagged_tasks"] is None                      # never evaluated
    assert state["baseline_rate"] == 0.0 and state["best_rate"] == 1.0
    assert state["holdout"]["baseline"] == 0.0 and state["holdout"]["best"] == 1.0

    # Git: best is generation 1's verdict commit, which carries the hypothesis and scores as trailers.
    best = git(project, "rev-parse", f"evolve/{run}/best")
    assert best == g1["verdict_commit"]
    trailers = git(project, "log", "-1", "--format=%(trailers)", best)
    assert "Evolve-Verdict: accepted" in trailers and "Evolve-Hypothesis: PLAN-A" in trailers
    assert "Evolve-Child-Score: 1.0000" in trailers and "Evolve-Parent-Score: 0.0000" in trailers
    assert git(project, "rev-parse", f"evolve/{run}/g002")  # rejected branch kept for inspection
    assert WIDE_MARKER in git(project, "show", f"{best}:harness/prompts/system.txt")

    # Lessons: one append-only entry per generation. The optimizer trace has every call.
    lessons = [json.loads(line) for line in (project / "runs" / run / "lessons.jsonl").read_text().splitlines()]
    assert [entry["outcome"] for entry in lessons] == ["accepted", "rejected", "refused"]
    trace = (project / "runs" / run / "optimizer_trace.jsonl").read_text().splitlines()
    assert len(trace) >= 6 and all(json.loads(line)["usage"]["prompt_tokens"] > 0 for line in trace)

    # diff: accepted changes, one generation, a stat, and a plain patch git can apply.
    shown = evolve("diff", cwd=project).stdout
    assert "PLAN-A" in shown and WIDE_MARKER in shown
    assert "PLAN-B" in evolve("diff", "--gen", "2", cwd=project).stdout
    assert "system.txt" in evolve("diff", "--stat", cwd=project).stdout
    plain = evolve("diff", "--plain", cwd=project).stdout
    assert plain.startswith("diff --git") and "\x1b[" not in plain
    check = subprocess.run(["git", "apply", "--check", "-"], cwd=project, input=plain, text=True,
                           capture_output=True)
    assert check.returncode == 0, check.stderr

    # rollback to the base, then undo it; the history and events are kept.
    evolve("rollback", "--to", "0", cwd=project)
    assert git(project, "rev-parse", f"evolve/{run}/best") == state["base"]
    evolve("rollback", "--undo", cwd=project)
    assert git(project, "rev-parse", f"evolve/{run}/best") == best
    events = [json.loads(line)["event"] for line in (project / "runs" / run / "events.jsonl").read_text().splitlines()]
    assert events.count("rollback") == 2
    bad = evolve("rollback", "--to", "2", cwd=project, check=False)
    assert bad.returncode == 1 and "not accepted" in bad.stderr and "Traceback" not in bad.stderr
    assert not docker_client.api.containers(all=True, filters={"label": f"evolve.pid={run_pid}"})


def test_resume_after_kill_9(project, docker_client):
    proc = subprocess.Popen([EVOLVE, "run", "--generations", "1"], cwd=project, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    runs = project / "runs"
    deadline = time.time() + 600
    record = None
    while time.time() < deadline:  # kill it in the middle of generation 1's evaluation
        found = list(runs.glob("run-*/generations/g001.json"))
        if found:
            record = json.loads(found[0].read_text())
            if record["step"] == "evaluate":
                time.sleep(3)
                break
        time.sleep(0.3)
    assert record and record["step"] == "evaluate", "generation 1 never reached its evaluation"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    run = found[0].parent.parent.name
    dead = str(proc.pid)

    resumed = evolve("run", "--resume", run, "--generations", "1", cwd=project)
    assert "Traceback" not in resumed.stderr
    status = json.loads(evolve("status", run, "--json", cwd=project).stdout)
    assert [g["status"] for g in status["generations"]] == ["accepted"]
    assert status["state"]["status"] == "stopped"
    assert git(project, "rev-parse", f"evolve/{run}/best") == status["generations"][0]["verdict_commit"]
    events = [json.loads(line) for line in (runs / run / "events.jsonl").read_text().splitlines()]
    assert any(e["event"] == "resume" for e in events)
    leftovers = docker_client.api.containers(all=True, filters={"label": f"evolve.pid={dead}"})
    assert not leftovers
    assert not (runs / run / "worktrees" / "g001").exists()
    # A second run while none is active takes the lock fine; the lock is free after kill -9.
    assert "another `evolve run`" not in resumed.stderr
