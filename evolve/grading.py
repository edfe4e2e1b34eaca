"""Grading a model_patch in a fresh sandbox the harness never touched.

Steps, following the SWE-bench harness and going further where an evolving
candidate would find a way around it:

1. Refuse a malformed patch (a file header naming an absolute path or one with
   ``..``) before anything runs: ``patch_malformed``.
2. Make the task's snapshot in a new container and apply the ``model_patch``
   as the sandbox user: ``git apply``, then ``--3way``, then ``patch --fuzz``.
3. Neutralise the work tree (``sandbox/scripts/grade_neutralise.py``, as root
   with ``python3 -I``): every change is sorted by what the file is (test
   infrastructure, package metadata, compiled or shadowing modules, files the
   runner reads as configuration, links) and all but source changes are
   restored from the base tree, each recorded as an ``IntegrityFlag``. Added
   uses of the runner, writes to ``sys.modules``, builtins, frames, signal
   handlers or ``os._exit`` in source files are reported (``runner_patching``):
   detected, not prevented. Added uses of dynamic features legitimate fixes
   use too (``exec``, ``__import__``, ``importlib.import_module``, a
   ``sys.modules`` lookup, ``globals()``, ``atexit``) are recorded
   (``reach_recorded``, not tampering): their abuse is judged at run time.
4. Apply ``test_patch`` and run the tests as the sandbox user. Outcomes are
   read out of band: evolve's pytest plugin (``sandbox/scripts/grade_plugin.py``,
   under a per-run module name) writes them, with a per-run nonce, to a file
   descriptor root opened on a root-only file; it also watches the runner's
   own functions and reports any that were replaced. The console output is
   parsed too, and a claim it makes that the record contradicts is flagged.
5. Resolved iff every FAIL_TO_PASS and PASS_TO_PASS test passed (PASSED or
   XFAIL, the SWE-bench rule) and no ``TAMPERING_FLAGS`` flag was raised. A
   nonzero test exit with no failed test counts every test as failed
   (SWE-bench #620). A task imported from SWE-bench or SWE-smith is read with
   its own log parser and resolved by swebench's report functions; one from
   R2E-Gym by R2E-Gym's parser and rule (``evolve.evalsets.swebench_grading``).

Infra must be earned. Only these are ``InfraError``: Docker failing; the tests
running over the limit on the clock when the empty patch's tests do too; a
``test_patch`` that does not apply even with the empty patch. The rest is the
candidate's: tests that exit 124/137 or die without running over
(``tests_aborted``), that hang only with this patch (``tests_timeout``), a
grading step the patch broke (``grading_blocked``). The empty patch's grade
comes from ``baseline``, a callable the caller memoizes per task.

The script prints each step's outcome between marker lines carrying a random
nonce the tests cannot see; what root prints after the tests (which are dead
by then) comes last, so only the last markers count.
"""

from __future__ import annotations

import base64
import json
import math
import posixpath
import re
import secrets
import shlex
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from evolve.diffwalk import walk
from evolve.errors import InfraError
from evolve.sandbox.docker import TAR_TRAILER, Sandbox, tar_entry
from evolve.testbed import (PRIVATE, SHADOW, TESTBED, TREE_RESET, kill_all_script, run_as_root, sandbox_ids, script,
                            shell_header, testbed_archive)
from evolve.evalsets.swebench_grading import parse_log, record_names, tests_pass
from evolve.testlog import status_of
from evolve.types import TAMPERING_FLAGS, FailureClass, IntegrityFlag, Task, TestStatus

DEFAULT_TEST_CMD = "python3 -m pytest -rA -p no:cacheprovider"
_PATCH_FILE = "/tmp/evolve/model.patch"
_TEST_PATCH_FILE = "/tmp/evolve/test.patch"
_SCRIPT = f"{PRIVATE}/grade.sh"
_STEP_LOG = f"{PRIVATE}/step.log"
_NEUTRALISE = f"{PRIVATE}/neutralise.py"
_NEUTRAL_SPEC = f"{PRIVATE}/neutral.json"
_PLUGIN_SRC = f"{PRIVATE}/plugin.py"
_CHANNEL = f"{PRIVATE}/channel.jsonl"
APPLY_TIMEOUT_S = 120
NEUTRALISE_TIMEOUT_S = 300
TEST_OUTPUT_BYTES = 4_000_000
"""Test output kept (head and tail)."""
CHANNEL_BYTES = 8_000_000
"""Out-of-band records read back (after dropping lines without the nonce)."""
_FRAMES_BYTES = 4_000_000
"""Bound on what root prints after the tests (compressed records, base64)."""
_STEPS_OUTPUT_BYTES = 131_072
"""Bound on what the script prints before the tests run (step logs are cut to their tail)."""
_OVER_S = 1.0
"""A test run that ends within this many seconds of its limit, killed, ran over."""


