"""Evaluate one harness on one split of an eval set: parallel, cached, interruptible.

For each (task, repeat): look the cache key up; on a miss run the agent phase
(``runner.run_agent``) and grade the ``model_patch`` in a fresh sandbox
(``grading.grade``). Each phase is retried on infrastructure failures (``evolve.retry``); a task
that keeps failing for infrastructure reasons is labelled ``infra`` and left
out of the score. Results are written as they finish, so Ctrl-C keeps them.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from pydantic import BaseModel

from evolve import owner, store
from evolve.config import EvalSettings
from evolve.errors import ConfigError, EvalSetError, InfraError, SandboxError
from evolve.evalsets.registry import EvalSet
from evolve.harness import Harness
from evolve.retry import retrying
from evolve.types import TAMPERING_FLAGS, FailureClass, IntegrityFlag, Task, TaskResult, Usage

if TYPE_CHECKING:
    from evolve.grading import Grade
    from evolve.harness_env import HarnessEnv

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
"""Tries per phase before a task is labelled an infrastructure failure."""
RETRY_PAUSE_S = 2.0
"""Upper bound in seconds of the first random wait before a phase is retried; doubled for the next."""


def patch_fields(patch: bytes) -> dict:
    """``TaskResult``'s ``model_patch`` and ``model_patch_encoding`` for the exact bytes ``patch``:
    its text when it is UTF-8, else its base64 (``TaskResult.patch_bytes`` gives the bytes back)."""
    try:
        return {"model_patch": patch.decode("utf-8"), "model_patch_encoding": "utf-8"}
    except UnicodeDecodeError:
        import base64

        return {"model_patch": base64.b64encode(patch).decode("ascii"), "model_patch_encoding": "base64"}


def merge_flags(*groups) -> list[IntegrityFlag]:
    """The integrity flags of ``groups``, each once, in the order ``IntegrityFlag`` defines them."""
    raised = {IntegrityFlag(f) for group in groups for f in group}
    return [f for f in IntegrityFlag if f in raised]


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


@dataclass(frozen=True)
class _Job:
    task: Task
    repeat: int
    key: str


class _Cancelled(Exception):
    pass


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
    """

    def __init__(self, *, evalset: EvalSet, split: str, harness: Harness, settings: EvalSettings,
                 runs_dir: Path, workers: int = 2, repeats: int = 1, instance_ids: list[str] | None = None,
                 use_cache: bool = True, run_id: str | None = None, progress: EvalProgress | None = None,
                 first_repeat: int = 0, cache_dir: Path | None = None) -> None:
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
        self._baselines: dict[str, tuple[threading.Lock, list]] = {}
        self._fresh = Usage()

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

    def jobs(self) -> list[_Job]:
        """One job per (task, repeat), with its cache key (``store.cache_key``)."""
        fp = self.settings.fingerprint()
        return [_Job(t, k, store.cache_key(self.harness.tree_hash, t.content_hash(), self.settings.model, fp, k))
                for t in self.tasks for k in range(self.first_repeat, self.first_repeat + self.repeats)]

    def run(self) -> EvalReport:
        """Evaluate every job. Ctrl-C stops cleanly: finished results are kept, containers removed.

        Raises:
            ConfigError: the model has no price (``evolve.models.model_price``), before any sandbox work.
            ModelError: the model cannot be called at all; the run stops.
            SandboxError: Docker is unreachable or an image cannot be had.
            KeyboardInterrupt: after cleaning up, so the caller can exit 130.
        """
        from evolve.models import backend_for, check_model
        from evolve.sandbox.docker import docker_client, sweep_run, sweep_stale, wait_removals
        from evolve.sandbox.image import ensure_image

        check_model(self.settings.model, self.settings.model_params, role="solver")
        start = time.monotonic()
        client = docker_client()
        sweep_stale(client)  # containers and temp dirs of dead evolve processes
        for run_id in store.mark_dead_runs(self.run_dir.parent):
            log.info("evaluation %s was left running by a dead process: marked interrupted", run_id)
        store.remove_orphans(self.run_dir)
        self.images = self._images(client, ensure_image)
        self.agent_envs = self._agent_envs(client, ensure_image)
        self._write_meta("running")
        store.append_jsonl(self.run_dir / "events.jsonl", {"ts": store.now_iso(), "event": "start",
                                                           "jobs": len(self.tasks) * self.repeats})
        backend, close_backend = backend_for(self.settings.model, self.settings.model_params)
        pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="evolve-task")
        interrupted = False
        try:
            pending = {pool.submit(self._one, client, backend, job) for job in self.jobs()}
            while pending:
                done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                for f in done:
                    f.result()  # re-raises ModelError and bugs
        except BaseException as e:
            interrupted = True
            self.stop.set()
            sweep_run(client, self.run_id)
            pool.shutdown(wait=True, cancel_futures=True)
            self._finish(start, interrupted=True, error=repr(e))
            raise
        finally:
            pool.shutdown(wait=True)
            close_backend()
            wait_removals(self.run_id)  # containers removed in the background
            sweep_run(client, self.run_id)
        return self._finish(start, interrupted=interrupted)

    def _agent_envs(self, client, ensure_image) -> dict[str, tuple[str, "HarnessEnv | None"]]:
        """``{task image: (agent-phase image, harness environment or None)}``, every environment
        built (or found in the cache) before any task runs (``evolve.harness_env``).

        Raises:
            HarnessError: a bad requirement, or an image whose python3 can't run them.
        """
        from evolve.evalsets.registry import evolve_home
        from evolve.harness_env import agent_image, prepare

        out = {}
        for task_image, ref in self.images.items():
            image = ensure_image(client, agent_image(self.harness, ref))
            out[task_image] = (image, prepare(client, self.harness, image, home=evolve_home(),
                                              limits=self.settings.sandbox, log=log.info))
        return out

    def _images(self, client, ensure_image) -> dict[str | None, str]:
        """Every task's image, present or pulled, before any agent runs.

        Raises:
            SandboxError: naming every image that is neither present nor pullable, and how to get them.
        """
        found: dict[str | None, str] = {}
        missing: dict[str, list[str]] = {}
        for task in self.tasks:
            if task.image in missing:
                missing[task.image].append(task.instance_id)
            if task.image in found or task.image in missing:
                continue
            try:
                found[task.image] = ensure_image(client, task.image)
            except SandboxError:
                if task.image is None:
                    raise
                missing[task.image] = [task.instance_id]
        if missing:
            swebench = any((t.model_extra or {}).get("swebench") for t in self.tasks if t.image in missing)
            how = ("build SWE-bench's instance images with the swebench package (`swebench images build`, see "
                   "its docs) or `docker load -i FILE` them" if swebench else
                   "build them or `docker load -i FILE` them")
            listed = "; ".join(f"{img} ({', '.join(ids[:3])}{' ...' if len(ids) > 3 else ''})"
                               for img, ids in sorted(missing.items()))
            raise SandboxError(f"{len(missing)} image(s) of split {self.split!r} are not present and cannot be "
                               f"pulled, so no agent was started: {listed}. To get them: {how}; then run again")
        return found

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
            "workers": self.workers, "repeats": self.repeats,
            "instance_ids": [t.instance_id for t in self.tasks], "updated": store.now_iso()})

    # -- one job -----------------------------------------------------------------

    def _one(self, client, backend, job: _Job) -> None:
        if self.stop.is_set():
            return
        cached = self.cache.get(job.key) if self.use_cache else None
        if cached is not None:
            self._record(cached, self.cache.entry(job.key), cached=True)
            return
        self.progress.started(job.task.instance_id, job.repeat)
        # The task's trace stays a file in `scratch` until it is stored: streamed, never read whole.
        with owner.temp_dir("task") as scratch:  # swept once this process is dead (kill -9)
            try:
                result, files = self._evaluate(client, backend, job, Path(scratch))
            except (_Cancelled, InfraError):
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

    def _evaluate(self, client, backend, job: _Job,
                  scratch: Path) -> tuple[TaskResult, dict[str, str | bytes | Path]]:
        from evolve.grading import PreparedGrader
        from evolve.sandbox.docker import Sandbox

        task, start = job.task, time.monotonic()
        repo_dir = self.evalset.repo_dir(task)
        image = self.images[task.image]

        def sandbox(mounts: dict[str, str] | None = None) -> Sandbox:
            return Sandbox(client, image, run_id=self.run_id, limits=self.settings.sandbox, mounts=mounts)

        agent_image, env = self.agent_envs[task.image]

        def agent_sandbox(mounts: dict[str, str] | None = None) -> Sandbox:
            """The agent phase's: the harness's image if it names one, its environment mounted read-only."""
            return Sandbox(client, agent_image, run_id=self.run_id, limits=self.settings.sandbox,
                           mounts={**(mounts or {}), **(env.mounts() if env else {})})

        files: dict[str, str | bytes | Path] = {}
        base = dict(instance_id=task.instance_id, repeat=job.repeat, key=job.key)
        errors: list[str] = []
        # The grading sandbox starts while the harness runs; removed if unused.
        grader = PreparedGrader(sandbox)
        grader.start()
        try:
            return self._phases(task, job, start, repo_dir, (agent_sandbox, env), sandbox, grader, backend, base,
                                errors, files, scratch)
        finally:
            grader.discard()

    def _phases(self, task: Task, job: _Job, start: float, repo_dir, agent, sandbox, grader, backend, base: dict,
                errors: list[str], files: dict, scratch: Path) -> tuple[TaskResult, dict[str, str | bytes | Path]]:
        from evolve.grading import grade
        from evolve.runner import run_agent

        run = None
        try:  # a ModelError or a stop request goes through at once
            for attempt in self._retrying("agent phase", job, errors):
                with attempt:
                    n = attempt.retry_state.attempt_number
                    self._check_stop()
                    trace = scratch / f"trace-{n}.jsonl"
                    run = None
                    try:
                        agent_sandbox, env = agent
                        run = run_agent(agent_sandbox, task, repo_dir, self.harness, backend, self.settings, trace,
                                        harness_env=env)
                    except InfraError as e:
                        errors.append(f"agent attempt {n}: {e}")
                        raise
                    finally:
                        if trace.exists():
                            files["trace.jsonl"] = trace  # a Path: store copies it by streaming
                    if run.infra_errors:
                        errors.append(f"agent attempt {n}: gateway: {run.infra_errors[-1]}")
                        raise InfraError("gateway", run.infra_errors[-1])
        except InfraError:
            self._check_stop()  # an error caused by stopping is no infra result
            return self._infra(base, errors, start, run), files
        files.update({"model.patch": run.model_patch, "harness.log": run.harness_log})
        if run.trajectory is not None:
            files["trajectory.json"] = run.trajectory
        agent = dict(**patch_fields(run.model_patch), patch_bytes_total=run.patch_bytes_total,
                     harness_exit_code=run.exit_code, harness_timed_out=run.timed_out, usage=run.usage,
                     agent_seconds=run.seconds)
        flags, notes = list(run.flags), list(run.notes)
        if run.patch_problem is not None:
            # The candidate's doing (a huge diff, or one git cannot make): not graded, not infra.
            notes.append(f"patch_too_large: {run.patch_problem}: not graded")
            return TaskResult(**base, **agent, resolved=False, failure_class=FailureClass.PATCH_TOO_LARGE,
                              integrity_flags=merge_flags(flags), integrity_notes=notes,
                              seconds=time.monotonic() - start, attempts=1 + len(errors)), files
        try:
            for attempt in self._retrying("grading", job, errors):
                with attempt:
                    n = attempt.retry_state.attempt_number
                    self._check_stop()
                    box = None
                    try:
                        box = grader.take()
                        if box is None:
                            box = sandbox()
                            box.start()
                        g = grade(box, task, repo_dir, run.model_patch, test_timeout_s=self.settings.test_timeout_s,
                                  baseline=lambda: self._baseline(task, repo_dir, sandbox))
                    except InfraError as e:
                        errors.append(f"grade attempt {n}: {e}")
                        raise
                    finally:
                        if box is not None:
                            box.close(background=True)
        except InfraError:
            self._check_stop()
            return self._infra(base, errors, start, run, **agent, integrity_flags=merge_flags(flags),
                               integrity_notes=notes), files
        files.update({"test_output.txt": g.test_output, "apply.log": g.apply_log})
        if g.resolved and any(IntegrityFlag(f) in TAMPERING_FLAGS for f in flags):
            # Tampering the agent phase caught (and left out of the patch) still costs the task.
            g.resolved, g.failure_class = False, FailureClass.TAMPERING
        result = TaskResult(**base, **agent, resolved=g.resolved, failure_class=g.failure_class,
                            FAIL_TO_PASS=g.FAIL_TO_PASS, PASS_TO_PASS=g.PASS_TO_PASS,
                            grade_seconds=g.seconds, seconds=time.monotonic() - start,
                            attempts=1 + len(errors), integrity_flags=merge_flags(flags, g.flags),
                            integrity_notes=notes + list(g.notes))
        return result, files

    def _baseline(self, task: Task, repo_dir, sandbox) -> Grade:
        """The task's empty patch graded in a fresh sandbox, once per evaluation (whatever the
        harness, so asked for by any candidate's grading that ended in what could be infra).

        Raises:
            InfraError: as ``grading.grade`` for the empty patch (a grader timeout or a broken
                test_patch is then the task's, and the candidate's result is infra).
        """
        from evolve.grading import grade

        with self._lock:
            lock, memo = self._baselines.setdefault(task.instance_id, (threading.Lock(), []))
        with lock:
            if not memo:
                try:
                    with sandbox() as box:
                        memo.append(grade(box, task, repo_dir, b"", test_timeout_s=self.settings.test_timeout_s))
                except InfraError as e:
                    if e.kind == "docker":
                        raise  # retried by the caller; not remembered
                    memo.append(e)
            if isinstance(memo[0], InfraError):
                raise memo[0]
            return memo[0]

    def _infra(self, base: dict, errors: list[str], start: float, run, **agent) -> TaskResult:
        return TaskResult(**base, **agent, resolved=False, failure_class=FailureClass.INFRA,
                          error="; ".join(errors[-MAX_ATTEMPTS:]), seconds=time.monotonic() - start,
                          attempts=len(errors), **({} if agent or run is None else {"usage": run.usage}))

    def _check_stop(self) -> None:
        if self.stop.is_set():
            raise _Cancelled()

    def _retrying(self, phase: str, job: _Job, errors: list[str]):
        """The retry policy (``evolve.retry``) of one phase of one job: ``InfraError`` is tried
        ``MAX_ATTEMPTS`` times; each retry is logged and written as an ``infra_retry`` event with
        the last entry of ``errors``; a stop request cuts the wait short and ends the retries."""
        instance_id, repeat = job.task.instance_id, job.repeat
        def transient(e: BaseException) -> bool:  # once a stop is requested, nothing is retried
            return isinstance(e, InfraError) and not self.stop.is_set()

        return retrying(f"{phase} of {instance_id} r{repeat}", retry_on=transient, attempts=MAX_ATTEMPTS,
                        logger=log, base_s=RETRY_PAUSE_S, max_wait_s=8 * RETRY_PAUSE_S, sleep=self.stop.wait,
                        on_retry=lambda n, e: self._event("infra_retry", instance_id, repeat, errors[-1]))

    def _event(self, event: str, instance_id: str, repeat: int, detail: str) -> None:
        store.append_jsonl(self.run_dir / "events.jsonl", {"ts": store.now_iso(), "event": event,
                                                           "instance_id": instance_id, "repeat": repeat,
                                                           "detail": detail})
