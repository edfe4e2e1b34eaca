"""The evolution loop: one generation = analyze -> plan -> patch -> evaluate and decide.

    run():
        lock the repo's runs folder; open a new run, or resume one (reconciled with git)
        evaluate the accepted head (baseline) on the search split
        until a stop condition:
            generation():
                0. parent    the accepted head (search.parent: greedy) or a stepping stone of
                             the archive (dgm; evolve.search.parents)
                1. analyze   the parent's failures (optimizer)
                   with search.candidates K > 1, steps 2-4 are a race of K candidates, one per
                   failure category of the analysis (evolve.search.generation)
                2. plan      one change: hypothesis, files, expected effect (optimizer)
                3. patch     the harness in the candidate's worktree (optimizer, SEARCH/REPLACE;
                             or a coding agent in a sandbox, optimizer.patch: agent)
                   check     it compiles and runs one smoke task
                4. evaluate  paired with the parent on the same search tasks; re-run
                             discordant tasks; a parent other than the accepted head must
                             then also beat the accepted head, paired
                   decide    accept (best advances) or roll back; a stepping stone or not
                record, archive node, lesson, event, state: in that order (evolve.recorder)
        held-out check: baseline and best on the sealed holdout split (evolve.holdout)

Evaluation goes through an ``evolve.evaluator.Evaluator``: ``DockerEvaluator`` by default,
any other (tests) when given. Each step returns its outcome or raises ``GenerationFailed``.
Nothing here touches the user's checked-out branch or work tree: candidates live in
worktrees (evolve.lineage). Evaluations and optimizer replies are cached, so a resumed
run repeats none of them, and a killed generation is redone to the same verdict.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Literal

from evolve import lessons as lessons_log
from evolve.acceptance import Verdict, run_acceptance
from evolve.analyze import Analysis, analyze, collect_failures
from evolve.config import ProjectConfig
from evolve.errors import (ContextWindowError, EvalSetError, EvolveError, HarnessError, InfraError, ModelError,
                           PlanError, RequestError, StopRun, UpstreamError)
from evolve.evaluate import EvalProgress, EvalReport
from evolve.evaluator import DockerEvaluator, Evaluator
from evolve.harness import Harness, resolve_harness
from evolve.holdout import holdout
from evolve.leakage import added_lines, task_leaks
from evolve.lineage import Lineage, candidate_trailers, label, verdict_trailers
from evolve.optimizer import Optimizer
from evolve.patch import patch
from evolve.patch_agent import PatchAgent, PatchContext, hidden_paths
from evolve.plan import Plan, plan
from evolve.recorder import Recorder, kill_point, reconcile
from evolve.runstate import GenerationRecord, RunLock, RunState, RunStore
from evolve.search import archive
from evolve.search.generation import race_generation
from evolve.search.parents import choose_parent
from evolve.store import atomic_write, new_run_id, now_iso, remove_orphans
from evolve.types import IntegrityFlag, Task, TaskResult

__all__ = ["GenerationFailed", "Loop", "LoopSettings", "Meter", "RunView", "StopRun", "flag_counts",
           "new_tampering"]


def new_tampering(parent_results: Iterable[TaskResult], child_results: Iterable[TaskResult]) -> list[str]:
    """The child's tampering that the parent did not do: for each task where the child raised a flag
    of ``TAMPERING_FLAGS`` that none of the parent's results for the same task raised, one
    ``"instance_id: flag, flag"``, sorted by instance_id. A candidate with any is rejected."""
    parent: dict[str, set[IntegrityFlag]] = {}
    for r in parent_results:
        parent.setdefault(r.instance_id, set()).update(r.tampering)
    new: dict[str, set[IntegrityFlag]] = {}
    for r in child_results:
        extra = set(r.tampering) - parent.get(r.instance_id, set())
        if extra:
            new.setdefault(r.instance_id, set()).update(extra)
    return [f"{iid}: {', '.join(f.value for f in IntegrityFlag if f in flags)}" for iid, flags in sorted(new.items())]


def flag_counts(results: Iterable[TaskResult]) -> tuple[int, dict[str, int]]:
    """(tasks with any integrity flag, ``{flag: tasks raising it}``), each instance_id counted once."""
    by_task: dict[str, set[IntegrityFlag]] = {}
    for r in results:
        if r.integrity_flags:
            by_task.setdefault(r.instance_id, set()).update(r.integrity_flags)
    counts = {f.value: sum(f in flags for flags in by_task.values()) for f in IntegrityFlag}
    return len(by_task), {k: n for k, n in counts.items() if n}


class RunView:
    """What the loop reports as it goes. This base class shows nothing (tests, --quiet)."""

    def step(self, state: RunState, gen: int, step: str) -> None:
        pass

    def eval_progress(self, label: str, total: int) -> EvalProgress | None:
        return None

    def eval_round(self, parts: list[tuple[str, int]]) -> AbstractContextManager:
        """While the returned context lasts, the evaluations ``parts`` (``(label, task-runs)``) run at
        once (a race round, ``Loop._evaluate_many``); a view may show them as one."""
        return nullcontext()

    def verdict(self, state: RunState, rec: GenerationRecord) -> None:
        pass

    def note(self, text: str) -> None:
        pass


@dataclass
class LoopSettings:
    """Resolved models and output places for one ``evolve run``."""

    solver_model: str
    solver_params: dict = field(default_factory=dict)
    optimizer_params: dict = field(default_factory=dict)
    runs_dir: Path = Path("runs")
    workers: int | None = None
    """Evaluation workers; None means ``evals.workers`` (already capped by any server's concurrency)."""


class GenerationFailed(EvolveError):
    """A step ends its generation: ``status`` is ``failed`` (it could not be done) or ``refused``
    (the change is not allowed); ``reason`` says why, for the record and the lessons."""

    def __init__(self, status: Literal["failed", "refused"], reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


class Meter:
    """The run's fresh spend in USD: solver evaluations (``EvalReport.fresh_usage``) plus optimizer
    calls. Every cost the loop counts passes through here."""

    def __init__(self) -> None:
        self.solver_usd = 0.0
        self.optimizer: Optimizer | None = None

    def total(self) -> float:
        """USD spent by this process so far (cached results and replies cost nothing)."""
        return self.solver_usd + (self.optimizer.usage.cost_usd if self.optimizer else 0.0)

    def evaluated(self, report: EvalReport) -> EvalReport:
        """Count ``report``'s fresh solver spend; returns the report."""
        self.solver_usd += report.fresh_usage.cost_usd
        return report


class Loop:
    """One ``evolve run`` on the repository at ``repo_root``. The constructor does no I/O;
    ``open()`` (called by ``run()``) loads and creates what the run needs.

    Args:
        cfg: the validated ``evolve.yaml``.
        settings: solver model and output places.
        optimizer_backend: the optimizer model's backend (``evolve.models.backend_for``); None
            when only the held-out check runs.
        run_id: an existing run to resume, or None for a new one.
        view: what the user sees; the base ``RunView`` shows nothing.
        evaluator: evaluates harnesses; None builds ``DockerEvaluator.for_project`` at ``open()``.
    """

    def __init__(self, cfg: ProjectConfig, repo_root: Path, settings: LoopSettings, optimizer_backend=None,
                 *, run_id: str | None = None, view: RunView | None = None,
                 evaluator: Evaluator | None = None) -> None:
        self.cfg, self.settings, self.view = cfg, settings, view or RunView()
        self.requested_root, self.optimizer_backend, self.evaluator = repo_root, optimizer_backend, evaluator
        self.resume = run_id is not None
        self.run_id = run_id or new_run_id("run")
        self.store = RunStore(settings.runs_dir, self.run_id)
        self.recorder = Recorder(self.store, self.view)
        self.harness_dir = cfg.harness.strip("/")
        self.meter = Meter()
        self.optimizer: Optimizer | None = None
        self.patch_agent: PatchAgent | None = None
        self.lineage: Lineage | None = None
        self.started = time.monotonic()
        self._cost = lambda: 0.0

    # -- the run, top to bottom -----------------------------------------------------

    def run(self, *, generations: int | None = None) -> RunState:
        """Run generations until a stop condition, then the held-out check; returns the final state.

        Raises:
            KeyboardInterrupt: after saving the state; the generation in progress is redone on resume.
            ModelError: a model cannot be called at all.
            StopRun: the optimizer is unreachable.
            RunFileError: the run's files cannot be read or written.
        """
        limit = generations if generations is not None else self.cfg.budget.generations
        with RunLock(self.settings.runs_dir):
            state = self.open()
            try:
                mark = self.meter.total()
                self.view.step(state, state.generations, "baseline")
                best = self._evaluate(self._harness(state.best), self.search_ids, 0, "baseline")
                state.spent_usd += self.meter.total() - mark
                if state.baseline_rate is None:
                    state.baseline_rate = best.resolve_rate
                state.best_rate = best.resolve_rate
                self.recorder.save(state)
                archive.append_once(self.store.dir, archive.Node(
                    gen=0, commit=state.base, branch=f"evolve/{self.run_id}/base", status="base", stone=True,
                    rate=state.baseline_rate))
                while (reason := self._stop_reason(state, limit)) is None:
                    self.generation(state)
                state.status, state.stop_reason = "stopped", reason
                self.recorder.event("stop", reason=reason)
                self.recorder.save(state)
                holdout(self, state)
            except KeyboardInterrupt:
                state.status, state.stop_reason = "interrupted", "interrupted (Ctrl-C or SIGTERM)"
                self.recorder.event("interrupted")
                raise
            except (ModelError, StopRun) as e:
                state.status, state.stop_reason = "failed", str(e)
                self.recorder.event("failed", error=str(e))
                raise
            finally:
                self.recorder.save(state)
        return state

    def generation(self, state: RunState) -> GenerationRecord:
        """One generation; ends with a final record (accepted, rejected, refused or failed), or,
        when interrupted (Ctrl-C, SIGTERM, a model that cannot be called), with a running record
        that a resumed run redoes.

        Raises:
            StopRun: after the record is final, when the optimizer is unreachable.
        """
        gen = state.generations + 1
        earlier = self.store.gen(gen)  # a redo after a resume: the spend of the killed attempt still counts
        (parent_gen, parent_cand), parent, explore_from = self._start(state, gen)
        rec = GenerationRecord(gen=gen, parent=parent, parent_gen=parent_gen, parent_cand=parent_cand,
                               best_before=state.best,
                               explore_from=explore_from,
                               cost_usd=earlier.cost_usd if earlier else 0.0)
        self.recorder.begin(state, rec)
        t0, mark, carried, stop = time.monotonic(), self.meter.total(), rec.cost_usd, None
        self._cost = lambda: carried + self.meter.total() - mark
        try:
            self._steps(state, rec)
        except GenerationFailed as e:
            rec.status, rec.reason = e.status, e.reason
        except (PlanError, HarnessError, ContextWindowError, RequestError) as e:
            rec.status, rec.reason = "failed", f"{type(e).__name__}: {e}"
        except InfraError as e:
            rec.status, rec.reason = "failed", f"infrastructure failure, not the candidate's: {e}"
        except UpstreamError as e:
            rec.status, rec.reason = "failed", f"optimizer unreachable: {e}"
            stop = StopRun(f"the optimizer model is unreachable: {e}")
        except BaseException:
            rec.cost_usd = self._cost()  # a pending verdict stays: resume completes it from git
            self.recorder.running(rec)
            raise
        finally:
            self.lineage.drop_worktrees(gen)
        rec.cost_usd, rec.seconds, rec.finished = self._cost(), time.monotonic() - t0, now_iso()
        self.recorder.finish(state, rec)
        if rec.status == "rejected" and not self.cfg.acceptance.keep_rejected and not rec.stone:
            self.lineage.delete_branch(gen)
        if stop is not None:
            raise stop from None
        return rec

    def _steps(self, state: RunState, rec: GenerationRecord) -> None:
        """The generation's steps from ``rec.parent``; each returns its outcome or raises ``GenerationFailed``."""
        gen = rec.gen
        parent_h = self._harness(rec.parent)
        parent_report = self._evaluate(parent_h, self.search_ids, 0, f"g{gen:03d}-parent")

        self._step(state, rec, "analyze")
        analysis = self._analyze(gen, parent_report)
        if self.cfg.search.candidates > 1:  # K candidates raced (evolve.search.generation)
            return race_generation(self, state, rec, parent_h, parent_report, analysis)

        self._step(state, rec, "plan")
        files = self.lineage.tree_files(rec.parent, self.harness_dir)
        the_plan = self._plan(analysis.text, files, state.best_rate if rec.parent == state.best
                              else parent_report.resolve_rate)
        rec.hypothesis, rec.files, rec.expected_effect = the_plan.hypothesis, the_plan.files, the_plan.expected_effect

        self._step(state, rec, "patch")
        rec.candidate = self._patch(gen, the_plan, files, parent=rec.parent,
                                    context=lambda: self._patch_context(analysis.text, parent_report))

        self._step(state, rec, "check")
        child_h = self._harness(rec.candidate)
        self._check(child_h, parent_report, gen)

        self._step(state, rec, "evaluate")
        verdict, seen = self._compare(parent_h, child_h, gen)
        rec.flagged_tasks, rec.integrity_flags = flag_counts(seen["child"])
        rec.tampering = new_tampering(seen["parent"], seen["child"])
        rec.p_worse, rec.outcomes = archive.p_worse(verdict.records), archive.outcomes_of(verdict.records)
        if rec.parent != state.best and rec.explore_from == "best":  # a stepping stone's child
            verdict, seen_best = self._against_best(state, child_h, gen, verdict)
            if seen_best:  # tampering the accepted head did not do counts too
                extra = new_tampering(seen_best["parent"], seen_best["child"])
                rec.tampering = sorted(set(rec.tampering) | set(extra))

        self._step(state, rec, "decide")
        self._decide(state, rec, verdict)

    # -- the steps ----------------------------------------------------------------------

    def _analyze(self, gen: int, parent_report: EvalReport) -> Analysis:
        """The optimizer's failure analysis of the parent's search results (its text also saved as analysis/gNNN.md)."""
        result = analyze(self._optimizer(), self._failures(parent_report))
        atomic_write(self.store.dir / f"analysis/g{gen:03d}.md", result.text)
        return result

    def _failures(self, parent_report: EvalReport) -> list:
        """The parent's failed search tasks, cut for the optimizer (``evolve.analyze.collect_failures``)."""
        entries = {r.instance_id: d for r in parent_report.results if (d := self.evaluator.result_dir(r)) is not None}
        tasks = {t.instance_id: t for t in self.evalset.tasks(self.cfg.evals.search)}
        return collect_failures(parent_report.results, entries, tasks)

    def _plan(self, analysis: str, files: dict[str, str], score: float | None, aim: dict | None = None) -> Plan:
        """One change to make, seeing the analysis, the harness and the most relevant lessons; with
        ``aim``, aimed at that failure category (``evolve.plan.plan``)."""
        history = lessons_log.load(self.store.lessons_path)
        return plan(self._optimizer(), analysis=analysis, files=files, lessons=lessons_log.relevant(history, analysis),
                    harness_dir=self.harness_dir, score=score or 0.0, aim=aim)

    def _patch(self, gen: int, the_plan: Plan, files: dict[str, str], *, parent: str,
               context: Callable[[], PatchContext], cand: int | None = None) -> str:
        """The candidate commit holding the plan's edits (``cand``: candidate J of K, on ``gNNN-cJ``):
        the optimizer's SEARCH/REPLACE reply (``optimizer.patch: blocks``) or a coding agent's
        model_patch (``agent``; ``context()`` gives what it reads, ``evolve.patch_agent``).

        Raises:
            GenerationFailed: no edit applied (failed), or edits refused or carrying eval-set data (refused).
        """
        worktree = self.lineage.worktree(gen, parent, cand)
        if self.patch_agent is not None:
            outcome = self.patch_agent.patch(gen, the_plan, context(), parent=parent,
                                             parent_harness=self._harness(parent), worktree=worktree,
                                             label=label(gen, cand))
        else:
            outcome = patch(self._optimizer(), the_plan, worktree=worktree, harness_dir=self.harness_dir,
                            files=files, protected=self.cfg.protected_paths)
        if not outcome.changed_files:
            if outcome.refused:
                raise GenerationFailed("refused", "edits refused: " + "; ".join(outcome.refused)[:500])
            raise GenerationFailed("failed", "no edit applied: " + (outcome.feedback[-1][:500]
                                                                   if outcome.feedback else "empty reply"))
        candidate = self.lineage.commit_candidate(gen, worktree, the_plan.hypothesis, candidate_trailers(
            self.run_id, gen, parent, outcome.changed_files))
        if candidate is None:
            raise GenerationFailed("failed", "no edit applied: the edits left the harness unchanged")
        leaks = task_leaks(added_lines(files, self.lineage.tree_files(candidate, self.harness_dir)), self._all_tasks())
        if leaks:
            raise GenerationFailed("refused", "the change carries eval-set data, which would raise the score "
                                              "without improving the harness: " + "; ".join(leaks)[:500])
        return candidate

    def _patch_context(self, analysis: str, parent_report: EvalReport) -> PatchContext:
        """What the patch agent reads: the analysis, the parent's failed tasks, the relevant lessons."""
        history = lessons_log.load(self.store.lessons_path)
        return PatchContext(analysis=analysis, failures=self._failures(parent_report),
                            lessons=lessons_log.relevant(history, analysis))

    def _check(self, child: Harness, parent_report: EvalReport, gen: int, cand: int | None = None) -> None:
        """The candidate must compile and run one smoke task cleanly.

        Raises:
            GenerationFailed: it does not compile, or its harness failed on the smoke task.
        """
        error = self.evaluator.compile(child)
        if error:
            raise GenerationFailed("failed", f"does not compile: {error}")
        solved = [r.instance_id for r in parent_report.results if r.resolved]
        smoke = (solved or self.search_ids)[0]
        (result,) = self._evaluate(child, [smoke], 0, f"{label(gen, cand)}-smoke").results
        if result.is_infra:
            return  # not the candidate's fault; the full evaluation will retry
        if result.harness_timed_out or result.harness_exit_code != 0:
            timed_out = " (timed out)" if result.harness_timed_out else ""
            raise GenerationFailed("failed", f"smoke task {smoke} failed: harness exit code "
                                             f"{result.harness_exit_code}{timed_out}")

    def _compare(self, parent: Harness, child: Harness, gen: int,
                 who: str = "parent") -> tuple[Verdict, dict[str, list[TaskResult]]]:
        """The paired comparison (``run_acceptance``) and every result it saw, by side; ``who`` names
        the parent side in evaluation labels (``parent``, or ``best`` for the accepted head)."""
        harnesses = {"parent": parent, "child": child}
        names = {"parent": who, "child": "child"}
        seen: dict[str, list[TaskResult]] = {"parent": [], "child": []}

        def evaluate(side: str, ids: list[str], repeat: int) -> dict[str, bool | None]:
            report = self._evaluate(harnesses[side], ids, repeat, f"g{gen:03d}-{names[side]}-r{repeat}")
            seen[side].extend(report.results)
            return {r.instance_id: None if r.is_infra else r.resolved for r in report.results}

        acc = self.cfg.acceptance
        return run_acceptance(evaluate, self.search_ids, acc, stages=acc.stages, futility_z=acc.futility_z), seen

    def _against_best(self, state: RunState, child: Harness, gen: int,
                      v: Verdict) -> tuple[Verdict, dict[str, list[TaskResult]]]:
        """A candidate made from a stepping stone moves ``best`` only if it also beats the accepted head,
        paired on the same tasks (the child's runs are cached, so mostly the head's are new). ``v`` is
        its verdict against its parent: a child that does not beat its parent is not tried (then the
        results seen are empty). Returns the deciding verdict and the results of the second comparison."""
        if not v.accepted:
            return replace(v, reason=f"{v.reason}; against its parent, a stepping stone: the accepted head "
                                     "was not tried"), {}
        against, seen = self._compare(self._harness(state.best), child, gen, who="best")
        return replace(against, reason=f"against the accepted head: {against.reason} "
                                       f"(it beat its parent: {v.reason})"), seen

    def _start(self, state: RunState, gen: int) -> tuple[tuple[int | None, int | None], str,
                                                          Literal["best", "pending"]]:
        """((generation, lost candidate or None), commit, which) the next candidate branches from: with ``approval: manual`` and
        ``approval_explore: pending``, the latest candidate still waiting for a person; otherwise the
        parent ``search.parent`` picks (``_parent``)."""
        acc = self.cfg.acceptance
        if acc.approval == "manual" and acc.approval_explore == "pending":
            waiting = [g for g in self.store.gens() if g.status == "pending" and g.verdict_commit]
            if waiting:
                return (waiting[-1].gen, None), waiting[-1].verdict_commit, "pending"
        return (*self._parent(state, gen), "best")

    def _decide(self, state: RunState, rec: GenerationRecord, v: Verdict) -> None:
        """Record the verdict, then write it to git: a verdict commit, and ``best`` moved on accept.
        With ``acceptance.approval: manual`` a passing candidate is ``pending`` instead: its verdict
        commit is written and ``best`` stays (``evolve approve`` moves it). The decided record is saved
        before git changes, so a resumed run can complete it from git."""
        if rec.tampering:  # whatever the scores say
            v = replace(v, accepted=False, reason=f"rejected: tampering its parent did not do on the same tasks "
                                                  f"({'; '.join(rec.tampering)}); the paired test: {v.reason}")
        rec.parent_rate, rec.child_rate, rec.delta = v.parent_rate, v.child_rate, v.delta
        rec.ci_low, rec.ci_high, rec.p_value, rec.task_runs = v.ci_low, v.ci_high, v.p_value, v.task_runs
        rec.fixed, rec.broken, rec.reason, rec.n_tasks = list(v.fixed), list(v.broken), v.reason, v.n_tasks
        passed = "pending" if self.cfg.acceptance.approval == "manual" else "accepted"
        rec.pending, rec.cost_usd = (passed if v.accepted else "rejected"), self._cost()
        rec.stone = archive.is_stone(rec.pending, rec.p_worse, 1 - self.cfg.acceptance.confidence,
                                     bool(rec.tampering))
        self.recorder.running(rec)
        rec.verdict_commit = self.lineage.commit_verdict(
            rec.gen, f"evolve: {rec.pending} g{rec.gen:03d}: {rec.hypothesis}", verdict_trailers(self.run_id, rec))
        kill_point("verdict-committed", rec.gen)
        if rec.pending == "accepted":
            self.lineage.move_best(rec.verdict_commit, state.best)
            kill_point("best-moved", rec.gen)
            self.recorder.event("accept", gen=rec.gen, best=rec.verdict_commit, delta=v.delta)
        elif rec.pending == "pending":
            self.recorder.event("pending", gen=rec.gen, candidate=rec.verdict_commit, delta=v.delta)
        else:
            self.recorder.event("reject", gen=rec.gen, delta=v.delta, reason=v.reason)
        rec.status = rec.pending

    # -- opening the run, pieces ----------------------------------------------------------

    def open(self) -> RunState:
        """Load the eval set, open the repository, and create the run, or resume it: its files are
        reconciled with git (``evolve.recorder.reconcile``) and an interrupted generation is redone.

        Raises:
            HarnessError: no committed harness at HEAD (new run).
            ConfigError: no such run (resume), or the eval set or a split is missing.
            RunFileError: the run's files are unreadable or cannot be written.
        """
        self._prepare()
        if not self.resume:
            return self._create()
        state = self.store.load()
        remove_orphans(self.store.dir)  # temp files of atomic writes a killed process left
        previous = state.status
        notes = reconcile(state, self.recorder, self.lineage, keep_rejected=self.cfg.acceptance.keep_rejected)
        state.status, state.stop_reason, state.pid = "running", "", os.getpid()
        self.recorder.save(state)
        self.recorder.event("resume", best=state.best, generations=state.generations, previous=previous, notes=notes)
        for note in notes:
            self.view.note(note)
        self.view.note(f"resuming {self.run_id} at generation {state.generations + 1}")
        return state

    def _prepare(self) -> None:
        """Load what the run reads: eval set, repository, optimizer (if a backend was given), evaluator."""
        if self.lineage is not None:
            return
        from evolve.evalsets.registry import load_evalset

        self.evalset = load_evalset(self.cfg.evals.name)
        self.search_ids = self._subset(self.evalset.tasks(self.cfg.evals.search))
        if not self.evalset.tasks(self.cfg.evals.holdout):  # fail now, not after a night, if missing or empty
            raise EvalSetError(f"split {self.cfg.evals.holdout!r} of eval set {self.evalset.name} has no task: the "
                               "held-out check would evaluate 0/0. Give it tasks (e.g. `evolve evals import "
                               "swe-bench FILE --holdout-fraction F`) or name another split in evals.holdout")
        self.lineage = Lineage(self.requested_root, self.run_id, self.store.dir / "worktrees")
        self.repo_root = self.lineage.root
        if self.optimizer_backend is not None:
            self.optimizer = Optimizer(self.optimizer_backend, self.store.dir / "optimizer_trace.jsonl",
                                       self.store.dir / "optimizer_cache", self.settings.optimizer_params)
            self.meter.optimizer = self.optimizer
            if self.cfg.optimizer.patch == "agent":
                hidden = hidden_paths(self.repo_root, self.settings.runs_dir, self.evalset)
                self.patch_agent = PatchAgent(self.cfg, self.optimizer, repo_root=self.repo_root,
                                              run_dir=self.store.dir, run_id=self.run_id, hidden=hidden,
                                              harness_workdir=self.settings.runs_dir / "harnesses")
        if self.evaluator is None:
            self.evaluator = DockerEvaluator.for_project(
                self.cfg, self.evalset, solver_model=self.settings.solver_model,
                solver_params=self.settings.solver_params, runs_dir=self.settings.runs_dir, run_dir=self.store.dir,
                run_id=self.run_id, workers=self.settings.workers, progress=self.view.eval_progress)

    def _create(self) -> RunState:
        base = self.lineage.start("HEAD")
        if not self.lineage.tree_files(base, self.harness_dir):
            raise HarnessError(f"no committed harness in {self.harness_dir}/ at HEAD. Commit it first "
                               "(evolve only evolves committed code; your work tree is never touched).")
        state = RunState(run_id=self.run_id, repo=self.repo_root.name, harness_dir=self.harness_dir,
                         evalset=self.evalset.name, base=base, best=base, pid=os.getpid())
        self.recorder.save(state)
        self.recorder.event("start", base=base, evalset=self.evalset.name, search=len(self.search_ids))
        return state

    def _parent(self, state: RunState, gen: int) -> tuple[tuple[int | None, int | None], str]:
        """((generation, lost candidate or None), commit) of the next candidate's parent
        (``search.parent``; dgm may draw a lost candidate, a stepping stone on ``gNNN-cJ``; the draw is
        seeded with the run and the generation, so a redone generation draws the same). An accepted
        head that is no node of the archive (``evolve rollback --gen`` made it) is the parent,
        generation None."""
        nodes = archive.decided(archive.load(self.store.dir), self.store.gens())
        by_ref = {archive.ref(n): n for n in nodes}
        best_gen = next((n.gen for n in reversed(nodes) if n.commit == state.best and not n.lost), None)
        if best_gen is None:
            return (None, None), state.best
        search = self.cfg.search
        seed = f"{self.run_id if search.seed is None else search.seed}/{gen}"
        chosen = choose_parent(search.parent, nodes, best_gen=best_gen, seed=seed, lam=search.dgm_lambda,
                               midpoint=search.dgm_midpoint)
        if chosen == (best_gen, None) or chosen not in by_ref:
            return (best_gen, None), state.best
        return chosen, by_ref[chosen].commit

    def _stop_reason(self, state: RunState, limit: int | None) -> str | None:
        budget = self.cfg.budget
        if limit is not None and state.generations >= limit:
            return f"reached {limit} generations"
        if budget.budget_usd is not None and state.spent_usd >= budget.budget_usd:
            return f"spent ${state.spent_usd:.2f} of the ${budget.budget_usd:.2f} budget"
        if budget.max_hours is not None and time.monotonic() - self.started >= budget.max_hours * 3600:
            return f"ran {budget.max_hours} hours"
        return None

    def _optimizer(self) -> Optimizer:
        if self.optimizer is None:
            raise EvolveError("this Loop was built without an optimizer backend: it can only run the held-out check")
        return self.optimizer

    def _evaluate(self, harness: Harness, ids: list[str], repeat: int, label: str,
                  split: str | None = None) -> EvalReport:
        return self.meter.evaluated(self.evaluator.evaluate(harness, ids, repeat, label,
                                                            split or self.cfg.evals.search))

    def _evaluate_many(self, requests: list[tuple[Harness, list[str], int, str]]) -> list[EvalReport]:
        """Several search-split evaluations, ``(harness, instance_ids, repeat, label)`` each, at once
        when the evaluator can (``evaluate_many``, e.g. ``DockerEvaluator``), else one after another;
        the reports in the order asked. Errors as ``Evaluator.evaluate``."""
        many = getattr(self.evaluator, "evaluate_many", None)
        if many is None or len(requests) < 2:
            return [self._evaluate(*r) for r in requests]
        with self.view.eval_round([(label, len(ids)) for _, ids, _, label in requests]):
            return [self.meter.evaluated(r) for r in many(requests, self.cfg.evals.search)]

    def _step(self, state: RunState, rec: GenerationRecord, step: str) -> None:
        rec.cost_usd = self._cost()
        self.recorder.step(state, rec, step)

    def _all_tasks(self) -> list[Task]:
        """Every task of the eval set, every split: the holdout's data must not leak in either."""
        return [t for tasks in self.evalset.splits.values() for t in tasks]

    def _harness(self, sha: str) -> Harness:
        return resolve_harness(f"{sha}:{self.harness_dir}", repo=self.repo_root,
                               workdir=self.settings.runs_dir / "harnesses")

    def _subset(self, tasks) -> list[str]:
        ids = sorted(t.instance_id for t in tasks)
        if self.cfg.evals.max_tasks and len(ids) > self.cfg.evals.max_tasks:
            ids = sorted(ids, key=lambda i: hashlib.sha256(i.encode()).hexdigest())[: self.cfg.evals.max_tasks]
        return sorted(ids)
