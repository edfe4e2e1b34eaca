"""The ``evolve`` command line: parse, call, print.

This module is the command tree on one screen; each command lives in the module of its group
(``eval``, ``serve``, ``doctor``, ``sandbox``, ``evals``, ``run``, ``review``) and what they share in
``common``. Expected failures are ``EvolveError``s: printed as one message, exit 1, no traceback
(``common.run``). Heavy libraries (docker, litellm, ray) are imported inside the commands that need
them, so ``--help`` stays fast.
"""

from __future__ import annotations

import typer

from evolve.cli import common, doctor, evals, review, run, sandbox, serve
from evolve.cli import eval as eval_
from evolve.cli.common import console, err_console, plain

__all__ = ["app", "console", "err_console", "main", "plain"]

app = typer.Typer(help="Let a coding agent improve its own harness.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
sandbox_app = typer.Typer(help="The Docker sandbox: base image and cleanup.", no_args_is_help=True)
evals_app = typer.Typer(help="Eval sets: list them, show their tasks.", no_args_is_help=True)
import_app = typer.Typer(help="Import eval sets made elsewhere.", no_args_is_help=True)
app.add_typer(sandbox_app, name="sandbox")
app.add_typer(evals_app, name="evals")
evals_app.add_typer(import_app, name="import")


def _print_version(value: bool) -> None:
    if not value:
        return
    from evolve.doctor import versions

    for name, version in versions().items():
        plain(f"{name} {version}")
    raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                       help="Print the versions of evolve, Python, litellm and Docker, and exit.")
          ) -> None:
    """Let a coding agent improve its own harness."""
    from evolve import owner

    owner.sweep_temp_dirs()  # what evolve processes killed before their cleanup left in the temp directory


# The order below is the order of `evolve --help`.
for _name, _command in (("eval", eval_.eval_cmd), ("serve", serve.serve_cmd), ("doctor", doctor.doctor_cmd),
                        ("init", run.init_cmd), ("run", run.run_cmd), ("status", review.status_cmd),
                        ("diff", review.diff_cmd), ("approve", review.approve_cmd), ("reject", review.reject_cmd),
                        ("report", review.report_cmd), ("rollback", review.rollback_cmd),
                        ("holdout", run.holdout_cmd)):
    app.command(_name)(_command)
sandbox_app.command("build")(sandbox.sandbox_build)
sandbox_app.command("sweep")(sandbox.sandbox_sweep)
for _name, _command in (("list", evals.evals_list), ("show", evals.evals_show), ("synth", evals.evals_synth),
                        ("build", evals.evals_build)):
    evals_app.command(_name)(_command)
import_app.command("swe-bench")(evals.evals_import_swebench)


def main() -> None:
    """Console-script entry point (``evolve = "evolve.cli:main"``)."""
    common.run(app)
