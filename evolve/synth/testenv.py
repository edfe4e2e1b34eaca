"""A per-project image holding a project's test dependencies, built offline; cached by its inputs.

``prepare_image`` reads the project's test dependencies (``evolve.synth.deps``),
resolves them on the host into a wheelhouse (``evolve.wheelhouse``, shared with
harness environments: pip's own resolver, wheels only, for the sandbox image's
interpreter as probed in the image), then, in a container of the base
image with no network, installs them, installs the project the way its
developers do (``pip install -e .``, no build isolation, the build backend
from the same wheelhouse) and runs ``--setup CMD`` if given
(``evolve/sandbox/scripts/install_testenv.sh``). The container is committed as
``evolve-testenv-<project>:<hash>``, the hash of the base image id, the
wheels, the setup command and the project tree: the same inputs reuse the
image, any change builds a new one.

Files the install writes into the tree (setuptools-scm's ``_version.py``,
``*.egg-info``) are copied back into the project tree on the host, so every
task snapshot holds them and the agent sees the tree the tests see.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from evolve.config import SandboxLimits
from evolve.errors import HarnessError, InfraError, SynthError
from evolve.synth.deps import TestDeps, detect
from evolve.synth.validate import tree_tar
from evolve.wheelhouse import Target, Wheelhouse, resolve

if TYPE_CHECKING:  # pragma: no cover
    import docker

__all__ = ["EnvRequest", "TestEnv", "prepare_image"]

REPOSITORY = "evolve-testenv"
INSTALL_TIMEOUT_S = 1800.0
_E = "/tmp/evolve-testenv"
SCM_VERSION = "0.0.0"
"""``SETUPTOOLS_SCM_PRETEND_VERSION`` for a tree without ``.git`` (a snapshot has none)."""


@dataclass(frozen=True)
class EnvRequest:
    """What to install; from ``evolve evals synth --extras/--requirements/--setup`` or a recipe."""

    extras: tuple[str, ...] = ()
    """Extras or dependency groups; empty: ``test``, ``tests``, ``testing``, ``dev`` where they exist."""
    requirement_files: tuple[str, ...] | None = None
    """Requirements files (relative to the project); None: the detected ones."""
    setup: str | None = None
    """A shell command run in /testbed (as root, no network) after the install."""


@dataclass
class TestEnv:
    """The image made for a project, and how."""

    __test__ = False

    image: str
    deps: TestDeps
    wheels: tuple[str, ...]
    generated: list[str] = field(default_factory=list)
    """Paths the install wrote into the tree (now also in the host tree)."""
    cached: bool = False


def prepare_image(client: "docker.DockerClient", base_image: str, root: Path, name: str, request: EnvRequest,
                  home: Path, *, run_id: str, limits: SandboxLimits | None = None) -> TestEnv:
    """The test-environment image of the project tree at ``root`` (built unless cached); adds the
    files the install generated to ``root``. Wheelhouses are kept under ``home/wheelhouses``, the
    image's probed python3 under ``home/images``.

    Raises:
        SynthError: bad extras/requirements (``deps.detect``); a requirement pip cannot resolve
            into wheels for the image (the message names it); the install or the setup command
            failed (the message names the step and quotes pip's error).
        InfraError: Docker failed.
    """
    from docker.errors import ImageNotFound

    deps = detect(root, extras=list(request.extras) or None,
                  requirement_files=[Path(f) for f in request.requirement_files]
                  if request.requirement_files is not None else None)
    target = image_target(client, base_image, home=home)
    try:
        house = resolve(list(dict.fromkeys(deps.build_requires + deps.requirements)), target, home=home)
    except HarnessError as e:
        raise SynthError(f"cannot install the project's test dependencies (read from "
                         f"{', '.join(deps.sources) or 'its build system'}): {e}\nFor evals synth: fix the "
                         "project's requirement, or choose others with --requirements/--extras, or install it "
                         "with --setup.") from None
    tree = tree_tar(root)
    base_id = client.images.get(base_image).id
    key = hashlib.sha256(json.dumps({"base": base_id, "wheelhouse": house.key, "wheels": house.wheels,
                                     "setup": request.setup,
                                     "requirements": deps.requirements, "build": deps.build_requires,
                                     "tree": hashlib.sha256(tree).hexdigest(), "version": 1},
                                    sort_keys=True).encode()).hexdigest()[:16]
    tag = f"{REPOSITORY}-{_tag_safe(name)}:{key}"
    try:
        client.images.get(tag)
        generated = _generated_from_image(client, tag, run_id, limits)
        cached = True
    except ImageNotFound:
        generated = _build(client, base_image, tag, tree, house, deps, request, run_id, limits)
        cached = False
    paths = _add_generated(root, generated)
    return TestEnv(tag, deps, house.wheels, paths, cached)


def image_target(client, image: str, *, home: Path) -> Target:
    """The interpreter of ``image``'s ``python3`` as a wheelhouse ``Target``: the probe harness
    environments use (``harness_env.probe_image``, cached per image id under ``home``).

    Raises:
        SynthError: the image has no usable python3 or no glibc (manylinux wheels need one).
        InfraError: Docker failed.
    """
    from evolve.harness_env import probe_image

    try:
        return probe_image(client, image, home=home).target()
    except HarnessError as e:
        raise SynthError(f"test environments are built with the image's own python3, and image {image} "
                         f"cannot give one: {e}") from None


def _tag_safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in name.lower()).strip("-._") or "project"


def _build(client, base_image: str, tag: str, tree: bytes, house: Wheelhouse, deps: TestDeps,
           request: EnvRequest, run_id: str, limits: SandboxLimits | None) -> bytes:
    from docker.errors import DockerException

    from evolve.sandbox.docker import Sandbox, run_labels, tar_of
    from evolve.testbed import script

    wheels = io.BytesIO()
    with tarfile.open(fileobj=wheels, mode="w") as tar:
        for name in house.wheels:
            tar.add(house.root / name, arcname=name)
        tar.add(house.root / house.installer, arcname="_installer/" + Path(house.installer).name)
    files = {"requirements.txt": "\n".join(deps.build_requires + deps.requirements) + "\n",
             "setup.sh": (request.setup or "") + "\n", "install.sh": script("install_testenv.sh")}
    with Sandbox(client, base_image, run_id=run_id, limits=limits or SandboxLimits(), user="0:0") as box:
        box.put_tar("/tmp/evolve-wheels", wheels.getvalue(), owned=False)
        box.put_tar("/testbed", tree, owned=False)
        box.put_tar(_E, tar_of(files), owned=False)
        res = box.exec(f"SETUPTOOLS_SCM_PRETEND_VERSION=${{SETUPTOOLS_SCM_PRETEND_VERSION:-{SCM_VERSION}}} "
                       f"sh {_E}/install.sh 2>&1", timeout_s=INSTALL_TIMEOUT_S, user="root",
                       max_output=2_000_000)
        if res.exit_code != 0:
            raise SynthError(_install_failure(res.output, res.exit_code, request, deps))
        generated = box.get_file(f"{_E}/generated.tar", max_bytes=200_000_000) or b""
        # Kept in the image too, so that a cached image gives the same tree.
        box.exec(f"mkdir -p /opt/evolve-testenv && mv {_E}/generated.tar /opt/evolve-testenv/ && rm -rf {_E}",
                 timeout_s=60, user="root")
        try:
            # The build container's run labels are blanked: a container of this image is labelled by
            # whoever starts it (``Sandbox`` does), never as the build's.
            box.container.commit(repository=tag.split(":")[0], tag=tag.split(":")[1],
                                 changes=["USER 1000:1000", "WORKDIR /testbed",
                                          "LABEL evolve.testenv=1 " + " ".join(f'{k}=""' for k in run_labels("x"))])
        except DockerException as e:
            raise InfraError("docker", f"could not save the test environment image {tag}: {e}") from None
    return generated


def _generated_from_image(client, tag: str, run_id: str, limits: SandboxLimits | None) -> bytes:
    from evolve.sandbox.docker import Sandbox

    with Sandbox(client, tag, run_id=run_id, limits=limits or SandboxLimits(), user="0:0") as box:
        return box.get_file("/opt/evolve-testenv/generated.tar", max_bytes=200_000_000) or b""


def _add_generated(root: Path, generated: bytes) -> list[str]:
    if not generated:
        return []
    added = []
    with tarfile.open(fileobj=io.BytesIO(generated)) as tar:
        for member in tar.getmembers():
            if not member.isfile():
                continue
            dest = (root / member.name).resolve()
            if not dest.is_relative_to(root.resolve()):
                continue  # a path outside the tree: never written
            data = tar.extractfile(member).read()
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
            added.append(member.name)
    return added


def _install_failure(output: str, exit_code: int | None, request: EnvRequest, deps: TestDeps) -> str:
    steps = [line.split(" ", 1)[1] for line in output.split("\n") if line.startswith("EVOLVE-STEP ")]
    step = steps[-1] if steps else "start"
    body = output.split(f"EVOLVE-STEP {step}\n", 1)[-1].strip().split("\n")
    errors = [i for i, line in enumerate(body) if line.startswith(("ERROR", "error:", "Traceback", "E "))
              or "Error" in line.split(":", 1)[0]]
    first = errors[0] if errors else max(0, len(body) - 25)
    quoted = "\n".join(body[max(0, first - 3): first + 25])
    what = {"pip": "bootstrapping pip from the wheelhouse",
            "requirements": "installing the test dependencies (" + ", ".join(deps.requirements[:8]) + ")",
            "install": "installing the project itself (pip install -e . without build isolation)",
            "setup": f"running --setup {request.setup!r}"}.get(step, step)
    return (f"the test environment could not be built: {what} failed (exit {exit_code}) in a container with no "
            f"network; the output said:\n{quoted}\nDependencies were read from: "
            f"{', '.join(deps.sources) or 'nothing found'}. Add what is missing with --requirements FILE or "
            "--extras NAME, or install it with --setup CMD.")
