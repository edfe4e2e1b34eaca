"""A generation that makes several candidates (``search.candidates: K`` > 1) and races them.

    race_generation(loop, state, rec, parent_h, parent_report, analysis):
        aims      the analysis's failure categories, one per candidate: categories 1..K of
                  ``Analysis.categories``; when the analysis names fewer than K, fewer candidates
                  (no category is aimed at twice: two plans for one category are near copies that
                  cost evaluation and raise Holm's bar), and a note says so; none: one candidate
                  aimed at the most important category, as with K = 1
        plan+patch concurrently, one thread per candidate: its plan names its category
                  (``Loop._plan``), its patch runs in its own worktree on ``evolve/<run>/gNNN-cJ``
                  (``Loop._patch``); the optimizer, its cache and trace, and git are thread-safe
        check     each compiles and runs the smoke task, one after another; a candidate whose
                  plan, patch or check fails or is refused drops out
        race      the survivors against the shared parent (``evolve.search.race.run_race``: staged,
                  losers dropped by the futility stop, Holm's procedure), stage by stage together:
                  each round's evaluations (the parent's missing runs, every surviving candidate's
                  runs) go to the evaluator at once (``Loop._evaluate_many``), so the K candidates'
                  task-runs share its ``workers``; the verdicts are each candidate's own
                  ``run_acceptance`` verdict on the same outcomes
        tampering per candidate (``evolve.loop.new_tampering``): a candidate with new tampering
                  cannot win, whatever its scores
        pick      the winner (of those Holm passes and without tampering, the largest gain); with
                  none, the largest estimated gain. It moves to ``evolve/<run>/gNNN`` and is decided
                  exactly as a K = 1 candidate (``Loop._decide``: verdict commit, ``best`` moved or
                  ``pending`` under manual approval); a stepping stone's child must also beat the
                  accepted head (``Loop._against_best``)
        record    ``rec.candidates``: every candidate in brief, also in the verdict commit's trailers
                  (``evolve.lineage.candidates_trailers``: a record rebuilt from git keeps them); the
                  others become archive nodes marked ``lost`` (``evolve.recorder``); lost candidates
                  that are stepping stones keep their branches, the others are deleted as rejected
                  K = 1 candidates are

Cost: the parent's runs are shared, so a generation costs K plans and patches (concurrent, so
about one in wall time) and up to K candidates' evaluations; the futility stop drops most losers
at the first stage. A killed generation is redone from the start like a K = 1 one: optimizer
replies and evaluations are cached, so it reaches the same verdict.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from evolve.acceptance import Verdict
from evolve.analyze import Analysis
from evolve.errors import ContextWindowError, HarnessError, PlanError, RequestError
from evolve.evaluate import EvalReport
from evolve.harness import Harness
from evolve.lineage import label
from evolve.plan import Plan
from evolve.runstate import CandidateRecord, GenerationRecord, RunState
from evolve.search import archive
from evolve.search.race import RaceResult, run_race
from evolve.types import TaskResult

if TYPE_CHECKING:
    from evolve.loop import Loop

__all__ = ["aims_of", "race_generation"]


@dataclass
class _Candidate:
    """One candidate while its generation runs."""

    n: int
    """1..K."""
    aim: dict | None
    plan: Plan | None = None
    commit: str | None = None
    harness: Harness | None = None
    status: str = "failed"
    reason: str = ""
    seen: list[TaskResult] = field(default_factory=list)


def aims_of(analysis: Analysis, k: int) -> tuple[list[dict | None], str]:
    """(the aim of each candidate, a note or ""): categories 1..k of the analysis, one each, as
    ``{"name", "description", "instance_ids"}`` (a name given twice counts once); fewer candidates
    when it names fewer; ``[None]`` (one candidate, no aim) when it names none."""
    named: dict[str, dict] = {}  # the model's JSON: any key may be missing or of another type
    for c in analysis.categories:
        name = " ".join(str(c.get("name") or "").split())
        ids = c.get("instance_ids")
        if name and name not in named:
            named[name] = {"name": name, "description": " ".join(str(c.get("description") or "").split()),
                           "instance_ids": [str(i) for i in ids] if isinstance(ids, list) else []}
    if not named:
        return [None], f"the analysis names no failure category: 1 candidate instead of {k}"
    aims: list[dict | None] = list(named.values())[:k]
    note = "" if len(aims) == k else (f"the analysis names {len(aims)} failure categories: {len(aims)} "
                                      f"candidates instead of {k} (no category is aimed at twice)")
    return aims, note


def race_generation(loop: "Loop", state: RunState, rec: GenerationRecord, parent_h: Harness,
                    parent_report: EvalReport, analysis: Analysis) -> None:
    """Steps 2-4 of a generation with K > 1 candidates (the module docstring), from ``rec.parent``.

    Raises:
        GenerationFailed: every candidate failed or was refused (``refused`` if all were refused).
        UpstreamError, ModelError, InfraError: as in a K = 1 generation.
    """
    from evolve.loop import flag_counts, new_tampering

    cands = _make(loop, state, rec, parent_report, analysis)
    alive = _checked(loop, state, rec, cands, parent_report)

    loop._step(state, rec, "evaluate")
    race, parent_seen = _race(loop, rec.gen, parent_h, alive)
    tampering = [new_tampering(parent_seen, c.seen) for c in alive]
    pick, verdict = _pick(race, tampering, alive)
    chosen = alive[pick]
    _own(loop, rec, chosen)
    rec.flagged_tasks, rec.integrity_flags = flag_counts(chosen.seen)
    rec.tampering = tampering[pick]
    rec.p_worse, rec.outcomes = archive.p_worse(verdict.records), archive.outcomes_of(verdict.records)
    if rec.parent != state.best and rec.explore_from == "best":  # a stepping stone's child
        verdict, seen_best = loop._against_best(state, chosen.harness, rec.gen, verdict)
        if seen_best:
            rec.tampering = sorted(set(rec.tampering) | set(new_tampering(seen_best["parent"], seen_best["child"])))
        verdict = replace(verdict, task_runs=verdict.task_runs + race.task_runs if seen_best else race.task_runs)
    rec.winner = chosen.n if verdict.accepted and not rec.tampering else None

    rec.candidates = _briefs(loop, rec, cands, alive, race, tampering)
    loop.recorder.event("race", gen=rec.gen, candidates=len(cands), raced=len(alive), winner=rec.winner,
                        task_runs=race.task_runs, reason=race.reason)
    _drop_branches(loop, rec.gen, cands, keep=chosen, briefs=rec.candidates)
    loop._step(state, rec, "decide")
    loop._decide(state, rec, verdict)


def _make(loop: "Loop", state: RunState, rec: GenerationRecord, parent_report: EvalReport,
          analysis: Analysis) -> list[_Candidate]:
    """One candidate per aim: plan and patch, one thread each; a candidate whose plan or patch
    fails or is refused keeps that status and reason. Errors that end a generation propagate."""
    from evolve.loop import GenerationFailed

    gen = rec.gen
    aims, note = aims_of(analysis, loop.cfg.search.candidates)
    if note:
        loop.view.note(f"generation {gen}: {note}")
        loop.recorder.event("candidates", gen=gen, made=len(aims), asked=loop.cfg.search.candidates, note=note)
    cands = [_Candidate(j + 1, aim) for j, aim in enumerate(aims)]
    files = loop.lineage.tree_files(rec.parent, loop.harness_dir)
    score = state.best_rate if rec.parent == state.best else parent_report.resolve_rate

    def make(c: _Candidate) -> None:
        try:
            c.plan = loop._plan(analysis.text, files, score, aim=c.aim)
            c.commit = loop._patch(gen, c.plan, files, parent=rec.parent, cand=c.n,
                                   context=lambda: loop._patch_context(analysis.text, parent_report))
            c.status = "made"
        except GenerationFailed as e:
            c.status, c.reason = e.status, e.reason
        except (PlanError, HarnessError, ContextWindowError, RequestError) as e:
            c.status, c.reason = "failed", f"{type(e).__name__}: {e}"

    try:
        loop._step(state, rec, "plan")
        with ThreadPoolExecutor(max_workers=len(cands), thread_name_prefix=f"evolve-g{gen:03d}") as pool:
            for future in [pool.submit(make, c) for c in cands]:
                future.result()  # an unreachable optimizer or a Ctrl-C ends the generation as for K = 1
    finally:
        for c in cands:
            loop.lineage.drop_worktree(gen, c.n)
    return cands


def _checked(loop: "Loop", state: RunState, rec: GenerationRecord, cands: list[_Candidate],
             parent_report: EvalReport) -> list[_Candidate]:
    """The candidates that compile and pass the smoke task (``Loop._check``), one after another.

    Raises:
        GenerationFailed: none does; candidate 1 is then the generation's own (its record and node).
    """
    from evolve.loop import GenerationFailed

    loop._step(state, rec, "check")
    for c in cands:
        if c.status != "made":
            continue
        try:
            c.harness = loop._harness(c.commit)
            loop._check(c.harness, parent_report, rec.gen, cand=c.n)
            c.status = "checked"
        except GenerationFailed as e:
            c.status, c.reason = e.status, e.reason
        except HarnessError as e:
            c.status, c.reason = "failed", f"HarnessError: {e}"
    alive = [c for c in cands if c.status == "checked"]
    if not alive:
        _drop_branches(loop, rec.gen, cands, keep=cands[0])
        _own(loop, rec, cands[0])
        rec.candidates = [_brief(c) for c in cands]
        status = "refused" if all(c.status == "refused" for c in cands) else "failed"
        raise GenerationFailed(status, f"none of {len(cands)} candidates was made: " + "; ".join(
            f"c{c.n} {c.status}: {c.reason}" for c in cands)[:1000])
    return alive


def _race(loop: "Loop", gen: int, parent_h: Harness, alive: list[_Candidate]):
    """(``run_race``'s result, the parent's results seen); each candidate's results go to its ``seen``.
    Each round of the race (the parent's missing runs and every surviving candidate's runs of a
    stage and repeat) is one ``Loop._evaluate_many`` call: the evaluations run at once, within the
    evaluator's ``workers``. Labelled ``gNNN-parent-rR`` and ``gNNN-cJ-rR``."""
    parent_seen: list[TaskResult] = []

    def evaluate_many(requests) -> list[dict[str, bool | None]]:
        asks = [(parent_h if j is None else alive[j].harness, ids, repeat,
                 f"g{gen:03d}-parent-r{repeat}" if j is None else f"{label(gen, alive[j].n)}-r{repeat}")
                for j, ids, repeat in requests]
        out = []
        for (j, _, _), report in zip(requests, loop._evaluate_many(asks), strict=True):
            (parent_seen if j is None else alive[j].seen).extend(report.results)
            out.append({r.instance_id: None if r.is_infra else r.resolved for r in report.results})
        return out

    acc = loop.cfg.acceptance
    return run_race(None, loop.search_ids, len(alive), acc, stages=acc.stages, futility_z=acc.futility_z,
                    evaluate_many=evaluate_many), parent_seen


