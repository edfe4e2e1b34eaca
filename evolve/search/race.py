"""K candidates raced against one parent: staged paired comparisons, losers dropped early,
Holm's step-down procedure over the K tests so a generation falsely accepts with probability at
most ``1 - confidence`` whatever K is.

Pure logic, like ``evolve.acceptance`` (whose procedure each candidate goes through unchanged):

1. **Shared parent.** Every candidate is compared with the same parent on the same tasks, in the
   same staged order (``evolve.acceptance``: sha256 order, stages, discordant re-runs). The
   parent's outcome on (task, repeat) is asked once and shared by all K comparisons, so the
   parent costs what it costs for one candidate.
2. **Losers dropped early.** After each stage but the last a candidate whose standardized
   statistic is below ``futility_z`` is dropped (``evolve.acceptance``'s binding futility stop:
   it can only turn an accept into a reject). Given the parent's outcomes the K comparisons are
   independent of one another, so asking them stage by stage together or one after the other
   gives the same verdicts and the same task-runs; the loop may run them concurrently.
3. **Holm** (Holm, *A simple sequentially rejective multiple test procedure*, Scand. J. Statist.
   6:65-70, 1979). Each candidate's p is its exact one-sided sign-flip p-value, or 1 if its own
   procedure rejected it anyway (futility stop, min_gain, the infra check). With the p's sorted,
   p(1) <= ... <= p(K), the candidates (1)..(j) pass while p(i) < alpha / (K - i + 1) for every
   i <= j. Of those that pass, the one with the largest estimated gain is accepted (at most one
   per generation: ``best`` moves once).

Why the generation's false-accept rate stays <= alpha = 1 - confidence for any K: a false accept
needs at least one candidate with no true gain to pass, and Holm bounds the probability that any
true null passes by alpha under *any* dependence between the tests (the K comparisons share the
parent's outcomes, so they are dependent). Each p is valid for its own candidate: exactly so under
the sharp null (``evolve.acceptance``), and futility stops and the other gates only raise it.
Choosing the largest gain among the candidates that passed never adds a false accept: it picks
within the set Holm already bounds. The bench (``bench/acceptance_sim.py --search``) measures it
for K = 1..8 null candidates.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from evolve.acceptance import (CHILD, PARENT, RunOutcome, Verdict,
                               run_acceptance)
from evolve.config import AcceptanceConfig

RaceEvaluateFn = Callable[[int | None, list[str], int], Mapping[str, RunOutcome]]
"""``evaluate(candidate, instance_ids, repeat) -> {instance_id: resolved?}``; ``candidate`` is the
candidate's index 0..K-1, or None for the parent. Missing ids count as infra failures."""


@dataclass(frozen=True)
class RaceResult:
    """The outcome of one race: every candidate's own verdict and the generation's decision."""

    verdicts: list[Verdict]
    """Candidate j's paired verdict against the parent (``evolve.acceptance.run_acceptance``)."""
    passed: list[int]
    """Candidates that pass Holm's procedure, in order of p-value."""
    winner: int | None
    """The accepted candidate (the largest delta among ``passed``), or None."""
    task_runs: int
    """Task evaluations requested: every candidate's plus the parent's, each shared parent run once."""
    reason: str
    """One sentence on the decision."""

    def accepted(self, j: int) -> bool:
        return self.winner == j


def holm(p_values: Sequence[float], alpha: float) -> list[int]:
    """Indices whose null Holm's step-down procedure rejects at family-wise level ``alpha``, in order
    of p-value (Holm 1979): the i-th smallest (i = 1..K) must be below ``alpha / (K - i + 1)``."""
    k = len(p_values)
    order = sorted(range(k), key=lambda j: (p_values[j], j))
    out = []
    for i, j in enumerate(order):
        if not p_values[j] < alpha / (k - i):
            break
        out.append(j)
    return out


def run_race(evaluate: RaceEvaluateFn, instance_ids: list[str], k: int, cfg: AcceptanceConfig, *,
             stages: Sequence[float] | None = None, futility_z: float | str | None = "auto") -> RaceResult:
    """Race ``k`` candidates against one parent on ``instance_ids`` and accept at most one.

    Args:
        evaluate: runs (or looks up) evaluations (``RaceEvaluateFn``); the parent is asked at most once
            per (task, repeat) that had a real outcome.
        k: number of candidates (>= 1); with 1 this is exactly ``run_acceptance``.
        cfg, stages, futility_z: as for ``evolve.acceptance.run_acceptance``, applied to each candidate.

    Raises:
        ValueError: ``k`` < 1, or bad stages.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    alpha = 1.0 - cfg.confidence
    parent: dict[tuple[str, int], bool] = {}
    runs = {"parent": 0, "children": 0}

    def for_candidate(j: int):
        def ev(who: str, ids: list[str], rep: int) -> dict[str, RunOutcome]:
            if who == CHILD:
                runs["children"] += len(ids)
                return dict(evaluate(j, ids, rep))
            assert who == PARENT
            ask = [i for i in ids if (i, rep) not in parent]
            if ask:
                runs["parent"] += len(ask)
                got = evaluate(None, ask, rep)
                for i in ask:
                    if got.get(i) is not None:  # infra is never kept: asking again runs it again
                        parent[(i, rep)] = bool(got[i])
            return {i: parent.get((i, rep)) for i in ids}
        return ev

    verdicts = [run_acceptance(for_candidate(j), instance_ids, cfg, stages=stages, futility_z=futility_z)
                for j in range(k)]
    p = [v.p_value if v.accepted else 1.0 for v in verdicts]
    passed = holm(p, alpha)
    winner = max(passed, key=lambda j: (verdicts[j].delta, -p[j], -j)) if passed else None
    dropped = sum(v.stopped_early for v in verdicts)
    if winner is None:
        reason = (f"no candidate of {k} passes Holm's procedure at {alpha:.3g} (smallest p "
                  f"{min(v.p_value for v in verdicts):.3g}; {dropped} dropped early)")
    else:
        reason = (f"candidate {winner + 1} of {k}: {verdicts[winner].reason}; passes Holm's procedure at "
                  f"{alpha:.3g} with {len(passed)} of {k} ({dropped} dropped early)")
    return RaceResult(verdicts, passed, winner, runs["parent"] + runs["children"], reason)
