"""The Ray executor: task-runs on the nodes of a Ray cluster.

Placement: each task-run asks for one unit of the custom resource ``evolve_sandbox`` (and no CPU:
its work happens in containers), so a node started with ``--resources='{"evolve_sandbox": N}'``
takes at most N at once, and only nodes that declare it (they have a Docker engine) take any.

What travels: the head puts the harness tree, each task repository (a tar of its directory) and
the split's task rows into Ray's object store once per evaluation; every task-run references them
and a worker process unpacks each once (``ray_node``). The model call path stays
container → unix socket → gateway → litellm → model, with the gateway in the worker process beside
the container: API keys reach it through the job's runtime env (``env_vars``: the variables of this
process named in ``forwarded_env``), never a container. Back to the head come the ``TaskResult``,
the files (trace, trajectory, patch, test output) and the retry events, which the evaluation writes
into the same ``runs/`` and cache layout as the local executor; the result records the node's id.

Failures: a task-run whose worker or node died is infrastructure: an ``infra_retry`` event, then
submitted again on any node with a free ``evolve_sandbox`` (``SYSTEM_RETRIES`` times); when that is
used up the result is ``infra`` (not cached, so ``evolve run --resume`` and the next ``evolve
eval`` evaluate it again). A finished result is
written on the head as soon as it arrives, so a node dying later loses nothing. Containers carry
``sandbox.docker.run_labels`` (owner = the worker process), so each node's next evolve worker
sweeps what a killed one left (``sweep_stale``), and ``close`` sweeps the run on every node.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
import threading
from pathlib import Path

import ray

from evolve.errors import ConfigError
from evolve.executors import EvalWork, ValidationJob
from evolve.executors import ray_node
from evolve.taskrun import Cancelled, Files, Job, infra_result
from evolve.types import TaskResult

log = logging.getLogger(__name__)

RESOURCE = "evolve_sandbox"
CONNECT_TIMEOUT_S = 10.0
"""Seconds to wait for a TCP answer at a ``host:port`` address before ``ray.init`` (which, with no
cluster there, waits for it without end)."""
"""The custom resource a node declares for each task-run it may hold at once."""
SYSTEM_RETRIES = 4
"""Times a task-run whose worker process or node died is submitted again before it is ``infra``."""
FORWARDED_ENV = re.compile(r"^(?:[A-Z0-9_]+_API_(?:KEY|BASE|VERSION)|[A-Z0-9_]+_BASE_URL|LITELLM_[A-Z0-9_]+|"
                           r"AWS_[A-Z0-9_]+|AZURE_[A-Z0-9_]+|VERTEXAI_[A-Z0-9_]+|GOOGLE_APPLICATION_CREDENTIALS)$")
"""Variables of the evaluating process passed to every worker's environment (the job's runtime env),
so the gateway's litellm on a node finds the same provider keys."""


def forwarded_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The provider settings of ``environ`` (default ``os.environ``) that ``FORWARDED_ENV`` matches."""
    environ = os.environ if environ is None else environ
    return {k: v for k, v in environ.items() if FORWARDED_ENV.match(k)}


@ray.remote(num_cpus=0, resources={RESOURCE: 1}, max_retries=0)  # retried by RayExecutor.run, with an event
def _task_run(spec: dict, tasks: dict, instance_id: str, repeat: int, key: str) -> dict:
    out = ray_node.run_remote(spec, tasks, instance_id, repeat, key, fetch=ray.get)
    out["node"] = ray.get_runtime_context().get_node_id()
    return out


@ray.remote(num_cpus=0, resources={RESOURCE: 1}, max_retries=SYSTEM_RETRIES, retry_exceptions=False)
def _validate(job, repo) -> str | None:
    return ray_node.validate_remote(job, repo, fetch=ray.get)


@ray.remote(num_cpus=0)
def _sweep(run_id: str) -> int:
    return ray_node.sweep(run_id)


def _probe(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Check that something accepts a TCP connection at ``address`` (``host:port`` or ``ray://host:port``;
    ``auto`` means ``$RAY_ADDRESS`` when set) within ``timeout_s`` seconds. Other addresses (``auto``
    without ``$RAY_ADDRESS``, ``local``) are left to ``ray.init``, which settles them at once.

    Raises:
        ConfigError: nothing answers there, saying how to start a cluster or change the address.
    """
    target = os.environ.get("RAY_ADDRESS", "") if address == "auto" else address
    host, sep, port = target.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise ConfigError(f"no Ray cluster answers at {target!r} (no TCP answer within {timeout_s:.0f} s: {e}). "
                          f"Start one (`ray start --head --resources='{{\"{RESOURCE}\": 2}}'`, see README "
                          "\"Running on a cluster\") or set executor.address / --ray-address.") from None


