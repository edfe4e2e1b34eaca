"""``evolve evals synth``: tasks from a Python repo with a pytest suite.

Two sources of tasks, both validated in Docker sandboxes and checked by the
real grader:

* **mutation** (this module): procedural bugs in the style of SWE-smith
  (``evolve.evalsets.mutate``). The original suite runs twice (the first run
  traced: which functions each test calls); tests that passed in both runs
  are *stable*, tests whose outcome differed are dropped as flaky. Only
  functions that stable tests call are mutated. Each mutant is applied in a
  reused container and the test files that call the mutated function are
  run (under three times the time they took in the traced run): FAIL_TO_PASS
  are the stable tests that now fail, PASS_TO_PASS the other stable tests of
  the failing tests' files. A mutant is dropped when no test fails
  (equivalent or untested), when a test file no longer collects, when it runs
  over its time limit, or when it breaks more than half the suite.
* **history** (``evolve.evalsets.history``): real bugs mined from commits
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

import hashlib
import os
import random
import re
import shutil
import subprocess
import tarfile
import tempfile
import threading
import time
import uuid
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from evolve.config import EvalSettings, SandboxLimits
from evolve.errors import EvolveError, InfraError
from evolve.evalsets.mutate import OPERATORS, Site, apply_site, find_sites, unified_diff
from evolve.evalsets.output import EvalSetWriter, SnapshotRepo
from evolve.evalsets.problem import leaks, mutation_statement
from evolve.evalsets.validate import JUNK_DIRS, TestRun, Workbench, tree_tar
from evolve.types import Task, TestStatus

if TYPE_CHECKING:  # pragma: no cover
    import docker

__all__ = ["NoTestsError", "Progress", "ProjectSource", "SuiteFailsError", "SynthEnv", "SynthError",
           "SynthOptions", "default_test_cmd", "mutation_tasks", "project_from_path", "synthesize", "verify"]

DEFAULT_TEST_CMD = "python3 -m pytest -rA -p no:cacheprovider --rootdir=."
"""The grader's default command plus ``--rootdir=.``: node ids are relative to /testbed whatever
test files are named on the command line."""

_TEST_FILE = re.compile(r"(^|/)test_[^/]*\.py$|(^|/)[^/]*_test\.py$")
# The grader restores paths like these to their base content before running tests (see
# evolve.grading._TEST_LIKE), so a bug in such a file could never be fixed: never mutate them.
_TEST_LIKE = re.compile(r"(^|/)(tests?|testing)/|(^|/)test_[^/]*\.py$|_test\.py$|(^|/)conftest\.py$")
_NOT_SOURCE = re.compile(r"(^|/)(setup|noxfile|fabfile|conftest)\.py$|(^|/)(docs?|examples?|benchmarks?|bench|"
                         r"scripts|tools|build|dist)/")
_SLUG = re.compile(r"[^A-Za-z0-9_.-]+")


class SynthError(EvolveError):
    """Synthesis cannot go on; the message says why and what to do."""


class NoTestsError(SynthError):
    """The project has no pytest tests."""


class SuiteFailsError(SynthError):
    """The project's test suite fails before any change."""


# -- options, environment, progress --------------------------------------------------------


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
    """Docker image for validation and for the tasks; None is evolve's base image."""
    suite_timeout_s: float = 900.0
    """Limit for one run of the whole original suite."""
    max_pass_to_pass: int = 200
    max_fail_share: float = 0.5
    """A mutant failing more than this share of the suite's stable tests is dropped."""
    holdout_fraction: float = 0.3
    max_commits: int = 300
    """History: commits examined, newest first along the first-parent chain."""
    limits: SandboxLimits = field(default_factory=SandboxLimits)

    def candidate_cap(self) -> int:
        return self.max_candidates if self.max_candidates is not None else 10 * self.max_tasks + 20


class Progress:
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


def slug(name: str) -> str:
    return _SLUG.sub("-", name).strip("-.") or "project"


def default_test_cmd(root: Path) -> str:
    """``DEFAULT_TEST_CMD``, prefixed with ``PYTHONPATH=src`` when the packages live in ``src/``."""
    src = root / "src"
    if src.is_dir() and any((p / "__init__.py").exists() or p.suffix == ".py" for p in src.iterdir()):
        top_packages = [p for p in root.iterdir() if (p / "__init__.py").exists() and p.name not in ("tests", "test")]
        if not top_packages:
            return "PYTHONPATH=src " + DEFAULT_TEST_CMD
    return DEFAULT_TEST_CMD


