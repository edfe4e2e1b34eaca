"""Everything a run writes about itself, in one order, and how a resumed run catches up.

A generation is a transaction whose writes happen in this order::

    record (running; once per step)           runs/<run>/generations/gNNN.json
    git: candidate commit, verdict commit, best   (evolve.lineage)
    record (final)
    archive nodes (the generation's, then its lost candidates')   runs/<run>/archive.jsonl (evolve.search.archive)
    lesson (at most one per generation)       runs/<run>/lessons.jsonl
    event generation_end                      runs/<run>/events.jsonl
    state (generation counted: finished, spent_usd, best)   runs/<run>/state.json

Git holds the truth. A kill at any instant leaves a prefix of these writes, and
``reconcile`` (run when a run is resumed) completes it: a verdict already committed
in git is finished (``best`` moved, record, lesson, event, state), a final record
without its lesson, event or cost gets them, and a generation that never reached its
verdict commit is redone from the start (evaluations and optimizer replies are cached,
so it decides the same). Ctrl-C and SIGTERM leave the generation running, for resume.

Test-only: ``EVOLVE_TEST_KILL_AT=<point>`` makes the process SIGKILL itself when it
reaches ``<point>`` (see ``kill_point``); the kill-and-resume tests use it.
"""

from __future__ import annotations

import os
import signal

from evolve import lessons as lessons_log
from evolve.lineage import Lineage
from evolve.runstate import FINAL, CandidateRecord, GenerationRecord, RunState, RunStore
from evolve.search import archive

KILL_POINTS = ("start", "analyze", "plan", "patch", "patch-cached", "check", "evaluate", "decide", "verdict-committed",
               "best-moved", "record-final", "archive-written", "lesson-written", "event-written", "state-saved",
               "holdout")
"""Named instants of a run where ``EVOLVE_TEST_KILL_AT`` can kill it."""


VERDICT_FIELDS = ("parent_rate", "child_rate", "delta", "ci_low", "ci_high", "p_value", "n_tasks", "fixed",
                  "broken")
"""Record fields a verdict commit's trailers hold."""


def kill_point(point: str, gen: int | None = None) -> None:
    """Test-only: SIGKILL this process if ``EVOLVE_TEST_KILL_AT`` is ``point`` or ``point@gen``.
    Never set it outside tests: the process dies without cleanup, as with ``kill -9``."""
    wanted = os.environ.get("EVOLVE_TEST_KILL_AT")
    if wanted and wanted in (point, f"{point}@{gen}"):
        os.kill(os.getpid(), signal.SIGKILL)


