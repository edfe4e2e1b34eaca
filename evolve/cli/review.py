"""``evolve status|diff|approve|reject|report|rollback``: look at a run, decide on its pending
candidates, move its accepted head."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.text import Text

from evolve.cli.common import RUN_HELP, RUNS_HELP, console, plain
from evolve.errors import ConfigError, EvolveError

BY_HELP = "Who decides (default: your user name)."
WHY_HELP = "Your reason (recorded, and shown to the planner)."


def _run_view(runs_dir: Optional[Path], run: Optional[str]):
    """The run ``run`` of the project found from the current directory (its root, for git)."""
    from evolve.project import find_project
    from evolve.review import open_run

    project = find_project()
    return open_run(runs_dir or project.runs_dir, run, root=project.root)


def status_cmd(run: Optional[str] = typer.Argument(None, help=RUN_HELP),
               runs_dir: Optional[Path] = typer.Option(None, help=RUNS_HELP),
               as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
               tree: bool = typer.Option(False, "--tree", help="The archive as a lineage tree, the accepted "
                                                               "path marked.")) -> None:
    """The generations of a run: parent, hypothesis, score, delta, verdict, tasks with integrity flags,
    cost, time."""
    import json

    from evolve.project import find_project
    from evolve.report import generations_table, lineage_tree, run_summary
    from evolve.review import open_run
    from evolve.search import archive

    view = open_run(runs_dir or find_project().runs_dir, run)
    nodes = archive.decided(archive.load(view.store.dir), view.gens)
    if as_json:
        print(json.dumps({"state": view.state.model_dump(mode="json"),
                          "generations": [g.model_dump(mode="json") for g in view.gens],
                          "archive": [n.model_dump(mode="json") for n in nodes]}, indent=2))
        return
    if tree:
        if not nodes:
            console.print(f"run {view.state.run_id} has no archive yet (no baseline evaluated, or a run made "
                          "before the archive existed); `evolve status` shows its generations")
            return
        console.print(lineage_tree(nodes, view.state.best, archive.accepted_path(nodes, view.state.best),
                                   title=f"archive of {view.state.run_id} (* the accepted path)"))
        return
    if pending := [g for g in view.gens if g.status == "pending"]:
        console.print(generations_table(pending, title="waiting for your decision: `evolve approve GEN` or "
                                                       "`evolve reject GEN --why TEXT`"))
    console.print(generations_table(view.gens))
    console.print(run_summary(view.state))
    if view.state.holdout and view.state.holdout.get("each"):
        from evolve.report import transfer_table

        console.print(transfer_table(view.state.holdout))


def diff_cmd(run: Optional[str] = typer.Argument(None, help=RUN_HELP),
             gen: Optional[int] = typer.Option(None, help="Only this generation's change."),
             stat: bool = typer.Option(False, "--stat", help="A summary of files changed."),
             plain: bool = typer.Option(False, "--plain", help="A plain patch for `git apply`."),
             runs_dir: Optional[Path] = typer.Option(None, help=RUNS_HELP)) -> None:
    """The accepted changes since the base (or one generation's), with hypotheses and fixed/broken tasks."""
    from rich.syntax import Syntax

    from evolve.review import diff, plain_diff

    view = _run_view(runs_dir, run)
    if plain:
        sys.stdout.write(plain_diff(view, gen))
        return
    for part in diff(view, gen, stat=stat):
        console.rule(Text(part.title), align="left")
        if part.hypothesis:
            console.print(Text.assemble(("hypothesis:", "bold"), " ", part.hypothesis))
        if part.fixed or part.broken:
            console.print(Text.assemble(("fixed:", "green"), f" {', '.join(part.fixed) or '-'}   ",
                                        ("broken:", "red"), f" {', '.join(part.broken) or '-'}"))
        if part.diff:
            is_patch = part.diff.startswith("diff --git")
            console.print(Syntax(part.diff, "diff", theme="ansi_dark", word_wrap=True) if is_patch else Text(part.diff))


def _person() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        raise ConfigError("cannot tell who you are (no user name): pass --by NAME") from None


def _decide(gen: int, run: Optional[str], why: str, by: Optional[str], runs_dir: Optional[Path], *,
            approve: bool) -> None:
    from evolve.approval import decide
    from evolve.project import find_project

    project = find_project()
    rec = decide(runs_dir or project.runs_dir, run, gen, approve=approve, by=by or _person(), why=why,
                 root=project.root)
    after = f"the accepted head is {rec.verdict_commit[:10]}" if approve else "its branch is kept"
    console.print(f"generation {gen} {rec.status} ({rec.decision}); {after}")


def approve_cmd(gen: int = typer.Argument(..., help="The pending generation to accept."),
                run: Optional[str] = typer.Option(None, help=RUN_HELP),
                why: str = typer.Option("", "--why", help=WHY_HELP),
                by: Optional[str] = typer.Option(None, help=BY_HELP),
                runs_dir: Optional[Path] = typer.Option(None, help=RUNS_HELP)) -> None:
    """Accept a pending candidate (acceptance.approval: manual): the accepted head moves to it."""
    _decide(gen, run, why, by, runs_dir, approve=True)


def reject_cmd(gen: int = typer.Argument(..., help="The pending generation to close."),
               why: str = typer.Option(..., "--why", help=WHY_HELP),
               run: Optional[str] = typer.Option(None, help=RUN_HELP),
               by: Optional[str] = typer.Option(None, help=BY_HELP),
               runs_dir: Optional[Path] = typer.Option(None, help=RUNS_HELP)) -> None:
    """Close a pending candidate (acceptance.approval: manual): the accepted head stays."""
    _decide(gen, run, why, by, runs_dir, approve=False)


def report_cmd(run: Optional[str] = typer.Argument(None, help=RUN_HELP),
               out: Optional[Path] = typer.Option(None, help="Report folder (default: runs/RUN/report)."),
               open_it: bool = typer.Option(False, "--open", help="Open it in the web browser."),
               runs_dir: Optional[Path] = typer.Option(None, help=RUNS_HELP)) -> None:
    """Write a run's static HTML report (plots, a card per generation, task pages; data in report.json):
    no server and no network needed to view it."""
    from evolve.project import find_project
    from evolve.report_html.render import report_run
    from evolve.runstate import latest_run

    project = find_project()
    runs = runs_dir or project.runs_dir
    index = report_run(runs, run or latest_run(runs), repo_root=project.root, out=out)
    console.print(f"report: {index}")
    if open_it:
        import webbrowser

        if not webbrowser.open(index.resolve().as_uri()):
            raise EvolveError(f"no web browser found here; open {index} yourself")


def rollback_cmd(run: Optional[str] = typer.Argument(None, help=RUN_HELP),
                 to: Optional[int] = typer.Option(None, "--to", help="Make generation N's state the accepted head "
                                                                     "(0 = the base)."),
                 gen: Optional[int] = typer.Option(None, "--gen", help="Revert generation N's change only."),
                 undo: bool = typer.Option(False, "--undo", help="Undo the last rollback."),
                 runs_dir: Optional[Path] = typer.Option(None, help=RUNS_HELP)) -> None:
    """Move the accepted head back; history is kept and the move can be undone."""
    from evolve.project import find_project
    from evolve.review import rollback

    project = find_project()
    old, new = rollback(runs_dir or project.runs_dir, run, root=project.root, to=to, revert=gen,
                        undo=undo or None)
    plain(f"accepted head moved {old[:10]} -> {new[:10]}; undo with `evolve rollback --undo`")

