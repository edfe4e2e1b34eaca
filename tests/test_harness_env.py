"""Harness environments: requirements resolved on the host by pip, installed offline in the sandbox.

Real pip against the package index of the host's pip configuration, real Docker, real
evaluations. Hostile cases: a requirement that would run code at install, a requirement
with no wheel for the sandbox, an oversized wheelhouse, an image without python3.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SOLVER_SCRIPT
from evolve.config import EvalSettings
from evolve.errors import HarnessError
from evolve.evalsets.registry import load_evalset
from evolve.evaluate import Evaluation
from evolve.harness import resolve_harness
from evolve.harness_env import prepare, probe_image
from evolve.wheelhouse import glibc_platforms, resolve

EVOLVE = str(Path(sys.executable).parent / "evolve")
SCRIPTED = f"scripted/{SOLVER_SCRIPT}"
REQS = ["tomli-w==1.0.0", "markupsafe"]
"""A pure-Python wheel the host's environment does not have, and one with compiled code."""

AGENT = r'''
import json, os, sys
out = {"executable": sys.executable, "prefix": sys.prefix, "version": "%d.%d.%d" % sys.version_info[:3]}
import tomli_w, markupsafe
out["tomli_w"] = tomli_w.__file__
out["markupsafe_speedups"] = markupsafe._speedups.__file__
try:
    open(os.path.join(sys.prefix, "planted.py"), "w").write("x = 1\n")
    out["env_writable"] = True
except OSError as e:
    out["env_writable"] = False
with open(os.path.join(os.environ["EVOLVE_OUTPUT_DIR"], "trajectory.json"), "w") as f:
    json.dump(out, f)
'''


def write_harness(root: Path, name: str, spec_extra: str, agent: str = AGENT, files: dict | None = None) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "harness.yaml").write_text(f"name: {name}\nentrypoint: python3 agent.py\n{spec_extra}")
    (d / "agent.py").write_text(agent)
    for rel, content in (files or {}).items():
        (d / rel).write_text(content)
    return d


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    h = tmp_path / "home"
    monkeypatch.setenv("EVOLVE_HOME", str(h))
    return h


def evaluate(evalset: Path, harness_dir: Path, runs: Path):
    settings = EvalSettings(model=SCRIPTED, harness_timeout_s=120, test_timeout_s=120)
    harness = resolve_harness(str(harness_dir), workdir=runs / "harnesses")
    return Evaluation(evalset=load_evalset(str(evalset)), split="search", harness=harness, settings=settings,
                      runs_dir=runs, workers=1, instance_ids=["mini__calc-1"]).run()


def trajectory(report) -> dict:
    (result,) = report.results
    assert result.failure_class != "infra", result.error
    return json.loads((report.run_dir / "tasks" / result.instance_id / "r0" / "trajectory.json").read_text())


# -- without Docker -------------------------------------------------------------------------------

def test_glibc_platforms_follow_pep_600():
    tags = glibc_platforms("2.36", "x86_64")
    assert tags[0] == "manylinux_2_36_x86_64" and tags[-1] == "linux_x86_64"
    for t in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux2010_x86_64",
              "manylinux1_x86_64", "manylinux_2_5_x86_64"):
        assert t in tags
    assert "manylinux_2_4_x86_64" not in tags
    with pytest.raises(HarnessError, match="not glibc 2.x"):
        glibc_platforms("musl 1.2", "x86_64")


def test_requirements_file_is_read_and_pip_options_are_refused(tmp_path):
    ok = write_harness(tmp_path, "ok", "requirements: [six]\nrequirements_file: reqs/requirements.txt\n")
    (ok / "reqs").mkdir()
    (ok / "reqs" / "requirements.txt").write_text("# pinned\ntomli-w==1.0.0  # for TOML\n\nmarkupsafe>=2\n")
    h = resolve_harness(str(ok), workdir=tmp_path / "w")
    assert h.requirements == ["six", "tomli-w==1.0.0", "markupsafe>=2"]

    bad = write_harness(tmp_path, "bad", "requirements_file: requirements.txt\n",
                        files={"requirements.txt": "six\n--index-url http://127.0.0.1:9/simple\n"})
    with pytest.raises(HarnessError, match=r"requirements\.txt:2: '--index-url .*pip options are not allowed"):
        resolve_harness(str(bad), workdir=tmp_path / "w")


def test_a_requirement_that_would_run_code_at_install_is_refused_before_pip(tmp_path):
    """A source tree pip would build (running its setup.py) is refused when harness.yaml is read."""
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "setup.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n"
                                   "from setuptools import setup\nsetup(name='evil', version='1')\n")
    h = write_harness(tmp_path, "h", "requirements_file: requirements.txt\n",
                      files={"requirements.txt": f"evil @ file://{evil}\n"})
    with pytest.raises(HarnessError, match=r"requirements\.txt:1: 'evil @ file://.*' points at a source"):
        resolve_harness(str(h), workdir=tmp_path / "w")
    assert not marker.exists()