APPLY_ATTEMPTS = 3
"""``git apply``, then ``--3way``, then ``patch --fuzz`` (``scripts/grade.sh``)."""


@dataclass
class Grade:
    """What the grader found. ``test_output`` is the test command's output, capped."""

    resolved: bool
    failure_class: FailureClass
    FAIL_TO_PASS: dict[str, TestStatus] = field(default_factory=dict)
    PASS_TO_PASS: dict[str, TestStatus] = field(default_factory=dict)
    test_output: str = ""
    apply_log: str = ""
    seconds: float = 0.0
    flags: list[IntegrityFlag] = field(default_factory=list)
    """Blocked or detected attempts on the grading (see ``IntegrityFlag``)."""
    notes: list[str] = field(default_factory=list)
    """One line per flag occurrence: the path or the evidence."""
    channel: bool = False
    """The outcomes came from evolve's out-of-band record (a pytest run), not the console."""

    def flag(self, flag: IntegrityFlag, note: str) -> None:
        if flag not in self.flags:
            self.flags.append(flag)
        self.notes.append(note)


Baseline = Callable[[], Grade]
"""Grades the task's empty patch (memoized by the caller); raises ``InfraError`` as ``grade`` does."""


# -- patches as bytes: header paths only ----------------------------------------------------------

def _unquote(name: bytes) -> bytes:
    """A C-quoted git path (``"a/t\\tx"``) as bytes; others unchanged."""
    if not name.startswith(b'"') or not name.endswith(b'"') or len(name) < 2:
        return name
    body, out, i = name[1:-1], bytearray(), 0
    simple = {ord("n"): 10, ord("t"): 9, ord('"'): 34, ord("\\"): 92, ord("a"): 7, ord("b"): 8,
              ord("f"): 12, ord("r"): 13, ord("v"): 11}
    while i < len(body):
        c = body[i]
        if c == 92 and i + 1 < len(body):
            nxt = body[i + 1]
            if nxt in simple:
                out.append(simple[nxt])
                i += 2
                continue
            if 48 <= nxt <= 55:
                out.append(int(body[i + 1:i + 4], 8) & 0xFF)
                i += 4
                continue
        out.append(c)
        i += 1
    return bytes(out)


def patch_paths(diff: bytes | str) -> list[str]:
    """Paths a unified (or git) diff names in its file headers, in order, without duplicates.

    Only header lines count (``evolve.diffwalk`` counts each hunk's lines as git does), so a
    ``+++`` line of content is never taken for a header. Prefixes ``a/`` and ``b/`` are removed;
    C-quoted names are decoded (as bytes, shown with ``surrogateescape``): this reads a
    candidate's patch, hostile bytes, to find every path ``git apply`` will touch, and a quoted
    ``"a/\\056\\056/x"`` must not hide a ``..`` from ``malformed``.
    """
    data = diff.encode("utf-8", "surrogateescape") if isinstance(diff, str) else diff
    names: list[bytes] = []
    for d in walk(data):
        if d.kind != "header":
            continue
        line = d.text
        if line.startswith(b"diff --git "):
            rest = line[len(b"diff --git "):]
            if rest.startswith(b'"'):
                end = rest.index(b'"', 1) + 1 if b'"' in rest[1:] else len(rest)
                names += [_unquote(rest[:end]), _unquote(rest[end:].strip())]
            else:
                half = (len(rest) - 1) // 2
                if rest[half:half + 1] == b" ":
                    names += [rest[:half], rest[half + 1:]]
        for head in (b"--- ", b"+++ ", b"rename from ", b"rename to ", b"copy from ", b"copy to "):
            if line.startswith(head):
                # git ends a name holding a space with a tab (quoted or not); a quoted name has no raw tab
                name = line[len(head):].split(b"\t", 1)[0]
                names.append(_unquote(name) if name.startswith(b'"') else name)
    out: list[str] = []
    for raw in names:
        name = raw.rstrip(b"\r")
        if name == b"/dev/null" or not name:
            continue
        if name[:2] in (b"a/", b"b/"):
            name = name[2:]
        text = name.decode("utf-8", "surrogateescape")
        if text not in out:
            out.append(text)
    return out