def _pick(race: RaceResult, tampering: list[list[str]], alive: list[_Candidate]) -> tuple[int, Verdict]:
    """(index into ``alive`` of the generation's own candidate, its verdict for ``Loop._decide``): the
    winner, of those Holm passes without new tampering the largest gain; with none, the largest
    estimated gain (accepted False). The verdict's task_runs are the whole race's."""
    eligible = [j for j in race.passed if not tampering[j]]
    winner = max(eligible, key=lambda j: (race.verdicts[j].delta, -race.verdicts[j].p_value, -j)) if eligible else None
    pick = winner if winner is not None else max(range(len(alive)), key=lambda j: (race.verdicts[j].delta, -j))
    n, k, verdict = alive[pick].n, len(alive), race.verdicts[pick]
    if winner is not None and winner == race.winner:
        reason = race.reason
    elif winner is not None:
        reason = (f"{race.reason}; that candidate has new tampering and cannot win: candidate {n} of {k}, "
                  f"the largest gain of the others that pass: {verdict.reason}")
    else:
        untampered = "" if race.winner is None else "; the candidate that passed has new tampering and cannot win"
        reason = f"{race.reason}{untampered}; recorded: candidate {n}, the largest estimated gain: {verdict.reason}"
    return pick, replace(verdict, accepted=winner is not None, task_runs=race.task_runs, reason=reason)


