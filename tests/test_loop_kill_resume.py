"""Kill -9 at every step boundary and inside the accept window, resume, and get exactly what an
uninterrupted run gets: the same records, lessons and git refs, no generation lost or doubled.

Real processes: ``tests/loop_support.py`` runs the real loop (scripted optimizer, MarkerEvaluator,
no Docker); ``EVOLVE_TEST_KILL_AT=<point>[@gen]`` (test-only, evolve.recorder.kill_point) makes it
SIGKILL itself at that instant.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from loop_support import make_project

SUPPORT = Path(__file__).parent / "loop_support.py"
VOLATILE = {"started", "finished", "seconds", "cost_usd", "parent", "candidate", "verdict_commit", "best_before",
            "commit", "at", "branch"}
SHA_TRAILERS = {"Evolve-Parent", "Evolve-Run"}


def run_loop(repo: Path, run_id: str | None = None, kill_at: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "EVOLVE_TEST_KILL_AT"}
    if kill_at:
        env["EVOLVE_TEST_KILL_AT"] = kill_at
    return subprocess.run([sys.executable, str(SUPPORT), str(repo), *([run_id] if run_id else [])],
                          capture_output=True, text=True, timeout=300, env=env)


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()


def outcome(repo: Path, run: str) -> dict:
    """What must not depend on kills: records, lessons, refs (by content), state."""
    run_dir = repo / "runs" / run
    gens = [json.loads(p.read_text()) for p in sorted((run_dir / "generations").glob("g*.json"))]
    lessons = [json.loads(line) for line in (run_dir / "lessons.jsonl").read_text().splitlines()]
    nodes = [json.loads(line) for line in (run_dir / "archive.jsonl").read_text().splitlines()]
    state = json.loads((run_dir / "state.json").read_text())
    refs = git(repo, "for-each-ref", "--format=%(refname)", f"refs/heads/evolve/{run}/").splitlines()
    best = f"evolve/{run}/best"
    verdicts = {}
    for ref in refs:
        if "/g0" in ref:
            trailers = git(repo, "log", "-1", "--format=%(trailers:only,unfold)", ref).splitlines()
            verdicts[ref.rsplit("/", 1)[1]] = [t for t in trailers if t.split(":")[0] not in SHA_TRAILERS]
    return {
        "gens": [{k: v for k, v in g.items() if k not in VOLATILE} for g in gens],
        "lessons": lessons,
        "archive": [{k: v for k, v in n.items() if k not in VOLATILE} for n in nodes],
        "refs": sorted(ref.rsplit("/", 1)[1] for ref in refs),
        "verdicts": verdicts,
        "best_harness_tree": git(repo, "rev-parse", f"{best}:harness"),
        "best_is_g1_verdict": git(repo, "rev-parse", best) == gens[0]["verdict_commit"],
        "best_commits_since_base": git(repo, "rev-list", "--count", f"evolve/{run}/base..{best}"),
        "state": {k: state[k] for k in ("status", "stop_reason", "generations", "finished", "baseline_rate",
                                         "best_rate")} | {"holdout": {k: state["holdout"][k]
                                                                      for k in ("baseline", "best", "n")}},
    }


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    repo = make_project(tmp_path_factory.mktemp("reference"))
    proc = run_loop(repo)
    assert proc.returncode == 0, proc.stderr
    return outcome(repo, proc.stdout.split()[0])


POINTS = ["start@1", "analyze@1", "plan@1", "patch@1", "check@1", "evaluate@1", "decide@1",
          "verdict-committed@1", "best-moved@1", "record-final@1", "archive-written@1", "lesson-written@1",
          "event-written@1", "state-saved@1", "verdict-committed@2", "record-final@2", "archive-written@2",
          "lesson-written@2", "patch@3", "holdout"]
"""Step boundaries of generation 1 (accepted), its whole accept window, generation 2's (rejected)
verdict window, generation 3 (refused), and the held-out check."""


def kill_and_resume(root: Path, point: str) -> str | None:
    """Run, kill -9 at ``point``, resume; None when the outcome matches the reference, else why not."""
    repo = make_project(root)
    killed = run_loop(repo, kill_at=point)
    if killed.returncode != -signal.SIGKILL:
        return f"{point}: not killed (exit {killed.returncode}): {killed.stderr[-2000:]}"
    run = killed.stdout.split()[0]
    from evolve.runstate import RunStore

    saved = json.loads((repo / "runs" / run / "state.json").read_text())["status"]
    if saved == "running" and RunStore(repo / "runs", run).load().status != "interrupted":
        return f"{point}: a killed run does not read as interrupted"
    resumed = run_loop(repo, run)
    if resumed.returncode != 0:
        return f"{point}: resume failed: {resumed.stderr[-2000:]}"
    got = outcome(repo, run)
    if got != REFERENCE[0]:
        diff = {k: (got[k], REFERENCE[0][k]) for k in got if got[k] != REFERENCE[0][k]}
        return f"{point}: differs from the uninterrupted run: {diff}"
    if git(repo, "show", f"evolve/{run}/best:harness/prompts/system.txt").count("REPRODUCE FIRST") != 1:
        return f"{point}: the accepted change is not on the head exactly once"
    return None


REFERENCE: list[dict] = []


def test_kill_9_anywhere_then_resume_matches_an_uninterrupted_run(tmp_path, reference):
    from concurrent.futures import ThreadPoolExecutor

    REFERENCE[:] = [reference]
    with ThreadPoolExecutor(max_workers=min(6, (os.cpu_count() or 2) + 2)) as pool:
        problems = [p for p in pool.map(lambda pt: kill_and_resume(tmp_path / pt.replace("@", "-"), pt), POINTS) if p]
    assert not problems, "\n".join(problems)
