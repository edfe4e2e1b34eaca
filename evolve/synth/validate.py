"""Running a project's test suite in a sandbox, over and over: the ``Workbench``.

Synthesis runs the original suite (twice, to find flaky tests), then every
candidate bug. A workbench is one container holding the project at
/testbed as a git repository, reused for every run: a run applies its diffs,
runs the tests under their own time limit, and resets the tree to the
original (``git checkout`` and ``git clean``), all in one command. A run
that outlives its limit gets the container restarted and the tree reset.

With ``trace=True`` a run also records, per test, which functions of the
project the test called: a small pytest plugin (``evolve_synth_trace``, put
into the image's site-packages) sets a call-only ``sys.settrace`` hook around
each test. Synthesis uses it to mutate only code the tests execute and to
run, for each mutant, only the test files that can notice it.
"""

from __future__ import annotations

import base64
import io
import json
import os
import secrets
import shlex
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from evolve.config import SandboxLimits
from evolve.errors import InfraError
from evolve.sandbox.docker import Sandbox
from evolve.testbed import TREE_RESET
from evolve.testlog import collection_errors, parse_pytest_report, summary_counts
from evolve.types import TestStatus

if TYPE_CHECKING:  # pragma: no cover
    import docker

__all__ = ["JUNK_DIRS", "TestRun", "Workbench", "tree_tar"]

TESTBED = "/testbed"
WORK = "/tmp/evolve-synth"
PLUGIN = "evolve_synth_trace"
_GIT = ("git -c core.hooksPath=/dev/null -c core.fsmonitor=false -c safe.directory='*' "
        "-c user.name=evolve -c user.email=evolve@localhost -c commit.gpgsign=false")
_RESET = TREE_RESET
_INLINE_BYTES = 48_000
"""Diffs up to this size go inside the command (base64); larger ones are copied in first."""
JUNK_DIRS = frozenset({".git", ".hg", ".svn", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache",
                       ".tox", ".nox", ".venv", "venv", ".eggs", "node_modules", ".idea", ".vscode"})
"""Directories never copied into a snapshot."""

_PLUGIN_SOURCE = '''"""evolve synth: which project functions each test calls (call events only)."""
import json
import os
import sys
import threading
import time

import pytest

_ROOT = os.path.realpath(os.getcwd()) + os.sep
_calls = {}
_seconds = {}
_current = None


def _tracer(frame, event, arg):
    if event == "call" and _current is not None:
        _current.add(frame.f_code)
    return None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    global _current
    _current = set()
    old = sys.gettrace()
    start = time.perf_counter()
    sys.settrace(_tracer)
    threading.settrace(_tracer)
    try:
        yield
    finally:
        sys.settrace(old)
        threading.settrace(None)
        _seconds[item.nodeid] = round(time.perf_counter() - start, 4)
        codes, _current = _current, None
        funcs = set()
        for code in codes:
            path = code.co_filename
            if path.startswith(_ROOT):
                funcs.add((path[len(_ROOT):], code.co_firstlineno, code.co_name))
        _calls[item.nodeid] = sorted(funcs)


def pytest_sessionfinish(session, exitstatus):
    out = os.environ.get("EVOLVE_TRACE_OUT")
    if out:
        with open(out, "w") as f:
            json.dump({"calls": _calls, "seconds": _seconds}, f)
'''


@dataclass
class TestRun:
    """The outcome of one run of (part of) a test suite."""

    __test__ = False

    statuses: dict[str, TestStatus]
    output: str
    exit_code: int | None
    timed_out: bool
    seconds: float
    collection_errors: list[str] = field(default_factory=list)
    applied: bool = True
    """False when a diff did not apply (no test ran)."""
    finished: bool = True
    """pytest printed its final summary line (it did not crash or get killed)."""
    trace: dict[str, list[tuple[str, int, str]]] | None = None
    """Per test id: (path, first line, name) of the project functions it called."""
    durations: dict[str, float] | None = None
    """Per test id: seconds of setup, call and teardown (traced, so on the slow side)."""

    def passing(self) -> set[str]:
        return {t for t, s in self.statuses.items() if s.passing}

    def failing(self) -> set[str]:
        return {t for t, s in self.statuses.items() if s in (TestStatus.FAILED, TestStatus.ERROR)}


def tree_tar(root: Path) -> bytes:
    """A tar of the project tree at ``root`` (symlinks kept, junk directories left out)."""
    buf = io.BytesIO()
    root = Path(root)

    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        parts = Path(info.name).parts
        if any(p in JUNK_DIRS for p in parts) or info.name.endswith((".pyc", ".pyo")):
            return None
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = 0
        return info

    with tarfile.open(fileobj=buf, mode="w") as tar:
        for entry in sorted(os.listdir(root)):
            tar.add(root / entry, arcname=entry, filter=keep)
    return buf.getvalue()


