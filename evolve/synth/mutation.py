"""``evolve evals synth --from mutation``: procedural bugs in the style of SWE-smith.

Single-site mutations (``evolve.synth.mutate``) of the functions the tests
call. The original suite runs twice (the first run traced: which functions
each test calls); tests that passed in both runs are *stable*, tests whose
outcome differed are dropped as flaky. Only functions that stable tests call
are mutated. Each mutant is applied in a reused container and the test files
that call the mutated function are run (under three times the time they took
in the traced run): FAIL_TO_PASS are the stable tests that now fail,
PASS_TO_PASS the other stable tests of the failing tests' files. A mutant is
dropped when no test fails (equivalent or untested), when a test file no
longer collects, when it runs over its time limit, or when it breaks more
than half the suite.
"""

from __future__ import annotations

import hashlib
import random
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from evolve.synth.env import (CandidateOutcome, NoTestsError, ProjectSource, SuiteFailsError, SynthEnv, SynthOptions,
                              SynthProgress, run_candidates)
from evolve.synth.mutate import OPERATORS, Site, apply_site, find_sites, unified_diff
from evolve.synth.output import SnapshotRepo
from evolve.synth.problem import leaks, mutation_statement
from evolve.synth.source import require_tests, source_files_of
from evolve.synth.validate import TestRun, Workbench, tree_tar
from evolve.testfiles import TEST_LIKE
from evolve.types import Task, TestStatus

__all__ = ["Baseline", "Candidate", "evaluate_mutant", "mutation_tasks", "order_candidates", "run_baseline"]


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


def relevant_output(output: str, max_lines: int = 40) -> str:
    """The part of pytest's output that says what went wrong, then its last lines: the first error or
    failure section (``ERROR collecting ...``, ``___ test_x ___``), whole if it fits, else its
    headers and ``E`` lines (the exception pytest reports)."""
    lines = output.strip().split("\n")
    start = next((i for i, line in enumerate(lines)
                  if re.match(r"^_{3,} (ERROR collecting |test|Test)|^={3,} (ERRORS|FAILURES) ={3,}$", line)
                  or line.startswith(("ImportError", "ModuleNotFoundError", "Traceback (most recent call last)",
                                      "ERROR: "))), None)
    tail = lines[-max(2, min(12, max_lines // 3)):]
    if start is None or start >= len(lines) - len(tail):
        return "\n".join(lines[-max_lines:])
    end = next((i for i in range(start + 1, len(lines)) if re.match(r"^={3,} .* ={3,}$", lines[i])), len(lines))
    section = lines[start:min(end, len(lines) - len(tail))]
    room = max_lines - len(tail) - 1
    if len(section) > room:
        section = [line for line in section if line.startswith(("_", "E ", "ERROR"))][:room]
    return "\n".join(section + ["[...]"] + tail)


def _failures_hint(run: TestRun, limit: int = 5) -> str:
    bad = sorted(run.failing())[:limit]
    listed = "".join(f"\n  {t}" for t in bad)
    return f"{listed}\npytest said:\n{relevant_output(run.output)}"


def run_baseline(wb: Workbench, source: ProjectSource, opts: SynthOptions, progress: SynthProgress) -> Baseline:
    """Run the original suite twice (traced, then on the files the first run found) and check it passes.

    Raises:
        NoTestsError: pytest ran no test.
        SuiteFailsError: the suite timed out, could not be collected, or most of it fails.
    """
    progress.phase(source.name, "baseline", 2)
    # A test file that does not collect (a missing optional dependency, say) is dropped with a note,
    # not the end of the run: the second run, and every later one, takes only the files that ran.
    first = wb.run(None, timeout_s=opts.suite_timeout_s, trace=True, keep_going=True)
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
    stable = {t for t in first.passing() & second.passing() if TEST_LIKE.search(t.split("::", 1)[0])}
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
        progress.note(f"{source.name}: {len(first.collection_errors)} test file(s) do not collect and are not "
                      f"used: {', '.join(first.collection_errors[:5])}"
                      f"{' ...' if len(first.collection_errors) > 5 else ''}\npytest said:\n"
                      + relevant_output(first.output, max_lines=12))
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
                    opts: SynthOptions) -> CandidateOutcome:
    """Apply one mutant in ``wb``, run the test files that call its function, classify it."""
    mutated = apply_site(original, cand.site)
    if mutated is None:
        return CandidateOutcome("no_change")
    diff = unified_diff(cand.path, original, mutated)
    files = sorted({t.split("::", 1)[0] for t in cand.tests})
    run = wb.run(files, diffs=[diff], timeout_s=baseline.timeout_for(files))
    if not run.applied:
        return CandidateOutcome("apply", mutated, run)
    if run.timed_out:
        return CandidateOutcome("timeout", mutated, run)
    if run.collection_errors or not run.finished:
        return CandidateOutcome("collection", mutated, run)
    in_files = sorted(t for t in baseline.stable if t.split("::", 1)[0] in files)
    if any(t not in run.statuses for t in in_files):
        return CandidateOutcome("collection", mutated, run)  # tests vanished: parametrization or collection changed
    f2p = [t for t in in_files if run.statuses[t] in (TestStatus.FAILED, TestStatus.ERROR)]
    if not f2p:
        return CandidateOutcome("equivalent", mutated, run)
    if len(f2p) > opts.max_fail_share * len(baseline.stable):
        return CandidateOutcome("too_many", mutated, run)
    # PASS_TO_PASS from the files of the failing tests only, as SWE-bench takes them from the files
    # the test patch touches: fewer unrelated (possibly timing-sensitive) tests, faster grading.
    f2p_files = {t.split("::", 1)[0] for t in f2p}
    p2p = [t for t in in_files if t.split("::", 1)[0] in f2p_files and run.statuses[t].passing]
    p2p = p2p[: opts.max_pass_to_pass]
    return CandidateOutcome("kept", mutated, run, f2p, p2p)


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
                   progress: SynthProgress, stats: dict) -> list[Task]:
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
            opts.max_tasks, progress, function_key=lambda c: c.function_key, abort=env.cleanup,
            kind=lambda c: c.site.operator, kind_cap=opts.kind_cap())
    finally:
        for wb in wbs:
            wb.close()
    tried = sum(v for k, v in counts.items() if k not in ("skipped", "capped"))
    stats.update(tried=tried, verdicts=counts, mutants_kept=counts.get("kept", 0))
    index = repo.index_of(source.root)
    tasks = []
    for cand, out in chosen:
        tasks.append(_mutation_task(source, repo, index, cand, out, originals[cand.path], opts))
    stats["mutation_seconds"] = round(time.monotonic() - started, 1)
    return tasks


def _mutation_task(source: ProjectSource, repo: SnapshotRepo, index: Path, cand: Candidate, out: CandidateOutcome,
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
