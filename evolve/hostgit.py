"""Git on the host, run one safe way.

Every call gets only git's defaults: no system or user config (``GIT_CONFIG_NOSYSTEM``,
``GIT_CONFIG_GLOBAL=/dev/null``, ``HOME`` and ``XDG_CONFIG_HOME`` a path that cannot exist, ``NO_HOME``), no
hooks, no fsmonitor, no commit signing, no prompts and a fixed identity (``evolve <evolve@localhost>``),
so nothing on the host can run a command of its own or make git fail. A repository's own
``.git/config`` still counts, as it must. A failure raises ``HostGitError`` with git's output.

Line-ending, symlink and file-mode handling are pinned too (``PINNED``) for the repositories evolve
makes itself, so the same files always give the same ids. ``Repo`` is a repository of the user's: there
the repository's own settings decide them (``pinned=False``), since they describe its file system.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from evolve.errors import EvolveError

IDENTITY = ("evolve", "evolve@localhost")
"""Author and committer of every commit evolve makes on the host."""
SAFE = ("core.hooksPath=/dev/null", "core.fsmonitor=false", "safe.directory=*", "init.defaultBranch=main",
        "commit.gpgsign=false", "tag.gpgsign=false", f"user.name={IDENTITY[0]}", f"user.email={IDENTITY[1]}")
"""``-c`` settings given to every host git command."""
PINNED = ("core.autocrlf=false", "core.symlinks=true", "core.filemode=true")
"""``-c`` settings added unless ``pinned=False``: the content of a tree never depends on the host."""
CONFIG = SAFE + PINNED


class HostGitError(EvolveError):
    """A git command on the host failed; the message has its output."""

    def __init__(self, args: list[str], returncode: int, output: str) -> None:
        super().__init__(f"git {' '.join(args[:3])} failed on the host (exit {returncode}): {output[-800:]}")
        self.returncode = returncode
        self.output = output


def run(args: list[str], *, cwd: Path | str | None = None, env: dict[str, str] | None = None,
        input: bytes | None = None, home: Path | str | None = None, date: str | None = None,
        only: Path | str | None = None, pinned: bool = True) -> bytes:
    """Run ``git ARGS`` on the host (see the module) and return its standard output.

    ``env`` adds variables (``GIT_INDEX_FILE``, say); ``home`` is ``HOME`` (default: ``NO_HOME``, where
    no file can exist); ``date`` fixes the author and committer dates; ``only`` makes
    git use the repository at that path and never search its parent directories; ``pinned=False``
    leaves line endings, symlinks and file modes to the repository's own config.

    Raises:
        HostGitError: git exited nonzero, or could not be run.
    """
    home = str(home or NO_HOME)
    full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": home, "XDG_CONFIG_HOME": home,
                "LANG": "C", "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull,
                "GIT_TERMINAL_PROMPT": "0", "GIT_AUTHOR_NAME": IDENTITY[0], "GIT_AUTHOR_EMAIL": IDENTITY[1],
                "GIT_COMMITTER_NAME": IDENTITY[0], "GIT_COMMITTER_EMAIL": IDENTITY[1]}
    if date is not None:
        full_env["GIT_AUTHOR_DATE"] = full_env["GIT_COMMITTER_DATE"] = date
    if only is not None:
        full_env["GIT_CEILING_DIRECTORIES"] = str(Path(only).resolve().parent)
    full_env.update(env or {})
    cmd = ["git"] + [a for c in (CONFIG if pinned else SAFE) for a in ("-c", c)] + list(args)
    try:
        proc = subprocess.run(cmd, cwd=only if cwd is None and only is not None else cwd, env=full_env,
                              input=input, capture_output=True)
    except OSError as e:
        raise HostGitError(list(args), -1, f"could not run git: {e}") from None
    if proc.returncode != 0:
        raise HostGitError(list(args), proc.returncode, (proc.stdout + proc.stderr).decode("utf-8", "replace"))
    return proc.stdout


def text(args: list[str], **kwargs) -> str:
    """``run``'s output decoded as UTF-8 (with replacement)."""
    return run(args, **kwargs).decode("utf-8", "replace")


NO_HOME = os.path.join(os.devnull, "evolve-no-home")
"""``HOME`` and ``XDG_CONFIG_HOME`` of every git call: a path under the null device, which can never be
a directory, so git finds no ignore, attributes or config file of anyone's there (git treats ENOTDIR as
a missing file), and nothing is created that a killed process would leave behind (a scratch directory
per process was, in /tmp)."""