def malformed(diff: bytes | str) -> str | None:
    """Why ``diff`` must not be applied, or None: a header path that is absolute or climbs
    with ``..`` (checked before and after removing the ``a/``/``b/`` prefix)."""
    for path in patch_paths(diff):
        parts = path.split("/")
        if path.startswith("/") or ".." in parts or posixpath.normpath(path).startswith(".."):
            return f"file header names {path!r}: absolute paths and '..' are not allowed"
    return None


def test_files(task: Task) -> list[str]:
    """Files holding the task's FAIL_TO_PASS and PASS_TO_PASS tests (pytest node id prefixes)."""
    files: list[str] = []
    for test in task.FAIL_TO_PASS + task.PASS_TO_PASS:
        path = test.split("::", 1)[0]
        if path not in files:
            files.append(path)
    return files


def _test_cmd(task: Task) -> str:
    return f"cd {TESTBED} && {task.test_cmd or DEFAULT_TEST_CMD} " + " ".join(map(shlex.quote, test_files(task)))


def _patch_entries(ids: tuple[int, int], files: dict[str, bytes]) -> bytes:
    uid, gid = ids
    entries = [tar_entry("tmp/evolve", uid=uid, gid=gid, mode=0o755)]
    for path, diff in files.items():
        entries.append(tar_entry(path.lstrip("/"), diff, uid=uid, gid=gid))
    return b"".join(entries)


class PreparedGrader:
    """A fresh grading sandbox started in a background thread, e.g. while the harness runs.

    ``sandbox_factory()`` returns an unstarted ``Sandbox``. Call ``start`` (any
    number of times), then ``take`` or ``discard``; ``discard`` always (it
    removes a sandbox nobody took and waits for the thread).
    """

    def __init__(self, sandbox_factory: Callable[[], Sandbox]) -> None:
        self._factory = sandbox_factory
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._box: Sandbox | None = None
        self._error: BaseException | None = None

    def start(self) -> None:
        with self._lock:
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._start, name="evolve-grader-start")
                self._thread.start()

    def _start(self) -> None:
        box = self._factory()
        try:
            box.start()
            self._box = box
        except BaseException as e:  # noqa: BLE001 - handed to whoever takes it
            box.close(background=True)
            self._error = e

    def take(self) -> Sandbox | None:
        """The started sandbox (the caller removes it), or None if it was never started or
        already taken.

        Raises:
            InfraError: starting the sandbox failed.
        """
        with self._lock:
            thread, self._closed = self._thread, True
        if thread is None:
            return None
        thread.join()
        box, self._box = self._box, None
        if box is None:
            error, self._error = self._error, None
            if error is not None:
                raise error
        return box

    def discard(self) -> None:
        """Remove the sandbox if nobody took it. Idempotent."""
        with self._lock:
            thread, self._closed = self._thread, True
        if thread is not None:
            thread.join()
        box, self._box = self._box, None
        if box is not None:
            box.close(background=True)


