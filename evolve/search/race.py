"""K candidates raced against one parent: staged paired comparisons, losers dropped early,
Holm's step-down procedure over the K tests so a generation falsely accepts with probability at
most ``1 - confidence`` whatever K is.

Pure logic, like ``evolve.acceptance`` (whose procedure each candidate goes through unchanged):

1. **Shared parent, stages together.** Every candidate is compared with the same parent on the same
   tasks, in the same staged order (``evolve.acceptance``: sha256 order, stages, discordant re-runs),
   each by its own ``evolve.acceptance.acceptance_steps``. The K procedures advance in lockstep: each
   *round* asks, in one batch, every surviving candidate's next runs (its tasks of the stage at
   repeat 0, then its discordant re-runs, then any one-sided infra re-asks) and the parent's runs
   that no earlier round had (the union over the candidates: the parent's outcome on (task, repeat)
   is asked once and shared by all K comparisons, so the parent costs what it costs for one
   candidate). The caller may run a round's requests concurrently (``evaluate_many``). At each
   interim look every candidate waits for the others, so stage s+1 starts for all at once.
2. **Losers dropped early.** At each look but the last a candidate whose standardized statistic is
   below ``futility_z`` is dropped (``evolve.acceptance``'s binding futility stop: it can only turn
   an accept into a reject) and asks for nothing more. Given the parent's outcomes the K
   comparisons are independent of one another, so each candidate's verdict is the one
   ``run_acceptance`` reaches alone on the same outcomes: the same tasks in the same order, the same
   re-runs, the same p-value (``tests/test_search_race.py`` checks it on scripted outcomes). Only
   which round a parent run falls in changes; a parent's infra failure asked by two candidates in
   one round is asked once for both (the evaluator has retried it already).
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

from evolve.acceptance import (CHILD, PARENT, Request, RunOutcome, Steps,
                               Verdict, acceptance_steps)
from evolve.config import AcceptanceConfig

RaceEvaluateFn = Callable[[int | None, list[str], int], Mapping[str, RunOutcome]]
"""``evaluate(candidate, instance_ids, repeat) -> {instance_id: resolved?}``; ``candidate`` is the
candidate's index 0..K-1, or None for the parent. Missing ids count as infra failures."""

RaceRequest = tuple[int | None, list[str], int]
"""``(candidate, instance_ids, repeat)``: ``RaceEvaluateFn``'s arguments."""

RaceBatchFn = Callable[[list[RaceRequest]], list[Mapping[str, RunOutcome]]]
"""``evaluate_many(requests) -> [outcomes of each request]``: one round of the race, whose requests
are independent of one another and may run at once (at most one per candidate, and the parent's
at most one per repeat)."""


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
    rounds: int = 0
    """Batches asked (``evaluate_many`` calls): every candidate's runs of a round went in one batch."""

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


def run_race(evaluate: RaceEvaluateFn | None, instance_ids: list[str], k: int, cfg: AcceptanceConfig, *,
             stages: Sequence[float] | None = None, futility_z: float | str | None = "auto",
             evaluate_many: RaceBatchFn | None = None) -> RaceResult:
    """Race ``k`` candidates against one parent on ``instance_ids``, stage by stage together, and
    accept at most one.

    Args:
        evaluate: runs (or looks up) one evaluation (``RaceEvaluateFn``): a round's requests are
            asked one after another. None when ``evaluate_many`` is given.
        evaluate_many: answers a whole round at once (``RaceBatchFn``), e.g. concurrently.
        k: number of candidates (>= 1); with 1 this is exactly ``run_acceptance``.
        cfg, stages, futility_z: as for ``evolve.acceptance.run_acceptance``, applied to each candidate.

    Raises:
        ValueError: ``k`` < 1, bad stages, or not exactly one of ``evaluate`` and ``evaluate_many``.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if (evaluate is None) == (evaluate_many is None):
        raise ValueError("give exactly one of evaluate and evaluate_many")
    ask_all: RaceBatchFn = evaluate_many or (lambda reqs: [evaluate(*r) for r in reqs])  # type: ignore[misc]
    alpha = 1.0 - cfg.confidence
    parent: dict[tuple[str, int], bool] = {}
    runs = {"parent": 0, "children": 0, "rounds": 0}

    def answer(asking: dict[int, list[Request]]) -> dict[int, list[dict[str, RunOutcome]]]:
        """One round: every candidate's child requests and the parent's missing runs, in one batch."""
        need: dict[int, list[str]] = {}  # repeat -> the parent's ids no round has had a real outcome for
        for reqs in asking.values():
            for who, ids, rep in reqs:
                if who == PARENT:
                    have = need.setdefault(rep, [])
                    have.extend(i for i in ids if (i, rep) not in parent and i not in have)
        batch: list[RaceRequest] = [(None, ids, rep) for rep, ids in need.items() if ids]
        batch += [(j, ids, rep) for j, reqs in asking.items() for who, ids, rep in reqs if who == CHILD]
        got = ask_all([(j, list(ids), rep) for j, ids, rep in batch])
        runs["rounds"] += 1
        fresh: dict[tuple[str, int], RunOutcome] = {}
        child: dict[tuple[int, int], Mapping[str, RunOutcome]] = {}
        for (j, ids, rep), out in zip(batch, got, strict=True):
            out = out or {}
            if j is None:
                runs["parent"] += len(ids)
                for i in ids:
                    fresh[(i, rep)] = out.get(i)
                    if out.get(i) is not None:  # infra is never kept: asking again runs it again
                        parent[(i, rep)] = bool(out[i])
            else:
                runs["children"] += len(ids)
                child[(j, rep)] = out
        return {j: [{i: parent.get((i, rep), fresh.get((i, rep))) for i in ids} if who == PARENT
                    else dict(child[(j, rep)]) for who, ids, rep in reqs] for j, reqs in asking.items()}

    procs: list[Steps] = [acceptance_steps(instance_ids, cfg, stages=stages, futility_z=futility_z)
                          for _ in range(k)]
    verdicts: list[Verdict | None] = [None] * k
    pending: dict[int, list[Request]] = {}

    def advance(j: int, answers) -> None:
        try:
            pending[j] = procs[j].send(answers)
        except StopIteration as done:
            verdicts[j] = done.value
            pending.pop(j, None)

    for j in range(k):
        advance(j, None)
    while pending:
        asking = {j: reqs for j, reqs in pending.items() if reqs}
        if not asking:  # every candidate still in the race took its look: the next stage, together
            for j in list(pending):
                advance(j, [])
            continue
        answers = answer(asking)
        for j in asking:
            advance(j, answers[j])
    done: list[Verdict] = [v for v in verdicts if v is not None]
    return _decide(done, alpha, runs["parent"] + runs["children"], runs["rounds"])


def _decide(verdicts: list[Verdict], alpha: float, task_runs: int, rounds: int) -> RaceResult:
    """Holm's procedure over the candidates' verdicts and the winner (module docstring, 3)."""
    k = len(verdicts)
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
    return RaceResult(verdicts, passed, winner, task_runs, reason, rounds)