class Recorder:
    """Saves, events and lessons of one run, written in the transaction's order.

    Args:
        store: the run's files.
        view: what the user sees (``evolve.loop.RunView``).
    """

    def __init__(self, store: RunStore, view) -> None:
        self.store, self.view = store, view

    def save(self, state: RunState) -> None:
        self.store.save(state)

    def event(self, event: str, **fields) -> None:
        self.store.event(event, **fields)

    def begin(self, state: RunState, rec: GenerationRecord) -> None:
        """Generation ``rec.gen`` starts (or restarts after a resume): record, state, event."""
        state.generations = rec.gen
        self.store.save_gen(rec)
        self.store.save(state)
        self.store.event("generation_start", gen=rec.gen, parent=rec.parent)
        kill_point("start", rec.gen)

    def step(self, state: RunState, rec: GenerationRecord, step: str) -> None:
        """The generation enters ``step``; the record (with the cost so far) is saved first."""
        rec.step = step
        self.store.save_gen(rec)
        self.view.step(state, rec.gen, step)
        kill_point(step, rec.gen)

    def running(self, rec: GenerationRecord) -> None:
        """Save the record as it is, still running (Ctrl-C: resume redoes the generation)."""
        self.store.save_gen(rec)

    def lesson(self, rec: GenerationRecord) -> None:
        """Append the final ``rec``'s lesson unless its generation already has one. With K > 1
        candidates its reason also names the others' hypotheses and verdicts, so later plans see
        every idea tried."""
        change = f"files: {', '.join(rec.files) or '-'}; expected: {rec.expected_effect}"
        others = [f"candidate {c.cand} ({c.status}" + ("" if c.delta is None else f", {100 * c.delta:+.1f} points")
                  + f"): {c.hypothesis or c.reason[:200]}" for c in rec.candidates if c.cand != rec.cand]
        also = f" Also tried in this generation: {'; '.join(others)}." if others else ""  # the planner sees them
        lessons_log.append_once(self.store.lessons_path, lessons_log.Lesson(
            generation=rec.gen, hypothesis=rec.hypothesis, change=change, outcome=rec.status,
            reason=rec.reason + also, delta=rec.delta, fixed=rec.fixed, broken=rec.broken))

    def finish(self, state: RunState, rec: GenerationRecord) -> None:
        """Write a final generation's record, lesson, event and state, in that order; each write is
        skipped when already done, so a resumed run calls this again safely. An accepted ``rec``
        makes its verdict commit ``state.best`` (git's ``best`` already moved there)."""
        assert rec.status in FINAL, rec.status
        rec.pending = None
        self.store.save_gen(rec)
        kill_point("record-final", rec.gen)
        archive.append_once(self.store.dir, node_of(rec, self.store.run_id))
        for node in lost_nodes(rec, self.store.run_id):
            archive.append_once(self.store.dir, node)
        kill_point("archive-written", rec.gen)
        self.lesson(rec)
        kill_point("lesson-written", rec.gen)
        if not any(e.get("event") == "generation_end" and e.get("gen") == rec.gen for e in self.store.events()):
            self.store.event("generation_end", gen=rec.gen, status=rec.status, reason=rec.reason,
                             cost_usd=rec.cost_usd)
        kill_point("event-written", rec.gen)
        if state.finished is not None and state.finished < rec.gen:
            state.spent_usd += rec.cost_usd
            state.finished = rec.gen
        if rec.status == "accepted" and rec.verdict_commit:
            state.best, state.best_rate = rec.verdict_commit, rec.child_rate
        self.store.save(state)
        kill_point("state-saved", rec.gen)
        self.view.verdict(state, rec)


def reconcile(state: RunState, recorder: Recorder, lineage: Lineage, *, keep_rejected: bool) -> list[str]:
    """Bring a resumed run's files in line with git and with each other; returns notes on what
    was completed. After it, ``state.generations`` is the last final generation (the next one
    starts after it), ``state.best`` is the ``best`` ref, and every final record has its lesson,
    event and cost counted.

    Raises:
        EvolveError: ``best`` moved away from a generation's parent while its verdict was
            being written (another writer); nothing is overwritten.
        RunFileError: a run file is unreadable.
    """
    store, notes = recorder.store, []
    legacy = state.finished is None
    records = {rec.gen: rec for rec in store.gens()}
    rebuilt = set()
    for gen in range(1, state.generations + 1):  # a record deleted (it was damaged): git may know it
        if gen not in records and (found := lineage.verdict_of(gen)) is not None:
            records[gen] = record_from_git(gen, *found, lineage)
            rebuilt.add(gen)
            notes.append(f"generation {gen}: its record was missing and is rebuilt from its verdict commit")
    for rec in sorted(records.values(), key=lambda r: r.gen):
        if rec.status == "running":
            found = lineage.verdict_of(rec.gen)
            if found is None:
                lineage.drop_worktrees(rec.gen)  # never reached its verdict commit: redone from the start
                state.generations = rec.gen - 1
                notes.append(f"generation {rec.gen} was interrupted at {rec.step}: it is redone")
                break
            if rec.pending is None:  # written before records held the pending verdict: git's trailers
                from_git = record_from_git(rec.gen, *found, lineage)
                rec = rec.model_copy(update={k: getattr(from_git, k) for k in VERDICT_FIELDS})
            rec.verdict_commit, rec.status = found[0], found[1]["Evolve-Verdict"]
            if rec.status == "accepted" and lineage.sha(lineage.refs.best) != rec.verdict_commit:
                lineage.move_best(rec.verdict_commit, rec.best_before or rec.parent)
            notes.append(f"generation {rec.gen}: its {rec.status} verdict was in git; its record is completed")
            recorder.finish(state, rec)
        elif rec.gen in rebuilt or (not legacy and rec.gen > state.finished):
            notes.append(f"generation {rec.gen}: its lesson, event and cost are completed")
            recorder.finish(state, rec)
        else:
            recorder.lesson(rec)
        if rec.status == "rejected" and not keep_rejected and not rec.stone:
            lineage.delete_branch(rec.gen)
        state.generations = rec.gen
    if legacy:
        state.finished = state.generations
    best = lineage.sha(lineage.refs.best)
    if best and best != state.best:
        notes.append(f"the accepted head is {best[:10]} in git (the state said {state.best[:10]})")
        state.best, state.best_rate = best, _rate_of(best, store.gens(), state)
    recorder.save(state)
    return notes


