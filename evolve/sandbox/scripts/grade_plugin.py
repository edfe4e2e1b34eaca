"""evolve's pytest plugin for grading: outcomes out of band, and a watch on the runner.

Copied into the grading container's site-packages under a per-run random
module name and loaded with ``-p <name>`` (through ``PYTEST_ADDOPTS``), before
any conftest or module of /testbed is imported. At load it takes its channel
from the environment variable ``EVOLVE_GRADE_CHANNEL`` ("<fd> <token file>"),
removes the variable, reads the token file and deletes it: its first line is
the per-run nonce, the rest names the source files the patch changed (NUL-separated). It
moves the descriptor to a random high number and writes JSON lines to it; root
opened it on a file in a root-only directory, so nothing in the test process
can open that file by name.

Its state lives in closures, not in module globals, and an audit hook
(``sys.addaudithook``, which cannot be removed) reports what the changed source
files do to the process: read frames (``sys._getframe``), walk the heap
(``gc.get_objects``), replace a function's code or a runner class's attribute
(``object.__setattr__``), read a function's code or a frame, load native code, trace, send signals, look into
``/proc/self``. None of this makes the record unforgeable (code under test runs
in this process); it makes forging it visible.

Records (each carries ``"n": nonce`` and ``"s": sequence number``):
  {"t": "start", "pytest": version}
  {"t": "report", "id": nodeid, "when": setup|call|teardown, "outcome": passed|failed|skipped,
   "xfail": bool, "raised": bool|null}       raised: whether the test call itself raised
  {"t": "tamper", "what": [evidence]}         runner functions replaced, audited events
  {"t": "end", "exitstatus": int}             at the very end of the session

Runs inside the container with whatever Python the tests use: standard
library only, Python 3.6+ (the audit hook needs 3.8).
"""

import builtins
import json
import os
import random
import sys

import pytest


