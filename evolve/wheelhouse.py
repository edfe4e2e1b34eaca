"""A harness's requirements resolved on the host into a wheelhouse, by pip's own resolver.

``resolve(requirements, target)`` runs ``pip download --only-binary=:all:`` for the
sandbox's interpreter (``--python-version``, ``--implementation``, ``--abi`` and every
``--platform`` tag its glibc accepts, as in PEP 600), with the host's pip configuration
(index, mirror, certificates). Only wheels: a source distribution would have to be
built, and building runs the package's code. The result is a directory of wheels
under ``$EVOLVE_HOME/wheelhouses/<key>``, where ``key`` hashes the requirements, the
target, pip's version and pip's index configuration (``index_config``), so a second
resolve of the same inputs from the same index reads the cache.

The directory holds ``requirements.txt`` (what was asked), the wheels, ``_installer/``
(a pip wheel the sandbox runs to install them with no network) and ``wheelhouse.json``
(written last: its presence marks a complete wheelhouse).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

from evolve.errors import HarnessError

MAX_WHEELHOUSE_BYTES = 2 * 1024**3
"""A wheelhouse over this many bytes is refused (and deleted): 2 GiB."""
PIP_TIMEOUT_S = 1800
"""Seconds one ``pip download`` may take."""
OLDEST_GLIBC_MINOR = 5
"""manylinux_2_5 (``manylinux1``) is the oldest manylinux tag (PEP 513)."""
_LEGACY = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
"""PEP 600's aliases of the older manylinux tags."""
_NOT_FOUND = re.compile(r"(?:Could not find a version that satisfies the requirement|"
                        r"No matching distribution found for) (\S+)")


@dataclass(frozen=True)
class Target:
    """The interpreter wheels are resolved for: the sandbox image's ``python3``."""

    python_version: str
    """``3.11.2``."""
    implementation: str
    """pip's short name: ``cp`` (CPython) or ``pp`` (PyPy)."""
    abi: str
    """``cp311`` (``cp313t`` for a free-threaded build)."""
    platforms: tuple[str, ...]
    """Platform tags, most specific first: ``manylinux_2_36_x86_64`` ... ``linux_x86_64``."""

    def describe(self) -> str:
        return f"{self.implementation}{self.abi.removeprefix(self.implementation)} Python {self.python_version} " \
               f"on {self.platforms[0]}"


def glibc_platforms(glibc: str, machine: str) -> tuple[str, ...]:
    """The platform tags a glibc ``2.N`` Linux on ``machine`` accepts: ``manylinux_2_N`` down to
    ``manylinux_2_5`` with their legacy aliases (PEP 600, as pip does for its own interpreter),
    then ``linux_<machine>``.

    Raises:
        HarnessError: ``glibc`` is not ``2.N``.
    """
    m = re.fullmatch(r"2\.(\d+)", glibc.strip())
    if m is None:
        raise HarnessError(f"the sandbox image's C library is {glibc!r}, not glibc 2.x: evolve resolves "
                           "harness requirements for glibc Linux images only (manylinux wheels); "
                           "name a Debian- or Ubuntu-based image in harness.yaml 'image:'")
    tags: list[str] = []
    for minor in range(int(m.group(1)), OLDEST_GLIBC_MINOR - 1, -1):
        tags.append(f"manylinux_2_{minor}_{machine}")
        if minor in _LEGACY:
            tags.append(f"{_LEGACY[minor]}_{machine}")
    return (*tags, f"linux_{machine}")


@dataclass(frozen=True)
class Wheelhouse:
    """A complete wheelhouse directory."""

    root: Path
    key: str
    """Hex digest of the inputs (requirements, target, pip version, index configuration)."""
    wheels: tuple[str, ...]
    """File names of the wheels resolved for the requirements (the installer excluded)."""
    installer: str
    """Path of the pip wheel relative to ``root`` (``_installer/pip-*.whl``)."""
    bytes: int
    """Size of all the wheels, in bytes."""


INDEX_OPTIONS = ("index-url", "extra-index-url", "find-links", "no-index")
"""pip's options that decide where packages come from (``pip download --help``, "Package Index Options")."""


def wheelhouse_key(requirements: list[str], target: Target) -> str:
    """sha256 of the inputs that decide a wheelhouse's content: the requirements, the target, pip's
    version and the package index configuration (``index_config``), so wheels resolved from one
    index are never reused for another.

    Raises:
        HarnessError: pip cannot read its configuration.
    """
    import pip

    data = {"requirements": list(requirements), "target": asdict(target), "pip": pip.__version__,
            "index": index_config(), "v": 2}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def index_config() -> dict[str, str]:
    """The index options (``INDEX_OPTIONS``) of pip's own configuration as ``pip download`` here
    sees it, by ``pip config list`` (its configuration files and ``PIP_*`` environment variables):
    ``{"global.index-url": "'https://...'", ":env:.find-links": "'/opt/wheels'", ...}``, values as
    pip prints them. Empty when nothing is configured (pip's default index). Values may hold
    credentials: they are hashed into keys, never written out. Read once per process for each set
    of ``PIP_*`` variables (``pip config list`` takes about 0.25 s).

    Raises:
        HarnessError: ``pip config list`` failed (a broken configuration file).
    """
    return dict(_index_config(tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("PIP_")))))


