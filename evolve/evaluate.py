"""Evaluate one harness on one split of an eval set: parallel, cached, interruptible.

For each (task, repeat): look the cache key up; on a miss hand the job to the executor
(``evolve.executors``), which runs the task-run (``evolve.taskrun``: the agent phase, then
grading in a fresh sandbox, each retried on infrastructure failures) here or on a cluster. A
task that keeps failing for infrastructure reasons is labelled ``infra`` and left out of the
score. The cache, the run folder and the statistics stay in this process whatever the executor.
Results are written as they finish, so Ctrl-C keeps them.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from pydantic import BaseModel

from evolve import owner, store
from evolve.config import EvalSettings
from evolve.errors import ConfigError, EvalSetError, InfraError, SandboxError
from evolve.evalsets.registry import EvalSet
from evolve.harness import Harness
from evolve.taskrun import MAX_ATTEMPTS, RETRY_PAUSE_S, Cancelled, Job, merge_flags, patch_fields
from evolve.types import IntegrityFlag, Task, TaskResult, Usage

if TYPE_CHECKING:
    from evolve.executors import Executor

__all__ = ["MAX_ATTEMPTS", "RETRY_PAUSE_S", "EvalProgress", "EvalReport", "Evaluation", "merge_flags",
           "patch_fields"]

log = logging.getLogger(__name__)

class EvalProgress(Protocol):
    """What an ``Evaluation`` reports per task while it runs, from its worker threads (so an
    implementation must be thread-safe). ``evolve.report.EvalProgressView`` draws it; synthesis has
    its own, unrelated progress (``evolve.synth``)."""

    def started(self, instance_id: str, repeat: int) -> None:
        """A (task, repeat) missed the cache and its agent phase is about to run."""

    def finished(self, result: TaskResult, cached: bool) -> None:
        """A (task, repeat) has its result; ``cached`` is True when it came from the cache (no
        ``started`` call came before it then)."""


class _Quiet:
    def started(self, instance_id: str, repeat: int) -> None:
        pass

    def finished(self, result: TaskResult, cached: bool) -> None:
        pass


class EvalReport(BaseModel):
    """All results of one ``evolve eval`` run, plus what was evaluated."""

    run_id: str
    run_dir: Path
    evalset: str
    split: str
    harness: str
    harness_tree: str
    model: str
    results: list[TaskResult]
    interrupted: bool = False
    seconds: float = 0.0
    """Wall-clock seconds of the whole evaluation."""
    fresh_usage: Usage = Usage()
    """Model usage of results computed in this run (cached results excluded): what this run spent."""

    @property
    def scored(self) -> list[TaskResult]:
        """Results that count: infrastructure failures are left out."""
        return [r for r in self.results if not r.is_infra]

    @property
    def resolved(self) -> int:
        """Resolved results among the scored ones (every repeat counts)."""
        return sum(r.resolved for r in self.scored)

    @property
    def resolve_rate(self) -> float:
        """Resolved / scored, in [0, 1]; 0 when nothing was scored. A task with a tampering
        flag is scored and never resolved (the grader guarantees it)."""
        return self.resolved / len(self.scored) if self.scored else 0.0

    @property
    def integrity_flags(self) -> dict[str, int]:
        """``{flag: results raising it}``, in the flags' declared order; flags never raised are left out."""
        counts = {f.value: sum(f in r.integrity_flags for r in self.results) for f in IntegrityFlag}
        return {k: n for k, n in counts.items() if n}

    @property
    def tampering(self) -> int:
        """Results with at least one flag of ``TAMPERING_FLAGS`` (each one not resolved)."""
        return sum(bool(r.tampering) for r in self.results)

    @property
    def usage(self) -> Usage:
        """Model usage summed over every result, cached ones included (``fresh_usage`` is this run's spend)."""
        total = Usage()
        for r in self.results:
            total = total.add(r.usage)
        return total

    def summary(self) -> dict:
        """The report as plain JSON data (``summary.json``): counts, ``resolve_rate`` in [0, 1],
        ``cost_usd`` in USD over every result, tokens, wall-clock ``seconds``, ``interrupted``."""
        u = self.usage
        return {"run_id": self.run_id, "evalset": self.evalset, "split": self.split,
                "harness": self.harness, "harness_tree": self.harness_tree, "model": self.model,
                "tasks": len(self.results), "scored": len(self.scored), "resolved": self.resolved,
                "resolve_rate": self.resolve_rate, "infra": len(self.results) - len(self.scored),
                "integrity_flags": self.integrity_flags, "tampering": self.tampering,
                "cost_usd": u.cost_usd, "prompt_tokens": u.prompt_tokens,
                "completion_tokens": u.completion_tokens, "calls": u.calls,
                "seconds": self.seconds, "interrupted": self.interrupted}