def _install():
    """Read the channel, then return the hook functions, closed over the plugin's state."""
    channel = os.environ.pop("EVOLVE_GRADE_CHANNEL", "")
    state = {"fd": -1, "nonce": "", "seq": 0, "ino": None, "changed": frozenset(), "baseline": {},
             "reported": set(), "auditing": False}
    if channel:
        fd_text, _, token_path = channel.partition(" ")
        try:
            with open(token_path, "rb") as f:
                nonce, _, changed = f.read().partition(b"\n")
            os.unlink(token_path)
            state["nonce"] = nonce.decode("ascii").strip()
            state["changed"] = frozenset(os.fsdecode(p) for p in changed.split(b"\0") if p)
            fd = int(fd_text)
            for _ in range(50):  # a descriptor number nobody can guess
                target = random.SystemRandom().randrange(300, 1000)
                try:
                    os.fstat(target)
                except OSError:
                    break
            state["fd"] = os.dup2(fd, target) if hasattr(os, "dup2") else os.dup(fd)
            if state["fd"] is None:  # Python < 3.7 returns None
                state["fd"] = target
            os.close(fd)
            st = os.fstat(state["fd"])
            state["ino"] = (st.st_dev, st.st_ino)
        except (OSError, ValueError) as e:  # the grader reads a missing start record as "no channel"
            sys.stderr.write("evolve grading plugin: no channel: %s\n" % e)
            state["fd"] = -1

    write, fstat = os.write, os.fstat
    dumps = json.dumps

    def send(record):
        fd = state["fd"]
        if fd < 0:
            return
        try:
            st = fstat(fd)
            if (st.st_dev, st.st_ino) != state["ino"]:
                state["fd"] = -1  # the descriptor was swapped: stop writing; the missing end says so
                return
        except OSError:
            state["fd"] = -1
            return
        state["seq"] += 1
        record["n"], record["s"] = state["nonce"], state["seq"]
        data = (dumps(record, sort_keys=True) + "\n").encode()
        try:
            while data:
                data = data[write(fd, data):]
        except OSError:
            state["fd"] = -1

    def watched():
        """The objects whose replacement means the runner was patched: {name: object}."""
        import _pytest.main
        import _pytest.python
        import _pytest.reports
        import _pytest.runner

        found = {
            "_pytest.runner.call_and_report": getattr(_pytest.runner, "call_and_report", None),
            "_pytest.runner.runtestprotocol": getattr(_pytest.runner, "runtestprotocol", None),
            "_pytest.runner.call_runtest_hook": getattr(_pytest.runner, "call_runtest_hook", None),
            "_pytest.runner.CallInfo.from_call": _pytest.runner.CallInfo.__dict__.get("from_call"),
            "_pytest.reports.TestReport.from_item_and_call":
                _pytest.reports.TestReport.__dict__.get("from_item_and_call"),
            "_pytest.reports.TestReport.__init__": _pytest.reports.TestReport.__dict__.get("__init__"),
            "_pytest.reports.BaseReport.passed": _pytest.reports.BaseReport.__dict__.get("passed"),
            "_pytest.reports.BaseReport.failed": _pytest.reports.BaseReport.__dict__.get("failed"),
            "_pytest.main.pytest_runtestloop": getattr(_pytest.main, "pytest_runtestloop", None),
            "_pytest.python.pytest_pyfunc_call": getattr(_pytest.python, "pytest_pyfunc_call", None),
            "builtins.__import__": builtins.__import__,
            "builtins.AssertionError": builtins.AssertionError,
            "os._exit": os._exit,
            "os.write": os.write,
            "sys.exit": sys.exit,
            "sys.modules[_pytest.runner]": sys.modules.get("_pytest.runner"),
            "sys.modules[_pytest.reports]": sys.modules.get("_pytest.reports"),
            "sys.modules[pluggy]": sys.modules.get("pluggy"),
        }
        callers = sys.modules.get("pluggy._callers")
        if callers is not None:
            found["pluggy._callers._multicall"] = getattr(callers, "_multicall", None)
        manager = sys.modules.get("pluggy._manager")
        if manager is not None:
            found["pluggy._manager.PluginManager._hookexec"] = manager.PluginManager.__dict__.get("_hookexec")
        return found

    def tamper(evidence):
        fresh = [e for e in evidence if e not in state["reported"]]
        if fresh:
            state["reported"].update(fresh)
            send({"t": "tamper", "what": sorted(fresh)})

    def check():
        try:
            now = watched()
        except Exception as e:  # the runner's own modules became unimportable: that is tampering too
            now = {"import of the runner's modules: %s" % type(e).__name__: object()}
        tamper(["replaced: " + k for k, v in now.items() if state["baseline"].get(k) is not v])

    # -- the audit hook: what the changed source files do --------------------------------------
    runner_tops = ("_pytest", "pytest", "pluggy", "builtins", __name__.split(".")[0])
    # Events that count when the changed file itself causes them (a standard-library helper in
    # between, such as logging reading frames, does not count), and events that count through the
    # standard library too (looking into /proc/self with pathlib, say).
    direct_events = {"sys._getframe", "sys._current_frames", "gc.get_objects", "gc.get_referrers",
                     "gc.get_referents", "sys.settrace", "sys.setprofile", "sys.addaudithook",
                     "ctypes.dlopen", "ctypes.dlsym", "ctypes.addressof", "ctypes.cdata", "ctypes.string_at",
                     "ctypes.wstring_at", "ctypes.call_function", "code.__new__", "function.__new__",
                     "os.kill", "os.killpg", "signal.pthread_kill", "object.__delattr__",
                     "object.__setattr__", "object.__getattr__", "exec", "compile"}
    proc_events = {"open", "os.listdir", "os.scandir"}
    getframe = getattr(sys, "_getframe")

    def caller_file(depth, skip_stdlib):
        """The file of the first frame above the audit hook (past the standard library if asked)."""
        frame = getframe(depth)
        stdlib = os.path.dirname(os.__file__)
        while frame is not None:
            name = frame.f_code.co_filename
            if not skip_stdlib or not (name.startswith(stdlib) or name.startswith("<frozen")):
                return name
            frame = frame.f_back
        return ""

    def audit(event, args):
        if state["auditing"] or not state["changed"]:
            return
        state["auditing"] = True
        try:
            if event in direct_events:
                origin = caller_file(2, False)
            elif event in proc_events:
                origin = caller_file(2, True)
            else:
                return
            if origin not in state["changed"]:
                return
            if event == "object.__setattr__":
                target, name = args[0], args[1]
                owner = getattr(target, "__module__", "") or ""
                if name != "__code__" and not str(owner).startswith(runner_tops):
                    return  # the code's own classes may set their attributes
                event = "object.__setattr__(%s, %r)" % (getattr(target, "__qualname__", type(target).__name__),
                                                         name)
            elif event == "object.__getattr__":
                # Reading a function's code or a frame (tracebacks, generators) from changed code.
                event = "read of %r" % (args[1],)
            elif event in ("open", "os.listdir", "os.scandir"):
                path = str(args[0]) if args else ""
                if not path.startswith(("/proc", "/dev/fd")):
                    return
                event = "%s(%s)" % (event, path)
            tamper(["%s from %s" % (event, origin)])
        except Exception as e:  # an audit hook must never break the run; the evidence says so
            tamper(["audit hook error %s on %s" % (type(e).__name__, event)])
        finally:
            state["auditing"] = False

    if hasattr(sys, "addaudithook"):
        sys.addaudithook(audit)

    # -- pytest hooks ----------------------------------------------------------------------------
    def pytest_configure(config):
        state["baseline"].update(watched())
        send({"t": "start", "pytest": getattr(pytest, "__version__", "?")})

    @pytest.hookimpl(hookwrapper=True, tryfirst=True)
    def pytest_runtest_call(item):
        outcome = yield
        excinfo = getattr(outcome, "excinfo", None)
        if excinfo is None and hasattr(outcome, "exception"):
            excinfo = outcome.exception
        state[("raised", item.nodeid)] = excinfo is not None

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logreport(report):
        raised = state.pop(("raised", report.nodeid), None) if report.when == "call" else None
        send({"t": "report", "id": report.nodeid, "when": report.when, "outcome": report.outcome,
              "xfail": hasattr(report, "wasxfail"), "raised": raised})
        check()

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(session, exitstatus):
        state["exitstatus"] = int(exitstatus)

    @pytest.hookimpl(trylast=True)
    def pytest_unconfigure(config):
        check()
        send({"t": "end", "exitstatus": state.get("exitstatus")})

    return (pytest_configure, pytest_runtest_call, pytest_runtest_logreport, pytest_sessionfinish,
            pytest_unconfigure)


(pytest_configure, pytest_runtest_call, pytest_runtest_logreport, pytest_sessionfinish,
 pytest_unconfigure) = _install()
del _install
