"""``--statement llm``: issue-style problem statements written by a model, as SWE-smith does.

The deterministic statement (``evolve.synth.problem``: the failing tests, their tracebacks, the commit
message) stays the source of truth. A model rewrites it as a user's bug report (prompt
``evolve/prompts/synth_statement.j2``); the reply is used only if it is not empty and quotes no changed
line of the reference patch (``problem.leaks``, the same check the deterministic statements pass).
Otherwise the task keeps its deterministic statement and the reason is recorded: nothing is dropped or
replaced silently. Every call is traced (``RoleClient``) to ``<eval set>/statements.trace.jsonl``.

Each task records what happened in ``synth.statement``: ``{"source": "llm", "model": ...}`` or
``{"source": "deterministic", "reason": ...}``.
"""

from __future__ import annotations

from pathlib import Path

from evolve.errors import SynthError
from evolve.evalsets.format import dump_tasks, load_tasks
from evolve.prompting import render
from evolve.roles import ResolvedRole, RoleClient
from evolve.synth.problem import leaks
from evolve.types import Task

__all__ = ["STATEMENT_KINDS", "TRACE_FILE", "rewrite_statements"]

STATEMENT_KINDS = ("deterministic", "llm")
TRACE_FILE = "statements.trace.jsonl"


def _rewrite(task: Task, client: RoleClient, model: str) -> Task:
    reply, _ = client.complete([{"role": "user", "content": render("synth_statement.j2", repo=task.repo,
                                                                   observed=task.problem_statement)}])
    reply = reply.strip()
    synth = dict((task.model_extra or {}).get("synth") or {})
    if not reply:
        synth["statement"] = {"source": "deterministic", "reason": f"{model} replied with nothing"}
        return task.model_copy(update={"synth": synth})
    quoted = leaks(reply, task.patch)
    if quoted:
        synth["statement"] = {"source": "deterministic",
                              "reason": f"{model}'s statement quoted the patch ({quoted[0][:60]!r})"}
        return task.model_copy(update={"synth": synth})
    synth["statement"] = {"source": "llm", "model": model}
    return task.model_copy(update={"problem_statement": reply + "\n", "synth": synth})


def rewrite_statements(dest: Path, model: str, params: dict | None = None) -> dict[str, int]:
    """Rewrite the statements of the eval set in ``dest`` (``search.jsonl``, ``holdout.jsonl``; written back
    atomically). Returns ``{"llm": n, "deterministic": m}``.

    Raises:
        SynthError: ``dest`` has no split files.
        ConfigError, ModelError: the model cannot be called (no price, no provider).
    """
    files = [dest / f"{s}.jsonl" for s in ("search", "holdout") if (dest / f"{s}.jsonl").is_file()]
    if not files:
        raise SynthError(f"{dest} holds no search.jsonl or holdout.jsonl to rewrite statements in")
    counts = {"llm": 0, "deterministic": 0}
    role = ResolvedRole("statement", model, dict(params or {}), "--statement-model")
    with RoleClient(role, trace_path=dest / TRACE_FILE) as client:
        for path in files:
            tasks = [_rewrite(t, client, model) for t in load_tasks(path)]
            for t in tasks:
                counts[t.model_extra["synth"]["statement"]["source"]] += 1
            dump_tasks(tasks, path)
    return counts
