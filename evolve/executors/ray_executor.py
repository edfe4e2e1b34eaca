"""The Ray executor: task-runs on the nodes of a Ray cluster.

Placement: each task-run asks for one unit of the custom resource ``evolve_sandbox`` (and no CPU:
its work happens in containers), so a node started with ``--resources='{"evolve_sandbox": N}'``
takes at most N at once, and only nodes that declare it (they have a Docker engine) take any.

What travels: the head puts the harness tree and the split's task rows into Ray's object store
once per evaluation, and each task repository (a tar of its directory) once per process; every
task-run references them and a worker process unpacks each once (``ray_node``); the harness's
environment (built on the head, ``taskrun.agent_env``) is put once per process and unpacked once
per node. The model call path stays
container → unix socket → gateway → litellm → model, with the gateway in the worker process beside
the container: API keys reach it through the job's runtime env (``env_vars``: the variables of this
process named in ``forwarded_env``), never a container. Back to the head come the ``TaskResult``,
the files (trace, trajectory, patch, test output) and the retry events, which the evaluation writes
into the same ``runs/`` and cache layout as the local executor; the result records the node's id.

Images: the head fixes the image id of every image the evaluation uses (``images.head_ids``: its
engine's, else its saved copy's). A node that lacks one answers ``need_images`` before running
anything; the head then puts its saved copy (``docker save | gzip``, made once per image id and
kept in ``$EVOLVE_HOME/images/saved/``) into the object store in ``images.CHUNK_BYTES`` pieces, once
for all the evaluations of this process running at once (``_Shared``: ``evaluate_many``'s executors
share it; freed when the last of them closes), and submits the task-run again; the node loads it
once (a per-node file lock), checks the id, and the task-run's events say which node loaded what
(``image_loaded``). A load that fails (corrupt bytes, another image id, docker refusing) is this
node's infrastructure: an ``infra_retry`` event and the task-run goes to another node; with no
node left, ``infra``.
Each node records what it loaded and removes it once unused for ``image_ttl_hours``
(``loaded_images``).

Ray Client: ``address`` may be ``ray://HOST:PORT``, so evolve (the head, in these docstrings) need
not run on a node of the cluster: everything above travels through the client connection, the
images come from the Docker engine of the machine where evolve runs, and nothing assumes a path
or file lock shared with a node.

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
import time
from pathlib import Path

import ray

from evolve.errors import ConfigError
from evolve.executors import EvalWork, ValidationJob
from evolve.executors import ray_node
from evolve.config import IMAGE_TTL_HOURS
from evolve.taskrun import Cancelled, Files, Job, infra_result
from evolve.types import TaskResult

log = logging.getLogger(__name__)

RESOURCE = "evolve_sandbox"
"""The custom resource a node declares for each task-run it may hold at once."""
CONNECT_TIMEOUT_S = 10.0
"""Seconds to wait for a TCP answer at a ``host:port`` address before ``ray.init`` (which, with no
cluster there, waits for it without end)."""
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
    node = ray.get_runtime_context().get_node_id()
    return {**ray_node.run_remote(spec, tasks, instance_id, repeat, key, fetch=ray.get, node_id=node), "node": node}


@ray.remote(num_cpus=0, resources={RESOURCE: 1}, max_retries=SYSTEM_RETRIES, retry_exceptions=False)
def _validate(job, repo, images) -> dict:
    node = ray.get_runtime_context().get_node_id()
    return {**ray_node.validate_remote(job, repo, images, fetch=ray.get, node_id=node), "node": node}


@ray.remote(num_cpus=0)
def _sweep(run_id: str) -> int:
    return ray_node.sweep(run_id)


@ray.remote(num_cpus=0)
def _sweep_here(image_ttl_hours: float | None) -> tuple[int, list[str]]:
    from evolve.executors.loaded_images import sweep_here

    return sweep_here(image_ttl_hours)


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


def _no_cluster(address: str, error: BaseException) -> str:
    """What to do when ``ray.init(address)`` failed with ``error``: for a ``ray://`` address (Ray
    Client), which port it takes and that versions must match; else how to start a cluster."""
    import platform

    target = os.environ.get("RAY_ADDRESS", "") if address == "auto" else address
    if target.startswith("ray://"):
        return (f"could not connect to the Ray cluster at {target!r} through Ray Client ({error}). A ray:// address "
                "names the head's Ray Client server: port 10001 unless the head was started with "
                "`ray start --head --ray-client-server-port=PORT`; the GCS port (6379) takes HOST:PORT without "
                f"ray://. This machine must have the cluster's Ray and Python versions (here Ray {ray.__version__}, "
                f"Python {platform.python_version()}) and the ray extra (pip install 'evolve[ray]': ray[client]). "
                "\"Starting Ray client server failed\" means the head did not start the server for this client in "
                "time: on a busy head, start Ray there with RAY_CLIENT_SERVER_CHECK_CHANNEL_TIMEOUT_S=120 "
                "(seconds; Ray's default is 30).")
    return (f"no Ray cluster at {address!r} ({error}). Start one (`ray start --head "
            f"--resources='{{\"{RESOURCE}\": 2}}'`, see README \"Running on a cluster\") "
            "or set executor.address / --ray-address.")


class _Shared:
    """What every ``RayExecutor`` of this process shares in Ray's object store: ``evaluate_many``
    runs one executor per evaluation of a race's round, at once, and they need the same images,
    repositories and often the same harness environment. Each is put once per process, not once
    per executor."""

    def __init__(self) -> None:
        self.connect_lock = threading.Lock()
        """Held while joining the cluster (``ray.init`` once per process)."""
        self.lock = threading.Lock()
        self.images: dict[tuple[str, str], dict] = {}
        """``{(ref, image id): {"sha256", "size", "chunks": [ObjectRef]}}``: the head's saved copies,
        kept while an executor that shipped or used one is open (``holders``), then freed."""
        self.holders: dict[tuple[str, str], set] = {}
        self.repos: dict[str, tuple[str, list]] = {}
        """``{repository path: (key, [ObjectRef of its tar])}``, kept for the process."""
        self.envs: dict[str, list] = {}
        """``{harness environment key: [ObjectRef of the tar of its directory]}``, kept for the process."""

    def release(self, holder: object) -> None:
        """``holder`` (an executor) no longer needs the image copies it held: free those no one holds."""
        with self.lock:
            for key in [k for k, held in self.holders.items() if holder in held]:
                self.holders[key].discard(holder)
                if not self.holders[key]:
                    del self.holders[key]
                    self.images.pop(key, None)


_shared = _Shared()


class RayExecutor:
    """Task-runs as Ray tasks on a cluster (``address`` as ``ray.init`` takes it). Connects on the
    first ``open``; the connection serves every later evaluation of this process."""

    kind = "ray"

    def __init__(self, address: str = "auto", image_ttl_hours: float | None = IMAGE_TTL_HOURS) -> None:
        self.address = address
        self.image_ttl_hours = image_ttl_hours
        """Images evolve loaded onto a node and no task-run used for this long are removed by the
        node's next worker process (``loaded_images.prune``); None: never."""
        self._work: EvalWork | None = None
        self._spec: dict | None = None
        self._tasks = None
        self._running: dict[str, object] = {}
        self._lock = threading.Lock()
        self._connected = False
        self._client = None
        self._images: dict[str, dict] = {}
        """``{ref: {"id": image id, "payload": None or {"sha256", "size", "chunks": [ObjectRef]}}}``:
        replaced whole when it changes (jobs being submitted read it without a lock)."""

    def connect(self) -> None:
        """Join the cluster once per process.

        Raises:
            ConfigError: no cluster answers at ``address``, or no node declares ``evolve_sandbox``.
        """
        if self._connected:
            return
        with _shared.connect_lock:  # evaluate_many opens several executors at once: one ray.init
            if not ray.is_initialized():
                _probe(self.address)
                try:
                    env = forwarded_env()  # no runtime env at all when there is nothing to forward: quicker workers
                    ray.init(address=self.address, log_to_driver=False, logging_level=logging.WARNING,
                             **({"runtime_env": {"env_vars": env}} if env else {}))
                except (ConnectionError, RuntimeError) as e:
                    raise ConfigError(_no_cluster(self.address, e)) from None
        if ray.cluster_resources().get(RESOURCE, 0) < 1:
            raise ConfigError(f"no node of the Ray cluster declares the resource {RESOURCE!r}: start nodes that "
                              f"have a Docker engine with `ray start ... --resources='{{\"{RESOURCE}\": N}}'`")
        self._connected = True

    def open(self, work: EvalWork) -> None:
        self.connect()
        harness = work.harness
        task_refs = self._resolve_images(work)
        # Put once, referenced by every task-run (wrapped in lists: fetched lazily). A repository is
        # put once per process, so every evaluation of an `evolve run` shares it.
        harness_tar = ray_node.tar_dir(harness.root)
        repos = {t.repo_path: self._repo(work.evalset.repo_dir(t)) for t in work.tasks if t.repo_path}
        self._spec = {"run_id": work.run_id, "settings": work.settings, "harness_key": "harness-" + harness.tree_hash,
                      "harness_ref": [ray.put(harness_tar)], "harness_spec": harness.spec.model_dump(),
                      "tree_hash": harness.tree_hash, "source": harness.source, "repos": repos,
                      "task_refs": task_refs, "envs": self._harness_envs(work, task_refs),
                      "image_ttl_hours": self.image_ttl_hours}
        self._tasks = ray.put({t.instance_id: t for t in work.tasks})
        self._work = work

    def _resolve_images(self, work: EvalWork) -> dict:
        """Fix the image id of every image ``work`` uses (``images.head_ids``; images the head has
        neither in its engine nor saved are got as the local executor gets them) and return
        ``{task image: ref}``.

        Raises:
            SandboxError: as ``taskrun.task_images``: images that cannot be had, named.
        """
        from evolve.errors import SandboxError
        from evolve.evalsets.registry import evolve_home
        from evolve.executors import images
        from evolve.harness_env import agent_image
        from evolve.sandbox.docker import docker_client
        from evolve.sandbox.image import base_image_tag, ensure_image
        from evolve.taskrun import task_images

        if self._client is None:
            try:
                self._client = docker_client()
            except SandboxError as e:
                raise SandboxError(f"{e} With --executor ray the machine running evolve needs a Docker engine too "
                                   "(also with a ray:// address): it fixes the image id of every task and ships "
                                   "its copies to the nodes that lack them.") from None
        client, home = self._client, evolve_home()
        task_refs = {t.image: t.image or base_image_tag() for t in work.tasks}
        ids = images.head_ids(client, task_refs.values(), home)
        absent = [t for t in work.tasks if task_refs[t.image] not in ids]
        if absent:
            task_refs.update(task_images(client, absent, work.split))  # present, pulled or built; else an error
            ids.update(images.head_ids(client, task_refs.values(), home))
        for ref in {agent_image(work.harness, r) for r in task_refs.values()} - ids.keys():
            ids[ref] = images.engine_id(client, ensure_image(client, ref))
        kept = {ref: entry for ref, entry in self._images.items() if ids.get(ref) == entry["id"]}
        self._images = {ref: kept.get(ref, {"id": image_id, "payload": None}) for ref, image_id in ids.items()}
        return task_refs

    def _harness_envs(self, work: EvalWork, task_refs: dict) -> dict:
        """``{task image ref: shipped environment}`` (``ray_node._Node.env``): the harness's
        environment for each image, built or found on the head as the local executor does
        (``taskrun.agent_env``; an image the head has only saved is loaded into its engine first)
        and put once per process (``_Shared``). Empty when the harness declares no requirements.

        Raises:
            HarnessError: as ``agent_env``.
            SandboxError: the head's saved copy of an image cannot be loaded on the head.
        """
        from evolve.errors import SandboxError
        from evolve.evalsets.registry import evolve_home
        from evolve.executors import images
        from evolve.harness_env import agent_image
        from evolve.taskrun import agent_env

        if not work.harness.requirements:
            return {}
        home, out = evolve_home(), {}
        for ref in set(task_refs.values()):
            agent_ref = agent_image(work.harness, ref)
            image_id = self._images[agent_ref]["id"]
            if images.engine_id(self._client, agent_ref) != image_id:  # only saved: the env is built in it here
                saved = images.saved_copy(self._client, agent_ref, image_id, home)
                try:
                    images.load(self._client, agent_ref, image_id, saved.sha256, saved.size, saved.chunks(), home=home,
                                have=lambda: images.engine_id(self._client, agent_ref) == image_id)
                except images.LoadError as e:
                    raise SandboxError(f"the head cannot load its own saved copy of {agent_ref}: {e}") from None
            _, env = agent_env(self._client, work.harness, ref, work.settings)
            with _shared.lock:
                if env.key not in _shared.envs:
                    _shared.envs[env.key] = [ray.put(ray_node.tar_dir(env.root))]
            out[ref] = {"key": env.key, "tar": _shared.envs[env.key], "image": env.image,
                        "python": dict(env.python.__dict__),
                        "requirements": list(env.requirements)}
        return out

    def _ship(self, refs: list[str], say=lambda detail: None) -> None:
        """Put the head's saved copy of each of ``refs`` into the object store, unless an open
        executor of this process has put it (``_Shared``); this executor holds it until ``close``.

        Raises:
            InfraError: the head cannot make a saved copy (``images.saved_copy``).
        """
        from evolve.evalsets.registry import evolve_home
        from evolve.executors import images

        with _shared.lock:  # another executor of this process may have put it: then it is shared
            for ref in refs:
                entry = self._images[ref]
                if entry["payload"] is not None:
                    continue
                key = (ref, entry["id"])
                if key not in _shared.images:
                    start = time.monotonic()
                    saved = images.saved_copy(self._client, ref, entry["id"], evolve_home())
                    chunks = [ray.put(block) for block in saved.chunks()]
                    _shared.images[key] = {"sha256": saved.sha256, "size": saved.size, "chunks": chunks}
                    say(f"head shipped {ref} ({entry['id']}): {saved.size} bytes in {len(chunks)} pieces, "
                        f"{time.monotonic() - start:.1f} s to save and put")
                _shared.holders.setdefault(key, set()).add(self)
                self._images = {**self._images, ref: {**entry, "payload": _shared.images[key]}}

    def _submit(self, key: str, submit, say) -> dict:
        """``ray.get`` of ``submit()``, shipping images and submitting again while the node
        answers ``need_images`` (at most once per image). Raises what ``ray.get`` raises and
        ``InfraError`` of ``_ship``."""
        for _ in range(len(self._images) + 1):
            ref = submit()
            with self._lock:
                self._running[key] = ref
            try:
                out = ray.get(ref)
            finally:
                with self._lock:
                    self._running.pop(key, None)
            if "need_images" not in out:
                return out
            self._ship(out["need_images"], say)
        raise RuntimeError(f"a node kept asking for images already shipped: {out['need_images']}")

    def _elsewhere(self, failed: set[str]) -> dict | None:
        """Ray options that keep a task-run off the nodes in ``failed`` (their image load failed):
        ``{}`` when none failed, None when no other live node declares ``evolve_sandbox``."""
        import random

        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        if not failed:
            return {}
        others = [n["NodeID"] for n in ray.nodes()
                  if n.get("Alive") and n.get("Resources", {}).get(RESOURCE) and n["NodeID"] not in failed]
        if not others:
            return None
        return {"scheduling_strategy": NodeAffinitySchedulingStrategy(random.choice(others), soft=False)}

    def run(self, job: Job, scratch: Path) -> tuple[TaskResult, Files]:
        """As ``Executor.run``. A task-run whose worker process or node died, or whose node could
        not load an image, is infrastructure: it is written as an ``infra_retry`` event and
        submitted again (Ray places it on a node with a free slot, the dead one excluded once the
        cluster notices; after a failed load, on another node), ``SYSTEM_RETRIES`` times;
        then the result is ``infra``. The result's ``attempts`` counts these tries too."""
        from evolve.errors import InfraError

        work = self._work
        assert work is not None and self._spec is not None, "open() first"
        iid, errors, failed = job.task.instance_id, [], set()
        say = lambda detail: work.on_event("image_shipped", iid, job.repeat, detail)  # noqa: E731
        for n in range(1, SYSTEM_RETRIES + 2):
            if work.stop.is_set():
                raise Cancelled()
            opts = self._elsewhere(failed)
            if opts is None:
                return infra_result(job, "; ".join(errors[-3:]) + "; no other node to try", attempts=len(errors)), {}
            try:
                out = self._submit(job.key, lambda: _task_run.options(**opts).remote(
                    {**self._spec, "images": self._images}, self._tasks, iid, job.repeat, job.key), say)
                if "image_error" not in out:
                    break
                errors.append(f"ray attempt {n}: {out['image_error']}")
                failed.add(out["node"])
                log.warning("task-run %s r%d: %s", iid, job.repeat, errors[-1])
                if n > SYSTEM_RETRIES:
                    return infra_result(job, "; ".join(errors[-3:]), attempts=len(errors)), {}
                work.on_event("infra_retry", iid, job.repeat, errors[-1])
            except ray.exceptions.RayTaskError as e:
                if work.stop.is_set():
                    raise Cancelled() from None
                cause = e.cause if isinstance(e.cause, BaseException) else e
                raise cause from None  # ModelError, a bug: as the local executor raises it
            except InfraError as e:  # the head cannot ship an image: no node can do better
                return infra_result(job, f"{e}", attempts=len(errors) + 1), {}
            except ray.exceptions.RayError as e:  # WorkerCrashedError, NodeDiedError, TaskCancelledError ...
                if work.stop.is_set():
                    raise Cancelled() from None
                errors.append(f"ray attempt {n}: {type(e).__name__}: {str(e)[:300]}")
                log.warning("task-run %s r%d lost on the cluster: %s", iid, job.repeat, errors[-1])
                if n > SYSTEM_RETRIES:
                    return infra_result(job, "; ".join(errors[-3:]), attempts=len(errors)), {}
                work.on_event("infra_retry", iid, job.repeat, errors[-1])
                work.stop.wait(min(2.0 ** n, 16.0))  # time for the cluster to notice a dead node
        for event in out["events"]:
            work.on_event(*event)
        result: TaskResult = out["result"]
        return result.model_copy(update={"node": out["node"], "attempts": result.attempts + len(errors)}), out["files"]

    def validate(self, job: ValidationJob) -> str | None:
        """As ``LocalExecutor.validate``, on a node with a free ``evolve_sandbox``. Each repository
        is put once per process (by path: synthesis writes it before validating). A node lost
        ``SYSTEM_RETRIES + 1`` times drops the task with the reason, as a grader infrastructure error does."""
        import dataclasses

        from evolve.errors import InfraError
        from evolve.evalsets.registry import evolve_home
        from evolve.executors import images
        from evolve.sandbox.docker import docker_client

        with self._lock:
            self.connect()
            if job.image not in self._images:  # the image synthesis built on the head
                if self._client is None:
                    self._client = docker_client()
                ids = images.head_ids(self._client, [job.image], evolve_home())
                if job.image not in ids:
                    return f"grader infrastructure error: image {job.image} is neither in the head's engine nor saved"
                self._images = {**self._images, job.image: {"id": ids[job.image], "payload": None}}
        repo = self._repo(job.repo_dir) if job.repo_dir is not None else None
        remote_job, failed, errors = dataclasses.replace(job, repo_dir=None), set(), []
        for _ in range(SYSTEM_RETRIES + 1):
            opts = self._elsewhere(failed)
            if opts is None:
                break
            try:
                out = self._submit(f"validate-{job.task.instance_id}-{threading.get_ident()}", lambda: _validate.options(
                    **opts).remote(remote_job, repo, {job.image: self._images[job.image]}), say=log.info)
            except ray.exceptions.RayTaskError as e:
                raise (e.cause if isinstance(e.cause, BaseException) else e) from None
            except InfraError as e:  # the head cannot ship the image
                return f"grader infrastructure error: {e}"
            except ray.exceptions.RayError as e:
                return f"grader infrastructure error: ray: {type(e).__name__}: {str(e)[:300]}"
            if "image_error" not in out:
                return out["reason"]
            errors.append(out["image_error"])
            failed.add(out["node"])
        return "grader infrastructure error: " + "; ".join(errors[-3:])

    def _repo(self, repo_dir: Path) -> tuple[str, list]:
        """``(key, [ObjectRef])`` of the tar of ``repo_dir``, put on first need (by path: eval sets
        and synthesized repositories are not rewritten while evolve uses them)."""
        path = str(repo_dir)
        with _shared.lock:
            if path not in _shared.repos:
                data = ray_node.tar_dir(repo_dir)
                _shared.repos[path] = ("repo-" + hashlib.sha256(data).hexdigest()[:24], [ray.put(data)])
            return _shared.repos[path]

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
        self._images = {ref: {**entry, "payload": None} for ref, entry in self._images.items()}
        _shared.release(self)  # frees the copies no other open executor of this process uses

    def sweep_cluster(self, image_ttl_hours: float | None) -> dict[str, tuple[int, list[str]]]:
        """``loaded_images.sweep_here`` on every live node that declares ``evolve_sandbox``:
        ``{node id: (containers removed, image lines)}`` (``evolve sandbox sweep --executor ray``).

        Raises:
            ConfigError: as ``connect``.
            InfraError: a node's sweep failed or did not answer within 180 s, named.
        """
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from evolve.errors import InfraError

        self.connect()
        nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get(RESOURCE)]
        refs = {n: _sweep_here.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False))
                .remote(image_ttl_hours) for n in nodes}
        out = {}
        for node_id, ref in refs.items():
            try:
                out[node_id] = ray.get(ref, timeout=180)
            except ray.exceptions.RayTaskError as e:
                cause = e.cause if isinstance(e.cause, BaseException) else e
                raise InfraError("sweep", f"sweeping node {node_id} failed: {cause}") from None
            except ray.exceptions.RayError as e:
                raise InfraError("sweep", f"sweeping node {node_id} failed: {type(e).__name__}: {e}") from None
        return out

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
