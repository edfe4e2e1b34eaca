"""A person's decision on a pending candidate (``acceptance.approval: manual``): ``evolve approve``
and ``evolve reject``.

A decision is written in the run's usual order (``evolve.recorder``): git first (a verdict commit on
the generation's branch whose trailers carry the decision, the person and the reason; on approval
``best`` moved by compare-and-swap from the candidate's parent, as the loop's accept does), then the
record, a lesson (the planner sees the person's reason), an event and the state. It takes the runs
folder's lock, so it never races a running ``evolve run``.
"""

from __future__ import annotations

from pathlib import Path

from evolve import lessons as lessons_log
from evolve.errors import ConfigError, EvolveError
from evolve.lineage import Lineage, verdict_trailers
from evolve.runstate import GenerationRecord, RunLock, RunStore, latest_run


def decide(runs_dir: Path, run_id: str | None, gen: int, *, approve: bool, by: str, why: str,
           root: Path) -> GenerationRecord:
    """Approve or reject generation ``gen``'s pending candidate of run ``run_id`` (default: the latest)
    in the repository at ``root``; returns the decided record (``accepted`` or ``rejected``).

    Raises:
        ConfigError: no such run or generation, it is not pending, or no reason for a rejection.
        EvolveError: a run is active (the lock is held), or ``best`` is neither the head the candidate
            was tested against (its parent; for a stepping stone's child, the head it also beat) nor a
            person's approval of it (another candidate was approved, or a rollback moved it): nothing
            is changed.
    """
    if not approve and not why.strip():
        raise ConfigError("say why: `evolve reject GEN --why TEXT` (the planner learns from it)")
    with RunLock(runs_dir):
        rid = run_id or latest_run(runs_dir)
        store = RunStore(runs_dir, rid)
        state = store.load()
        rec = store.gen(gen)
        if rec is None:
            raise ConfigError(f"run {rid} has no generation {gen}. See `evolve status {rid}`.")
        if rec.status != "pending" or not rec.verdict_commit:
            raise ConfigError(f"generation {gen} is {rec.status}, not pending: there is nothing to decide")
        lineage = Lineage(root, rid, store.dir / "worktrees")
        best = lineage.sha(lineage.refs.best)
        against = _tested_against(rec)
        if approve and not _stands_on(lineage, best, against):
            raise EvolveError(f"the accepted head moved since generation {gen} branched (it was tested "
                              f"against {against[:10]}, the head is {(best or '?')[:10]}): approving it would "
                              "drop what was accepted since. Reject it, or roll back first with `evolve rollback`.")
        verdict = "accepted" if approve else "rejected"
        word = "approved" if approve else "rejected"
        decision = f"{word} by {by}" + (f": {why.strip()}" if why.strip() else "")
        briefs = [c.model_copy(update={"status": verdict}) if c.cand == rec.cand and c.status == "pending" else c
                  for c in rec.candidates]  # K > 1: the winner's brief takes the decision too
        decided = rec.model_copy(update={"status": verdict, "pending": None, "candidates": briefs})
        trailers = {**verdict_trailers(rid, decided), "Evolve-Decision": word, "Evolve-Decided-By": by,
                    "Evolve-Reason": why.strip() or "-"}
        sha = lineage.commit_verdict(gen, f"evolve: {word} g{gen:03d} by {by}: {rec.hypothesis}", trailers)
        if approve:
            lineage.move_best(sha, best)
        decided = decided.model_copy(update={"verdict_commit": sha, "decision": decision})
        store.save_gen(decided)
        lessons_log.append(store.lessons_path, lessons_log.Lesson(
            generation=gen, hypothesis=rec.hypothesis, change=f"files: {', '.join(rec.files) or '-'}; "
                                                              f"expected: {rec.expected_effect}",
            outcome=verdict, reason=f"the paired test passed, then a person {decision}", delta=rec.delta,
            fixed=rec.fixed, broken=rec.broken))
        store.event("approve" if approve else "reject_by_person", gen=gen, by=by, why=why, commit=sha)
        if approve:
            state.best, state.best_rate = sha, rec.child_rate
        store.save(state)
        return decided


def _tested_against(rec: GenerationRecord) -> str:
    """The accepted head ``rec``'s candidate had to beat: its parent, or, for a candidate made from a
    stepping stone (``search.parent: dgm``; it beat its parent, then the head: ``Loop._against_best``),
    the head when it began (``best_before``). A candidate explored from a pending one was tested
    against that pending verdict commit, its parent."""
    if rec.explore_from == "pending" or rec.best_before is None:
        return rec.parent
    return rec.best_before


def _stands_on(lineage: Lineage, best: str | None, parent: str) -> bool:
    """Whether the accepted head ``best`` is ``parent``, or a person's approval of it: a candidate
    explored from a pending one (``approval_explore: pending``) was tested against the pending verdict
    commit, and approving that one put its approval commit (same tree, one commit on) at the head."""
    if best is None:
        return False
    if best == parent:
        return True
    return lineage.sha(f"{best}^") == parent and lineage.trailers(best).get("Evolve-Decision") == "approved"