def _briefs(loop: "Loop", rec: GenerationRecord, cands: list[_Candidate], alive: list[_Candidate],
            race: RaceResult, tampering: list[list[str]]) -> list[CandidateRecord]:
    """Every candidate's brief record, with its own verdict in the race for those raced."""
    acc = loop.cfg.acceptance
    passed = "pending" if acc.approval == "manual" else "accepted"
    out = []
    for c in cands:
        if c in alive:
            j = alive.index(c)
            v = race.verdicts[j]
            c.status = passed if c.n == rec.winner else "rejected"
            c.reason = v.reason if c.n == rec.cand else f"lost the race ({race.reason}); its own test: {v.reason}"
            brief = _brief(c).model_copy(update=dict(
                child_rate=v.child_rate, delta=v.delta, p_value=v.p_value, p_worse=archive.p_worse(v.records),
                tampering=tampering[j], task_runs=v.child_runs, outcomes=archive.outcomes_of(v.records)))
            brief.stone = archive.is_stone(brief.status, brief.p_worse, 1 - acc.confidence, bool(brief.tampering))
            out.append(brief)
        else:
            out.append(_brief(c))
    return out


def _own(loop: "Loop", rec: GenerationRecord, c: _Candidate) -> None:
    """Make ``c`` the generation's own candidate: the record's fields, and its commit moved from
    ``gNNN-cJ`` to ``gNNN`` (where a verdict commit goes, as for K = 1)."""
    rec.cand, rec.category, rec.candidate = c.n, (c.aim or {}).get("name", ""), c.commit
    if c.plan is not None:
        rec.hypothesis, rec.files, rec.expected_effect = c.plan.hypothesis, c.plan.files, c.plan.expected_effect
    if c.commit is not None:
        loop.lineage.point_gen(rec.gen, c.commit)
    loop.lineage.delete_branch(rec.gen, c.n)


def _brief(c: _Candidate) -> CandidateRecord:
    p = c.plan
    status = c.status if c.status in ("accepted", "pending", "rejected", "refused", "failed") else "failed"
    return CandidateRecord(cand=c.n, category=(c.aim or {}).get("name", ""), hypothesis=p.hypothesis if p else "",
                           files=list(p.files) if p else [], expected_effect=p.expected_effect if p else "",
                           status=status, reason=c.reason, candidate=c.commit)


def _drop_branches(loop: "Loop", gen: int, cands: list[_Candidate], keep: _Candidate | None = None,
                   briefs: list[CandidateRecord] | None = None) -> None:
    """Delete the branches that hold nothing worth keeping: a candidate with no commit (it points at
    the parent), and a rejected one that is no stepping stone unless ``acceptance.keep_rejected``."""
    by_n = {b.cand: b for b in briefs or []}
    for c in cands:
        if c is keep:
            continue
        b = by_n.get(c.n)
        rejected_dropped = (b is not None and b.status == "rejected" and not b.stone
                            and not loop.cfg.acceptance.keep_rejected)
        if c.commit is None or rejected_dropped:
            loop.lineage.delete_branch(gen, c.n)
