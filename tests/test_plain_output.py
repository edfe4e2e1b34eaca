"""No markup injection: test ids, notes, hypotheses and errors are printed exactly as they are
(issue 11 item 7). Hostile strings: a parametrized id holding a closing tag, which rich would reject
with MarkupError, and an id holding an opening tag and an emoji code, which rich would silently eat."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from evolve.evaluate import EvalReport
from evolve.report import RunLiveView, generations_table, results_table
from evolve.runstate import GenerationRecord
from evolve.synth.progress import RichProgress
from evolve.types import FailureClass, TaskResult

EVOLVE = str(Path(sys.executable).parent / "evolve")
CLOSING = "tests/test_paths.py::test_join[/usr-bin]"
OPENING = "tests/test_fmt.py::test_style[[bold]x[/]-:thumbs_up:]"
STATEMENT = "Rendering [red]boom[/red] fails with :warning: and [/usr-bin] paths"


def evolve(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([EVOLVE, *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "400"})


def recorder() -> Console:
    return Console(record=True, width=400, force_terminal=False, color_system=None)


@pytest.fixture
def hostile_file(tmp_path) -> Path:
    row = {"instance_id": "acme__w-[bold]1[/]", "repo": "acme/[w]", "base_commit": "0" * 40,
           "patch": "diff --git a/x b/x\n", "test_patch": "", "problem_statement": STATEMENT,
           "FAIL_TO_PASS": [CLOSING, OPENING], "PASS_TO_PASS": ["tests/t.py::test_ok[[/]]"]}
    path = tmp_path / "hostile.jsonl"
    path.write_text(json.dumps(row) + "\n")
    return path


def test_evals_show_prints_ids_and_statement_verbatim(hostile_file, tmp_path):
    listing = evolve("evals", "show", str(hostile_file), cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    assert "acme__w-[bold]1[/]" in listing.stdout
    task = evolve("evals", "show", str(hostile_file), "acme__w-[bold]1[/]", cwd=tmp_path)
    assert task.returncode == 0, task.stderr
    for text in (CLOSING, OPENING, STATEMENT, "tests/t.py::test_ok[[/]]", "repo acme/[w]"):
        assert text in task.stdout


def test_an_error_naming_a_closing_tag_is_printed_not_raised(tmp_path):
    out = evolve("eval", "--evals", "nope[/usr-bin]", cwd=tmp_path)
    assert out.returncode == 1
    assert "Traceback" not in out.stderr and "MarkupError" not in out.stderr
    assert "error:" in out.stderr and "nope[/usr-bin]" in out.stderr


def test_tables_and_notes_render_hostile_text_verbatim():
    console = recorder()
    result = TaskResult(instance_id=OPENING, key="k", failure_class=FailureClass.NONE, resolved=True)
    console.print(results_table(EvalReport(run_id="r", run_dir=Path("runs/[/r]"), evalset="e[/]", split="search",
                                           harness="h", harness_tree="0" * 40, model="m", results=[result])))
    gen = GenerationRecord(gen=1, parent="[/x]abcdef", hypothesis=f"make {CLOSING} pass", status="rejected")
    console.print(generations_table([gen]))
    live = RunLiveView(console, None, None)
    live.note(f"resuming at {CLOSING}")
    with RichProgress(console) as progress:
        progress.phase("[bold]proj[/]", "mutants", total=1)
        progress.note(f"{OPENING} failed on the original code")
        progress.advance(kept=True)
    text = console.export_text()
    for expected in ("e[/] / search", OPENING, f"make {CLOSING} pass", f"resuming at {CLOSING}", "[/x]abcd",
                     f"note: {OPENING} failed on the original code", "[bold]proj[/]: validating mutants"):
        assert expected in text, expected