def node_of(rec: GenerationRecord, run_id: str) -> archive.Node:
    """The archive node of the final generation ``rec``."""
    commit = rec.verdict_commit or rec.candidate
    return archive.Node(gen=rec.gen, commit=commit, cand=rec.cand, parent=rec.parent, parent_gen=rec.parent_gen,
                        parent_cand=rec.parent_cand,
                        branch=f"evolve/{run_id}/g{rec.gen:03d}" if commit else None, status=rec.status,
                        stone=rec.stone, rate=rec.child_rate, delta=rec.delta, p_value=rec.p_value,
                        p_worse=rec.p_worse, hypothesis=rec.hypothesis, category=rec.category,
                        outcomes=rec.outcomes, task_runs=rec.task_runs, cost_usd=rec.cost_usd)


def lost_nodes(rec: GenerationRecord, run_id: str) -> list[archive.Node]:
    """The archive nodes of a K > 1 generation's other candidates (``lost``), from ``rec.candidates``;
    their cost is in the generation's node (one spend for the whole generation)."""
    return [archive.Node(gen=rec.gen, cand=c.cand, lost=True, commit=c.candidate, parent=rec.parent,
                         parent_gen=rec.parent_gen, parent_cand=rec.parent_cand,
                         branch=f"evolve/{run_id}/g{rec.gen:03d}-c{c.cand}"
                         if c.candidate else None, status=c.status, stone=c.stone, rate=c.child_rate,
                         delta=c.delta, p_value=c.p_value, p_worse=c.p_worse, hypothesis=c.hypothesis,
                         category=c.category, outcomes=c.outcomes, task_runs=c.task_runs)
            for c in rec.candidates if c.cand != rec.cand]


