"""Writing a synthesized eval set: snapshot repositories and split files, atomically.

Layout of a synthesized eval set::

    <dir>/evalset.yaml            name, description
    <dir>/search.jsonl            tasks, one per line
    <dir>/holdout.jsonl
    <dir>/synth.json              how it was made: seed, sources, counts, timings
    <dir>/repos/<project>/        a bare git repository of task snapshots

Every task's ``base_commit`` is a parentless commit holding exactly the buggy
tree of that task, on its own branch ``tasks/<instance_id>``. No commit in the
repository holds a fixed tree and no commit has a parent, so ``git log`` of
any ref shows one buggy snapshot and nothing that could hold the fix (the
sandbox gets ``git archive`` of the base commit only, in any case). Commits
are made with a fixed author and date, so the same tree always gives the same
commit id: builds with the same seed give identical tasks.

The set is built in a hidden sibling directory and renamed into place at
the end; on any error (or Ctrl-C) the partial build is removed, so nothing
half-written is ever left at the destination. An existing destination is
replaced only if evolve made it (it has ``synth.json``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

import yaml

from evolve import hostgit, owner
from evolve.errors import OutputError
from evolve.evalsets.format import dump_tasks
from evolve.evalsets.registry import DEFAULT_HOLDOUT_FRACTION, assign_split
from evolve.types import Task

__all__ = ["EvalSetWriter", "SnapshotRepo", "META_FILE"]

META_FILE = "synth.json"
_DATE = "2000-01-01T00:00:00+0000"
_BUILDING = re.compile(r"^\.(?P<name>.+)\.building-(?P<pid>\d+)-.+$")


class SnapshotRepo:
    """A bare repository of task snapshots; each ``commit`` is parentless, on its own branch."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if not (self.path / "HEAD").exists():
            self.path.mkdir(parents=True, exist_ok=True)
            hostgit.run(["init", "-q", "--bare", str(self.path)])
        self._tmp = owner.mkdtemp("index")  # swept once this process is dead (kill -9)
        self._indexes = 0
        self.branches: list[str] = []

    def _git(self, args: list[str], index: Path | None = None, work_tree: Path | None = None,
             input: bytes | None = None) -> str:
        env = {"GIT_DIR": str(self.path)}
        if index is not None:
            env["GIT_INDEX_FILE"] = str(index)
        if work_tree is not None:
            env["GIT_WORK_TREE"] = str(work_tree)
        return hostgit.text(args, cwd=work_tree or self.path, env=env, input=input, date=_DATE)

    def index_of(self, tree_dir: Path) -> Path:
        """An index file holding every file under ``tree_dir`` (their blobs are written to the repo)."""
        self._indexes += 1
        index = self._tmp / f"index-{self._indexes}"
        self._git(["add", "-A", "-f", "."], index=index, work_tree=Path(tree_dir))
        return index

    def commit(self, index: Path, branch: str, message: str, overrides: dict[str, bytes] | None = None) -> str:
        """A parentless commit of ``index`` with ``overrides`` (path -> content) on ``branch``; its id."""
        work = self._tmp / f"index-{self._indexes}-{len(self.branches)}"
        shutil.copyfile(index, work)
        for path, content in (overrides or {}).items():
            listed = self._git(["ls-files", "-s", "--", path], index=work).split()
            mode = listed[0] if listed else "100644"
            blob = self._git(["hash-object", "-w", "--stdin"], input=content).strip()
            self._git(["update-index", "--add", "--cacheinfo", f"{mode},{blob},{path}"], index=work)
        tree = self._git(["write-tree"], index=work).strip()
        sha = self._git(["commit-tree", tree, "-m", message]).strip()
        self._git(["update-ref", f"refs/heads/{branch}", sha])
        work.unlink()
        self.branches.append(branch)
        return sha

    def finish(self) -> None:
        """Point HEAD at the first branch, pack the objects, drop temporary indexes."""
        if self.branches:
            self._git(["symbolic-ref", "HEAD", f"refs/heads/{sorted(self.branches)[0]}"])
        self._git(["gc", "-q", "--prune=now"])
        self.close()

    def close(self) -> None:
        """Drop the temporary indexes (a failure is logged; the scratch directory goes at exit)."""
        owner.remove_tree(self._tmp, "temporary git indexes")


