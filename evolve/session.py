"""What a command runs with: servers started, roles resolved, backends built, once.

``evolve eval``, ``run`` and ``holdout`` all need the same wiring: maybe start
a local model server, resolve the roles against it, cap the evaluation workers
at the server's concurrency, check the solver's model, build the optimizer's
backend, and undo all of it at the end. ``eval_session`` and
``project_session`` do it, as context managers yielding a ``Session``, so the
CLI only parses options, calls and prints.

Command-line overrides go through the same pydantic models as ``evolve.yaml``
(``with_overrides``), so ``--generations -1`` fails like ``budget.generations: -1``,
with the option named, before anything starts.

``--dry-run``'s assumptions are named here (``DryRunAssumptions``), next to the
estimate that uses them (``dry_run_estimate``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from evolve.config import EvalsConfig, EvalSettings, ProjectConfig, RoleConfig, ServeConfig
from evolve.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from evolve.models import ModelBackend
    from evolve.roles import ResolvedRole
    from evolve.serve import LocalServer

Note = Callable[[str], None]  # plain text (printed without markup)
"""Where a session reports what it did (which model, a capped worker count): one line of rich markup."""


def _quiet(_: str) -> None:
    pass


@dataclass
class Session:
    """What a command runs with.

    Attributes:
        solver: the solver role (model and litellm parameters for ``EvalSettings``).
        optimizer: the optimizer role, or None when the command needs no optimizer.
        optimizer_backend: its backend (``evolve.models.backend_for``), or None.
        server: the local model server serving some role, or None.
        workers: evaluation workers, capped at the server's concurrency.
    """

    solver: "ResolvedRole"
    optimizer: "ResolvedRole | None"
    optimizer_backend: "ModelBackend | None"
    server: "LocalServer | None"
    workers: int


# -- command-line overrides, validated like evolve.yaml -------------------------------------------

def option_error(e: ValidationError, options: Mapping[str, str], what: str = "bad option") -> ConfigError:
    """A ``ConfigError`` naming each invalid field by its command-line option (``options`` maps a
    dotted field path to the option, e.g. ``{"budget.generations": "--generations"}``)."""
    problems = []
    for err in e.errors():
        key = ".".join(str(p) for p in err["loc"])
        problems.append(f"{options.get(key, key)} {err.get('input')!r}: {err['msg']}")
    return ConfigError(f"{what}: " + "; ".join(problems))


RUN_OPTIONS = {"budget.generations": "--generations", "budget.budget_usd": "--budget-usd",
               "budget.max_hours": "--max-hours", "evals.workers": "--workers", "executor.kind": "--executor",
               "executor.address": "--ray-address"}
"""The ``evolve run`` options that override ``evolve.yaml`` keys."""


def with_overrides(cfg: ProjectConfig, overrides: Mapping[str, Any]) -> ProjectConfig:
    """``cfg`` with the given ``{"section.key": value}`` overrides (None means not given),
    validated by the same models as ``evolve.yaml``.

    Raises:
        ConfigError: an invalid value, named by its option (``RUN_OPTIONS``).
    """
    data = cfg.model_dump()
    for path, value in overrides.items():
        if value is None:
            continue
        section, key = path.split(".")
        data[section][key] = value
    try:
        return ProjectConfig.model_validate(data)
    except ValidationError as e:
        raise option_error(e, RUN_OPTIONS) from None


EVAL_OPTIONS = {"workers": "--workers", "harness_timeout_s": "--timeout", "test_timeout_s": "--test-timeout",
                "limits.max_calls": "--max-calls", "limits.max_tokens": "--max-tokens",
                "limits.max_cost_usd": "--max-cost-usd", "sandbox.mem_limit": "--mem", "sandbox.cpus": "--cpus"}
"""The ``evolve eval`` options and the ``EvalsConfig`` / ``EvalSettings`` fields they set."""


def eval_options(*, workers: int | None, repeats: int, harness_timeout_s: float | None = None,
                 test_timeout_s: float | None = None, max_calls: int | None = None, max_tokens: int | None = None,
                 max_cost_usd: float | None = None, mem_limit: str | None = None,
                 cpus: float | None = None) -> tuple[int, EvalSettings]:
    """(workers, settings) for ``evolve eval``'s options, None meaning the model's default
    (``EvalsConfig.workers``, ``EvalSettings``, ``Limits``, ``SandboxLimits``). The settings' ``model``
    is left empty: ``model_copy`` it in once the solver is resolved.

    Raises:
        ConfigError: an invalid value, named by its option; checked before anything starts.
    """
    if repeats < 1:
        raise ConfigError(f"bad option: --repeats {repeats}: must be at least 1")

    def given(**kw: Any) -> dict[str, Any]:
        return {k: v for k, v in kw.items() if v is not None}

    try:
        n = EvalsConfig.model_validate(given(workers=workers)).workers
        settings = EvalSettings.model_validate({
            "model": "", **given(harness_timeout_s=harness_timeout_s, test_timeout_s=test_timeout_s),
            "limits": given(max_calls=max_calls, max_tokens=max_tokens, max_cost_usd=max_cost_usd),
            "sandbox": given(mem_limit=mem_limit, cpus=cpus)})
    except ValidationError as e:
        raise option_error(e, EVAL_OPTIONS) from None
    return n, settings


# -- the sessions --------------------------------------------------------------------------------

def _cap_workers(workers: int, server: "LocalServer | None", note: Note) -> int:
    if server is not None and workers > server.concurrency:
        note(f"workers {workers} capped at the local server's concurrency ({server.concurrency})")
        return server.concurrency
    return workers


def check_solver(solver: "ResolvedRole") -> None:
    """Fail now, not after a run has made its branches, if the solver's model cannot be called:
    an unknown litellm model, or a missing or invalid script for a ``scripted/`` one.

    Raises:
        ModelError, ConfigError: see ``evolve.models.backend_for``.
    """
    from evolve.models import backend_for

    _, close = backend_for(solver.model, solver.params)
    close()


def _warn_unpriced(roles, note: Note) -> None:
    from evolve.roles import price_per_token

    for role in roles:
        if price_per_token(role) is None:
            note(f"warning: no price known for {role.model}: budget.budget_usd cannot count its calls. "
                 f"Set models.{role.name}.input_cost_per_token and output_cost_per_token.")


@contextlib.contextmanager
def project_session(cfg: ProjectConfig, *, optimizer: bool = True, note: Note = _quiet) -> Iterator[Session]:
    """The models of ``evolve.yaml``: starts a local server if a role needs one, resolves the roles,
    checks the solver's model and, with ``optimizer``, builds the optimizer's backend. Everything is
    stopped and closed on exit. Without ``optimizer`` only the solver is resolved (``evolve holdout``),
    and no server is started for the optimizer alone.

    Raises:
        ConfigError, ModelError, ServeError: a role has no model, a model is unknown, or the server
            did not come up. Nothing is left running.
    """
    from evolve.models import backend_for
    from evolve.roles import resolve_role, roles_needing_server, serve_config
    from evolve.serve import LocalServer

    wanted = ("solver", "optimizer") if optimizer else ("solver",)
    served = [name for name in roles_needing_server(cfg) if name in wanted]
    server = LocalServer(serve_config(cfg)) if served else None
    with server if server is not None else contextlib.nullcontext():
        roles = {name: resolve_role(name, getattr(cfg.models, name), server if name in served else None)
                 for name in wanted}
        for role in roles.values():
            note(role.describe())
        check_solver(roles["solver"])
        if cfg.budget.budget_usd is not None:
            _warn_unpriced(roles.values(), note)
        backend, close = backend_for(roles["optimizer"].model, roles["optimizer"].params) if optimizer \
            else (None, lambda: None)
        try:
            yield Session(solver=roles["solver"], optimizer=roles.get("optimizer"), optimizer_backend=backend,
                          server=server, workers=_cap_workers(cfg.evals.workers, server, note))
        finally:
            close()


@contextlib.contextmanager
def eval_session(model: str | None, params: dict[str, Any], *, workers: int, api_base: str | None = None,
                 temperature: float | None = None, max_completion_tokens: int | None = None,
                 note: Note = _quiet) -> Iterator[Session]:
    """The solver of ``evolve eval``: ``model`` with ``params`` (and the call options) if given; else
    the default model of a set API key; else the embedded local model, on a server started here
    and stopped on exit. ``workers`` is capped at that server's concurrency.

    Raises:
        ConfigError: ``api_base`` without ``model``; the embedded server cannot start.
    """
    from evolve.roles import ResolvedRole, default_api_model, fill_local_api_key, resolve_role

    if model is not None:
        for key, value in (("temperature", temperature), ("max_tokens", max_completion_tokens),
                           ("api_base", api_base)):
            if value is not None:
                params[key] = value
        solver = ResolvedRole("solver", model, fill_local_api_key(model, params), "--model")
        yield Session(solver=solver, optimizer=None, optimizer_backend=None, server=None, workers=workers)
        return
    if api_base is not None:
        raise ConfigError("--api-base needs --model too: the served model's litellm string, e.g. openai/<model id>")
    role_cfg = RoleConfig(params=params, temperature=temperature, max_tokens=max_completion_tokens)
    if default_api_model() is not None:
        solver = resolve_role("solver", role_cfg)
        note(f"no --model: {solver.describe()}")
        yield Session(solver=solver, optimizer=None, optimizer_backend=None, server=None, workers=workers)
        return
    from evolve.serve import LocalServer

    server = LocalServer(ServeConfig())
    note("no --model and no API key: starting the embedded local model (SmolLM2-135M-Instruct on "
         "llama.cpp, CPU). It only proves the plumbing (HTTP, tokens, traces); for real results pass "
         "--model (e.g. anthropic/claude-sonnet-4-5) or serve a capable model (`evolve serve --help`).")
    try:
        server.start()
    except ConfigError as e:
        raise ConfigError(f"{e}\n(or pass --model, or set an API key such as ANTHROPIC_API_KEY)") from None
    try:
        solver = resolve_role("solver", role_cfg, server)
        note(f"local model server ready in {server.startup_seconds:.1f} s: {server.describe()}")
        yield Session(solver=solver, optimizer=None, optimizer_backend=None, server=server,
                      workers=_cap_workers(workers, server, note))
    finally:
        server.stop()
        note(f"local model server stopped after {server.seconds:.0f} s")


# -- evolve run --dry-run ------------------------------------------------------------------------

class DryRunAssumptions(BaseModel):
    """What ``evolve run --dry-run`` assumes where nothing is known before a run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    solver_tokens_per_task: int = Field(default=50_000, ge=0)
    """Solver tokens (prompt plus completion) one task run takes; ``--tokens-per-task`` overrides it."""
    optimizer_tokens_per_generation: int = Field(default=60_000, ge=0)
    """Optimizer tokens one generation takes: analysis, plan and patch with its retries."""
    generations_without_limit: int = Field(default=10, ge=1)
    """Generations priced when ``budget.generations`` is null (the run stops on USD or hours instead)."""
    discordant_share: float = Field(default=0.15, ge=0, le=1)
    """Share of the search tasks whose outcome differs between parent and child; each is re-run
    ``acceptance.rerun_discordant`` times."""


