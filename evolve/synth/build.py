"""``evolve evals build NAME``: an eval set from a recipe of pinned PyPI projects.

A recipe (``evolve/recipes/<name>.yaml``, or ``evals/<name>.yaml`` in a project) pins projects whose source distributions ship
their tests; nothing third-party is committed, the build downloads it::

    name: default
    description: ...
    seed: 0                 # same seed, same tasks
    per_project: 6          # mutation tasks per project
    holdout_fraction: 0.3
    max_kind_share: 0.25    # no mutation operator over this share of a project's quota nor of the set
    test_cmd: python3 -m pytest -rA -p no:cacheprovider --rootdir=. -o addopts=
    projects:
      - {name: toolz, version: 1.2.0, sha256: 9667a0...}
      - {name: semver, version: 3.1.1, sha256: ...}    # src layout: PYTHONPATH=src added
      - {name: click, version: 8.5.1, install: true}   # its test environment image: pip install -e .
      - {name: humanize, version: ..., extras: [tests], setup: "..."}

The build downloads every sdist first (``pip download --no-deps --no-binary
:all:``, cached under ``$EVOLVE_HOME/cache/sdists`` and checked against
``sha256``), so a project that cannot be had stops the build before any
container starts; then it synthesizes mutation tasks per project
(``evolve.synth.mutation``), verifies them all with the real grader, leaves
out the fewest tasks needed so that no operator makes more than
``max_kind_share`` of the whole set (``evolve.synth.balance``) and
writes the eval set atomically (default ``$EVOLVE_HOME/evals/<name>``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from concurrent.futures import Future, ThreadPoolExecutor
from importlib import resources
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from evolve import owner
from evolve.errors import DownloadError, RecipeError, SynthError
from evolve.evalsets.registry import evalset_dirs, evolve_home
from evolve.synth.balance import cap_kind_share, kind_of
from evolve.synth.env import DEFAULT_TEST_CMD, ProjectSource, SynthEnv, SynthOptions, SynthProgress
from evolve.synth.mutation import mutation_tasks
from evolve.synth.output import EvalSetWriter, check_destination
from evolve.synth.source import require_tests, slug
from evolve.synth.synthesize import Verifier, with_testenv
from evolve.types import Task

__all__ = ["DownloadError", "ProjectSpec", "Recipe", "RecipeError", "build", "fetch_sdist", "find_recipe",
           "load_recipe"]

PIP_TIMEOUT_S = 600


class ProjectSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    """PyPI name."""
    version: str = Field(min_length=1)
    sha256: str | None = None
    """Of the sdist file; checked after download when given."""
    test_cmd: str | None = None
    per_project: int | None = Field(default=None, ge=1)
    install: bool = False
    """Build the project's test-environment image (``evolve.synth.testenv``); implied by the next three."""
    extras: list[str] = Field(default_factory=list)
    """Extras or dependency groups to install."""
    requirements: list[str] | None = None
    """Requirements files of the sdist to install instead of the detected ones."""
    setup: str | None = None
    """Shell command run in the project after the install (as root, no network)."""

    def wants_env(self) -> bool:
        return self.install or bool(self.extras) or self.requirements is not None or self.setup is not None


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    description: str = ""
    seed: int = 0
    per_project: int = Field(default=6, ge=1)
    holdout_fraction: float = Field(default=0.3, gt=0, lt=1)
    max_kind_share: float = Field(default=0.25, gt=0, le=1)
    """No mutation operator makes more than this share of a project's quota, nor of the whole set."""
    test_cmd: str | None = None
    projects: list[ProjectSpec] = Field(min_length=1)


RECIPES = Path(str(resources.files("evolve") / "recipes"))
"""The recipes shipped with evolve (package data): ``default.yaml``."""


def find_recipe(name_or_path: str) -> Path:
    """The recipe file: an existing ``.yaml`` path, else ``<dir>/<name>.yaml`` in ``evalset_dirs()``.

    Raises:
        RecipeError: not found; the message lists where it looked.
    """
    p = Path(name_or_path).expanduser()
    if p.suffix in (".yaml", ".yml") and p.is_file():
        return p
    looked = []
    for d in [*evalset_dirs(), RECIPES]:
        for suffix in (".yaml", ".yml"):
            candidate = d / f"{name_or_path}{suffix}"
            looked.append(str(candidate))
            if candidate.is_file():
                return candidate
    raise RecipeError(f"no recipe {name_or_path!r}: looked for {', '.join(looked)}. A recipe is a YAML file "
                      "(see evolve/recipes/default.yaml).")


def load_recipe(path: Path) -> Recipe:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise RecipeError(f"{path}: cannot read the recipe: {e}") from None
    try:
        return Recipe.model_validate(data or {})
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise RecipeError(f"{path}: field {where!r}: {err['msg']}") from None


def sdist_cache() -> Path:
    return evolve_home() / "cache" / "sdists"


