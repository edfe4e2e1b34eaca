"""One task-run: the agent phase and the grading of one (task, repeat), with their retries.

This is the unit of work an executor (``evolve.executors``) places: in a thread of the
evaluating process (``local``) or on a node of a Ray cluster (``ray``). It needs a Docker
engine, the task's image, the harness tree, the task's repository and a model backend on the
machine where it runs, and returns a ``TaskResult`` plus its files; the cache, the run folder
and the statistics stay with the caller (``evolve.evaluate.Evaluation``).

Each phase is retried on infrastructure failures (``evolve.retry``); a task that keeps failing
for infrastructure reasons is labelled ``infra`` and left out of the score.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from evolve.config import EvalSettings
from evolve.errors import InfraError, SandboxError
from evolve.harness import Harness
from evolve.retry import retrying
from evolve.types import TAMPERING_FLAGS, FailureClass, IntegrityFlag, Task, TaskResult

if TYPE_CHECKING:
    from evolve.grading import Grade
    from evolve.harness_env import HarnessEnv
    from evolve.models import ModelBackend

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
"""Tries per phase before a task is labelled an infrastructure failure."""
RETRY_PAUSE_S = 2.0
"""Upper bound in seconds of the first random wait before a phase is retried; doubled for the next."""

Files = dict[str, "str | bytes | Path"]
"""A result's files by name (trace.jsonl, trajectory.json, model.patch, ...): content, or a file to copy."""


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


@dataclass(frozen=True)
class Job:
    """One (task, repeat) of an evaluation, with its cache key (``store.cache_key``)."""

    task: Task
    repeat: int
    key: str


class Cancelled(Exception):
    """A stop was requested while the task-run was going."""


@dataclass
class TaskContext:
    """What task-runs on one machine share for one evaluation.

    Args:
        client: a docker client of this machine's engine.
        images: ``{task image: local reference}`` (``sandbox.image.ensure_image``).
        backend: the solver's backend (holds the keys; the gateway calls it).
        harness: the harness, its ``root`` a directory on this machine.
        settings: model and limits.
        run_id: labels every container (``sandbox.docker.run_labels``).
        repo_dir: ``repo_dir(task)`` is the task's repository on this machine, or None.
        stop: set to stop at the next phase boundary (then ``Cancelled`` or ``InfraError`` goes up).
        on_event: ``on_event(event, instance_id, repeat, detail)``, e.g. ``infra_retry``.
    """

    client: object
    images: dict[str, str]
    backend: "ModelBackend"
    harness: Harness
    settings: EvalSettings
    run_id: str
    repo_dir: Callable[[Task], Path | None]
    stop: threading.Event = field(default_factory=threading.Event)
    on_event: Callable[[str, str, int, str], None] = lambda *a: None
    agent_envs: dict[str | None, tuple[str, "HarnessEnv | None"]] = field(default_factory=dict)
    """``{task image: (agent-phase image, harness environment or None)}`` (``agent_envs``)."""
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _baselines: dict[str, tuple[threading.Lock, list]] = field(default_factory=dict)


def task_images(client, tasks: list[Task], split: str) -> dict[str | None, str]:
    """Every task's image, present, pulled or built (``sandbox.image.ensure_image``), before any agent runs.

    Raises:
        SandboxError: naming every image that is neither present nor pullable, with its tasks and
            how to get them (a missing image is the eval set's problem, never a task's infra).
    """
    from evolve.sandbox.image import ensure_image

    found: dict[str | None, str] = {}
    missing: dict[str, list[str]] = {}
    for task in tasks:
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
        how = _how_to_get([t for t in tasks if t.image in missing])
        listed = "; ".join(f"{img} ({', '.join(ids[:3])}{' ...' if len(ids) > 3 else ''})"
                           for img, ids in sorted(missing.items()))
        raise SandboxError(f"{len(missing)} image(s) of split {split!r} are not present and cannot be "
                           f"pulled, so no agent was started: {listed}. To get them: {how}; then run again")
    return found