# -- pip against the index (real HTTP) ------------------------------------------------------------

def test_unresolvable_and_wheel_less_requirements_are_named(tmp_path):
    target = probe_target()
    with pytest.raises(HarnessError, match=r"requirement evolve-no-such-package-x7q==1\.0: no wheel on the index"):
        resolve(["six", "evolve-no-such-package-x7q==1.0"], target, home=tmp_path)
    # pywin32 ships wheels for Windows only: none fits a Linux sandbox.
    with pytest.raises(HarnessError, match=r"requirement pywin32==306: no wheel on the index fits the sandbox "
                                           r"\(cp311 Python 3\.11\.\d+ on manylinux_2_\d+_x86_64\)"):
        resolve(["pywin32==306"], target, home=tmp_path)
    assert not any((tmp_path / "wheelhouses").glob("*/wheelhouse.json"))  # nothing half-made is kept


def test_oversized_wheelhouse_is_refused_and_removed(tmp_path):
    with pytest.raises(HarnessError, match=r"over evolve's cap of 0 MB; the largest: markupsafe-.*\.whl"):
        resolve(["markupsafe"], probe_target(), home=tmp_path, max_bytes=1000)
    assert list((tmp_path / "wheelhouses").iterdir()) == []


def _probe_wheel(folder: Path, version: str) -> Path:
    """A pure-Python wheel of ``evolve-index-probe-x7q`` (a name no real index has) at ``version``."""
    import zipfile

    folder.mkdir(parents=True, exist_ok=True)
    dist = f"evolve_index_probe_x7q-{version}.dist-info"
    path = folder / f"evolve_index_probe_x7q-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("evolve_index_probe_x7q/__init__.py", f"VERSION = {version!r}\n")
        z.writestr(f"{dist}/METADATA", f"Metadata-Version: 2.1\nName: evolve-index-probe-x7q\nVersion: {version}\n")
        z.writestr(f"{dist}/WHEEL", "Wheel-Version: 1.0\nGenerator: evolve-tests\nRoot-Is-Purelib: true\n"
                                    "Tag: py3-none-any\n")
        z.writestr(f"{dist}/RECORD", "")
    return path


def test_a_wheelhouse_from_one_index_is_not_reused_for_another(tmp_path, monkeypatch):
    """Two package sources (pip's find-links, set as pip reads it: PIP_FIND_LINKS) serve different
    versions of one name: each gets its own wheelhouse; the same source again reads the cache."""
    from evolve.wheelhouse import index_config, wheelhouse_key

    first, second = tmp_path / "first", tmp_path / "second"
    _probe_wheel(first, "1.0")
    _probe_wheel(second, "2.0")
    target, home = probe_target(), tmp_path / "home"

    monkeypatch.setenv("PIP_FIND_LINKS", str(first))
    assert any(name.endswith(".find-links") and str(first) in value for name, value in index_config().items())
    one = resolve(["evolve-index-probe-x7q"], target, home=home)
    monkeypatch.setenv("PIP_FIND_LINKS", str(second))
    two = resolve(["evolve-index-probe-x7q"], target, home=home)
    assert [w for w in one.wheels if "probe" in w] == ["evolve_index_probe_x7q-1.0-py3-none-any.whl"]
    assert [w for w in two.wheels if "probe" in w] == ["evolve_index_probe_x7q-2.0-py3-none-any.whl"]
    assert one.key != two.key and one.root != two.root

    monkeypatch.setenv("PIP_FIND_LINKS", str(first))
    (first / "evolve_index_probe_x7q-1.0-py3-none-any.whl").unlink()  # a cache hit needs no download
    assert resolve(["evolve-index-probe-x7q"], target, home=home) == one
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")  # another index, same find-links
    assert wheelhouse_key(["evolve-index-probe-x7q"], target) != one.key


def probe_target():
    """The base image's target, without Docker when the base image tag's Python is known."""
    from evolve.wheelhouse import Target

    return Target("3.11.2", "cp", "cp311", glibc_platforms("2.36", "x86_64"))


# -- Docker ---------------------------------------------------------------------------------------

