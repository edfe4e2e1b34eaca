"""What both sources of tasks (``mutation``, ``history``) share.

The options, the progress reporter, the Docker environment, the project tree
being synthesized from, the outcome of trying one candidate bug, and
``run_candidates``, which tries candidates on several workbenches at once and
keeps the first valid ones in the seed's order.
"""

from __future__ import annotations

import re
import threading
import uuid
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Protocol, TypeVar

from evolve.config import SandboxLimits
from evolve.errors import InfraError, NoTestsError, SuiteFailsError, SynthError
from evolve.synth.validate import TestRun, Workbench

if TYPE_CHECKING:  # pragma: no cover
    import docker

__all__ = ["DEFAULT_TEST_CMD", "NOT_SOURCE", "TEST_FILE", "CandidateOutcome", "NoTestsError", "ProjectSource",
           "SuiteFailsError", "SynthEnv", "SynthError", "SynthOptions", "SynthProgress", "run_candidates", "select_kept"]

DEFAULT_TEST_CMD = "python3 -m pytest -rA -p no:cacheprovider --rootdir=."
"""The grader's default command plus ``--rootdir=.``: node ids are relative to /testbed whatever
test files are named on the command line."""

TEST_FILE = re.compile(r"(^|/)test_[^/]*\.py$|(^|/)[^/]*_test\.py$")
# Paths the grader restores before running tests (evolve.testfiles.TEST_LIKE) are never mutated:
# a bug there could never be fixed.
NOT_SOURCE = re.compile(r"(^|/)(setup|noxfile|fabfile|conftest)\.py$|(^|/)(docs?|examples?|benchmarks?|bench|"
                        r"scripts|tools|build|dist)/")


# -- options, environment, progress, project ---------------------------------------------------


@dataclass(frozen=True)
class SynthOptions:
    """What ``synthesize`` does; the defaults suit a small project on 2 cores."""

    seed: int = 0
    max_tasks: int = 20
    """Tasks kept per project and source at most."""
    max_candidates: int | None = None
    """Mutants tried per project at most; default ``10 * max_tasks + 20``."""
    workers: int = 2
    """Containers validating at once."""
    test_cmd: str | None = None
    """Test command; default ``DEFAULT_TEST_CMD`` (with ``PYTHONPATH=src`` for a src layout)."""
    image: str | None = None
    """Docker image for validation and for the tasks; None is evolve's base image (or, with
    ``install``, the project's test-environment image built on it)."""
    install: bool | None = None
    """Build a per-project test-environment image (``evolve.synth.testenv``): True always, False
    never, None when the project has packaging or requirements files and no ``image`` is given."""
    extras: tuple[str, ...] = ()
    """Extras or dependency groups to install; empty: the usual test ones (``evolve.synth.deps``)."""
    requirement_files: tuple[str, ...] | None = None
    """Requirements files to install instead of the detected ones."""
    setup_cmd: str | None = None
    """Run in /testbed after the install (as root, no network)."""
    suite_timeout_s: float = 900.0
    """Limit for one run of the whole original suite."""
    max_pass_to_pass: int = 200
    max_fail_share: float = 0.5
    """A mutant failing more than this share of the suite's stable tests is dropped."""
    max_kind_share: float = 0.25
    """Mutation tasks of one operator per project at most this share of ``max_tasks`` (at least one),
    so that no kind of bug dominates a set."""
    holdout_fraction: float = 0.3
    max_commits: int = 300
    """History: commits examined, newest first along the first-parent chain."""
    first_parent: bool = True
    """History: only the main line's commits (a merge stands for its branch, diffed against its first
    parent); False examines every non-merge commit, branch commits included."""
    limits: SandboxLimits = field(default_factory=SandboxLimits)
    executor: str = "local"
    """Where ``verify``'s validation jobs run: ``local`` or ``ray`` (``evolve.executors``)."""
    ray_address: str = "auto"
    """The Ray cluster's address for ``executor="ray"``."""

    def kind_cap(self) -> int:
        """Tasks of one mutation operator per project at most: ``max_kind_share * max_tasks``, at least 1."""
        return max(1, int(self.max_kind_share * self.max_tasks + 1e-9))

    def candidate_cap(self) -> int:
        return self.max_candidates if self.max_candidates is not None else 10 * self.max_tasks + 20


class SynthProgress:
    """What synthesis reports while it runs. The base class ignores everything."""

    def phase(self, project: str, name: str, total: int | None = None) -> None:
        """A new phase (``baseline``, ``mutants``, ``commits``, ``grading``) of ``project`` starts."""

    def advance(self, kept: bool | None = None) -> None:
        """One unit of the current phase is done; ``kept`` says whether it gave a task."""

    def note(self, message: str) -> None:
        """Something the user should know (a skipped file, flaky tests...)."""


@dataclass
class SynthEnv:
    """The Docker side: client, image and the run id that labels every container."""

    client: "docker.DockerClient"
    image: str
    run_id: str
    limits: SandboxLimits

    @classmethod
    def connect(cls, image: str | None = None, limits: SandboxLimits | None = None) -> "SynthEnv":
        from evolve.sandbox.docker import docker_client, sweep_stale
        from evolve.sandbox.image import ensure_image

        client = docker_client()
        sweep_stale(client)
        return cls(client, ensure_image(client, image), f"synth-{uuid.uuid4().hex[:12]}",
                   limits or SandboxLimits())

    def workbench(self, test_cmd: str) -> Workbench:
        return Workbench(self.client, self.image, run_id=self.run_id, test_cmd=test_cmd, limits=self.limits)

    def cleanup(self) -> None:
        from evolve.sandbox.docker import sweep_run

        sweep_run(self.client, self.run_id)


