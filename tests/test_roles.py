"""Role routing, optimizer calls, prices and estimates, over real HTTP and real litellm.

"Providers" are small HTTP servers on 127.0.0.1 (tests/support.py's FakeProvider,
answering chosen status codes) or its stub OpenAI-compatible server run as a
real LocalServer child process.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from evolve.config import Limits, ModelsConfig, ProjectConfig, RoleConfig, ServeConfig
from evolve.errors import ConfigError, ModelError
from evolve.gateway import Gateway, UnixHTTPConnection
from evolve.models import FREE, LiteLLMBackend, UpstreamError
from evolve.roles import (
    EMBEDDED_MAX_TOKENS,
    LOCAL_API_KEY,
    ResolvedRole,
    RoleClient,
    complete,
    default_api_model,
    estimate,
    fill_local_api_key,
    needs_local_server,
    resolve_role,
    resolve_roles,
    roles_needing_server,
)
from evolve.serve import LocalServer
from support import OK_BODY, stub_cfg

NO_KEYS: dict[str, str] = {}
ANTHROPIC = {"ANTHROPIC_API_KEY": "sk-ant-test"}
GATEWAY_TRACE_KEYS = {"call", "ts", "latency_s", "status", "model", "request", "response", "error", "usage",
                      "cost_usd"}


def project(solver: dict | None = None, optimizer: dict | None = None, serve: dict | None = None) -> ProjectConfig:
    return ProjectConfig(models=ModelsConfig(solver=RoleConfig(**(solver or {})),
                                             optimizer=RoleConfig(**(optimizer or {}))),
                         serve=ServeConfig(**serve) if serve is not None else None)


def msgs(text: str = "hello there model") -> list[dict]:
    return [{"role": "user", "content": text}]


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def stub_server(stub_script):
    with LocalServer(stub_cfg(stub_script, "--model-id", "stub-7b")) as server:
        yield server


# -- routing -----------------------------------------------------------------------------------------


def test_configured_model_gets_its_own_params():
    cfg = RoleConfig(model="anthropic/claude-sonnet-4-5", temperature=0.2, max_tokens=4096, timeout_s=120,
                     params={"top_p": 0.9, "temperature": 1.0})
    role = resolve_role("solver", cfg, env=NO_KEYS)
    assert role.model == "anthropic/claude-sonnet-4-5" and role.name == "solver" and not role.local
    assert role.params == {"top_p": 0.9, "temperature": 0.2, "max_tokens": 4096, "timeout": 120}
    assert role.source == "models.solver.model"


def test_configured_server_of_your_own_and_prices():
    cfg = RoleConfig(model="hosted_vllm/Qwen2.5-Coder-7B", api_base="http://127.0.0.1:8000/v1",
                     input_cost_per_token=1e-7, output_cost_per_token=2e-7)
    role = resolve_role("optimizer", cfg, env=NO_KEYS)
    assert role.params["api_base"] == "http://127.0.0.1:8000/v1"
    assert not role.local  # a server of your own, even on this host, is priced as configured: evolve didn't start it
    assert role.params["input_cost_per_token"] == 1e-7 and role.params["output_cost_per_token"] == 2e-7
    assert "api_key" not in role.params  # hosted_vllm needs none
    remote = resolve_role("solver", RoleConfig(model="openai/my-model", api_base="https://llm.example/v1"),
                          env=NO_KEYS)
    assert not remote.local and remote.params["api_key"] == LOCAL_API_KEY


def test_openai_compatible_server_gets_a_placeholder_key_only_without_a_real_one():
    base = {"api_base": "http://127.0.0.1:9/v1"}
    assert fill_local_api_key("openai/m", dict(base), env={})["api_key"] == LOCAL_API_KEY
    assert "api_key" not in fill_local_api_key("openai/m", dict(base), env={"OPENAI_API_KEY": "sk-real"})
    assert fill_local_api_key("openai/m", {**base, "api_key": "mine"}, env={})["api_key"] == "mine"
    assert "api_key" not in fill_local_api_key("openai/gpt-4.1", {}, env={})  # the real OpenAI API


def test_no_model_uses_the_api_key_in_the_environment():
    role = resolve_role("solver", RoleConfig(temperature=0.0), env=ANTHROPIC)
    assert role.model == "anthropic/claude-sonnet-4-5" and role.source == "default model for ANTHROPIC_API_KEY"
    assert role.params["temperature"] == 0.0
    assert default_api_model({"OPENAI_API_KEY": "x"}) == ("OPENAI_API_KEY", "openai/gpt-4.1")
    assert default_api_model({"OPENAI_API_KEY": ""}) is None


def test_no_model_no_key_no_server_says_what_to_do():
    with pytest.raises(ConfigError) as info:
        resolve_role("optimizer", RoleConfig(), env=NO_KEYS)
    msg = str(info.value)
    assert "models.optimizer.model" in msg and "ANTHROPIC_API_KEY" in msg and "evolve serve" in msg


def test_api_base_without_model_is_an_error():
    with pytest.raises(ConfigError, match="models.solver.api_base is set but models.solver.model is not"):
        resolve_role("solver", RoleConfig(api_base="http://127.0.0.1:8000/v1"), env=NO_KEYS)


def test_served_role_points_at_the_running_server(stub_server):
    role = resolve_role("solver", RoleConfig(temperature=0.3), stub_server, env=ANTHROPIC)
    assert role.model == "openai/stub-7b" and role.local and role.source == "local server"
    assert role.params["api_base"] == stub_server.api_base
    assert role.params["api_key"] == LOCAL_API_KEY
    assert role.params["input_cost_per_token"] == 0.0 and role.params["output_cost_per_token"] == 0.0
    assert role.params["temperature"] == 0.3
    assert "max_tokens" not in role.params  # only the embedded 135M model gets a default cap
    # A role's own model wins over the server.
    own = resolve_role("solver", RoleConfig(model="anthropic/claude-sonnet-4-5"), stub_server, env=NO_KEYS)
    assert own.model == "anthropic/claude-sonnet-4-5" and "api_base" not in own.params
    assert EMBEDDED_MAX_TOKENS > 0


@pytest.mark.parametrize("cfg, env, expected", [
    (project(), NO_KEYS, ["solver", "optimizer"]),             # nothing configured, offline: embedded default
    (project(), ANTHROPIC, []),                                # nothing configured, a key: the API
    (project(solver={"model": "anthropic/x"}), NO_KEYS, ["optimizer"]),
    (project(solver={"model": "a/x"}, optimizer={"model": "b/y"}), NO_KEYS, []),
    (project(serve={}), ANTHROPIC, ["solver", "optimizer"]),   # an explicit serve: block wins over a key
    (project(serve={"roles": ["solver"]}), NO_KEYS, ["solver"]),
    (project(optimizer={"model": "anthropic/x"}, serve={"roles": ["solver", "optimizer"]}), NO_KEYS, ["solver"]),
])
def test_which_roles_need_a_local_server(cfg, env, expected):
    assert roles_needing_server(cfg, env) == expected
    assert needs_local_server(cfg, env) == bool(expected)


def test_unknown_role_in_serve_roles():
    with pytest.raises(ConfigError, match="serve.roles: unknown role 'critic'"):
        needs_local_server(project(serve={"roles": ["critic"]}), NO_KEYS)


def test_resolve_roles_routes_only_served_roles_to_the_server(stub_server):
    cfg = project(optimizer={"model": "anthropic/claude-sonnet-4-5", "temperature": 0.7},
                  serve={"roles": ["solver", "optimizer"]})
    roles = resolve_roles(cfg, stub_server, env=NO_KEYS)
    assert roles["solver"].model == "openai/stub-7b" and roles["solver"].params["api_base"] == stub_server.api_base
    assert roles["optimizer"].model == "anthropic/claude-sonnet-4-5"
    assert roles["optimizer"].params["temperature"] == 0.7
    # serve.roles without the optimizer: it does not get the server even without a model.
    with pytest.raises(ConfigError, match="no model for the optimizer"):
        resolve_roles(project(serve={"roles": ["solver"]}), stub_server, env=NO_KEYS)


# -- optimizer calls -------------------------------------------------------------------------------------


def test_complete_through_the_served_model_is_traced_like_the_gateway(stub_server, tmp_path):
    role = resolve_role("optimizer", RoleConfig(temperature=0.25, max_tokens=77), stub_server, env=NO_KEYS)
    trace_path = tmp_path / "optimizer" / "trace.jsonl"
    text, usage = complete(role, msgs("analyze these five failures"), trace_path=trace_path)
    seen = json.loads(text)  # the stub echoes what it received
    assert seen == {"model": "stub-7b", "auth": f"Bearer {LOCAL_API_KEY}", "max_tokens": 77, "temperature": 0.25}
    assert usage.calls == 1 and usage.prompt_tokens == 4 and usage.completion_tokens == 5 and usage.cost_usd == 0
    (line,) = lines(trace_path)
    assert set(line) == GATEWAY_TRACE_KEYS
    assert line["call"] == 1 and line["status"] == 200 and line["error"] is None
    assert line["model"] == "openai/stub-7b" and line["request"] == {"messages": msgs("analyze these five failures")}
    assert line["usage"] == {"prompt_tokens": 4, "completion_tokens": 5} and line["cost_usd"] == 0.0
    assert line["response"]["choices"][0]["message"]["content"] == text

    # Numbering continues across clients appending to the same trace.
    with RoleClient(role, trace_path=trace_path) as client:
        client.complete(msgs("plan"))
        client.complete(msgs("patch"), max_tokens=5)  # the role's own max_tokens wins
        assert client.usage.calls == 2 and client.usage.completion_tokens == 10
    assert [r["call"] for r in lines(trace_path)] == [1, 2, 3]
    assert json.loads(lines(trace_path)[-1]["response"]["choices"][0]["message"]["content"])["max_tokens"] == 77


def test_rate_limit_is_retried_then_succeeds(provider_factory, tmp_path):
    p = provider_factory((429, {"error": {"message": "Rate limit reached", "type": "rate_limit_error"}}),
                         (200, OK_BODY))
    role = resolve_role("optimizer", RoleConfig(model="openai/x", api_base=p.url, **FREE), env=NO_KEYS)
    t0 = time.monotonic()
    text, usage = complete(role, msgs(), trace_path=tmp_path / "t.jsonl")
    assert text == "hello there" and usage.prompt_tokens == 11 and usage.completion_tokens == 7
    assert p.hits == 2 and time.monotonic() - t0 < 15
    assert [r["status"] for r in lines(tmp_path / "t.jsonl")] == [200]  # one call, retried inside


def test_persistent_5xx_is_upstream_error_and_traced(provider_factory, tmp_path):
    p = provider_factory((503, {"error": {"message": "engine overloaded"}}))
    role = resolve_role("optimizer", RoleConfig(model="openai/x", api_base=p.url, **FREE), env=NO_KEYS)
    backend = LiteLLMBackend(role.model, role.params, retries=2, max_wait_s=0.05)
    with RoleClient(role, trace_path=tmp_path / "t.jsonl", backend=backend) as client:
        with pytest.raises(UpstreamError, match="engine overloaded"):
            client.complete(msgs())
        assert client.usage.errors == 1 and client.usage.calls == 0
    assert p.hits == 3
    (line,) = lines(tmp_path / "t.jsonl")
    assert line["status"] == 502 and line["error"]["type"] == "upstream_error"
    assert "engine overloaded" in line["error"]["message"]


def test_bad_key_fails_fast_naming_the_env_var(provider_factory, tmp_path):
    p = provider_factory((401, {"error": {"message": "Incorrect API key provided: sk-role-secret-9",
                                          "type": "invalid_request_error", "code": "invalid_api_key"}}))
    role = resolve_role("optimizer", RoleConfig(model="openai/x", api_base=p.url, **FREE,
                                                params={"api_key": "sk-role-secret-9"}), env=NO_KEYS)
    t0 = time.monotonic()
    with pytest.raises(ModelError, match="OPENAI_API_KEY") as info:
        complete(role, msgs(), trace_path=tmp_path / "t.jsonl")
    assert p.hits == 1 and time.monotonic() - t0 < 10
    assert "sk-role-secret-9" not in str(info.value)
    (line,) = lines(tmp_path / "t.jsonl")
    assert line["status"] == 502 and line["error"]["type"] == "model_error"
    assert "sk-role-secret-9" not in json.dumps(line)


def test_unmapped_hosted_vllm_model_is_refused_unless_priced(provider_factory):
    p = provider_factory((200, OK_BODY))
    role = resolve_role("solver", RoleConfig(model="hosted_vllm/my-finetune", api_base=p.url), env=NO_KEYS)
    with pytest.raises(ConfigError, match=r"models\.solver\.input_cost_per_token: 0 .*free local model"):
        complete(role, msgs())
    assert p.hits == 0  # refused before any call
    role = resolve_role("solver", RoleConfig(model="hosted_vllm/my-finetune", api_base=p.url, **FREE), env=NO_KEYS)
    text, usage = complete(role, msgs())
    assert text == "hello there" and usage.cost_usd == 0.0 and usage.prompt_tokens == 11


def test_configured_price_and_the_gateway_budget(provider_factory, tmp_path):
    """A local model with a per-token price: the gateway prices each call and stops the task at its budget."""
    p = provider_factory((200, OK_BODY))  # 11 prompt + 7 completion tokens a call
    role = resolve_role("solver", RoleConfig(model="openai/local-model", api_base=p.url,
                                             input_cost_per_token=0.01, output_cost_per_token=0.1), env=NO_KEYS)
    backend = LiteLLMBackend(role.model, role.params)
    path = tmp_path / "gw.sock"
    with Gateway(path, tmp_path / "trace.jsonl", backend, Limits(max_cost_usd=1.5)) as gw:
        statuses = []
        for _ in range(3):
            conn = UnixHTTPConnection(path, timeout=30)
            conn.request("POST", "/v1/chat/completions", json.dumps({"messages": msgs()}),
                         {"Content-Type": "application/json"})
            resp = conn.getresponse()
            statuses.append((resp.status, json.loads(resp.read())))
            conn.close()
    assert [s for s, _ in statuses] == [200, 200, 403]
    assert statuses[0][1]["evolve"]["cost_usd"] == pytest.approx(11 * 0.01 + 7 * 0.1)
    assert "cost limit" in statuses[2][1]["error"]["message"]
    assert gw.usage.cost_usd == pytest.approx(1.62) and p.hits == 2


def test_scripted_optimizer(tmp_path):
    script = tmp_path / "opt.yaml"
    script.write_text('rules:\n  - when: {contains: ["plan"]}\n    replies: ["change the prompt"]\n')
    role = ResolvedRole("optimizer", f"scripted/{script}", {})
    with RoleClient(role, trace_path=tmp_path / "t.jsonl") as client:
        text, usage = client.complete(msgs("make a plan"))
    assert text == "change the prompt" and usage.prompt_tokens > 0
    assert lines(tmp_path / "t.jsonl")[0]["status"] == 200


# -- estimates ---------------------------------------------------------------------------------------------


def test_estimate_with_litellm_prices_local_and_unknown():
    api = resolve_role("solver", RoleConfig(model="anthropic/claude-sonnet-4-5"), env=NO_KEYS)
    est = estimate(10, 5, 100_000, solver=api, completion_share=0.1)
    assert est.task_runs == 50 and est.tokens == 5_000_000
    (line,) = est.lines
    assert line.prompt_tokens == 4_500_000 and line.completion_tokens == 500_000
    assert line.price_source == "litellm price list"
    assert est.usd == pytest.approx(4_500_000 * 3e-6 + 500_000 * 15e-6)  # 13.5 + 7.5

    local = ResolvedRole("solver", "openai/SmolLM2", {"api_base": "http://127.0.0.1:1/v1"}, local=True)
    opt = resolve_role("optimizer", RoleConfig(model="openai/gpt-4.1"), env=NO_KEYS)
    est = estimate(10, 5, 100_000, solver=local, optimizer=opt, optimizer_tokens_per_generation=20_000, repeats=2)
    assert est.task_runs == 100
    solver_line, opt_line = est.lines
    assert solver_line.usd == 0.0 and solver_line.price_source == "local server started by evolve, free"
    assert opt_line.tokens == 100_000 and opt_line.usd == pytest.approx(90_000 * 2e-6 + 10_000 * 8e-6)
    assert "total: 10,100,000 tokens" in est.format()

    unknown = resolve_role("solver", RoleConfig(model="hosted_vllm/mystery"), env=NO_KEYS)
    est = estimate(3, 2, 1000, solver=unknown)
    assert est.usd is None and "unknown USD" in est.format()
    assert "models.solver.input_cost_per_token" in est.format() and "refused" in est.format()
    priced = resolve_role("solver", RoleConfig(model="hosted_vllm/mystery", input_cost_per_token=1e-6,
                                               output_cost_per_token=1e-6), env=NO_KEYS)
    assert estimate(3, 2, 1000, solver=priced).usd == pytest.approx(6000 * 1e-6)
    with pytest.raises(ConfigError):
        estimate(-1, 2, 3, solver=api)