def project_from_path(path: Path, workdir: Path, *, name: str | None = None,
                      test_cmd: str | None = None) -> ProjectSource:
    """A ``ProjectSource`` for the repo at ``path``: its committed ``HEAD`` if it is a git
    repository (uncommitted changes are not used), else the directory as it is.

    Raises:
        SynthError: ``path`` is not a directory, or has no pytest test files.
    """
    path = Path(path).expanduser().resolve()
    if not path.is_dir():
        raise SynthError(f"{path} is not a directory: pass --repo the root of a Python project")
    root = workdir / "tree"
    root.mkdir(parents=True)
    git_dir = None
    notes: list[str] = []
    if (path / ".git").exists():
        try:
            top = subprocess.run(["git", "-C", str(path), "rev-parse", "--show-toplevel"], capture_output=True,
                                 text=True, check=True).stdout.strip()
            archive = subprocess.run(["git", "-C", str(path), "archive", "--format=tar", "HEAD"],
                                     capture_output=True, check=True).stdout
        except subprocess.CalledProcessError as e:
            err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
            said = err.strip()[-300:] or str(e)
            raise SynthError(f"cannot read the committed tree of {path} ({said}); "
                             "commit something first") from None
        if Path(top).resolve() != path:
            raise SynthError(f"{path} is inside the git repository {top}: pass --repo its top directory")
        _extract_tar(archive, root)
        git_dir = path
        status = subprocess.run(["git", "-C", str(path), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True)
        if status.stdout.strip():
            notes.append(f"{path} has uncommitted changes; synthesis uses its committed HEAD only")
    else:
        for entry in sorted(path.iterdir()):
            if entry.name in JUNK_DIRS:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.copytree(entry, root / entry.name, symlinks=True,
                                ignore=shutil.ignore_patterns(*JUNK_DIRS, "*.pyc"))
            else:
                shutil.copy2(entry, root / entry.name, follow_symlinks=False)
    project = slug(name or path.name)
    source = ProjectSource(name=project, root=root, repo=project, test_cmd=test_cmd or default_test_cmd(root),
                           origin=str(path), git_dir=git_dir, notes=notes)
    require_tests(source, where=str(path))
    return source


def _extract_tar(data: bytes, dest: Path) -> None:
    import io

    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, filter="data")
        else:  # pragma: no cover - Python < 3.11.4
            tar.extractall(dest)


def test_files_of(root: Path) -> list[str]:
    """Relative paths of the pytest test modules (``test_*.py``, ``*_test.py``) under ``root``."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in JUNK_DIRS)
        for f in sorted(filenames):
            rel = Path(dirpath, f).relative_to(root).as_posix()
            if _TEST_FILE.search(rel):
                found.append(rel)
    return found


def require_tests(source: ProjectSource, where: str) -> list[str]:
    files = test_files_of(source.root)
    if not files:
        raise NoTestsError(
            f"{where} has no pytest tests (no test_*.py or *_test.py file"
            f"{' in its committed HEAD' if source.git_dir else ''}). "
            "Synthesis needs a test suite that passes: tasks are bugs that tests catch.")
    return files


def source_files_of(root: Path) -> list[str]:
    """Relative paths of the Python modules that may be mutated."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in JUNK_DIRS)
        for f in sorted(filenames):
            rel = Path(dirpath, f).relative_to(root).as_posix()
            if f.endswith(".py") and not _TEST_LIKE.search(rel) and not _NOT_SOURCE.search(rel):
                found.append(rel)
    return found


# -- baseline -----------------------------------------------------------------------------


