"""Task images on the nodes of a cluster: the head's copy, saved once, loaded once per node.

There is no image registry. The head (the evolve process) decides which image id each image
reference of an evaluation means (``head_ids``): the one in its own Docker engine, else that of its
saved copy. A node whose engine lacks that image (or holds another one under the same reference)
asks for it; the head then ships its saved copy (``saved_copy``: ``docker save`` output,
gzip-compressed, kept in ``$EVOLVE_HOME/images/saved/`` and made once per reference and image id)
and the node loads it (``load``): received into a file, its sha256 and size checked against the
head's, ``docker load``-ed, and the loaded id checked against the head's. One load at a time per
node (a file lock under the node's ``$EVOLVE_HOME``), so concurrent task-runs load an image once.
Each load is recorded on the node, and what evolve loaded is removed once unused for long enough
(``loaded_images``).

Nothing here imports Ray; the Ray executor moves the bytes (``ray_executor``, ``ray_node``).
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

from evolve.errors import InfraError

if TYPE_CHECKING:  # pragma: no cover
    import docker

CHUNK_BYTES = 16 * 1024 * 1024
"""Size of one piece of a saved copy as it travels (one object in Ray's object store)."""
GZIP_LEVEL = 1
"""gzip level of saved copies: level 1 takes a 273 MB image to 118 MB in ~8 s on this machine."""


@dataclass(frozen=True)
class SavedImage:
    """The head's saved copy of one image: ``path`` holds ``docker save REF | gzip``."""

    ref: str
    image_id: str
    path: Path
    sha256: str
    """Hex sha256 of the file (compressed bytes)."""
    size: int
    """Bytes of the file."""

    def chunks(self, size: int = CHUNK_BYTES) -> Iterator[bytes]:
        with open(self.path, "rb") as f:
            while block := f.read(size):
                yield block


def saved_dir(home: Path) -> Path:
    return home / "images" / "saved"


def _name(ref: str, image_id: str) -> str:
    return hashlib.sha256(f"{ref}\n{image_id}".encode()).hexdigest()[:24]


def find_saved(home: Path, ref: str, image_id: str | None = None) -> SavedImage | None:
    """The saved copy of ``ref`` (of ``image_id`` when given; else the newest), or None."""
    found = []
    for meta in saved_dir(home).glob("*.json"):
        try:
            m = json.loads(meta.read_text())
        except (OSError, ValueError):
            continue
        if m.get("ref") == ref and image_id in (None, m.get("image_id")) and meta.with_suffix(".gz").is_file():
            found.append((meta.stat().st_mtime, m, meta.with_suffix(".gz")))
    if not found:
        return None
    _, m, path = max(found, key=lambda f: f[0])
    return SavedImage(ref, m["image_id"], path, m["sha256"], m["size"])


def write_saved(home: Path, ref: str, image_id: str, tar_stream: Iterable[bytes]) -> SavedImage:
    """Store ``tar_stream`` (the uncompressed output of ``docker save REF``) as the saved copy of
    ``ref`` at ``image_id``, gzip-compressed, atomically; other saved copies of ``ref`` are removed."""
    out = saved_dir(home)
    out.mkdir(parents=True, exist_ok=True)
    name = _name(ref, image_id)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}-", dir=out)
    digest, size = hashlib.sha256(), 0
    try:
        with os.fdopen(fd, "wb") as raw:
            class _Hashing:  # what gzip writes, hashed and counted on the way to the file
                def write(self, b) -> int:
                    nonlocal size
                    digest.update(b)
                    size += len(b)
                    return raw.write(b)

                def flush(self) -> None:
                    raw.flush()

            with gzip.GzipFile(fileobj=_Hashing(), mode="wb", compresslevel=GZIP_LEVEL, mtime=0) as gz:
                for block in tar_stream:
                    gz.write(block)
        path = out / f"{name}.gz"
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    meta = {"ref": ref, "image_id": image_id, "sha256": digest.hexdigest(), "size": size}
    tmp_meta = out / f".{name}.json.{os.getpid()}"
    tmp_meta.write_text(json.dumps(meta))
    os.replace(tmp_meta, out / f"{name}.json")
    for other in out.glob("*.json"):  # one saved copy per reference: the newest
        if other.stem != name and json.loads(other.read_text()).get("ref") == ref:
            other.with_suffix(".gz").unlink(missing_ok=True)
            other.unlink(missing_ok=True)
    return SavedImage(ref, image_id, path, meta["sha256"], size)