def _how_to_get(tasks: list[Task]) -> str:
    """How to get the missing images of ``tasks``, by where their rows came from."""
    fields = [(t.model_extra or {}).get("swebench") for t in tasks]
    styles = {f.get("style", "swe-bench") for f in fields if isinstance(f, dict)}
    ways = []
    if styles & {"swe-bench", "classic"}:
        ways.append("SWE-bench's: build them with the swebench package (`swebench images build`, see its docs)")
    if "swe-smith" in styles:
        ways.append("SWE-smith's: pull them by name from your own registry's copy (`docker pull NAME`) or build "
                    "them with the swesmith toolkit where it runs")
    if "r2e-gym" in styles:
        ways.append("R2E-Gym's: pull them by name from your own registry's copy (`docker pull NAME`)")
    ways.append("or save them where you have them (`docker save NAME -o FILE`) and `docker load -i FILE` them here"
                if ways else "build them or `docker load -i FILE` them")
    return "; ".join(ways)


def agent_env(client, harness: Harness, image_ref: str, settings: EvalSettings) -> tuple[str, "HarnessEnv | None"]:
    """(agent-phase image, harness environment or None) for tasks whose image is ``image_ref``: the
    harness's own image if it names one, its environment built or found in the cache
    (``evolve.harness_env``).

    Raises:
        HarnessError: a bad requirement, or an image whose python3 can't run them.
    """
    from evolve.evalsets.registry import evolve_home
    from evolve.harness_env import agent_image, prepare
    from evolve.sandbox.image import ensure_image

    image = ensure_image(client, agent_image(harness, image_ref))
    return image, prepare(client, harness, image, home=evolve_home(), limits=settings.sandbox, log=log.info)


def run_task(ctx: TaskContext, job: Job, scratch: Path) -> tuple[TaskResult, Files]:
    """Run ``job``'s agent phase, then grade its ``model_patch`` in a fresh sandbox.

    ``scratch`` is a directory that outlives the call until the files are stored: the trace
    stays a file there (streamed, never read whole). The grading sandbox starts while the
    harness runs; it is removed if unused.

    Raises:
        Cancelled, InfraError: only once ``ctx.stop`` is set.
        ModelError: the model cannot be called at all (the evaluation stops).
    """
    from evolve.grading import PreparedGrader
    from evolve.sandbox.docker import Sandbox

    task, start = job.task, time.monotonic()
    repo_dir = ctx.repo_dir(task)
    image = ctx.images[task.image]

    def sandbox(mounts: dict[str, str] | None = None) -> Sandbox:
        return Sandbox(ctx.client, image, run_id=ctx.run_id, limits=ctx.settings.sandbox, mounts=mounts)

    agent_ref, env = ctx.agent_envs[task.image]

    def agent_sandbox(mounts: dict[str, str] | None = None) -> Sandbox:
        """The agent phase's: the harness's image if it names one, its environment mounted read-only."""
        return Sandbox(ctx.client, agent_ref, run_id=ctx.run_id, limits=ctx.settings.sandbox,
                       mounts={**(mounts or {}), **(env.mounts() if env else {})})

    files: Files = {}
    base = dict(instance_id=task.instance_id, repeat=job.repeat, key=job.key)
    errors: list[str] = []
    grader = PreparedGrader(sandbox)
    grader.start()
    try:
        return _phases(ctx, job, start, repo_dir, (agent_sandbox, env), sandbox, grader, base, errors, files,
                       scratch)
    finally:
        grader.discard()


