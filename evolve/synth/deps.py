"""Which packages a project's test suite needs, read from the files its developers keep them in.

Sources, in this order (every one found is used, each is named in ``TestDeps.sources``):

* ``pyproject.toml``: ``[project] dependencies``; the extras named by ``--extras``, else those
  called ``test``, ``tests``, ``testing`` or ``dev``; the dependency groups (PEP 735) of the same
  names, ``{include-group = ...}`` followed; ``[build-system] requires`` (default
  ``setuptools>=40.8.0`` and ``wheel``, as pip assumes) for the editable install;
* ``setup.cfg``: ``[options] install_requires`` and the same extras of ``[options.extras_require]``;
* ``requirements*.txt``, ``requirements/*.txt`` and ``*requirements*.txt`` whose name says test or
  dev (``requirements-test.txt``, ``test-requirements.txt``, ``requirements/tests.txt``), ``-r``
  includes followed; or only the files named by ``--requirements``;
* ``tox.ini``: ``[testenv] deps`` (``-r`` lines followed, ``{...}`` substitutions dropped).

Lines that are not requirements (``-e .``, options, local paths, URLs) are left out and listed
in ``TestDeps.skipped``: the project itself is installed separately (``pip install -e .``).
Requirements are parsed with ``packaging`` (as pip does); a ``setup.py``'s own
``install_requires`` cannot be read without running it and is not seen here.
"""

from __future__ import annotations

import configparser
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement

from evolve.errors import SynthError

__all__ = ["TEST_EXTRAS", "TestDeps", "detect"]

TEST_EXTRAS = ("test", "tests", "testing", "dev")
_REQ_NAME = re.compile(r"(^|[-_/])(test|tests|testing|dev)([-_.]|$)")
DEFAULT_BUILD_REQUIRES = ("setuptools>=40.8.0", "wheel")
"""What pip assumes when a project declares no ``[build-system]`` (PEP 518)."""


@dataclass
class TestDeps:
    """What the suite needs besides the project itself."""

    __test__ = False

    requirements: list[str] = field(default_factory=list)
    """PEP 508 strings, in the order found, without repeats."""
    build_requires: list[str] = field(default_factory=list)
    """For installing the project (``--no-build-isolation``)."""
    sources: list[str] = field(default_factory=list)
    """Where they were read: ``pyproject.toml [project.optional-dependencies] test``..."""
    skipped: list[str] = field(default_factory=list)
    """Lines that are not requirements, with their file."""

    def add(self, line: str, where: str) -> None:
        text = line.split(" #", 1)[0].strip()
        if not text or text.startswith("#"):
            return
        try:
            req = Requirement(text)
        except InvalidRequirement:
            self.skipped.append(f"{where}: {text}")
            return
        if req.url:
            self.skipped.append(f"{where}: {text}")
            return
        if str(req) not in self.requirements:
            self.requirements.append(str(req))


