"""``evolve evals synth``: tasks from a Python repo with a pytest suite.

Two sources of tasks, both validated in Docker sandboxes and checked by the
real grader:

* **mutation** (``evolve.synth.mutation``): procedural bugs in the style of
  SWE-smith, in functions the passing tests call, kept when stable tests
  catch them;
* **history** (``evolve.synth.history``): real bugs mined from commits
  that change both code and tests, as R2E-Gym does.

Every task then goes through ``verify``: the real grader
(``evolve.grading.grade``) must resolve it with the reference ``patch`` and
must not resolve it with the empty patch, with every FAIL_TO_PASS test
failing. That is the ground truth; a task failing it is dropped.

Candidates are tried in an order fixed by the seed, several containers at a
time; the tasks kept are the first ``max_tasks`` valid candidates in that
order (one per function), so the result does not depend on timing: the
same seed gives the same tasks.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from evolve import owner
from evolve.errors import InfraError
from evolve.retry import retrying
from evolve.synth.env import ProjectSource, SynthEnv, SynthError, SynthOptions, SynthProgress
from evolve.synth.mutation import mutation_tasks
from evolve.synth.output import EvalSetWriter, check_destination
from evolve.synth.source import project_from_path
from evolve.types import Task

if TYPE_CHECKING:
    from evolve.executors import ValidationJob

__all__ = ["VERIFY_ATTEMPTS", "Verifier", "synthesize", "validate_task", "verify"]

log = logging.getLogger(__name__)

VERIFY_ATTEMPTS = 3
"""Tries of one grading (reference or empty patch) before an infrastructure error drops the task;
retried with ``evolve.retry``'s backoff, each retry logged."""


# -- verification with the real grader ---------------------------------------------------------


def validate_task(client, job: "ValidationJob") -> str | None:
    """One synthesis validation job: grade ``job.task`` with its reference patch, then (when that
    resolves it) with the empty patch, each in a fresh sandbox of ``client``'s engine, each tried
    ``VERIFY_ATTEMPTS`` times on infrastructure errors. Returns why the task is dropped, or None
    when the real grader resolves it with the reference patch only and every FAIL_TO_PASS test
    fails without it."""
    from evolve.grading import grade
    from evolve.sandbox.docker import Sandbox

    task = job.task

    def graded(patch: str):
        for attempt in retrying(f"grading {task.instance_id} ({'reference' if patch else 'empty'} patch)",
                                retry_on=InfraError, attempts=VERIFY_ATTEMPTS, logger=log):
            with attempt:
                with Sandbox(client, job.image, run_id=job.run_id, limits=job.limits) as box:
                    return grade(box, task, job.repo_dir, patch, test_timeout_s=job.test_timeout_s)

    try:
        ref = graded(task.patch)
        if not ref.resolved:
            bad = [t for t, s in {**ref.FAIL_TO_PASS, **ref.PASS_TO_PASS}.items() if not s.passing]
            return f"reference patch does not resolve ({ref.failure_class.value}: {bad[:3]}; {ref.notes[:5]})"
        empty = graded("")
    except InfraError as e:
        return f"grader infrastructure error after {VERIFY_ATTEMPTS} attempts: {e}"
    passing = [t for t, s in empty.FAIL_TO_PASS.items() if s.passing]
    if empty.resolved or passing:
        return f"FAIL_TO_PASS tests pass without the fix: {passing[:3]}"
    return None


