"""``evolve evals list|show|synth|build|import``: options only; evolve/evalsets/commands.py and
evolve/synth/commands.py do the printing."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from evolve.cli.common import EXECUTOR_HELP, RAY_ADDRESS_HELP, console, interruptible, plain
from evolve.errors import ConfigError

NOTHING_WRITTEN = "nothing was written; no containers left behind."  # what Ctrl-C in synth or build leaves


def evals_list() -> None:
    """List the eval sets (./evals, $EVOLVE_HOME/evals) with task counts per split."""
    from evolve.evalsets.commands import print_list

    print_list(console)


def evals_show(name: str = typer.Argument(..., help="Eval-set name, directory or .jsonl file."),
               instance_id: Optional[str] = typer.Argument(None, help="A task: show its problem statement and tests."),
               split: Optional[str] = typer.Option(None, help="Only this split."),
               patch: bool = typer.Option(False, "--patch", help="Also show the reference patch and test patch.")) -> None:
    """List an eval set's tasks, or show one task's problem statement, FAIL_TO_PASS and PASS_TO_PASS."""
    from evolve.evalsets.commands import print_show

    print_show(console, name, instance_id, split=split, patch=patch)


def evals_import_swebench(
    source: str = typer.Argument(..., help="A .jsonl, .json or .parquet export of SWE-bench rows, or a Hugging "
                                           "Face dataset name such as SWE-bench/SWE-bench_Lite (needs network)."),
    name: Optional[str] = typer.Option(None, help="Eval-set name; default: the source's stem."),
    out: Optional[Path] = typer.Option(None, help="Output directory; default $EVOLVE_HOME/evals/NAME."),
    holdout_fraction: float = typer.Option(0.3, help="Share of tasks sealed in the holdout split (0 < f < 1)."),
    seed: int = typer.Option(0, help="Seed of the split: same seed, same split."),
    style: str = typer.Option("auto", help="Row style: auto, swe-bench (rows naming image, eval_script, "
                                           "log_parser), classic (older exports, SWE-Gym), swe-smith (rows "
                                           "with image_name) or r2e-gym (rows with docker_image)."),
    test_cmd: Optional[str] = typer.Option(None, help="Classic and SWE-smith rows: test command run in /testbed "
                                                      "of the instance image (test files appended); SWE-smith "
                                                      "rows default to SWE-smith's Python profile command."),
    log_parser: str = typer.Option("parse_log_pytest", help="Classic and SWE-smith rows: swebench's log parser."),
    namespace: Optional[str] = typer.Option(None, help="Classic rows: registry namespace of the instance images "
                                                       "(default: the names swebench builds locally)."),
    hf_split: str = typer.Option("test", help="Split of a Hugging Face dataset."),
) -> None:
    """Import SWE-bench rows (SWE-bench, Lite, Verified, SWE-Gym, SWE-smith, R2E-Gym) as an eval set with search
    and holdout splits."""
    from evolve.evalsets.commands import print_import
    from evolve.evalsets.registry import evolve_home
    from evolve.evalsets.swebench import ImportOptions, import_swebench
    from evolve.synth.source import slug

    eval_name = slug(name or Path(source.rstrip("/")).stem.split("/")[-1])
    opts = ImportOptions(holdout_fraction=holdout_fraction, seed=seed, style=style, test_cmd=test_cmd,
                         log_parser=log_parser, namespace=namespace, hf_split=hf_split)
    imported = import_swebench(source, out or evolve_home() / "evals" / eval_name, opts, name=eval_name)
    print_import(console, imported)


def evals_synth(
    repo: Path = typer.Option(..., help="A Python project with a pytest suite (its committed HEAD if a git repo)."),
    source: str = typer.Option("mutation", "--from", help="mutation, history, or mutation,history."),
    name: Optional[str] = typer.Option(None, help="Eval-set name; default: the repo directory's name."),
    out: Optional[Path] = typer.Option(None, help="Output directory; default $EVOLVE_HOME/evals/NAME."),
    max_tasks: int = typer.Option(20, min=1, help="Tasks per source at most."),
    seed: int = typer.Option(0, help="Same seed, same tasks."),
    workers: int = typer.Option(2, min=1, help="Sandboxes validating at once."),
    test_cmd: Optional[str] = typer.Option(None, help="Test command run in the repo root (pytest with -rA); "
                                                      "default: python3 -m pytest -rA -p no:cacheprovider --rootdir=."),
    image: Optional[str] = typer.Option(None, help="Docker image with the project's dependencies; default: "
                                                   "evolve's base image (python3 + pytest)."),
    max_commits: int = typer.Option(300, help="History: commits examined, newest first."),
    all_commits: bool = typer.Option(False, "--all-commits", help="History: examine every non-merge commit, "
                                     "branch commits included (default: the main line only, first-parent, a "
                                     "merge standing for its branch)."),
    suite_timeout: float = typer.Option(900, help="Seconds one run of the whole suite may take."),
    install: Optional[bool] = typer.Option(None, "--install/--no-install",
                                           help="Build a per-project image with the test dependencies and the "
                                                "project installed (pip install -e .), offline; default: when the "
                                                "project has pyproject.toml, setup.py/cfg or requirements files."),
    requirements: Optional[list[str]] = typer.Option(None, "--requirements",
                                                     help="Requirements file to install (repeatable); default: "
                                                          "detected (pyproject extras/groups, requirements*.txt, tox.ini)."),
    extras: Optional[str] = typer.Option(None, help="Extras or dependency groups to install, comma-separated; "
                                                    "default: test, tests, testing, dev where they exist."),
    setup: Optional[str] = typer.Option(None, help="Shell command run in the project after the install "
                                                   "(as root, no network)."),
    executor: str = typer.Option("local", help=EXECUTOR_HELP + " Used for the grader's check of each task."),
    ray_address: str = typer.Option("auto", help=RAY_ADDRESS_HELP),
    statement: str = typer.Option("deterministic", help="Problem statements: deterministic (failing tests and "
                                                         "tracebacks), or llm (a model rewrites them as issues, "
                                                         "checked never to quote the patch)."),
    statement_model: Optional[str] = typer.Option(None, help="litellm model for --statement llm (e.g. "
                                                             "anthropic/claude-sonnet-4-5, scripted/PATH.yaml)."),
) -> None:
    """Make an eval set from a repo: injected bugs (mutation) and/or real fixes mined from git history."""
    from evolve.evalsets.registry import evolve_home
    from evolve.synth.commands import print_synth_summary
    from evolve.synth.env import SynthOptions
    from evolve.synth.progress import RichProgress
    from evolve.synth.source import slug
    from evolve.synth.synthesize import synthesize

    sources = tuple(s.strip() for s in source.split(",") if s.strip())
    if statement not in ("deterministic", "llm"):
        raise ConfigError(f"--statement must be deterministic or llm, got {statement!r}")
    if (statement == "llm") != (statement_model is not None):
        raise ConfigError("--statement llm needs --statement-model MODEL, and --statement-model needs --statement llm")
    if statement_model is not None:
        from evolve.models import check_model

        check_model(statement_model, role="statement")  # before any sandbox work: provider and price known
    eval_name = slug(name or repo.expanduser().resolve().name)
    dest = out or evolve_home() / "evals" / eval_name
    opts = SynthOptions(seed=seed, max_tasks=max_tasks, workers=workers, test_cmd=test_cmd, image=image,
                        max_commits=max_commits, suite_timeout_s=suite_timeout, first_parent=not all_commits,
                        executor=executor, ray_address=ray_address, install=install,
                        extras=tuple(e.strip() for e in (extras or "").split(",") if e.strip()),
                        requirement_files=tuple(requirements) if requirements else None, setup_cmd=setup)
    with interruptible(NOTHING_WRITTEN), RichProgress(console) as progress:
        meta = synthesize(repo, dest, sources=sources, name=name, opts=opts, progress=progress)
    print_synth_summary(console, meta, Path(dest))
    if statement == "llm":
        from evolve.synth.statements import TRACE_FILE, rewrite_statements

        counts = rewrite_statements(Path(dest), statement_model)
        plain(f"statements: {counts['llm']} written by {statement_model}, {counts['deterministic']} kept "
              f"deterministic (reasons in each task's synth.statement); calls traced in {Path(dest) / TRACE_FILE}")


def evals_build(
    recipe: str = typer.Argument(..., help="Recipe name (NAME.yaml in ./evals, $EVOLVE_HOME/evals, or "
                                            "evolve's own: default) or path."),
    seed: Optional[int] = typer.Option(None, help="Override the recipe's seed."),
    per_project: Optional[int] = typer.Option(None, min=1, help="Override the recipe's tasks per project."),
    projects: Optional[str] = typer.Option(None, help="Only these projects, comma-separated."),
    out: Optional[Path] = typer.Option(None, help="Output directory; default $EVOLVE_HOME/evals/NAME."),
    workers: int = typer.Option(2, min=1, help="Sandboxes validating at once."),
    executor: str = typer.Option("local", help=EXECUTOR_HELP + " Used for the grader's check of each task."),
    ray_address: str = typer.Option("auto", help=RAY_ADDRESS_HELP),
) -> None:
    """Build an eval set from a recipe: download pinned PyPI projects, synthesize and validate tasks."""
    from evolve.synth.build import build
    from evolve.synth.commands import print_synth_summary
    from evolve.synth.progress import RichProgress

    only = [p.strip() for p in projects.split(",") if p.strip()] if projects else None
    with interruptible(NOTHING_WRITTEN), RichProgress(console) as progress:
        meta = build(recipe, dest=out, seed=seed, per_project=per_project, projects=only, workers=workers,
                     progress=progress, executor=executor, ray_address=ray_address)
    print_synth_summary(console, meta, Path(meta["path"]))
    plain(f"mutants tried {meta['mutants_tried']}, tasks kept {meta['tasks']} "
                  f"({100 * meta['mutants_kept_share']:.0f}%)")

