"""The project tree to synthesize from: taken from a path, and which of its files are tests and which source."""

from __future__ import annotations

import io
import os
import re
import shutil
import tarfile
from pathlib import Path

from evolve import hostgit
from evolve.synth.env import DEFAULT_TEST_CMD, NOT_SOURCE, TEST_FILE, NoTestsError, ProjectSource, SynthError
from evolve.synth.validate import JUNK_DIRS
from evolve.testfiles import TEST_LIKE

__all__ = ["default_test_cmd", "extract_tar", "project_from_path", "require_tests", "slug", "source_files_of",
           "test_files_of"]

_SLUG = re.compile(r"[^A-Za-z0-9_.-]+")


def slug(name: str) -> str:
    return _SLUG.sub("-", name).strip("-.") or "project"


def default_test_cmd(root: Path) -> str:
    """``DEFAULT_TEST_CMD``, prefixed with ``PYTHONPATH=src`` when the packages live in ``src/``."""
    src = root / "src"
    if src.is_dir() and any((p / "__init__.py").exists() or p.suffix == ".py" for p in src.iterdir()):
        top_packages = [p for p in root.iterdir() if (p / "__init__.py").exists() and p.name not in ("tests", "test")]
        if not top_packages:
            return "PYTHONPATH=src " + DEFAULT_TEST_CMD
    return DEFAULT_TEST_CMD


def project_from_path(path: Path, workdir: Path, *, name: str | None = None,
                      test_cmd: str | None = None) -> ProjectSource:
    """A ``ProjectSource`` for the repo at ``path``: its committed ``HEAD`` if it is a git
    repository (uncommitted changes are not used), else the directory as it is.

    Raises:
        SynthError: ``path`` is not a directory, or has no pytest test files.
    """
    path = Path(path).expanduser().resolve()
    if not path.is_dir():
        raise SynthError(f"{path} is not a directory: pass --repo the root of a Python project")
    root = workdir / "tree"
    root.mkdir(parents=True)
    git_dir = None
    notes: list[str] = []
    if (path / ".git").exists():
        # Through evolve.hostgit: no user config, hooks or fsmonitor command of the repository runs
        # (``git status`` would otherwise start the repository's ``core.fsmonitor`` command).
        try:
            top = hostgit.text(["rev-parse", "--show-toplevel"], cwd=path).strip()
            archive = hostgit.run(["archive", "--format=tar", "HEAD"], cwd=path)
        except hostgit.HostGitError as e:
            said = e.output.strip()[-300:] or str(e)
            raise SynthError(f"cannot read the committed tree of {path} ({said}); "
                             "commit something first") from None
        if Path(top).resolve() != path:
            raise SynthError(f"{path} is inside the git repository {top}: pass --repo its top directory")
        extract_tar(archive, root)
        git_dir = path
        try:  # the repository's own settings for line endings and file modes decide what changed
            changed = hostgit.text(["--no-optional-locks", "status", "--porcelain", "--untracked-files=no"], cwd=path, pinned=False)
        except hostgit.HostGitError:
            changed = ""
        if changed.strip():
            notes.append(f"{path} has uncommitted changes; synthesis uses its committed HEAD only")
    else:
        for entry in sorted(path.iterdir()):
            if entry.name in JUNK_DIRS:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.copytree(entry, root / entry.name, symlinks=True,
                                ignore=shutil.ignore_patterns(*JUNK_DIRS, "*.pyc"))
            else:
                shutil.copy2(entry, root / entry.name, follow_symlinks=False)
    project = slug(name or path.name)
    source = ProjectSource(name=project, root=root, repo=project, test_cmd=test_cmd or default_test_cmd(root),
                           origin=str(path), git_dir=git_dir, notes=notes)
    require_tests(source, where=str(path))
    return source


def extract_tar(data: bytes, dest: Path) -> None:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, filter="data")
        else:  # pragma: no cover - Python < 3.11.4
            tar.extractall(dest)


def test_files_of(root: Path) -> list[str]:
    """Relative paths of the pytest test modules (``test_*.py``, ``*_test.py``) under ``root``."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in JUNK_DIRS)
        for f in sorted(filenames):
            rel = Path(dirpath, f).relative_to(root).as_posix()
            if TEST_FILE.search(rel):
                found.append(rel)
    return found


def require_tests(source: ProjectSource, where: str) -> list[str]:
    files = test_files_of(source.root)
    if not files:
        raise NoTestsError(
            f"{where} has no pytest tests (no test_*.py or *_test.py file"
            f"{' in its committed HEAD' if source.git_dir else ''}). "
            "Synthesis needs a test suite that passes: tasks are bugs that tests catch.")
    return files


def source_files_of(root: Path) -> list[str]:
    """Relative paths of the Python modules that may be mutated."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in JUNK_DIRS)
        for f in sorted(filenames):
            rel = Path(dirpath, f).relative_to(root).as_posix()
            if f.endswith(".py") and not TEST_LIKE.search(rel) and not NOT_SOURCE.search(rel):
                found.append(rel)
    return found
