"""Harness environments: a harness's requirements installed, offline, for one sandbox image.

``prepare(client, harness, image)`` gives the ``HarnessEnv`` the harness runs with on
tasks of ``image`` (None when it declares no requirements):

1. ``probe_image``: the image's ``python3`` (version, ABI, glibc, machine), read once per
   image id in a throw-away container with no network;
2. ``evolve.wheelhouse.resolve``: the requirements as wheels for that interpreter, on the host;
3. the build: a venv made by the image's own ``python3`` in a container with no network, as
   the sandbox user, filled from the wheelhouse mounted read-only (``scripts/build_env.sh``), into
   ``$EVOLVE_HOME/envs/<key>``, where ``key`` hashes (wheelhouse, image id, Python). It is
   renamed into place only once complete, and reused by every task and every candidate
   whose requirements and image are the same.

Each agent sandbox mounts the env read-only at ``/evolve/env`` (``HarnessEnv.mounts``) and
runs the entrypoint with ``/evolve/env/bin`` first on ``PATH`` (``HarnessEnv.env_vars``), so
``python3`` is the env's interpreter: the image's own ``python3``, the same one the env was
built with, with the requirements on its path. Nothing else sees it: the repository's Python
environment, the host's and the grading container are untouched.

When the interpreter can't match: an image without ``python3``, or with a C library that is
not glibc, is refused before any evaluation starts (``HarnessError``), with what to do.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from evolve import owner
from evolve.config import SandboxLimits
from evolve.errors import HarnessError, InfraError
from evolve.harness import Harness
from evolve.wheelhouse import MAX_WHEELHOUSE_BYTES, Target, glibc_platforms, resolve

if TYPE_CHECKING:  # pragma: no cover
    import docker

_log = logging.getLogger(__name__)

ENV_PATH = "/evolve/env"
"""Where an env is mounted in the agent sandbox (read-only)."""
_WHEELS = "/evolve/wheels"
BUILD_TIMEOUT_S = 1800
"""Seconds the offline install may take."""
PROBE_TIMEOUT_S = 60


@dataclass(frozen=True)
class ImagePython:
    """What ``scripts/probe_python.py`` reports of an image's ``python3``."""

    image_id: str
    python_version: str
    implementation: str
    abi: str
    libc: str
    machine: str
    executable: str
    path: str
    """The image's ``PATH``."""

    def target(self) -> Target:
        """The wheel target of this interpreter.

        Raises:
            HarnessError: the image's C library is not glibc.
        """
        libc = self.libc.removeprefix("glibc ").strip() if self.libc.startswith("glibc ") else self.libc
        return Target(self.python_version, self.implementation, self.abi, glibc_platforms(libc, self.machine))


@dataclass(frozen=True)
class HarnessEnv:
    """A built environment on the host, ready to mount."""

    root: Path
    """The venv directory on the host (``$EVOLVE_HOME/envs/<key>``)."""
    key: str
    image: str
    python: ImagePython
    requirements: tuple[str, ...]

    def mounts(self) -> dict[str, str]:
        """``Sandbox`` mounts: the env, read-only, at ``ENV_PATH``."""
        return {str(self.root): f"{ENV_PATH}:ro"}

    def env_vars(self) -> dict[str, str]:
        """Environment of the harness's processes: the env's ``bin`` first on the image's ``PATH``."""
        return {"PATH": f"{ENV_PATH}/bin:{self.python.path}", "VIRTUAL_ENV": ENV_PATH}


def agent_image(harness: Harness, task_image: str) -> str:
    """The image the agent phase runs in: the harness's own (``harness.yaml`` ``image:``), else the task's."""
    return harness.spec.image or task_image


def prepare(client: "docker.DockerClient", harness: Harness, image: str, *, home: Path,
            limits: SandboxLimits | None = None, max_bytes: int = MAX_WHEELHOUSE_BYTES,
            log: Callable[[str], None] = lambda _m: None) -> HarnessEnv | None:
    """The environment ``harness`` runs with in ``image`` (present locally), built if not cached;
    None when the harness declares no requirements.

    Raises:
        HarnessError: a bad requirement (named), no ``python3`` or no glibc in ``image``, or an
            install that failed in the sandbox (pip's words).
        InfraError: Docker failed.
    """
    requirements = harness.requirements
    if not requirements:
        return None
    py = probe_image(client, image, home=home)
    house = resolve(requirements, py.target(), home=home, max_bytes=max_bytes)
    key = hashlib.sha256(json.dumps({"wheelhouse": house.key, "image": py.image_id, "python": py.python_version,
                                     "executable": py.executable, "v": 1}, sort_keys=True).encode()).hexdigest()
    root = home / "envs" / key[:24]
    env = HarnessEnv(root, key, image, py, tuple(requirements))
    if (root / "evolve-env.json").is_file():
        return env
    log(f"building the harness environment ({len(house.wheels)} wheels) for {image}")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key[:24]}-", dir=root.parent))
    try:
        # The build is evolve's own work (its code is pip's, no package's): all the host's cores.
        limits = (limits or SandboxLimits()).model_copy(update={"cpus": float(os.cpu_count() or 1)})
        tmp.chmod(0o777)  # the build runs as the sandbox user, not root: a wheel's .pth file runs at pip check
        output = _build(client, image, house.root, house.installer, tmp, limits)
        tmp.chmod(0o755)
        (tmp / "evolve-env.json").write_text(json.dumps({
            "key": key, "image": image, "image_id": py.image_id, "python": py.python_version,
            "requirements": list(requirements), "wheelhouse": str(house.root), "wheels": list(house.wheels),
            "build_log_tail": output[-4000:]}, indent=2))
        try:
            tmp.rename(root)
        except OSError:
            if not (root / "evolve-env.json").is_file():  # else: a concurrent build finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return env