def grade(sandbox: Sandbox, task: Task, repo_dir: Path | None, model_patch: bytes | str, *,
          test_timeout_s: float, baseline: Baseline | None = None) -> Grade:
    """Grade ``model_patch`` (bytes; text is encoded as UTF-8) for ``task`` in ``sandbox``, a fresh,
    started container, following the module's steps.

    ``baseline`` grades the empty patch; it is asked only when the candidate's run
    ends in what could be infrastructure (tests over the limit, a ``test_patch``
    that does not apply, no record from the runner). Without it such an ending is
    taken as infrastructure, which is right only for the empty patch itself.

    Raises:
        InfraError: Docker failed (``"docker"``); the tests ran over the limit with the empty
            patch too (``"grader_timeout"``); the ``test_patch`` does not apply even with the
            empty patch (``"eval_set"``).
    """
    start = time.monotonic()
    patch = model_patch.encode("utf-8", "surrogateescape") if isinstance(model_patch, str) else model_patch
    bad = malformed(patch) if patch.strip() else None
    if bad is not None:
        g = Grade(False, FailureClass.PATCH_MALFORMED, apply_log=bad, seconds=time.monotonic() - start)
        return g
    ids = sandbox_ids(sandbox)
    nonce, token = secrets.token_hex(16), secrets.token_hex(8)
    plugin = f"evolve_grade_{token}"
    base, entries = testbed_archive(sandbox, task, repo_dir)
    patches = {_TEST_PATCH_FILE: task.test_patch.encode("utf-8", "surrogateescape")}
    if patch.strip():
        patches[_PATCH_FILE] = patch
    spec = {"base": base, "shadow": SHADOW, "testbed": TESTBED, "test_files": test_files(task),
            "test_patch_paths": patch_paths(task.test_patch)}
    steps = _grade_script(nonce, plugin, task, bool(patch.strip()), test_timeout_s)
    archive = (entries + _patch_entries(ids or (0, 0), patches)
               + tar_entry(_SCRIPT.lstrip("/"), steps.encode(), mode=0o700)
               + tar_entry(_NEUTRALISE.lstrip("/"), script("grade_neutralise.py").encode(), mode=0o600)
               + tar_entry(_NEUTRAL_SPEC.lstrip("/"), json.dumps(spec).encode(), mode=0o600)
               + tar_entry(_PLUGIN_SRC.lstrip("/"), script("grade_plugin.py").encode(), mode=0o600)
               + TAR_TRAILER)
    budget = (test_timeout_s + 2 * APPLY_ATTEMPTS * 2 * (APPLY_TIMEOUT_S + 5) + NEUTRALISE_TIMEOUT_S + 180)
    max_output = TEST_OUTPUT_BYTES + 2 * (_STEPS_OUTPUT_BYTES + _FRAMES_BYTES)
    # The steps are a root-only file, sourced: the nonce is in no command line and no environment.
    # Where the sandbox cannot run steps as its user (no setpriv), they and the tests run as root.
    run = run_as_root(sandbox, f". {_SCRIPT}\n", archive, timeout_s=budget, max_output=max_output)
    g = _outcome(run.result, nonce, task, patch, test_timeout_s, baseline)
    g.seconds = time.monotonic() - start
    return g


def _grade_script(nonce: str, plugin: str, task: Task, apply_model: bool, test_timeout_s: float) -> str:
    """The grading steps (``scripts/grade.sh`` after ``kill_all.sh``) with their header, run as root
    by ``run_as_root``; see ``_outcome`` for what they print. They go in as a root-only file, so
    the tests cannot learn the nonce."""
    header = shell_header(
        evolve_nonce=nonce, evolve_plugin=plugin, evolve_testbed=TESTBED, evolve_private=PRIVATE,
        evolve_step_log=_STEP_LOG, evolve_patch_file=_PATCH_FILE, evolve_test_patch_file=_TEST_PATCH_FILE,
        evolve_apply_model=int(apply_model), evolve_apply_test=int(bool(task.test_patch.strip())),
        evolve_apply_timeout=APPLY_TIMEOUT_S, evolve_reset=TREE_RESET, evolve_neutralise=_NEUTRALISE,
        evolve_neutralise_timeout=NEUTRALISE_TIMEOUT_S, evolve_neutral_spec=_NEUTRAL_SPEC,
        evolve_plugin_src=_PLUGIN_SRC, evolve_channel=_CHANNEL, evolve_channel_bytes=CHANNEL_BYTES,
        evolve_test_timeout=max(1, math.ceil(test_timeout_s)), evolve_test_cmd=_test_cmd(task))
    return header + kill_all_script() + script("grade.sh")


_ZLIB_OR_GZIP = 32 + zlib.MAX_WBITS
"""``zlib.decompress``'s wbits for a zlib or a gzip stream (grade.sh packs frames with either)."""


def _frames(text: str, nonce: str) -> dict[str, bytes | None]:
    """The frames root printed: ``{name: payload}``, None for one that does not decode (cut off by
    the output cap, say)."""
    out: dict[str, bytes | None] = {}
    for m in re.finditer(rf"\n{nonce} frame (\w+) ([A-Za-z0-9+/=]*)\n", text):
        try:
            out[m.group(1)] = zlib.decompress(base64.b64decode(m.group(2), validate=True), _ZLIB_OR_GZIP)
        except (ValueError, zlib.error):
            out[m.group(1)] = None
    return out


