"""Step 1 of a generation: a failure analysis of the accepted harness.

From each failed task of the harness's latest search evaluation it collects
the gateway's record of model calls, the harness's trajectory and the test
output, cuts each down to fit the optimizer's context (head, tail and error
lines kept), and asks the optimizer for causes grouped into categories, each
citing instance_ids. A failed task with integrity flags (tests or runner
configuration restored, tampering detected) is shown with its flags and the
note that tampering does not pay, so the plan does not try it.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path

from evolve.digest import cut, trace_records
from evolve.optimizer import Optimizer
from evolve.prompting import render
from evolve.replies import json_block
from evolve.types import IntegrityFlag, Task, TaskResult

MAX_FAILURES = 8
"""Failed tasks shown to the optimizer at most."""
PER_PART_CHARS = 3000
"""Characters kept of each part of a failure (trajectory, calls, test output)."""
MAX_CALL_LINES = 400
"""Lines of a trace's summary (one per request) kept for the analysis, first and last halves."""


@dataclass(frozen=True)
class Failure:
    """One failed task as the analysis prompt shows it; every text already cut to fit."""

    instance_id: str
    failure_class: str
    """A ``FailureClass`` value."""
    problem_statement: str
    trajectory: str
    """The harness's steps (``trajectory.json``): one command and its result per step."""
    calls: str
    """One line per model call of the gateway's trace (``trace.jsonl``)."""
    tests: str
    """The test output (``test_output.txt``), or the patch-apply log when tests did not run."""
    integrity_flags: tuple[str, ...] = ()
    """What grading undid or detected on this task (``IntegrityFlag`` values); empty when clean."""


@dataclass
class Analysis:
    """The optimizer's failure analysis. The loop passes ``text`` on to the plan step."""

    text: str
    """The optimizer's whole reply."""
    categories: list[dict] = field(default_factory=list)
    """``[{"name", "description", "instance_ids"}]``; empty if the reply had no JSON."""
    summary: str = ""
    """The reply's one-paragraph summary; empty if the reply had no JSON."""


def collect_failures(results: list[TaskResult], entries: dict[str, Path], tasks: dict[str, Task],
                     limit: int = MAX_FAILURES) -> list[Failure]:
    """Failed, scored tasks (infra excluded), at most ``limit``, each part cut to ``PER_PART_CHARS``.

    ``entries`` maps instance_id to the task's result directory (trace.jsonl,
    trajectory.json, test_output.txt).
    """
    out = []
    for r in sorted(results, key=lambda r: r.instance_id):
        if r.resolved or r.is_infra or r.instance_id not in entries:
            continue
        d = entries[r.instance_id]
        out.append(Failure(
            instance_id=r.instance_id, failure_class=r.failure_class.value,
            problem_statement=cut(tasks[r.instance_id].problem_statement, 1500),
            trajectory=cut(_trajectory(d / "trajectory.json"), PER_PART_CHARS),
            calls=cut(_calls(d / "trace.jsonl"), PER_PART_CHARS),
            tests=cut(_read(d / "test_output.txt") or _read(d / "apply.log"), PER_PART_CHARS),
            integrity_flags=tuple(f.value for f in IntegrityFlag if f in r.integrity_flags)))
        if len(out) >= limit:
            break
    return out


def analyze(optimizer: Optimizer, failures: list[Failure]) -> Analysis:
    """Ask the optimizer for a failure analysis (one call; fewer and shorter failures
    if the model's context overflows).

    Raises:
        ContextWindowError: even one short failure does not fit.
    """
    if not failures:
        return Analysis(text="The harness failed no scored task on the search split.")
    def build(scale: float) -> list[dict]:
        keep = failures[: max(1, int(len(failures) * scale))]
        size = int(PER_PART_CHARS * scale)
        shrunk = [replace(f, problem_statement=cut(f.problem_statement, size), trajectory=cut(f.trajectory, size),
                          calls=cut(f.calls, size), tests=cut(f.tests, size)) for f in keep]
        return [{"role": "user", "content": render("analyze.j2", failures=shrunk)}]

    reply = optimizer.ask_fitting("analyze", build)
    data = json_block(reply)
    if isinstance(data, dict):
        cats = [c for c in data.get("categories", []) if isinstance(c, dict)]
        return Analysis(text=reply, categories=cats, summary=str(data.get("summary", "")))
    return Analysis(text=reply)


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def _trajectory(path: Path) -> str:
    raw = _read(path)
    try:
        data = json.loads(raw)
    except json.JSONDecodeError:
        return raw
    steps = data.get("steps") if isinstance(data, dict) else None
    if not isinstance(steps, list):
        return raw
    lines = [f"exit_status: {data.get('info', {}).get('exit_status')}"]
    for s in steps:
        if isinstance(s, dict):
            lines.append(f"[step {s.get('step')}] $ {s.get('action')}\n  -> rc={s.get('returncode')} "
                         f"{str(s.get('output', ''))[:400]}" + (f"\n  error: {s['error']}" if s.get("error") else ""))
    return "\n".join(lines)


def _calls(path: Path) -> str:
    """One line per request of the trace ``path``, read as a stream (``digest.trace_records``); at most
    ``MAX_CALL_LINES`` lines, the first and the last half, with the number left out between them."""
    head: list[str] = []
    tail: deque[str] = deque(maxlen=MAX_CALL_LINES - MAX_CALL_LINES // 2)
    left_out = 0
    for rec in trace_records(path):
        line = _call_line(rec)
        if len(head) < MAX_CALL_LINES // 2:
            head.append(line)
            continue
        if len(tail) == tail.maxlen:
            left_out += 1
        tail.append(line)
    middle = [f"[... {left_out} more trace lines left out ...]"] if left_out else []
    return "\n".join(head + middle + list(tail))


def _call_line(rec: dict) -> str:
    if "note" in rec:
        return f"note: {str(rec.get('message'))[:600]}"
    if rec.get("error"):
        return f"call {rec.get('call')}: ERROR {str(rec['error'])[:600]}"
    usage = rec.get("usage") if isinstance(rec.get("usage"), dict) else {}
    if rec.get("summarized"):
        return (f"call {rec.get('call')} ({usage.get('prompt_tokens')} prompt tokens): [summarized: trace cap "
                f"reached; {rec.get('request_bytes')} bytes sent, {rec.get('response_bytes')} received]")
    try:
        text = rec["response"]["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        text = ""
    return f"call {rec.get('call')} ({usage.get('prompt_tokens')} prompt tokens): {str(text)[:600]}"
