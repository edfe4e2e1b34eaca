"""Resolve a harness: a directory or a git ref, hashed and snapshotted.

A harness is a directory holding a ``harness.yaml`` and whatever files its
entrypoint needs. Users name one either as a path (``./my-harness``) or as a
git ref of the repository they work in (``main``, ``v2:harnesses/minimal``).

Either way the harness gets a content identity, its git tree hash: the value
``git write-tree`` gives for the same files, so a directory and a commit with
identical content get the same hash (and the same cached results). The files
are copied into a private snapshot under ``workdir`` so later edits to the
user's files cannot change a harness in the middle of an evaluation.
"""

from __future__ import annotations

import io
import shutil
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from evolve import hostgit
from evolve.errors import HarnessError

SPEC_FILE = "harness.yaml"
EXCLUDED = ("__pycache__/", "*.pyc", ".git")
"""Never part of a harness directory's content (git itself always skips .git)."""
_TEMPLATES = Path(str(resources.files("evolve") / "templates"))
"""Harness templates for ``evolve init --template``: package data, so they ship in the wheel."""


class HarnessSpec(BaseModel):
    """The contents of ``harness.yaml``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    entrypoint: str = Field(min_length=1)
    """Shell command run from the harness directory inside the sandbox."""
    description: str = ""


@dataclass(frozen=True)
class Harness:
    spec: HarnessSpec
    root: Path
    """A directory holding exactly the harness files (a private snapshot, safe from later edits)."""
    tree_hash: str
    """Git tree hash of the harness content (40 hex)."""
    source: str
    """Where it came from: ``/abs/path`` or ``<repo>@<ref>:<subdir>``."""


def template_dir(name: str) -> Path:
    """The directory of the built-in harness template ``name``."""
    available = sorted(p.name for p in _TEMPLATES.glob("*") if (p / SPEC_FILE).is_file())
    if name not in available:
        raise HarnessError(f"no harness template named {name!r}; available templates: "
                           f"{', '.join(available) or '(none)'} (in {_TEMPLATES})")
    return _TEMPLATES / name


def resolve_harness(ref_or_path: str, *, workdir: Path, repo: Path | None = None) -> Harness:
    """Resolve a harness directory or git ref (``REF`` or ``REF:SUBDIR``) into a snapshot.

    An existing directory wins over a git ref of the same name. Git refs are
    read from ``repo`` (default: the git repository containing the current
    directory) without touching its work tree or checked-out branch.
    """
    workdir = Path(workdir)
    path = Path(ref_or_path).expanduser()
    if path.is_dir():
        return _from_directory(path.resolve(), workdir)
    if path.exists():
        raise HarnessError(f"{ref_or_path}: is a file; a harness is a directory holding a {SPEC_FILE}")
    if ref_or_path.startswith(("/", "./", "../", "~")) or not ref_or_path.strip():
        raise HarnessError(f"harness directory {ref_or_path!r} does not exist; pass an existing "
                           f"directory holding a {SPEC_FILE}, or a git ref such as 'main' or 'main:harness'")
    return _from_git_ref(ref_or_path, workdir, repo)


def _from_directory(directory: Path, workdir: Path) -> Harness:
    source = str(directory)
    with tempfile.TemporaryDirectory(prefix="evolve-hash-") as tmp:
        gitdir = Path(tmp) / "git"
        # Hash the content alone: no user or system git config (autocrlf, global excludes,
        # attributes) may change which bytes get hashed (``evolve.hostgit`` pins them).
        base = [f"--git-dir={gitdir}"]
        try:
            hostgit.run(["init", "-q", "--bare", str(gitdir)])
            (gitdir / "info").mkdir(exist_ok=True)
            (gitdir / "info" / "exclude").write_text("\n".join(EXCLUDED) + "\n")
            hostgit.run(base + [f"--work-tree={directory}", "add", "-A", "."], cwd=directory)
            tree_hash = hostgit.text(base + ["write-tree"], cwd=directory).strip()
        except hostgit.HostGitError as e:
            raise HarnessError(f"{source}: cannot read the harness directory with git: "
                               f"{e.output.strip()[-400:]}") from None

        def extract(dest: Path) -> None:
            _untar(dest, hostgit.run(base + ["archive", "--format=tar", tree_hash], cwd=directory))

        root = _snapshot(workdir, tree_hash, extract, label=f"{source}/{SPEC_FILE}")
    return Harness(spec=_load_spec(root, f"{source}/{SPEC_FILE}"), root=root,
                   tree_hash=tree_hash, source=source)


def _from_git_ref(ref_or_path: str, workdir: Path, repo_path: Path | None) -> Harness:
    ref, _, subdir = ref_or_path.partition(":")
    subdir = subdir.strip("/")
    subdir = "" if subdir in ("", ".") else subdir.removeprefix("./")
    where = repo_path or Path.cwd()
    repo = hostgit.Repo.find(where, search_parents=repo_path is None)
    if repo is None:
        raise HarnessError(f"{ref_or_path!r} is not an existing directory, and {where} is not inside a "
                           "git repository to look it up as a git ref; pass a harness directory, "
                           "or run evolve from inside the git repository holding the ref")
    repo_dir = repo.root
    tree_hash = repo.sha(ref, "tree")
    if tree_hash is None:
        kind = _object_type(repo, ref)
        said = f"{ref} names a {kind}, not a commit" if kind else f"no commit named {ref!r}"
        raise HarnessError(f"{ref_or_path!r} is neither an existing directory nor a git ref in "
                           f"{repo_dir} ({said}); pass a harness directory, or REF or REF:SUBDIR "
                           "naming a commit of that repository (e.g. 'main:harness')")
    source = f"{repo_dir}@{ref}" + (f":{subdir}" if subdir else "")
    if subdir:
        kind = _object_type(repo, f"{tree_hash}:{subdir}")
        if kind is None:
            raise HarnessError(f"{source}: no directory {subdir!r} at {ref} in {repo_dir}; "
                               f"check the path with `git ls-tree {ref} -- {subdir}`")
        if kind != "tree":
            raise HarnessError(f"{source}: {subdir!r} is a file at {ref}, not a directory "
                               f"holding a {SPEC_FILE}")
        tree_hash = repo.git("rev-parse", "--verify", "--end-of-options", f"{tree_hash}:{subdir}")
    label = f"{source}/{SPEC_FILE}" if subdir else f"{source}:{SPEC_FILE}"
    # The archive is read with pinned line endings (``hostgit.run``), so the snapshot holds the
    # committed bytes whatever the repository's autocrlf says.
    root = _snapshot(workdir, tree_hash,
                     lambda dest: _untar(dest, hostgit.run(["archive", "--format=tar", tree_hash], cwd=repo_dir)),
                     label=label)
    return Harness(spec=_load_spec(root, label), root=root, tree_hash=tree_hash, source=source)


def _object_type(repo: hostgit.Repo, rev: str) -> str | None:
    """``blob``, ``tree``, ``commit`` or ``tag``: what ``rev`` names in ``repo``; None if nothing."""
    try:
        return repo.git("cat-file", "-t", "--end-of-options", rev) or None
    except hostgit.HostGitError:
        return None


def _untar(dest: Path, data: bytes) -> None:
    """Unpack the tar archive ``data`` (a ``git archive``) into ``dest``."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, filter="tar")
        else:  # Python < 3.10.12: no extraction filters; the archive comes from our own git
            tar.extractall(dest)