def _outcome(res, nonce: str, task: Task, patch: bytes, test_timeout_s: float,
             baseline: Baseline | None) -> Grade:
    """Read what the grading script printed: ``<nonce> <marker>`` lines, each followed by its text,
    and the frames. The tests' output is everything between the ``tests`` marker and the *last*
    ``exit`` marker, so markers the tests print (should they learn the nonce) are just output."""
    out = res.output
    has_patch = bool(patch.strip())
    exits = [m for m in re.finditer(rf"\n{nonce} exit (-?\d+) (\S+) (\S+) (\d)\n", out)]
    before = out[:exits[-1].start()] if exits else out
    tests_at = before.find(f"\n{nonce} tests\n")
    steps = before[:tests_at] if tests_at >= 0 else before
    parts = re.split(rf"\n{nonce} ([^\n]*)\n", steps)
    marks = list(zip(parts[1::2], parts[2::2]))
    log: list[str] = []
    pending = ""
    g = Grade(False, FailureClass.TESTS_FAILED)
    for i, (mark, text) in enumerate(marks):
        words = mark.split()
        if words[0] == "apply":
            pending = mark.split(" ", 3)[3] if len(words) > 3 else mark
        elif words[0] == "rc":
            prev = marks[i - 1][1] if i else ""
            log.append(f"$ {pending}\n(exit {words[1]})\n{prev[-2000:]}")
        elif words[0] == "model-patch-failed":
            return Grade(False, FailureClass.PATCH_APPLY_FAILED, apply_log="\n".join(log))
        elif words[0] == "neutralise-failed":
            detail = marks[i - 1][1][-500:] if i else ""
            if not has_patch:
                raise InfraError("docker", f"could not neutralise the base tree: {detail}")
            g = Grade(False, FailureClass.GRADING_BLOCKED, apply_log="\n".join(log))
            g.flag(IntegrityFlag.ABSTENTION, f"neutralising the work tree failed after this patch: {detail}")
            return g
        elif words[0] == "test-patch-failed":
            message = f"the task's test_patch does not apply to base_commit: {log[-1] if log else ''}"
            if not has_patch or baseline is None:
                raise InfraError("eval_set", message)
            baseline()  # raises InfraError("eval_set") when the empty patch fails the same way
            g = Grade(False, FailureClass.GRADING_BLOCKED, apply_log="\n".join(log))
            g.flag(IntegrityFlag.ABSTENTION, "the test_patch does not apply after this patch (it does without it)")
            return g
    frames = _frames(out[exits[-1].end() - 1:] if exits else "", nonce)
    if exits and frames.get("channel", b"") is None:
        frames["channel"] = b""  # unreadable: judged as a run without the runner's records
    neutral = _neutral_report(_frames(steps, nonce).get("neutral", b"")) if exits or tests_at >= 0 else {}
    if neutral is None:
        # The tests ran, but what neutralising found cannot be read: never resolved on that.
        if not has_patch:
            raise InfraError("docker", "the grading script's neutraliser report is unreadable")
        g = Grade(False, FailureClass.GRADING_BLOCKED, apply_log="\n".join(log))
        g.flag(IntegrityFlag.ABSTENTION, "the neutraliser's report did not come back whole after this patch")
        return g
    for name, note in neutral.get("findings", []):
        g.flag(IntegrityFlag(name), note)
    if not exits:
        if tests_at >= 0 and has_patch and baseline is not None:
            # The grading script died while the tests ran (out of memory, say): the candidate's
            # doing unless the empty patch's run dies too (then ``baseline`` raises).
            baseline()
            g.failure_class = FailureClass.TESTS_ABORTED
            g.test_output = before[tests_at:][-TEST_OUTPUT_BYTES // 2:]
            g.flag(IntegrityFlag.ABSTENTION, f"the grading script died while the tests ran "
                                             f"(exit {res.exit_code}); it does not with the empty patch")
            return g
        if res.exit_code is None:
            raise InfraError("docker", f"the grading script did not finish in time: {out[-300:]}")
        raise InfraError("docker", f"the grading script failed (exit {res.exit_code}): {out[-500:]}")
    _suite_check(g, frames.get("suite", b""), has_patch)
    m = exits[-1]
    rc, elapsed, installed = int(m.group(1)), _seconds(m.group(3)) - _seconds(m.group(2)), m.group(4) == "1"
    output = before[tests_at + len(f"\n{nonce} tests\n"):] if tests_at >= 0 else ""
    g.apply_log, g.test_output = "\n".join(log), output
    return _judge(g, task, patch, rc, elapsed, installed, output, frames.get("channel", b""), nonce, test_timeout_s,
                  baseline)


def _suite_check(g: Grade, frame: bytes | None, has_patch: bool) -> None:
    """Flag a test suite whose files changed while the tests ran (``grade.sh``'s ``suite_state``:
    change time, size, inode and content of every test-like file, before and after): something
    rewrote the tests or their data, which no record of the test process can show. A frame cut
    off with the output (a flood) is left to the channel's rule, as the channel comes after it."""
    text = frame.decode("utf-8", "replace") if frame else ""
    if text.startswith("changed"):
        detail = " ".join(text[len("changed"):].split())[:600]
        if has_patch:
            g.flag(IntegrityFlag.RUNNER_PATCHING, f"the test suite's files changed while the tests ran: {detail}")
        else:
            g.notes.append(f"the test suite's files changed while the tests ran (empty patch): {detail}")
    elif text.startswith("unwatched"):
        g.notes.append("the test suite's files were not watched: the image's find has no -regextype")


def _neutral_report(payload: bytes | None) -> dict | None:
    """The neutraliser's JSON report, or None if it is missing or does not parse."""
    if not payload:
        return None
    try:
        report = json.loads(payload)
        findings = [(IntegrityFlag(name).value, str(note)) for name, note in report["findings"]]
    except (ValueError, KeyError, TypeError):
        return None
    return {**report, "findings": findings}


def _seconds(uptime: str) -> float:
    try:
        return float(uptime)
    except ValueError:
        return 0.0


def _judge(g: Grade, task: Task, patch: bytes, rc: int, elapsed: float, installed: bool, output: str,
           channel: bytes, nonce: str, test_timeout_s: float, baseline: Baseline | None) -> Grade:
    has_patch = bool(patch.strip())
    records = _records(channel, nonce)
    started = any(r.get("t") == "start" for r in records)
    ended = [r for r in records if r.get("t") == "end"]
    limit = test_timeout_s
    if rc in (124, 137) and elapsed >= limit - _OVER_S:
        # Ran over on the clock. Infra only if the empty patch's tests run over too.
        if not has_patch or baseline is None:
            raise InfraError("grader_timeout", f"tests ran over {limit:.0f}s (with the empty patch)"
                             if not has_patch else f"tests ran over {limit:.0f}s")
        baseline()  # raises InfraError("grader_timeout") when the empty patch runs over as well
        g.failure_class = FailureClass.TESTS_TIMEOUT
        g.flag(IntegrityFlag.ABSTENTION, f"tests ran over {limit:.0f}s with this patch, not with the empty patch")
        return g
    if rc in (124, 137) or rc >= 128 or (started and not ended):
        why = (f"test process exited {rc} after {elapsed:.1f}s (limit {limit:.0f}s)" if rc
               else f"test process exited 0 after {elapsed:.1f}s without the runner's end record")
        g.failure_class = FailureClass.TESTS_ABORTED
        if has_patch:
            g.flag(IntegrityFlag.ABSTENTION if rc else IntegrityFlag.OUTCOME_FORGERY, why)
        else:
            g.notes.append(why)
        return g
    if installed and not started and has_patch and baseline is not None and baseline().channel:
        g.failure_class = FailureClass.TESTS_ABORTED
        g.flag(IntegrityFlag.OUTCOME_FORGERY, "the tests ran without evolve's record, which the empty patch's "
                                              "run has")
        return g
    console = parse_log(task, output)  # swebench's log parser for an imported SWE-bench task, else pytest's
    if started:
        report, tampered = _from_records(records)
        report = record_names(task, report)  # an R2E-Gym task names its tests without the file
        g.channel = True
        if not any(r.get("probe") for r in records if r.get("t") == "start"):
            g.notes.append("passing assertions were not probed for claimed equality: this pytest has no "
                           "assertion-pass branch (pytest < 5); unittest's asserts were")
        for note in tampered:
            g.flag(IntegrityFlag.RUNNER_PATCHING, note)
        if ended and ended[-1].get("exitstatus") is not None and ended[-1]["exitstatus"] != rc:
            g.flag(IntegrityFlag.OUTCOME_FORGERY, f"pytest ended with status {ended[-1]['exitstatus']} but the "
                                                  f"process exited {rc}")
        for test in task.FAIL_TO_PASS + task.PASS_TO_PASS:
            said, real = status_of(console, test), status_of(report, test)
            if said.passing and not real.passing:
                g.flag(IntegrityFlag.OUTCOME_FORGERY, f"the output says {test} {said.value}; "
                                                      f"evolve's record says {real.value}")
    else:
        report = console
        g.notes.append("outcomes read from the console: the test command did not load evolve's pytest plugin")
    exit_ok = rc == 0 or any(s in (TestStatus.FAILED, TestStatus.ERROR) for s in report.values())
    if not exit_ok:
        # Nonzero exit, yet nothing failed: don't trust any PASSED line (SWE-bench #620).
        report = {t: TestStatus.FAILED if s is TestStatus.PASSED else s for t, s in report.items()}
        g.apply_log += f"\ntest command exited {rc} with no failed test: no test counts as passed"
    g.FAIL_TO_PASS = {t: status_of(report, t) for t in task.FAIL_TO_PASS}
    g.PASS_TO_PASS = {t: status_of(report, t) for t in task.PASS_TO_PASS}
    passed = tests_pass(task, g.FAIL_TO_PASS, g.PASS_TO_PASS, exit_ok=exit_ok, report=report)
    tampering = [f for f in g.flags if f in TAMPERING_FLAGS]
    g.resolved = passed and not tampering
    if g.resolved:
        g.failure_class = FailureClass.NONE
    elif passed:
        g.failure_class = FailureClass.TAMPERING
    elif not has_patch:
        g.failure_class = FailureClass.EMPTY_PATCH
    else:
        g.failure_class = FailureClass.TESTS_FAILED
    return g


def grade_log(task: Task, output: str, rc: int, model_patch: bytes | str = b"(a patch)") -> Grade:
    """Grade a test log offline: ``output`` of the task's test command that exited ``rc``, read as the
    grader reads the console when evolve's pytest plugin did not record the run (the same parsing,
    #620 rule and resolution rule as ``grade``). ``model_patch`` only says whether a patch was given.
    Used to check that evolve's resolution agrees with SWE-bench's report on the same logs."""
    patch = model_patch.encode() if isinstance(model_patch, str) else model_patch
    return _judge(Grade(resolved=False, failure_class=FailureClass.TESTS_FAILED), task, patch, rc, 0.0, False,
                  output, b"", secrets.token_hex(8), math.inf, None)


def _records(channel: bytes, nonce: str) -> list[dict]:
    out = []
    for line in channel.splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if isinstance(r, dict) and r.get("n") == nonce:
            out.append(r)
    return out


def _from_records(records: list[dict]) -> tuple[dict[str, TestStatus], list[str]]:
    """Per-test outcomes from the plugin's records, and the evidence of tampering found in them."""
    status: dict[str, TestStatus] = {}
    tampered: list[str] = []
    worst = {TestStatus.PASSED: 0, TestStatus.XFAIL: 1, TestStatus.SKIPPED: 2, TestStatus.XPASS: 3,
             TestStatus.FAILED: 4, TestStatus.ERROR: 5}
    for r in records:
        if r.get("t") == "tamper":
            tampered.append("tampering seen while the tests ran: " + ", ".join(map(str, r.get("what", []))))
        if r.get("t") != "report":
            continue
        nodeid, when, outcome, xfail = str(r.get("id")), r.get("when"), r.get("outcome"), bool(r.get("xfail"))
        if when == "call":
            if r.get("raised") is None:
                tampered.append(f"{nodeid}: its result bypassed pytest's report hooks")
                s = TestStatus.FAILED
            elif outcome == "passed" and r.get("raised") and not xfail:
                tampered.append(f"{nodeid}: the test raised, but its report says passed")
                s = TestStatus.FAILED
            elif outcome == "passed":
                s = TestStatus.XPASS if xfail else TestStatus.PASSED
            elif outcome == "skipped":
                s = TestStatus.XFAIL if xfail else TestStatus.SKIPPED
            else:
                s = TestStatus.FAILED
        elif outcome == "failed":
            s = TestStatus.ERROR
        elif outcome == "skipped" and when == "setup":
            s = TestStatus.XFAIL if xfail else TestStatus.SKIPPED
        else:
            continue
        if nodeid not in status or worst[s] > worst[status[nodeid]]:
            status[nodeid] = s
    return status, tampered
