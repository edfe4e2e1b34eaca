"""Which process owns a leftover, told apart from a later process that got the same PID.

A PID alone is reused: after ``kill -9`` a new, unrelated process may get the
dead one's number, and a sweep trusting ``os.kill(pid, 0)`` would then keep
the leftovers forever. An owner is therefore named by

* the boot (``/proc/sys/kernel/random/boot_id``, first 8 hex digits),
* the PID,
* the process's start time (field 22 of ``/proc/<pid>/stat``, clock ticks
  since boot),

written ``<boot8>-<pid>-<start>`` (``OWNER``). No two processes of one boot
share PID and start time, and a token of another boot is dead. Without
``/proc`` (not Linux) the start time is 0 and only the PID can be checked.

The token goes where a sweep looks: the ``evolve.owner`` label of every
container (``evolve.sandbox.docker``), the name of each process's directory
of temporary files (``scratch``: ``/tmp/evolve-<owner>-XXXXXXXX``, holding every ``temp_dir``) and of the
atomic-write temporary files (``evolve.store.atomic_write``), and the
``owner`` field of an evaluation's run.json.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import shutil
import stat
import sys
import tempfile
import threading
from functools import lru_cache
from pathlib import Path

log = logging.getLogger(__name__)

TOKEN = r"[0-9a-f]{8}-[0-9]+-[0-9]+"
"""The shape of an owner token (a regular expression without groups)."""
OWNED = re.compile(rf"^evolve-(?:[a-z]+-)?({TOKEN})-")
"""Names a sweep may judge, the group being the owner: ``evolve-<owner>-XXXXXXXX`` (``scratch``) and
``evolve-<kind>-<owner>-XXXX`` (one directory each, as evolve made them before ``scratch``)."""


@lru_cache(maxsize=None)
def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")[:8] or "00000000"
    except OSError:
        return "00000000"


def _start_time(pid: int) -> int | None:
    """Field 22 of ``/proc/<pid>/stat``; None when the process does not exist, 0 without /proc."""
    if not Path("/proc/self/stat").exists():
        return 0
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError:
        return 0
    # The command name (field 2) is in parentheses and may hold spaces or ')': split after the last ')'.
    fields = stat[stat.rfind(")") + 2:].split()
    try:
        return int(fields[19])  # field 22; fields[0] is field 3
    except (IndexError, ValueError):
        return 0


def token(pid: int) -> str | None:
    """The owner token of the running process ``pid``; None if there is no such process."""
    start = _start_time(pid)
    return None if start is None else f"{_boot_id()}-{pid}-{start}"


@lru_cache(maxsize=None)
def _own(pid: int) -> str:
    return token(pid) or f"{_boot_id()}-{pid}-0"


def current() -> str:
    """This process's owner token (recomputed in a forked child, whose PID differs)."""
    return _own(os.getpid())


def alive(owner: str) -> bool:
    """Whether the process named by the token ``owner`` still runs. A malformed token is not alive."""
    if not re.fullmatch(TOKEN, owner or ""):
        return False
    boot, pid_s, start_s = owner.split("-")
    if boot != _boot_id():
        return False
    pid = int(pid_s)
    if pid <= 0:
        return False
    start = _start_time(pid)
    if start is None:
        return False
    if start == 0 or int(start_s) == 0:  # no /proc: the PID is all there is to check
        return pid_alive(pid)
    return start == int(start_s)


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (a positive pid; one of another user counts as alive).
    A PID alone can be reused: prefer ``alive`` on an owner token where one was recorded."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def scratch() -> Path:
    """This process's private directory for temporary files: ``<temp>/evolve-<owner>-XXXXXXXX`` (0700,
    made by ``tempfile.mkdtemp`` on first use, so its name is unpredictable and no other user can
    plant it), removed at a normal exit. Every evolve temporary directory lives inside it
    (``temp_dir``, ``mkdtemp``), so a process killed before its cleanup ran leaves exactly one
    directory, which ``sweep_temp_dirs`` removes once the owner is dead. A forked child makes its own."""
    global _fork_hook
    pid = os.getpid()
    with _lock:
        path = _scratch.get(pid)
        if path is not None and path.is_dir():
            return path
        if not _fork_hook:
            os.register_at_fork(after_in_child=_after_fork)
            _fork_hook = True
        path = Path(tempfile.mkdtemp(prefix=f"evolve-{current()}-"))
        _scratch[pid] = path
        atexit.register(_remove_scratch, pid, path)
        return path


