"""State of an ``evolve run`` under ``runs/<run>/``: atomic JSON, append-only logs, a lock.

    runs/<run>/state.json           RunState, rewritten atomically
    runs/<run>/generations/gNNN.json  GenerationRecord, rewritten atomically
    runs/<run>/events.jsonl         append-only event log
    runs/<run>/lessons.jsonl        append-only lessons (evolve.lessons)
    runs/<run>/optimizer_trace.jsonl  every optimizer call
    runs/evolve.lock                held (flock) while a run is active; the kernel frees it on kill -9

A generation's writes happen in one order (``evolve.recorder``): record (running, each
step) -> git (candidate, verdict commit, ``best``) -> record (final) -> lesson -> event
-> state. Git holds the truth: a resumed run reconciles the files from it.

Unreadable files raise ``RunFileError`` (an ``EvolveError``) naming the file and the fix.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import BaseModel, Field, ValidationError

from evolve import store
from evolve.errors import ConfigError, EvolveError, RunFileError  # noqa: F401 (RunFileError: re-exported)
from evolve.owner import pid_alive

Status = Literal["running", "pending", "accepted", "rejected", "refused", "failed"]
FINAL = ("pending", "accepted", "rejected", "refused", "failed")
"""Statuses a generation ends with; ``pending`` (``acceptance.approval: manual``) waits for a person,
who turns it into ``accepted`` or ``rejected`` (``evolve.approval``)."""


class CandidateRecord(BaseModel):
    """One candidate of a generation that made K > 1 (``search.candidates``), in brief: what it
    aimed at and its own verdict in the race. Rates in [0, 1]; ``delta`` in rate units."""

    cand: int
    """Its number in the generation, 1..K; its branch is ``evolve/<run>/gNNN-cJ`` (the generation's
    own candidate, the winner or the largest gain, lives on ``evolve/<run>/gNNN``)."""
    category: str = ""
    """The analysis's failure category its plan aimed at."""
    hypothesis: str = ""
    files: list[str] = Field(default_factory=list)
    expected_effect: str = ""
    status: Literal["accepted", "pending", "rejected", "refused", "failed"] = "failed"
    """``accepted``/``pending``: it won the race; ``rejected``: evaluated and lost; ``refused``/``failed``:
    dropped before the race (its patch was refused or failed, or it did not compile or pass the smoke task)."""
    reason: str = ""
    candidate: str | None = None
    """Commit holding its change (None when no edit was committed)."""
    child_rate: float | None = None
    delta: float | None = None
    p_value: float | None = None
    p_worse: float | None = None
    stone: bool = False
    tampering: list[str] = Field(default_factory=list)
    task_runs: int = 0
    """Its own task evaluations in the race (the shared parent's runs are counted once, in the record)."""
    outcomes: dict[str, dict] = Field(default_factory=dict)
    """Paired outcomes against the parent: ``{instance_id: {"repeats", "parent", "child"}}``."""


class GenerationRecord(BaseModel):
    """One generation: what was tried and the verdict. Rates are resolve rates in [0, 1]."""

    gen: int
    parent: str
    """Commit the candidate branched from: the accepted head (``search.parent: greedy``) or a stepping
    stone of the archive (``dgm``)."""
    parent_gen: int | None = None
    """The parent's generation (0 = the base); None in records written before the archive."""
    parent_cand: int | None = None
    """With ``search.parent: dgm``, the parent's candidate number when the parent is a candidate that
    lost its generation's race (a stepping stone on ``evolve/<run>/gNNN-cJ``); None otherwise."""
    best_before: str | None = None
    """The accepted head when the generation began: ``best`` moves from it only on a paired win
    against it. None in records written before the archive (then it is ``parent``)."""
    status: Status = "running"
    step: str = "analyze"
    candidate: str | None = None
    """Commit holding the candidate's change."""
    verdict_commit: str | None = None
    hypothesis: str = ""
    files: list[str] = Field(default_factory=list)
    expected_effect: str = ""
    reason: str = ""
    pending: Literal["accepted", "rejected", "pending"] | None = None
    """The decided verdict while its git writes are under way (step ``decide``); a resumed run
    completes it from git (``evolve.recorder.reconcile``). ``"pending"`` here means the candidate
    passed and waits for a person (``acceptance.approval: manual``)."""
    explore_from: Literal["best", "pending"] = "best"
    """What the candidate branched from: the accepted head, or a pending candidate
    (``acceptance.approval_explore: pending``)."""
    decision: str = ""
    """A person's decision on a pending candidate: ``"approved by NAME: reason"`` or ``"rejected by NAME: reason"``."""
    n_tasks: int = 0
    """Tasks in the paired comparison."""
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
    p_worse: float | None = None
    """One-sided p of "the candidate is worse than its parent" on their paired outcomes."""
    stone: bool = False
    """Kept as a stepping stone (``evolve.search.archive``): its branch stays and it may be a parent."""
    outcomes: dict[str, dict] = Field(default_factory=dict)
    """Paired outcomes against the parent: ``{instance_id: {"repeats", "parent", "child"}}``."""
    category: str = ""
    """The analysis's failure category the plan aimed at (K > 1; empty with one candidate)."""
    candidates: list[CandidateRecord] = Field(default_factory=list)
    """With ``search.candidates`` K > 1: every candidate made, by number; empty for one candidate (and
    in records written before racing). The record's own fields (hypothesis, candidate, verdict) are
    the generation's candidate: the winner, or with no winner the largest estimated gain."""
    cand: int | None = None
    """With K > 1: which candidate (1..K) the record's own fields describe; None for one candidate."""
    winner: int | None = None
    """The candidate (1..K) that won the race, or None."""
    cost_usd: float = 0.0
    """Optimizer plus fresh solver spend of this generation (USD), including attempts before a resume."""
    seconds: float = 0.0
    started: str = Field(default_factory=store.now_iso)
    finished: str | None = None


