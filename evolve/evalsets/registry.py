"""Eval sets: named splits of tasks, found by name or path.

Every eval set has at least the splits ``search`` (what the optimizer may see
and score against) and ``holdout`` (sealed: only for the final verdict). No
task may be in both. An eval set is one of:

* a directory::

      <dir>/evalset.yaml    optional: name, description, image, test_cmd,
                            holdout_fraction, splits: {search: search.jsonl, ...}
      <dir>/<split>.jsonl   without ``splits:``, every *.jsonl here, split = file stem
      <dir>/repos/...       local git repositories named by tasks' ``repo_path``

  A directory holding a single ``.jsonl`` that is not named after a split
  (``tasks.jsonl``, a SWE-bench export) is split like a single file, below,
  with the ``holdout_fraction`` of its ``evalset.yaml``.

* a single ``.jsonl`` file (e.g. a SWE-bench export), named after its stem. A
  row's ``split`` field gives its split; if rows have none, each task goes to
  ``holdout`` iff ``int(sha256(instance_id), 16) % 1000 < holdout_fraction * 1000``
  (``holdout_fraction`` 0.3, the product rounded to an integer), else to
  ``search``. The assignment depends on the task's id alone, so adding tasks
  never moves old ones between splits.

* a name, looked up in ``evalset_dirs()``: ``<dir>/<name>/`` or ``<dir>/<name>.jsonl``.

``repo_path`` is relative to the eval set's root (the directory, or the
directory holding the single file), must be a git repository and must contain
the task's ``base_commit``. ``image`` and ``test_cmd`` from ``evalset.yaml``
fill in tasks that lack them.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from evolve import hostgit
from evolve.errors import EvalSetError
from evolve.evalsets.format import load_task_lines
from evolve.types import Task

__all__ = [
    "DEFAULT_HOLDOUT_FRACTION",
    "REQUIRED_SPLITS",
    "EvalSet",
    "EvalSetInfo",
    "EvalSetSpec",
    "assign_split",
    "evalset_dirs",
    "list_evalsets",
    "load_evalset",
]

SPEC_FILE = "evalset.yaml"
REQUIRED_SPLITS = ("search", "holdout")
DEFAULT_HOLDOUT_FRACTION = 0.3
_SPLIT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class EvalSetSpec(BaseModel):
    """The contents of ``evalset.yaml``. Every key is optional; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = Field(default=None, min_length=1)
    """Display name; default: the directory's name."""
    description: str = ""
    image: str | None = Field(default=None, min_length=1)
    """Docker image for tasks without one."""
    test_cmd: str | None = Field(default=None, min_length=1)
    """Test command for tasks without one."""
    holdout_fraction: float = Field(default=DEFAULT_HOLDOUT_FRACTION, gt=0, lt=1)
    """Share of tasks put in ``holdout`` when a single task file is split by hash."""
    splits: dict[str, str] | None = None
    """Split name to JSONL file, relative to the directory."""


@dataclass
class EvalSet:
    """A loaded, validated eval set."""

    name: str
    root: Path
    """Absolute directory that ``repo_path`` and split files are relative to."""
    description: str
    splits: dict[str, list[Task]]
    files: dict[str, Path] = field(default_factory=dict)
    """Split name to the absolute path of the file its tasks came from."""
    source: Path | None = None
    """What was loaded: the directory or the single ``.jsonl`` file."""

    def tasks(self, split: str) -> list[Task]:
        """The tasks of ``split``, in file order.

        Raises:
            EvalSetError: there is no such split; the message lists the splits there are.
        """
        if split not in self.splits:
            raise EvalSetError(
                f"eval set {self.name!r} has no split {split!r}; its splits are: "
                + ", ".join(sorted(self.splits)),
                path=str(self.source or self.root), field="split")
        return list(self.splits[split])

    def repo_dir(self, task: Task) -> Path | None:
        """Absolute path of ``task``'s local git repository, or None if its snapshot is in its image."""
        if task.repo_path is None:
            return None
        return (self.root / task.repo_path).resolve()

    def counts(self) -> dict[str, int]:
        """Number of tasks per split."""
        return {name: len(tasks) for name, tasks in self.splits.items()}

    def fingerprint(self, split: str) -> str:
        """sha256 hex over the content hashes of ``split``'s tasks, in id order.

        Changes whenever a task of the split is added, removed or edited.
        """
        digest = hashlib.sha256()
        for task in sorted(self.tasks(split), key=lambda t: t.instance_id):
            digest.update(task.content_hash().encode() + b"\n")
        return digest.hexdigest()


