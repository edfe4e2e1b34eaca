"""The approval gate (``acceptance.approval: manual``) on the real loop without Docker (scripted
optimizer words, git, run files; ``MarkerEvaluator`` behind the evaluator seam), and the
``evolve approve`` / ``evolve reject`` / ``evolve status`` commands run as the user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from loop_support import MarkerEvaluator, make_loop, make_project

from evolve.lessons import load as load_lessons
from evolve.lineage import Lineage
from evolve.report_html.render import report_run

SRC = str(Path(__file__).parent.parent)


def evolve(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from evolve.cli import main; main()", *args], cwd=repo,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": SRC, "COLUMNS": "200"})


def manual_project(root: Path, explore: str = "best") -> Path:
    repo = make_project(root)
    cfg = yaml.safe_load((repo / "evolve.yaml").read_text())
    cfg["acceptance"].update(approval="manual", approval_explore=explore)
    (repo / "evolve.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "manual approval"],
                   cwd=repo, check=True)
    return repo


def run(repo: Path, generations: int, run_id: str | None = None):
    loop, close = make_loop(repo, run_id)
    try:
        state = loop.run(generations=generations)
    finally:
        close()
    return loop, state


def best_of(repo: Path, run_id: str) -> str:
    return Lineage(repo, run_id, repo / "runs" / run_id / "worktrees").sha(f"refs/heads/evolve/{run_id}/best")


def test_a_passing_candidate_waits_then_a_person_approves_it(tmp_path):
    repo = manual_project(tmp_path)
    loop, state = run(repo, 1)
    (g1,) = loop.store.gens()
    assert g1.status == "pending" and g1.delta == pytest.approx(1.0) and g1.verdict_commit
    assert state.best == state.base == best_of(repo, loop.run_id) and state.best_rate == 0.0
    assert loop.lineage.trailers(g1.verdict_commit)["Evolve-Verdict"] == "pending"
    assert "pending" in [e["event"] for e in loop.store.events()]
    assert [lesson.outcome for lesson in load_lessons(loop.store.lessons_path)] == ["pending"]
    # the held-out check measured the accepted head, which did not move
    assert state.holdout["best"] == 0.0

    status = evolve(repo, "status")
    assert status.returncode == 0, status.stderr
    assert status.stdout.index("waiting for your decision") < status.stdout.index("generations")
    html = report_run(repo / "runs", loop.run_id, repo_root=repo).read_text()
    assert 'id="pending"' in html and html.index('id="pending"') < html.index('id="plot-score"')
    assert "evolve approve 1" in html

    done = evolve(repo, "approve", "1", "--why", "the prompt change reads right", "--by", "ana")
    assert done.returncode == 0, done.stderr
    g1 = loop.store.gen(1)
    assert g1.status == "accepted" and g1.decision == "approved by ana: the prompt change reads right"
    assert best_of(repo, loop.run_id) == g1.verdict_commit == loop.store.load().best
    assert loop.store.load().best_rate == 1.0
    trailers = loop.lineage.trailers(g1.verdict_commit)
    assert trailers["Evolve-Verdict"] == "accepted" and trailers["Evolve-Decision"] == "approved"
    assert trailers["Evolve-Decided-By"] == "ana" and trailers["Evolve-Reason"] == "the prompt change reads right"
    (lesson,) = load_lessons(loop.store.lessons_path)
    assert lesson.outcome == "accepted" and "approved by ana: the prompt change reads right" in lesson.reason

    html = report_run(repo / "runs", loop.run_id, repo_root=repo).read_text()
    assert 'id="pending"' not in html and "approved by ana: the prompt change reads right" in html

    again = evolve(repo, "approve", "1")
    assert again.returncode == 1 and "accepted, not pending" in again.stderr and "Traceback" not in again.stderr


def test_a_person_rejects_and_the_planner_sees_why(tmp_path):
    repo = manual_project(tmp_path)
    loop, state = run(repo, 1)
    no_reason = evolve(repo, "reject", "1", "--why", " ")
    assert no_reason.returncode == 1 and "say why" in no_reason.stderr
    done = evolve(repo, "reject", "1", "--why", "it overfits the wide tasks", "--by", "bo")
    assert done.returncode == 0, done.stderr
    g1 = loop.store.gen(1)
    assert g1.status == "rejected" and g1.decision == "rejected by bo: it overfits the wide tasks"
    assert best_of(repo, loop.run_id) == state.base
    trailers = loop.lineage.trailers(g1.verdict_commit)
    assert trailers["Evolve-Verdict"] == "rejected" and trailers["Evolve-Decided-By"] == "bo"

    run(repo, 2, loop.run_id)  # the next generation plans with the person's reason in view
    plans = [line for line in (loop.store.dir / "optimizer_trace.jsonl").read_text().splitlines()
             if "## Step: plan" in line]
    assert "it overfits the wide tasks" in plans[-1] and "it overfits the wide tasks" not in plans[0]


def test_explore_from_the_pending_candidate(tmp_path):
    repo = manual_project(tmp_path, explore="pending")
    loop, state = run(repo, 2)
    g1, g2 = loop.store.gens()
    assert g1.status == "pending" and g1.explore_from == "best" and g1.parent == state.base
    assert g2.parent == g1.verdict_commit and g2.explore_from == "pending"
    assert state.best == state.base == best_of(repo, loop.run_id)
    assert "from pending" in evolve(repo, "status").stdout


def test_approve_refuses_when_best_moved_meanwhile(tmp_path):
    repo = manual_project(tmp_path)
    loop, state = run(repo, 1)
    other = subprocess.run(["git", "commit-tree", "-m", "elsewhere", f"{state.base}^{{tree}}", "-p", state.base],
                           cwd=repo, capture_output=True, text=True, check=True,
                           env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
                                "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}).stdout.strip()
    subprocess.run(["git", "update-ref", f"refs/heads/evolve/{loop.run_id}/best", other], cwd=repo, check=True)
    tip = loop.lineage.sha(f"refs/heads/evolve/{loop.run_id}/g001")
    bad = evolve(repo, "approve", "1")
    assert bad.returncode == 1 and "moved since generation 1 branched" in bad.stderr
    assert best_of(repo, loop.run_id) == other and loop.store.gen(1).status == "pending"
    assert loop.lineage.sha(f"refs/heads/evolve/{loop.run_id}/g001") == tip  # nothing written
    assert json.loads((loop.store.dir / "state.json").read_text())["best"] == state.base


CHAIN_SCRIPT = r'''
rules:
  - when: {contains: ["## Step: analyze"]}
    replies:
      - |
        ```json
        {"categories": [{"name": "no reproduction", "description": "submits without reproducing", "instance_ids": ["wide__f-1"]}], "summary": "The agent never reproduces the failure."}
        ```
  - when: {contains: ["## Step: plan", "Nothing yet: this is the first generation"]}
    replies:
      - |
        ```json
        {"hypothesis": "PLAN-A: reproduce first", "files": ["prompts/system.txt"], "expected_effect": "half the tasks", "change": "add a REPRODUCE FIRST rule"}
        ```
  - when: {contains: ["## Step: plan", "generation 1: pending"], not_contains: ["generation 2:"]}
    replies:
      - |
        ```json
        {"hypothesis": "PLAN-D: run the tests after editing", "files": ["prompts/system.txt"], "expected_effect": "the other half", "change": "add a SECOND RULE"}
        ```
  - when: {contains: ["## Step: implement", "PLAN-A"]}
    replies:
      - |
        harness/prompts/system.txt
        ```
        <<<<<<< SEARCH
        You are a software engineer who fixes issues in a code repository by running shell commands.
        =======
        You are a software engineer who fixes issues in a code repository by running shell commands.
        REPRODUCE FIRST: run the failing behaviour before you edit anything.
        >>>>>>> REPLACE
        ```
  - when: {contains: ["## Step: implement", "PLAN-D"]}
    replies:
      - |
        harness/prompts/system.txt
        ```
        <<<<<<< SEARCH
        REPRODUCE FIRST: run the failing behaviour before you edit anything.
        =======
        REPRODUCE FIRST: run the failing behaviour before you edit anything.
        SECOND RULE: run the tests after editing.
        >>>>>>> REPLACE
        ```
'''


class TwoRules(MarkerEvaluator):
    """wide__f-1..3 are resolved with REPRODUCE FIRST in the harness, wide__f-4..6 need SECOND RULE too."""

    def evaluate(self, harness, instance_ids, repeat, label, split):
        report = super().evaluate(harness, instance_ids, repeat, label, split)
        text = "\n".join(p.read_text(errors="replace") for p in sorted(harness.root.rglob("*")) if p.is_file())
        for r in report.results:
            if int(r.instance_id.rsplit("-", 1)[1]) > 3:
                r.resolved = r.resolved and "SECOND RULE" in text
        return report


def test_a_chain_explored_from_pending_is_approved_in_order(tmp_path):
    repo = manual_project(tmp_path, explore="pending")
    script = tmp_path / "chain.yaml"
    script.write_text(CHAIN_SCRIPT)
    cfg = yaml.safe_load((repo / "evolve.yaml").read_text())
    cfg["models"]["optimizer"]["model"] = f"scripted/{script}"
    cfg["acceptance"]["confidence"] = 0.8  # three tasks flip per generation
    (repo / "evolve.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "chain"], cwd=repo,
                   check=True)
    loop, close = make_loop(repo, evaluator=TwoRules(repo / "runs" / "marker"))
    try:
        state = loop.run(generations=2)
    finally:
        close()
    g1, g2 = loop.store.gens()
    assert (g1.status, g2.status) == ("pending", "pending"), (g1.reason, g2.reason)
    assert g2.parent == g1.verdict_commit and g2.explore_from == "pending"
    assert (g1.child_rate, g2.parent_rate, g2.child_rate) == (0.5, 0.5, 1.0)

    first = evolve(repo, "approve", "2")  # tested against g1, which is not accepted yet
    assert first.returncode == 1 and "moved since generation 2 branched" in first.stderr
    assert evolve(repo, "approve", "1").returncode == 0
    done = evolve(repo, "approve", "2")
    assert done.returncode == 0, done.stderr
    head = best_of(repo, loop.run_id)
    assert head == loop.store.gen(2).verdict_commit == loop.store.load().best and head != state.base
    shown = subprocess.run(["git", "show", f"{head}:harness/prompts/system.txt"], cwd=repo, capture_output=True,
                           text=True, check=True).stdout
    assert "REPRODUCE FIRST" in shown and "SECOND RULE" in shown
    assert loop.store.load().best_rate == 1.0
    shown = evolve(repo, "diff").stdout
    assert "generation 1: accepted" in shown and "generation 2: accepted" in shown, shown
    from evolve.report_html.data import build

    c1, c2 = build(repo / "runs", loop.run_id, repo)["generations"]
    assert c2["parent"] == c1["tested_commit"] != c1["verdict_commit"]  # the lineage plot joins them