class Workbench:
    """One container with the project at /testbed; runs tests, applies diffs, resets.

    Args:
        client: docker client.
        image: an image present locally (``ensure_image``).
        run_id: labels the container for sweeps.
        test_cmd: the test command (pytest); ``-rA --tb=short`` and the test files are appended.
        limits: the container's memory/CPU/pids limits.

    Raises:
        InfraError: Docker failed (on ``start`` and on any run).
    """

    def __init__(self, client: "docker.DockerClient", image: str, *, run_id: str, test_cmd: str,
                 limits: SandboxLimits | None = None) -> None:
        self.sandbox = Sandbox(client, image, run_id=run_id, limits=limits or SandboxLimits())
        self.test_cmd = test_cmd
        self.nonce = secrets.token_hex(8)
        self.traceable = False

    def __enter__(self) -> "Workbench":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self, tree: bytes) -> None:
        """Start the container and put the project (a ``tree_tar``) at /testbed as a git repository."""
        self.sandbox.start()
        self.sandbox.put_tar(TESTBED, tree)
        res = self.sandbox.exec(
            f"mkdir -p {WORK} && cd {TESTBED} && rm -rf .git && {_GIT} init -q && {_GIT} add -A -f . "
            f"&& {_GIT} commit -q --no-verify --allow-empty -m original", timeout_s=300)
        if res.exit_code != 0:
            raise InfraError("docker", f"could not make a git repository of the project in the sandbox "
                                       f"(exit {res.exit_code}): {res.output[-500:]}")
        # The tracing plugin goes to the interpreter's own site-packages, so that it loads whatever
        # PYTHONPATH the test command sets. Without it, synthesis runs every test file per mutant.
        b64 = base64.b64encode(_PLUGIN_SOURCE.encode()).decode()
        install = ("d=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()[\"purelib\"])') "
                   f"&& mkdir -p \"$d\" && echo {b64} | base64 -d > \"$d/{PLUGIN}.py\"")
        self.traceable = self.sandbox.exec(install, timeout_s=60, user="root").exit_code == 0

    def close(self) -> None:
        self.sandbox.close()

    def run(self, files: list[str] | None = None, *, diffs: list[str] = (), timeout_s: float,
            trace: bool = False, keep_going: bool = False) -> TestRun:
        """Apply ``diffs`` in order, run the tests (``files``, or pytest's own discovery when None),
        then reset the tree to the original. ``keep_going`` runs the tests of the files that collect
        even when others do not (pytest's ``--continue-on-collection-errors``)."""
        mark = f"EVOLVE-SYNTH-{self.nonce}"
        lines = ["set -u", f"mkdir -p {WORK}", f"cd {TESTBED}"]
        big = sum(len(d) for d in diffs) > _INLINE_BYTES
        if big:  # too long for one command line: copy the diffs in first
            self.sandbox.put_files(WORK, {f"d{i}.patch": d for i, d in enumerate(diffs)})
        for i, diff in enumerate(diffs):
            path = f"{WORK}/d{i}.patch"
            if not big:
                lines.append(f"echo {base64.b64encode(diff.encode()).decode()} | base64 -d > {path}")
            lines += [f"if ! {_GIT} apply --whitespace=nowarn {path} > {WORK}/apply.log 2>&1; then "
                      f"echo; echo '{mark} apply-failed {i}'; cat {WORK}/apply.log; {_RESET}; exit 0; fi"]
        args = " -rA --tb=short" + (" --continue-on-collection-errors" if keep_going else "")
        env_prefix = ""
        if trace and self.traceable:
            args += f" -p {PLUGIN}"
            lines.append(f"rm -f {WORK}/trace.json")
            env_prefix = f"EVOLVE_TRACE_OUT={WORK}/trace.json "
        cmd = self.test_cmd + args + "".join(" " + shlex.quote(f) for f in files or [])
        limit = max(1, int(timeout_s))
        lines += [f"echo '{mark} tests'",
                  f"{env_prefix}timeout --kill-after=5 {limit} sh -c {shlex.quote(cmd)}",
                  "rc=$?",
                  f"echo; echo '{mark} exit' $rc",
                  _RESET]
        script = "\n".join(lines) + "\n"
        start = time.monotonic()
        res = self.sandbox.exec(script, timeout_s=timeout_s + 120, max_output=8_000_000)
        seconds = time.monotonic() - start
        if res.exit_code is None:  # the host had to kill the container
            self.recover()
            return TestRun({}, res.output, None, True, seconds, finished=False)
        output = res.output
        if f"{mark} apply-failed" in output:
            return TestRun({}, output, None, False, seconds, applied=False)
        body = output.split(f"{mark} tests\n", 1)[-1]
        test_output, _, tail = body.rpartition(f"\n{mark} exit ")
        if not _:  # the script itself was cut short: the tree may be left mutated
            self._reset()
            return TestRun({}, body, res.exit_code, True, seconds, finished=False)
        rc_text = tail.split("\n", 1)[0].strip()
        rc = int(rc_text) if rc_text.lstrip("-").isdigit() else None
        timed_out = rc in (124, 137)
        run = TestRun(statuses=parse_pytest_report(test_output), output=test_output, exit_code=rc,
                      timed_out=timed_out, seconds=seconds, collection_errors=collection_errors(test_output),
                      finished=summary_counts(test_output) is not None)
        if trace and self.traceable and not timed_out:
            data = self.sandbox.get_file(f"{WORK}/trace.json", max_bytes=200_000_000)
            if data:
                try:
                    raw = json.loads(data)
                    run.trace = {t: [tuple(f) for f in funcs] for t, funcs in raw["calls"].items()}
                    run.durations = {t: float(v) for t, v in raw["seconds"].items()}
                except (ValueError, TypeError, KeyError):
                    run.trace = run.durations = None
        return run

    def recover(self) -> None:
        """Restart the container (every process killed, files kept) and reset the tree.

        Raises:
            InfraError: Docker failed.
        """
        self.sandbox.restart()
        self._reset()

    def _reset(self) -> None:
        res = self.sandbox.exec(f"cd {TESTBED} && {_RESET}", timeout_s=120)
        if res.exit_code != 0:
            raise InfraError("docker", f"could not reset the project after a killed run: {res.output[-300:]}")