@dataclass(frozen=True)
class EvalSetInfo:
    """One row of ``evolve evals list``: an eval set found in an eval-set directory."""

    name: str
    """The name to pass to ``load_evalset`` (directory name or file stem)."""
    path: Path
    counts: dict[str, int] | None
    """Tasks per split, or None if the eval set does not load."""
    description: str = ""
    error: str | None = None
    """Why the eval set does not load, or None."""
    shadowed_by: Path | None = None
    """An eval set of the same name earlier in ``evalset_dirs()`` that wins the lookup."""

    @property
    def ok(self) -> bool:
        return self.error is None


def assign_split(instance_id: str, holdout_fraction: float = DEFAULT_HOLDOUT_FRACTION) -> str:
    """``"holdout"`` or ``"search"`` for a task of a file without ``split`` fields; see the module docstring."""
    bucket = int(hashlib.sha256(instance_id.encode("utf-8")).hexdigest(), 16) % 1000
    return "holdout" if bucket < round(holdout_fraction * 1000) else "search"


def evolve_home() -> Path:
    """``$EVOLVE_HOME``, default ``~/.local/share/evolve``."""
    home = os.environ.get("EVOLVE_HOME")
    return Path(home).expanduser() if home else Path.home() / ".local" / "share" / "evolve"


def evalset_dirs() -> list[Path]:
    """Where eval-set names are looked up, first match wins.

    ``./evals`` and ``$EVOLVE_HOME/evals`` (default ``~/.local/share/evolve/evals``).
    Duplicates are listed once. The directories need not exist.
    """
    candidates = [
        Path.cwd() / "evals",
        evolve_home() / "evals",
    ]
    dirs: list[Path] = []
    seen: set[Path] = set()
    for d in candidates:
        key = d.resolve()
        if key not in seen:
            seen.add(key)
            dirs.append(d)
    return dirs


def load_evalset(name_or_path: str | Path, *, search_dirs: list[Path] | None = None) -> EvalSet:
    """Load and validate an eval set given by directory, ``.jsonl`` file or name.

    An existing path is loaded as it is, except that a bare name (no ``/``)
    matching a local directory without ``evalset.yaml`` or ``.jsonl`` files is
    looked up as a name. Names are looked up in ``search_dirs`` (default
    ``evalset_dirs()``).

    Raises:
        EvalSetError: not found (the message lists where it looked and what it
            found), or invalid (the message names file, line and field).
    """
    path = Path(name_or_path).expanduser()
    name = str(name_or_path)
    path_like = os.sep in name or "/" in name or name.startswith(".") or path.suffix == ".jsonl"
    if path.is_dir() and (path_like or _holds_evalset(path)):
        # A bare name that happens to be an unrelated directory here is looked up instead.
        return _load_dir(path)
    if path.is_file():
        if path.name == SPEC_FILE:
            return _load_dir(path.parent)
        if path.suffix == ".jsonl":
            return _load_file(path)
        if path_like:
            raise EvalSetError("not an eval set: expected a directory, a .jsonl file or an "
                               "eval-set name", path=str(path))
    if path_like:
        raise EvalSetError("no such file or directory", path=name)
    dirs = evalset_dirs() if search_dirs is None else [Path(d) for d in search_dirs]
    found = _find(name, dirs)
    if found is not None:
        return load_evalset(found)
    names = sorted({n for d in dirs for n, _ in _candidates(d)})
    raise EvalSetError(
        f"no eval set named {name!r}. Looked in: "
        + ", ".join(str(d) for d in dirs)
        + (". Eval sets there: " + ", ".join(names) if names else ". No eval sets there")
        + ". Pass a directory or .jsonl path, or put the eval set in one of those directories."
        + (f" evolve ships a recipe for it: build it with `evolve evals build {name}` (README \"Eval sets\")."
           if _shipped_recipe(name) else ""))


