"""What ``evolve evals list|show`` print; the CLI (``evolve.cli``) only parses options."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from evolve.errors import EvalSetError
from evolve.evalsets.registry import evalset_dirs, list_evalsets, load_evalset

__all__ = ["print_import", "print_list", "print_show"]


def _recipes() -> dict[str, Path]:
    """Recipe files (``<dir>/<name>.yaml`` with a ``projects:`` key) in the eval-set directories, first wins."""
    import yaml

    found: dict[str, Path] = {}
    for d in evalset_dirs():
        if not d.is_dir():
            continue
        for f in sorted(d.glob("*.yaml")) + sorted(d.glob("*.yml")):
            try:
                data = yaml.safe_load(f.read_text(encoding="utf-8"))
            except (OSError, yaml.YAMLError, UnicodeDecodeError):
                continue
            if isinstance(data, dict) and "projects" in data:
                found.setdefault(f.stem, f)
    return found


def print_list(console: Console) -> None:
    """A table of the eval sets found (and recipes not built yet)."""
    infos = list_evalsets()
    table = Table(title="eval sets", title_justify="left")
    for col in ("name", "search", "holdout", "other splits", "path", "description"):
        table.add_column(col, overflow="fold")
    names = set()
    for info in infos:
        names.add(info.name)
        name = Text(info.name)
        if info.shadowed_by:
            name.append(" (shadowed)", "dim")
        if info.counts is None:
            table.add_row(name, "-", "-", "-", Text(str(info.path)),
                          Text.assemble(("does not load:", "red"), " ", info.error or ""))
            continue
        counts = dict(info.counts)
        search, holdout = counts.pop("search", 0), counts.pop("holdout", 0)
        other = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or ""
        table.add_row(name, str(search), str(holdout), Text(other), Text(str(info.path)),
                      Text(info.description or ""))
    for name, path in sorted(_recipes().items()):
        if name not in names:
            table.add_row(Text.assemble(name, (" (recipe)", "dim")), "-", "-", "", Text(str(path)),
                          Text.assemble("not built yet: ", (f"evolve evals build {name}", "bold")))
    if not table.rows:
        console.print(Text("no eval sets found in " + ", ".join(str(d) for d in evalset_dirs())
                           + ". Make one with `evolve evals build default` or `evolve evals synth --repo PATH`."))
        return
    console.print(table)


def print_show(console: Console, name: str, instance_id: str | None = None, *, split: str | None = None,
               patch: bool = False, max_tests: int = 30) -> None:
    """The tasks of an eval set, or one task's problem statement and tests.

    Raises:
        EvalSetError: no such eval set, split or task.
    """
    es = load_evalset(name)
    splits = [split] if split else sorted(es.splits, key=lambda s: (s != "search", s != "holdout", s))
    if split:
        es.tasks(split)  # raises for an unknown split
    if instance_id is None:
        table = Table(title=Text(f"{es.name} ({es.root})"), title_justify="left")
        for col in ("instance_id", "split", "F2P", "P2P", "kind", "problem statement"):
            table.add_column(col, overflow="fold")
        for s in splits:
            for task in es.tasks(s):
                synth = (task.model_extra or {}).get("synth") or {}
                kind = synth.get("operator") or synth.get("kind") or ""
                first = task.problem_statement.strip().split("\n", 1)[0][:100]
                table.add_row(Text(task.instance_id), Text(s), str(len(task.FAIL_TO_PASS)),
                              str(len(task.PASS_TO_PASS)), Text(str(kind)), Text(first))
        console.print(table)
        return
    for s in splits:
        for task in es.tasks(s):
            if task.instance_id == instance_id:
                _print_task(console, task, s, patch=patch, max_tests=max_tests)
                return
    raise EvalSetError(f"eval set {es.name!r} has no task {instance_id!r}"
                       + (f" in split {split!r}" if split else "") + f"; `evolve evals show {name}` lists them",
                       path=str(es.source or es.root))


def _print_task(console: Console, task, split: str, *, patch: bool, max_tests: int) -> None:
    console.print(Text.assemble((task.instance_id, "bold"), "  split ", (split, "bold"),
                                f"  repo {task.repo}  base {task.base_commit[:12]}"))
    if task.test_cmd:
        console.print(Text(f"test command: {task.test_cmd}"))
    console.rule("problem statement")
    console.print(Text(task.problem_statement.rstrip()), soft_wrap=True)
    for label, tests in (("FAIL_TO_PASS", task.FAIL_TO_PASS), ("PASS_TO_PASS", task.PASS_TO_PASS)):
        console.rule(f"{label} ({len(tests)})")
        for t in tests[:max_tests]:
            console.print(Text(t), soft_wrap=True)
        if len(tests) > max_tests:
            console.print(Text(f"... and {len(tests) - max_tests} more", "dim"))
    if patch:
        console.rule("reference patch")
        console.print(Text(task.patch.rstrip()), soft_wrap=True)
        if task.test_patch.strip():
            console.rule("test patch")
            console.print(Text(task.test_patch.rstrip()), soft_wrap=True)


def print_import(console: Console, imported) -> None:
    """What ``evolve evals import`` made (an ``evolve.evalsets.swebench.Imported``): splits, dropped rows
    with their reasons, and the images the tasks need."""
    c = imported.counts
    console.print(Text(f"search {c.get('search', 0)}, holdout {c.get('holdout', 0)} tasks -> {imported.path}"))
    for key, why in imported.dropped.items():
        console.print(Text.assemble(("dropped ", "yellow"), f"{key}: {why}"))
    console.print(Text(f"{len(imported.images)} instance image(s) needed, checked before any agent runs; "
                       f"e.g. {imported.images[0]}" if imported.images else "no instance image named"))
    console.print(Text(f"evaluate with: evolve eval --evals {imported.path.name}"))
