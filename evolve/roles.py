"""Model roles: which model, with which parameters, each role calls.

evolve calls models in two roles:

* ``solver``: the model the harness uses, through the per-task gateway;
* ``optimizer``: analysis, planning and patching in the evolution loop.

Each role is a ``RoleConfig`` (``models.solver`` / ``models.optimizer`` in
``evolve.yaml``). ``resolve_role`` turns one into a ``ResolvedRole``: a litellm
model string plus the parameters ``LiteLLMBackend`` (and
``EvalSettings.model_params``) take. Where the model comes from, first match wins:

1. the role's own ``model`` (any litellm string; ``api_base`` for a server of your own);
2. a running ``LocalServer`` (``evolve.serve``) the role is pointed at;
3. an API key in the environment with no model configured: that provider's
   default model (``DEFAULT_API_MODELS``);
4. otherwise a ``ConfigError``; ``needs_local_server`` tells a caller in advance
   that it must start the embedded default server for this case.

A role pointed at a server evolve started (2.) gets the explicit price 0
(``input_cost_per_token`` and ``output_cost_per_token``, unless the role sets
its own): evolve knows that model is free because it runs it. Any other model
needs litellm's price or one set in its ``RoleConfig``; ``LiteLLMBackend``
refuses it otherwise (``evolve.models.model_price``), so budgets never stop counting.

``RoleClient`` / ``complete`` call a role's model for the optimizer through the
same ``LiteLLMBackend`` the gateway uses (same retries, fail-fast errors and
prices) and append every call to a trace file in the gateway's line format.
``estimate`` prices a run before anything is spent (``evolve run --dry-run``).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from evolve.config import ProjectConfig, RoleConfig, ServeConfig
from evolve.errors import ConfigError, ContextWindowError, ModelError, RequestError, UpstreamError
from evolve.types import Usage

if TYPE_CHECKING:  # pragma: no cover
    from evolve.models import ModelBackend
    from evolve.serve import LocalServer

ROLES = ("solver", "optimizer")
DEFAULT_API_MODELS: tuple[tuple[str, str], ...] = (
    ("ANTHROPIC_API_KEY", "anthropic/claude-sonnet-4-5"),
    ("OPENAI_API_KEY", "openai/gpt-4.1"),
    ("GEMINI_API_KEY", "gemini/gemini-2.5-pro"),
)
"""(environment variable, model) used, in this order, by a role that names no model."""
EMBEDDED_MAX_TOKENS = 512
"""Completion tokens per call for the embedded 135M model when the role sets none (it rambles)."""
LOCAL_API_KEY = "local"
"""Placeholder key sent to local servers, so a real OPENAI_API_KEY in the environment never leaves the host."""


@dataclass(frozen=True, eq=False)
class ResolvedRole:
    """What one role calls.

    Attributes:
        name: ``solver`` or ``optimizer``.
        model: litellm model string.
        params: litellm parameters (``temperature``, ``max_tokens``, ``timeout``,
            ``api_base``, ``api_key``, ``input_cost_per_token``, ``output_cost_per_token``,
            and ``RoleConfig.params``), as ``LiteLLMBackend`` and ``EvalSettings.model_params`` take them.
        source: where the model came from, for messages (``models.solver.model``, ``local server``...).
        local: the model runs on a local server evolve started (``evolve.serve``), which evolve
            prices at 0 unless the role sets a price.
    """

    name: str
    model: str
    params: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    local: bool = False

    def describe(self) -> str:
        extra = f" at {self.params['api_base']}" if self.params.get("api_base") else ""
        return f"{self.name}: {self.model}{extra} ({self.source})"


def default_api_model(env: Mapping[str, str] | None = None) -> tuple[str, str] | None:
    """(environment variable, model) of the first provider whose API key is set, or None."""
    env = os.environ if env is None else env
    for var, model in DEFAULT_API_MODELS:
        if env.get(var):
            return var, model
    return None


def _served_roles(cfg: ProjectConfig) -> list[str]:
    return list(cfg.serve.roles) if cfg.serve is not None else list(ROLES)


def roles_needing_server(cfg: ProjectConfig, env: Mapping[str, str] | None = None) -> list[str]:
    """Roles that will be pointed at a local server: those without a model of their own that are
    listed in ``serve.roles`` (with a ``serve:`` block), or, without one, when no API key is set."""
    out = []
    for name in _served_roles(cfg):
        if name not in ROLES:
            raise ConfigError(f"serve.roles: unknown role {name!r}; roles are {', '.join(ROLES)}")
        if getattr(cfg.models, name).model:
            continue
        if cfg.serve is None and default_api_model(env) is not None:
            continue
        out.append(name)
    return out


def needs_local_server(cfg: ProjectConfig, env: Mapping[str, str] | None = None) -> bool:
    """True when some role must be served locally: start ``LocalServer(serve_config(cfg))`` first."""
    return bool(roles_needing_server(cfg, env))


def serve_config(cfg: ProjectConfig) -> ServeConfig:
    """The ``serve:`` block, or the embedded default (llama.cpp serving SmolLM2-135M)."""
    return cfg.serve if cfg.serve is not None else ServeConfig()


def resolve_role(name: str, cfg: RoleConfig, server: "LocalServer | None" = None, *,
                 env: Mapping[str, str] | None = None) -> ResolvedRole:
    """The model and litellm parameters of one role (see the module docstring for the order).

    ``server`` is used only when the role names no model of its own.

    Raises:
        ConfigError: no model is configured, no server is given and no API key is set;
            or ``api_base`` without ``model``.
    """
    params: dict[str, Any] = dict(cfg.params)
    if cfg.temperature is not None:
        params["temperature"] = cfg.temperature
    if cfg.max_tokens is not None:
        params["max_tokens"] = cfg.max_tokens
    params["timeout"] = cfg.timeout_s
    for key in ("input_cost_per_token", "output_cost_per_token"):
        if getattr(cfg, key) is not None:
            params[key] = getattr(cfg, key)
    if cfg.model:
        if cfg.api_base:
            params["api_base"] = cfg.api_base
        params = fill_local_api_key(cfg.model, params, env)
        return ResolvedRole(name, cfg.model, params, f"models.{name}.model")
    if cfg.api_base:
        raise ConfigError(f"models.{name}.api_base is set but models.{name}.model is not: name the served model "
                          f"too, e.g. model: openai/<model id> (for vLLM: hosted_vllm/<model id>)")
    if server is not None:
        params["api_base"] = server.api_base
        params.setdefault("api_key", LOCAL_API_KEY)
        from evolve.models import FREE

        if not any(params.get(k) is not None for k in FREE):
            params.update(FREE)  # evolve runs this server: its calls cost 0, and say so explicitly
        embedded = server.embedded
        if embedded:
            params.setdefault("max_tokens", EMBEDDED_MAX_TOKENS)
        return ResolvedRole(name, server.litellm_model, params,
                            "embedded default model, local server" if embedded else "local server", local=True)
    found = default_api_model(env)
    if found is not None:
        var, model = found
        return ResolvedRole(name, model, params, f"default model for {var}", local=False)
    raise ConfigError(
        f"no model for the {name}: set models.{name}.model in evolve.yaml (any litellm model string, e.g. "
        f"anthropic/claude-sonnet-4-5), set an API key ({', '.join(v for v, _ in DEFAULT_API_MODELS)}), "
        "or serve one locally (a serve: block, or `evolve serve`)")


def resolve_roles(cfg: ProjectConfig, server: "LocalServer | None" = None, *,
                  env: Mapping[str, str] | None = None) -> dict[str, ResolvedRole]:
    """Both roles of ``evolve.yaml``; ``server`` serves the roles in ``serve.roles`` (all, without a block)."""
    served = set(_served_roles(cfg))
    return {name: resolve_role(name, getattr(cfg.models, name), server if name in served else None, env=env)
            for name in ROLES}


def fill_local_api_key(model: str, params: dict[str, Any], env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``params`` with ``api_key`` set to a placeholder for an ``openai/`` model on an ``api_base`` when no key
    is given and ``OPENAI_API_KEY`` is unset: the OpenAI client refuses to start without a key, and
    OpenAI-compatible servers without authentication (vLLM, llama.cpp, SGLang) ignore it."""
    env = os.environ if env is None else env
    if (model.startswith("openai/") and params.get("api_base") and not params.get("api_key")
            and not env.get("OPENAI_API_KEY")):
        return {**params, "api_key": LOCAL_API_KEY}
    return params