class RunState(BaseModel):
    """The run as a whole; ``best`` mirrors the git ref ``evolve/<run>/best`` (git wins on resume)."""

    run_id: str
    repo: str
    """The name of the project's directory when the run began: a label for people only. Commands find
    the repository from where they run (``evolve.project.find_project``), never from this, so a copied
    or moved project never touches the original's refs."""
    harness_dir: str
    evalset: str
    base: str
    best: str
    status: Literal["running", "stopped", "interrupted", "failed"] = "running"
    stop_reason: str = ""
    generations: int = 0
    """Generations started so far."""
    finished: int | None = 0
    """Generations whose final record, lesson and cost (in ``spent_usd``) are written; None in runs
    written before this field existed (all their final records count as written)."""
    pid: int | None = None
    """Process id of the ``evolve run`` that last opened the run."""
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
        """The run's state. A state saved as ``running`` whose owner is gone (the runs folder's
        lock is free, or its pid is dead) reads as ``interrupted``; nothing is written.

        Raises:
            ConfigError: no such run.
            RunFileError: state.json is unreadable or invalid.
        """
        if not self.exists():
            raise ConfigError(f"no run {self.run_id!r} in {self.runs_dir}. See `evolve status` for the runs there.")
        state = _read_model(RunState, self.dir / "state.json",
                            "restore it from a backup; the generation records in generations/ and the git refs "
                            f"evolve/{self.run_id}/* are intact")
        if state.status == "running" and not owner_alive(self.runs_dir, state.pid):
            state.status, state.stop_reason = "interrupted", ("the process running it ended without saving "
                                                             "(kill -9 or a crash); continue with "
                                                             f"`evolve run --resume {self.run_id}`")
        return state

    def save(self, state: RunState) -> None:
        """Rewrite state.json atomically. Raises RunFileError when it cannot be written."""
        state.updated = store.now_iso()
        self._write(lambda: store.atomic_write_json(self.dir / "state.json", state.model_dump(mode="json")))

    def gen_path(self, gen: int) -> Path:
        return self.dir / "generations" / f"g{gen:03d}.json"

    def save_gen(self, rec: GenerationRecord) -> None:
        """Rewrite generation ``rec.gen``'s record atomically. Raises RunFileError when it cannot be written."""
        self._write(lambda: store.atomic_write_json(self.gen_path(rec.gen), rec.model_dump(mode="json")))

    def gen(self, gen: int) -> GenerationRecord | None:
        """Generation ``gen``'s record, or None. Raises RunFileError when it is unreadable."""
        path = self.gen_path(gen)
        return _read_model(GenerationRecord, path, f"delete it and run `evolve run --resume {self.run_id}`") \
            if path.exists() else None

    def gens(self) -> list[GenerationRecord]:
        """Every generation record, in order.

        Raises:
            RunFileError: a record is unreadable or invalid.
        """
        d = self.dir / "generations"
        return [_read_model(GenerationRecord, p, "delete it and run `evolve run --resume "
                                                 f"{self.run_id}`: the generation is redone from the caches and "
                                                 "git (its verdict commit, if any, is kept)")
                for p in sorted(d.glob("g*.json"))] if d.exists() else []

    def event(self, event: str, **fields) -> None:
        """Append one line to events.jsonl. Raises RunFileError when it cannot be written."""
        path = self.dir / "events.jsonl"

        def write() -> None:
            store.end_torn_line(path)
            store.append_jsonl(path, {"ts": store.now_iso(), "event": event, **fields})

        self._write(write)

    def events(self) -> list[dict]:
        """Every event, in order; a torn last line (a kill during an append) is left out."""
        return list(store.read_jsonl(self.dir / "events.jsonl",
                                     fix="Delete that line (the log is informational)."))

    def _write(self, write) -> None:
        try:
            write()
        except OSError as e:
            raise RunFileError(f"cannot write the run's files in {self.dir}: {e.strerror or e}. Make the folder "
                               f"writable (e.g. `chmod -R u+w {self.dir}`) or free some space, then "
                               f"`evolve run --resume {self.run_id}`.") from None


M = TypeVar("M", bound=BaseModel)


def _read_model(model: type[M], path: Path, fix: str) -> M:
    try:
        return model.model_validate_json(path.read_text())
    except OSError as e:
        raise RunFileError(f"cannot read {path}: {e.strerror or e}. Make it readable, then try again.") from None
    except ValidationError as e:
        problem = e.errors()[0]
        where = ".".join(str(x) for x in problem.get("loc", ())) or "the file"
        raise RunFileError(f"{path} is damaged ({where}: {problem.get('msg')}). To recover: {fix}.") from None


def owner_alive(runs_dir: Path, pid: int | None) -> bool:
    """Whether a process may still be running a run of ``runs_dir``: the folder's lock is held
    (by another open file; our own ``RunLock`` counts as held) and ``pid``, when known, exists."""
    path = runs_dir / "evolve.lock"
    if not path.exists():
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return True  # can't tell: assume alive
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        held = True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        held = False
    finally:
        os.close(fd)
    if not held:
        return False
    return pid is None or pid_alive(pid)


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
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise RunFileError(f"cannot create the run lock {self.path}: {e.strerror or e}. Make "
                               f"{self.path.parent} writable or choose another folder with --runs-dir.") from None
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
