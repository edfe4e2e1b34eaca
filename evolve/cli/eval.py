"""``evolve eval``: evaluate one harness on a split of an eval set."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.text import Text

from evolve.cli.common import (EXECUTOR_HELP, RAY_ADDRESS_HELP, console, interruptible, option_default,
                               parse_params, plain)
from evolve.config import EvalsConfig, EvalSettings, Limits, SandboxLimits


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
    workers: Optional[int] = typer.Option(None, help=f"Tasks evaluated at once (default {option_default(EvalsConfig, 'workers')})."),
    repeats: int = typer.Option(1, help="Evaluations per task (repeat indices 0..N-1); raise it to re-run."),
    instance: list[str] = typer.Option([], "--instance", "-i", help="Only these instance_ids (repeatable)."),
    model_param: list[str] = typer.Option([], help="litellm parameter KEY=VALUE (repeatable)."),
    timeout: Optional[float] = typer.Option(None, help=f"Seconds the harness may run per task (default {option_default(EvalSettings, 'harness_timeout_s')})."),
    test_timeout: Optional[float] = typer.Option(None, help=f"Seconds the grader's test run may take (default {option_default(EvalSettings, 'test_timeout_s')})."),
    max_calls: Optional[int] = typer.Option(None, help=f"Model calls per task, enforced by the gateway (default {option_default(Limits, 'max_calls')})."),
    max_tokens: Optional[int] = typer.Option(None, help=f"Tokens per task, enforced by the gateway (default {option_default(Limits, 'max_tokens')})."),
    max_cost_usd: Optional[float] = typer.Option(None, help=f"USD per task, enforced by the gateway (default {option_default(Limits, 'max_cost_usd')})."),
    mem: Optional[str] = typer.Option(None, help=f"Memory limit per sandbox (default {option_default(SandboxLimits, 'mem_limit')})."),
    cpus: Optional[float] = typer.Option(None, help=f"CPUs per sandbox (default {option_default(SandboxLimits, 'cpus')})."),
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
    with eval_session(model, parse_params(model_param), workers=workers, api_base=api_base, temperature=temperature,
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
        with interruptible(f"finished results kept in {evaluation.run_dir}; no containers left behind."), view:
            report = evaluation.run()
    if show_tasks:
        console.print(results_table(report))
    console.print(summary_table(report))