# -- calling a role's model (the optimizer) ---------------------------------------------------

_trace_locks: dict[str, threading.Lock] = {}
_trace_counts: dict[str, int] = {}
_trace_guard = threading.Lock()


def _trace_lock(path: Path) -> threading.Lock:
    """The writer lock of trace ``path`` (one per file, shared by every client of this process)."""
    with _trace_guard:
        return _trace_locks.setdefault(str(path.resolve()), threading.Lock())


def _next_call(path: Path) -> int:
    """The next call number in trace ``path`` (continuing the file's numbering). Call it holding
    ``_trace_lock(path)``, and append that call's line before releasing it, so lines stay in order."""
    key = str(path.resolve())
    with _trace_guard:
        if key not in _trace_counts:
            try:
                with open(path, "rb") as f:
                    _trace_counts[key] = sum(1 for _ in f)
            except FileNotFoundError:  # a new trace
                _trace_counts[key] = 0
        _trace_counts[key] += 1
        return _trace_counts[key]


_ERROR_KINDS: tuple[tuple[type[Exception], int, str], ...] = (  # (HTTP-like status, trace error type) as the gateway
    (ContextWindowError, 400, "context_window_exceeded"),
    (RequestError, 400, "invalid_request"),
    (UpstreamError, 502, "upstream_error"),
    (ModelError, 502, "model_error"),
)