def fetch_sdist(spec: ProjectSpec, cache: Path) -> Path:
    """The sdist of ``spec`` in ``cache`` (downloaded with pip unless already there with the right hash).

    Raises:
        DownloadError: pip could not download it, or its sha256 differs from the recipe's.
    """
    folder = cache / f"{spec.name}-{spec.version}"
    for existing in sorted(folder.glob("*")) if folder.is_dir() else []:
        if existing.is_file() and (spec.sha256 is None or _sha256(existing) == spec.sha256):
            return existing
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=cache))
    try:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--disable-pip-version-check", "--no-input", "-q", "-d", str(tmp), f"{spec.name}=={spec.version}"]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S,
                                  env=dict(os.environ, PIP_NO_INPUT="1"))
        except subprocess.TimeoutExpired:
            raise DownloadError(f"cannot download {spec.name}=={spec.version}: pip did not finish in "
                                f"{PIP_TIMEOUT_S} s; check that PyPI is reachable") from None
        files = [f for f in tmp.iterdir() if f.is_file()]
        if proc.returncode != 0 or not files:
            said = "\n".join((proc.stdout + proc.stderr).strip().split("\n")[-6:])
            raise DownloadError(f"cannot download the source distribution of {spec.name}=={spec.version} from "
                                f"PyPI; pip said:\n{said}\nCheck the name and version in the recipe and that PyPI "
                                "is reachable (pip's own index settings apply).")
        sdist = files[0]
        digest = _sha256(sdist)
        if spec.sha256 is not None and digest != spec.sha256:
            raise DownloadError(f"{sdist.name} has sha256 {digest}, the recipe pins {spec.sha256}: the file is not "
                                "the one the recipe was made with; fix the recipe or the index")
        folder.mkdir(parents=True, exist_ok=True)
        final = folder / sdist.name
        os.replace(sdist, final)
        return final
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def unpack_sdist(sdist: Path, dest: Path) -> Path:
    """Unpack ``sdist`` into ``dest`` and return its top directory.

    Raises:
        DownloadError: not a readable tar or zip archive.
    """
    dest.mkdir(parents=True, exist_ok=True)
    try:
        if sdist.name.endswith(".zip"):
            with zipfile.ZipFile(sdist) as zf:
                zf.extractall(dest)
        else:
            with tarfile.open(sdist) as tar:
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(dest, filter="data")
                else:  # pragma: no cover
                    tar.extractall(dest)
    except (tarfile.TarError, zipfile.BadZipFile, OSError) as e:
        raise DownloadError(f"cannot unpack {sdist}: {e}") from None
    entries = [e for e in dest.iterdir()]
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else dest


