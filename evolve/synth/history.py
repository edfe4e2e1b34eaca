"""``evolve evals synth --from history``: real bugs mined from a repo's git history.

As in R2E-Gym, a commit that changes both code and tests is a candidate:

* the base is the commit's parent, stored as a parentless commit (no future
  history: nothing in the snapshot repository holds the fix);
* the code diff (non-test files; documentation and changelogs left out)
  becomes the reference ``patch``, the diff of test files the ``test_patch``;
* validation in a sandbox, each state run twice: the test files the commit
  touches are run on the base with ``test_patch`` applied, then with
  ``patch`` applied too. FAIL_TO_PASS are the tests that fail in both runs
  without the fix and pass in both with it (a test module that does not
  import without the fix counts as failing, as in SWE-bench);
  PASS_TO_PASS pass in all four runs;
* the problem statement is the commit message and, for the FAIL_TO_PASS tests
  that already exist in the agent's checkout and fail there, their ids and
  failing output as the agent will see them (a run on the base without the
  test patch); tests only the hidden test patch has are never named. Never
  the patch.

Before any commit, the whole suite runs once on HEAD: if no test passes, the
setup is wrong (a missing dependency, a wrong test command) and mining stops
with a diagnosis quoting the output.

Commits are examined newest first along the main line (``git rev-list
--first-parent HEAD``, at most ``max_commits``): a merge commit stands for its
branch, diffed against its first parent, and the branch's intermediate commits
are not taken (``first_parent=False``: every non-merge commit instead). Commits
with binary changes or large code diffs are skipped. Why each commit was not
taken is kept in the stats: ``not_candidates`` (short sha to why it was not
validated) and ``dropped`` (candidates validated and not kept, with the reason).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from evolve import hostgit, owner
from evolve.errors import InfraError, SuiteFailsError
from evolve.synth.env import (NOT_SOURCE, TEST_FILE, CandidateOutcome, ProjectSource, SynthEnv, SynthOptions,
                              SynthProgress, run_candidates)
from evolve.synth.output import SnapshotRepo
from evolve.synth.problem import history_statement, leaks
from evolve.synth.source import extract_tar
from evolve.synth.validate import TestRun
from evolve.testfiles import TEST_LIKE
from evolve.types import Task, TestStatus

__all__ = ["Commit", "history_tasks", "mine_commits"]

MAX_PATCH_LINES = 400
"""Changed lines of the code diff, at most."""
MAX_PATCH_FILES = 10
_PATCH = ("diff", "--no-renames", "--no-color", "--no-ext-diff", "--no-textconv")
"""A diff ``git apply`` takes: no external diff or textconv command of the repository's config runs."""
_DOC = re.compile(r"(^|/)(docs?|changelog\.d|changes)/|\.(md|rst|txt|adoc)$|(^|/)(CHANGELOG|CHANGES|NEWS|HISTORY|"
                  r"AUTHORS|CONTRIBUTORS)[^/]*$", re.I)


class Commit:
    """A candidate commit: its parent, message and the split of its diff."""

    def __init__(self, index: int, sha: str, parent: str, message: str, patch: str, test_patch: str,
                 test_files: list[str]) -> None:
        self.index, self.sha, self.parent, self.message = index, sha, parent, message
        self.patch, self.test_patch, self.test_files = patch, test_patch, test_files


def _git(git_dir: Path, *args: str) -> str:
    """``git ARGS`` in the user's repository ``git_dir``, through ``evolve.hostgit`` (no user config, hooks
    or fsmonitor)."""
    return hostgit.text(list(args), only=git_dir)


_SKIP_REASONS = {"no_parent": "no parent commit (the first commit)",
                 "no_code_or_tests": "does not change both Python code and a test module",
                 "binary": "has binary changes", "too_large": f"changes more than {MAX_PATCH_LINES} lines or "
                                                             f"{MAX_PATCH_FILES} files of code"}