class Evaluation:
    """One evaluation run. Call ``run()`` once.

    Args:
        evalset, split: what to evaluate on; ``instance_ids`` narrows the split.
        harness: a resolved harness (``evolve.harness.resolve_harness``).
        settings: model and limits; all of it enters the cache key.
        runs_dir: output root (``runs/``); results go to ``runs_dir/<run_id>/``.
        workers: tasks evaluated at once.
        repeats: evaluations per task, repeat indices ``first_repeat..first_repeat+repeats-1``.
        use_cache: reuse finished results with the same key.
        cache_dir: where finished results are cached (default ``runs_dir/cache``).
        executor: where task-runs execute (``evolve.executors``); default the local one.
        slots: shared with other evaluations running at the same time
            (``evolve.evaluator.DockerEvaluator.evaluate_many``): a task-run holds one while it
            runs, so together they run at most as many task-runs at once as it has.
    """

    def __init__(self, *, evalset: EvalSet, split: str, harness: Harness, settings: EvalSettings,
                 runs_dir: Path, workers: int = 2, repeats: int = 1, instance_ids: list[str] | None = None,
                 use_cache: bool = True, run_id: str | None = None, progress: EvalProgress | None = None,
                 first_repeat: int = 0, cache_dir: Path | None = None,
                 executor: "Executor | None" = None, slots: threading.Semaphore | None = None) -> None:
        if workers < 1 or repeats < 1:
            raise ConfigError("--workers and --repeats must be at least 1")
        self.evalset, self.split, self.harness, self.settings = evalset, split, harness, settings
        self.workers, self.repeats, self.use_cache = workers, repeats, use_cache
        self.first_repeat = first_repeat
        self.run_id = run_id or store.new_run_id()
        self.run_dir = runs_dir / self.run_id
        self.cache = store.Cache(cache_dir or runs_dir / "cache")
        self.progress = progress or _Quiet()
        self.tasks = self._select(instance_ids)
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._results: list[TaskResult] = []
        if executor is None:
            from evolve.executors.local import LocalExecutor

            executor = LocalExecutor()
        self.executor = executor
        self._fresh = Usage()
        self.slots = slots

    def _select(self, instance_ids: list[str] | None) -> list[Task]:
        tasks = self.evalset.tasks(self.split)
        if not tasks:
            raise EvalSetError(f"split {self.split!r} of eval set {self.evalset.name} has no task: nothing to "
                               "evaluate (a result of 0/0 would mean nothing). Give the split tasks, e.g. import "
                               "with `evolve evals import swe-bench FILE --holdout-fraction F`",
                               path=str(self.evalset.source or self.evalset.root))
        empty = [t.instance_id for t in tasks if t.repo_path is None and t.image is None]
        if empty:
            raise EvalSetError(f"{len(empty)} task(s) name neither a repo_path nor an image holding /testbed, so the "
                               f"agent would work on an empty /testbed: {', '.join(empty[:5])}. Give each task its "
                               "image (SWE-bench rows: `evolve evals import swe-bench FILE`) or its repo_path",
                               path=str(self.evalset.source or self.evalset.root))
        if not instance_ids:
            return tasks
        known = {t.instance_id: t for t in tasks}
        missing = [i for i in instance_ids if i not in known]
        if missing:
            raise ConfigError(f"not in split {self.split!r} of {self.evalset.name}: {', '.join(missing)}. "
                              f"See `evolve evals show {self.evalset.name}`.")
        return [known[i] for i in instance_ids]

    def jobs(self) -> list[Job]:
        """One job per (task, repeat), with its cache key (``store.cache_key``)."""
        fp = self.settings.fingerprint()
        return [Job(t, k, store.cache_key(self.harness.tree_hash, t.content_hash(), self.settings.model, fp, k))
                for t in self.tasks for k in range(self.first_repeat, self.first_repeat + self.repeats)]

    def run(self) -> EvalReport:
        """Evaluate every job. Ctrl-C stops cleanly: finished results are kept, containers removed.

        Raises:
            ConfigError: the model has no price (``evolve.models.model_price``), before any sandbox work.
            ModelError: the model cannot be called at all; the run stops.
            SandboxError: Docker is unreachable or an image cannot be had.
            KeyboardInterrupt: after cleaning up, so the caller can exit 130.
        """
        from evolve.executors import EvalWork
        from evolve.models import check_model

        check_model(self.settings.model, self.settings.model_params, role="solver")
        start = time.monotonic()
        for run_id in store.mark_dead_runs(self.run_dir.parent):
            log.info("evaluation %s was left running by a dead process: marked interrupted", run_id)
        store.remove_orphans(self.run_dir)
        executor = self.executor
        executor.open(EvalWork(run_id=self.run_id, evalset=self.evalset, tasks=self.tasks, harness=self.harness,
                               split=self.split,
                               settings=self.settings, stop=self.stop, on_event=self._event))
        self._write_meta("running")
        store.append_jsonl(self.run_dir / "events.jsonl", {"ts": store.now_iso(), "event": "start",
                                                           "jobs": len(self.tasks) * self.repeats,
                                                           "executor": executor.kind})
        pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="evolve-task")
        interrupted = False
        try:
            pending = {pool.submit(self._one, job) for job in self.jobs()}
            while pending:
                done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                for f in done:
                    f.result()  # re-raises ModelError and bugs
        except BaseException as e:
            interrupted = True
            self.stop.set()
            executor.cancel()
            pool.shutdown(wait=True, cancel_futures=True)
            self._finish(start, interrupted=True, error=repr(e))
            raise
        finally:
            pool.shutdown(wait=True)
            executor.close()
        return self._finish(start, interrupted=interrupted)

    def _finish(self, start: float, *, interrupted: bool, error: str | None = None) -> EvalReport:
        report = EvalReport(run_id=self.run_id, run_dir=self.run_dir, evalset=self.evalset.name,
                            split=self.split, harness=self.harness.source, harness_tree=self.harness.tree_hash,
                            model=self.settings.model, results=sorted(self._results,
                                                                      key=lambda r: (r.instance_id, r.repeat)),
                            interrupted=interrupted, seconds=time.monotonic() - start,
                            fresh_usage=self._fresh)
        name = f"evolve:{self.harness.spec.name}@{self.harness.tree_hash[:12]}:{self.settings.model}"
        # A patch that is not UTF-8 is written in base64, with its encoding (see store's layout).
        preds = "".join(
            json.dumps({"instance_id": r.instance_id, "model_name_or_path": name, "model_patch": r.model_patch,
                        **({} if r.model_patch_encoding == "utf-8"
                           else {"model_patch_encoding": r.model_patch_encoding})}) + "\n"
            for r in report.results if r.repeat == 0 and not r.is_infra)
        store.atomic_write(self.run_dir / "predictions.jsonl", preds)
        store.atomic_write_json(self.run_dir / "summary.json", report.summary())
        self._write_meta("interrupted" if interrupted else "finished", error=error)
        store.append_jsonl(self.run_dir / "events.jsonl", {"ts": store.now_iso(), "event": "end",
                                                           "interrupted": interrupted, "error": error})
        return report

    def _write_meta(self, status: str, error: str | None = None) -> None:
        store.atomic_write_json(self.run_dir / "run.json", {
            "run_id": self.run_id, "kind": "eval", "status": status, "error": error, "owner": owner.current(),
            "evalset": self.evalset.name, "evalset_root": str(self.evalset.root), "split": self.split,
            "harness": self.harness.source, "harness_tree": self.harness.tree_hash,
            "settings": self.settings.model_dump(mode="json", exclude={"model_params": {"api_key"}}),
            "workers": self.workers, "repeats": self.repeats, "executor": self.executor.kind,
            "instance_ids": [t.instance_id for t in self.tasks], "updated": store.now_iso()})

    # -- one job -----------------------------------------------------------------

    def _one(self, job: Job) -> None:
        if self.stop.is_set():
            return
        cached = self.cache.get(job.key) if self.use_cache else None
        if cached is not None:
            self._record(cached, self.cache.entry(job.key), cached=True)
            return
        if self.slots is None:
            self._run(job)
            return
        with self.slots:
            if not self.stop.is_set():
                self._run(job)

    def _run(self, job: Job) -> None:
        """A cache miss: run ``job`` on the executor, store and record its result."""
        self.progress.started(job.task.instance_id, job.repeat)
        # The task's trace stays a file in `scratch` until it is stored: streamed, never read whole.
        with owner.temp_dir("task") as scratch:  # swept once this process is dead (kill -9)
            try:
                result, files = self.executor.run(job, Path(scratch))
            except (Cancelled, InfraError):
                if self.stop.is_set():
                    return
                raise
            if result.is_infra:
                entry = self.run_dir / "infra" / job.task.instance_id / f"r{job.repeat}"
                for name, content in files.items():
                    store.atomic_write(entry / name, content)
                store.atomic_write(entry / "result.json", result.model_dump_json(indent=2))
            else:
                entry = self.cache.put(result, files)
        self._record(result, entry, cached=False)

    def _record(self, result: TaskResult, entry: Path, *, cached: bool) -> None:
        store.link_tree(entry, self.run_dir / "tasks" / result.instance_id / f"r{result.repeat}")
        with self._lock:
            self._results.append(result)
            if not cached:
                self._fresh = self._fresh.add(result.usage)
            store.append_jsonl(self.run_dir / "results.jsonl", {**result.model_dump(mode="json"), "cached": cached})
        self.progress.finished(result, cached)

    def _event(self, event: str, instance_id: str, repeat: int, detail: str) -> None:
        store.append_jsonl(self.run_dir / "events.jsonl", {"ts": store.now_iso(), "event": event,
                                                           "instance_id": instance_id, "repeat": repeat,
                                                           "detail": detail})
