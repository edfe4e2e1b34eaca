"""What every command shares: the two consoles, plain output, the interrupted note, option help
texts and defaults, how a closed output pipe is handled, and how the program ends.

Expected failures are ``EvolveError``s: printed as one message on stderr, exit 1, no traceback
(``run``). Anything else is a bug and keeps its traceback. Nothing heavy is imported here.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.text import Text

from evolve.errors import ConfigError, EvolveError

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

EXECUTOR_HELP = ("Where task-runs execute: local (this machine's Docker engine) or ray (the nodes of a Ray cluster "
                 "that declare the evolve_sandbox resource; see README \"Running on a cluster\").")
RAY_ADDRESS_HELP = "Ray cluster address for --executor ray: auto, HOST:PORT or ray://HOST:10001."
CONFIG_HELP = "The project's evolve.yaml (default: found from the current directory upwards)."
RUNS_HELP = "Runs folder (default: runs/ next to evolve.yaml)."
RUN_HELP = "Run id (default: the latest)."


def plain(text: object, style: str = "") -> None:
    """Print ``text`` as it is: a test id like ``test_join[/usr-bin]`` or a note holding ``[bold]`` is
    never read as rich markup or emoji codes."""
    console.print(Text(str(text), style=style))


@contextmanager
def interruptible(left_behind: str) -> Iterator[None]:
    """A Ctrl-C (or SIGTERM) inside the block ends the command: ``interrupted: LEFT_BEHIND`` on stderr
    (what the interruption kept, and that it left nothing running), exit 130 as a shell does. A
    closed output pipe ends it the same way (``_ClosedPipe``), noted as such, exit 1."""
    try:
        yield
    except KeyboardInterrupt:
        why = "stopped, its output pipe was closed" if _closed_pipe.tripped else "interrupted"
        err_console.print(Text.assemble((why, "yellow"), ": ", left_behind))
        raise typer.Exit(1 if _closed_pipe.tripped else 130) from None


def option_default(model, name: str) -> str:
    """A field's default, for an option's help: defaults are stated once, in the config models."""
    value = model.model_fields[name].default
    return f"{value:,}" if isinstance(value, int) else f"{value:g}" if isinstance(value, float) else str(value)


def parse_params(items: list[str]) -> dict:
    """``--model-param KEY=VALUE`` items as a dict, each VALUE read as YAML (``0`` -> 0);
    raises ``ConfigError`` on an item without ``=`` or without a key."""
    import yaml

    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--model-param {item!r}: expected KEY=VALUE, e.g. --model-param temperature=0")
        params[key] = yaml.safe_load(value)
    return params


def _terminate(signum, frame) -> None:  # SIGTERM ends a run like Ctrl-C: cleanly
    if _closed_pipe.tripped and not _closed_pipe.running:
        return  # a closed pipe's stop request, arriving once the command has ended
    raise KeyboardInterrupt


class _ClosedPipe:
    """What happens when the reader of stdout or stderr goes away (``evolve run | head``).

    Python ignores SIGPIPE, so a write to a closed pipe raises ``BrokenPipeError`` wherever it
    happens: in a worker thread's progress callback it would end that thread or be taken for the
    task's own failure, and rich answers it with ``SystemExit`` in the middle of the loop. Restoring
    SIGPIPE's default instead would be worse: it applies to every pipe and socket of the process
    (the gateway's connections to harnesses, Docker's API, model servers), so any of them closing
    early would kill a night at once, with no cleanup.

    So the streams are wrapped (``run``): a write to a closed one does not raise. The stream's file
    descriptor is pointed at the null device, so later writes and the final flush go nowhere, as
    Python's SIGPIPE note advises, and the main thread is sent SIGTERM once, which ``run`` turns
    into Ctrl-C: the command stops the way an interrupt stops it (the loop saves its state,
    marked interrupted; state files are written atomically; no container is left running; a run can
    be resumed) and exits 1.
    """

    def __init__(self) -> None:
        self.tripped = False
        """A write found its pipe closed."""
        self.running = False
        """The command is running: a trip stops it (afterwards the process is ending anyway)."""
        self._lock = threading.Lock()

    def trip(self, stream) -> None:
        """``stream``'s reader is gone: silence it and, the first time, stop the command."""
        try:
            fd = stream.fileno()
        except (OSError, ValueError):  # no descriptor (a test's capture): nothing to point elsewhere
            fd = None
        if fd is not None:
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, fd)
            finally:
                os.close(devnull)
        with self._lock:
            first, self.tripped = not self.tripped, True
        if first and self.running:
            signal.pthread_kill(threading.main_thread().ident, signal.SIGTERM)


class _Guarded:
    """A text stream whose ``write``/``flush`` report a closed pipe to ``_ClosedPipe`` instead of raising."""

    def __init__(self, stream, closed: _ClosedPipe) -> None:
        self._stream, self._closed = stream, closed

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._closed.trip(self._stream)
            return len(text)

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._closed.trip(self._stream)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


_closed_pipe = _ClosedPipe()


def run(app: typer.Typer) -> None:
    """Run ``app`` as the program: an ``EvolveError`` becomes ``error: MESSAGE`` on stderr and exit 1,
    SIGTERM is handled like Ctrl-C, a closed stdout or stderr stops the command quietly with exit 1
    (``_ClosedPipe``), and the process exits with the command's code."""
    signal.signal(signal.SIGTERM, _terminate)
    sys.stdout, sys.stderr = _Guarded(sys.stdout, _closed_pipe), _Guarded(sys.stderr, _closed_pipe)
    code = 0
    try:
        _closed_pipe.running = True
        try:
            app()
        except EvolveError as e:
            err_console.print(Text.assemble(("error:", "bold red"), " ", str(e)))
            code = 1
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BrokenPipeError:  # a write that bypassed the wrappers (click writes to the binary buffer)
            _closed_pipe.trip(sys.__stdout__)
        finally:
            _closed_pipe.running = False
    except KeyboardInterrupt:  # the stop a closed pipe asked for, in a command without `interruptible`
        if not _closed_pipe.tripped:
            raise
    if _closed_pipe.tripped:
        code = 1
    _exit(code)


def _exit(code: int) -> None:
    """Exit with ``code``. Once litellm is loaded, skip the interpreter's final garbage
    collection: litellm's async HTTP clients re-import modules in ``__del__`` and were
    seen deadlocking there after Ctrl-C. Our files are already written (atomic writes),
    and atexit handlers (local model servers) still run."""
    if "litellm" not in sys.modules:
        sys.exit(code)
    import atexit
    import os

    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
