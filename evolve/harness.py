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
from pathlib import Path, PurePosixPath

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from evolve import hostgit, owner
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
    requirements: list[str] = Field(default_factory=list)
    """Python requirements (PEP 508, ``litellm>=1.75,!=1.82.7``), installed from wheels only into
    an environment the entrypoint runs with (``evolve.harness_env``)."""
    requirements_file: str | None = None
    """A requirements file inside the harness directory (one PEP 508 requirement a line, ``#``
    comments); added to ``requirements``. pip options (``-e``, ``--index-url``...) are refused."""
    image: str | None = None
    """A Docker image the agent phase runs in instead of the task's (grading always uses the
    task's image). It must have ``python3`` when requirements are declared."""

    @field_validator("requirements")
    @classmethod
    def _parse_requirements(cls, value: list[str]) -> list[str]:
        for line in value:
            check_requirement(line, where="requirements")
        return value

    @field_validator("requirements_file")
    @classmethod
    def _relative_file(cls, value: str | None) -> str | None:
        if value is not None:
            rel = PurePosixPath(value)
            if not value.strip() or rel.is_absolute() or ".." in rel.parts:
                raise ValueError(f"{value!r} must be a relative path inside the harness directory")
        return value


@dataclass(frozen=True)
class Harness:
    spec: HarnessSpec
    root: Path
    """A directory holding exactly the harness files (a private snapshot, safe from later edits)."""
    tree_hash: str
    """Git tree hash of the harness content (40 hex)."""
    source: str
    """Where it came from: ``/abs/path`` or ``<repo>@<ref>:<subdir>``."""

    @property
    def requirements(self) -> list[str]:
        """``spec.requirements`` then the lines of ``spec.requirements_file``, as written; [] when none.

        Raises:
            HarnessError: the requirements file is missing or holds a bad line (named with its line number).
        """
        reqs = list(self.spec.requirements)
        if self.spec.requirements_file:
            reqs += read_requirements_file(self.root, self.spec.requirements_file, label=self.source)
        return reqs


def check_requirement(line: str, *, where: str) -> str:
    """``line`` if it is one PEP 508 requirement evolve can install from wheels, else ValueError
    naming it: a requirement pip would have to build from source (a URL or path that is not a
    ``.whl``) is refused, since building runs the package's code on the host."""
    from packaging.requirements import InvalidRequirement, Requirement

    try:
        req = Requirement(line)
    except InvalidRequirement as e:
        raise ValueError(f"{where}: {line!r} is not a valid requirement ({e}); write one PEP 508 "
                         "requirement such as 'litellm>=1.75' (pip options and paths are not allowed)") from None
    if req.url is not None and not req.url.split("?", 1)[0].split("#", 1)[0].endswith(".whl"):
        raise ValueError(f"{where}: {line!r} points at a source ({req.url}) pip would have to build, "
                         "which runs its code at install; name a package on the index or a .whl URL")
    return line


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
    with owner.temp_dir("hash") as tmp:
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
                           f"optionally description, requirements, requirements_file, image (got {type(data).__name__})")
    try:
        spec = HarnessSpec.model_validate(data)
    except ValidationError as e:
        raise HarnessError(f"{label}: " + "; ".join(_describe(err) for err in e.errors())) from None
    if spec.requirements_file:
        read_requirements_file(root, spec.requirements_file, label=label.removesuffix(f"/{SPEC_FILE}"))
    return spec


def read_requirements_file(root: Path, rel: str, *, label: str) -> list[str]:
    """The requirements in ``root/rel``: one a line, blank lines and ``#`` comments skipped.

    Raises:
        HarnessError: the file is missing, outside ``root``, or a line is not one installable
            requirement (pip options such as ``-r``, ``-e`` or ``--index-url`` included).
    """
    path = (root / rel).resolve()
    if not path.is_relative_to(root.resolve()) or not path.is_file():
        raise HarnessError(f"{label}/{SPEC_FILE}: requirements_file {rel!r} is not a file inside the harness "
                           "directory; add it, or list the requirements under 'requirements:'")
    reqs = []
    for n, raw in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        line = raw.split(" #", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if not line:
            continue
        if line.startswith("-"):
            raise HarnessError(f"{label}/{rel}:{n}: {line!r}: pip options are not allowed in a harness's "
                               "requirements (evolve takes the index from the host's pip configuration); "
                               "list requirements only")
        try:
            reqs.append(check_requirement(line, where=f"{label}/{rel}:{n}"))
        except ValueError as e:
            raise HarnessError(str(e)) from None
    return reqs


def _describe(err: dict) -> str:
    field = ".".join(str(p) for p in err["loc"]) or "(top level)"
    if err["type"] == "missing":
        return f"field {field!r} is required"
    if err["type"] == "extra_forbidden":
        allowed = ", ".join(HarnessSpec.model_fields)
        return f"unknown field {field!r} (allowed: {allowed})"
    return f"field {field!r}: {err['msg'].removeprefix('Value error, ')}"
