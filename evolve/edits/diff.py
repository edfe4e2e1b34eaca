"""Applying a git diff (an agent's ``model_patch``) to a work tree, file by file, under the same
rules as SEARCH/REPLACE blocks: only files under the harness directory, never a protected path,
a ``.git`` directory or a path through a symlink that leads out (``evolve.edits.paths``).

The diff is read with unidiff; each allowed file's part is applied with ``git apply`` (which itself
refuses paths outside the work tree and writes through no symlink). Refused, here and unlike
``apply_edits``: symlinks (mode 120000), binary files, and any path not inside the harness
directory as written (a git diff's paths are exact; nothing is remapped). After applying, the work
tree's status is checked again with the same rules: if anything else changed, every change is
undone and the whole diff refused.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass, field
from pathlib import Path

from evolve.edits.paths import _inside, _places, _Refused, _resolve
from evolve.hostgit import HostGitError, Repo

_SYMLINK_MODE = "120000"


@dataclass
class DiffReport:
    """What ``apply_diff`` did; paths are repo-relative posix paths."""

    changed_files: list[str] = field(default_factory=list)
    """Files created, changed or deleted, in the diff's order."""
    refused: list[str] = field(default_factory=list)
    """One reason per refused file (never written)."""
    failed: list[str] = field(default_factory=list)
    """One reason per allowed file ``git apply`` could not apply."""


def apply_diff(root: Path, harness_dir: str, diff: bytes, protected: list[str]) -> DiffReport:
    """Apply the allowed files of the git diff ``diff`` to the git work tree ``root``.

    Args:
        root: a git worktree (the candidate's), clean.
        harness_dir: repo-relative directory every change must stay in (``"."``: the whole repo).
        diff: ``git diff --binary`` output, relative to the repository root (``a/``, ``b/`` prefixes).
        protected: repo-relative globs never written (``ProjectConfig.protected_paths``).

    A diff that is not UTF-8 or not a diff is refused whole. Never raises for the diff's content.

    Raises:
        ConfigError: ``harness_dir`` is absolute or outside ``root``.
        HostGitError: git itself failed on the work tree (status, reset).
    """
    import unidiff

    root = Path(root)
    root_real, hd, harness_real = _places(root, harness_dir)
    report = DiffReport()
    try:
        patch = unidiff.PatchSet(diff.decode("utf-8"))
    except (UnicodeDecodeError, unidiff.UnidiffParseError) as e:
        report.refused.append(f"the diff cannot be read ({type(e).__name__}: {e}); nothing was applied")
        return report
    repo = Repo(root)

    def check(path: str) -> None:
        norm = posixpath.normpath(path)
        if not _inside(norm, hd):
            raise _Refused(f"{path} is outside the harness directory {hd}/. Only files under {hd}/ may be edited.")
        _resolve(path, root, root_real, hd, harness_real, protected)

    for pf in patch:
        paths = [_strip(p, prefix) for p, prefix in ((pf.source_file, "a/"), (pf.target_file, "b/"))
                 if p != "/dev/null"]
        shown = paths[-1] if paths else "?"
        try:
            if pf.is_binary_file:
                raise _Refused(f"{shown} is a binary file; only text files of the harness may be changed.")
            if _SYMLINK_MODE in str(pf.patch_info):
                raise _Refused(f"{shown} is a symbolic link; the harness may not gain or change symlinks.")
            for p in paths:
                check(p)
        except _Refused as e:
            report.refused.append(str(e))
            continue
        try:
            repo.run("apply", "--whitespace=nowarn", "-", input=str(pf).encode("utf-8"))
        except HostGitError as e:
            report.failed.append(f"{shown}: git apply failed: {str(e)[-300:]}")
            continue
        report.changed_files += [p for p in dict.fromkeys(paths) if p not in report.changed_files]
    stray = _stray_changes(repo, root, check)
    if stray:
        repo.run("reset", "-q", "--hard")
        repo.run("clean", "-q", "-f", "-d")
        report.refused.append("after applying, files the diff may not change were changed (" + "; ".join(stray[:5])
                              + "): every change was undone")
        report.changed_files = []
    return report


def _strip(path: str, prefix: str) -> str:
    return path[len(prefix):] if path.startswith(prefix) else path


def _stray_changes(repo: Repo, root: Path, check) -> list[str]:
    """Reasons for changed paths of the work tree that break the rules (a symlink anywhere counts)."""
    out = []
    listing = repo.run("status", "--porcelain", "-z", "--untracked-files=all", "--no-renames").decode(
        "utf-8", "surrogateescape")
    for entry in listing.split("\0"):
        if len(entry) < 4:
            continue
        path = entry[3:]
        try:
            check(path)
            if os.path.islink(root / path):
                raise _Refused(f"{path} is a symbolic link")
        except _Refused as e:
            out.append(str(e))
    return out