class RayExecutor:
    """Task-runs as Ray tasks on a cluster (``address`` as ``ray.init`` takes it). Connects on the
    first ``open``; the connection serves every later evaluation of this process."""

    kind = "ray"

    def __init__(self, address: str = "auto") -> None:
        self.address = address
        self._work: EvalWork | None = None
        self._spec: dict | None = None
        self._tasks = None
        self._running: dict[str, object] = {}
        self._lock = threading.Lock()
        self._repos: dict[str, tuple[str, list]] = {}
        self._connected = False

    def connect(self) -> None:
        """Join the cluster once per process.

        Raises:
            ConfigError: no cluster answers at ``address``, or no node declares ``evolve_sandbox``.
        """
        if self._connected:
            return
        if not ray.is_initialized():
            _probe(self.address)
            try:
                env = forwarded_env()  # no runtime env at all when there is nothing to forward: quicker workers
                ray.init(address=self.address, log_to_driver=False, logging_level=logging.WARNING,
                         **({"runtime_env": {"env_vars": env}} if env else {}))
            except (ConnectionError, RuntimeError) as e:
                raise ConfigError(f"no Ray cluster at {self.address!r} ({e}). Start one (`ray start --head "
                                  f"--resources='{{\"{RESOURCE}\": 2}}'`, see README \"Running on a cluster\") "
                                  "or set executor.address / --ray-address.") from None
        if ray.cluster_resources().get(RESOURCE, 0) < 1:
            raise ConfigError(f"no node of the Ray cluster declares the resource {RESOURCE!r}: start nodes that "
                              f"have a Docker engine with `ray start ... --resources='{{\"{RESOURCE}\": N}}'`")
        self._connected = True

    def open(self, work: EvalWork) -> None:
        self.connect()
        harness = work.harness
        # Put once, referenced by every task-run (wrapped in lists: fetched lazily). A repository is
        # put once per executor, so every evaluation of an `evolve run` shares it.
        harness_tar = ray_node.tar_dir(harness.root)
        repos = {t.repo_path: self._repo(work.evalset.repo_dir(t)) for t in work.tasks if t.repo_path}
        self._spec = {"run_id": work.run_id, "settings": work.settings, "harness_key": "harness-" + harness.tree_hash,
                      "harness_ref": [ray.put(harness_tar)], "harness_spec": harness.spec.model_dump(),
                      "tree_hash": harness.tree_hash, "source": harness.source, "repos": repos}
        self._tasks = ray.put({t.instance_id: t for t in work.tasks})
        self._work = work

    def run(self, job: Job, scratch: Path) -> tuple[TaskResult, Files]:
        """As ``Executor.run``. A task-run whose worker process or node died is infrastructure: it
        is written as an ``infra_retry`` event and submitted again (Ray places it on a node with a
        free slot, the dead one excluded once the cluster notices), ``SYSTEM_RETRIES`` times;
        then the result is ``infra``. The result's ``attempts`` counts these tries too."""
        work = self._work
        assert work is not None and self._spec is not None, "open() first"
        iid, errors = job.task.instance_id, []
        for n in range(1, SYSTEM_RETRIES + 2):
            if work.stop.is_set():
                raise Cancelled()
            ref = _task_run.remote(self._spec, self._tasks, iid, job.repeat, job.key)
            with self._lock:
                self._running[job.key] = ref
            try:
                out = ray.get(ref)
                break
            except ray.exceptions.RayTaskError as e:
                if work.stop.is_set():
                    raise Cancelled() from None
                cause = e.cause if isinstance(e.cause, BaseException) else e
                raise cause from None  # ModelError, a bug: as the local executor raises it
            except ray.exceptions.RayError as e:  # WorkerCrashedError, NodeDiedError, TaskCancelledError ...
                if work.stop.is_set():
                    raise Cancelled() from None
                errors.append(f"ray attempt {n}: {type(e).__name__}: {str(e)[:300]}")
                log.warning("task-run %s r%d lost on the cluster: %s", iid, job.repeat, errors[-1])
                if n > SYSTEM_RETRIES:
                    return infra_result(job, "; ".join(errors[-3:]), attempts=len(errors)), {}
                work.on_event("infra_retry", iid, job.repeat, errors[-1])
                work.stop.wait(min(2.0 ** n, 16.0))  # time for the cluster to notice a dead node
            finally:
                with self._lock:
                    self._running.pop(job.key, None)
        for event in out["events"]:
            work.on_event(*event)
        result: TaskResult = out["result"]
        return result.model_copy(update={"node": out["node"], "attempts": result.attempts + len(errors)}), out["files"]

    def validate(self, job: ValidationJob) -> str | None:
        """As ``LocalExecutor.validate``, on a node with a free ``evolve_sandbox``. Each repository
        is put once per executor (by path: synthesis writes it before validating). A node lost
        ``SYSTEM_RETRIES + 1`` times drops the task with the reason, as a grader infrastructure error does."""
        with self._lock:
            self.connect()
        repo = self._repo(job.repo_dir) if job.repo_dir is not None else None
        import dataclasses

        try:
            return ray.get(_validate.remote(dataclasses.replace(job, repo_dir=None), repo))
        except ray.exceptions.RayTaskError as e:
            raise (e.cause if isinstance(e.cause, BaseException) else e) from None
        except ray.exceptions.RayError as e:
            return f"grader infrastructure error: ray: {type(e).__name__}: {str(e)[:300]}"

    def _repo(self, repo_dir: Path) -> tuple[str, list]:
        """``(key, [ObjectRef])`` of the tar of ``repo_dir``, put on first need (by path: eval sets
        and synthesized repositories are not rewritten while evolve uses them)."""
        path = str(repo_dir)
        with self._lock:
            if path not in self._repos:
                data = ray_node.tar_dir(repo_dir)
                self._repos[path] = ("repo-" + hashlib.sha256(data).hexdigest()[:24], [ray.put(data)])
            return self._repos[path]

    def cancel(self) -> None:
        with self._lock:
            refs = list(self._running.values())
        for ref in refs:
            ray.cancel(ref, force=True)  # kills the worker; its containers go in the sweep below
        self._sweep_nodes()

    def close(self) -> None:
        if self._work is not None:
            self._sweep_nodes()
        self._work = self._spec = self._tasks = None

    def _sweep_nodes(self) -> None:
        """``ray_node.sweep`` of this run on every live node that declares ``evolve_sandbox``."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        if self._work is None:
            return
        nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get(RESOURCE)]
        refs = [_sweep.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False))
                .remote(self._work.run_id) for n in nodes]
        done, pending = ray.wait(refs, num_returns=len(refs), timeout=180)
        for ref in done:
            try:
                ray.get(ref)
            except ray.exceptions.RayError as e:
                log.warning("sweeping a node's containers of %s failed (its next worker will): %s",
                            self._work.run_id, e)
        if pending:
            log.warning("%d node(s) did not sweep %s within 180 s", len(pending), self._work.run_id)
