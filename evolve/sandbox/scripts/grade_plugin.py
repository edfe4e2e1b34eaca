"""evolve's pytest plugin for grading: outcomes out of band, and a watch on the runner.

Copied into the grading container's site-packages under a per-run random
module name and loaded with ``-p <name>`` (through ``PYTEST_ADDOPTS``), before
any conftest or module of /testbed is imported. At load it takes its channel
from the environment variable ``EVOLVE_GRADE_CHANNEL`` ("<fd> <token file>"),
removes the variable, reads the per-run nonce from the token file and deletes
the file, so code under test finds neither. It writes JSON lines to the
inherited file descriptor ``fd``, which root opened on a file in a root-only
directory: nothing in the test process can open that file by name.

Records (each carries ``"n": nonce``):
  {"t": "start", "pytest": version}
  {"t": "report", "id": nodeid, "when": setup|call|teardown, "outcome": passed|failed|skipped,
   "xfail": bool, "raised": bool|null}       raised: whether the test call itself raised
  {"t": "tamper", "what": [names]}            runner functions found replaced
  {"t": "end", "exitstatus": int}             at the very end of the session

Runs inside the container with whatever Python the tests use: standard
library only, Python 3.6+.
"""

import builtins
import json
import os
import sys

import pytest

_CHANNEL = os.environ.pop("EVOLVE_GRADE_CHANNEL", "")
_fd = -1
_nonce = ""
if _CHANNEL:
    _fd_text, _, _token_path = _CHANNEL.partition(" ")
    try:
        with open(_token_path) as _f:
            _nonce = _f.read().strip()
        os.unlink(_token_path)
        # A private copy of the descriptor, off the well-known number the shell used.
        _fd = os.dup(int(_fd_text))
        os.close(int(_fd_text))
    except (OSError, ValueError) as e:  # the grader reads a missing start record as "no channel"
        sys.stderr.write("evolve grading plugin: no channel: %s\n" % e)
        _fd = -1


def _send(record):
    if _fd < 0:
        return
    record["n"] = _nonce
    data = (json.dumps(record, sort_keys=True) + "\n").encode()
    try:
        while data:
            data = data[os.write(_fd, data):]
    except OSError:
        pass  # the channel was closed by the code under test: the missing end record says so


def _watched():
    """The objects whose replacement means the runner was patched: {name: object}."""
    import _pytest.main
    import _pytest.python
    import _pytest.reports
    import _pytest.runner
    import pluggy

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
        "os._exit": os._exit,
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


_baseline = {}
_reported = set()


def _check():
    """Names of watched objects that were replaced since the plugin loaded (each reported once)."""
    try:
        now = _watched()
    except Exception as e:  # the runner's own modules became unimportable: that is tampering too
        now = {"import of the runner's modules: %s" % type(e).__name__: object()}
    changed = [k for k, v in now.items() if _baseline.get(k) is not v and k not in _reported]
    _reported.update(changed)
    if changed:
        _send({"t": "tamper", "what": sorted(changed)})
    return changed


def pytest_configure(config):
    _baseline.update(_watched())
    _send({"t": "start", "pytest": getattr(pytest, "__version__", "?")})


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_call(item):
    outcome = yield
    excinfo = getattr(outcome, "excinfo", None)
    if excinfo is None and hasattr(outcome, "exception"):
        exc = outcome.exception
        excinfo = (type(exc), exc, None) if exc is not None else None
    item._evolve_raised = excinfo is not None


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_logreport(report):
    raised = None
    if report.when == "call":
        raised = getattr(report, "_evolve_raised", None)
    _send({"t": "report", "id": report.nodeid, "when": report.when, "outcome": report.outcome,
           "xfail": hasattr(report, "wasxfail"),
           "raised": raised})
    _check()


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    if call.when == "call":
        report = outcome.get_result()
        report._evolve_raised = getattr(item, "_evolve_raised", None)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    _check()
    status = getattr(config, "_evolve_exitstatus", None)
    _send({"t": "end", "exitstatus": status})


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    session.config._evolve_exitstatus = int(exitstatus)
