"""The worker side of the Ray executor: what a task-run needs on the node where it lands.

Runs inside a Ray worker process on a node that declares ``evolve_sandbox``. Per process, on
first need: a docker client of the node's engine (and a sweep of what dead evolve processes left
on it), the task images (``ensure_image``: present, pulled, or built offline), the model backend
(built here from the model string and whatever keys the node's environment holds: the gateway
runs on this node, beside the container), and the harness trees and repositories the head put in
Ray's object store, unpacked once into a private temp dir (swept once the process is dead).
Nothing here imports Ray: ``fetch`` is handed in by ``ray_executor``.
"""

from __future__ import annotations

import io
import tarfile
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

from evolve.config import EvalSettings
from evolve.harness import Harness, HarnessSpec
from evolve.taskrun import Files, Job, TaskContext, agent_env, run_task
from evolve.types import Task

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
        self.images: dict[str, str] = {}
        self.backends: dict[str, Any] = {}
        self.trees: dict[str, Path] = {}
        self.contexts: OrderedDict[str, TaskContext] = OrderedDict()

    def image(self, name: str) -> str:
        from evolve.sandbox.image import ensure_image

        if name not in self.images:
            self.images[name] = ensure_image(self.client, name)
        return self.images[name]

    def backend(self, settings: EvalSettings):
        import json

        from evolve.models import backend_for

        key = json.dumps([settings.model, settings.model_params], sort_keys=True, default=str)
        if key not in self.backends:  # kept for the process's life (a scripted server is a thread)
            self.backends[key] = backend_for(settings.model, settings.model_params)[0]
        return self.backends[key]

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
               fetch: Callable[[Any], bytes]) -> dict:
    """Run one job on this node and return ``{"result": TaskResult, "files": {name: bytes},
    "events": [(event, instance_id, repeat, detail)]}``.

    ``spec``: ``run_id``, ``settings``, the harness (``harness_key``, ``harness_ref``: ``[ObjectRef]``,
    ``harness_spec``, ``tree_hash``, ``source``) and ``repos`` (``{repo_path: (key, [ObjectRef])}``).
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
        if task.image not in ctx.images:
            ctx.images[task.image] = n.image(task.image)
        if task.image not in ctx.agent_envs:  # built on this node, from its own wheelhouse cache
            ctx.agent_envs[task.image] = agent_env(n.client, ctx.harness, ctx.images[task.image], ctx.settings)
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


def validate_remote(job, repo: tuple[str, list] | None, fetch: Callable[[Any], bytes]) -> str | None:
    """``synth.synthesize.validate_task`` of ``job`` on this node, its repository unpacked from
    ``repo`` (``(key, [ObjectRef])``, or None when the image holds it)."""
    import dataclasses

    from evolve.synth.synthesize import validate_task

    n = node()
    with n.lock:
        repo_dir = n.tree(repo[0], repo[1], fetch) if repo else None
        image = n.image(job.image)
    return validate_task(n.client, dataclasses.replace(job, repo_dir=repo_dir, image=image))


def sweep(run_id: str) -> int:
    """Remove this node's containers of ``run_id`` (after background removals finished)."""
    from evolve.sandbox.docker import sweep_run, wait_removals

    n = node()
    wait_removals(run_id)
    return sweep_run(n.client, run_id)