class Repo:
    """A git repository of the user's (a work tree, or a bare repository), driven through ``run``.

    Hooks, fsmonitor, signing and the user's config never apply; the repository's own config does,
    including how it handles line endings, symlinks and file modes.
    """

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        """The top of the work tree (the git directory itself for a bare repository)."""

    @classmethod
    def find(cls, path: Path | str, *, search_parents: bool = True) -> "Repo | None":
        """The repository holding ``path`` (with ``search_parents=False``: only one whose top is ``path``),
        or None if there is none."""
        path = Path(path)
        if not path.is_dir():
            return None
        only = None if search_parents else path
        try:
            bare, git_dir = text(["rev-parse", "--is-bare-repository", "--absolute-git-dir"], cwd=path,
                                 only=only).split("\n")[:2]
            if bare == "true":
                return cls(git_dir)
            return cls(text(["rev-parse", "--show-toplevel"], cwd=path, only=only).strip())
        except (HostGitError, ValueError):
            return None

    def run(self, *args: str, env: dict[str, str] | None = None, input: bytes | None = None) -> bytes:
        """``git ARGS`` in this repository; its standard output. Raises HostGitError."""
        return run(list(args), cwd=self.root, env=env, input=input, pinned=False)

    def git(self, *args: str, **kwargs) -> str:
        """``run``'s output as text, without its last newline. Raises HostGitError."""
        out = self.run(*args, **kwargs).decode("utf-8", "replace")
        return out[:-1] if out.endswith("\n") else out

    def sha(self, rev: str, kind: str = "commit") -> str | None:
        """The id of the ``kind`` (commit, tree) ``rev`` names, or None when it names none (``rev`` must not
        be ``REV:PATH``: there the peeling would be read as part of the path)."""
        try:
            return self.git("rev-parse", "--verify", "--quiet", "--end-of-options", f"{rev}^{{{kind}}}") or None
        except HostGitError:
            return None

    def update_ref(self, ref: str, new: str, old: str | None = None) -> None:
        """Point ``ref`` at ``new``; with ``old``, only if it is still there (a compare-and-swap;
        ``old=""``: only if ``ref`` does not exist yet). Raises HostGitError when it was not."""
        self.run("update-ref", "-m", "evolve", ref, new, *([] if old is None else [old]))

    def delete_ref(self, ref: str) -> None:
        self.run("update-ref", "-d", ref)

    def is_ancestor(self, a: str, b: str) -> bool:
        """Whether commit ``a`` is ``b`` or one of its ancestors."""
        try:
            self.run("merge-base", "--is-ancestor", a, b)
            return True
        except HostGitError as e:
            if e.returncode == 1:
                return False
            raise

    def add_worktree(self, path: Path, commit: str, *, branch: str | None = None) -> "Repo":
        """Check out ``commit`` in a new worktree at ``path``: on ``branch`` (created, or reset to
        ``commit``), else detached. Returns the worktree as a ``Repo``."""
        where = ["-B", branch] if branch else ["--detach"]
        self.run("worktree", "add", "--force", *where, str(path), commit)
        return Repo(path)

    def remove_worktree(self, path: Path) -> None:
        """Remove the worktree at ``path`` (its directory even if git no longer knows it), then prune."""
        if Path(path).exists():
            try:
                self.run("worktree", "remove", "--force", str(path))
            except HostGitError:
                shutil.rmtree(path, ignore_errors=True)
        self.run("worktree", "prune")

    def commit_all(self, message: str) -> str | None:
        """Commit every change in this work tree (hooks never run); the new commit, or None if nothing changed."""
        self.run("add", "-A", ".")
        if not self.git("diff", "--cached", "--name-only"):
            return None
        self.run("commit", "--no-verify", "-q", "-F", "-", input=message.encode())
        return self.git("rev-parse", "HEAD")

    def trailers(self, rev: str) -> dict[str, str]:
        """The ``Key: value`` lines of the last paragraph of commit ``rev``'s message (the last of a
        repeated key wins). Read from the message itself: git's own trailer rules skip a block that
        is the message's first paragraph."""
        out = {}
        body = self.git("log", "-1", "--format=%B", rev, "--").strip()
        for line in body.split("\n\n")[-1].splitlines():
            key, sep, value = line.partition(":")
            if sep and key and not any(c.isspace() for c in key):
                out[key] = value.strip()
        return out
