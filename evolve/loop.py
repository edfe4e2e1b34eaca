"""The evolution loop: one generation = analyze -> plan -> patch -> evaluate and decide.

    run():
        lock the repo's runs folder; open a new run or resume one
        evaluate the accepted head (baseline) on the search split
        until a stop condition:
            generation():
                1. analyze   the accepted harness's failures (optimizer)
                2. plan      one change: hypothesis, files, expected effect (optimizer)
                3. patch     the harness in the candidate's worktree (optimizer, SEARCH/REPLACE)
                   check     it compiles in a sandbox and runs one smoke task
                4. evaluate  paired with the parent on the same search tasks; re-run
                             discordant tasks; accept (best advances) or roll back
                append a lesson; save the record
        held-out check: baseline and best on the sealed holdout split

Nothing here touches the user's checked-out branch or work tree: candidates
live in worktrees (evolve.lineage). Evaluations go through the shared cache,
so a resumed run repeats none of them.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from evolve import lessons as lessons_log
from evolve.acceptance import Verdict, run_acceptance
from evolve.analyze import analyze, collect_failures
from evolve.config import EvalSettings, ProjectConfig
from evolve.errors import EvolveError, HarnessError, InfraError, ModelError
from evolve.evalsets.registry import EvalSet, load_evalset
from evolve.evaluate import EvalReport, Evaluation, Progress
from evolve.harness import Harness, resolve_harness
from evolve.leakage import added_lines, task_leaks
from evolve.lineage import Lineage
from evolve.models import ContextWindowError, RequestError, UpstreamError
from evolve.optimizer import Optimizer
from evolve.patch import patch
from evolve.plan import PlanError, plan
from evolve.runstate import GenerationRecord, RunLock, RunState, RunStore
from evolve.store import Cache, atomic_write, new_run_id, now_iso
from evolve.types import IntegrityFlag, Task, TaskResult


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

    def eval_progress(self, label: str, total: int) -> Progress | None:
        return None

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


class StopRun(EvolveError):
    """Raised inside a generation when the whole run must stop (optimizer unreachable)."""


class Loop:
    """One ``evolve run`` on the repository at ``repo_root``.

    Args:
        cfg: the validated ``evolve.yaml``.
        optimizer_backend: the optimizer model's backend (``evolve.models.backend_for``).
        run_id: an existing run to resume, or None for a new one.
    """

    def __init__(self, cfg: ProjectConfig, repo_root: Path, settings: LoopSettings, optimizer_backend,
                 *, run_id: str | None = None, view: RunView | None = None) -> None:
        self.cfg, self.settings, self.view = cfg, settings, view or RunView()
        self.resume = run_id is not None
        self.run_id = run_id or new_run_id("run")
        self.store = RunStore(settings.runs_dir, self.run_id)
        self.lineage = Lineage(repo_root, self.run_id, self.store.dir / "worktrees")
        self.repo_root = self.lineage.root
        self.harness_dir = cfg.harness.strip("/")
        self.evalset: EvalSet = load_evalset(cfg.evals.name)
        self.search_ids = self._subset(self.evalset.tasks(cfg.evals.search))
        self.evalset.tasks(cfg.evals.holdout)  # fail now, not after a night, if the split is missing
        self.optimizer = Optimizer(optimizer_backend, self.store.dir / "optimizer_trace.jsonl",
                                   self.store.dir / "optimizer_cache", settings.optimizer_params)
        self.eval_settings = EvalSettings(
            model=settings.solver_model, model_params=settings.solver_params,
            harness_timeout_s=cfg.evals.harness_timeout_s, test_timeout_s=cfg.evals.test_timeout_s,
            limits=cfg.limits, sandbox=cfg.sandbox)
        self.workers = settings.workers or cfg.evals.workers
        self.cache = Cache(settings.runs_dir / "cache")  # shared with `evolve eval`: nothing is evaluated twice
        self.started = time.monotonic()

    # -- the run, top to bottom -----------------------------------------------------

    def run(self, *, generations: int | None = None) -> RunState:
        """Run generations until a stop condition; returns the final state.

        Raises:
            KeyboardInterrupt: after saving the state (resume continues from there).
            ModelError: a model cannot be called at all.
        """
        limit = generations if generations is not None else self.cfg.budget.generations
        with RunLock(self.settings.runs_dir):
            state = self._open()
            try:
                best = self._evaluate_best(state, label="baseline")
                if state.baseline_rate is None:
                    state.baseline_rate = best.resolve_rate
                state.best_rate = best.resolve_rate
                self.store.save(state)
                while (reason := self._stop_reason(state, limit)) is None:
                    self.generation(state)
                state.status, state.stop_reason = "stopped", reason
                self.store.event("stop", reason=reason)
                self.store.save(state)
                self.holdout(state)
            except KeyboardInterrupt:
                state.status, state.stop_reason = "interrupted", "interrupted (Ctrl-C or SIGTERM)"
                self.store.event("interrupted")
                raise
            except (ModelError, StopRun) as e:
                state.status, state.stop_reason = "failed", str(e)
                self.store.event("failed", error=str(e))
                raise
            finally:
                self.store.save(state)
        return state

    def generation(self, state: RunState) -> GenerationRecord:
        """One generation; always ends with a record (accepted, rejected, refused or failed)."""
        gen = state.generations + 1
        rec = GenerationRecord(gen=gen, parent=state.best)
        state.generations = gen
        self.store.save(state)
        self.store.save_gen(rec)
        self.store.event("generation_start", gen=gen, parent=state.best)
        t0, spent0 = time.monotonic(), self.optimizer.usage.cost_usd
        solver_spent = [0.0]
        try:
            self._generation_steps(state, rec, solver_spent)
        except (PlanError, HarnessError, ContextWindowError, RequestError) as e:
            rec.status, rec.reason = "failed", f"{type(e).__name__}: {e}"
        except InfraError as e:
            rec.status, rec.reason = "failed", f"infrastructure failure, not the candidate's: {e}"
        except UpstreamError as e:
            rec.status, rec.reason = "failed", f"optimizer unreachable: {e}"
            raise StopRun(f"the optimizer model is unreachable: {e}") from None
        finally:
            if rec.status == "running" and rec.reason == "":
                rec.status, rec.reason = "failed", "interrupted"
            self.lineage.drop_worktree(gen)
            rec.cost_usd = self.optimizer.usage.cost_usd - spent0 + solver_spent[0]
            rec.seconds = time.monotonic() - t0
            rec.finished = now_iso()
            state.spent_usd += rec.cost_usd
            if rec.reason != "interrupted":
                self._finish(state, rec)
            self.store.save_gen(rec)
            self.store.save(state)
        return rec

    def _generation_steps(self, state: RunState, rec: GenerationRecord, solver_spent: list[float]) -> None:
        gen = rec.gen
        parent_h = self._harness(state.best)
        best_report = self._evaluate(parent_h, self.search_ids, 0, f"g{gen:03d}-parent")
        solver_spent[0] += best_report.fresh_usage.cost_usd

        self._step(state, rec, "analyze")
        entries = {r.instance_id: self._entry(r) for r in best_report.results}
        tasks = {t.instance_id: t for t in self.evalset.tasks(self.cfg.evals.search)}
        analysis = analyze(self.optimizer, collect_failures(best_report.results, entries, tasks))
        self._write(f"analysis/g{gen:03d}.md", analysis.text)

        self._step(state, rec, "plan")
        files = self.lineage.tree_files(state.best, self.harness_dir)
        history = lessons_log.load(self.store.lessons_path)
        the_plan = plan(self.optimizer, analysis=analysis.text, files=files,
                        lessons=lessons_log.relevant(history, analysis.text),
                        harness_dir=self.harness_dir, score=state.best_rate or 0.0)
        rec.hypothesis, rec.files, rec.expected_effect = the_plan.hypothesis, the_plan.files, the_plan.expected_effect

        self._step(state, rec, "patch")
        worktree = self.lineage.worktree(gen)
        outcome = patch(self.optimizer, the_plan, worktree=worktree, harness_dir=self.harness_dir, files=files,
                        protected=self.cfg.protected_paths)
        if not outcome.changed_files:
            if outcome.refused:
                rec.status, rec.reason = "refused", "edits refused: " + "; ".join(outcome.refused)[:500]
            else:
                rec.status, rec.reason = "failed", "no edit applied: " + (outcome.feedback[-1][:500]
                                                                         if outcome.feedback else "empty reply")
            return
        rec.candidate = self.lineage.commit_candidate(gen, worktree, the_plan.hypothesis, {
            "Evolve-Run": self.run_id, "Evolve-Generation": str(gen), "Evolve-Parent": state.best,
            "Evolve-Files": ", ".join(outcome.changed_files)})

        leaks = task_leaks(added_lines(files, self.lineage.tree_files(rec.candidate, self.harness_dir)),
                           self._all_tasks())
        if leaks:
            rec.status, rec.reason = "refused", ("the change carries eval-set data, which would raise the score "
                                                 "without improving the harness: " + "; ".join(leaks)[:500])
            return

        self._step(state, rec, "check")
        child_h = self._harness(rec.candidate)
        problem = self._check(child_h, best_report, gen)
        if problem:
            rec.status, rec.reason = "failed", problem
            return

        self._step(state, rec, "evaluate")
        harnesses = {"parent": parent_h, "child": child_h}
        seen: dict[str, list[TaskResult]] = {"parent": [], "child": []}

        def evaluate(who: str, ids: list[str], repeat: int) -> dict[str, bool | None]:
            report = self._evaluate(harnesses[who], ids, repeat, f"g{gen:03d}-{who}-r{repeat}")
            solver_spent[0] += report.fresh_usage.cost_usd
            seen[who].extend(report.results)
            return {r.instance_id: None if r.is_infra else r.resolved for r in report.results}

        verdict = run_acceptance(evaluate, self.search_ids, self.cfg.acceptance)
        rec.flagged_tasks, rec.integrity_flags = flag_counts(seen["child"])
        rec.tampering = new_tampering(seen["parent"], seen["child"])
        self._decide(state, rec, verdict)

    # -- pieces -----------------------------------------------------------------------

    def _decide(self, state: RunState, rec: GenerationRecord, v: Verdict) -> None:
        if rec.tampering:  # whatever the scores say
            v = replace(v, accepted=False, reason=f"rejected: tampering its parent did not do on the same tasks "
                                                  f"({'; '.join(rec.tampering)}); the paired test: {v.reason}")
        rec.parent_rate, rec.child_rate, rec.delta = v.parent_rate, v.child_rate, v.delta
        rec.ci_low, rec.ci_high, rec.p_value, rec.task_runs = v.ci_low, v.ci_high, v.p_value, v.task_runs
        rec.fixed, rec.broken, rec.reason = list(v.fixed), list(v.broken), v.reason
        rec.status = "accepted" if v.accepted else "rejected"
        rec.verdict_commit = self.lineage.commit_verdict(rec.gen, f"evolve: {rec.status} g{rec.gen:03d}: "
                                                                  f"{rec.hypothesis}", {
            "Evolve-Run": self.run_id, "Evolve-Generation": str(rec.gen), "Evolve-Verdict": rec.status,
            "Evolve-Hypothesis": rec.hypothesis, "Evolve-Parent": rec.parent,
            "Evolve-Parent-Score": f"{v.parent_rate:.4f}", "Evolve-Child-Score": f"{v.child_rate:.4f}",
            "Evolve-Delta": f"{v.delta:+.4f}", "Evolve-CI": f"[{v.ci_low:+.4f}, {v.ci_high:+.4f}]",
            "Evolve-P-Value": f"{v.p_value:.4g}", "Evolve-Tasks": str(v.n_tasks),
            "Evolve-Fixed": ", ".join(v.fixed) or "-", "Evolve-Broken": ", ".join(v.broken) or "-"})
        if v.accepted:
            self.lineage.move_best(rec.verdict_commit, state.best)
            state.best, state.best_rate = rec.verdict_commit, v.child_rate
            self.store.event("accept", gen=rec.gen, best=state.best, delta=v.delta)
        else:
            if not self.cfg.acceptance.keep_rejected:
                self.lineage.delete_branch(rec.gen)
            self.store.event("reject", gen=rec.gen, delta=v.delta, reason=v.reason)

    def _finish(self, state: RunState, rec: GenerationRecord) -> None:
        change = f"files: {', '.join(rec.files) or '-'}; expected: {rec.expected_effect}"
        lessons_log.append(self.store.lessons_path, lessons_log.Lesson(
            generation=rec.gen, hypothesis=rec.hypothesis, change=change, outcome=rec.status,
            reason=rec.reason, delta=rec.delta, fixed=rec.fixed, broken=rec.broken))
        self.store.event("generation_end", gen=rec.gen, status=rec.status, reason=rec.reason,
                         cost_usd=rec.cost_usd)
        self.view.verdict(state, rec)

    def _all_tasks(self) -> list[Task]:
        """Every task of the eval set, every split: the holdout's data must not leak in either."""
        return [t for tasks in self.evalset.splits.values() for t in tasks]

    def _check(self, child: Harness, parent_report: EvalReport, gen: int) -> str | None:
        """Why the candidate can't be evaluated, or None: it must compile and run one smoke task cleanly."""
        from evolve.check import compile_in_sandbox

        error = compile_in_sandbox(child, self.run_id, self.cfg.sandbox)
        if error:
            return f"does not compile: {error}"
        solved = [r.instance_id for r in parent_report.results if r.resolved]
        smoke = (solved or self.search_ids)[0]
        (result,) = self._evaluate(child, [smoke], 0, f"g{gen:03d}-smoke").results
        if result.is_infra:
            return None  # not the candidate's fault; the full evaluation will retry
        if result.harness_timed_out or result.harness_exit_code != 0:
            return (f"smoke task {smoke} failed: harness exit code {result.harness_exit_code}"
                    f"{' (timed out)' if result.harness_timed_out else ''}")
        return None

    def holdout(self, state: RunState) -> dict:
        """Evaluate the baseline and the accepted head on the sealed holdout split and record both."""
        split = self.cfg.evals.holdout
        ids = [t.instance_id for t in self.evalset.tasks(split)]
        self.view.step(state, state.generations, "holdout")
        rates = {}
        for who, sha in (("baseline", state.base), ("best", state.best)):
            report = self._evaluate(self._harness(sha), ids, 0, f"holdout-{who}", split=split)
            state.spent_usd += report.fresh_usage.cost_usd
            rates[who] = report.resolve_rate
        state.holdout = {**rates, "n": len(ids), "best_commit": state.best, "at": now_iso()}
        self.store.event("holdout", **state.holdout)
        self.store.save(state)
        return state.holdout

    def _open(self) -> RunState:
        if self.resume:
            state = self.store.load()
            best = self.lineage.sha(self.lineage.refs.best) or state.best
            state.best, state.status, state.stop_reason = best, "running", ""
            for rec in self.store.gens():
                if rec.status == "running":  # died mid-generation: redo it (evaluations are cached)
                    self.lineage.drop_worktree(rec.gen)
                    state.generations = rec.gen - 1
            self.store.event("resume", best=best, generations=state.generations)
            self.view.note(f"resuming {self.run_id} at generation {state.generations + 1}")
            return state
        base = self.lineage.start("HEAD")
        if not self.lineage.tree_files(base, self.harness_dir):
            raise HarnessError(f"no committed harness in {self.harness_dir}/ at HEAD. Commit it first "
                               "(evolve only evolves committed code; your work tree is never touched).")
        state = RunState(run_id=self.run_id, repo=str(self.repo_root), harness_dir=self.harness_dir,
                         evalset=self.evalset.name, base=base, best=base)
        self.store.save(state)
        self.store.event("start", base=base, evalset=self.evalset.name, search=len(self.search_ids))
        return state

    def _stop_reason(self, state: RunState, limit: int | None) -> str | None:
        budget = self.cfg.budget
        if limit is not None and state.generations >= limit:
            return f"reached {limit} generations"
        if budget.budget_usd is not None and state.spent_usd >= budget.budget_usd:
            return f"spent ${state.spent_usd:.2f} of the ${budget.budget_usd:.2f} budget"
        if budget.max_hours is not None and time.monotonic() - self.started >= budget.max_hours * 3600:
            return f"ran {budget.max_hours} hours"
        return None

    def _evaluate_best(self, state: RunState, label: str) -> EvalReport:
        self.view.step(state, state.generations, label)
        report = self._evaluate(self._harness(state.best), self.search_ids, 0, label)
        state.spent_usd += report.fresh_usage.cost_usd
        return report

    def _evaluate(self, harness: Harness, ids: list[str], repeat: int, label: str,
                  split: str | None = None) -> EvalReport:
        ev = Evaluation(evalset=self.evalset, split=split or self.cfg.evals.search, harness=harness,
                        settings=self.eval_settings, runs_dir=self.store.dir / "evals",
                        cache_dir=self.cache.root, workers=self.workers, instance_ids=ids,
                        first_repeat=repeat, run_id=new_run_id(label),
                        progress=self.view.eval_progress(label, len(ids)))
        return ev.run()

    def _harness(self, sha: str) -> Harness:
        return resolve_harness(f"{sha}:{self.harness_dir}", repo=self.repo_root,
                               workdir=self.settings.runs_dir / "harnesses")

    def _entry(self, result) -> Path:
        return self.cache.entry(result.key)

    def _subset(self, tasks) -> list[str]:
        ids = sorted(t.instance_id for t in tasks)
        if self.cfg.evals.max_tasks and len(ids) > self.cfg.evals.max_tasks:
            ids = sorted(ids, key=lambda i: hashlib.sha256(i.encode()).hexdigest())[: self.cfg.evals.max_tasks]
        return sorted(ids)

    def _step(self, state: RunState, rec: GenerationRecord, step: str) -> None:
        rec.step = step
        self.store.save_gen(rec)
        self.view.step(state, rec.gen, step)

    def _write(self, rel: str, text: str) -> None:
        atomic_write(self.store.dir / rel, text)