@lru_cache(maxsize=8)
def _index_config(pip_env: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    try:
        proc = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                              timeout=120)
    except subprocess.TimeoutExpired:
        raise HarnessError("`pip config list` took over 120 s; evolve reads pip's index configuration "
                           "with it") from None
    if proc.returncode != 0:
        raise HarnessError(f"`pip config list` failed (exit {proc.returncode}), so evolve cannot tell which "
                           f"package index pip uses; fix pip's configuration: {_pip_error(proc.stdout + proc.stderr)}")
    found = []
    for line in proc.stdout.splitlines():
        name, sep, value = line.partition("=")
        if sep and name.rpartition(".")[2] in INDEX_OPTIONS:
            found.append((name, value))
    return tuple(sorted(found))


def resolve(requirements: list[str], target: Target, *, home: Path,
            max_bytes: int = MAX_WHEELHOUSE_BYTES) -> Wheelhouse:
    """The wheelhouse of ``requirements`` for ``target`` under ``home/wheelhouses``: read from
    the cache when complete, else downloaded by pip (about 20 s for mini-swe-agent's 77 wheels).

    Raises:
        HarnessError: before anything is installed, naming the requirement: one that no wheel
            for ``target`` satisfies (a name or version that does not exist, a package that
            ships only a source distribution or wheels for other platforms), requirements
            that conflict, or a wheelhouse over ``max_bytes`` (its largest wheels named).
    """
    key = wheelhouse_key(requirements, target)
    root = home / "wheelhouses" / key[:24]
    done = _read_done(root)
    if done is not None:
        root.chmod(0o755)  # the sandbox user reads it (wheelhouses of older versions were private)
        return done
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key[:24]}-", dir=root.parent))
    try:
        tmp.chmod(0o755)  # mounted read-only into the build, which runs as the sandbox user
        (tmp / "requirements.txt").write_text("".join(r + "\n" for r in requirements))
        _pip_download(["-r", str(tmp / "requirements.txt")], tmp, target, requirements)
        _pip_download(["--no-deps", "pip"], tmp / "_installer", target, ["pip (evolve's installer)"])
        wheels = sorted(p.name for p in tmp.glob("*.whl"))
        sizes = {p.name: p.stat().st_size for p in tmp.glob("*.whl")}
        total = sum(sizes.values())
        if total > max_bytes:
            largest = sorted(sizes, key=sizes.get, reverse=True)[:3]
            raise HarnessError(
                f"the harness's requirements resolve to {total / 1e6:.0f} MB of wheels, over evolve's cap of "
                f"{max_bytes / 1e6:.0f} MB; the largest: " + ", ".join(f"{w} ({sizes[w] / 1e6:.0f} MB)" for w in largest)
                + ". Drop or narrow the requirement that brings them in.")
        installer = sorted((tmp / "_installer").glob("pip-*.whl"))
        if not installer:
            raise HarnessError(f"pip downloaded no wheel of itself for {target.describe()}; the sandbox "
                               "cannot install the requirements without one")
        meta = {"key": key, "requirements": list(requirements), "target": asdict(target), "wheels": wheels,
                "installer": installer[-1].relative_to(tmp).as_posix(), "bytes": total}
        (tmp / "wheelhouse.json").write_text(json.dumps(meta, indent=2))
        try:
            tmp.rename(root)
        except OSError:
            if _read_done(root) is None:  # else: a concurrent resolve finished the same one first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    done = _read_done(root)
    assert done is not None
    return done


def _read_done(root: Path) -> Wheelhouse | None:
    try:
        meta = json.loads((root / "wheelhouse.json").read_text())
    except (OSError, ValueError):
        return None
    return Wheelhouse(root, meta["key"], tuple(meta["wheels"]), meta["installer"], meta["bytes"])


def _pip_download(args: list[str], dest: Path, target: Target, asked: list[str]) -> None:
    """``pip download`` of wheels only for ``target`` into ``dest``; ``asked`` names what was asked
    for in errors."""
    cmd = [sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--disable-pip-version-check",
           "--no-input", "--progress-bar=off", "--dest", str(dest), "--python-version", target.python_version,
           "--implementation", target.implementation, "--abi", target.abi]
    for tag in target.platforms:
        cmd += ["--platform", tag]
    try:
        proc = subprocess.run(cmd + args, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise HarnessError(f"pip download of the harness's requirements ({', '.join(asked)}) took over "
                           f"{PIP_TIMEOUT_S} s; check the network and the index in your pip configuration") from None
    if proc.returncode == 0:
        return
    out = proc.stdout + proc.stderr
    missing = _NOT_FOUND.findall(out)
    if missing:
        names = ", ".join(dict.fromkeys(missing))
        raise HarnessError(
            f"requirement {names}: no wheel on the index fits the sandbox ({target.describe()}). Either no such "
            "name or version exists, or it ships only a source distribution or wheels for other platforms; "
            "evolve installs wheels only (building from source runs the package's code). Fix or pin that "
            f"requirement in harness.yaml. pip said: {_pip_error(out)}")
    if "ResolutionImpossible" in out or "conflict" in out.lower():
        raise HarnessError(f"the harness's requirements conflict ({', '.join(asked)}); pip said: {_pip_error(out)}")
    raise HarnessError(f"pip could not download the harness's requirements ({', '.join(asked)}) for "
                       f"{target.describe()} (exit {proc.returncode}): {_pip_error(out)}")


def _pip_error(out: str) -> str:
    """pip's ERROR lines (the last 1,000 characters of them), else its output's tail."""
    lines = [ln for ln in out.splitlines() if ln.startswith("ERROR") or "conflict" in ln.lower()]
    return ("\n".join(lines) or out)[-1000:].strip()
