"""State of an ``evolve run`` under ``runs/<run>/``: atomic JSON, append-only logs, a lock.

    runs/<run>/state.json           RunState, rewritten atomically
    runs/<run>/generations/gNNN.json  GenerationRecord, rewritten atomically
    runs/<run>/events.jsonl         append-only event log
    runs/<run>/lessons.jsonl        append-only lessons (evolve.lessons)
    runs/<run>/optimizer_trace.jsonl  every optimizer call
    runs/evolve.lock                held (flock) while a run is active; the kernel frees it on kill -9
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from evolve import store
from evolve.errors import ConfigError, EvolveError

Status = Literal["running", "accepted", "rejected", "refused", "failed"]


class GenerationRecord(BaseModel):
    """One generation: what was tried and the verdict. Rates are resolve rates in [0, 1]."""

    gen: int
    parent: str
    """Commit of the accepted head the candidate branched from."""
    status: Status = "running"
    step: str = "analyze"
    candidate: str | None = None
    """Commit holding the candidate's change."""
    verdict_commit: str | None = None
    hypothesis: str = ""
    files: list[str] = Field(default_factory=list)
    expected_effect: str = ""
    reason: str = ""
    parent_rate: float | None = None
    child_rate: float | None = None
    delta: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    p_value: float | None = None
    task_runs: int = 0
    fixed: list[str] = Field(default_factory=list)
    broken: list[str] = Field(default_factory=list)
    flagged_tasks: int | None = None
    """The candidate's evaluated tasks with any integrity flag (None: not evaluated)."""
    integrity_flags: dict[str, int] = Field(default_factory=dict)
    """``{flag: the candidate's evaluated tasks raising it}``."""
    tampering: list[str] = Field(default_factory=list)
    """``"instance_id: flags"`` where the candidate tampered and its parent did not: rejected for it."""
    cost_usd: float = 0.0
    """Optimizer plus fresh solver spend of this generation (USD)."""
    seconds: float = 0.0
    started: str = Field(default_factory=store.now_iso)
    finished: str | None = None


class RunState(BaseModel):
    run_id: str
    repo: str
    harness_dir: str
    evalset: str
    base: str
    best: str
    status: Literal["running", "stopped", "interrupted", "failed"] = "running"
    stop_reason: str = ""
    generations: int = 0
    """Generations started so far."""
    baseline_rate: float | None = None
    best_rate: float | None = None
    spent_usd: float = 0.0
    started: str = Field(default_factory=store.now_iso)
    updated: str = Field(default_factory=store.now_iso)
    holdout: dict | None = None
    """Held-out check: ``{"baseline": rate, "best": rate, "n": tasks, "best_commit": sha, "at": iso}``."""


class RunStore:
    """Reading and writing one run's files."""

    def __init__(self, runs_dir: Path, run_id: str) -> None:
        self.runs_dir, self.run_id = runs_dir, run_id
        self.dir = runs_dir / run_id

    @property
    def lessons_path(self) -> Path:
        return self.dir / "lessons.jsonl"

    def exists(self) -> bool:
        return (self.dir / "state.json").exists()

    def load(self) -> RunState:
        if not self.exists():
            raise ConfigError(f"no run {self.run_id!r} in {self.runs_dir}. See `evolve status` for the runs there.")
        return RunState.model_validate_json((self.dir / "state.json").read_text())

    def save(self, state: RunState) -> None:
        state.updated = store.now_iso()
        store.atomic_write_json(self.dir / "state.json", state.model_dump(mode="json"))

    def save_gen(self, rec: GenerationRecord) -> None:
        store.atomic_write_json(self.dir / "generations" / f"g{rec.gen:03d}.json", rec.model_dump(mode="json"))

    def gens(self) -> list[GenerationRecord]:
        d = self.dir / "generations"
        return [GenerationRecord.model_validate_json(p.read_text()) for p in sorted(d.glob("g*.json"))] \
            if d.exists() else []

    def event(self, event: str, **fields) -> None:
        store.append_jsonl(self.dir / "events.jsonl", {"ts": store.now_iso(), "event": event, **fields})

    def events(self) -> list[dict]:
        import json

        path = self.dir / "events.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def latest_run(runs_dir: Path) -> str:
    """The most recently updated run id in ``runs_dir``.

    Raises:
        ConfigError: there is no run.
    """
    states = sorted(runs_dir.glob("*/state.json"), key=lambda p: p.stat().st_mtime)
    if not states:
        raise ConfigError(f"no evolve run in {runs_dir}. Start one with `evolve run`.")
    return states[-1].parent.name


class RunLock:
    """An exclusive lock on a repo's runs folder; a second ``evolve run`` fails fast.

    ``flock`` is released by the kernel when the holder dies, even on kill -9.
    """

    def __init__(self, runs_dir: Path) -> None:
        self.path = runs_dir / "evolve.lock"
        self.fd: int | None = None

    def __enter__(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 100).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise EvolveError(f"another `evolve run` is active on this repo (pid {holder}, lock {self.path}). "
                              "Wait for it or stop it (Ctrl-C) first.") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self.fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
