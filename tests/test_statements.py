"""`--statement llm` (issue 11 item 6): a model rewrites statements as issues, never quoting the patch.
The model is the scripted one (its words only); litellm, HTTP and the trace are real."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import build_mini_evalset
from evolve.evalsets.format import load_tasks
from evolve.synth.statements import TRACE_FILE, rewrite_statements

EVOLVE = str(Path(sys.executable).parent / "evolve")
ISSUE = "add() gives the wrong sum\n\nCalling add(2, 3) returns -1; I expected 5."


def test_statements_are_rewritten_unless_the_reply_is_empty_or_quotes_the_patch(tmp_path):
    evals = build_mini_evalset(tmp_path / "mini")
    before = {t.instance_id: t for s in ("search", "holdout") for t in load_tasks(evals / f"{s}.jsonl")}
    script = tmp_path / "writer.yaml"
    script.write_text(yaml.safe_dump({"rules": [
        {"when": {"contains": ["add(2, 3) gives -1"]}, "replies": [ISSUE]},
        {"when": {"contains": ["clamp(12, 0, 10)"]}, "replies": ["clamp is off at the top: use `if x > hi:`"]},
    ], "default": [" "]}))
    counts = rewrite_statements(evals, f"scripted/{script}")
    assert counts == {"llm": 1, "deterministic": 2}
    after = {t.instance_id: t for s in ("search", "holdout") for t in load_tasks(evals / f"{s}.jsonl")}
    assert after["mini__calc-1"].problem_statement == ISSUE + "\n"
    assert after["mini__calc-1"].model_extra["synth"]["statement"] == {"source": "llm",
                                                                       "model": f"scripted/{script}"}
    leaked = after["mini__calc-2"]
    assert leaked.problem_statement == before["mini__calc-2"].problem_statement
    assert "quoted the patch ('if x > hi:')" in leaked.model_extra["synth"]["statement"]["reason"]
    assert "replied with nothing" in after["mini__calc-3"].model_extra["synth"]["statement"]["reason"]
    for iid in after:  # nothing else changed
        assert after[iid].model_dump(exclude={"problem_statement", "synth"}) == \
            before[iid].model_dump(exclude={"problem_statement", "synth"})
    trace = [json.loads(line) for line in (evals / TRACE_FILE).read_text().splitlines()]
    assert len(trace) == 3 and all(r["status"] == 200 for r in trace)
    assert "add(2, 3) gives -1" in json.dumps(trace[0]["request"])


def test_llm_statements_need_a_model_and_fail_before_any_work(tmp_path):
    repo = tmp_path / "p"
    repo.mkdir()
    env = {**os.environ, "EVOLVE_HOME": str(tmp_path / "home")}
    out = subprocess.run([EVOLVE, "evals", "synth", "--repo", str(repo), "--statement", "llm"], capture_output=True,
                         text=True, env=env, timeout=120)
    assert out.returncode == 1 and "--statement llm needs --statement-model" in out.stderr
    out = subprocess.run([EVOLVE, "evals", "synth", "--repo", str(repo), "--statement", "llm", "--statement-model",
                          "nosuchprovider/x"], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 1 and "unknown model 'nosuchprovider/x'" in out.stderr
    assert not (tmp_path / "home").exists()
