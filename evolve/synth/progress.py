"""Rich progress for synthesis: one bar per phase of each project, notes above the bars."""

from __future__ import annotations

import threading

from rich.console import Console
from rich.text import Text
from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RichBars, SpinnerColumn, TextColumn,
                           TimeElapsedColumn)

from evolve.synth.env import SynthProgress

__all__ = ["RichProgress"]

_PHASES = {
    "download": "downloading sdists",
    "environment": "building the test environment (offline install)",
    "baseline": "running the original suite (twice)",
    "head": "running the suite on HEAD",
    "mutants": "validating mutants",
    "commits": "validating commits",
    "grading": "checking tasks with the grader",
}


class RichProgress(SynthProgress):
    """Shows each phase as a bar with done/total, tasks kept so far and elapsed time."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.bars = RichBars(SpinnerColumn(), TextColumn("{task.description}", markup=False), BarColumn(),
                             MofNCompleteColumn(), TextColumn("{task.fields[kept]}", style="green", markup=False),
                             TimeElapsedColumn(),
                             console=console, transient=False)
        self._lock = threading.Lock()
        self._task = None
        self._kept = 0

    def __enter__(self) -> "RichProgress":
        self.bars.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._finish_current()
        self.bars.stop()

    def _finish_current(self) -> None:
        if self._task is not None:
            task = self.bars.tasks[-1]
            if task.total is not None:
                self.bars.update(self._task, completed=task.total)
            self._task = None

    def phase(self, project: str, name: str, total: int | None = None) -> None:
        with self._lock:
            self._finish_current()
            self._kept = 0
            label = f"{project}: {_PHASES.get(name, name)}" if project else _PHASES.get(name, name)
            kept = "" if name not in ("mutants", "commits") else "0 kept"
            self._task = self.bars.add_task(label, total=total, kept=kept)
            self._name = name

    def advance(self, kept: bool | None = None) -> None:
        with self._lock:
            if self._task is None:
                return
            if kept:
                self._kept += 1
            fields = {"kept": f"{self._kept} kept"} if self._name in ("mutants", "commits") else {}
            self.bars.update(self._task, advance=1, **fields)

    def note(self, message: str) -> None:
        self.console.print(Text.assemble(("note:", "yellow"), " ", str(message)))