def probe_image(client: "docker.DockerClient", image: str, *, home: Path) -> ImagePython:
    """``image``'s ``python3``, cached in ``home/images/<image id>.json``.

    Raises:
        HarnessError: ``image`` has no working ``python3``.
        InfraError: Docker failed.
    """
    from evolve.testbed import script

    image_id = _image_id(client, image)
    cache = home / "images" / f"{image_id.replace(':', '-')}.json"
    cached = _cached_probe(cache)
    if cached is not None:
        return cached
    with _sandbox(client, image, {}, SandboxLimits(), "probe") as box:
        res = box.exec("command -v python3 >/dev/null || { echo evolve-no-python3; exit 3; }; python3 -I -",
                       timeout_s=PROBE_TIMEOUT_S, stdin=script("probe_python.py").encode())
    if res.exit_code != 0 or not res.output.strip():
        said = "it has no python3" if "evolve-no-python3" in res.output else f"its python3 failed: {res.output[-300:]}"
        raise HarnessError(
            f"the harness declares requirements, but image {image} cannot run them: {said}. The harness's "
            "environment is built with, and run by, the image's own python3 so that its interpreter matches "
            "the task's. Use an image with Python 3 (harness.yaml 'image:'), or drop the requirements.")
    data = json.loads(res.output.strip().splitlines()[-1])
    py = ImagePython(image_id=image_id, **data)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(py.__dict__))
    tmp.replace(cache)  # atomic: a concurrent probe writes the same content
    return py


def _cached_probe(cache: Path) -> ImagePython | None:
    """The probe saved in ``cache``, or None when there is none (never probed) or it cannot be used
    (unreadable, or written by an evolve whose ``ImagePython`` had other fields): said in the log,
    and the caller probes again and overwrites it."""
    try:
        return ImagePython(**json.loads(cache.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as e:
        _log.warning("ignoring the python3 probe cache %s (%s); probing the image again", cache, e)
        return None


def _image_id(client: "docker.DockerClient", image: str) -> str:
    from docker.errors import DockerException, ImageNotFound

    try:
        return client.images.get(image).id
    except ImageNotFound:
        raise HarnessError(f"image {image} is not present; build or load it (`docker load -i FILE`)") from None
    except DockerException as e:
        raise InfraError("docker", f"could not inspect image {image}: {e}") from None


def _sandbox(client, image: str, mounts: dict[str, str], limits: SandboxLimits, what: str):
    from evolve.sandbox.docker import Sandbox

    return Sandbox(client, image, run_id=f"harness-env-{what}", limits=limits, mounts=mounts)


def _build(client, image: str, wheels: Path, installer: str, dest: Path, limits: SandboxLimits) -> str:
    """Run ``scripts/build_env.sh`` in ``image`` with ``wheels`` read-only and ``dest`` as the env; its output.

    Raises:
        HarnessError: pip refused or failed (its words), or the env's interpreter did not run.
    """
    from evolve.testbed import script, shell_header

    body = shell_header(evolve_env=ENV_PATH, evolve_wheels=_WHEELS, evolve_installer=installer) + script("build_env.sh")
    with _sandbox(client, image, {str(wheels): f"{_WHEELS}:ro", str(dest): ENV_PATH}, limits, "build") as box:
        res = box.exec(body, timeout_s=BUILD_TIMEOUT_S, max_output=200_000)
    if res.exit_code != 0 or "evolve-env-python " not in res.output:
        why = "timed out" if res.timed_out else f"exit {res.exit_code}"
        raise HarnessError(f"installing the harness's requirements into {image} failed ({why}), with no network, "
                           f"from {wheels}; the installer said:\n{res.output[-2000:]}")
    return res.output


def main(argv: list[str] | None = None) -> int:
    """``python -m evolve.harness_env HARNESS_DIR [IMAGE]``: build (or find) the harness's environment
    for ``IMAGE`` (default: the base image) ahead of time, e.g. so that later runs need no index."""
    import sys

    from evolve.errors import EvolveError
    from evolve.evalsets.registry import evolve_home
    from evolve.harness import resolve_harness
    from evolve.sandbox.docker import docker_client
    from evolve.sandbox.image import ensure_image

    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (1, 2):
        print("usage: python -m evolve.harness_env HARNESS_DIR [IMAGE]", file=sys.stderr)
        return 2
    try:
        client = docker_client()
        with owner.temp_dir("harness") as tmp:
            harness = resolve_harness(args[0], workdir=Path(tmp))
            image = ensure_image(client, args[1] if len(args) == 2 else None)
            env = prepare(client, harness, image, home=evolve_home(), log=print)
    except EvolveError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{harness.spec.name}: " + (f"environment {env.root} (Python {env.python.python_version}, {image})"
                                      if env else "no requirements, nothing to build"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
