"""The local executor: task-runs in threads of this process, on this machine's Docker engine."""

from __future__ import annotations

from pathlib import Path

import threading

from evolve.executors import EvalWork, ValidationJob
from evolve.taskrun import Files, Job, TaskContext, run_task
from evolve.types import TaskResult


class LocalExecutor:
    """Each ``run`` is ``taskrun.run_task`` on the calling thread. One Docker client, one model
    backend and one baseline memo serve every job of an evaluation."""

    kind = "local"

    def __init__(self) -> None:
        self._ctx: TaskContext | None = None
        self._close_backend = lambda: None
        self._client = None
        self._lock = threading.Lock()

    def open(self, work: EvalWork) -> None:
        from evolve.models import backend_for
        from evolve.sandbox.docker import docker_client, sweep_stale
        from evolve.taskrun import agent_env, task_images

        client = docker_client()
        sweep_stale(client)  # containers and temp dirs of dead evolve processes
        images = task_images(client, work.tasks, work.split)
        envs = {img: agent_env(client, work.harness, ref, work.settings) for img, ref in images.items()}
        backend, self._close_backend = backend_for(work.settings.model, work.settings.model_params)
        self._ctx = TaskContext(client=client, images=images, backend=backend, harness=work.harness,
                                settings=work.settings, run_id=work.run_id, repo_dir=work.evalset.repo_dir,
                                stop=work.stop, on_event=work.on_event, agent_envs=envs)

    def run(self, job: Job, scratch: Path) -> tuple[TaskResult, Files]:
        assert self._ctx is not None, "open() first"
        return run_task(self._ctx, job, scratch)

    def validate(self, job: ValidationJob) -> str | None:
        from evolve.sandbox.docker import docker_client
        from evolve.synth.synthesize import validate_task

        with self._lock:
            if self._client is None:
                self._client = docker_client()
        return validate_task(self._client, job)

    def cancel(self) -> None:
        from evolve.sandbox.docker import sweep_run

        if self._ctx is not None:
            sweep_run(self._ctx.client, self._ctx.run_id)

    def close(self) -> None:
        from evolve.sandbox.docker import sweep_run, wait_removals

        ctx, self._ctx = self._ctx, None
        close_backend, self._close_backend = self._close_backend, lambda: None
        try:
            close_backend()
        finally:
            if ctx is not None:
                wait_removals(ctx.run_id)  # containers removed in the background
                sweep_run(ctx.client, ctx.run_id)
