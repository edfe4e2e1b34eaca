"""The worker side of the Ray executor: what a task-run needs on the node where it lands.

Runs inside a Ray worker process on a node that declares ``evolve_sandbox``. Per process, on
first need: a docker client of the node's engine (and a sweep of what dead evolve processes left
on it), the task images (present with the head's image id, else loaded from the head's saved copy:
``executors.images``; a node without the head's copy asks for it by answering ``need_images``; on its
first task-run the process removes images evolve loaded here that no task-run used for
``image_ttl_hours``: ``executors.loaded_images``), the model backend
(built here from the model string and whatever keys the node's environment holds: the gateway
runs on this node, beside the container), and the harness trees and repositories the head put in
Ray's object store, unpacked once into a private temp dir (swept once the process is dead).
Nothing here imports Ray: ``fetch`` is handed in by ``ray_executor``.
"""

from __future__ import annotations

import io
import tarfile
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

from evolve.config import EvalSettings
from evolve.harness import Harness, HarnessSpec
from evolve.taskrun import Files, Job, TaskContext, run_task
from evolve.types import Task

_RECHECK_S = 600.0
"""Seconds a worker process trusts what it saw of an image in the node's engine, and between its
marks of an image as used (``loaded_images.touch``): far below any useful ``image_ttl_hours``."""
_CONTEXTS_KEPT = 4
"""Evaluations whose context a worker process keeps (``evolve run`` makes one per candidate)."""