class RoleClient:
    """Calls one role's model through ``LiteLLMBackend`` (retries, fail-fast errors, prices as the
    gateway's) and appends every call, success or failure, to ``trace_path`` in the gateway's format.

    ``scripted/PATH.yaml`` models work too (a scripted server is started and stopped with the client).
    Thread-safe. Use as a context manager, or call ``close``.

    Raises (from the constructor):
        ModelError: litellm knows no provider for the model.
        ConfigError: bad parameters, or a model without a price (``evolve.models.model_price``).
    """

    def __init__(self, role: ResolvedRole, *, trace_path: Path | str | None = None,
                 backend: "ModelBackend | None" = None) -> None:
        from evolve.models import backend_for

        self.role = role
        self.trace_path = Path(trace_path) if trace_path is not None else None
        if backend is None:
            backend, self._cleanup = backend_for(role.model, role.params, role=role.name)
        else:
            self._cleanup = lambda: None
        self.backend = backend
        self._lock = threading.Lock()
        self._usage = Usage()

    def __enter__(self) -> "RoleClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        cleanup, self._cleanup = self._cleanup, (lambda: None)
        cleanup()

    @property
    def usage(self) -> Usage:
        """Calls, tokens and USD of this client so far (errors counted in ``errors``)."""
        with self._lock:
            return self._usage

    def complete(self, messages: list[dict], **params: Any) -> tuple[str, Usage]:
        """One chat completion: (the reply's text, this call's usage).

        ``params`` are OpenAI request parameters (``temperature``, ``max_tokens``...);
        the role's own parameters win over them.

        Raises:
            evolve.errors.ContextWindowError, RequestError, UpstreamError (after retries),
            ModelError (bad key, unknown model): the error is traced first.
        """
        from evolve.gateway import trace_record

        request = {"messages": messages, **params}
        start = time.monotonic()
        try:
            completion = self.backend.complete(request)
        except Exception as e:
            status, kind = next(((s, k) for t, s, k in _ERROR_KINDS if isinstance(e, t)), (500, "error"))
            with self._lock:
                self._usage = self._usage.add(Usage(errors=1))
            error = {"type": kind, "message": str(e) or type(e).__name__}
            self._append(lambda call: trace_record(call=call, start=start, status=status, model=self.backend.model,
                                                   request=request, response=None, error=error))
            raise
        usage = Usage(calls=1, prompt_tokens=completion.prompt_tokens,
                      completion_tokens=completion.completion_tokens, cost_usd=completion.cost_usd)
        with self._lock:
            self._usage = self._usage.add(usage)
        self._append(lambda call: trace_record(call=call, start=start, status=200, model=self.backend.model,
                                               request=request, response=completion.response, error=None,
                                               prompt_tokens=usage.prompt_tokens,
                                               completion_tokens=usage.completion_tokens, cost_usd=usage.cost_usd))
        choices = completion.response.get("choices") or [{}]
        text = (choices[0].get("message") or {}).get("content") or ""
        return text, usage

    def _append(self, make_record) -> None:
        from evolve.gateway import append_trace

        if self.trace_path is None:
            return
        with _trace_lock(self.trace_path):  # concurrent calls (K candidates): numbered in the file's order
            append_trace(self.trace_path, make_record(_next_call(self.trace_path)))


def complete(role: ResolvedRole, messages: list[dict], *, trace_path: Path | str | None = None,
             **params: Any) -> tuple[str, Usage]:
    """One call of ``role``'s model: (text, usage); traced to ``trace_path`` when given.

    A convenience around ``RoleClient`` (which keeps one backend for many calls; prefer it in a loop).
    """
    with RoleClient(role, trace_path=trace_path) as client:
        return client.complete(messages, **params)