@dataclass
class ProjectSource:
    """A project tree ready to synthesize from."""

    name: str
    """Slug used in instance ids and as ``repos/<name>``."""
    root: Path
    """A clean copy of the tree (no .git, no caches)."""
    repo: str
    """The tasks' ``repo`` field."""
    test_cmd: str
    origin: str = ""
    """Where it came from, for the metadata: a path, or ``pypi:name==version``."""
    git_dir: Path | None = None
    """The original repository, for history mining."""
    notes: list[str] = field(default_factory=list)
    """Things the user should know about how the tree was taken."""


# -- trying candidates --------------------------------------------------------------------------


@dataclass
class CandidateOutcome:
    """What trying one candidate (a mutant, a commit) gave; ``f2p``/``p2p`` are set when it is ``kept``."""

    verdict: str
    """``kept``, ``equivalent``, ``timeout``, ``collection``, ``too_many``, ``no_change``, ``apply``,
    ``skipped`` (its function already has a task), ``capped`` (its kind of bug has enough tasks)."""
    mutated: str | None = None
    run: TestRun | None = None
    f2p: list[str] = field(default_factory=list)
    p2p: list[str] = field(default_factory=list)


class _Indexed(Protocol):
    index: int


_C = TypeVar("_C", bound=_Indexed)


def select_kept(cands: list[_C], outcomes: dict[int, CandidateOutcome], want: int,
                key: Callable[[_C], object], kind: Callable[[_C], object] | None = None,
                kind_cap: int | None = None) -> list[_C]:
    """The first ``want`` kept candidates in candidate order, at most one per ``key`` and at most
    ``kind_cap`` per ``kind`` (SWE-smith balances its bug kinds the same way)."""
    chosen: list[_C] = []
    keys: set = set()
    per_kind: dict[object, int] = {}
    for c in cands:
        out = outcomes.get(c.index)
        if out is None or out.verdict != "kept" or key(c) in keys:
            continue
        if kind is not None and kind_cap is not None and per_kind.get(kind(c), 0) >= kind_cap:
            continue
        chosen.append(c)
        keys.add(key(c))
        if kind is not None:
            per_kind[kind(c)] = per_kind.get(kind(c), 0) + 1
        if len(chosen) >= want:
            break
    return chosen


def run_candidates(cands: list[_C], workbenches: list[Workbench],
                   evaluate: Callable[[Workbench, _C], CandidateOutcome], want: int, progress: SynthProgress,
                   function_key: Callable[[_C], object] | None = None,
                   abort: Callable[[], None] = lambda: None, kind: Callable[[_C], object] | None = None,
                   kind_cap: int | None = None) -> tuple[list[tuple[_C, CandidateOutcome]], dict[str, int]]:
    """Evaluate candidates in order on the workbenches until ``want`` are kept; the first ``want``
    kept in candidate order (one per ``function_key``, at most ``kind_cap`` per ``kind``), and the
    count of every verdict. A candidate whose kind is already full among earlier kept ones is not
    tried (verdict ``capped``).

    An infrastructure error on one candidate gives it the verdict ``infra``; ``abort`` is called
    (to remove the containers, so that running commands end at once) when anything else
    interrupts, Ctrl-C included."""
    free = list(workbenches)
    lock = threading.Lock()
    outcomes: dict[int, CandidateOutcome] = {}
    kept_keys: dict[object, int] = {}
    key = function_key or (lambda c: c.index)
    full_kinds: set = set()
    next_i = 0

    def refresh() -> int:
        chosen = select_kept(cands[:next_i], outcomes, len(cands), key, kind, kind_cap)
        if kind is not None and kind_cap is not None:
            counts: dict[object, int] = {}
            for c in chosen:
                counts[kind(c)] = counts.get(kind(c), 0) + 1
            full_kinds.clear()
            full_kinds.update(k for k, n in counts.items() if n >= kind_cap)
        return len(chosen)

    selected = 0

    def enough() -> bool:
        return selected >= want

    def job(c: _C) -> tuple[_C, CandidateOutcome]:
        with lock:
            wb = free.pop()
        try:
            return c, evaluate(wb, c)
        except InfraError as e:
            progress.note(f"candidate {c.index}: {e}")
            if wb is not None:
                try:
                    wb.recover()
                except InfraError as again:  # said, not swallowed: later candidates on it may fail too
                    progress.note(f"candidate {c.index}: the workbench could not be reset: {again}")
            return c, CandidateOutcome("infra")
        finally:
            with lock:
                free.append(wb)

    pending: set = set()
    with ThreadPoolExecutor(max_workers=len(workbenches), thread_name_prefix="evolve-synth") as pool:
        try:
            while True:
                while len(pending) < len(workbenches) and next_i < len(cands) and not enough():
                    c = cands[next_i]
                    next_i += 1
                    k = key(c)
                    if k in kept_keys and kept_keys[k] < c.index:
                        outcomes[c.index] = CandidateOutcome("skipped")
                        continue
                    if kind is not None and kind(c) in full_kinds:
                        outcomes[c.index] = CandidateOutcome("capped")
                        continue
                    pending.add(pool.submit(job, c))
                if not pending:
                    break
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in done:
                    c, out = f.result()
                    outcomes[c.index] = out
                    if out.verdict == "kept":
                        k = key(c)
                        kept_keys[k] = min(kept_keys.get(k, c.index), c.index)
                        selected = refresh()
                    progress.advance(out.verdict == "kept")
        except BaseException:
            for f in pending:
                f.cancel()
            abort()
            raise
    chosen = [(c, outcomes[c.index]) for c in select_kept(cands[:next_i], outcomes, want, key, kind, kind_cap)]
    counts: dict[str, int] = {}
    for out in outcomes.values():
        counts[out.verdict] = counts.get(out.verdict, 0) + 1
    return chosen, counts
