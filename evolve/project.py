"""A project: a git repo holding a harness and an ``evolve.yaml``.

``init_project`` makes one (``evolve init``); ``find_project`` finds the one a command runs in,
from any subdirectory, so ``runs/`` and its lock are always next to ``evolve.yaml``.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from evolve import hostgit
from evolve.config import CONFIG_FILE, ProjectConfig, load_project_config
from evolve.errors import ConfigError
from evolve.harness import template_dir

DEFAULT_CONFIG = Path(__file__).parent / "data" / "evolve.yaml"


def init_project(root: Path, template: str = "minimal", harness: str = "harness") -> list[str]:
    """Add the harness template and ``evolve.yaml`` to the repo at ``root`` (created, and
    ``git init``-ed, if needed). Returns the paths added.

    A new repository gets a first commit; in an existing one the files are only
    added to the index, and the user's branch is left for the user to commit on.

    Raises:
        ConfigError: ``harness/`` or ``evolve.yaml`` already exists.
        HarnessError: unknown template.
    """
    src = template_dir(template)
    root.mkdir(parents=True, exist_ok=True)
    for existing in (root / harness, root / CONFIG_FILE):
        if existing.exists():
            raise ConfigError(f"{existing} already exists: evolve init never overwrites. Remove it or "
                              "pick another directory.")
    repo = hostgit.Repo.find(root, search_parents=False)  # hostgit: the user's git config and hooks never apply
    fresh = repo is None
    if repo is None:
        hostgit.run(["init", "-q", str(root)], pinned=False)
        repo = hostgit.Repo(root)
    shutil.copytree(src, root / harness, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    text = DEFAULT_CONFIG.read_text()
    if harness != "harness":
        text = text.replace("harness: harness ", f"harness: {harness} ", 1)
    (root / CONFIG_FILE).write_text(text)
    ignore = root / ".gitignore"
    lines = ignore.read_text().splitlines() if ignore.exists() else []
    if "runs/" not in lines:
        ignore.write_text("\n".join([*lines, "runs/"]) + "\n")
    added = [harness, CONFIG_FILE, ".gitignore"]
    repo.run("add", "--", *added)
    if fresh or repo.sha("HEAD") is None:
        repo.run("commit", "--no-verify", "-q", "-m", f"evolve init: harness template {template}")
    return added


# -- finding the project from any subdirectory ---------------------------------------------------

@dataclass(frozen=True)
class Project:
    """A repo evolve works on: its root (the directory holding ``evolve.yaml``) and that file."""

    root: Path
    config_path: Path

    @property
    def runs_dir(self) -> Path:
        """Where runs go by default: ``runs/`` next to ``evolve.yaml``."""
        return self.root / "runs"

    def config(self) -> ProjectConfig:
        """The validated ``evolve.yaml``, its eval set anchored at the root: a relative path is read
        from the root, and a name is looked up in the root's ``evals/`` first, as from the root.

        Raises:
            ConfigError: missing, not YAML, or an invalid key (named by its dotted path).
        """
        cfg = load_project_config(self.config_path)
        name = cfg.evals.name
        path_like = "/" in name or name.startswith(".") or name.endswith(".jsonl")
        if Path(name).expanduser().is_absolute() or name.startswith("~"):
            return cfg
        anchored = self.root / name if path_like else self.root / "evals" / name
        if path_like or anchored.exists():
            return cfg.model_copy(update={"evals": cfg.evals.model_copy(update={"name": str(anchored)})})
        return cfg


def find_project(start: Path | None = None) -> Project:
    """The project holding ``start`` (default: the current directory): the nearest directory at or
    above it that has an ``evolve.yaml``, looking no higher than the enclosing git repository's root.

    Raises:
        ConfigError: no ``evolve.yaml`` there or above.
    """
    here = (start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        if (d / CONFIG_FILE).is_file():
            return Project(d, d / CONFIG_FILE)
        if (d / ".git").exists():
            raise ConfigError(f"no {CONFIG_FILE} in {here} or above it up to the git root {d}. Run `evolve init` "
                              f"in the repo, or pass --config PATH.")
    raise ConfigError(f"no {CONFIG_FILE} in {here} or any directory above it. Run `evolve init` first, or pass "
                      "--config PATH.")


def open_project(config: Path | None = None) -> Project:
    """The project of an explicit ``--config`` file (its directory is the root), else ``find_project()``.

    Raises:
        ConfigError: the file is missing, or no project is found.
    """
    if config is None:
        return find_project()
    path = config.expanduser().resolve()
    if not path.is_file():
        raise ConfigError(f"{config}: not found. Create one with `evolve init`, or run evolve inside the project.")
    return Project(path.parent, path)
