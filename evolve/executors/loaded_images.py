"""What evolve loaded into a node's Docker engine, and removing it once unused for long enough.

A node gets images from the head by ``docker load`` (``images.load``): the sandbox image,
``evolve-testenv-*`` images, task images. Each load is recorded in the node's
``$EVOLVE_HOME/images/loaded.json`` (written atomically, under the node's lock
``images.node_lock``)::

    {image id: {"refs": [tags evolve's loads gave it], "had_before": bool,
                "loaded_at": epoch seconds, "last_used": epoch seconds}}

``had_before`` is true when the engine already held that image id when evolve first loaded a
tag of it (the load only added a tag). Task-runs on the node mark the images they use
(``touch``). ``prune`` removes what evolve loaded and no one used for ``ttl_s`` seconds:

- an image the engine held before evolve's load (``had_before``) is never removed: at most the
  tags evolve added go, and only while the image keeps another tag;
- an image a running container uses is kept (and one a stopped container uses: Docker refuses
  to remove it without force, which evolve never uses);
- otherwise evolve's tags of the image are removed, then the image itself if no tag is left
  (a tag someone else added keeps it: it is theirs now);
- an image evolve loaded that has disappeared (someone removed it) is forgotten.

Images evolve did not load (built or pulled on the node, or there before) have no record and are
never touched. Nothing here imports Ray.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from evolve.config import IMAGE_TTL_HOURS  # noqa: F401  (the default, defined with its setting)

if TYPE_CHECKING:  # pragma: no cover
    import docker


def record_path(home: Path) -> Path:
    return home / "images" / "loaded.json"


def read(home: Path) -> dict[str, dict]:
    """The node's records (``{}`` when there are none). A record file that cannot be parsed
    counts as none: evolve then forgets what it loaded, and never removes what it cannot tell
    it loaded."""
    try:
        data = json.loads(record_path(home).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write(home: Path, records: dict[str, dict]) -> None:
    path = record_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".loaded-", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(records, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def note_load(home: Path, ref: str, image_id: str, *, had_before: bool, now: float | None = None) -> None:
    """Record that evolve loaded ``ref`` as ``image_id`` here; ``had_before``: the engine held
    ``image_id`` before this load (ignored when evolve already has a record of it). Call under
    ``images.node_lock``."""
    now = time.time() if now is None else now
    records = read(home)
    rec = records.get(image_id) or {"refs": [], "had_before": had_before, "loaded_at": now, "last_used": now}
    rec["refs"] = sorted({*rec["refs"], ref})
    rec["last_used"] = now
    records[image_id] = rec
    _write(home, records)


def touch(home: Path, image_ids: Iterable[str], now: float | None = None) -> None:
    """Mark ``image_ids`` used now (those evolve has a record of). Call under ``images.node_lock``."""
    now = time.time() if now is None else now
    records = read(home)
    hit = [i for i in image_ids if i in records]
    if hit:
        for i in hit:
            records[i]["last_used"] = max(records[i]["last_used"], now)
        _write(home, records)


def prune(client: "docker.DockerClient", home: Path, ttl_s: float, now: float | None = None) -> list[str]:
    """Remove what evolve loaded here and no task-run used for ``ttl_s`` seconds (rules in the
    module docstring). Call under ``images.node_lock``. Returns one line per tag or image removed
    or kept against its age (for logs and events).

    Raises:
        InfraError: the engine cannot list its containers.
    """
    from docker.errors import APIError, DockerException, ImageNotFound

    from evolve.errors import InfraError

    now = time.time() if now is None else now
    records = read(home)
    if not records:
        return []
    try:
        in_use = {c.get("ImageID") for c in client.api.containers()}  # running containers
    except DockerException as e:
        raise InfraError("image", f"could not list the containers of this node's engine: {e}") from None
    done: list[str] = []
    kept = dict(records)
    for image_id, rec in records.items():
        try:
            image = client.images.get(image_id)
        except ImageNotFound:
            del kept[image_id]  # removed by someone else: nothing left to look after
            continue
        if now - rec["last_used"] < ttl_s:
            continue
        if image_id in in_use:
            done.append(f"kept {image_id[:19]} ({', '.join(rec['refs'])}): a running container uses it")
            continue
        tags = set(image.tags)
        ours = [r for r in rec["refs"] if r in tags]
        if rec["had_before"] and not tags - set(ours):
            ours = []  # its only tags are evolve's: removing them would remove an image the node had
        try:
            for ref in ours:
                client.images.remove(ref)
                done.append(f"removed tag {ref}" if rec["had_before"] else f"removed {ref} ({image_id[:19]})")
            if not rec["had_before"]:
                try:
                    left = client.images.get(image_id)
                except ImageNotFound:
                    left = None
                if left is not None and not left.tags:  # untagged (a newer load took its tag): evolve's
                    client.images.remove(image_id)
                    done.append(f"removed untagged {image_id[:19]}")
        except APIError as e:
            done.append(f"kept {image_id[:19]} ({', '.join(rec['refs'])}): {e.explanation or e}")
            continue
        del kept[image_id]
    if kept != records:
        _write(home, kept)
    return done


def sweep_here(image_ttl_hours: float | None) -> tuple[int, list[str]]:
    """``evolve sandbox sweep`` on this machine (run on each node of a cluster by the Ray executor):
    containers of dead evolve processes (``sandbox.docker.sweep_stale``), then, unless
    ``image_ttl_hours`` is None, ``prune`` of ``$EVOLVE_HOME``'s records. Returns (containers
    removed, prune's lines).

    Raises:
        SandboxError: no Docker engine answers.
        InfraError: as ``prune``.
    """
    from evolve.evalsets.registry import evolve_home
    from evolve.executors.images import node_lock
    from evolve.sandbox.docker import docker_client, sweep_stale

    client = docker_client()
    removed = sweep_stale(client)
    if image_ttl_hours is None:
        return removed, []
    with node_lock(evolve_home()):
        return removed, prune(client, evolve_home(), image_ttl_hours * 3600)
