"""Task environments for any project: dependencies read from the project's files, wheels resolved on
the host (real pip, real PyPI), installed offline into a per-project image (real Docker), and a
project whose tests need a third-party package and a setuptools-scm ``_version.py`` synthesized
end to end and checked with the real grader."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest

from evolve.errors import SynthError
from evolve.synth.deps import detect


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_dependencies_come_from_extras_groups_requirement_files_and_tox(tmp_path):
    root = _write(tmp_path, {
        "pyproject.toml": '[build-system]\nrequires = ["flit_core>=3.4"]\n'
                          '[project]\nname = "demo"\ndependencies = ["attrs>=22"]\n'
                          '[project.optional-dependencies]\ntest = ["freezegun", "demo[docs]"]\ndocs = ["sphinx"]\n'
                          '[dependency-groups]\nlint = ["ruff"]\ndev = [{include-group = "lint"}, "hypothesis"]\n',
        "requirements-test.txt": "-r requirements/base.txt\n# a comment\nresponses==0.25  # pinned\n-e .\n",
        "requirements/base.txt": "pyyaml\n",
        "requirements.txt": "not-a-test-file\n",
        "tox.ini": "[testenv]\ndeps =\n    py311: pretend\n    {env:EXTRA}\n    -r requirements/base.txt\n",
    })
    deps = detect(root)
    assert deps.requirements == ["attrs>=22", "freezegun", "ruff", "hypothesis", "pyyaml", "responses==0.25",
                                 "pretend"]
    assert "sphinx" not in deps.requirements and "not-a-test-file" not in deps.requirements
    assert deps.build_requires == ["flit_core>=3.4"]
    assert any("requirements-test.txt: -e ." in s for s in deps.skipped)
    assert "pyproject.toml [dependency-groups] dev" in deps.sources and "tox.ini [testenv] deps" in deps.sources
    only = detect(root, extras=["docs"], requirement_files=[Path("requirements/base.txt")])
    assert only.requirements == ["attrs>=22", "sphinx", "pyyaml"]
    with pytest.raises(SynthError, match="no extra or dependency group 'nope'"):
        detect(root, extras=["nope"])
    with pytest.raises(SynthError, match="--requirements missing.txt: no such file"):
        detect(root, requirement_files=[Path("missing.txt")])


def test_setup_cfg_and_the_default_build_backend(tmp_path):
    root = _write(tmp_path, {"setup.cfg": "[options]\ninstall_requires =\n    six\n"
                                          "[options.extras_require]\ntesting =\n    mock\n    six\n"})
    deps = detect(root)
    assert deps.requirements == ["six", "mock"]
    assert deps.build_requires == ["setuptools>=40.8.0", "wheel"]


CLOCK_PYPROJECT = '''[build-system]
requires = ["setuptools>=64", "setuptools-scm>=8"]
build-backend = "setuptools.build_meta"

[project]
name = "clocklib"
dynamic = ["version"]

[project.optional-dependencies]
test = ["freezegun>=1.2"]

[tool.setuptools_scm]
version_file = "src/clocklib/_version.py"
'''

CLOCK_LIB = '''"""clocklib: dates, with a generated version."""
import datetime

from clocklib._version import version


def today_label():
    d = datetime.date.today()
    if d.weekday() >= 5:
        return "weekend " + d.isoformat()
    return "weekday " + d.isoformat()


def days_until(day):
    delta = day - datetime.date.today()
    if delta.days < 0:
        return 0
    return delta.days
'''

CLOCK_TESTS = '''import datetime
from importlib.metadata import version as dist_version

from freezegun import freeze_time

import clocklib


def test_version_is_generated():
    assert clocklib.version == dist_version("clocklib")


@freeze_time("2024-06-08")
def test_weekend():
    assert clocklib.today_label() == "weekend 2024-06-08"


@freeze_time("2024-06-10")
def test_weekday():
    assert clocklib.today_label() == "weekday 2024-06-10"


@freeze_time("2024-06-10")
def test_days_until():
    assert clocklib.days_until(datetime.date(2024, 6, 13)) == 3
    assert clocklib.days_until(datetime.date(2024, 6, 1)) == 0
'''


@pytest.mark.docker
def test_a_project_needing_freezegun_and_a_generated_version_file(tmp_path, base_image, docker_client, monkeypatch,
                                                                  request):
    from evolve.config import EvalSettings
    from evolve.evalsets.registry import load_evalset
    from evolve.grading import grade
    from evolve.sandbox.docker import Sandbox
    from evolve.synth.env import SynthOptions
    from evolve.synth.synthesize import synthesize

    monkeypatch.setenv("EVOLVE_HOME", str(tmp_path / "home"))
    # A tree of its own (the nonce), so that the first build is a build whatever an earlier run left.
    root = _write(tmp_path / "clocklib", {"pyproject.toml": CLOCK_PYPROJECT, "src/clocklib/__init__.py": CLOCK_LIB,
                                          "tests/test_clock.py": CLOCK_TESTS, ".gitignore": "_version.py\n",
                                          "NONCE": uuid.uuid4().hex})
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    subprocess.run(["git", "-C", str(root), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c"],
                   check=True)
    dest = tmp_path / "evals" / "clock"
    meta = synthesize(root, dest, name="clocklib", opts=SynthOptions(max_tasks=2, seed=1, workers=2))
    env = meta["projects"]["clocklib"]["testenv"]
    request.addfinalizer(lambda: docker_client.images.remove(env["image"], force=True))
    assert any(w.startswith("freezegun-") for w in env["wheels"]) and env["requirements"] == ["freezegun>=1.2"]
    assert "src/clocklib/_version.py" in env["generated"] and env["cached"] is False
    assert meta["tasks"] >= 1
    es = load_evalset(dest)
    task = (es.tasks("search") + es.tasks("holdout"))[0]
    assert task.image == env["image"]
    listed = subprocess.run(["git", "-C", str(es.repo_dir(task)), "ls-tree", "-r", "--name-only", task.base_commit],
                            capture_output=True, text=True, check=True).stdout.split()
    assert "src/clocklib/_version.py" in listed
    # The grader, on its own, in the project's image: the fix resolves, nothing else does.
    settings = EvalSettings(model="x")
    with Sandbox(docker_client, task.image, run_id="test-testenv", limits=settings.sandbox) as box:
        assert grade(box, task, es.repo_dir(task), task.patch, test_timeout_s=300).resolved
    with Sandbox(docker_client, task.image, run_id="test-testenv", limits=settings.sandbox) as box:
        assert not grade(box, task, es.repo_dir(task), "", test_timeout_s=300).resolved
    # The same inputs reuse the image.
    again = synthesize(root, tmp_path / "evals" / "again", name="clocklib",
                       opts=SynthOptions(max_tasks=1, seed=1, workers=1))
    assert again["projects"]["clocklib"]["testenv"]["cached"] is True
    assert again["projects"]["clocklib"]["testenv"]["image"] == env["image"]


@pytest.mark.docker
def test_an_install_failure_names_the_step_and_quotes_pip(tmp_path, base_image, monkeypatch):
    from evolve.synth.env import SynthOptions
    from evolve.synth.synthesize import synthesize

    monkeypatch.setenv("EVOLVE_HOME", str(tmp_path / "home"))
    root = _write(tmp_path / "broken", {
        "setup.py": "raise SystemExit('this setup.py is broken on purpose')\n",
        "broken/__init__.py": "def f():\n    return 1\n",
        "tests/test_f.py": "from broken import f\n\n\ndef test_f():\n    assert f() == 1\n"})
    with pytest.raises(SynthError, match="installing the project itself") as raised:
        synthesize(root, tmp_path / "evals" / "x", opts=SynthOptions(max_tasks=1))
    assert "broken on purpose" in str(raised.value)
    assert not (tmp_path / "evals").exists() or not list((tmp_path / "evals").iterdir())


@pytest.mark.docker
def test_a_requirement_without_a_wheel_is_named_before_any_install(tmp_path, base_image, monkeypatch):
    from evolve.synth.env import SynthOptions
    from evolve.synth.synthesize import synthesize

    monkeypatch.setenv("EVOLVE_HOME", str(tmp_path / "home"))
    root = _write(tmp_path / "p", {
        "requirements-test.txt": "no-such-dist-evolve-test-zzz==1.0\n",
        "p/__init__.py": "def f():\n    return 1\n",
        "tests/test_f.py": "from p import f\n\n\ndef test_f():\n    assert f() == 1\n"})
    with pytest.raises(SynthError, match="no-such-dist-evolve-test-zzz==1.0.*requirements-test.txt"
                                         "|requirements-test.txt.*no-such-dist-evolve-test-zzz==1.0") as raised:
        synthesize(root, tmp_path / "evals" / "x", opts=SynthOptions(max_tasks=1))
    assert "--requirements" in str(raised.value)


@pytest.mark.docker
def test_a_recipe_project_that_needs_its_own_install(tmp_path, base_image, monkeypatch):
    """click's tests read its installed metadata (importlib.metadata): without ``pip install -e .`` its
    suite does not collect; with ``install: true`` in the recipe it builds tasks the grader accepts."""
    from evolve.evalsets.registry import load_evalset
    from evolve.synth.build import build

    monkeypatch.setenv("EVOLVE_HOME", str(tmp_path / "home"))
    recipe = tmp_path / "clicky.yaml"
    recipe.write_text("name: clicky\nper_project: 1\nprojects:\n  - {name: click, version: 8.5.1, install: true, "
                      "sha256: " + CLICK_SHA256 + "}\n")
    meta = build(str(recipe), dest=tmp_path / "out")
    env = meta["projects"]["click"]["testenv"]
    assert env["image"].startswith("evolve-testenv-click:") and any(w.startswith("flit_core") for w in env["wheels"])
    es = load_evalset(tmp_path / "out")
    tasks = es.tasks("search") + es.tasks("holdout")
    assert len(tasks) == 1 and tasks[0].image == env["image"]


CLICK_SHA256 = "9bbfada76703fd1d784b83eea012e3e8c6a001a876543ef104fa56aaaeb072b4"
