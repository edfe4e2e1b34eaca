"""What every command shares: the two consoles, plain output, the interrupted note, option help
texts and defaults, and how the program ends.

Expected failures are ``EvolveError``s: printed as one message on stderr, exit 1, no traceback
(``run``). Anything else is a bug and keeps its traceback. Nothing heavy is imported here.
"""

from __future__ import annotations

import signal
import sys
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
    (what the interruption kept, and that it left nothing running), exit 130 as a shell does."""
    try:
        yield
    except KeyboardInterrupt:
        err_console.print(Text.assemble(("interrupted", "yellow"), ": ", left_behind))
        raise typer.Exit(130) from None


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
    raise KeyboardInterrupt


def run(app: typer.Typer) -> None:
    """Run ``app`` as the program: an ``EvolveError`` becomes ``error: MESSAGE`` on stderr and exit 1,
    SIGTERM is handled like Ctrl-C, and the process exits with the command's code."""
    signal.signal(signal.SIGTERM, _terminate)
    code = 0
    try:
        app()
    except EvolveError as e:
        err_console.print(Text.assemble(("error:", "bold red"), " ", str(e)))
        code = 1
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
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