def _kind_counts(tasks: list[Task]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in tasks:
        k = kind_of(t) or "other"
        counts[k] = counts.get(k, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def _test_cmd(spec: ProjectSpec, recipe: Recipe, root: Path) -> str:
    if spec.test_cmd:
        return spec.test_cmd
    base = recipe.test_cmd or DEFAULT_TEST_CMD
    src = root / "src"
    if "PYTHONPATH=" not in base and src.is_dir() and not any(
            (p / "__init__.py").exists() for p in root.iterdir() if p.name not in ("tests", "test")):
        return "PYTHONPATH=src " + base
    return base


def build(recipe_ref: str, *, dest: Path | None = None, seed: int | None = None, per_project: int | None = None,
          projects: list[str] | None = None, workers: int = 2, progress: SynthProgress | None = None,
          env: SynthEnv | None = None, cache: Path | None = None, executor: str = "local",
          ray_address: str = "auto") -> dict:
    """Build the eval set of a recipe; returns the metadata written to its ``synth.json``.
    ``executor``/``ray_address``: where the grader's check of each task runs (``synthesize.verify``).

    Raises:
        RecipeError: no such recipe, bad recipe, unknown project names.
        DownloadError: a project cannot be downloaded; nothing is written.
        SynthError: a project's suite does not pass, or no task validated; nothing is written.
    """
    progress = progress or SynthProgress()
    recipe_path = find_recipe(recipe_ref)
    recipe = load_recipe(recipe_path)
    chosen = list(recipe.projects)
    if projects:
        names = {p.name for p in recipe.projects}
        unknown = [p for p in projects if p not in names]
        if unknown:
            raise RecipeError(f"{recipe_path} has no project {unknown[0]!r}; its projects are: "
                              + ", ".join(sorted(names)))
        chosen = [p for p in recipe.projects if p.name in projects]
    seed = recipe.seed if seed is None else seed
    dest = Path(dest) if dest is not None else evolve_home() / "evals" / recipe.name
    dest = dest.expanduser().absolute()
    check_destination(dest)
    cache = cache or sdist_cache()
    started = time.monotonic()

    progress.phase(recipe.name, "download", len(chosen))
    sdists = {}
    for spec in chosen:
        sdists[spec.name] = fetch_sdist(spec, cache)
        progress.advance()
    download_seconds = time.monotonic() - started

    own_env = env is None
    env = env or SynthEnv.connect()
    try:
        with owner.temp_dir("build") as tmp, \
                EvalSetWriter(dest, name=dest.name, description=recipe.description) as writer, \
                ThreadPoolExecutor(max_workers=workers, thread_name_prefix="evolve-verify") as pool:
            # The grader's check of a project's tasks runs while the next project's mutants are
            # validated: Docker's start/stop latency of the grading containers overlaps with tests.
            verifier = Verifier(writer.root, env, SynthOptions(workers=workers, executor=executor,
                                                                 ray_address=ray_address))
            checks: list[tuple[Task, Future]] = []
            meta_projects: dict[str, dict] = {}
            verify_started = None
            try:
                for spec in chosen:
                    root = unpack_sdist(sdists[spec.name], Path(tmp) / spec.name)
                    name = slug(spec.name)
                    source = ProjectSource(name=name, root=root, repo=f"{spec.name}=={spec.version}",
                                           test_cmd=_test_cmd(spec, recipe, root),
                                           origin=f"pypi:{spec.name}=={spec.version}")
                    require_tests(source, where=f"the sdist of {spec.name}=={spec.version}")
                    opts = SynthOptions(seed=seed, max_tasks=per_project or spec.per_project or recipe.per_project,
                                        workers=workers, holdout_fraction=recipe.holdout_fraction,
                                        max_kind_share=recipe.max_kind_share,
                                        install=spec.wants_env(), extras=tuple(spec.extras),
                                        requirement_files=tuple(spec.requirements) if spec.requirements is not None
                                        else None, setup_cmd=spec.setup)
                    stats: dict = {"version": spec.version, "sha256": _sha256(sdists[spec.name]),
                                   "test_cmd": source.test_cmd}
                    project_env = env
                    if spec.wants_env():
                        opts, project_env, stats["testenv"] = with_testenv(source, env, opts, progress)
                    project_tasks = mutation_tasks(source, writer.repo(name), project_env, opts, progress, stats)
                    if len(project_tasks) < opts.max_tasks:
                        progress.note(f"{name}: {len(project_tasks)} of {opts.max_tasks} tasks validated")
                    checks += [(t, pool.submit(verifier.check, t)) for t in project_tasks]
                    meta_projects[name] = stats
                verify_started = time.monotonic()
                progress.phase(recipe.name, "grading", len(checks))
                for _t, future in checks:
                    future.result()
                    progress.advance()
            except BaseException:
                for _t, future in checks:
                    future.cancel()
                raise
            finally:
                verifier.close()
            verify_seconds = time.monotonic() - (verify_started or time.monotonic())
            kept = [t for t, f in checks if f.result() is None]
            dropped = {t.instance_id: f.result() for t, f in checks if f.result() is not None}
            if not kept:
                raise SynthError(f"no task of recipe {recipe.name!r} passed the grader's check: "
                                 + "; ".join(f"{k}: {v}" for k, v in list(dropped.items())[:3]))
            # The per-project cap leaves a kind over its share when projects fall short of their quota.
            kept, over_share = cap_kind_share(kept, recipe.max_kind_share)
            if over_share:
                progress.note(f"{len(over_share)} task(s) left out so that no mutation operator makes more than "
                              f"{100 * recipe.max_kind_share:.0f}% of the set: "
                              + ", ".join(t.instance_id for t in over_share[:5])
                              + (" ..." if len(over_share) > 5 else ""))
            for name, stats in meta_projects.items():
                stats["dropped_for_kind_share"] = [t.instance_id for t in over_share
                                                   if t.repo_path == f"repos/{name}"]
                stats["tasks"] = sum(1 for t in kept if t.repo_path == f"repos/{name}")
                stats["dropped_by_grader"] = {k: v for k, v in dropped.items() if k.startswith(f"{name}__")}
            tried = sum(s.get("tried", 0) for s in meta_projects.values())
            valid = sum(s.get("mutants_kept", 0) for s in meta_projects.values())
            meta = {"version": 1, "kind": "build", "recipe": str(recipe_path), "recipe_name": recipe.name,
                    "seed": seed, "per_project": per_project or recipe.per_project, "projects": meta_projects,
                    "tasks": len(kept), "mutants_tried": tried, "mutants_valid": valid,
                    "mutants_valid_share": round(valid / tried, 3) if tried else 0.0,
                    "mutants_kept_share": round(len(kept) / tried, 3) if tried else 0.0,
                    "max_kind_share": recipe.max_kind_share, "kinds": _kind_counts(kept),
                    "download_seconds": round(download_seconds, 1),
                    "grading_wait_seconds": round(verify_seconds, 1),
                    "seconds": round(time.monotonic() - started, 1)}
            writer.commit(kept, meta, holdout_fraction=recipe.holdout_fraction)
            meta["path"] = str(dest)
            return meta
    finally:
        if own_env:
            env.cleanup()