def engine_id(client: "docker.DockerClient", ref: str) -> str | None:
    """The id of ``ref`` in ``client``'s engine, or None when it has none.

    Raises:
        InfraError: Docker failed.
    """
    from docker.errors import DockerException, ImageNotFound

    try:
        return client.images.get(ref).id
    except ImageNotFound:
        return None
    except DockerException as e:
        raise InfraError("image", f"could not inspect image {ref}: {e}") from None


def head_ids(client: "docker.DockerClient", refs: Iterable[str], home: Path) -> dict[str, str]:
    """``{ref: image id}``: the id each image means for this evaluation, on every node: the head
    engine's, else its saved copy's. References with neither are left out (the caller gets them
    the way the local executor does: ``taskrun.task_images``)."""
    ids = {}
    for ref in refs:
        found = engine_id(client, ref)
        if found is None and (saved := find_saved(home, ref)) is not None:
            found = saved.image_id
        if found is not None:
            ids[ref] = found
    return ids


def saved_copy(client: "docker.DockerClient", ref: str, image_id: str, home: Path) -> SavedImage:
    """The head's saved copy of ``ref`` at ``image_id``, made from its engine (``docker save``) if
    there is none yet.

    Raises:
        InfraError: no saved copy and the engine's ``ref`` is not ``image_id`` (gone or replaced
            since the evaluation began), or Docker failed.
    """
    from docker.errors import DockerException

    saved = find_saved(home, ref, image_id)
    if saved is not None:
        return saved
    have = engine_id(client, ref)
    if have != image_id:
        raise InfraError("image", f"the head has no copy of {ref} at {image_id} to ship (its engine has "
                                  f"{have or 'no such image'}); make it present on the head and run again")
    try:
        return write_saved(home, ref, image_id, client.api.get_image(ref, chunk_size=1024 * 1024))
    except DockerException as e:
        raise InfraError("image", f"docker save {ref} on the head failed: {e}") from None


@contextlib.contextmanager
def node_lock(home: Path):
    """Hold this node's lock on what it receives from the head (``home/images/load.lock``):
    one image load or environment unpack at a time, across the node's worker processes."""
    path = home / "images" / "load.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released by close, or by the process's death
        yield


class LoadError(Exception):
    """A saved copy could not be loaded on this node, or loaded as another image."""


def load(client: "docker.DockerClient", ref: str, image_id: str, sha256: str, size: int,
         chunks: Iterable[bytes], *, home: Path, have: Callable[[], bool]) -> dict | None:
    """Load the head's saved copy of ``ref`` (``chunks``, fetched lazily) into this node's engine
    unless ``have()`` says it is there by now; one load at a time per node (``home/images/load.lock``).

    Returns ``{"bytes": size, "seconds": load time}``, or None when ``have()`` was true under the lock.
    A load is recorded in ``home/images/loaded.json`` (``loaded_images.note_load``).

    Raises:
        LoadError: the bytes are not the head's (sha256 or size), ``docker load`` refused them, or
            the loaded ``ref`` is not ``image_id`` (the tag it took is removed again).
    """
    from docker.errors import DockerException

    from evolve.executors import loaded_images

    with node_lock(home):
        if have():
            return None
        had_before = engine_id(client, image_id) is not None  # the load may only add a tag to it
        start = time.monotonic()
        with tempfile.TemporaryFile(dir=home / "images") as f:
            digest, got = hashlib.sha256(), 0
            for block in chunks:
                digest.update(block)
                got += len(block)
                f.write(block)
            if got != size or digest.hexdigest() != sha256:
                raise LoadError(f"the copy of {ref} received from the head is corrupt: {got} bytes with sha256 "
                                f"{digest.hexdigest()[:16]}…, the head's has {size} bytes with sha256 {sha256[:16]}…")
            f.seek(0)
            try:
                for _ in client.api.load_image(f):
                    pass
            except DockerException as e:
                raise LoadError(f"docker load of {ref} ({size} bytes from the head) failed: {e}") from None
        loaded = engine_id(client, ref)
        if loaded != image_id:
            untag = ""
            if loaded is not None:
                try:
                    client.images.remove(ref)  # the wrong image must not keep the task's name
                except DockerException as e:
                    untag = f" (removing that tag again failed: {e})"
            raise LoadError(f"the copy of {ref} from the head loaded as image {loaded}, not the head's "
                            f"{image_id}{untag}: the head's saved copy ($EVOLVE_HOME/images/saved/) does not "
                            "hold the image it claims; remove it and run again")
        loaded_images.note_load(home, ref, image_id, had_before=had_before)  # for loaded_images.prune
        return {"bytes": size, "seconds": round(time.monotonic() - start, 2)}