def _shipped_recipe(name: str) -> bool:
    """Whether evolve's own recipes (package data, ``evolve/recipes/``) include ``name``."""
    from importlib import resources

    return "/" not in name and (resources.files("evolve") / "recipes" / f"{name}.yaml").is_file()


def list_evalsets(search_dirs: list[Path] | None = None) -> list[EvalSetInfo]:
    """Every eval set in ``search_dirs`` (default ``evalset_dirs()``), broken ones included.

    Ordered by directory, then name. An eval set that does not load is listed
    with ``counts=None`` and its error; one hidden by an eval set of the same
    name in an earlier directory has ``shadowed_by`` set.
    """
    dirs = evalset_dirs() if search_dirs is None else [Path(d) for d in search_dirs]
    winners: dict[str, Path] = {}
    infos: list[EvalSetInfo] = []
    for d in dirs:
        for name, path in sorted(_candidates(d)):
            shadowed_by = winners.get(name)
            if shadowed_by is None:
                winners[name] = path
            try:
                es = load_evalset(path)
            except EvalSetError as e:
                infos.append(EvalSetInfo(name=name, path=path, counts=None, error=str(e),
                                         shadowed_by=shadowed_by))
            else:
                infos.append(EvalSetInfo(name=name, path=path, counts=es.counts(),
                                         description=es.description, shadowed_by=shadowed_by))
    return infos


# ---------------------------------------------------------------------------
# Lookup


def _candidates(d: Path) -> list[tuple[str, Path]]:
    """(name, path) of the eval sets directly in ``d``: subdirectories with an
    ``evalset.yaml`` or a ``.jsonl`` file, and ``.jsonl`` files. A directory
    wins over a file of the same name."""
    if not d.is_dir():
        return []
    found: dict[str, Path] = {}
    try:
        entries = sorted(d.iterdir())
    except OSError:
        return []
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_dir() and _holds_evalset(entry):
            found[entry.name] = entry
        elif entry.is_file() and entry.suffix == ".jsonl":
            found.setdefault(entry.stem, entry)
    return sorted(found.items())


def _holds_evalset(d: Path) -> bool:
    return (d / SPEC_FILE).is_file() or any(d.glob("*.jsonl"))


def _find(name: str, dirs: list[Path]) -> Path | None:
    for d in dirs:
        for candidate_name, path in _candidates(d):
            if candidate_name == name:
                return path
    return None


# ---------------------------------------------------------------------------
# Loading


def _load_dir(root: Path) -> EvalSet:
    root = root.resolve()
    spec_path = root / SPEC_FILE
    spec, spec_node = _load_spec(spec_path) if spec_path.is_file() else (EvalSetSpec(), None)
    name = spec.name or root.name

    if spec.splits is not None:
        files: dict[str, Path] = {}
        for split, rel in spec.splits.items():
            where = dict(path=str(spec_path), line=_yaml_line(spec_node, ("splits", split)),
                         field=f"splits.{split}")
            if not _SPLIT_NAME.match(split):
                raise EvalSetError("split names may hold only letters, digits, '_', '-' and '.'",
                                   **where)
            f = (root / rel).resolve()
            if not f.is_file():
                raise EvalSetError(f"split file {rel!r} does not exist (looked for {f})", **where)
            files[split] = f
        return _assemble(name, root, spec, files, _split_files(files))

    jsonl = sorted(root.glob("*.jsonl"))
    if not jsonl:
        raise EvalSetError(
            "no task files: expected search.jsonl and holdout.jsonl here, or "
            f"`splits:` in {SPEC_FILE}", path=str(root))
    if len(jsonl) == 1 and jsonl[0].stem not in REQUIRED_SPLITS:
        # One unsplit task file, e.g. a SWE-bench export dropped in a directory.
        single = jsonl[0]
        splits, lines = _split_single(single, spec.holdout_fraction)
        return _assemble(name, root, spec, {s: single for s in splits}, (splits, lines),
                         from_rows=True)
    files = {f.stem: f.resolve() for f in jsonl}
    for split, f in files.items():
        if not _SPLIT_NAME.match(split):
            raise EvalSetError("split names (file stems) may hold only letters, digits, "
                               "'_', '-' and '.'; rename the file", path=str(f))
    return _assemble(name, root, spec, files, _split_files(files))


