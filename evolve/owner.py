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
container (``evolve.sandbox.docker``), the names of evolve's temporary
directories (``temp_dir``: ``/tmp/evolve-<kind>-<owner>-XXXX``) and of the
atomic-write temporary files (``evolve.store.atomic_write``), and the
``owner`` field of an evaluation's run.json.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

log = logging.getLogger(__name__)

TOKEN = r"[0-9a-f]{8}-[0-9]+-[0-9]+"
"""The shape of an owner token (a regular expression without groups)."""
TEMP_DIR = re.compile(rf"^evolve-([a-z]+)-({TOKEN})-")
"""Names made by ``temp_dir``: kind, then owner."""


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


def temp_dir(kind: str, root: str | Path | None = None) -> tempfile.TemporaryDirectory:
    """A ``TemporaryDirectory`` named ``evolve-<kind>-<owner>-XXXX`` (``kind``: lowercase letters),
    so that ``sweep_temp_dirs`` can remove it once its owner is dead (after a ``kill -9``)."""
    if not re.fullmatch(r"[a-z]+", kind):
        raise ValueError(f"temp dir kind must be lowercase letters: {kind!r}")
    return tempfile.TemporaryDirectory(prefix=f"evolve-{kind}-{current()}-", dir=root)


def sweep_temp_dirs(root: str | Path | None = None) -> int:
    """Remove the ``temp_dir`` directories under ``root`` (default: the temp directory) whose owner is
    dead. Names without an owner token (made before tokens, or by others) are left alone.
    Returns how many were removed; one that cannot be removed is logged."""
    base = Path(root if root is not None else tempfile.gettempdir())
    n = 0
    try:
        entries = list(os.scandir(base))
    except OSError:
        return 0
    for entry in entries:
        m = TEMP_DIR.match(entry.name)
        if m is None or alive(m.group(2)):
            continue
        try:
            if not entry.is_dir(follow_symlinks=False):
                continue
            shutil.rmtree(entry.path)
            n += 1
        except FileNotFoundError:
            continue  # another sweeper was faster
        except OSError as e:
            log.warning("could not remove %s, left by a dead evolve process: %s", entry.path, e)
    return n


__all__ = ["TOKEN", "alive", "current", "sweep_temp_dirs", "temp_dir", "token"]