def record_from_git(gen: int, sha: str, trailers: dict[str, str], lineage: Lineage) -> GenerationRecord:
    """A final record rebuilt from generation ``gen``'s verdict commit ``sha`` and its trailers
    (``evolve.lineage.verdict_trailers``); with K > 1 its candidates, own candidate and winner too
    (``candidates_from_git``). What git does not hold (costs, integrity counts, outcomes; a K = 1
    plan's files) is left empty and ``reason`` says so."""
    def rate(key: str) -> float | None:
        try:
            return float(trailers[key])
        except (KeyError, ValueError):
            return None

    def ids(key: str) -> list[str]:
        value = trailers.get(key, "-")
        return [] if value == "-" else [i.strip() for i in value.split(",") if i.strip()]

    low, _, high = trailers.get("Evolve-CI", "").strip("[]").partition(",")
    candidates, cand, winner = candidates_from_git(gen, trailers, lineage)
    own = next((c for c in candidates if c.cand == cand), None)
    return GenerationRecord(
        gen=gen, parent=trailers.get("Evolve-Parent", ""), status=trailers["Evolve-Verdict"], step="decide",
        candidate=lineage.sha(f"{sha}^"), verdict_commit=sha, hypothesis=trailers.get("Evolve-Hypothesis", ""),
        reason="record rebuilt from the verdict commit's trailers", parent_rate=rate("Evolve-Parent-Score"),
        child_rate=rate("Evolve-Child-Score"), delta=rate("Evolve-Delta"), p_value=rate("Evolve-P-Value"),
        ci_low=float(low) if low.strip() else None, ci_high=float(high) if high.strip() else None,
        n_tasks=int(trailers.get("Evolve-Tasks", "0") or 0), fixed=ids("Evolve-Fixed"), broken=ids("Evolve-Broken"),
        decision=f"{trailers['Evolve-Decision']} by {trailers.get('Evolve-Decided-By', '?')}" + (
            f": {trailers['Evolve-Reason']}" if trailers.get("Evolve-Reason", "-") != "-" else "")
        if "Evolve-Decision" in trailers else "",
        candidates=candidates, cand=cand, winner=winner, stone=bool(own and own.stone),
        files=own.files if own else [], category=own.category if own else "")


def candidates_from_git(gen: int, trailers: dict[str, str], lineage: Lineage
                        ) -> tuple[list[CandidateRecord], int | None, int | None]:
    """(candidates, the generation's own candidate, the winner) of a K > 1 generation, from its verdict
    commit's trailers (``evolve.lineage.candidates_trailers``). A verdict written before those trailers
    existed: the candidates whose ``gNNN-cJ`` branches remain (the others' are gone), as ``rejected``
    (what a kept lost candidate is), hypotheses from their commits' subjects, the own candidate and the
    winner unknown. ``([], None, None)`` for K = 1."""
    def number(value: str | None) -> int | None:
        return int(value) if value and value.isdigit() else None

    def text(key: str) -> str:
        value = trailers.get(key, "-")
        return "" if value == "-" else value

    why = "rebuilt from the verdict commit's trailers (its reason and outcomes are not in git)"
    out = []
    if "Evolve-Candidate" in trailers:
        for key, value in trailers.items():
            n = number(key.removeprefix("Evolve-C"))
            if n is None or not value.split():
                continue
            words = value.split()
            fields = dict(w.split("=", 1) for w in words[1:] if "=" in w)
            out.append(CandidateRecord(
                cand=n, status=words[0], stone="stone" in words[1:], candidate=fields.get("commit"),
                child_rate=_float(fields.get("rate")), delta=_float(fields.get("delta")),
                p_value=_float(fields.get("p")), category=text(f"Evolve-C{n}-Aim"),
                hypothesis=text(f"Evolve-C{n}-Hypothesis"),
                files=[f.strip() for f in text(f"Evolve-C{n}-Files").split(",") if f.strip()], reason=why))
        return sorted(out, key=lambda c: c.cand), number(trailers["Evolve-Candidate"]), \
            number(trailers.get("Evolve-Winner"))
    prefix = lineage.refs.gen(gen) + "-c"
    for ref in lineage.repo.git("for-each-ref", "--format=%(refname)", prefix + "*").splitlines():
        if ref.removeprefix(prefix).isdigit():
            sha = lineage.sha(ref)
            out.append(CandidateRecord(cand=int(ref.removeprefix(prefix)), status="rejected", candidate=sha,
                                       hypothesis=lineage.repo.git("log", "-1", "--format=%s", sha, "--"),
                                       reason="rebuilt from its branch (a verdict commit from before candidates "
                                              "were recorded in git)"))
    return sorted(out, key=lambda c: c.cand), None, None


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _rate_of(best: str, gens: list[GenerationRecord], state: RunState) -> float | None:
    if best == state.base:
        return state.baseline_rate
    for rec in gens:
        if rec.verdict_commit == best:
            return rec.child_rate
    return state.best_rate
