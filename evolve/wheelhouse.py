"""A cached wheelhouse: requirement strings resolved on the host into wheels for the sandbox's Python.

The sandbox has no network, so whatever a container installs comes from a
directory of wheels made here, on the host, by pip's own resolver (``pip
download --only-binary=:all:`` for the target interpreter and platform: the
sandbox image's CPython and glibc, not the host's). pip's index settings
(``pip config``, ``PIP_INDEX_URL``...) apply as they are; evolve names no index.

The directory is ``<cache>/<key>/``, ``key`` a hash of the sorted requirements
and the target, and is complete when its ``wheelhouse.json`` exists (written
last, after an atomic rename of the whole directory): a second call with the
same inputs downloads nothing. Used by ``evolve.synth.testenv`` (a project's
test dependencies); harness environments use the same module.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from evolve.errors import EvolveError

__all__ = ["MANIFEST", "Target", "Wheelhouse", "WheelhouseError", "resolve"]

MANIFEST = "wheelhouse.json"
PIP_TIMEOUT_S = 900


class WheelhouseError(EvolveError):
    """A requirement cannot be resolved into wheels for the target; the message names it."""


@dataclass(frozen=True)
class Target:
    """The interpreter the wheels are for; the default is evolve's sandbox image (Debian bookworm)."""

    python_version: str = "3.11"
    """``X.Y``."""
    glibc: tuple[int, int] = (2, 36)
    """The image's glibc: manylinux wheels up to this version fit."""
    machine: str = platform.machine() or "x86_64"
    """The image runs on the host's architecture."""

    def pip_args(self) -> list[str]:
        nodot = self.python_version.replace(".", "")
        args = ["--python-version", self.python_version, "--implementation", "cp", "--abi", f"cp{nodot}",
                "--abi", "abi3", "--abi", "none"]
        major, minor = self.glibc
        platforms = [f"manylinux_{major}_{m}_{self.machine}" for m in range(minor, 16, -1)]
        platforms += [f"manylinux2014_{self.machine}", f"linux_{self.machine}", "any"]
        for p in platforms:
            args += ["--platform", p]
        return args


@dataclass(frozen=True)
class Wheelhouse:
    """A complete wheelhouse directory."""

    path: Path
    key: str
    requirements: tuple[str, ...]
    wheels: tuple[str, ...]
    """File names, sorted."""

    def digest(self) -> str:
        """sha256 of the wheels' names and contents: what an image built from them depends on."""
        h = hashlib.sha256()
        for name in self.wheels:
            h.update(name.encode() + b"\0")
            with open(self.path / name, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
        return h.hexdigest()


def key_of(requirements: list[str] | tuple[str, ...], target: Target) -> str:
    """The cache key: sha256 (first 16 hex) of the sorted, stripped requirements and the target."""
    data = json.dumps({"requirements": sorted({r.strip() for r in requirements if r.strip()}),
                       "target": asdict(target)}, sort_keys=True)
    return hashlib.sha256(data.encode()).hexdigest()[:16]


def resolve(requirements: list[str] | tuple[str, ...], cache: Path, target: Target = Target()) -> Wheelhouse:
    """Wheels for ``requirements`` and all their dependencies, for ``target``, in ``cache/<key>``.

    Args:
        requirements: PEP 508 strings (``"freezegun>=1.2"``, ``"pip"``).
        cache: the parent directory of wheelhouses (e.g. ``$EVOLVE_HOME/cache/wheelhouse``).

    Raises:
        WheelhouseError: pip could not resolve them (the message names the requirement pip
            could not satisfy, quotes pip, and says what to do), or pip did not finish in
            ``PIP_TIMEOUT_S`` seconds.
    """
    reqs = tuple(sorted({r.strip() for r in requirements if r.strip()}))
    key = key_of(reqs, target)
    final = Path(cache) / key
    if (final / MANIFEST).is_file():
        data = json.loads((final / MANIFEST).read_text(encoding="utf-8"))
        return Wheelhouse(final, key, tuple(data["requirements"]), tuple(data["wheels"]))
    Path(cache).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=cache))
    try:
        if reqs:
            _download(reqs, tmp, target)
        wheels = tuple(sorted(p.name for p in tmp.iterdir() if p.name.endswith(".whl")))
        (tmp / MANIFEST).write_text(json.dumps({"requirements": list(reqs), "target": asdict(target),
                                                "wheels": list(wheels)}, indent=1), encoding="utf-8")
        try:
            os.replace(tmp, final)
        except OSError:  # another build finished the same key first; use it
            if not (final / MANIFEST).is_file():
                raise
        return Wheelhouse(final, key, reqs, wheels)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


_UNSATISFIED = re.compile(r"(?:Could not find a version that satisfies the requirement|"
                          r"No matching distribution found for)\s+(\S+)")


def _download(reqs: tuple[str, ...], dest: Path, target: Target) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--disable-pip-version-check",
           "--no-input", "-q", "-d", str(dest), *target.pip_args(), *reqs]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S,
                              env=dict(os.environ, PIP_NO_INPUT="1"))
    except subprocess.TimeoutExpired:
        raise WheelhouseError(f"pip did not resolve {', '.join(reqs)} within {PIP_TIMEOUT_S} s; "
                              "check that PyPI is reachable") from None
    if proc.returncode == 0:
        return
    said = (proc.stdout + proc.stderr).strip()
    m = _UNSATISFIED.search(said)
    lines = [line for line in said.split("\n") if line.startswith("ERROR") or "requirement" in line][:8]
    quoted = "\n".join(lines or said.split("\n")[-8:])
    what = f"the requirement {m.group(1)!r}" if m else "the requirements " + ", ".join(reqs)
    raise WheelhouseError(
        f"cannot resolve {what} into wheels for CPython {target.python_version} on "
        f"manylinux_{target.glibc[0]}_{target.glibc[1]}_{target.machine} (the sandbox image); pip said:\n{quoted}\n"
        "A requirement with no wheel for that platform (only a source distribution) cannot be installed "
        "offline: pin a version that has one, leave it out, or install it with --setup.")
