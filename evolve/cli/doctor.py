"""``evolve doctor``: every check a run needs, one line each with its fix."""

from __future__ import annotations

import typer

from evolve.cli.common import console


def doctor_cmd(as_json: bool = typer.Option(False, "--json", help="The same checks as JSON.")) -> None:
    """Check everything a run needs (Docker, sandbox image, disk, keys, local model, evolve.yaml, models,
    serve, Ray), one line per check with the fix for each failure; exit 1 if any fails."""
    import json

    from rich.markup import escape

    from evolve.doctor import failed, run_checks

    checks = run_checks()
    if as_json:
        print(json.dumps({"ok": not failed(checks), "checks": [c.as_dict() for c in checks]}, indent=2))
    else:
        marks = {"ok": "[green]ok  [/]", "warn": "[yellow]warn[/]", "fail": "[bold red]FAIL[/]", "skip": "[dim]skip[/]"}
        for c in checks:
            fix = f"  [bold]fix:[/] {escape(c.fix)}" if c.fix and c.status in ("fail", "warn") else ""
            console.print(f"{marks[c.status]} {c.name}: {escape(c.detail)}{fix}", soft_wrap=True)
    if failed(checks):
        raise typer.Exit(1)
