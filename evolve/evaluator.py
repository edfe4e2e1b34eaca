"""The loop's seam to evaluation: an ``Evaluator`` runs a harness on tasks and says how it did.

``evolve.loop.Loop`` only talks to this Protocol. ``DockerEvaluator`` is the real one
(sandboxes, the gateway, the shared result cache, via ``evolve.evaluate.Evaluation``);
tests pass one that decides outcomes from the harness's content, so the loop, analyze,
plan, patch and the optimizer run for real without Docker.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Protocol

from evolve.config import EvalSettings, ProjectConfig
from evolve.evalsets.registry import EvalSet
from evolve.evaluate import EvalProgress, EvalReport
from evolve.harness import Harness
from evolve.types import TaskResult

if TYPE_CHECKING:
    from evolve.executors import Executor


class Evaluator(Protocol):
    """How the loop evaluates harnesses. Implementations must be deterministic for a given
    (harness tree, task, repeat) or cache their answers, so a resumed run repeats a killed one."""

    def evaluate(self, harness: Harness, instance_ids: list[str], repeat: int, label: str,
                 split: str) -> EvalReport:
        """Evaluate ``harness`` on ``instance_ids`` of ``split`` at repeat index ``repeat``.

        ``label`` names the evaluation in outputs (``g001-child-r0``, ``baseline``...).
        The loop reads the report's ``results`` (one ``TaskResult`` per id; ``failure_class``
        ``infra`` means not scored, and must not be cached), ``resolve_rate`` (in [0, 1]) and
        ``fresh_usage.cost_usd`` (USD spent by this call; 0 for cached results).

        Raises:
            InfraError, SandboxError: the evaluation could not run (the generation fails).
            ModelError: the solver model cannot be called at all (the run stops).
        """
        ...

    # Optional: ``evaluate_many(requests, split) -> [EvalReport]`` runs several evaluations at once,
    # ``requests`` a list of ``(harness, instance_ids, repeat, label)`` with the reports in the same
    # order, the errors of ``evaluate``. ``DockerEvaluator`` has it; without it the loop asks a
    # race's round one evaluation after another (``evolve.loop.Loop._evaluate_many``).

    def compile(self, harness: Harness) -> str | None:
        """The compiler's complaint about the harness's code, or None when it compiles."""
        ...

    def result_dir(self, result: TaskResult) -> Path | None:
        """The directory of ``result``'s files (trace.jsonl, trajectory.json, test_output.txt)
        for the failure analysis, or None when there are none."""
        ...


class DockerEvaluator:
    """The real evaluator: each call is an ``Evaluation`` in Docker sandboxes, cached in
    ``cache_dir`` (the cache ``evolve eval`` uses too, so nothing is evaluated twice).

    Args:
        evalset: the eval set (already loaded).
        settings: solver model, limits and timeouts; all of it enters the cache key.
        out_dir: where each evaluation's run folder goes (``runs/<run>/evals``).
        cache_dir: the shared result cache (``runs/cache``).
        workers: tasks evaluated at once.
        sandbox_run_id: labels the compile check's sandbox (the loop's run id).
        progress: ``progress(label, n_tasks)`` gives a progress sink or None.
        executor: where task-runs execute (``evolve.executors``); None means the local one. One
            executor serves every evaluation of the run; ``evaluate_many`` makes more of the same kind
            (``make_executor``) for the evaluations it runs beside it, and keeps them for the next call.
        make_executor: makes those (default: ``executor``'s kind, a local one or a Ray one at the
            same address).
    """

    def __init__(self, evalset: EvalSet, settings: EvalSettings, *, out_dir: Path, cache_dir: Path, workers: int,
                 sandbox_run_id: str, progress: Callable[[str, int], EvalProgress | None] | None = None,
                 executor: "Executor | None" = None,
                 make_executor: "Callable[[], Executor] | None" = None) -> None:
        from evolve.executors.local import LocalExecutor
        from evolve.store import Cache

        self.executor = executor or LocalExecutor()
        self._make_executor = make_executor or (lambda: _same_kind(self.executor))
        self._spare: list["Executor"] = []
        self._spare_lock = threading.Lock()

        self.evalset, self.settings, self.out_dir, self.workers = evalset, settings, out_dir, workers
        self.cache = Cache(cache_dir)
        self.sandbox_run_id = sandbox_run_id
        self.progress = progress or (lambda label, n: None)

    @classmethod
    def for_project(cls, cfg: ProjectConfig, evalset: EvalSet, *, solver_model: str, solver_params: dict,
                    runs_dir: Path, run_dir: Path, run_id: str, workers: int | None = None,
                    progress: Callable[[str, int], EvalProgress | None] | None = None) -> "DockerEvaluator":
        """The evaluator ``evolve run`` uses: ``cfg``'s timeouts, limits and sandbox, the given solver,
        outputs under ``run_dir/evals``, the cache ``runs_dir/cache``, ``cfg.executor``; ``workers`` None
        means ``cfg.evals.workers``.

        Raises:
            ConfigError: ``cfg.executor`` cannot be made (``ray`` without Ray installed).
        """
        from evolve.executors import executor_for

        settings = EvalSettings(model=solver_model, model_params=solver_params,
                                harness_timeout_s=cfg.evals.harness_timeout_s, test_timeout_s=cfg.evals.test_timeout_s,
                                limits=cfg.limits, sandbox=cfg.sandbox)
        return cls(evalset, settings, out_dir=run_dir / "evals", cache_dir=runs_dir / "cache",
                   workers=workers or cfg.evals.workers, sandbox_run_id=run_id, progress=progress,
                   executor=executor_for(cfg.executor), make_executor=lambda: executor_for(cfg.executor))

    def evaluate(self, harness: Harness, instance_ids: list[str], repeat: int, label: str,
                 split: str) -> EvalReport:
        return self._evaluation(harness, instance_ids, repeat, label, split, self.executor).run()

    def evaluate_many(self, requests: "list[tuple[Harness, list[str], int, str]]", split: str) -> list[EvalReport]:
        """Several evaluations at once, ``requests`` as ``(harness, instance_ids, repeat, label)``,
        the reports in the same order: one ``Evaluation`` each, on its own executor (evolve's executors
        serve one evaluation at a time), all of them together running at most ``workers`` task-runs
        at once (a shared semaphore). Each is cached and written as by ``evaluate``.

        Raises:
            as ``evaluate``: the first error, once every evaluation has stopped (the others are
            stopped and their containers removed, as a Ctrl-C stops one).
        """
        if len(requests) <= 1:
            return [self.evaluate(h, ids, rep, label, split) for h, ids, rep, label in requests]
        slots = threading.BoundedSemaphore(self.workers)
        executors = [self.executor] + [self._take() for _ in requests[1:]]
        evals = [self._evaluation(h, ids, rep, label, split, ex, slots=slots)
                 for (h, ids, rep, label), ex in zip(requests, executors)]
        pool = ThreadPoolExecutor(max_workers=len(evals), thread_name_prefix="evolve-eval")
        futures = [pool.submit(e.run) for e in evals]
        try:
            return [f.result() for f in futures]
        except BaseException:
            for e in evals:
                e.stop.set()
                e.executor.cancel()
            raise
        finally:
            pool.shutdown(wait=True)
            with self._spare_lock:
                self._spare.extend(executors[1:])

    def _take(self) -> "Executor":
        with self._spare_lock:
            if self._spare:
                return self._spare.pop()
        return self._make_executor()

    def _evaluation(self, harness: Harness, instance_ids: list[str], repeat: int, label: str, split: str,
                    executor: "Executor", slots: threading.Semaphore | None = None):
        from evolve.evaluate import Evaluation
        from evolve.store import new_run_id

        return Evaluation(evalset=self.evalset, split=split, harness=harness, settings=self.settings,
                          runs_dir=self.out_dir, cache_dir=self.cache.root, workers=self.workers,
                          instance_ids=instance_ids, first_repeat=repeat, run_id=new_run_id(label),
                          progress=self.progress(label, len(instance_ids)), executor=executor, slots=slots)

    def compile(self, harness: Harness) -> str | None:
        from evolve.check import compile_in_sandbox

        return compile_in_sandbox(harness, self.sandbox_run_id, self.settings.sandbox)

    def result_dir(self, result: TaskResult) -> Path | None:
        return self.cache.entry(result.key)


def _same_kind(executor: "Executor") -> "Executor":
    """A new executor like ``executor``: local, or Ray at the same address."""
    from evolve.executors import make_executor

    return make_executor(executor.kind, getattr(executor, "address", "auto"),
                         getattr(executor, "image_ttl_hours", None))
