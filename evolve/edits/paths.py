"""Which file an edit may write: path resolution and refusal.

Safety. ``apply_edits`` never writes outside the harness directory: absolute
paths, ``..`` and symlinks that lead out are refused, and so is any path that
matches a protected glob (eval sets, graders, ``evolve.yaml``). Each path is
checked as written, as resolved, and through symlinks to its real file.
"""

from __future__ import annotations

import difflib
import fnmatch
import os
import posixpath
import re
from collections.abc import Iterable
from pathlib import Path

from evolve.errors import ConfigError


class _Refused(Exception):
    pass


def _harness_dir(harness_dir: str) -> str:
    hd = str(harness_dir).strip().replace("\\", "/") or "."
    if hd.startswith("/") or re.match(r"^[A-Za-z]:", hd):
        raise ConfigError(f"harness directory {harness_dir!r} must be relative to the repository root")
    hd = posixpath.normpath(hd)
    if hd == ".." or hd.startswith("../"):
        raise ConfigError(f"harness directory {harness_dir!r} is outside the repository")
    return hd


def _places(root: Path, harness_dir: str) -> tuple[Path, str, Path]:
    """(the work tree's real path, the normalized harness directory, its real path).

    Raises:
        ConfigError: ``harness_dir`` is absolute, or outside ``root`` as written or resolved.
    """
    root_real = Path(os.path.realpath(root))
    hd = _harness_dir(harness_dir)
    harness_real = Path(os.path.realpath(root / hd))
    if not _within(harness_real, root_real):
        raise ConfigError(f"harness directory {harness_dir!r} resolves to {harness_real}, outside the "
                          f"repository {root_real}")
    return root_real, hd, harness_real


def _within(path: Path, parent: Path) -> bool:
    return path == parent or parent in path.parents


def _inside(rel: str, hd: str) -> bool:
    return hd == "." or rel == hd or rel.startswith(hd + "/")


def protected_match(rel: str, patterns: Iterable[str]) -> str | None:
    """The first glob of ``patterns`` that protects repo-relative ``rel``, or None.

    ``fnmatch`` semantics on posix paths, case-insensitive (so a
    case-insensitive file system can't be used to sidestep a pattern), where
    ``*`` also matches ``/``: ``evals/**`` and ``evals/*`` cover all of
    ``evals/``; ``**/grader.py`` also matches a top-level ``grader.py``. A
    pattern that matches a directory (``evals``, ``evals/``) covers
    everything under it.
    """
    rel = rel.lower()
    parts = rel.split("/")
    ancestors = ["/".join(parts[:k]) for k in range(1, len(parts) + 1)]
    for pattern in patterns:
        p = pattern.strip().replace("\\", "/").lower()
        while p.startswith("./"):
            p = p[2:]
        p = p.rstrip("/")
        if not p:
            continue
        candidates = [p, p[3:]] if p.startswith("**/") else [p]
        if any(fnmatch.fnmatchcase(a, c) for c in candidates for a in ancestors):
            return pattern
    return None


def _resolve(raw: str, root: Path, root_real: Path, hd: str, harness_real: Path,
             protected: list[str]) -> tuple[str, Path]:
    """The repo-relative path and real file of ``raw``, or raise _Refused."""
    p = raw.strip().replace("\\", "/")
    if not p:
        raise _Refused("The block has an empty file path.")
    if p.startswith(("/", "~")) or re.match(r"^[A-Za-z]:", p):
        raise _Refused(f"{raw} is an absolute path. Give paths relative to the repository root, "
                       f"like {posixpath.join(hd, 'agent.py')}.")
    norm = posixpath.normpath(p)
    if norm == ".." or norm.startswith("../"):
        raise _Refused(f"{raw} points outside the repository. Only files under {hd}/ may be edited.")
    _check_rel(raw, norm, hd, protected)
    if _inside(norm, hd):
        rel = norm
    elif os.path.lexists(root / norm):
        raise _Refused(f"{raw} is outside the harness directory {hd}/. Only files under {hd}/ may be edited.")
    elif os.path.lexists(root / hd / norm) or not os.path.lexists(root / norm.split("/")[0]):
        rel = posixpath.join(hd, norm)
    else:
        raise _Refused(f"{raw} is outside the harness directory {hd}/. Only files under {hd}/ may be edited "
                       f"(write {posixpath.join(hd, norm)} if you mean a file of the harness).")
    _check_rel(raw, rel, hd, protected)
    real = Path(os.path.realpath(root / rel))
    if not _within(real, root_real):
        raise _Refused(f"{raw} leads through a symlink to {real}, outside the repository.")
    real_rel = real.relative_to(root_real).as_posix()
    if not _within(real, harness_real):
        raise _Refused(f"{raw} leads through a symlink to {real_rel}, outside the harness directory {hd}/.")
    _check_rel(raw, real_rel, hd, protected)
    return real_rel, real


def _check_rel(raw: str, rel: str, hd: str, protected: list[str]) -> None:
    if ".git" in rel.lower().split("/"):
        raise _Refused(f"{raw} is inside a .git directory, which may never be edited.")
    pattern = protected_match(rel, protected)
    if pattern is not None:
        shown = raw if rel == raw else f"{raw} ({rel})"
        raise _Refused(f"{shown} is protected (it matches {pattern!r}): the optimizer may not edit it. "
                       f"Leave it unchanged.")


def _similar_names(rel: str, harness_real: Path, root_real: Path) -> list[str]:
    """Up to 3 harness files whose names look like ``rel``'s (a typo, a wrong directory)."""
    base = posixpath.basename(rel)
    scored = []
    for p in _harness_files(harness_real):
        name = p.relative_to(root_real).as_posix()
        score = difflib.SequenceMatcher(None, base, p.name).ratio() + (0.01 if name.startswith(
            posixpath.dirname(rel) + "/") else 0)
        if score >= 0.75:
            scored.append((-score, name))
    return [name for _, name in sorted(scored)[:3]]


def _harness_files(harness_real: Path, limit: int = 500) -> list[Path]:
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(harness_real):
        dirnames[:] = sorted(d for d in dirnames if d not in (".git", "__pycache__", "node_modules"))
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if p.is_file() and not p.is_symlink():
                out.append(p)
            if len(out) >= limit:
                return out
    return out