def _load_file(path: Path) -> EvalSet:
    path = path.resolve()
    if (path.parent / SPEC_FILE).is_file():
        raise EvalSetError(
            f"this file belongs to the eval set in {path.parent} (it has an {SPEC_FILE}); "
            "load that directory instead", path=str(path))
    if path.stem in REQUIRED_SPLITS:
        raise EvalSetError(
            f"a file named {path.name} is one split of an eval set; load its directory "
            f"{path.parent} instead", path=str(path))
    splits, lines = _split_single(path, DEFAULT_HOLDOUT_FRACTION)
    spec = EvalSetSpec()
    return _assemble(path.stem, path.parent, spec, {s: path for s in splits}, (splits, lines),
                     source=path, from_rows=True)


_Located = tuple[dict[str, list[Task]], dict[str, tuple[Path, int]]]
"""Tasks per split, and for each instance_id the file and line it came from."""


def _split_files(files: dict[str, Path]) -> _Located:
    splits: dict[str, list[Task]] = {}
    where: dict[str, tuple[Path, int]] = {}
    for split, f in files.items():
        splits[split] = []
        for lineno, task in load_task_lines(f):
            first = where.get(task.instance_id)
            if first is not None:
                other_split = next(s for s, ts in splits.items()
                                   if any(t.instance_id == task.instance_id for t in ts))
                raise EvalSetError(
                    f"instance_id {task.instance_id!r} is in split {split!r} and also in split "
                    f"{other_split!r} ({first[0]}, line {first[1]}); a task must be in one split "
                    "only, or the held-out split is no longer unseen",
                    path=str(f), line=lineno, field="instance_id")
            where[task.instance_id] = (f, lineno)
            splits[split].append(task)
    return splits, where


def _split_single(path: Path, holdout_fraction: float) -> _Located:
    rows = load_task_lines(path)
    labelled = [(lineno, t) for lineno, t in rows if _split_field(t) is not None]
    if labelled and len(labelled) != len(rows):
        unlabelled = next(lineno for lineno, t in rows if _split_field(t) is None)
        raise EvalSetError(
            f"this row has no 'split' but line {labelled[0][0]} has one: give every row a "
            "'split' or none (then splits are assigned by instance_id hash)",
            path=str(path), line=unlabelled, field="split")
    # Hash assignment always yields both splits, even if one is empty.
    splits: dict[str, list[Task]] = {} if labelled else {s: [] for s in REQUIRED_SPLITS}
    where: dict[str, tuple[Path, int]] = {}
    for lineno, task in rows:
        if labelled:
            split = _split_field(task)
            if not isinstance(split, str) or not _SPLIT_NAME.match(split):
                raise EvalSetError(
                    f"split must be a name such as 'search' or 'holdout', got {split!r}",
                    path=str(path), line=lineno, field="split")
        else:
            split = assign_split(task.instance_id, holdout_fraction)
        splits.setdefault(split, []).append(task)
        where[task.instance_id] = (path, lineno)
    return splits, where


def _split_field(task: Task) -> object | None:
    return (task.model_extra or {}).get("split")