_scratch: dict[int, Path] = {}
_lock = threading.Lock()
_fork_hook = False


def _after_fork() -> None:
    global _lock
    _lock = threading.Lock()  # a fork while another thread held it would leave it locked forever


def _remove_scratch(pid: int, path: Path) -> None:
    if os.getpid() != pid:  # a forked child inherits the parent's atexit handlers
        return
    remove_tree(path, "this process's temporary files")


def temp_dir(kind: str) -> tempfile.TemporaryDirectory:
    """A ``TemporaryDirectory`` named ``<kind>-XXXXXXXX`` inside this process's ``scratch``
    (``kind``: lowercase letters): removed when the block ends, swept with the scratch directory
    after a ``kill -9``.

    Raises:
        ValueError: ``kind`` is not lowercase letters.
    """
    return tempfile.TemporaryDirectory(prefix=f"{_kind(kind)}-", dir=scratch())


def mkdtemp(kind: str) -> Path:
    """A new directory ``<kind>-XXXXXXXX`` inside this process's ``scratch``, for an object that
    removes it itself (``tempfile.mkdtemp`` made kill-safe). Raises ValueError as ``temp_dir``."""
    return Path(tempfile.mkdtemp(prefix=f"{_kind(kind)}-", dir=scratch()))


def _kind(kind: str) -> str:
    if not re.fullmatch(r"[a-z]+", kind):
        raise ValueError(f"temp dir kind must be lowercase letters: {kind!r}")
    return kind


def sweep_temp_dirs(root: str | Path | None = None) -> int:
    """Remove what dead evolve processes left under ``root`` (default: the temp directory): the
    ``scratch`` directories ``evolve-<owner>-*`` and the older per-directory names
    ``evolve-<kind>-<owner>-*`` whose owner (``alive``) is gone.

    Only a real directory (not a symlink) owned by this user whose name holds a well-formed token
    is touched; names without a token (another program's, or made before tokens) are left alone.
    The removal does not follow symlinks inside (``shutil.rmtree``'s fd-based walk) and a directory
    that a concurrent sweep removed first is not an error. One that cannot be removed is logged as
    a warning naming the path and the error; the sweep goes on with the others.
    Returns how many directories were removed.
    """
    base = Path(root if root is not None else tempfile.gettempdir())
    try:
        entries = list(os.scandir(base))
    except OSError as e:
        log.warning("could not list %s to sweep evolve's leftovers: %s", base, e)
        return 0
    uid = os.geteuid()
    n = 0
    for entry in entries:
        m = OWNED.match(entry.name)
        if m is None or alive(m.group(1)):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue  # another sweeper was faster
        except OSError as e:
            log.warning("could not inspect %s, left by a dead evolve process: %s", entry.path, e)
            continue
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid:
            continue
        if remove_tree(Path(entry.path), "left by a dead evolve process"):
            n += 1
    return n


def remove_tree(path: Path, what: str) -> bool:
    """``shutil.rmtree(path)`` that reports instead of raising or swallowing: every error but
    "already gone" is logged as one warning (``what`` says whose files they are). Returns whether
    nothing failed. Refuses a symlink at ``path`` (reported), as ``shutil.rmtree`` does."""
    failures: list[str] = []

    def onexc(func, failed, exc) -> None:
        if not isinstance(exc, FileNotFoundError):
            failures.append(f"{failed}: {exc}")

    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=onexc)
    else:  # onerror, deprecated since 3.12, gets (type, value, traceback)
        shutil.rmtree(path, onerror=lambda func, failed, info: onexc(func, failed, info[1]))
    if failures:
        more = f" (and {len(failures) - 3} more)" if len(failures) > 3 else ""
        log.warning("could not remove %s (%s): %s%s", path, what, "; ".join(failures[:3]), more)
    return not failures


__all__ = ["TOKEN", "alive", "current", "mkdtemp", "remove_tree", "scratch", "sweep_temp_dirs", "temp_dir", "token"]