class Verifier:
    """The real grader's check of one task at a time (thread-safe): ``check(task)`` is None when the
    grader resolves the task with its reference patch and not with the empty patch (every
    FAIL_TO_PASS failing), else why the task is dropped. Each check is one validation job
    (``validate_task``) on ``opts.executor`` (``evolve.executors``: here, or a Ray cluster), in the
    task's own image when it has one (a project's test environment, ``evolve.synth.testenv``)."""

    def __init__(self, root: Path, env: SynthEnv, opts: SynthOptions) -> None:
        from evolve.executors import make_executor

        self.root, self.env, self.opts = root, env, opts
        self.executor = make_executor(opts.executor, opts.ray_address)

    def check(self, task: Task, advance: Callable[[], None] = lambda: None) -> str | None:
        from evolve.executors import ValidationJob

        repo_dir = (self.root / task.repo_path).resolve() if task.repo_path else None
        reason = self.executor.validate(ValidationJob(task=task, repo_dir=repo_dir, image=task.image or self.env.image,
                                                      run_id=self.env.run_id, limits=self.env.limits,
                                                      test_timeout_s=self.opts.suite_timeout_s))
        advance()
        advance()
        return reason

    def close(self) -> None:
        """Wait for the background removal of the grading containers."""
        from evolve.sandbox.docker import wait_removals

        wait_removals(self.env.run_id)


def verify(tasks: list[Task], root: Path, env: SynthEnv, opts: SynthOptions, progress: SynthProgress,
           label: str = "") -> tuple[list[Task], dict[str, str]]:
    """The tasks the real grader resolves with their reference patch and not with the empty patch
    (every FAIL_TO_PASS failing); and why each other task was dropped (``Verifier``)."""
    progress.phase(label, "grading", 2 * len(tasks))
    verifier = Verifier(root, env, opts)
    dropped: dict[str, str] = {}
    kept: list[Task] = []
    try:
        with ThreadPoolExecutor(max_workers=max(1, opts.workers), thread_name_prefix="evolve-verify") as pool:
            for task, reason in zip(tasks, pool.map(lambda t: verifier.check(t, progress.advance), tasks)):
                if reason is None:
                    kept.append(task)
                else:
                    dropped[task.instance_id] = reason
    finally:
        verifier.close()
    return kept, dropped


# -- the command --------------------------------------------------------------------------------


def synthesize(repo_path: Path, dest: Path, *, sources: tuple[str, ...] = ("mutation",), name: str | None = None,
               opts: SynthOptions = SynthOptions(), progress: SynthProgress | None = None,
               env: SynthEnv | None = None) -> dict:
    """``evolve evals synth``: build the eval set ``dest`` from the repo at ``repo_path``.

    Returns the metadata written to ``synth.json`` (counts, timings, drops).

    Raises:
        NoTestsError, SuiteFailsError, SynthError: bad input; nothing is written.
        OutputError: ``dest`` exists and is not evolve's.
    """
    progress = progress or SynthProgress()
    bad = [s for s in sources if s not in ("mutation", "history")]
    if bad or not sources:
        raise SynthError(f"unknown task source {bad[0] if bad else ''!r}: use --from mutation, --from history "
                         "or --from mutation,history")
    dest = Path(dest).expanduser().absolute()
    check_destination(dest)
    started = time.monotonic()
    with owner.temp_dir("synth") as tmp:
        source = project_from_path(Path(repo_path), Path(tmp), name=name, test_cmd=opts.test_cmd)
        for note in source.notes:
            progress.note(note)
        if "history" in sources and source.git_dir is None:
            raise SynthError(f"{repo_path} is not a git repository: --from history mines its commits")
        own_env = env is None
        env = env or SynthEnv.connect(opts.image, opts.limits)
        env_meta = None
        try:
            if wants_testenv(source.root, opts):
                opts, env, env_meta = with_testenv(source, env, opts, progress)
            with EvalSetWriter(dest, name=dest.name,
                               description=f"tasks synthesized from {source.origin} ({', '.join(sources)})") as writer:
                repo = writer.repo(source.name)
                stats: dict = {"origin": source.origin, "test_cmd": source.test_cmd}
                if env_meta is not None:
                    stats["testenv"] = env_meta
                tasks: list[Task] = []
                if "mutation" in sources:
                    mstats: dict = {}
                    tasks += mutation_tasks(source, repo, env, opts, progress, mstats)
                    stats["mutation"] = mstats
                if "history" in sources:
                    from evolve.synth.history import history_tasks

                    hstats: dict = {}
                    tasks += history_tasks(source, repo, env, opts, progress, hstats)
                    stats["history"] = hstats
                kept, dropped = verify(tasks, writer.root, env, opts, progress, label=source.name)
                if not kept:
                    raise SynthError(_nothing_kept(source, sources, stats, dropped))
                for kind in sources:
                    stats[kind]["tasks"] = sum(1 for t in kept if t.model_extra["synth"]["kind"] == kind)
                meta = {"version": 1, "kind": "synth", "sources": list(sources), "seed": opts.seed,
                        "projects": {source.name: dict(stats, tasks=len(kept), dropped_by_grader=dropped)},
                        "tasks": len(kept), "seconds": round(time.monotonic() - started, 1)}
                writer.commit(kept, meta, holdout_fraction=opts.holdout_fraction)
                return meta
        finally:
            if own_env:
                env.cleanup()