def tar_dir(root: Path) -> bytes:
    """``root``'s files (symlinks as links, modes kept) as an uncompressed tar, names relative to it."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for p in sorted(root.rglob("*")):
            tar.add(p, arcname=p.relative_to(root).as_posix(), recursive=False)
    return buf.getvalue()


class _Node:
    """This worker process's docker client, images, backends and unpacked trees."""

    def __init__(self) -> None:
        from evolve import owner
        from evolve.sandbox.docker import docker_client, sweep_stale

        self.lock = threading.Lock()
        self.client = docker_client()
        sweep_stale(self.client)  # leftovers of dead evolve processes on this node (a killed worker)
        self._dir = owner.temp_dir("node")  # removed at exit, swept after a kill -9
        self.root = Path(self._dir.name)
        self.images: dict[str, tuple[str, float]] = {}
        """``{ref: (image id, time.monotonic() when seen)}`` in this node's engine."""
        self.touched: dict[str, float] = {}
        """``{image id: time.monotonic()}`` when this process last marked it used (``loaded_images.touch``)."""
        self.pruned = False
        """Whether this process has run ``loaded_images.prune`` (once, on its first task-run)."""
        self.backends: dict[str, Any] = {}
        self.trees: dict[str, Path] = {}
        self.contexts: OrderedDict[str, TaskContext] = OrderedDict()

    def has(self, ref: str, image_id: str) -> bool:
        """Whether this node's engine holds ``ref`` as ``image_id``."""
        from evolve.executors.images import engine_id

        seen = self.images.get(ref)
        if seen is None or seen[0] != image_id or time.monotonic() - seen[1] > _RECHECK_S:
            found = engine_id(self.client, ref)
            if found is None:
                self.images.pop(ref, None)
                return False
            self.images[ref] = (found, time.monotonic())
        return self.images[ref][0] == image_id

    def ensure_images(self, images: dict, refs: list[str], fetch: Callable[[Any], bytes],
                      node_id: str) -> dict:
        """Make ``refs`` present here as ``images[ref]["id"]``, loading the head's copies
        (``images[ref]["payload"]``). Returns ``{"need_images": [ref]}`` (copies the head must ship
        first), ``{"image_error": why}`` (a load failed: infrastructure of this node), or
        ``{"loaded": [what was loaded, for events]}``."""
        from evolve.errors import InfraError
        from evolve.evalsets.registry import evolve_home
        from evolve.executors import loaded_images
        from evolve.executors.images import LoadError, load, node_lock

        missing = [r for r in dict.fromkeys(refs) if not self.has(r, images[r]["id"])]
        need = [r for r in missing if images[r]["payload"] is None]
        if need:
            return {"need_images": need}
        now = time.monotonic()
        stale = [i for i in dict.fromkeys(images[r]["id"] for r in refs if r not in missing)
                 if i not in self.touched or now - self.touched[i] >= _RECHECK_S]
        if stale:  # in use: not to be pruned (at most once per _RECHECK_S per image and process)
            with node_lock(evolve_home()):
                loaded_images.touch(evolve_home(), stale)
            self.touched.update(dict.fromkeys(stale, now))
        loaded = []
        for ref in missing:
            image_id, p = images[ref]["id"], images[ref]["payload"]
            try:
                done = load(self.client, ref, image_id, p["sha256"], p["size"], (fetch(c) for c in p["chunks"]),
                            home=evolve_home(), have=lambda: self.has(ref, image_id))
            except (LoadError, InfraError) as e:
                return {"image_error": f"loading image {ref} on node {node_id} failed: {e}"}
            self.touched[image_id] = time.monotonic()
            if done is not None:
                loaded.append(f"node {node_id} loaded {ref} ({image_id}): {done['bytes']} bytes from the head's "
                              f"saved copy in {done['seconds']} s")
        return {"loaded": loaded}

    def prune_once(self, ttl_hours: float | None, node_id: str) -> str | None:
        """On this process's first call: ``loaded_images.prune`` of images evolve loaded here and
        no task-run used for ``ttl_hours`` (None: never). Returns what was done, for an event."""
        from evolve.errors import InfraError
        from evolve.evalsets.registry import evolve_home
        from evolve.executors import loaded_images
        from evolve.executors.images import node_lock

        if self.pruned or ttl_hours is None:
            return None
        self.pruned = True
        try:
            with node_lock(evolve_home()):
                done = loaded_images.prune(self.client, evolve_home(), ttl_hours * 3600)
        except InfraError as e:
            return f"node {node_id} could not prune the images evolve loaded: {e}"
        return f"node {node_id}: " + "; ".join(done) if done else None

    def backend(self, settings: EvalSettings):
        import json

        from evolve.models import backend_for

        key = json.dumps([settings.model, settings.model_params], sort_keys=True, default=str)
        if key not in self.backends:  # kept for the process's life (a scripted server is a thread)
            self.backends[key] = backend_for(settings.model, settings.model_params)[0]
        return self.backends[key]

    def env(self, shipped: dict, fetch: Callable[[Any], bytes], node_id: str):
        """``(HarnessEnv, what was done or None)``: the head's harness environment (``shipped``:
        ``key``, ``tar`` (``[ObjectRef]`` of the tar of its directory), ``image``, ``python``,
        ``requirements``) at ``$EVOLVE_HOME/envs/<key>`` on this node, unpacked there (renamed into
        place once complete) unless it is there already. The same bytes on every node: nodes need
        no package index and build nothing."""
        import shutil
        import tempfile

        from evolve.evalsets.registry import evolve_home
        from evolve.executors.images import node_lock
        from evolve.harness_env import HarnessEnv, ImagePython

        home, key = evolve_home(), shipped["key"]
        root = home / "envs" / key[:24]
        env = HarnessEnv(root, key, shipped["image"], ImagePython(**shipped["python"]), tuple(shipped["requirements"]))
        with node_lock(home):
            if (root / "evolve-env.json").is_file():
                return env, None
            root.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{key[:24]}-", dir=root.parent))
            try:
                data = fetch(shipped["tar"][0])
                with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
                    tar.extractall(tmp, filter="tar")
                tmp.chmod(0o755)
                tmp.rename(root)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        return env, f"node {node_id} unpacked the harness environment {key[:12]} ({len(data)} bytes) from the head"

    def tree(self, key: str, ref: list, fetch: Callable[[Any], bytes]) -> Path:
        """The directory holding the tar ``ref[0]`` (named by ``key``), unpacked on first need."""
        if key not in self.trees:
            dest = self.root / "trees" / key
            part = dest.with_name(key + ".part")
            with tarfile.open(fileobj=io.BytesIO(fetch(ref[0])), mode="r") as tar:
                tar.extractall(part, filter="tar")
            part.rename(dest)
            self.trees[key] = dest
        return self.trees[key]


_node: _Node | None = None
_node_lock = threading.Lock()


def node() -> _Node:
    """This process's ``_Node``, made on first call."""
    global _node
    with _node_lock:
        if _node is None:
            _node = _Node()
        return _node


