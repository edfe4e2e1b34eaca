"""The held-out check: the baseline and the accepted head, and on request every accepted generation,
evaluated on the sealed holdout split, with the solver only.

    holdout(loop, state)    at the end of ``evolve run`` (``evolve.loop.Loop.run``)
    run_holdout(...)        for a run already made (``evolve holdout``): builds no optimizer

What it writes (``state.holdout``, an event) is never read by the loop: the holdout split never
influences a decision, so its rates stay an honest estimate of what the search found.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from evolve.config import ProjectConfig
from evolve.recorder import kill_point
from evolve.runstate import RunLock, RunState, latest_run
from evolve.store import now_iso

if TYPE_CHECKING:
    from evolve.evaluator import Evaluator
    from evolve.loop import Loop, LoopSettings, RunView

__all__ = ["holdout", "run_holdout"]


def holdout(loop: "Loop", state: RunState, *, each: bool = True) -> dict:
    """Evaluate the baseline and the accepted head of ``loop``'s run on the sealed holdout split and,
    with ``each``, every accepted generation (its transfer: holdout rate against that of the harness it
    beat); record it in ``state.holdout`` (and its spend in ``state.spent_usd``) and return it::

        {"baseline": rate, "best": rate, "n": tasks, "best_commit": sha, "at": iso,
         "each": [{"gen", "commit", "rate", "against", "against_rate", "delta", "search_delta"}]}

    Rates are resolve rates in [0, 1], deltas in rate units (0.05 = 5 points); ``against`` is the
    accepted head the generation was compared with. Needs no optimizer.

    Raises:
        as ``Evaluator.evaluate``; RunFileError: the run's files cannot be written.
    """
    loop._prepare()
    split = loop.cfg.evals.holdout
    ids = [t.instance_id for t in loop.evalset.tasks(split)]
    loop.view.step(state, state.generations, "holdout")
    mark = loop.meter.total()

    def evaluate(sha: str, label: str) -> float:
        return loop._evaluate(loop._harness(sha), ids, 0, label, split=split).resolve_rate

    rates = {who: evaluate(sha, f"holdout-{who}") for who, sha in (("baseline", state.base), ("best", state.best))}
    by_commit = {state.base: rates["baseline"], state.best: rates["best"]}

    def rate(sha: str, label: str) -> float:
        if sha not in by_commit:
            by_commit[sha] = evaluate(sha, label)
        return by_commit[sha]

    transfer = []
    for rec in loop.store.gens() if each else []:
        if rec.status == "accepted" and rec.verdict_commit:
            against = rec.best_before or rec.parent
            now, before = rate(rec.verdict_commit, f"holdout-g{rec.gen:03d}"), rate(against, "holdout-against")
            transfer.append({"gen": rec.gen, "commit": rec.verdict_commit, "rate": now, "against": against,
                             "against_rate": before, "delta": now - before, "search_delta": rec.delta})
    state.spent_usd += loop.meter.total() - mark
    state.holdout = {**rates, "n": len(ids), "best_commit": state.best, "at": now_iso(),
                     **({"each": transfer} if each else {})}
    loop.recorder.event("holdout", **state.holdout)
    loop.recorder.save(state)
    kill_point("holdout")
    return state.holdout


def run_holdout(cfg: ProjectConfig, repo_root: Path, settings: "LoopSettings", evaluator: "Evaluator | None" = None,
                *, run_id: str | None = None, view: "RunView | None" = None, each: bool = False) -> RunState:
    """Evaluate run ``run_id``'s (default: the latest in ``settings.runs_dir``) baseline and accepted
    head (the ``best`` ref in git) on the sealed holdout split with the solver only: no optimizer is
    built; with ``each``, every accepted generation too (``holdout``). Records ``state.holdout``
    and returns the state. Takes the runs folder's lock itself: the caller must not hold it.
    ``evaluator`` None means ``DockerEvaluator.for_project``.

    Raises:
        EvolveError: another run holds the lock. ConfigError: no such run. RunFileError: unreadable files.
    """
    from evolve.loop import Loop

    with RunLock(settings.runs_dir):
        loop = Loop(cfg, repo_root, settings, None, run_id=run_id or latest_run(settings.runs_dir), view=view,
                    evaluator=evaluator)
        loop._prepare()
        state = loop.store.load()
        state.best = loop.lineage.sha(loop.lineage.refs.best) or state.best
        holdout(loop, state, each=each)
        return state
