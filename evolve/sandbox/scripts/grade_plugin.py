"""evolve's pytest plugin for grading: outcomes out of band, and a watch on the runner.

Copied into the grading container's site-packages under a per-run random
module name and loaded with ``-p <name>`` (through ``PYTEST_ADDOPTS``), before
any conftest or module of /testbed is imported. At load it takes its channel
from the environment variable ``EVOLVE_GRADE_CHANNEL`` ("<fd> <token file>"),
removes the variable, reads the token file and deletes it: its first line is
the per-run nonce, the rest names the source files the patch changed, each followed by the
lines it changed ("a-b,c-d", or "*" for all; NUL-separated). It
moves the descriptor to a random high number and writes JSON lines to it; root
opened it on a file in a root-only directory, so nothing in the test process
can open that file by name.

Its state lives in closures, not in module globals. It watches the runner two ways:

- Snapshots. At configure it records the functions of every namespace of the
  runner (each module of pytest, _pytest and pluggy, and each class they
  define) and the plugins registered; after each report it reports any of
  those functions replaced or deleted, a function added to a runner class,
  and each hook function of untrusted code that pluggy would call: in a
  plugin registered since, or put into an implementation of a hook that runs
  or reports tests (``HookImpl.function``). The implementations the run
  started with are the runner's and the suite's; when the project under test
  is pytest or pluggy, their changed files are the runner's own. It also
  reports a builtin (``builtins.len``, ...) replaced by a function, method,
  class or callable whose code is untrusted (below); the suite's own
  ``monkeypatch`` of a builtin, or ``gettext.install``, is trusted code.
- An audit hook (``sys.addaudithook``, which cannot be removed) that reports
  what untrusted code does to the process: read frames (``sys._getframe``,
  ``sys._current_frames``), walk the heap (``gc.get_objects``), trace
  (``sys.settrace``), replace a function's code, read a traceback's,
  generator's or coroutine's frame, build code objects, load native code, send
  signals, look into ``/proc/self``. Reading a function's code or defaults, or
  a frame's code, hands over no frame and is not reported.

Attribution (who did it) is by provenance. Untrusted code is: a code object
(a function, a class body, a module body; not the code nested in it) that runs
a line the patch changed, so a fixed file's untouched helpers are as trusted as
an untouched file's (an untouched helper that hands frames back is a gadget
either way); code whose file (``co_filename``) was written while the tests ran
(its ctime is not before the plugin loaded; ``os.utime`` cannot set a ctime
back) or no longer exists; code under a file name untrusted code compiled or ran
code under (``compile``, ``exec``, ``function.__new__`` taint the name, and the
names of the code nested in it; compiling a file's own text taints nothing);
and the source of, and every name inside, bytecode (``*.pyc``) written while
the tests ran that is read. Other names, "<string>" and "<frozen ...>"
included, are trusted until tainted. ``exec`` and ``compile`` are no evidence
themselves, so a fixed module may run code at import (six does); what that
code does is attributed to it. An event is attributed to:

- the code that made the call, for frames, code objects, signals and audit
  hooks; the standard library's helpers that hand frames to their caller
  (inspect.currentframe/stack/trace/getouterframes/getinnerframes/getframeinfo,
  traceback.walk_stack/walk_tb/extract_stack/format_stack/print_stack, logging.currentframe,
  ...) are looked through,
  while its other users of frames (logging's findCaller, enum, typing,
  collections.namedtuple, warnings, traceback formatting) are its own;
- the first frame outside the standard library, for tracing, the heap, ctypes,
  special attributes of runner classes and ``/proc``: bdb's ``settrace`` or
  unittest.mock's ``setattr`` on behalf of untrusted code count. A standard
  library module's own import-time code, and the import system running a file
  with a loader the standard library defines, are the standard library's own.

Known false positives: a changed function that reads frames, walks the heap or
traces for good reasons; bytecode the test process wrote and reads again
(``importlib.reload`` of a module first imported during the tests, a
subprocess's ``__pycache__``) taints its source; code the tests generate while
they run (pytester) is untrusted.

The hook filters by event name before it walks a frame and caches each code
object's trust (one ``stat`` per code object that raises a watched event). The
plugin never calls ``id()``: each call raises the audit event "builtins.id" and
so runs the hook; it compares by identity (``is``) and keys by ``object.__hash__``
(an address too, and no class can change it), in C loops where nothing changed
(bench/grade_overhead.py measures what it costs a suite). It
runs no code of the objects it is given (no ``str``, ``==`` or attribute lookup
that a class could override), and binds what it uses at load, so it works at
interpreter exit too. None of this makes the record unforgeable (code under test
runs in this process); it makes forging it visible.

Records (each carries ``"n": nonce`` and ``"s": sequence number``):
  {"t": "start", "pytest": version}
  {"t": "report", "id": nodeid, "when": setup|call|teardown, "outcome": passed|failed|skipped,
   "xfail": bool, "raised": bool|null}       raised: whether the test call itself raised
  {"t": "tamper", "what": [evidence]}         runner functions replaced, late plugins, audited events
  {"t": "end", "exitstatus": int}             at the very end of the session

Runs inside the container with whatever Python the tests use: standard
library only, Python 3.6+ (the audit hook needs 3.8).
"""

import _thread
import builtins
import json
import marshal
import operator
import os
from itertools import chain
from operator import attrgetter, is_not, itemgetter, methodcaller
import random
import re
import stat
import sys
import time
from types import MethodType

import pytest


TEST_FILE = re.compile(r"/(tests?|testing)/|/test_[^/]*\.py$|_test\.py$|/conftest\.py$")
"""A file of the test suite, by the neutraliser's rule (grade_neutralise.TEST_LIKE) on an absolute path."""

