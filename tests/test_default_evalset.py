"""The embedded default eval set: its recipe, and a build of a subset checked with the real grader.

CI builds 2 of the recipe's projects with 3 tasks each (the full build takes
much longer; its numbers are in the README). The subset downloads the pinned
sdists from PyPI, so it also checks that the pins still resolve.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from evolve.config import EvalSettings
from evolve.evalsets.registry import load_evalset
from evolve.synth.build import DownloadError, RecipeError, build, find_recipe, load_recipe
from evolve.synth.problem import leaks

REPO_ROOT = Path(__file__).parent.parent
SUBSET = ["parse", "xmltodict"]
PER_PROJECT = 3


def test_recipe_pins_enough_real_projects():
    recipe = load_recipe(REPO_ROOT / "evolve" / "recipes" / "default.yaml")
    assert recipe.name == "default"
    assert len(recipe.projects) >= 12
    assert len({p.name for p in recipe.projects}) == len(recipe.projects)
    for p in recipe.projects:
        assert p.version and p.sha256 and len(p.sha256) == 64, p.name
    # Enough for 150 search and 60 holdout tasks at the recipe's holdout fraction, with some margin.
    most = sum(p.per_project or recipe.per_project for p in recipe.projects)
    assert most * (1 - recipe.holdout_fraction) >= 160 and most * recipe.holdout_fraction >= 65
    assert set(SUBSET) <= {p.name for p in recipe.projects}
    assert recipe.max_kind_share <= 0.25  # no kind of bug over a quarter of the set (issue 11)
    assert find_recipe("default").resolve() == (REPO_ROOT / "evolve" / "recipes" / "default.yaml").resolve()


def test_nothing_third_party_is_committed():
    tracked = subprocess.run(["git", "-C", str(REPO_ROOT), "ls-files", "evolve/recipes"], capture_output=True, text=True)
    if tracked.returncode != 0:
        pytest.skip("not a git checkout")
    for f in tracked.stdout.split():
        assert f.endswith((".yaml", ".yml", ".md")), f"evolve/recipes/ holds recipes only, found {f}"


@pytest.fixture(scope="session")
def sdist_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("sdists")


@pytest.fixture(scope="session")
def default_subset(tmp_path_factory, sdist_cache, base_image):
    dest = tmp_path_factory.mktemp("default") / "default"
    meta = build("default", dest=dest, projects=SUBSET, per_project=PER_PROJECT, cache=sdist_cache)
    return dest, meta


@pytest.mark.docker
def test_every_default_task_is_resolved_by_its_patch_and_by_nothing_else(default_subset, docker_client,
                                                                         base_image):
    from evolve.grading import grade
    from evolve.sandbox.docker import Sandbox

    dest, meta = default_subset
    es = load_evalset(dest)
    tasks = es.tasks("search") + es.tasks("holdout")
    assert len(tasks) == meta["tasks"]
    # Every project met its quota; the whole-set share then left out the fewest needed (a quarter of a
    # 6-task set is one task per kind).
    over = [i for s in meta["projects"].values() for i in s["dropped_for_kind_share"]]
    assert len(tasks) + len(over) == len(SUBSET) * PER_PROJECT and len(tasks) >= 4
    kinds = [t.model_extra["synth"]["operator"] for t in tasks]
    assert max(kinds.count(k) for k in kinds) <= meta["max_kind_share"] * len(tasks), kinds
    assert sum(meta["kinds"].values()) == len(tasks)
    assert {t.repo_path for t in tasks} == {f"repos/{p}" for p in SUBSET}
    assert meta["mutants_tried"] >= len(tasks)
    # No kind of bug takes more than a quarter of a project's tasks (at least one per kind).
    for project in SUBSET:
        ops = [t.model_extra["synth"]["operator"] for t in tasks if t.repo_path == f"repos/{project}"]
        assert len(ops) == len(set(ops)), (project, ops)
    settings = EvalSettings(model="x", test_timeout_s=600)
    for task in tasks:
        assert leaks(task.problem_statement, task.patch) == [], task.instance_id
        assert task.patch not in task.problem_statement
        with Sandbox(docker_client, base_image, run_id="test-default", limits=settings.sandbox) as box:
            ref = grade(box, task, es.repo_dir(task), task.patch, test_timeout_s=settings.test_timeout_s)
        assert ref.resolved, (task.instance_id, ref.test_output[-2000:])
        with Sandbox(docker_client, base_image, run_id="test-default", limits=settings.sandbox) as box:
            empty = grade(box, task, es.repo_dir(task), "", test_timeout_s=settings.test_timeout_s)
        assert not empty.resolved, task.instance_id


@pytest.mark.docker
def test_build_metadata_records_the_pins(default_subset):
    dest, meta = default_subset
    recipe = {p.name: p for p in load_recipe(REPO_ROOT / "evolve" / "recipes" / "default.yaml").projects}
    for name in SUBSET:
        stats = meta["projects"][name]
        assert stats["version"] == recipe[name].version and stats["sha256"] == recipe[name].sha256
        assert stats["tried"] >= stats["tasks"] + len(stats["dropped_for_kind_share"]) == PER_PROJECT
    assert (dest / "synth.json").is_file()


def test_a_project_that_cannot_be_downloaded_is_a_clear_error(tmp_path, sdist_cache):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("name: bad\nprojects:\n  - {name: xmltodict, version: 0.0.0.999}\n")
    dest = tmp_path / "evals" / "bad"
    with pytest.raises(DownloadError, match=r"cannot download .*xmltodict==0\.0\.0\.999"):
        build(str(recipe), dest=dest, cache=sdist_cache)
    assert not dest.exists() and not (tmp_path / "evals").exists()
    assert not [p for p in sdist_cache.iterdir() if p.name.startswith(".download-")]


def test_a_wrong_hash_is_a_clear_error(tmp_path, sdist_cache):
    recipe = tmp_path / "hash.yaml"
    recipe.write_text("name: hash\nprojects:\n  - {name: parse, version: 1.22.4, sha256: '" + "0" * 64 + "'}\n")
    with pytest.raises(DownloadError, match="sha256"):
        build(str(recipe), dest=tmp_path / "out", cache=sdist_cache)
    assert not (tmp_path / "out").exists()


def test_unknown_recipe_and_project_names(tmp_path):
    with pytest.raises(RecipeError, match="no recipe 'nope'"):
        build("nope", dest=tmp_path / "x")
    with pytest.raises(RecipeError, match="no project 'nope'"):
        build("default", dest=tmp_path / "x", projects=["nope"])
    evolve = REPO_ROOT / ".venv" / "bin" / "evolve"
    if evolve.exists():
        res = subprocess.run([str(evolve), "evals", "build", "nope"], capture_output=True, text=True,
                             env=dict(os.environ, EVOLVE_HOME=str(tmp_path)))
        assert res.returncode == 1 and "no recipe 'nope'" in res.stderr