def mine_commits(git_dir: Path, max_commits: int, stats: dict | None = None, *,
                 first_parent: bool = True) -> list[Commit]:
    """Commits of ``git_dir`` (newest first) that change Python code and test modules; see the module
    docstring for which commits are examined. ``stats`` gets ``commits``, ``candidates``, ``skipped``
    (count per reason) and ``not_candidates`` (short sha to why it is not a candidate)."""
    stats = stats if stats is not None else {}
    line = ["--first-parent"] if first_parent else ["--no-merges"]
    shas = _git(git_dir, "rev-list", *line, f"--max-count={max_commits}", "HEAD").split()
    stats["commits"] = len(shas)
    found: list[Commit] = []
    skipped = {"no_parent": 0, "no_code_or_tests": 0, "binary": 0, "too_large": 0}
    dropped: dict[str, str] = stats.setdefault("not_candidates", {})

    def skip(sha: str, why: str) -> None:
        skipped[why] += 1
        dropped[sha[:10]] = _SKIP_REASONS[why]

    for sha in shas:
        parents = _git(git_dir, "rev-list", "--parents", "-n", "1", sha).split()[1:]
        if not parents:
            skip(sha, "no_parent")
            continue
        parent = parents[0]  # a merge on the main line: the branch's change against the main line
        changes = [line.split("\t") for line in
                   _git(git_dir, "diff", "--no-renames", "--name-status", parent, sha).splitlines() if line]
        paths = [c[-1] for c in changes]
        status = {c[-1]: c[0] for c in changes}
        tests = [p for p in paths if TEST_LIKE.search(p)]
        code = [p for p in paths if p not in tests and not _DOC.search(p)]
        py_code = [p for p in code if p.endswith(".py") and not NOT_SOURCE.search(p)]
        runnable = [p for p in tests if TEST_FILE.search(p) and status[p] != "D"]
        if not py_code or not runnable:
            skip(sha, "no_code_or_tests")
            continue
        patch = _git(git_dir, *_PATCH, parent, sha, "--", *code)
        test_patch = _git(git_dir, *_PATCH, parent, sha, "--", *tests)
        if "\nBinary files " in "\n" + patch + test_patch or "GIT binary patch" in patch + test_patch:
            skip(sha, "binary")
            continue
        changed = sum(1 for l in patch.split("\n") if l[:1] in "+-" and not l.startswith(("+++", "---")))
        if changed > MAX_PATCH_LINES or len(code) > MAX_PATCH_FILES:
            skip(sha, "too_large")
            continue
        message = _git(git_dir, "log", "-1", "--format=%B", sha)
        found.append(Commit(len(found), sha, parent, message, patch, test_patch, runnable))
    stats.update(candidates=len(found), skipped=skipped)
    return found


_VERDICTS = {"apply": "its diff does not apply to its parent's tree",
             "timeout": "its tests ran over the suite timeout",
             "collection": "its test files do not collect with the fix applied",
             "equivalent": "no test fails without the fix and passes with it (a refactor, or the tests do not "
                           "check the change)",
             "infra": "the sandbox failed while validating it",
             "skipped": "enough tasks were kept before it"}


def _evaluate(commit: Commit, git_dir: Path, source: ProjectSource, env: SynthEnv, opts: SynthOptions,
              visible: dict[str, TestRun]) -> CandidateOutcome:
    """Validate ``commit``; for a kept one, ``visible[commit.sha]`` is the run of its FAIL_TO_PASS tests'
    files that exist at the base, on the base as the agent gets it (no test patch)."""
    tree = _git_archive(git_dir, commit.parent)
    wb = env.workbench(source.test_cmd)
    try:
        wb.start(tree)
        runs: dict[str, list[TestRun]] = {"before": [], "after": []}
        for _ in range(2):
            for state, diffs in (("before", [commit.test_patch]), ("after", [commit.test_patch, commit.patch])):
                run = wb.run(commit.test_files, diffs=diffs, timeout_s=opts.suite_timeout_s)
                if not run.applied:
                    return CandidateOutcome("apply", run=run)
                if run.timed_out:
                    return CandidateOutcome("timeout", run=run)
                runs[state].append(run)
        before, after = runs["before"], runs["after"]
        fixed = after[0].passing() & after[1].passing()
        if any(r.collection_errors for r in after):
            return CandidateOutcome("collection", run=before[0])
        # Failing (or absent) in both runs without the fix, passing in both with it.
        f2p = [t for t in sorted(fixed) if not any(r.statuses.get(t, TestStatus.MISSING).passing for r in before)]
        if not f2p:
            return CandidateOutcome("equivalent", run=before[0])
        p2p = [t for t in sorted(fixed) if all(r.statuses.get(t, TestStatus.MISSING).passing for r in before)]
        at_base = [f for f in dict.fromkeys(t.split("::", 1)[0] for t in f2p) if _exists(git_dir, commit.parent, f)]
        if at_base:
            visible[commit.sha] = wb.run(at_base, timeout_s=opts.suite_timeout_s)
    finally:
        wb.close()
    return CandidateOutcome("kept", None, before[0], f2p, p2p[: opts.max_pass_to_pass])


def _exists(git_dir: Path, rev: str, path: str) -> bool:
    try:
        hostgit.run(["cat-file", "-e", f"{rev}:{path}"], only=git_dir)
        return True
    except hostgit.HostGitError:
        return False


def check_head(source: ProjectSource, env: SynthEnv, opts: SynthOptions, progress: SynthProgress) -> TestRun:
    """Run the whole suite once on HEAD, before any commit is mined.

    Raises:
        SuiteFailsError: no test passes on HEAD (or the run times out): the message quotes the
            collection errors and the error lines of the output, and says what to fix.
    """
    assert source.git_dir is not None
    progress.phase(source.name, "head", 1)
    wb = env.workbench(source.test_cmd)
    try:
        wb.start(_git_archive(source.git_dir, "HEAD"))
        run = wb.run(None, timeout_s=opts.suite_timeout_s)
    finally:
        wb.close()
    progress.advance()
    if run.timed_out:
        raise SuiteFailsError(f"{source.name}: the test suite on HEAD ran over {opts.suite_timeout_s:.0f} s; raise "
                              "--suite-timeout, or give a --test-cmd that runs fewer tests")
    failing = sorted(run.failing())
    if not run.passing():
        raise SuiteFailsError(f"{source.name}: no test passes on HEAD with `{source.test_cmd}`, so no commit "
                              f"could be validated; mining stopped before it started.\n{diagnosis(run)}")
    if failing or run.collection_errors:
        progress.note(f"{source.name}: on HEAD {len(failing)} test(s) fail and {len(run.collection_errors)} "
                      f"file(s) do not collect ({', '.join((run.collection_errors + failing)[:5])}"
                      f"{' ...' if len(failing) + len(run.collection_errors) > 5 else ''}); commits whose tests "
                      "need them will not validate")
    return run


