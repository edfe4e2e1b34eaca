"""Git on the host (evolve.hostgit): a user's git config, hooks and fsmonitor never run or fail
evolve's git, while the user's repository is still read as it is. Real git, real files."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from evolve.hostgit import Repo
from evolve.lineage import Lineage, candidate_trailers
from evolve.synth.source import project_from_path


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=u", "-c", "user.email=u@u", *args], cwd=cwd, capture_output=True,
                          text=True, check=True).stdout.strip()


def user_repo(root: Path) -> Path:
    """A committed repository with a package, its tests and a harness."""
    (root / "harness").mkdir(parents=True)
    (root / "harness" / "prompt.txt").write_text("solve it\n")
    (root / "calc.py").write_text("def add(a, b):\n    return a + b\n")
    (root / "test_calc.py").write_text("from calc import add\n\n\ndef test_add():\n    assert add(1, 2) == 3\n")
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "first")
    return root


@pytest.fixture
def hostile_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A user whose global git config signs every commit with a gpg that fails and runs hooks that
    fail and leave a marker. Returns the marker's path."""
    home, marker = tmp_path / "home", tmp_path / "hook-ran"
    hooks = home / "hooks"
    hooks.mkdir(parents=True)
    for hook in ("pre-commit", "commit-msg", "post-commit", "post-checkout", "reference-transaction"):
        (hooks / hook).write_text(f"#!/bin/sh\necho {hook} >> {marker}\nexit 1\n")
        (hooks / hook).chmod(0o755)
    (home / "gpg").write_text("#!/bin/sh\nexit 1\n")
    (home / "gpg").chmod(0o755)
    (home / ".gitconfig").write_text(f"[commit]\n\tgpgsign = true\n[gpg]\n\tprogram = {home / 'gpg'}\n"
                                     f"[core]\n\thooksPath = {hooks}\n[user]\n\tname = u\n\temail = u@u\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("GIT_CONFIG_GLOBAL", raising=False)
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    return marker


def test_lineage_commits_ignore_the_users_signing_and_hooks(tmp_path: Path, hostile_user: Path) -> None:
    repo = tmp_path / "proj"
    repo.mkdir()
    (repo / "harness").mkdir()
    (repo / "harness" / "prompt.txt").write_text("solve it\n")
    for args in (["init", "-q"], ["add", "-A"], ["-c", "commit.gpgsign=false", "-c", "core.hooksPath=/dev/null",
                                                 "commit", "-qm", "first"]):
        subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)
    with pytest.raises(subprocess.CalledProcessError):  # the user's own git does fail here
        subprocess.run(["git", "commit", "-q", "--allow-empty", "-m", "x"], cwd=repo, check=True, capture_output=True)
    hostile_user.unlink(missing_ok=True)

    lin = Lineage(repo, "r1", repo / "runs" / "r1" / "worktrees")
    base = lin.start()
    wt = lin.worktree(1)
    (wt / "harness" / "prompt.txt").write_text("reproduce first\n")
    cand = lin.commit_candidate(1, wt, "reproduce first", candidate_trailers("r1", 1, base, ["harness/prompt.txt"]))
    verdict = lin.commit_verdict(1, "accept", {"Evolve-Run": "r1", "Evolve-Generation": "1",
                                               "Evolve-Verdict": "accepted"})
    lin.move_best(verdict, base)
    lin.drop_worktree(1)

    assert cand and lin.sha(lin.refs.best) == verdict
    assert lin.verdict_of(1) == (verdict, {"Evolve-Run": "r1", "Evolve-Generation": "1",
                                           "Evolve-Verdict": "accepted"})
    assert lin.tree_files(verdict, "harness") == {"prompt.txt": "reproduce first\n"}
    assert git(repo, "log", "-1", "--format=%an <%ae>|%G?", cand) == "evolve <evolve@localhost>|N"
    assert not hostile_user.exists(), hostile_user.read_text()
    # The user's checkout is untouched.
    assert (repo / "harness" / "prompt.txt").read_text() == "solve it\n"
    assert git(repo, "status", "--porcelain", "--untracked-files=no") == ""


def test_synth_reads_a_repo_without_running_its_fsmonitor(tmp_path: Path) -> None:
    repo = user_repo(tmp_path / "proj")
    marker = tmp_path / "fsmonitor-ran"
    git(repo, "config", "core.fsmonitor", f"touch {marker}; false")
    subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True)
    assert marker.exists(), "plain git status runs the repository's fsmonitor command"
    marker.unlink()
    (repo / "calc.py").write_text("def add(a, b):\n    return a - b\n")  # uncommitted

    source = project_from_path(repo, tmp_path / "work")

    assert not marker.exists()
    assert (source.root / "calc.py").read_text() == "def add(a, b):\n    return a + b\n"
    assert any("uncommitted changes" in n for n in source.notes)


def test_repo_keeps_the_repositorys_own_file_mode_setting(tmp_path: Path) -> None:
    repo = user_repo(tmp_path / "proj")
    git(repo, "config", "core.filemode", "false")
    os.chmod(repo / "calc.py", 0o755)  # on this file system a mode change git must not see
    wt = Repo(repo).add_worktree(tmp_path / "wt", "HEAD", branch="side")
    os.chmod(wt.root / "calc.py", 0o755)
    (wt.root / "harness" / "prompt.txt").write_text("changed\n")
    sha = wt.commit_all("change\n\nEvolve-Run: x\n")
    assert git(repo, "diff", "--name-only", "HEAD", sha) == "harness/prompt.txt"
    assert Repo(repo).trailers(sha) == {"Evolve-Run": "x"}
    assert Repo.find(repo / "harness") is not None and Repo.find(repo / "harness", search_parents=False) is None


def test_git_calls_leave_nothing_behind_in_tmp_even_when_the_process_is_killed(tmp_path):
    """A killed evolve process (kill -9, os._exit) must not leave a scratch directory per process."""
    import sys

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    code = ("import os; from evolve import hostgit; hostgit.text(['init', '-q', %r]); "
            "hostgit.text(['status'], cwd=%r); os._exit(0)" % (str(tmp_path / "r"), str(tmp_path / "r")))
    subprocess.run([sys.executable, "-c", code], env={**os.environ, "TMPDIR": str(scratch)}, check=True)
    assert (tmp_path / "r" / ".git").is_dir()
    assert list(scratch.iterdir()) == []