@dataclass
class Baseline:
    """The original suite, run twice."""

    stable: set[str]
    """Tests that passed in both runs."""
    flaky: set[str]
    failing: set[str]
    files: list[str]
    """Test files that ran (node id prefixes), in order."""
    seconds: float
    """The slower of the two runs."""
    coverage: dict[tuple[str, str], list[tuple[int, frozenset[str]]]] | None
    """(path, function name) -> [(first line, stable tests calling it)]; None without tracing."""
    file_seconds: dict[str, float] | None = None
    """Test file -> seconds its tests took in the traced run; None without tracing."""

    def timeout_for(self, files: list[str]) -> float:
        """Time limit for running ``files`` on a mutant: three times what they took, plus start-up."""
        if self.file_seconds is None:
            return max(30.0, 3 * self.seconds + 15)
        return max(20.0, 3 * sum(self.file_seconds.get(f, 1.0) for f in files) + 15)

    def tests_of(self, path: str, name: str, lines: tuple[int, int]) -> set[str]:
        if self.coverage is None:
            return set(self.stable)
        found: set[str] = set()
        for first, tests in self.coverage.get((path, name.rsplit(".", 1)[-1]), []):
            if lines[0] <= first <= lines[1]:
                found |= tests
        return found


def _failures_hint(run: TestRun, limit: int = 5) -> str:
    bad = sorted(run.failing())[:limit]
    tail = "\n".join(run.output.strip().split("\n")[-15:])
    listed = "".join(f"\n  {t}" for t in bad)
    return (f"{listed}\nlast lines of the output:\n{tail}") if bad else f"\nlast lines of the output:\n{tail}"


def run_baseline(wb: Workbench, source: ProjectSource, opts: SynthOptions, progress: Progress) -> Baseline:
    """Run the original suite twice (traced, then on the files the first run found) and check it passes.

    Raises:
        NoTestsError: pytest ran no test.
        SuiteFailsError: the suite timed out, could not be collected, or most of it fails.
    """
    progress.phase(source.name, "baseline", 2)
    first = wb.run(None, timeout_s=opts.suite_timeout_s, trace=True)
    progress.advance()
    _check_baseline(first, source, opts)
    files = []
    for test in first.statuses:
        f = test.split("::", 1)[0]
        if f not in files:
            files.append(f)
    second = wb.run(files, timeout_s=opts.suite_timeout_s)
    progress.advance()
    _check_baseline(second, source, opts)
    # Only tests in test files: the grader restores test files before running them, so a test
    # living in a source module (a doctest) would have its module reverted, fix and all.
    stable = {t for t in first.passing() & second.passing() if _TEST_LIKE.search(t.split("::", 1)[0])}
    flaky = {t for t in set(first.statuses) | set(second.statuses)
             if first.statuses.get(t) != second.statuses.get(t)}
    failing = (first.failing() | second.failing()) - flaky
    if flaky:
        progress.note(f"{source.name}: {len(flaky)} test(s) changed outcome between two runs and are not used: "
                      + ", ".join(sorted(flaky)[:3]) + (" ..." if len(flaky) > 3 else ""))
    if failing:
        progress.note(f"{source.name}: {len(failing)} test(s) fail on the original code and are not used: "
                      + ", ".join(sorted(failing)[:3]) + (" ..." if len(failing) > 3 else ""))
    if first.collection_errors:
        progress.note(f"{source.name}: test files that do not collect are not used: "
                      + ", ".join(first.collection_errors[:5]))
    if not stable:
        raise SuiteFailsError(f"the test suite of {source.origin or source.name} has no test that passes twice "
                              f"in a row; nothing to build tasks on.{_failures_hint(second)}")
    coverage = None
    if first.trace is not None:
        cov: dict[tuple[str, str], dict[int, set[str]]] = {}
        for test, funcs in first.trace.items():
            if test not in stable:
                continue
            for path, firstline, name in funcs:
                cov.setdefault((path, name), {}).setdefault(firstline, set()).add(test)
        coverage = {k: sorted((line, frozenset(ts)) for line, ts in v.items()) for k, v in cov.items()}
    else:
        progress.note(f"{source.name}: no call trace (the tracing plugin did not load); every test file runs "
                      "for every mutant")
    file_seconds = None
    if first.durations is not None:
        file_seconds = {}
        for test, secs in first.durations.items():
            f = test.split("::", 1)[0]
            file_seconds[f] = file_seconds.get(f, 0.0) + secs
    return Baseline(stable, flaky, failing, files, max(first.seconds, second.seconds), coverage, file_seconds)