def wants_testenv(root: Path, opts: SynthOptions) -> bool:
    """Whether to build the project's test-environment image (see ``SynthOptions.install``)."""
    if opts.install is not None:
        return opts.install
    if opts.image is not None:
        return False
    if opts.extras or opts.requirement_files or opts.setup_cmd:
        return True
    from evolve.synth.deps import _requirement_files

    return any((root / f).is_file() for f in ("pyproject.toml", "setup.py", "setup.cfg")) \
        or bool(_requirement_files(root))


def with_testenv(source: ProjectSource, env: SynthEnv, opts: SynthOptions,
                 progress: SynthProgress) -> tuple[SynthOptions, SynthEnv, dict]:
    """Build (or reuse) the project's test-environment image on ``env.image``; the options and the
    environment that use it, and what to record in the metadata. Adds generated files to the tree."""
    from dataclasses import replace

    from evolve.evalsets.registry import evolve_home
    from evolve.synth.testenv import EnvRequest, prepare_image

    progress.phase(source.name, "environment", None)
    request = EnvRequest(extras=tuple(opts.extras), requirement_files=opts.requirement_files, setup=opts.setup_cmd)
    made = prepare_image(env.client, env.image, source.root, source.name, request, evolve_home(),
                         run_id=env.run_id, limits=env.limits)
    progress.note(f"{source.name}: test environment {made.image} ({'cached' if made.cached else 'built'}); "
                  f"dependencies from {', '.join(made.deps.sources) or 'no file'}: "
                  f"{', '.join(made.deps.requirements) or 'none'}")
    if made.deps.skipped:
        progress.note(f"{source.name}: not requirements, left out: {'; '.join(made.deps.skipped[:5])}")
    if made.generated:
        progress.note(f"{source.name}: the install generated {', '.join(made.generated[:5])}"
                      f"{' ...' if len(made.generated) > 5 else ''}; kept in every snapshot")
    meta = {"image": made.image, "cached": made.cached, "requirements": made.deps.requirements,
            "sources": made.deps.sources, "wheels": list(made.wheels), "generated": made.generated,
            "setup": opts.setup_cmd}
    return replace(opts, image=made.image), replace(env, image=made.image), meta


def _nothing_kept(source: ProjectSource, sources: tuple[str, ...], stats: dict, dropped: dict[str, str]) -> str:
    parts = []
    m = stats.get("mutation")
    if m is not None:
        parts.append(f"mutation: {m.get('tried', 0)} mutants tried, verdicts {m.get('verdicts', {})}")
    h = stats.get("history")
    if h is not None:
        parts.append(f"history: {h.get('commits', 0)} commits examined, {h.get('candidates', 0)} change code and "
                     f"tests, verdicts {h.get('verdicts', {})}")
    if dropped:
        parts.append("dropped by the grader: " + "; ".join(f"{k}: {v}" for k, v in list(dropped.items())[:3]))
    return (f"no task could be validated for {source.origin}: " + "; ".join(parts)
            + ". Mutants need tests that call the mutated code; history needs commits whose new tests fail "
              "before the change and pass after it.")
