"""The loop without Docker: the real loop, analyze, plan, patch, optimizer (scripted words), git
and run files, with ``MarkerEvaluator`` behind the evaluator seam (tests/loop_support.py)."""

from __future__ import annotations

import json

import pytest

from loop_support import MarkerEvaluator, make_loop, make_project

from evolve.errors import EvolveError
from evolve.lessons import load as load_lessons
from evolve.lineage import Lineage


@pytest.fixture
def project(tmp_path):
    return make_project(tmp_path)


def git_best(repo, run):
    return Lineage(repo, run, repo / "runs" / run / "worktrees").sha(f"refs/heads/evolve/{run}/best")


def test_three_generations_accept_reject_refuse(project):
    loop, close = make_loop(project)
    try:
        state = loop.run()
    finally:
        close()
    gens = loop.store.gens()
    assert [g.status for g in gens] == ["accepted", "rejected", "refused"]
    g1, g2, g3 = gens
    assert g1.hypothesis.startswith("PLAN-A") and g1.delta == pytest.approx(1.0) and g1.n_tasks == 6
    assert g2.delta < 0 and g2.broken and g2.pending is None
    assert g3.reason.startswith("edits refused") and g3.candidate is None and g3.flagged_tasks is None
    assert state.best == g1.verdict_commit == git_best(project, loop.run_id)
    assert state.baseline_rate == 0.0 and state.best_rate == 1.0 and state.finished == 3
    assert state.holdout["baseline"] == 0.0 and state.holdout["best"] == 1.0
    trailers = loop.lineage.trailers(state.best)
    assert trailers["Evolve-Verdict"] == "accepted" and trailers["Evolve-Child-Score"] == "1.0000"
    assert trailers["Evolve-Tasks"] == "6"
    assert loop.lineage.verdict_of(2)[1]["Evolve-Verdict"] == "rejected"  # kept for inspection (keep_rejected)
    assert [lesson.outcome for lesson in load_lessons(loop.store.lessons_path)] == ["accepted", "rejected", "refused"]
    assert (loop.store.dir / "analysis" / "g001.md").read_text().count("never reproduces") == 1
    events = [e["event"] for e in loop.store.events()]
    assert events.count("generation_end") == 3 and events.count("accept") == 1 and "holdout" in events
    # the holdout split was evaluated only by the held-out check
    assert {split for _, split, _, _ in loop.evaluator.calls if split == "holdout"} == {"holdout"}
    assert all(label.startswith("holdout") for label, split, _, _ in loop.evaluator.calls if split == "holdout")


def test_holdout_needs_no_optimizer(project):
    from evolve.config import load_project_config
    from evolve.holdout import run_holdout
    from evolve.loop import LoopSettings

    loop, close = make_loop(project)
    try:
        loop.run(generations=1)
    finally:
        close()
    cfg = load_project_config(project / "evolve.yaml")
    evaluator = MarkerEvaluator(project / "runs" / "marker2")
    state = run_holdout(cfg, project, LoopSettings(solver_model="marker", runs_dir=project / "runs"), evaluator)
    assert state.holdout["best"] == 1.0 and state.holdout["baseline"] == 0.0
    assert {label for label, *_ in evaluator.calls} == {"holdout-baseline", "holdout-best"}


def test_a_constructed_loop_does_no_io(tmp_path):
    from evolve.config import ProjectConfig
    from evolve.loop import Loop, LoopSettings

    Loop(ProjectConfig(), tmp_path / "nowhere", LoopSettings(solver_model="m", runs_dir=tmp_path / "runs"))
    assert not (tmp_path / "runs").exists() and not (tmp_path / "nowhere").exists()


def test_failed_and_refused_steps_say_why(project):
    """A harness that does not compile fails at the check step; the generation is recorded, not raised."""
    loop, close = make_loop(project)
    try:
        loop.evaluator.compile = lambda harness: "SyntaxError: broken"
        state = loop.run(generations=1)
    finally:
        close()
    (g1,) = loop.store.gens()
    assert g1.status == "failed" and g1.reason == "does not compile: SyntaxError: broken"
    assert state.best == state.base and state.finished == 1
    assert [lesson.outcome for lesson in load_lessons(loop.store.lessons_path)] == ["failed"]


def test_ctrl_c_keeps_the_generation_for_resume(project):
    loop, close = make_loop(project)
    real = loop.evaluator.evaluate

    def interrupt(harness, ids, repeat, label, split):
        if label.endswith("-child-r0"):
            raise KeyboardInterrupt
        return real(harness, ids, repeat, label, split)

    loop.evaluator.evaluate = interrupt
    try:
        with pytest.raises(KeyboardInterrupt):
            loop.run(generations=1)
    finally:
        close()
    (g1,) = loop.store.gens()
    assert g1.status == "running" and g1.step == "evaluate"
    assert loop.store.load().status == "interrupted"
    assert not load_lessons(loop.store.lessons_path)

    resumed, close = make_loop(project, loop.run_id)
    try:
        state = resumed.run(generations=1)
    finally:
        close()
    assert [g.status for g in resumed.store.gens()] == ["accepted"]
    assert state.best == git_best(project, loop.run_id) and state.status == "stopped"
    assert [lesson.outcome for lesson in load_lessons(loop.store.lessons_path)] == ["accepted"]


def test_a_generation_needs_an_optimizer(project):
    from evolve.config import load_project_config
    from evolve.loop import Loop, LoopSettings

    cfg = load_project_config(project / "evolve.yaml")
    loop = Loop(cfg, project, LoopSettings(solver_model="marker", runs_dir=project / "runs"),
                evaluator=MarkerEvaluator(project / "runs" / "m"))
    with pytest.raises(EvolveError, match="without an optimizer"):
        loop.run(generations=1)
    assert json.loads((loop.store.gen_path(1)).read_text())["status"] == "running"


def test_ctrl_c_after_best_moved_completes_on_resume_without_applying_twice(project):
    loop, close = make_loop(project)
    real_event = loop.recorder.event

    def interrupt_on_accept(event, **fields):
        if event == "accept":
            raise KeyboardInterrupt
        real_event(event, **fields)

    loop.recorder.event = interrupt_on_accept
    try:
        with pytest.raises(KeyboardInterrupt):
            loop.run(generations=1)
    finally:
        close()
    (g1,) = loop.store.gens()
    assert g1.status == "running" and g1.pending == "accepted"
    moved = git_best(project, loop.run_id)
    assert moved != loop.store.load().base

    resumed, close = make_loop(project, loop.run_id)
    try:
        state = resumed.run(generations=1)
    finally:
        close()
    (g1,) = resumed.store.gens()
    assert g1.status == "accepted" and g1.verdict_commit == moved == state.best == git_best(project, loop.run_id)
    assert [lesson.outcome for lesson in load_lessons(loop.store.lessons_path)] == ["accepted"]
    assert state.generations == 1 and state.finished == 1