def _assemble(name: str, root: Path, spec: EvalSetSpec, files: dict[str, Path],
              located: _Located, source: Path | None = None, from_rows: bool = False) -> EvalSet:
    """Check the splits and repos, fill in defaults. ``from_rows``: the splits
    come from one unsplit file (row labels or hash), not from split files."""
    splits, where = located
    source = source or root
    missing = [s for s in REQUIRED_SPLITS if s not in splits]
    if missing:
        if from_rows:
            how = (f"give some rows \"split\": \"{missing[0]}\", or remove the 'split' "
                   "fields to have splits assigned by instance_id hash")
        else:
            how = ("add " + " and ".join(f"{s}.jsonl" for s in missing)
                   + f" to {root}, or map files to them under `splits:` in {SPEC_FILE}")
        raise EvalSetError(
            f"eval set has no {' or '.join(repr(s) for s in missing)} split (its splits: "
            f"{', '.join(sorted(splits)) or 'none'}). Every eval set needs 'search' (for the "
            f"optimizer) and 'holdout' (sealed, for the final verdict): {how}",
            path=str(source))
    defaults = {k: v for k, v in (("image", spec.image), ("test_cmd", spec.test_cmd)) if v}
    repos = _RepoChecker(root)
    try:
        for split, tasks in splits.items():
            for i, task in enumerate(tasks):
                if task.repo_path is not None:
                    f, lineno = where[task.instance_id]
                    repos.check(task, f, lineno)
                update = {k: v for k, v in defaults.items() if getattr(task, k) is None}
                if update:
                    tasks[i] = task.model_copy(update=update)
    finally:
        repos.close()
    return EvalSet(name=name, root=root, description=spec.description, splits=splits,
                   files=files, source=source)


class _RepoChecker:
    """Checks that ``repo_path`` is a git repository holding ``base_commit`` (through ``evolve.hostgit``:
    no user config or fsmonitor of the host runs)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._repos: dict[Path, hostgit.Repo] = {}

    def check(self, task: Task, path: Path, lineno: int) -> None:
        repo_dir = (self.root / task.repo_path).resolve()
        where = dict(path=str(path), line=lineno)
        repo = self._repos.get(repo_dir)
        if repo is None:
            if not repo_dir.is_dir():
                raise EvalSetError(f"repository {task.repo_path!r} does not exist (looked for "
                                   f"{repo_dir}); repo_path is relative to {self.root}",
                                   field="repo_path", **where)
            repo = hostgit.Repo.find(repo_dir, search_parents=False)
            if repo is None:
                raise EvalSetError(f"{repo_dir} is not a git repository (git init it, commit the "
                                   "snapshot and use that commit as base_commit)",
                                   field="repo_path", **where)
            self._repos[repo_dir] = repo
        if repo.sha(task.base_commit) is None:
            raise EvalSetError(f"commit {task.base_commit!r} is not in the repository "
                               f"{repo_dir}", field="base_commit", **where)

    def close(self) -> None:
        self._repos.clear()


# ---------------------------------------------------------------------------
# evalset.yaml


def _load_spec(path: Path) -> tuple[EvalSetSpec, yaml.Node | None]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise EvalSetError(f"cannot read: {e}", path=str(path)) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or str(e)
        raise EvalSetError(f"invalid YAML: {problem}", path=str(path),
                           line=mark.line + 1 if mark is not None else None) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise EvalSetError("expected a mapping of keys (name, description, image, test_cmd, "
                           "holdout_fraction, splits)", path=str(path), line=1)
    try:
        return EvalSetSpec.model_validate(data), node
    except ValidationError as e:
        err = e.errors()[0]
        loc = tuple(err["loc"])
        if err["type"] == "extra_forbidden":
            allowed = ", ".join(EvalSetSpec.model_fields)
            message = f"unknown key {loc[-1]!r}; the keys are: {allowed}"
        else:
            message = err["msg"]
        raise EvalSetError(message, path=str(path), line=_yaml_line(node, loc),
                           field=".".join(str(p) for p in loc)) from None


def _yaml_line(node: yaml.Node | None, loc: tuple) -> int | None:
    """1-based line of the key at ``loc`` (e.g. ``("splits", "search")``) in a composed YAML document."""
    line = None
    for key in loc:
        if not isinstance(node, yaml.MappingNode):
            break
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.value == str(key):
                line, node = k.start_mark.line + 1, v
                break
        else:
            break
    return line