def run_remote(spec: dict, tasks: dict[str, Task], instance_id: str, repeat: int, key: str,
               fetch: Callable[[Any], bytes], node_id: str = "") -> dict:
    """Run one job on this node and return ``{"result": TaskResult, "files": {name: bytes},
    "events": [(event, instance_id, repeat, detail)]}``, or, before anything ran, ``{"need_images":
    [ref]}`` or ``{"image_error": why}`` (``_Node.ensure_images``).

    ``spec``: ``run_id``, ``settings``, the harness (``harness_key``, ``harness_ref``: ``[ObjectRef]``,
    ``harness_spec``, ``tree_hash``, ``source``), ``repos`` (``{repo_path: (key, [ObjectRef])}``),
    ``images`` (``{ref: {"id": image id, "payload": None or {"sha256", "size", "chunks": [ObjectRef]}}}``)
    ``task_refs`` (``{task image: ref}``) and ``envs`` (``{ref: shipped harness environment}``, see
    ``_Node.env``; empty when the harness declares no requirements).
    Refs come wrapped in a list so that Ray does not fetch them for every job: ``fetch`` gets one
    only the first time this process needs it.
    """
    n = node()
    events: list[tuple] = []
    with n.lock:
        ctx = n.contexts.get(spec["run_id"])
        if ctx is None:
            settings: EvalSettings = spec["settings"]
            root = n.tree(spec["harness_key"], spec["harness_ref"], fetch)
            harness = Harness(HarnessSpec.model_validate(spec["harness_spec"]), root, spec["tree_hash"],
                              spec["source"])
            repos = {path: n.tree(k, ref, fetch) for path, (k, ref) in spec["repos"].items()}
            ctx = TaskContext(client=n.client, images={}, backend=n.backend(settings), harness=harness,
                              settings=settings, run_id=spec["run_id"],
                              repo_dir=lambda t, repos=repos: repos[t.repo_path] if t.repo_path else None)
            n.contexts[spec["run_id"]] = ctx
            while len(n.contexts) > _CONTEXTS_KEPT:
                n.contexts.popitem(last=False)
        task = tasks[instance_id]
        from evolve.harness_env import agent_image

        ref = spec["task_refs"][task.image]
        got = n.ensure_images(spec["images"], [ref, agent_image(ctx.harness, ref)], fetch, node_id)
        if "loaded" not in got:
            return got
        events += [("image_loaded", instance_id, repeat, detail) for detail in got["loaded"]]
        if pruned := n.prune_once(spec.get("image_ttl_hours"), node_id):  # after this job's images were marked used
            events.append(("images_pruned", instance_id, repeat, pruned))
        ctx.images[task.image] = ref
        if task.image not in ctx.agent_envs:  # the head's environment, unpacked here once
            shipped = spec["envs"].get(ref)
            env, detail = n.env(shipped, fetch, node_id) if shipped else (None, None)
            ctx.agent_envs[task.image] = (agent_image(ctx.harness, ref), env)
            if detail:
                events.append(("env_loaded", instance_id, repeat, detail))
    from evolve import owner

    ctx_for_job = TaskContext(client=ctx.client, images=ctx.images, backend=ctx.backend, harness=ctx.harness,
                              settings=ctx.settings, run_id=ctx.run_id, repo_dir=ctx.repo_dir,
                              on_event=lambda *e: events.append(e), agent_envs=ctx.agent_envs, _lock=ctx._lock,
                              _baselines=ctx._baselines)
    with owner.temp_dir("task") as scratch:
        result, files = run_task(ctx_for_job, Job(task, repeat, key), Path(scratch))
        out: Files = {name: (content.read_bytes() if isinstance(content, Path) else content)
                      for name, content in files.items()}
    return {"result": result, "files": out, "events": events}


def validate_remote(job, repo: tuple[str, list] | None, images: dict, fetch: Callable[[Any], bytes],
                    node_id: str = "") -> dict:
    """``synth.synthesize.validate_task`` of ``job`` on this node, its repository unpacked from
    ``repo`` (``(key, [ObjectRef])``, or None when the image holds it), ``job.image`` as in
    ``images`` (as ``run_remote``'s spec). Returns ``{"reason": why dropped or None, "loaded": [...]}``,
    or ``need_images``/``image_error`` as ``_Node.ensure_images``."""
    import dataclasses

    from evolve.synth.synthesize import validate_task

    n = node()
    with n.lock:
        repo_dir = n.tree(repo[0], repo[1], fetch) if repo else None
        got = n.ensure_images(images, [job.image], fetch, node_id)
    if "loaded" not in got:
        return got
    return {"reason": validate_task(n.client, dataclasses.replace(job, repo_dir=repo_dir)), **got}


def sweep(run_id: str) -> int:
    """Remove this node's containers of ``run_id`` (after background removals finished)."""
    from evolve.sandbox.docker import sweep_run, wait_removals

    n = node()
    wait_removals(run_id)
    return sweep_run(n.client, run_id)