# -- estimates (evolve run --dry-run) ---------------------------------------------------------

@dataclass(frozen=True)
class CostLine:
    """Estimated spend of one role."""

    role: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    usd: float | None
    """None when no price is known (not in litellm's price list and none configured): such a
    model is refused when the run starts (``evolve.models.model_price``)."""
    price_source: str

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Estimate:
    """What a run would spend: tokens and USD per role and in total."""

    task_runs: int
    """Task evaluations: tasks x generations x repeats."""
    lines: tuple[CostLine, ...]

    @property
    def tokens(self) -> int:
        return sum(line.tokens for line in self.lines)

    @property
    def usd(self) -> float | None:
        """Total USD; None if any role's price is unknown."""
        if any(line.usd is None for line in self.lines):
            return None
        return sum(line.usd or 0.0 for line in self.lines)

    def format(self) -> str:
        rows = [f"estimate: {self.task_runs} task runs"]
        for line in self.lines:
            usd = "unknown USD" if line.usd is None else f"${line.usd:,.2f}"
            rows.append(f"  {line.role}: {line.model}: {line.tokens:,} tokens ({line.prompt_tokens:,} prompt + "
                        f"{line.completion_tokens:,} completion), {usd} [{line.price_source}]")
        total = "unknown USD" if self.usd is None else f"${self.usd:,.2f}"
        rows.append(f"  total: {self.tokens:,} tokens, {total}")
        return "\n".join(rows)


def price_per_token(role: ResolvedRole) -> tuple[float, float, str] | None:
    """(USD per prompt token, USD per completion token, where from), or None when unknown.

    As the backend prices calls (``evolve.models.model_price``): a configured price (0 for a
    server evolve started, and for the scripted model), else litellm's price list (never
    downloaded). A role marked ``local`` without params (the dry run's stand-in for a server
    not started yet) is priced 0, as that server will be.
    """
    from evolve.models import SCRIPTED_PREFIX, configured_price, model_price

    price = configured_price(role.params)
    if price is None and (role.local or role.model.startswith(SCRIPTED_PREFIX)):
        return 0.0, 0.0, "local server started by evolve, free" if role.local else "scripted model, free"
    try:
        price = price or model_price(role.model, role.params, role=role.name)
    except (ConfigError, ModelError):
        return None
    return price.input_cost_per_token, price.output_cost_per_token, price.source


def estimate(tasks: int, generations: int, tokens_per_task: int, *, solver: ResolvedRole | None = None,
             optimizer: ResolvedRole | None = None, optimizer_tokens_per_generation: int = 0,
             repeats: int = 1, completion_share: float = 0.1) -> Estimate:
    """Tokens and USD a run would spend, before anything is spent.

    Solver: ``tasks x generations x repeats`` task runs of ``tokens_per_task``
    tokens each (count the baseline's evaluation as a generation). Optimizer:
    ``generations x optimizer_tokens_per_generation``. ``completion_share`` of
    the tokens are priced as completion tokens, the rest as prompt tokens.
    A role without a known price makes the USD total None (unknown), never a crash.

    Raises:
        ConfigError: a negative count or a share outside [0, 1].
    """
    if min(tasks, generations, tokens_per_task, repeats, optimizer_tokens_per_generation) < 0:
        raise ConfigError("estimate: counts must not be negative")
    if not 0.0 <= completion_share <= 1.0:
        raise ConfigError("estimate: completion_share must be in [0, 1]")
    task_runs = tasks * generations * repeats
    lines = []
    for role, total in ((solver, task_runs * tokens_per_task),
                        (optimizer if optimizer_tokens_per_generation else None,
                         generations * optimizer_tokens_per_generation)):
        if role is None:
            continue
        completion = int(round(total * completion_share))
        prompt = total - completion
        price = price_per_token(role)
        if price is None:
            usd, source = None, (f"no price known, the run would be refused: set models.{role.name}.input_cost_per_token "
                                 f"and output_cost_per_token")
        else:
            usd, source = prompt * price[0] + completion * price[1], price[2]
        lines.append(CostLine(role.name, role.model, prompt, completion, usd, source))
    return Estimate(task_runs, tuple(lines))


__all__ = ["ROLES", "DEFAULT_API_MODELS", "ResolvedRole", "RoleClient", "CostLine", "Estimate", "complete",
           "default_api_model", "estimate", "fill_local_api_key", "needs_local_server", "price_per_token",
           "resolve_role", "resolve_roles", "roles_needing_server", "serve_config"]