@pytest.mark.docker
def test_harness_runs_with_its_env_which_is_reused_and_read_only(mini_evalset, base_image, docker_client,
                                                                 tmp_path, home):
    h1 = write_harness(tmp_path, "h1", f"requirements: {json.dumps(REQS)}\n")
    first = trajectory(evaluate(mini_evalset, h1, tmp_path / "runs"))
    py = probe_image(docker_client, base_image, home=home)
    assert first["executable"] == "/evolve/env/bin/python3" and first["prefix"] == "/evolve/env"
    assert first["version"] == py.python_version  # the image's own interpreter
    assert first["tomli_w"].startswith("/evolve/env/lib/") and first["markupsafe_speedups"].endswith(".so")
    assert first["env_writable"] is False
    (env_dir,) = (home / "envs").iterdir()
    built = (env_dir / "evolve-env.json").stat().st_mtime_ns
    assert json.loads((env_dir / "evolve-env.json").read_text())["requirements"] == REQS

    # Another candidate (another tree) with the same requirements reuses the env as it is.
    h2 = write_harness(tmp_path, "h2", f"requirements: {json.dumps(REQS)}\n", agent=AGENT + "# changed\n")
    second = trajectory(evaluate(mini_evalset, h2, tmp_path / "runs"))
    assert second["tomli_w"] == first["tomli_w"]
    assert [p.name for p in (home / "envs").iterdir()] == [env_dir.name]
    assert (env_dir / "evolve-env.json").stat().st_mtime_ns == built

    # Neither the host's Python environment nor the image got the packages.
    assert subprocess.run([sys.executable, "-c", "import tomli_w"], capture_output=True).returncode != 0
    probe = subprocess.run(["docker", "run", "--rm", "--network", "none", base_image, "python3", "-c",
                            "import tomli_w"], capture_output=True, text=True)
    assert probe.returncode != 0 and "No module named 'tomli_w'" in probe.stderr


@pytest.mark.docker
def test_bad_requirement_stops_evolve_eval_before_any_task(mini_evalset, base_image, docker_client, tmp_path, home):
    h = write_harness(tmp_path, "h", "requirements: [six, evolve-no-such-package-x7q==1.0]\n")
    runs = tmp_path / "runs"
    proc = subprocess.run([EVOLVE, "eval", "--harness", str(h), "--evals", str(mini_evalset), "--split", "search",
                           "--model", SCRIPTED, "--runs-dir", str(runs)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "EVOLVE_HOME": str(home), "COLUMNS": "200"})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "evolve-no-such-package-x7q==1.0" in proc.stderr and "no wheel on the index" in proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not list(runs.glob("*/results.jsonl"))


@pytest.mark.docker
def test_image_without_python_is_refused_with_what_to_do(base_image, docker_client, tmp_path, home):
    box = docker_client.containers.run(base_image, ["sh", "-c", "rm -f /usr/bin/python3*"], detach=True,
                                       network_mode="none", user="0:0")
    try:
        box.wait(timeout=60)
        image = box.commit(repository="evolve-test-nopython", tag="latest")
    finally:
        box.remove(force=True)
    try:
        h = resolve_harness(str(write_harness(tmp_path, "h", "requirements: [six]\n")), workdir=tmp_path / "w")
        with pytest.raises(HarnessError, match=r"image evolve-test-nopython:latest cannot run them: it has no "
                                               r"python3\. .*Use an image with Python 3 \(harness\.yaml 'image:'\)"):
            prepare(docker_client, h, "evolve-test-nopython:latest", home=home)
        assert not (home / "wheelhouses").exists()  # refused before anything was resolved
    finally:
        docker_client.images.remove(image.id, force=True)


@pytest.mark.docker
def test_harness_may_name_its_own_image_for_the_agent_phase(mini_evalset, base_image, docker_client, tmp_path, home):
    """The agent phase runs in the harness's image, with an env built for that image; grading does not."""
    box = docker_client.containers.run(base_image, ["sh", "-c", "echo agent-image > /etc/evolve-agent-image"],
                                       detach=True, network_mode="none", user="0:0")
    try:
        box.wait(timeout=60)
        image = box.commit(repository="evolve-test-agent-image", tag="latest")
    finally:
        box.remove(force=True)
    agent = ('import json, os, tomli_w\n'
             'out = {"marker": open("/etc/evolve-agent-image").read().strip(), "tomli_w": tomli_w.__file__}\n'
             'json.dump(out, open(os.path.join(os.environ["EVOLVE_OUTPUT_DIR"], "trajectory.json"), "w"))\n'
             'open("/testbed/calc.py", "a").write("import os\\nassert not os.path.exists(\'/etc/evolve-agent-image\')\\n")\n')
    try:
        h = write_harness(tmp_path, "h", "image: evolve-test-agent-image:latest\nrequirements: [tomli-w==1.0.0]\n",
                          agent=agent)
        report = evaluate(mini_evalset, h, tmp_path / "runs")
        traj = trajectory(report)
        assert traj == {"marker": "agent-image", "tomli_w": traj["tomli_w"]} and traj["tomli_w"].startswith("/evolve/env/")
        (env_dir,) = (home / "envs").iterdir()
        assert json.loads((env_dir / "evolve-env.json").read_text())["image"] == "evolve-test-agent-image:latest"
        # Grading ran in the task's image: the assert the harness appended to calc.py held there.
        (result,) = report.results
        assert result.failure_class == "tests_failed"
        assert all(s == "PASSED" for s in result.PASS_TO_PASS.values()), result.PASS_TO_PASS
    finally:
        docker_client.images.remove(image.id, force=True)