def _check_baseline(run: TestRun, source: ProjectSource, opts: SynthOptions) -> None:
    where = source.origin or source.name
    if run.timed_out:
        raise SuiteFailsError(f"the test suite of {where} did not finish within {opts.suite_timeout_s:.0f} s "
                              "in the sandbox; raise --suite-timeout or point --test-cmd at a faster subset")
    ran = {t: s for t, s in run.statuses.items() if s is not TestStatus.SKIPPED}
    if not ran:
        if run.collection_errors or (run.exit_code not in (0, 5) and run.exit_code is not None):
            raise SuiteFailsError(
                f"the test suite of {where} fails before any mutation: pytest ran no test (exit {run.exit_code})"
                f"{' and could not collect ' + ', '.join(run.collection_errors[:5]) if run.collection_errors else ''}."
                f" Test command: {source.test_cmd!r} in evolve's sandbox image (python3 and pytest only, "
                f"no network); pass --test-cmd or --image if the suite needs more.{_failures_hint(run)}")
        raise NoTestsError(f"pytest found no tests to run in {where} (test command {source.test_cmd!r}); "
                           "synthesis needs a test suite that passes")
    passing = [t for t, s in ran.items() if s.passing]
    if len(passing) * 2 < len(ran):
        raise SuiteFailsError(
            f"the test suite of {where} fails before any mutation: {len(ran) - len(passing)} of {len(ran)} tests "
            f"fail with {source.test_cmd!r} in evolve's sandbox image (python3 and pytest only, no network). "
            f"Fix the suite, or pass --test-cmd/--image so that it passes.{_failures_hint(run)}")


# -- mutants ------------------------------------------------------------------------------


@dataclass
class Candidate:
    index: int
    path: str
    site: Site
    tests: frozenset[str]
    """Stable tests that call the mutated function."""

    @property
    def function_key(self) -> tuple[str, str, int]:
        return (self.path, self.site.function, self.site.func_lines[0])


@dataclass
class Outcome:
    verdict: str
    """``kept``, ``equivalent``, ``timeout``, ``collection``, ``too_many``, ``no_change``, ``apply``,
    ``skipped`` (its function already has a task)."""
    mutated: str | None = None
    run: TestRun | None = None
    f2p: list[str] = field(default_factory=list)
    p2p: list[str] = field(default_factory=list)


_OPERATOR_WEIGHT = {"change_return": 2.5, "remove_statement": 1.5, "flip_comparison": 0.8}
"""How much each use of an operator counts when candidates are ordered: ``change_return`` breaks
tests nearly always and would otherwise make most tasks; flipped comparisons are often equivalent
(``<`` vs ``<=`` away from the boundary) and get tried more."""


def order_candidates(sites: dict[str, list[Site]], baseline: Baseline, seed: int, project: str) -> list[Candidate]:
    """Candidates in the seed's order: functions shuffled, then one site per function per round,
    cycling through the operators, so early candidates spread over functions and operators."""
    rng = random.Random(f"{seed}:{project}")
    by_function: dict[tuple[str, str, int], list[tuple[Site, frozenset[str]]]] = {}
    for path in sorted(sites):
        for site in sites[path]:
            tests = frozenset(baseline.tests_of(path, site.function, site.func_lines))
            if not tests:
                continue
            by_function.setdefault((path, site.function, site.func_lines[0]), []).append((site, tests))
    keys = sorted(by_function)
    rng.shuffle(keys)
    rank = list(OPERATORS)
    rng.shuffle(rank)
    used = {op: 0 for op in OPERATORS}
    queues: list[tuple[str, dict[str, list[tuple[Site, frozenset[str]]]]]] = []
    for key in keys:
        items = by_function[key]
        rng.shuffle(items)
        per_op: dict[str, list[tuple[Site, frozenset[str]]]] = {}
        for site, tests in items:
            per_op.setdefault(site.operator, []).append((site, tests))
        queues.append((key[0], per_op))
    ordered: list[Candidate] = []
    while True:
        added = False
        for path, per_op in queues:
            ops = [op for op, q in per_op.items() if q]
            if not ops:
                continue
            # The operator used least so far (weighted): tasks spread over the kinds of bug.
            op = min(ops, key=lambda o: (used[o] * _OPERATOR_WEIGHT.get(o, 1.0), rank.index(o)))
            used[op] += 1
            site, tests = per_op[op].pop(0)
            ordered.append(Candidate(len(ordered), path, site, tests))
            added = True
        if not added:
            return ordered