UNITTEST_PROBED = {"assertEqual": "==", "assertNotEqual": "!=", "assertIn": "in", "assertCountEqual": "==",
                   "assertListEqual": "==", "assertTupleEqual": "==", "assertSetEqual": "==",
                   "assertDictEqual": "==", "assertSequenceEqual": "==", "assertMultiLineEqual": "==",
                   "assertAlmostEqual": "==", "assertGreater": ">", "assertGreaterEqual": ">=",
                   "assertLess": "<", "assertLessEqual": "<="}
"""unittest.TestCase's asserts whose two arguments are probed, with the comparison each makes."""


def _now_as_ctime():
    """The kernel's time as a file written now records it (its coarse clock), in nanoseconds."""
    import tempfile

    try:
        with tempfile.TemporaryFile() as f:
            return os.fstat(f.fileno()).st_ctime_ns
    except OSError as e:  # no temporary file: the clock, a tick early
        sys.stderr.write("evolve grading plugin: no temporary file (%s); files are dated by the clock\n" % e)
        return int((time.time() - 0.05) * 1e9)


def _spans(text):
    """"a-b,c-d" -> [(a, b), (c, d)]; "*" (the whole file) -> None."""
    if text == "*":
        return None
    return [tuple(int(n) for n in part.split("-")) for part in text.split(",") if part]