class EvalSetWriter:
    """Builds an eval set in a hidden sibling of ``dest`` and moves it into place on ``commit``.

    Use as a context manager: leaving it by an exception removes the partial build.

    Raises:
        OutputError: ``dest`` exists and was not made by evolve.
    """

    def __init__(self, dest: Path, *, name: str, description: str = "") -> None:
        self.dest = Path(dest).expanduser().absolute()
        self.name, self.description = name, description
        check_destination(self.dest)
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_builds(self.dest)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.dest.name}.building-{os.getpid()}-",
                                         dir=self.dest.parent))
        self._repos: dict[str, SnapshotRepo] = {}
        self.done = False

    def __enter__(self) -> "EvalSetWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.done:
            self.abort()

    @property
    def root(self) -> Path:
        """Where the set is being built: ``repo_path`` of tasks is relative to it."""
        return self.tmp

    def repo(self, project: str) -> SnapshotRepo:
        if project not in self._repos:
            self._repos[project] = SnapshotRepo(self.tmp / "repos" / project)
        return self._repos[project]

    def commit(self, tasks: Iterable[Task], meta: dict, *,
               holdout_fraction: float = DEFAULT_HOLDOUT_FRACTION) -> dict[str, list[Task]]:
        """Write the split files and metadata, then move the set to ``dest`` (replacing evolve's old one)."""
        tasks = sorted(tasks, key=lambda t: t.instance_id)
        splits: dict[str, list[Task]] = {"search": [], "holdout": []}
        for task in tasks:
            splits[assign_split(task.instance_id, holdout_fraction)].append(task)
        for split, items in splits.items():
            dump_tasks(items, self.tmp / f"{split}.jsonl")
        spec = {"name": self.name, "description": self.description}
        (self.tmp / "evalset.yaml").write_text(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True))
        meta["counts"] = {s: len(items) for s, items in splits.items()}
        (self.tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        for repo in self._repos.values():
            repo.finish()
        # Unused repositories (a project that gave no task) are not kept.
        used = {t.repo_path for t in tasks}
        for project in list(self._repos):
            if f"repos/{project}" not in used:
                shutil.rmtree(self.tmp / "repos" / project, ignore_errors=True)
        os.chmod(self.tmp, 0o755)  # mkdtemp made it 0700
        old = None
        check_destination(self.dest)
        if self.dest.exists():
            old = self.dest.parent / f".{self.dest.name}.old-{os.getpid()}-{os.urandom(4).hex()}"
            os.rename(self.dest, old)
        os.rename(self.tmp, self.dest)
        self.done = True
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return splits

    def abort(self) -> None:
        for repo in self._repos.values():
            repo.close()
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.done = True


def check_destination(dest: Path) -> None:
    """Raise ``OutputError`` if ``dest`` exists and is not an eval set evolve synthesized."""
    if not dest.exists():
        return
    if not dest.is_dir() or not (dest / META_FILE).is_file():
        raise OutputError(f"{dest} already exists and was not made by `evolve evals synth`/`build` (no "
                          f"{META_FILE}); pick another --name or --out, or move it away")


def _remove_stale_builds(dest: Path) -> None:
    """Remove hidden build directories of ``dest`` left by processes that died."""
    try:
        entries = list(dest.parent.iterdir())
    except OSError:
        return
    for entry in entries:
        m = _BUILDING.match(entry.name)
        if not m or m.group("name") != dest.name:
            continue
        pid = int(m.group("pid"))
        try:
            os.kill(pid, 0)
            alive = True
        except ProcessLookupError:
            alive = False
        except PermissionError:
            alive = True
        if not alive:
            shutil.rmtree(entry, ignore_errors=True)