def evaluate_mutant(wb: Workbench, cand: Candidate, original: str, baseline: Baseline,
                    opts: SynthOptions) -> Outcome:
    """Apply one mutant in ``wb``, run the test files that call its function, classify it."""
    mutated = apply_site(original, cand.site)
    if mutated is None:
        return Outcome("no_change")
    diff = unified_diff(cand.path, original, mutated)
    files = sorted({t.split("::", 1)[0] for t in cand.tests})
    run = wb.run(files, diffs=[diff], timeout_s=baseline.timeout_for(files))
    if not run.applied:
        return Outcome("apply", mutated, run)
    if run.timed_out:
        return Outcome("timeout", mutated, run)
    if run.collection_errors or not run.finished:
        return Outcome("collection", mutated, run)
    in_files = sorted(t for t in baseline.stable if t.split("::", 1)[0] in files)
    if any(t not in run.statuses for t in in_files):
        return Outcome("collection", mutated, run)  # tests vanished: parametrization or collection changed
    f2p = [t for t in in_files if run.statuses[t] in (TestStatus.FAILED, TestStatus.ERROR)]
    if not f2p:
        return Outcome("equivalent", mutated, run)
    if len(f2p) > opts.max_fail_share * len(baseline.stable):
        return Outcome("too_many", mutated, run)
    # PASS_TO_PASS from the files of the failing tests only, as SWE-bench takes them from the files
    # the test patch touches: fewer unrelated (possibly timing-sensitive) tests, faster grading.
    f2p_files = {t.split("::", 1)[0] for t in f2p}
    p2p = [t for t in in_files if t.split("::", 1)[0] in f2p_files and run.statuses[t].passing]
    p2p = p2p[: opts.max_pass_to_pass]
    return Outcome("kept", mutated, run, f2p, p2p)


def run_candidates(cands: list[Candidate], workbenches: list[Workbench],
                   evaluate: Callable[[Workbench, Candidate], Outcome], want: int, progress: Progress,
                   function_key: Callable[[Candidate], object] | None = None,
                   abort: Callable[[], None] = lambda: None) -> tuple[list[tuple[Candidate, Outcome]], dict[str, int]]:
    """Evaluate candidates in order on the workbenches until ``want`` are kept; the first ``want``
    kept in candidate order (one per ``function_key``), and the count of every verdict.

    An infrastructure error on one candidate gives it the verdict ``infra``; ``abort`` is called
    (to remove the containers, so that running commands end at once) when anything else
    interrupts, Ctrl-C included."""
    free = list(workbenches)
    lock = threading.Lock()
    outcomes: dict[int, Outcome] = {}
    kept_keys: dict[object, int] = {}
    key = function_key or (lambda c: c.index)

    def enough() -> bool:
        return len(kept_keys) >= want

    def job(c: Candidate) -> tuple[Candidate, Outcome]:
        with lock:
            wb = free.pop()
        try:
            return c, evaluate(wb, c)
        except InfraError as e:
            progress.note(f"candidate {c.index}: {e}")
            if wb is not None:
                try:
                    wb.recover()
                except InfraError:
                    pass
            return c, Outcome("infra")
        finally:
            with lock:
                free.append(wb)

    next_i = 0
    pending: set = set()
    with ThreadPoolExecutor(max_workers=len(workbenches), thread_name_prefix="evolve-synth") as pool:
        try:
            while True:
                while len(pending) < len(workbenches) and next_i < len(cands) and not enough():
                    c = cands[next_i]
                    next_i += 1
                    k = key(c)
                    if k in kept_keys and kept_keys[k] < c.index:
                        outcomes[c.index] = Outcome("skipped")
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
                    progress.advance(out.verdict == "kept")
        except BaseException:
            for f in pending:
                f.cancel()
            abort()
            raise
    chosen: list[tuple[Candidate, Outcome]] = []
    used: set = set()
    for c in cands[:next_i]:
        out = outcomes.get(c.index)
        if out is None or out.verdict != "kept" or key(c) in used:
            continue
        if len(chosen) < want:
            chosen.append((c, out))
            used.add(key(c))
    counts: dict[str, int] = {}
    for out in outcomes.values():
        counts[out.verdict] = counts.get(out.verdict, 0) + 1
    return chosen, counts


