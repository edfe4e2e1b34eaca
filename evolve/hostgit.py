"""Git on the host, run one safe way.

Every call gets only git's defaults: no system or user config (``GIT_CONFIG_NOSYSTEM``,
``GIT_CONFIG_GLOBAL=/dev/null``, ``HOME`` a scratch directory), no hooks, no fsmonitor, no
prompts, a fixed identity (``evolve <evolve@localhost>``) and fixed line-ending, symlink and
file-mode handling, so nothing on the host can change what git writes. A repository's own
``.git/config`` still counts, as it must. A failure raises ``HostGitError`` with git's output.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

from evolve.errors import EvolveError

IDENTITY = ("evolve", "evolve@localhost")
"""Author and committer of every commit evolve makes on the host."""
CONFIG = ("core.hooksPath=/dev/null", "core.fsmonitor=false", "safe.directory=*", "init.defaultBranch=main",
          "core.autocrlf=false", "core.symlinks=true", "core.filemode=true", "commit.gpgsign=false",
          f"user.name={IDENTITY[0]}", f"user.email={IDENTITY[1]}")
"""``-c`` settings given to every host git command."""


class HostGitError(EvolveError):
    """A git command on the host failed; the message has its output."""

    def __init__(self, args: list[str], returncode: int, output: str) -> None:
        super().__init__(f"git {' '.join(args[:3])} failed on the host (exit {returncode}): {output[-800:]}")
        self.returncode = returncode
        self.output = output


def run(args: list[str], *, cwd: Path | str | None = None, env: dict[str, str] | None = None,
        input: bytes | None = None, home: Path | str | None = None, date: str | None = None,
        only: Path | str | None = None) -> bytes:
    """Run ``git ARGS`` on the host (see the module) and return its standard output.

    ``env`` adds variables (``GIT_INDEX_FILE``, say); ``home`` is ``HOME`` (default: the system's
    temporary directory); ``date`` fixes the author and committer dates; ``only`` makes git use
    the repository at that path and never search its parent directories.

    Raises:
        HostGitError: git exited nonzero, or could not be run.
    """
    full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home or tempfile.gettempdir()),
                "LANG": "C", "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull,
                "GIT_TERMINAL_PROMPT": "0", "GIT_AUTHOR_NAME": IDENTITY[0], "GIT_AUTHOR_EMAIL": IDENTITY[1],
                "GIT_COMMITTER_NAME": IDENTITY[0], "GIT_COMMITTER_EMAIL": IDENTITY[1]}
    if date is not None:
        full_env["GIT_AUTHOR_DATE"] = full_env["GIT_COMMITTER_DATE"] = date
    if only is not None:
        full_env["GIT_CEILING_DIRECTORIES"] = str(Path(only).resolve().parent)
    full_env.update(env or {})
    cmd = ["git"] + [a for c in CONFIG for a in ("-c", c)] + list(args)
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
