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
* the problem statement is the commit message and the failing output,
  never the patch.

Commits are examined newest first (``git rev-list --no-merges HEAD``, at most
``max_commits``), skipping commits with binary changes or large code diffs.
"""

from __future__ import annotations

import re
import tempfile
import time
from pathlib import Path

from evolve import hostgit
from evolve.errors import InfraError
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


def mine_commits(git_dir: Path, max_commits: int, stats: dict | None = None) -> list[Commit]:
    """Commits of ``git_dir`` (newest first) that change Python code and test modules."""
    stats = stats if stats is not None else {}
    shas = _git(git_dir, "rev-list", "--no-merges", f"--max-count={max_commits}", "HEAD").split()
    stats["commits"] = len(shas)
    found: list[Commit] = []
    skipped = {"no_parent": 0, "no_code_or_tests": 0, "binary": 0, "too_large": 0}
    for sha in shas:
        parents = _git(git_dir, "rev-list", "--parents", "-n", "1", sha).split()[1:]
        if len(parents) != 1:
            skipped["no_parent"] += 1
            continue
        parent = parents[0]
        changes = [line.split("\t") for line in
                   _git(git_dir, "diff", "--no-renames", "--name-status", parent, sha).splitlines() if line]
        paths = [c[-1] for c in changes]
        status = {c[-1]: c[0] for c in changes}
        tests = [p for p in paths if TEST_LIKE.search(p)]
        code = [p for p in paths if p not in tests and not _DOC.search(p)]
        py_code = [p for p in code if p.endswith(".py") and not NOT_SOURCE.search(p)]
        runnable = [p for p in tests if TEST_FILE.search(p) and status[p] != "D"]
        if not py_code or not runnable:
            skipped["no_code_or_tests"] += 1
            continue
        patch = _git(git_dir, *_PATCH, parent, sha, "--", *code)
        test_patch = _git(git_dir, *_PATCH, parent, sha, "--", *tests)
        if "\nBinary files " in "\n" + patch + test_patch or "GIT binary patch" in patch + test_patch:
            skipped["binary"] += 1
            continue
        changed = sum(1 for l in patch.split("\n") if l[:1] in "+-" and not l.startswith(("+++", "---")))
        if changed > MAX_PATCH_LINES or len(code) > MAX_PATCH_FILES:
            skipped["too_large"] += 1
            continue
        message = _git(git_dir, "log", "-1", "--format=%B", sha)
        found.append(Commit(len(found), sha, parent, message, patch, test_patch, runnable))
    stats.update(candidates=len(found), skipped=skipped)
    return found


def _evaluate(commit: Commit, git_dir: Path, source: ProjectSource, env: SynthEnv, opts: SynthOptions) -> CandidateOutcome:
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
    finally:
        wb.close()
    before, after = runs["before"], runs["after"]
    fixed = after[0].passing() & after[1].passing()
    if any(r.collection_errors for r in after):
        return CandidateOutcome("collection", run=before[0])
    # Failing (or absent) in both runs without the fix, passing in both with it.
    f2p = [t for t in sorted(fixed) if not any(r.statuses.get(t, TestStatus.MISSING).passing for r in before)]
    if not f2p:
        return CandidateOutcome("equivalent", run=before[0])
    p2p = [t for t in sorted(fixed) if all(r.statuses.get(t, TestStatus.MISSING).passing for r in before)]
    return CandidateOutcome("kept", None, before[0], f2p, p2p[: opts.max_pass_to_pass])


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
    commits = mine_commits(source.git_dir, opts.max_commits, stats)
    if not commits:
        progress.note(f"{source.name}: no commit among the last {stats.get('commits', 0)} changes both code "
                      "and test modules")
        stats.update(tried=0, verdicts={})
        return []
    progress.phase(source.name, "commits", len(commits))
    slots = [None] * max(1, opts.workers)
    chosen, counts = run_candidates(commits, slots,  # type: ignore[arg-type]
                                    lambda _wb, c: _evaluate(c, source.git_dir, source, env, opts),
                                    opts.max_tasks, progress, abort=env.cleanup)
    stats.update(tried=sum(counts.values()), verdicts=counts)
    tasks = []
    for commit, out in chosen:
        instance_id = f"{source.name}__hist-{commit.sha[:10]}"
        assert out.run is not None
        statement = history_statement(commit.message, out.f2p, out.run.output, commit.patch)
        assert not leaks(statement, commit.patch), instance_id
        with tempfile.TemporaryDirectory(prefix="evolve-base-") as tmp:
            extract_tar(_git_archive(source.git_dir, commit.parent), Path(tmp))
            base = repo.commit(repo.index_of(Path(tmp)), f"tasks/{instance_id}", f"evolve synth: {instance_id}")
        tasks.append(Task(instance_id=instance_id, repo=source.repo, base_commit=base,
                          problem_statement=statement, patch=commit.patch, test_patch=commit.test_patch,
                          FAIL_TO_PASS=out.f2p, PASS_TO_PASS=out.p2p, test_cmd=source.test_cmd,
                          image=opts.image, repo_path=f"repos/{source.name}",
                          synth={"kind": "history", "commit": commit.sha, "parent": commit.parent}))
    stats["history_seconds"] = round(time.monotonic() - started, 1)
    return tasks
