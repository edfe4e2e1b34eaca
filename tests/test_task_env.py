"""The same environment for agent and grader (issue 11 item 3): task.json gives the harness the task's test
command and workdir, the ones the grader uses. Real Docker, real git; the harness here reads task.json,
runs the test command as told and leaves what it saw in the repository, where the collected patch shows it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import SOLVER_SCRIPT, build_mini_evalset
from evolve.config import EvalSettings
from evolve.evalsets.registry import load_evalset
from evolve.evaluate import Evaluation
from evolve.harness import resolve_harness

pytestmark = pytest.mark.docker

TEST_CMD = "env EVOLVE_SAME_ENV=yes python3 -m pytest -rA -p no:cacheprovider"
AGENT = '''import json, subprocess
task = json.load(open("/evolve/task.json"))
env = task["environment"]
run = subprocess.run(task["test_cmd"] + " tests/test_calc.py", shell=True, cwd=env["workdir"],
                     capture_output=True, text=True)
with open(env["workdir"] + "/agent_saw.txt", "w") as f:
    json.dump({"task": task, "rc": run.returncode, "out": run.stdout[-3000:]}, f)
'''


def test_the_harness_gets_the_graders_test_command_and_workdir(tmp_path, base_image, docker_client):
    evals = build_mini_evalset(tmp_path / "mini")
    (evals / "evalset.yaml").write_text(f"name: mini\ntest_cmd: {json.dumps(TEST_CMD)}\n")
    harness_dir = tmp_path / "h"
    harness_dir.mkdir()
    (harness_dir / "harness.yaml").write_text('name: env-probe\nentrypoint: "python3 agent.py"\n')
    (harness_dir / "agent.py").write_text(AGENT)
    runs = tmp_path / "runs"
    ev = Evaluation(evalset=load_evalset(str(evals)), split="search",
                    harness=resolve_harness(str(harness_dir), workdir=runs / "harnesses"),
                    settings=EvalSettings(model=f"scripted/{SOLVER_SCRIPT}", harness_timeout_s=120,
                                          test_timeout_s=120),
                    runs_dir=runs, workers=1, instance_ids=["mini__calc-1"])
    result = ev.run().results[0]
    patch = result.model_patch
    line = next(l[1:] for l in patch.splitlines() if l.startswith("+{"))
    saw = json.loads(line)
    assert saw["task"]["test_cmd"] == TEST_CMD
    assert saw["task"]["environment"]["workdir"] == "/testbed"
    assert "FAIL_TO_PASS" not in saw["task"] and "test_patch" not in saw["task"]
    assert saw["rc"] == 0 and "PASSED tests/test_calc.py::test_sub" in saw["out"]