_ERROR_LINE = re.compile(r"(^E\s|Error\b|Exception\b|^ERROR\b|No module named|not found|^FAILED\b)")


def diagnosis(run: TestRun, max_lines: int = 25) -> str:
    """What went wrong in ``run``, from its output: collection errors, the error lines (not only the
    tail), the final summary, and what to do."""
    lines = [line.rstrip() for line in run.output.splitlines()]
    errors = list(dict.fromkeys(line for line in lines if _ERROR_LINE.search(line)))
    parts = []
    if run.collection_errors:
        parts.append("test files that do not collect: " + ", ".join(run.collection_errors[:10]))
    if errors:
        parts.append("errors in the output:\n  " + "\n  ".join(errors[:max_lines]))
    tail = next((line for line in reversed(lines) if line.strip()), "")
    parts.append(f"last line: {tail}" if tail else "the test command printed nothing")
    parts.append("Install the project's test dependencies in --image, or give --test-cmd "
                 "(for a src layout: PYTHONPATH=src python3 -m pytest)")
    return "\n".join(parts)


def _git_archive(git_dir: Path, rev: str) -> bytes:
    try:
        return hostgit.run(["archive", "--format=tar", rev], only=git_dir)
    except hostgit.HostGitError as e:
        raise InfraError("git", f"git archive {rev} failed: {e.output[-300:]}") from None


def history_tasks(source: ProjectSource, repo: SnapshotRepo, env: SynthEnv, opts: SynthOptions,
                  progress: SynthProgress, stats: dict) -> list[Task]:
    """Up to ``opts.max_tasks`` validated tasks mined from the history of ``source.git_dir``."""
    assert source.git_dir is not None
    started = time.monotonic()
    commits = mine_commits(source.git_dir, opts.max_commits, stats, first_parent=opts.first_parent)
    if not commits:
        progress.note(f"{source.name}: no commit among the last {stats.get('commits', 0)} changes both code "
                      "and test modules")
        stats.update(tried=0, verdicts={})
        return []
    check_head(source, env, opts, progress)
    progress.phase(source.name, "commits", len(commits))
    slots = [None] * max(1, opts.workers)
    visible: dict[str, TestRun] = {}
    outcomes: dict[str, str] = {}

    def evaluate(_wb, c: Commit) -> CandidateOutcome:
        out = _evaluate(c, source.git_dir, source, env, opts, visible)
        outcomes[c.sha] = out.verdict
        return out

    chosen, counts = run_candidates(commits, slots,  # type: ignore[arg-type]
                                    evaluate, opts.max_tasks, progress, abort=env.cleanup)
    stats.update(tried=sum(counts.values()), verdicts=counts)
    kept = {c.sha for c, _ in chosen}
    dropped = stats.setdefault("dropped", {})
    for c in commits:
        if c.sha not in kept:
            verdict = outcomes.get(c.sha, "skipped")
            subject = (c.message.strip().split("\n", 1)[0] or "(no message)")[:72]
            dropped[c.sha[:10]] = f"{subject!r}: {_VERDICTS.get(verdict, verdict)}"
    tasks = []
    for commit, out in chosen:
        instance_id = f"{source.name}__hist-{commit.sha[:10]}"
        seen = visible.get(commit.sha)
        shown = [t for t in out.f2p if seen is not None and t in seen.failing()]
        statement = history_statement(commit.message, shown, seen.output if seen is not None else "", commit.patch)
        assert not leaks(statement, commit.patch), instance_id
        with owner.temp_dir("base") as tmp:
            extract_tar(_git_archive(source.git_dir, commit.parent), Path(tmp))
            base = repo.commit(repo.index_of(Path(tmp)), f"tasks/{instance_id}", f"evolve synth: {instance_id}")
        tasks.append(Task(instance_id=instance_id, repo=source.repo, base_commit=base,
                          problem_statement=statement, patch=commit.patch, test_patch=commit.test_patch,
                          FAIL_TO_PASS=out.f2p, PASS_TO_PASS=out.p2p, test_cmd=source.test_cmd,
                          image=opts.image, repo_path=f"repos/{source.name}",
                          synth={"kind": "history", "commit": commit.sha, "parent": commit.parent}))
    stats["history_seconds"] = round(time.monotonic() - started, 1)
    return tasks