def dry_run_assumptions(*, tokens_per_task: int | None = None) -> DryRunAssumptions:
    """The assumptions with ``--tokens-per-task`` applied (None: the default).

    Raises:
        ConfigError: a negative value.
    """
    try:
        return DryRunAssumptions.model_validate({} if tokens_per_task is None
                                                else {"solver_tokens_per_task": tokens_per_task})
    except ValidationError as e:
        raise option_error(e, {"solver_tokens_per_task": "--tokens-per-task"}) from None


def dry_run_estimate(cfg: ProjectConfig, assume: DryRunAssumptions) -> str:
    """What ``evolve run`` would spend, in tokens and USD, as text to print.
    Starts no server: a locally served role is priced as free.

    Raises:
        EvalSetError: the eval set or a split is missing.
        ConfigError: a role has no model.
    """
    from evolve.evalsets.registry import load_evalset
    from evolve.roles import ResolvedRole, estimate, resolve_role, roles_needing_server

    evalset = load_evalset(cfg.evals.name)
    tasks = len(evalset.tasks(cfg.evals.search))
    if cfg.evals.max_tasks:
        tasks = min(tasks, cfg.evals.max_tasks)
    holdout = len(evalset.tasks(cfg.evals.holdout))
    gens = cfg.budget.generations or assume.generations_without_limit
    served = roles_needing_server(cfg)
    roles = {name: ResolvedRole(name, "local server", {}, "local server", local=True) if name in served
             else resolve_role(name, getattr(cfg.models, name)) for name in ("solver", "optimizer")}
    # per generation: the child on every search task plus the re-runs of discordant tasks; with K
    # candidates (search.candidates) K children and K plans and patches: an upper bound, since the
    # futility stop drops most losers after the first stage and the analysis is shared
    k = cfg.search.candidates
    per_gen = int(tasks * (1 + assume.discordant_share * cfg.acceptance.procedure(tasks).rerun_discordant)) * k
    agent = cfg.optimizer.patch == "agent"  # the patch step is then one task-run at the optimizer's price
    est = estimate(per_gen, gens, assume.solver_tokens_per_task, solver=roles["solver"], optimizer=roles["optimizer"],
                   optimizer_tokens_per_generation=(assume.optimizer_tokens_per_generation
                                                    + (assume.solver_tokens_per_task if agent else 0)) * k)
    ceiling = cfg.optimizer.limits
    race = (f"; {k} candidates per generation, each counted on every task (an upper bound: losers are "
            "usually dropped after the first stage)") if k > 1 else ""
    return (f"{evalset.name}: {tasks} search tasks, {holdout} holdout tasks; {gens} generations{race}\n"
            f"{est.format()}\nplus the baseline ({tasks} task runs) and the held-out check ({2 * holdout} task "
            f"runs); per-task ceiling from limits: {cfg.limits.max_tokens:,} tokens, ${cfg.limits.max_cost_usd:.2f}"
            + (f"\nthe optimizer counts one patch-agent run per generation (as many tokens as a task run); its "
               f"ceiling from optimizer.limits: {ceiling.max_tokens:,} tokens, ${ceiling.max_cost_usd:.2f}"
               if agent else ""))