def detect(root: Path, *, extras: list[str] | None = None, requirement_files: list[Path] | None = None) -> TestDeps:
    """The test dependencies of the project at ``root``.

    Args:
        extras: extras/dependency groups to take instead of ``TEST_EXTRAS``.
        requirement_files: requirements files to take instead of the detected ones (paths
            relative to ``root`` or absolute).

    Raises:
        SynthError: a named extra or group does not exist, a named file is missing, or
            ``pyproject.toml``/``setup.cfg`` cannot be parsed (the message names the file).
    """
    root = Path(root)
    deps = TestDeps()
    wanted = list(extras) if extras else list(TEST_EXTRAS)
    found_extras: set[str] = set()
    pyproject = root / "pyproject.toml"
    build_requires: list[str] | None = None
    if pyproject.is_file():
        try:
            data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise SynthError(f"{pyproject}: not valid TOML ({e}); fix it or pass --requirements") from None
        project = data.get("project") or {}
        for line in project.get("dependencies") or []:
            deps.add(line, "pyproject.toml [project] dependencies")
        if project.get("dependencies"):
            deps.sources.append("pyproject.toml [project] dependencies")
        for name, lines in (project.get("optional-dependencies") or {}).items():
            if name in wanted:
                found_extras.add(name)
                deps.sources.append(f"pyproject.toml [project.optional-dependencies] {name}")
                for line in lines:
                    deps.add(_self_extra(line, project.get("name")), f"pyproject.toml extra {name}")
        groups = data.get("dependency-groups") or {}
        for name in groups:
            if name in wanted:
                found_extras.add(name)
                deps.sources.append(f"pyproject.toml [dependency-groups] {name}")
                for line in _group(groups, name, set()):
                    deps.add(line, f"pyproject.toml group {name}")
        if "build-system" in data:
            build_requires = list((data.get("build-system") or {}).get("requires") or [])
    setup_cfg = root / "setup.cfg"
    if setup_cfg.is_file():
        cfg = configparser.ConfigParser(interpolation=None)
        try:
            cfg.read_string(setup_cfg.read_text(encoding="utf-8"))
        except (configparser.Error, UnicodeDecodeError) as e:
            raise SynthError(f"{setup_cfg}: cannot be parsed ({e}); fix it or pass --requirements") from None
        if cfg.has_option("options", "install_requires"):
            deps.sources.append("setup.cfg [options] install_requires")
            for line in cfg.get("options", "install_requires").splitlines():
                deps.add(line, "setup.cfg install_requires")
        if cfg.has_section("options.extras_require"):
            for name, value in cfg.items("options.extras_require"):
                if name in wanted:
                    found_extras.add(name)
                    deps.sources.append(f"setup.cfg [options.extras_require] {name}")
                    for line in value.splitlines():
                        deps.add(line, f"setup.cfg extra {name}")
    if extras:
        missing = [e for e in extras if e not in found_extras]
        if missing:
            raise SynthError(f"the project at {root} has no extra or dependency group {missing[0]!r} "
                             "(looked in pyproject.toml and setup.cfg); name one it has, or use --requirements")
    if requirement_files is not None:
        for f in requirement_files:
            path = f if Path(f).is_absolute() else root / f
            if not Path(path).is_file():
                raise SynthError(f"--requirements {f}: no such file")
            _requirements_file(Path(path), root, deps, set())
    else:
        for path in _requirement_files(root):
            _requirements_file(path, root, deps, set())
        tox = root / "tox.ini"
        if tox.is_file():
            _tox(tox, root, deps)
    deps.build_requires = list(DEFAULT_BUILD_REQUIRES) if build_requires is None else build_requires
    return deps


def _self_extra(line: str, project_name: str | None) -> str:
    """``mypkg[other]`` inside mypkg's own extras: the other extra's packages are not followed, the
    self-reference is dropped (the project is installed from its tree)."""
    return "" if project_name and re.match(rf"^{re.escape(project_name)}\s*(\[|$)", line.strip(), re.I) else line


def _group(groups: dict, name: str, seen: set[str]) -> list[str]:
    if name in seen:
        raise SynthError(f"pyproject.toml: dependency group {name!r} includes itself")
    seen.add(name)
    out: list[str] = []
    for item in groups.get(name) or []:
        if isinstance(item, dict) and "include-group" in item:
            out += _group(groups, item["include-group"], seen)
        elif isinstance(item, str):
            out.append(item)
    return out


def _requirement_files(root: Path) -> list[Path]:
    found = []
    for pattern in ("*requirements*.txt", "requirements/*.txt", "reqs/*.txt"):
        for path in sorted(root.glob(pattern)):
            rel = path.relative_to(root).as_posix().lower()
            if _REQ_NAME.search(rel.removesuffix(".txt")) and path not in found:
                found.append(path)
    return found


def _requirements_file(path: Path, root: Path, deps: TestDeps, seen: set[Path]) -> None:
    if path in seen or not path.is_file():
        return
    seen.add(path)
    where = path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)
    deps.sources.append(where)
    for raw in path.read_text(encoding="utf-8", errors="replace").splitlines():
        line = raw.strip()
        if line.startswith(("-r ", "--requirement ", "-c ", "--constraint ")):
            if line.startswith(("-r", "--requirement")):
                _requirements_file(path.parent / line.split(None, 1)[1].strip(), root, deps, seen)
            continue
        if line.startswith("-") or line.startswith((".", "/")):
            if line:
                deps.skipped.append(f"{where}: {line}")
            continue
        deps.add(line, where)


def _tox(path: Path, root: Path, deps: TestDeps) -> None:
    cfg = configparser.ConfigParser(interpolation=None)
    try:
        cfg.read_string(path.read_text(encoding="utf-8"))
    except (configparser.Error, UnicodeDecodeError):
        deps.skipped.append("tox.ini: cannot be parsed")
        return
    if not cfg.has_option("testenv", "deps"):
        return
    deps.sources.append("tox.ini [testenv] deps")
    for raw in cfg.get("testenv", "deps").splitlines():
        line = re.sub(r"^[\w,{}-]+:\s*", "", raw.strip())  # factor-conditional lines: "py311: foo"
        if "{" in line:
            deps.skipped.append(f"tox.ini: {line}")
        elif line.startswith("-r"):
            _requirements_file(path.parent / line[2:].strip(), root, deps, set())
        elif line:
            deps.add(line, "tox.ini")
