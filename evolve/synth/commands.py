"""What ``evolve evals synth|build`` print; the CLI (``evolve.cli``) only parses options."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

__all__ = ["print_synth_summary"]


def print_synth_summary(console: Console, meta: dict, dest: Path) -> None:
    """What a synth/build run made: tasks per project, mutants tried and kept, time."""
    table = Table(title=Text(f"{meta.get('tasks', 0)} tasks -> {dest}"), title_justify="left")
    for col in ("project", "tasks", "tried", "valid", "verdicts", "dropped by grader"):
        table.add_column(col, overflow="fold")
    for name, stats in meta.get("projects", {}).items():
        for kind in ("mutation", "history", None):
            s = stats.get(kind) if kind else stats
            if kind and s is None:
                continue
            if kind is None and ("mutation" in stats or "history" in stats):
                continue
            verdicts = s.get("verdicts", {})
            table.add_row(Text(f"{name}" + (f" ({kind})" if kind else "")), str(s.get("tasks", stats.get("tasks", ""))),
                          str(s.get("tried", 0)), str(verdicts.get("kept", 0)),
                          Text(", ".join(f"{k} {v}" for k, v in sorted(verdicts.items()) if k != "kept")),
                          str(len(stats.get("dropped_by_grader", {}))))
    console.print(table)
    for name, stats in meta.get("projects", {}).items():
        history = stats.get("history") or {}
        for sha, why in history.get("dropped", {}).items():
            console.print(Text.assemble(("dropped ", "yellow"), f"{name} commit {sha} {why}"))
        skipped = {k: v for k, v in history.get("skipped", {}).items() if v}
        if skipped:
            console.print(Text(f"{name}: {sum(skipped.values())} of {history.get('commits', 0)} commits were not "
                               "candidates (" + ", ".join(f"{k} {v}" for k, v in sorted(skipped.items())) + ")"))
    counts = meta.get("counts", {})
    console.print(Text(f"splits: search {counts.get('search', 0)}, holdout {counts.get('holdout', 0)}; "
                  f"{meta.get('seconds', 0):.0f} s. Evaluate with: evolve eval --evals {dest.name}"))