def _install():
    """Read the channel, then return the hook functions, closed over the plugin's state."""
    channel = os.environ.pop("EVOLVE_GRADE_CHANNEL", "")
    state = {"fd": -1, "nonce": "", "seq": 0, "ino": None, "changed": {}, "baseline": {}, "namespaces": {},
             "plugins_seen": {}, "hooks_seen": {}, "runner_dirs": ("\0",), "builtins": None,
             "reported": set()}
    if channel:
        fd_text, _, token_path = channel.partition(" ")
        try:
            with open(token_path, "rb") as f:
                nonce, _, changed = f.read().partition(b"\n")
            os.unlink(token_path)
            state["nonce"] = nonce.decode("ascii").strip()
            fields = changed.split(b"\0")
            state["changed"] = {os.fsdecode(p): _spans(r.decode("ascii")) for p, r in zip(fields[0::2], fields[1::2])
                                if p}
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
        case = state.get("unittest_case")
        if case is not None:
            for name in UNITTEST_PROBED:
                found["unittest.TestCase." + name] = case.__dict__.get(name)
        callers = sys.modules.get("pluggy._callers")
        if callers is not None:
            found["pluggy._callers._multicall"] = getattr(callers, "_multicall", None)
        manager = sys.modules.get("pluggy._manager")
        if manager is not None:
            found["pluggy._manager.PluginManager._hookexec"] = manager.PluginManager.__dict__.get("_hookexec")
        return found

    def namespaces():
        """The namespace of every runner module (pytest, _pytest, pluggy, this plugin) and of each
        class it defines: [(label, mapping, is_class)]."""
        out = []
        for name in sorted(list(sys.modules)):
            if not (name in ("pytest", "_pytest", "pluggy", __name__) or name.startswith(("_pytest.", "pluggy."))):
                continue
            names = getattr(sys.modules.get(name), "__dict__", None)
            if type(names) is not dict:
                continue
            out.append((name, names, False))
            for value in list(names.values()):
                if isinstance(value, type) and value.__dict__.get("__module__") == name:
                    out.append(("%s.%s" % (name, value.__qualname__), value.__dict__, True))
        return out

    function_type = type(_install)
    method_type = MethodType
    call_getter = itemgetter.__call__
    # An object's address as a number, as id() gives it, but without raising the audit event
    # "builtins.id": id() would run the audit hook once per object compared (thousands per test).
    # object's own slot, so no class can change what it returns; unique while the object lives.
    key_of = object.__hash__
    impls_of = methodcaller("get_hookimpls")
    function_of = attrgetter("function")
    outcome_hooks = ("pytest_runtest", "pytest_pyfunc_call", "pytest_report", "pytest_collection",
                     "pytest_make", "pytest_itemcollected", "pytest_deselected", "pytest_sessionfinish",
                     "pytest_terminal_summary", "pytest_exception_interact", "pytest_unconfigure")
    method_kinds = (function_type, classmethod, staticmethod, property)

    def code_like(value):
        """A function, method or property: what running the runner calls (not its data)."""
        return type(value) in method_kinds

    def snapshot():
        """What ``replaced`` compares against: per namespace, the keys holding the runner's
        functions and what they hold, and all its keys; and the same flattened, so that the
        common case (nothing changed) is compared without a Python loop."""
        entries = []
        for label, names, is_class in namespaces():
            keys = tuple(k for k, v in list(names.items()) if code_like(v) or isinstance(v, type))
            entries.append([label, names, is_class, keys, tuple(map(names.get, keys)), frozenset(names)])
        return flatten(entries)

    def flatten(entries):
        tracked = [e for e in entries if e[3]]
        # itemgetter of one key returns the value, not a 1-tuple: ask for it twice
        getters = [itemgetter(*(e[3] * 2 if len(e[3]) == 1 else e[3])) for e in tracked]
        classes = [e[1] for e in entries if e[2]]
        return {"entries": entries, "getters": getters, "maps": [e[1] for e in tracked],
                "values": tuple(chain.from_iterable(g(e[1]) for g, e in zip(getters, tracked))),
                "classes": classes, "sizes": tuple(map(len, classes))}

    def unchanged(snap):
        """Whether every value ``snap`` tracks is still there and the same object ("is", not ==: a
        replacement could say it equals what it replaced). One C loop over every value (no id():
        each call would raise an audit event)."""
        try:
            return not any(map(is_not, chain.from_iterable(map(call_getter, snap["getters"], snap["maps"])),
                               snap["values"]))
        except KeyError:  # one was deleted
            return False

    def replaced(snap):
        """Evidence of runner functions replaced or deleted, or added to a runner class (shadowing
        what it inherits), since ``snap``; each is reported once."""
        if not snap:
            return []
        if unchanged(snap) and tuple(map(len, snap["classes"])) == snap["sizes"]:
            return []
        out = []
        for entry in snap["entries"]:
            label, names, is_class, keys, values, known = entry
            if any(map(is_not, map(names.get, keys), values)):
                out += ["replaced: %s.%s" % (label, k) for k, v in zip(keys, values) if names.get(k) is not v]
                entry[4] = tuple(map(names.get, keys))
            if is_class and len(names) != len(known):
                out += ["replaced: %s.%s (added)" % (label, k) for k, v in list(names.items())
                        if k not in known and code_like(v)]
                entry[5] = frozenset(names)
        for entry in snap["entries"]:  # what was deleted stays reported; compare what is there now
            entry[3] = tuple(k for k in entry[3] if k in entry[1])
            entry[4] = tuple(map(entry[1].get, entry[3]))
        snap.update(flatten(snap["entries"]))
        return out

    def hook_code(fn):
        fn = getattr(fn, "__func__", fn)
        code = getattr(fn, "__code__", None)
        return code if type(code) is code_type else None

    def runners_own(code):
        """Changed code of pytest, _pytest or pluggy themselves, when the project under test is the
        runner: its changes are the runner's, and no hook of it can be told from the runner's."""
        name = code.co_filename
        return (name in state["changed"] and name not in tainted and name.startswith(state["runner_dirs"])
                and file_trusted(name))

    def foreign_hooks(everything):
        """Evidence of hook functions of untrusted code: in a plugin registered after the run
        started (a conftest is test code; a plugin the run started with is the runner's), and,
        when ``everything``, in any plugin's implementation of a hook that runs or reports tests
        (an implementation's function replaced)."""
        config = state.get("config")
        manager = getattr(config, "pluginmanager", None)
        if manager is None:
            return []
        out = []
        seen = state["plugins_seen"]
        plugins = list(manager.get_plugins())
        # The common case (no plugin registered since) in C: addresses of live objects (``seen``
        # holds every plugin it names, so no address is reused) compared as numbers.
        for plugin in ([] if seen.keys() >= set(map(key_of, plugins)) else plugins):
            if seen.get(key_of(plugin)) is plugin:
                continue
            seen[key_of(plugin)] = plugin
            for caller in getattr(manager, "get_hookcallers", lambda plugin: ())(plugin) or ():
                for impl in caller.get_hookimpls():
                    if impl.plugin is not plugin:
                        continue
                    code = hook_code(impl.function)
                    if code is None:
                        out.append("%s: a hook that is no function, of a plugin registered while the tests ran"
                                   % caller.name)
                    elif not trusted(code) and not runners_own(code):
                        out.append("%s of a plugin registered while the tests ran, from %s"
                                   % (caller.name, code.co_filename))
        if everything:
            hooks, seen = vars(manager.hook), state["hooks_seen"]
            names = list(filter(methodcaller("startswith", outcome_hooks), list(hooks)))
            callers = list(map(hooks.get, names))
            fns = map(function_of, chain.from_iterable(map(impls_of, callers)))
            if seen.keys() >= set(map(key_of, fns)):  # no implementation's function changed (in C)
                names = []
            for name, caller in zip(names, callers):
                for impl in caller.get_hookimpls():
                    fn = impl.function
                    if seen.get(key_of(fn)) is fn:
                        continue
                    code = hook_code(fn)
                    if code is None or not (trusted(code) or runners_own(code)):
                        out.append("%s: its implementation in %s is %s" % (
                            name, getattr(impl, "plugin_name", "?"),
                            "no function" if code is None else "from " + code.co_filename))
                    seen[key_of(fn)] = fn
        return out

    def tamper(evidence):
        fresh = [e for e in evidence if e not in state["reported"]]
        if fresh:
            state["reported"].update(fresh)
            send({"t": "tamper", "what": sorted(fresh)})

    def check(everything):
        """Report what changed in the runner: the watched objects and late plugins at every report,
        all of the runner's namespaces when ``everything`` (each test's call, and the end)."""
        try:
            now = watched()
        except Exception as e:  # the runner's own modules became unimportable: that is tampering too
            now = {"import of the runner's modules: %s" % type(e).__name__: object()}
        tamper(["replaced: " + k for k, v in now.items() if state["baseline"].get(k) is not v]
               + (replaced(state["namespaces"]) if everything else []) + foreign_hooks(everything)
               + builtins_replaced())

    def codes_of(value):
        """The code objects calling ``value`` may run, found without running any of its code: a
        function's or method's own, its class's ``__call__``, or the functions a class defines."""
        kind = type(value)
        if kind is function_type:
            return [value.__code__]
        if kind is method_type:
            return codes_of(value.__func__)
        if issubclass(kind, type):
            names = type.__dict__["__dict__"].__get__(value)
            return [f.__code__ for f in list(names.values()) if type(f) is function_type]
        call = static_attr(value, "__call__")
        return [call.__code__] if type(call) is function_type else []

    def builtins_replaced():
        """Evidence of a builtin replaced by untrusted code's function (or an object whose class's
        ``__call__`` is untrusted code): ``len``, ``isinstance``, ... The test suite's own
        replacements (monkeypatch of ``builtins.input``) are trusted code and not reported.
        Compared by identity in C; each change is looked at once."""
        names, snap = builtins.__dict__, state["builtins"]
        if snap is None or (len(names) == len(snap[0]) and not any(map(is_not, map(names.get, snap[0]), snap[1]))):
            return []
        out = []
        old = dict(zip(snap[0], snap[1]))
        for k, v in list(names.items()):
            if old.get(k, old) is v or type(k) is not str:
                continue
            for code in codes_of(v):
                if not trusted(code) and not runners_own(code):
                    out.append("replaced: builtins.%s from %s" % (k, code.co_filename))
                    break
        keys = tuple(names)
        state["builtins"] = (keys, tuple(map(names.get, keys)))
        return out

    # -- the audit hook: what untrusted code does (the rule is in the module docstring) ----------
    code_type = type(_install.__code__)
    plain_functions = (type(_install), classmethod, staticmethod)
    type_module = type.__dict__["__module__"].__get__
    type_qualname = type.__dict__["__qualname__"].__get__
    runner_tops = ("_pytest", "pytest", "pluggy", "builtins", "importlib", "_frozen_importlib", "zipimport",
                   __name__.split(".")[0])
    # Evidence when untrusted code makes the call; the caller is seen through the standard
    # library's helpers that hand frames to their caller (hands_frames).
    direct_events = frozenset({"sys._getframe", "sys._current_frames", "sys.addaudithook", "code.__new__",
                               "os.kill", "os.killpg", "signal.pthread_kill", "object.__getattr__"})
    # Evidence when untrusted code causes them, even through the standard library (bdb's settrace,
    # ctypes's dlopen, unittest.mock's setattr, pathlib's open): the cause is the first frame
    # outside it.
    through_events = frozenset({"sys.settrace", "sys.setprofile", "sys._settraceallthreads",
                                "sys._setprofileallthreads", "gc.get_objects", "gc.get_referrers",
                                "gc.get_referents", "ctypes.dlopen", "ctypes.dlsym", "ctypes.addressof",
                                "ctypes.cdata", "ctypes.string_at", "ctypes.wstring_at", "ctypes.call_function",
                                "object.__setattr__", "object.__delattr__", "open", "os.listdir", "os.scandir"})
    # No evidence themselves: what untrusted code compiles or runs becomes untrusted (tainted).
    taint_events = frozenset({"compile", "exec", "function.__new__"})
    watched_events = direct_events | through_events | taint_events
    # Standard-library functions that return frames (or a frame's locals) to their caller.
    hands_frames = {
        "inspect.py": frozenset({"currentframe", "stack", "trace", "getouterframes", "getinnerframes",
                                 "getframeinfo", "getgeneratorlocals", "getcoroutinelocals", "getasyncgenlocals",
                                 "getclosurevars"}),
        "traceback.py": frozenset({"walk_stack", "walk_tb", "extract_stack", "format_stack", "print_stack"}),
        "logging/__init__.py": frozenset({"currentframe", "<lambda>", "findCaller"}),
        "asyncio/base_tasks.py": frozenset({"_task_get_stack"}),
    }
    importers = ("<frozen importlib._bootstrap_external>", "<frozen zipimport>")
    loader_parts = ("get_code", "get_data", "get_source", "source_to_code", "path_stats", "exec_module",
                    "get_filename")
    stdlib = os.path.dirname(os.__file__) + os.sep
    # Bound now: at interpreter exit the module's globals are gone while the hook still runs.
    getframe, stat_of, get_ident, is_regular = getattr(sys, "_getframe"), os.stat, _thread.get_ident, stat.S_ISREG
    dirname, join, sep, fsdecode, fspath = os.path.dirname, os.path.join, os.sep, os.fsdecode, os.fspath
    unmarshal = marshal.loads
    line_starts = None if hasattr(code_type, "co_lines") else __import__("dis").findlinestarts
    loaded = _now_as_ctime()
    tainted = set()  # file names of code untrusted code compiled or ran, or of bytecode written while the tests ran
    codes = {}       # key_of(code) -> (code, its file is trusted, its path in the standard library or None)
    busy = set()     # threads inside the hook (its own calls raise events, and must run no foreign code)

    def file_trusted(name):
        """Whether the file ``name`` is code as graded: not changed by the patch, not written while
        the tests ran (ctime, which os.utime cannot set back), not gone. Pseudo-names ("<string>",
        "<frozen ...>") are trusted until tainted."""
        if name.startswith("<"):
            return True
        path = name
        while True:
            try:
                st = stat_of(path)
                break
            except (OSError, ValueError):
                parent = dirname(path)
                if not parent or parent == path:
                    return False
                path = parent
        if path != name and not is_regular(st.st_mode):
            return False  # gone from a directory that exists (a zip archive that holds it is a file)
        return st.st_ctime_ns < loaded

    def info(code):
        """(trusted, path in the standard library or None) of a code object, cached per object."""
        got = codes.get(key_of(code))
        if got is not None and got[0] is code:
            return got[1], got[2]
        name = code.co_filename
        if type(name) is not str:
            return False, None
        lib = None
        if name.startswith("<frozen "):
            lib = name
        elif name.startswith(stdlib) and "-packages" + sep not in name:
            lib = name[len(stdlib):]
        if len(codes) > 20000:
            codes.clear()
        spans = state["changed"].get(name, ())
        ok = not (spans is None or (spans and runs_lines(code, spans))) and file_trusted(name)
        codes[key_of(code)] = (code, ok, lib)
        return ok, lib

    def runs_lines(code, spans):
        """Whether ``code`` itself (not the code nested in it) runs a line in ``spans``."""
        if line_starts is None:
            lines = set(line for _, _, line in code.co_lines() if line is not None)
        else:  # Python < 3.10
            lines = set(line for _, line in line_starts(code))
        return any(a <= line <= b for line in lines for a, b in spans)

    def trusted(code):
        ok, _ = info(code)
        return ok and code.co_filename not in tainted

    def caller(frame):
        """The code that made the audited call: past the standard library's frame-handing helpers."""
        while frame is not None:
            code = frame.f_code
            ok, lib = info(code)
            if lib is None or not ok or code.co_filename in tainted or code.co_name not in hands_frames.get(lib, ()):
                return code
            frame = frame.f_back
        return None

    def static_attr(obj, name):
        """``name`` looked up on ``obj`` without running any of its code (instance dict, then class)."""
        try:
            own = object.__getattribute__(obj, "__dict__")
        except AttributeError:
            own = None
        if type(own) is dict and name in own:
            return own[name]
        return provider(obj, name)[1]

    def provider(obj, name):
        """(class, value) that gives ``type(obj)`` its attribute ``name``, read without running code."""
        for cls in type.__dict__["__mro__"].__get__(type(obj)):
            d = type.__dict__["__dict__"].__get__(cls)
            if name in d:
                return cls, d[name]
        return None, None

    def loader_trusted(loader):
        """A loader runs the code of the file it was made for, unless untrusted code defined a part of it."""
        for part in loader_parts:
            fn = static_attr(loader, part)
            if fn is None:
                continue
            if type(fn) not in plain_functions:
                return False
            if type(fn) is not plain_functions[0]:
                fn = fn.__func__
            if type(fn) is not plain_functions[0] or not trusted(fn.__code__):
                return False
        return True

    def cause(frame):
        """The code of the first frame outside the standard library, or None when the standard
        library acts on its own (a module's import-time code, the import system running a file)."""
        while frame is not None:
            code = frame.f_code
            ok, lib = info(code)
            if lib is None or not ok or code.co_filename in tainted:
                return code
            if code.co_name == "<module>":
                return None
            if lib in importers and code.co_name in ("exec_module", "get_code"):
                loader = frame.f_locals.get("self")
                if loader is not None:
                    return None if loader_trusted(loader) else code
            frame = frame.f_back
        return None

    def taint_code(code):
        todo, seen = [code], set()
        while todo:
            c = todo.pop()
            if key_of(c) in seen:
                continue
            seen.add(key_of(c))
            if type(c.co_filename) is str:
                tainted.add(c.co_filename)
            todo.extend(k for k in c.co_consts if type(k) is code_type)

    def regular_bytes(path, limit=64 << 20):
        """The content of the regular file ``path`` (None for anything else or anything bigger)."""
        try:
            st = stat_of(path)
            if not is_regular(st.st_mode) or st.st_size > limit:
                return None, st
            with open(path, "rb") as f:
                return f.read(limit + 1), st
        except OSError:
            return None, None

    def fresh_bytecode(path):
        """Bytecode written while the tests ran is being read: its source and every file name
        inside it become untrusted."""
        try:
            if stat_of(path).st_ctime_ns < loaded:
                return
        except OSError:
            return
        head, _, base = path.rpartition(sep)
        if head.endswith("__pycache__"):
            tainted.add(join(dirname(head), base.split(".")[0] + ".py"))
        data, _ = regular_bytes(path)
        try:
            code = unmarshal(data[16:]) if data else None
        except Exception:  # not bytecode this Python reads: it runs nothing here
            return
        if type(code) is code_type:
            taint_code(code)

    def own_source(name, source):
        """Whether ``source`` is the text of the file ``name`` (compiling a file's own text taints nothing)."""
        if name.startswith("<") or type(source) not in (str, bytes):
            return False
        data, _ = regular_bytes(name)
        if data is None:
            return False
        return data == (source.encode("utf-8", "surrogateescape") if type(source) is str else source)

    def as_text(value):
        """A path or name as text, without running code of the value's own (a pathlib path is
        the standard library's)."""
        if type(value) is str:
            return value
        if type(value) is bytes:
            return fsdecode(value)
        if type_module(type(value)) == "pathlib":
            return fspath(value)
        return None

    def audit(event, args):
        if event not in watched_events or not state["changed"]:
            return
        me = get_ident()
        if me in busy:
            return
        busy.add(me)
        try:
            what = event
            if event in ("open", "os.listdir", "os.scandir"):
                path = as_text(args[0]) if args else None
                if path is None:
                    return  # a descriptor, or a path object (whose own code ran before the call)
                if event == "open" and path.endswith(".pyc"):
                    fresh_bytecode(path)
                    return
                if not path.startswith(("/proc", "/dev/fd")):
                    return
                what = "%s(%s)" % (event, path)
            elif event == "object.__getattr__":
                name = args[1] if len(args) > 1 else None
                if type(name) is str and not name.endswith("_frame"):
                    return  # a function's code or defaults, a frame's code: reading them hands over no frame
                what = "read of %r" % (name if type(name) is str else "?",)
            try:
                frame = getframe(1)
            except ValueError:  # no Python code made this call
                return
            if event in taint_events:
                origin = cause(frame)
                if origin is None or trusted(origin):
                    return
                if event == "compile":
                    name = as_text(args[1]) if len(args) > 1 else None
                    if name is None:
                        tamper(["compile under a file name that is no text from %s" % origin.co_filename])
                    elif not own_source(name, args[0]):
                        tainted.add(name)
                elif args and type(args[0]) is code_type:
                    taint_code(args[0])
                return
            if event in ("object.__setattr__", "object.__delattr__"):
                target, name = args[0], args[1]
                if type(name) is not str:
                    name = "<%s>" % type(name).__name__
                if issubclass(type(target), type):
                    owner, label = type_module(target), type_qualname(target)
                else:
                    owner, label = "", type(target).__name__
                if type(owner) is not str:
                    owner = ""
                if name != "__code__" and not owner.startswith(runner_tops):
                    return  # the code's own classes may set their attributes
                what = "%s(%s, %r)" % (event, label if type(label) is str else "?", name)
            if event in direct_events:
                origin = caller(frame)
            else:
                origin = cause(frame)
            if origin is None or trusted(origin):
                return
            tamper(["%s from %s" % (what, origin.co_filename)])
        except Exception as e:  # an audit hook must never break the run; the evidence says so
            tamper(["audit hook error %s on %s" % (type(e).__name__, event)])
        finally:
            busy.discard(me)

    if hasattr(sys, "addaudithook"):
        sys.addaudithook(audit)

    # -- comparisons: equality claimed by code that is not trusted -------------------------------
    # A test passes on ``assert result == expected`` when ``result`` claims to equal ``expected``.
    # Whatever the patch's code returns is probed where a test compares it: an assertion pytest
    # rewrote (through its assertion-pass branch, which this plugin turns on and keeps cheap) and
    # unittest's assertEqual family. A claim is op(x, p) holding for a value p that x cannot know:
    # an instance of a class made here, and a value of the other operand's own type that differs
    # from it by a random amount (an object that equals every int would equal that one too). The
    # claim is evidence when code that is not trusted decided it (a frame of untrusted code ran
    # while it was decided, or a comparison method that is no function sits in a class of a file
    # the patch changed), or when a trusted matcher (unittest.mock.ANY, say) made it that no test
    # module holds: the code under test returned it.
    class Unseen(object):
        """An object nothing outside this plugin can know."""
        __slots__ = ()

    probe_rng = random.SystemRandom()
    plain_types = frozenset({int, float, complex, str, bytes, bool, type(None)})
    container_types = frozenset({list, tuple, dict, set, frozenset})
    compare = {"==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le,
               ">": operator.gt, ">=": operator.ge}
    inverse = {"<": ">=", "<=": ">", ">": "<=", ">=": "<"}
    dunder_of = {"==": "__eq__", "!=": "__ne__", "<": "__lt__", "<=": "__le__", ">": "__gt__", ">=": "__ge__",
                 "in": "__contains__"}
    gettrace, settrace, module_type = sys.gettrace, sys.settrace, type(sys)
    test_file = TEST_FILE.search
    passing = set()  # threads inside the assertion-pass branch of a rewritten assert
    probing = set()  # threads inside ``probe`` (the comparisons it makes are not probed again)

    def kin(value):
        """Values of ``value``'s own type that differ from it ([] for other types)."""
        t = type(value)
        r = probe_rng.randrange(1 << 20, 1 << 40)
        if t is bool:
            return [not value]
        if t is int:
            return [value + r]
        if t is float:
            return [value + r + 0.5] if value == value and -1e300 < value < 1e300 else []
        if t is str:
            return [value + "\0%x" % r]
        if t is bytes:
            return [value + ("\0%x" % r).encode()]
        if t in (list, tuple):
            return [value + t((Unseen(),))]
        if t is dict:
            other = dict(value)
            other[Unseen()] = r
            return [other]
        if t in (set, frozenset):
            return [value | t((Unseen(),))]
        return []

    def decided(fn, a, b):
        """(truth of fn(a, b) or None when it raised, the first untrusted code that ran to decide it)."""
        ran = []

        def tracer(frame, event, arg):
            if not ran and not trusted(frame.f_code):
                ran.append(frame.f_code)

        previous = gettrace()
        settrace(tracer)
        try:
            truth = True if fn(a, b) else False
        except Exception:
            truth = None
        finally:
            settrace(previous)
        return truth, (ran[0] if ran else None)

    def file_of(module):
        """A module's ``__file__`` as text, or None (no module, a builtin module, a namespace package)."""
        name = getattr(module, "__file__", None) if type(module) is module_type else None
        return name if type(name) is str else None

    def held_by_tests(obj, frame):
        """Whether the asserting frame's module or any loaded test module holds ``obj`` at module
        level, or a module one of them imported does (``mock.ANY``); or a module the asserting
        frame imported does. The frame's other locals are no evidence: results of the code under
        test live there."""
        spaces = [(frame.f_globals, True), (frame.f_locals, False)] if frame is not None else []
        for module in list(sys.modules.values()):
            name = file_of(module)
            if name is not None and test_file(name):
                spaces.append((vars(module), True))
        for names, direct in spaces:
            for value in list(names.values()):
                if value is obj and direct:
                    return True
                if type(value) is module_type and any(v is obj for v in list(vars(value).values())):
                    return True
        return False

    def claim(op, x, y, frame):
        """Evidence when ``x`` claims ``op`` against values ``y`` stands for (see above), else None."""
        if type(x) in plain_types or type(x) in container_types:
            return None
        label = "%s.%s" % (type_module(type(x)), type_qualname(type(x)))
        claimed, by = False, None
        if op in inverse:  # both a < b and a >= b: no real order says so
            first, by1 = decided(compare[op], x, y)
            second, by2 = decided(compare[inverse[op]], x, y)
            claimed, by = bool(first and second), by1 or by2
        else:
            fn = (lambda c, p: p in c) if op == "in" else compare[op]  # for "in", x is the container
            for p in kin(y) + [Unseen()]:
                truth, who = decided(fn, x, p)
                if truth is (op != "!="):
                    claimed, by = True, who
                    break
        if not claimed:
            return None
        what = "an object of %s claims %s against values it was never given" % (label, op)
        if by is not None:
            return "%s, decided by %s" % (what, by.co_filename)
        cls, method = provider(x, dunder_of.get(op, "__eq__"))
        where = file_of(sys.modules.get(type_module(cls))) if cls is not None else None
        if type(method) is not function_type and where is not None and (where in state["changed"]
                                                                          or not file_trusted(where)):
            return "%s, decided by a comparison %s put in a class of %s" % (what, type(method).__name__, where)
        code = hook_code(method)
        if code is not None and test_file(code.co_filename):
            return None  # a matcher the tests define
        if held_by_tests(x, frame):
            return None  # a matcher the tests use (unittest.mock.ANY in an expected value)
        return "%s, a matcher no test holds (the code under test returned it)" % what

    def operand_pairs(op, a, b):
        """(op, x, y): the operands (for "in", x is the container), then, for == and != and in, the
        elements compared inside built-in containers (paired by position or key; alone against an
        unseen value otherwise)."""
        out, todo, budget = [], [(op, a, b, 0)], 2000
        while todo and len(out) < budget:
            o, x, y, depth = todo.pop()
            tx, ty = type(x), type(y)
            if o == "in" and ty in container_types and depth < 4:
                todo.extend(("==", e, x, depth + 1) for e in (list(y.values()) if ty is dict else list(y))[:budget])
                continue
            if o in ("==", "!=") and (tx in container_types or ty in container_types) and depth < 4:
                if tx in (list, tuple) and ty in (list, tuple) and len(x) == len(y):
                    todo.extend((o, i, j, depth + 1) for i, j in zip(x, y))
                elif tx is dict and ty is dict:
                    for k in list(x)[:budget]:
                        todo.append((o, x[k], y[k] if type(k) in plain_types and k in y else Unseen(), depth + 1))
                else:
                    for side, other in ((x, y), (y, x)):
                        if type(side) in container_types:
                            items = list(side.values()) if type(side) is dict else list(side)
                            todo.extend((o, e, Unseen(), depth + 1) for e in items[:budget])
                        elif type(side) not in plain_types:
                            out.append((o, side, other))
                continue
            out.append((o, y, x) if o == "in" else (o, x, y))
            if o in ("==", "!="):
                out.append((o, y, x))
        return out

    def probe(ops, operands, frame):
        """Check every comparison of an assertion; never raises (the assertion is the test's)."""
        me = get_ident()
        if me in probing:
            return
        probing.add(me)
        try:
            found = []
            for i, op in enumerate(ops):
                if type(op) is not str or op not in dunder_of:
                    continue
                for o, x, y in operand_pairs(op, operands[i], operands[i + 1]):
                    evidence = claim(o, x, y, frame)
                    if evidence:
                        found.append(evidence)
            if found:
                tamper(found)
        except Exception as e:
            tamper(["comparison probe error %s" % type(e).__name__])
        finally:
            probing.discard(me)

    def watch_assertions(config):
        """Turn on pytest's assertion-pass branch and probe the comparisons it hands over; the
        branch's formatting helpers return empty text there (nothing of the operands' own code
        runs for a passing assertion but the probe). Returns whether it is on."""
        rewrite = sys.modules.get("_pytest.assertion.rewrite")
        inidict = getattr(getattr(config, "_parser", None), "_inidict", None)
        cache = getattr(config, "_inicache", None)
        names = ("_check_if_assertion_pass_impl", "_call_assertion_pass", "_call_reprcompare", "_saferepr",
                 "_format_boolop", "_format_explanation", "_should_repr_global_name")
        if rewrite is None or type(cache) is not dict or type(inidict) is not dict \
                or "enable_assertion_pass_hook" not in inidict or not all(hasattr(rewrite, n) for n in names):
            return False
        cache["enable_assertion_pass_hook"] = True
        original = {n: getattr(rewrite, n) for n in names}

        def _check_if_assertion_pass_impl():
            passing.add(get_ident())
            return True

        def _call_assertion_pass(lineno, orig, expl):
            passing.discard(get_ident())
            if original["_check_if_assertion_pass_impl"]():
                original["_call_assertion_pass"](lineno, orig, expl)

        def _call_reprcompare(ops, results, expls, each_obj):
            probe(ops, each_obj, getframe(1))
            if get_ident() in passing:
                return ""  # no explanation is built for a passing assertion
            return original["_call_reprcompare"](ops, results, expls, each_obj)

        def cheap(name):
            real, empty = original[name], (False if name == "_should_repr_global_name" else "")

            def helper(*args):
                return empty if get_ident() in passing else real(*args)
            helper.__name__ = name
            return helper

        rewrite._check_if_assertion_pass_impl = _check_if_assertion_pass_impl
        rewrite._call_assertion_pass = _call_assertion_pass
        rewrite._call_reprcompare = _call_reprcompare
        for name in names[3:]:
            setattr(rewrite, name, cheap(name))
        return True

    def watch_unittest():
        """Probe the arguments of unittest.TestCase's comparing asserts."""
        import unittest

        case = unittest.TestCase
        for name, op in UNITTEST_PROBED.items():
            real = case.__dict__.get(name)
            if type(real) is not function_type:
                continue

            def wrapper(self, first, second, *args, _real=real, _op=op, **kwargs):
                probe((_op,), (first, second), getframe(1))
                return _real(self, first, second, *args, **kwargs)
            wrapper.__name__, wrapper.__qualname__, wrapper.__doc__ = real.__name__, real.__qualname__, real.__doc__
            setattr(case, name, wrapper)
        return case

    # -- the test suite's code, and the libraries it checks with -----------------------------------
    # Test code is the task's: a test function whose file was written while the tests ran (or that
    # untrusted code compiled) is not. The modules outside the project that test modules use (and
    # the modules those hold), with builtins, are snapshot when collection ends: a function of
    # theirs that is code of the patch's (a lambda put into math.isclose, say) is evidence then,
    # and so is any replacement found after a test's teardown that is untrusted code or no code
    # at all (the fixtures that patch them for a test have undone their patches by then). Hooks
    # made to be replaced (sys.excepthook, warnings.showwarning, ...) and private names (the
    # runner swaps warnings._showwarnmsg_impl around every test) are not watched.
    hook_slots = frozenset({"excepthook", "displayhook", "unraisablehook", "breakpointhook", "showwarning",
                            "formatwarning", "audit"})
    lib_kinds = (function_type, type(len))  # Python functions, builtins

    def test_code_evidence(item):
        fn, depth = getattr(item, "obj", None), 0
        while fn is not None and depth < 8:
            fn = getattr(fn, "__func__", fn)
            code = getattr(fn, "__code__", None)
            if type(code) is code_type and not trusted(code) and not runners_own(code):
                return ["test code of %s was written while the tests ran: %s" % (item.nodeid, code.co_filename)]
            fn, depth = getattr(fn, "__wrapped__", None), depth + 1
        return []

    def library_namespaces(config):
        """[(label, module dict)] of the modules outside the project the test modules use."""
        root = str(getattr(config, "rootpath", getattr(config, "rootdir", "/"))) + sep
        found, todo = {}, []

        def project(module):
            name = file_of(module)
            return name is not None and name.startswith(root) and "-packages" + sep not in name

        for module in list(sys.modules.values()):
            name = file_of(module)
            if name is not None and test_file(name) and project(module):
                todo.extend((v, 1) for v in list(vars(module).values()))
        todo.append((builtins, 1))
        while todo and len(found) < 400:
            value, depth = todo.pop()
            if type(value) is not module_type:
                home = value.__dict__.get("__module__") if isinstance(value, type) else \
                    (value.__module__ if type(value) is function_type else None)
                value = sys.modules.get(home) if type(home) is str else None
                if value is None:
                    continue
            label = value.__dict__.get("__name__")
            if type(label) is not str or label in found or project(value) or label == __name__ \
                    or label in ("pytest", "_pytest", "pluggy") or label.startswith(("_pytest.", "pluggy.")):
                continue
            found[label] = value.__dict__
            if depth < 2:
                todo.extend((v, depth + 1) for v in list(value.__dict__.values()) if type(v) is module_type)
        return sorted(found.items())

    def library_snapshot(config):
        entries, evidence = [], []
        for label, names in library_namespaces(config):
            keys = tuple(k for k, v in list(names.items()) if type(v) in lib_kinds and type(k) is str
                         and not k.startswith("_") and k not in hook_slots)
            values = tuple(map(names.get, keys))
            home = file_of(sys.modules.get(label))
            for k, v in zip(keys, values):
                code = hook_code(v)
                if code is not None and code.co_filename != home and not trusted(code) and not runners_own(code):
                    evidence.append("%s.%s is code from %s" % (label, k, code.co_filename))
            entries.append([label, names, False, keys, values, frozenset()])
        return flatten(entries), evidence

    def library_changes(snap):
        """Evidence of library functions replaced since ``snap`` by untrusted code or by no code."""
        if not snap or unchanged(snap):
            return []
        out = []
        for entry in snap["entries"]:
            label, names, _, keys, values, _ = entry
            for k, old in zip(keys, values):
                new = names.get(k)
                if new is old or new is None:
                    continue
                codes = codes_of(new)  # a mock's class, a method: the code calling it runs
                if not codes:
                    out.append("%s.%s replaced by %s (no code of its own)" % (label, k, type(new).__name__))
                for code in codes:
                    if not trusted(code) and not runners_own(code):
                        out.append("%s.%s replaced by code from %s" % (label, k, code.co_filename))
                        break
            entry[3] = tuple(k for k in keys if k in names)
            entry[4] = tuple(map(names.get, entry[3]))
        snap.update(flatten(snap["entries"]))
        return out

    # -- pytest hooks ----------------------------------------------------------------------------
    def pytest_configure(config):
        if state.get("config") is None:  # a pytest run inside the tests (pytester) is not the one graded
            state["probed_asserts"] = watch_assertions(config)
            state["unittest_case"] = watch_unittest()
            state["baseline"].update(watched())
            state["namespaces"] = snapshot()
            keys = tuple(builtins.__dict__)
            state["builtins"] = (keys, tuple(map(builtins.__dict__.get, keys)))
            state["config"] = config
            state["plugins_seen"].update((key_of(p), p) for p in config.pluginmanager.get_plugins())
            # The hook implementations the run started with are the runner's and the test suite's.
            for caller in list(vars(config.pluginmanager.hook).values()):
                for impl in getattr(caller, "get_hookimpls", lambda: ())():
                    state["hooks_seen"][key_of(impl.function)] = impl.function
            state["runner_dirs"] = tuple(os.path.dirname(m.__file__) + os.sep for m in
                                         (sys.modules.get("_pytest"), sys.modules.get("pluggy"))
                                         if getattr(m, "__file__", None)) or ("\0",)
        send({"t": "start", "pytest": getattr(pytest, "__version__", "?"), "probe": state.get("probed_asserts")})

    @pytest.hookimpl(hookwrapper=True, tryfirst=True)
    def pytest_runtest_call(item):
        passing.discard(get_ident())
        if item.config is state.get("config"):
            tamper(test_code_evidence(item))
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
        check(report.when == "call")
        if report.when == "teardown":
            tamper(library_changes(state.get("libraries")))

    @pytest.hookimpl(trylast=True)
    def pytest_collection_finish(session):
        if session.config is state.get("config") and "libraries" not in state:
            state["libraries"], evidence = library_snapshot(session.config)
            tamper(evidence)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(session, exitstatus):
        state["exitstatus"] = int(exitstatus)

    @pytest.hookimpl(trylast=True)
    def pytest_unconfigure(config):
        check(True)
        tamper(library_changes(state.get("libraries")))
        send({"t": "end", "exitstatus": state.get("exitstatus")})

    return (pytest_configure, pytest_runtest_call, pytest_runtest_logreport, pytest_collection_finish,
            pytest_sessionfinish, pytest_unconfigure)


(pytest_configure, pytest_runtest_call, pytest_runtest_logreport, pytest_collection_finish, pytest_sessionfinish,
 pytest_unconfigure) = _install()
del _install