def _snapshot(workdir: Path, tree_hash: str, extract: Callable[[Path], None], *, label: str) -> Path:
    """``workdir/harness-<hash12>``, made by ``extract`` unless it already exists.

    The harness is unpacked into a temporary directory, validated, then renamed
    into place, so a snapshot directory is always complete and valid.
    """
    dest = workdir / f"harness-{tree_hash[:12]}"
    if dest.is_dir():
        return dest
    workdir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".harness-{tree_hash[:12]}-", dir=workdir))
    try:
        extract(tmp)
        _load_spec(tmp, label)
        try:
            tmp.rename(dest)
        except OSError:
            if not dest.is_dir():  # else: a concurrent resolve made the same snapshot first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _load_spec(root: Path, label: str) -> HarnessSpec:
    """Read and validate ``root/harness.yaml``; ``label`` names it in error messages."""
    spec_path = root / SPEC_FILE
    if not spec_path.is_file():
        raise HarnessError(f"{label}: not found; every harness needs a {SPEC_FILE} with at least "
                           "'name' and 'entrypoint' (see evolve/templates/minimal/harness.yaml)")
    try:
        data = yaml.safe_load(spec_path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise HarnessError(f"{label}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise HarnessError(f"{label}: must be a mapping with keys name, entrypoint and "
                           f"optionally description (got {type(data).__name__})")
    try:
        return HarnessSpec.model_validate(data)
    except ValidationError as e:
        raise HarnessError(f"{label}: " + "; ".join(_describe(err) for err in e.errors())) from None


def _describe(err: dict) -> str:
    field = ".".join(str(p) for p in err["loc"]) or "(top level)"
    if err["type"] == "missing":
        return f"field {field!r} is required"
    if err["type"] == "extra_forbidden":
        allowed = ", ".join(HarnessSpec.model_fields)
        return f"unknown field {field!r} (allowed: {allowed})"
    return f"field {field!r}: {err['msg']}"