def _phases(ctx: TaskContext, job: Job, start: float, repo_dir, agent, sandbox, grader, base: dict,
            errors: list[str], files: Files, scratch: Path) -> tuple[TaskResult, Files]:
    from evolve.grading import grade
    from evolve.runner import run_agent

    task, run = job.task, None
    try:  # a ModelError or a stop request goes through at once
        for attempt in _retrying(ctx, "agent phase", job, errors):
            with attempt:
                n = attempt.retry_state.attempt_number
                _check_stop(ctx)
                trace = scratch / f"trace-{n}.jsonl"
                run = None
                try:
                    run = run_agent(agent[0], task, repo_dir, ctx.harness, ctx.backend, ctx.settings, trace,
                                    harness_env=agent[1])
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
        _check_stop(ctx)  # an error caused by stopping is no infra result
        return _infra(base, errors, start, run), files
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
        for attempt in _retrying(ctx, "grading", job, errors):
            with attempt:
                n = attempt.retry_state.attempt_number
                _check_stop(ctx)
                box = None
                try:
                    box = grader.take()
                    if box is None:
                        box = sandbox()
                        box.start()
                    g = grade(box, task, repo_dir, run.model_patch, test_timeout_s=ctx.settings.test_timeout_s,
                              baseline=lambda: _baseline(ctx, task, repo_dir, sandbox))
                except InfraError as e:
                    errors.append(f"grade attempt {n}: {e}")
                    raise
                finally:
                    if box is not None:
                        box.close(background=True)
    except InfraError:
        _check_stop(ctx)
        return _infra(base, errors, start, run, **agent, integrity_flags=merge_flags(flags),
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


def _baseline(ctx: TaskContext, task: Task, repo_dir, sandbox) -> "Grade":
    """The task's empty patch graded in a fresh sandbox, once per ``ctx`` (whatever the harness,
    so asked for by any candidate's grading that ended in what could be infra). On a cluster each
    node's ``ctx`` keeps its own.

    Raises:
        InfraError: as ``grading.grade`` for the empty patch (a grader timeout or a broken
            test_patch is then the task's, and the candidate's result is infra).
    """
    from evolve.grading import grade

    with ctx._lock:
        lock, memo = ctx._baselines.setdefault(task.instance_id, (threading.Lock(), []))
    with lock:
        if not memo:
            try:
                with sandbox() as box:
                    memo.append(grade(box, task, repo_dir, b"", test_timeout_s=ctx.settings.test_timeout_s))
            except InfraError as e:
                if e.kind == "docker":
                    raise  # retried by the caller; not remembered
                memo.append(e)
        if isinstance(memo[0], InfraError):
            raise memo[0]
        return memo[0]


def infra_result(job: Job, error: str, *, seconds: float = 0.0, attempts: int = 1) -> TaskResult:
    """An ``infra`` result for ``job`` that never got as far as a ``TaskResult`` (its node died)."""
    return TaskResult(instance_id=job.task.instance_id, repeat=job.repeat, key=job.key, resolved=False,
                      failure_class=FailureClass.INFRA, error=error, seconds=seconds, attempts=attempts)


def _infra(base: dict, errors: list[str], start: float, run, **agent) -> TaskResult:
    return TaskResult(**base, **agent, resolved=False, failure_class=FailureClass.INFRA,
                      error="; ".join(errors[-MAX_ATTEMPTS:]), seconds=time.monotonic() - start,
                      attempts=len(errors), **({} if agent or run is None else {"usage": run.usage}))


def _check_stop(ctx: TaskContext) -> None:
    if ctx.stop.is_set():
        raise Cancelled()


def _retrying(ctx: TaskContext, phase: str, job: Job, errors: list[str]):
    """The retry policy (``evolve.retry``) of one phase of one job: ``InfraError`` is tried
    ``MAX_ATTEMPTS`` times; each retry is logged and reported as an ``infra_retry`` event with
    the last entry of ``errors``; a stop request cuts the wait short and ends the retries."""
    instance_id, repeat = job.task.instance_id, job.repeat

    def transient(e: BaseException) -> bool:  # once a stop is requested, nothing is retried
        return isinstance(e, InfraError) and not ctx.stop.is_set()

    return retrying(f"{phase} of {instance_id} r{repeat}", retry_on=transient, attempts=MAX_ATTEMPTS,
                    logger=log, base_s=RETRY_PAUSE_S, max_wait_s=8 * RETRY_PAUSE_S, sleep=ctx.stop.wait,
                    on_retry=lambda n, e: ctx.on_event("infra_retry", instance_id, repeat, errors[-1]))
