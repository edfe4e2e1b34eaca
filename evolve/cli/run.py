"""``evolve init|run|holdout``: make a project, evolve its harness, evaluate the result on the holdout."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.text import Text

from evolve.cli.common import (CONFIG_HELP, EXECUTOR_HELP, RAY_ADDRESS_HELP, RUN_HELP, RUNS_HELP, console,
                               err_console, interruptible, option_default, plain)
from evolve.errors import EvolveError
from evolve.session import DryRunAssumptions


def init_cmd(directory: Path = typer.Argument(Path("."), help="Repo to create or add to."),
             template: str = typer.Option("minimal", help="Harness template (evolve/templates/<name>)."),
             harness: str = typer.Option("harness", help="Directory for the harness inside the repo.")) -> None:
    """Make a git repo holding a harness template and an evolve.yaml (or add them to an existing repo)."""
    from evolve.project import init_project

    added = init_project(directory, template, harness)
    plain(f"added {', '.join(added)} in {directory.resolve()}")
    console.print("next: edit evolve.yaml (models, eval set, budget), commit, then `evolve run`")


def run_cmd(
    config: Optional[Path] = typer.Option(None, help=CONFIG_HELP),
    generations: Optional[int] = typer.Option(None, help="Stop after N generations (default: budget.generations)."),
    budget_usd: Optional[float] = typer.Option(None, help="Stop when the run has spent this many USD."),
    max_hours: Optional[float] = typer.Option(None, help="Stop after this many hours."),
    resume: Optional[str] = typer.Option(None, help="Continue the run RUN where it stopped."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print an estimate of tokens and USD, spend nothing."),
    workers: Optional[int] = typer.Option(None, help="Evaluation workers (default: evals.workers)."),
    tokens_per_task: Optional[int] = typer.Option(
        None, help=f"Solver tokens per task assumed by --dry-run (default "
                   f"{option_default(DryRunAssumptions, 'solver_tokens_per_task')})."),
    runs_dir: Optional[Path] = typer.Option(None, help=RUNS_HELP),
    executor: Optional[str] = typer.Option(None, help=EXECUTOR_HELP + " Default: executor.kind of evolve.yaml."),
    ray_address: Optional[str] = typer.Option(None, help=RAY_ADDRESS_HELP + " Default: executor.address."),
    log_every: float = typer.Option(60.0, min=1.0, help="Off a terminal (nohup, systemd, CI): seconds between "
                                                        "progress lines while a step lasts."),
) -> None:
    """Evolve the harness: analyze, plan, patch, evaluate and decide, generation after generation.
    On a terminal it shows a live view; otherwise it writes plain timestamped progress lines."""
    from evolve.project import open_project
    from evolve.session import dry_run_assumptions, dry_run_estimate, with_overrides

    project = open_project(config)
    cfg = with_overrides(project.config(), {"budget.generations": generations, "budget.budget_usd": budget_usd,
                                            "budget.max_hours": max_hours, "evals.workers": workers,
                                            "executor.kind": executor, "executor.address": ray_address})
    runs = runs_dir or project.runs_dir
    if dry_run:
        console.print(dry_run_estimate(cfg, dry_run_assumptions(tokens_per_task=tokens_per_task)))
        return
    from evolve.loop import Loop, LoopSettings
    from evolve.report import RunLiveView, generations_table, run_summary
    from evolve.runstate import RunStore
    from evolve.session import project_session

    def refresh_report(state, rec=None) -> None:  # after every generation: the report can be watched at night
        from evolve.report_html.render import report_run

        try:
            report_run(runs, state.run_id, repo_root=project.root)
        except EvolveError as e:  # a report that cannot be written must not end the night: say so, go on
            err_console.print(Text.assemble(("report not refreshed", "yellow"), f": {e}"))

    with project_session(cfg, note=plain) as session:
        if console.is_terminal:
            view = RunLiveView(console, cfg.budget.budget_usd, cfg.budget.generations, after_verdict=refresh_report)
        else:
            from evolve.runlog import RunLogView

            view = RunLogView(sys.stdout, every_s=log_every, after_verdict=refresh_report)
        loop = Loop(cfg, project.root, LoopSettings(solver_model=session.solver.model,
                                                    solver_params=session.solver.params, runs_dir=runs,
                                                    workers=session.workers),
                    session.optimizer_backend, run_id=resume, view=view)
        with interruptible(f"finished work kept; continue with `evolve run --resume {loop.run_id}`"), view:
            state = loop.run()
    refresh_report(state)
    console.print(generations_table(RunStore(runs, state.run_id).gens()))
    console.print(run_summary(state, cfg.budget.budget_usd))
    plain(f"report: {runs / state.run_id / 'report' / 'index.html'}")
    plain(f"next: `evolve diff {state.run_id}`, `evolve status {state.run_id}`")


def holdout_cmd(run: Optional[str] = typer.Argument(None, help=RUN_HELP),
                config: Optional[Path] = typer.Option(None, help=CONFIG_HELP),
                runs_dir: Optional[Path] = typer.Option(None, help=RUNS_HELP),
                each: bool = typer.Option(False, "--each", help="Every accepted generation too: its holdout delta "
                                                                "beside its search delta.")) -> None:
    """Evaluate the baseline and the accepted head on the sealed held-out split (needs only the solver)."""
    from evolve.holdout import run_holdout
    from evolve.loop import LoopSettings
    from evolve.project import open_project
    from evolve.report import run_summary
    from evolve.review import open_run
    from evolve.session import project_session

    project = open_project(config)
    cfg = project.config()
    runs = runs_dir or project.runs_dir
    view = open_run(runs, run, root=project.root)
    with project_session(cfg, optimizer=False, note=plain) as session:
        state = run_holdout(cfg, project.root, LoopSettings(solver_model=session.solver.model,
                                                            solver_params=session.solver.params, runs_dir=runs,
                                                            workers=session.workers),
                            run_id=view.state.run_id, each=each)
    console.print(run_summary(state))
    if each:
        from evolve.report import transfer_table

        console.print(transfer_table(state.holdout))
