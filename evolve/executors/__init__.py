"""Where task-runs execute: the seam between an evaluation and the machines that do its work.

An ``Evaluation`` (``evolve.evaluate``) keeps the cache, the run folder and the statistics,
and hands each cache miss (one ``evolve.taskrun.Job``: agent phase plus grading) to an
``Executor``. Two exist, each in its own module:

- ``local`` (``evolve.executors.local``): threads of this process on this machine's Docker engine;
- ``ray`` (``evolve.executors.ray_executor``): nodes of a Ray cluster that declare the custom
  resource ``evolve_sandbox``; Ray is imported only when this one is made.

Both return the same ``TaskResult`` and files for the same job, so what the loop decides does not
depend on the executor.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Protocol

from evolve.config import IMAGE_TTL_HOURS

if TYPE_CHECKING:
    from evolve.config import EvalSettings, ExecutorConfig
    from evolve.evalsets.registry import EvalSet
    from evolve.harness import Harness
    from evolve.taskrun import Files, Job
    from evolve.types import Task, TaskResult

KINDS = ("local", "ray")


@dataclass
class EvalWork:
    """What one evaluation asks of its executor: the same for every job of it."""

    run_id: str
    evalset: "EvalSet"
    tasks: "list[Task]"
    harness: "Harness"
    settings: "EvalSettings"
    split: str = "search"
    """The split's name, for messages."""
    stop: threading.Event = field(default_factory=threading.Event)
    """Set by the evaluation when it stops (Ctrl-C, a ModelError)."""
    on_event: Callable[[str, str, int, str], None] = lambda *a: None
    """``on_event(event, instance_id, repeat, detail)``: written to the run's events.jsonl."""


@dataclass(frozen=True)
class ValidationJob:
    """One synthesis validation job (``evolve.synth.synthesize.validate_task``): grade ``task`` with
    its reference patch and with the empty patch in fresh sandboxes of ``image``."""

    task: "Task"
    repo_dir: Path | None
    """The task's repository on this machine (shipped to a node by the Ray executor)."""
    image: str
    run_id: str
    limits: object
    """``SandboxLimits``."""
    test_timeout_s: float


class Executor(Protocol):
    """Runs task-runs for one evaluation at a time: ``open``, then ``run`` from several threads at
    once, then ``close`` (``cancel`` first when the evaluation is interrupted)."""

    kind: str

    def open(self, work: EvalWork) -> None:
        """Prepare for ``work``'s jobs (images, model backend, shared objects).

        Raises:
            SandboxError: Docker is unreachable or an image cannot be had.
            ConfigError: the executor cannot run here (no Ray, no node with ``evolve_sandbox``).
        """

    def run(self, job: "Job", scratch: Path) -> "tuple[TaskResult, Files]":
        """Run one job to its result (``evolve.taskrun.run_task``); thread-safe, blocking.
        ``scratch`` is a private directory that lives until the files are stored.

        Raises:
            ModelError: the model cannot be called at all.
            Cancelled, InfraError: only once ``work.stop`` is set.
        """

    def validate(self, job: ValidationJob) -> str | None:
        """Run one synthesis validation job; thread-safe, blocking, needs no ``open``. Returns
        why the task is dropped, or None when it is valid."""

    def cancel(self) -> None:
        """Stop every running job now and remove its containers (after ``work.stop`` is set)."""

    def close(self) -> None:
        """Wait for background container removals and sweep the run's leftovers; ``open`` may follow."""


def make_executor(kind: str = "local", address: str = "auto",
                  image_ttl_hours: float | None = IMAGE_TTL_HOURS) -> Executor:
    """The executor named ``kind`` (``local`` or ``ray``); ``address`` is the Ray cluster's;
    ``image_ttl_hours``: how long an image evolve loaded onto a Ray node may go unused before the
    node removes it (``loaded_images``; None: never).

    Raises:
        ConfigError: an unknown kind, or ``ray`` without Ray installed.
    """
    from evolve.errors import ConfigError

    if kind == "local":
        from evolve.executors.local import LocalExecutor

        return LocalExecutor()
    if kind == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise ConfigError("--executor ray needs Ray: pip install 'evolve[ray]' "
                              "(scripts/setup.sh installs it)") from None
        if address.startswith("ray://"):
            try:
                import grpc  # noqa: F401
            except ImportError:
                raise ConfigError(f"{address} is a Ray Client address, which needs Ray Client: "
                                  "pip install 'evolve[ray]' (it brings ray[client])") from None
        from evolve.executors.ray_executor import RayExecutor

        return RayExecutor(address, image_ttl_hours)
    raise ConfigError(f"unknown executor {kind!r}: use one of {', '.join(KINDS)}")


def executor_for(cfg: "ExecutorConfig") -> Executor:
    """``make_executor`` for ``executor:`` of evolve.yaml."""
    return make_executor(cfg.kind, cfg.address, cfg.image_ttl_hours)