def start_workbenches(env: SynthEnv, source: ProjectSource, n: int) -> list[Workbench]:
    """``n`` started workbenches holding ``source`` (started in parallel)."""
    tree = tree_tar(source.root)
    wbs = [env.workbench(source.test_cmd) for _ in range(max(1, n))]
    errors: list[BaseException] = []

    def start(wb: Workbench) -> None:
        try:
            wb.start(tree)
        except BaseException as e:  # noqa: BLE001 - re-raised below
            errors.append(e)

    threads = [threading.Thread(target=start, args=(wb,)) for wb in wbs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        for wb in wbs:
            wb.close()
        raise errors[0]
    return wbs


def mutation_tasks(source: ProjectSource, repo: SnapshotRepo, env: SynthEnv, opts: SynthOptions,
                   progress: Progress, stats: dict) -> list[Task]:
    """Up to ``opts.max_tasks`` validated mutation tasks of ``source``; their snapshots go to ``repo``.

    ``stats`` gets the counts: sites, candidates tried, verdicts, tests.

    Raises:
        NoTestsError, SuiteFailsError: see ``run_baseline``.
    """
    started = time.monotonic()
    require_tests(source, where=source.origin or source.name)
    wbs = start_workbenches(env, source, opts.workers)
    try:
        baseline = run_baseline(wbs[0], source, opts, progress)
        originals: dict[str, str] = {}
        sites: dict[str, list[Site]] = {}
        for path in source_files_of(source.root):
            try:
                text = (source.root / path).read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue
            found = find_sites(text)
            if found:
                originals[path], sites[path] = text, found
        cands = order_candidates(sites, baseline, opts.seed, source.name)
        cands = cands[: opts.candidate_cap()]
        stats.update(tests=len(baseline.stable), flaky=len(baseline.flaky), failing_before=len(baseline.failing),
                     sites=sum(len(s) for s in sites.values()), candidates=len(cands),
                     baseline_seconds=round(baseline.seconds, 2))
        if not cands:
            progress.note(f"{source.name}: no mutable code is called by the passing tests")
            return []
        progress.phase(source.name, "mutants", len(cands))
        chosen, counts = run_candidates(
            cands, wbs, lambda wb, c: evaluate_mutant(wb, c, originals[c.path], baseline, opts),
            opts.max_tasks, progress, function_key=lambda c: c.function_key, abort=env.cleanup)
    finally:
        for wb in wbs:
            wb.close()
    tried = sum(v for k, v in counts.items() if k != "skipped")
    stats.update(tried=tried, verdicts=counts, mutants_kept=counts.get("kept", 0))
    index = repo.index_of(source.root)
    tasks = []
    for cand, out in chosen:
        tasks.append(_mutation_task(source, repo, index, cand, out, originals[cand.path], opts))
    stats["mutation_seconds"] = round(time.monotonic() - started, 1)
    return tasks


def _mutation_task(source: ProjectSource, repo: SnapshotRepo, index: Path, cand: Candidate, out: Outcome,
                   original: str, opts: SynthOptions) -> Task:
    assert out.mutated is not None and out.run is not None
    digest = hashlib.sha256(f"{source.name}\0{cand.path}\0{out.mutated}".encode()).hexdigest()[:8]
    instance_id = f"{source.name}__mut-{digest}"
    fix = unified_diff(cand.path, out.mutated, original)
    statement = mutation_statement(out.f2p, out.run.output, fix)
    assert not leaks(statement, fix), instance_id
    base = repo.commit(index, f"tasks/{instance_id}", f"evolve synth: {instance_id}",
                       overrides={cand.path: out.mutated.encode("utf-8")})
    return Task(instance_id=instance_id, repo=source.repo, base_commit=base, problem_statement=statement,
                patch=fix, test_patch="", FAIL_TO_PASS=out.f2p, PASS_TO_PASS=out.p2p, test_cmd=source.test_cmd,
                image=opts.image, repo_path=f"repos/{source.name}",
                synth={"kind": "mutation", "operator": cand.site.operator, "file": cand.path,
                       "function": cand.site.function, "line": cand.site.line, "seed": opts.seed})


# -- verification with the real grader ---------------------------------------------------------


def verify(tasks: list[Task], root: Path, env: SynthEnv, opts: SynthOptions, progress: Progress,
           label: str = "") -> tuple[list[Task], dict[str, str]]:
    """The tasks the real grader resolves with their reference patch and not with the empty patch
    (every FAIL_TO_PASS failing); and why each other task was dropped."""
    from evolve.grading import grade
    from evolve.sandbox.docker import Sandbox

    settings = EvalSettings(model="evolve-synth", test_timeout_s=opts.suite_timeout_s, sandbox=env.limits)
    progress.phase(label, "grading", 2 * len(tasks))
    dropped: dict[str, str] = {}

    def check(task: Task) -> tuple[Task, str | None]:
        repo_dir = (root / task.repo_path).resolve() if task.repo_path else None
        for attempt in range(3):
            try:
                with Sandbox(env.client, env.image, run_id=env.run_id, limits=env.limits) as box:
                    ref = grade(box, task, repo_dir, task.patch, settings)
                progress.advance()
                if not ref.resolved:
                    bad = [t for t, s in {**ref.FAIL_TO_PASS, **ref.PASS_TO_PASS}.items() if not s.passing]
                    progress.advance()
                    return task, f"reference patch does not resolve ({ref.failure_class.value}: {bad[:3]}; {ref.notes[:5]})"
                with Sandbox(env.client, env.image, run_id=env.run_id, limits=env.limits) as box:
                    empty = grade(box, task, repo_dir, "", settings)
                progress.advance()
                passing = [t for t, s in empty.FAIL_TO_PASS.items() if s.passing]
                if empty.resolved or passing:
                    return task, f"FAIL_TO_PASS tests pass without the fix: {passing[:3]}"
                return task, None
            except InfraError as e:
                if attempt == 2:
                    return task, f"grader infrastructure error: {e}"
        return task, "unreachable"

    kept: list[Task] = []
    with ThreadPoolExecutor(max_workers=max(1, opts.workers), thread_name_prefix="evolve-verify") as pool:
        for task, reason in pool.map(check, tasks):
            if reason is None:
                kept.append(task)
            else:
                dropped[task.instance_id] = reason
    return kept, dropped


# -- the command --------------------------------------------------------------------------------


def synthesize(repo_path: Path, dest: Path, *, sources: tuple[str, ...] = ("mutation",), name: str | None = None,
               opts: SynthOptions = SynthOptions(), progress: Progress | None = None,
               env: SynthEnv | None = None) -> dict:
    """``evolve evals synth``: build the eval set ``dest`` from the repo at ``repo_path``.

    Returns the metadata written to ``synth.json`` (counts, timings, drops).

    Raises:
        NoTestsError, SuiteFailsError, SynthError: bad input; nothing is written.
        OutputError: ``dest`` exists and is not evolve's.
    """
    from evolve.evalsets.output import check_destination

    progress = progress or Progress()
    bad = [s for s in sources if s not in ("mutation", "history")]
    if bad or not sources:
        raise SynthError(f"unknown task source {bad[0] if bad else ''!r}: use --from mutation, --from history "
                         "or --from mutation,history")
    dest = Path(dest).expanduser().absolute()
    check_destination(dest)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="evolve-synth-") as tmp:
        source = project_from_path(Path(repo_path), Path(tmp), name=name, test_cmd=opts.test_cmd)
        for note in source.notes:
            progress.note(note)
        if "history" in sources and source.git_dir is None:
            raise SynthError(f"{repo_path} is not a git repository: --from history mines its commits")
        own_env = env is None
        env = env or SynthEnv.connect(opts.image, opts.limits)
        try:
            with EvalSetWriter(dest, name=dest.name,
                               description=f"tasks synthesized from {source.origin} ({', '.join(sources)})") as writer:
                repo = writer.repo(source.name)
                stats: dict = {"origin": source.origin, "test_cmd": source.test_cmd}
                tasks: list[Task] = []
                if "mutation" in sources:
                    mstats: dict = {}
                    tasks += mutation_tasks(source, repo, env, opts, progress, mstats)
                    stats["mutation"] = mstats
                if "history" in sources:
                    from evolve.evalsets.history import history_tasks

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
