"""Model backends and the scripted model, over real HTTP and real litellm.

The "providers" here are small HTTP servers on 127.0.0.1 that answer like an
OpenAI-compatible API (with scripted status codes: tests/support.py's FakeProvider,
made by the ``provider_factory`` fixture), so litellm's real client, exception
mapping and our retry/classification logic all run.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from evolve.errors import ConfigError, ModelError
from evolve.models import (
    FREE,
    Completion,
    ContextWindowError,
    LiteLLMBackend,
    RequestError,
    UpstreamError,
    backend_for,
    check_model,
    model_price,
)
from evolve.scripted import FALLBACK_REPLY, ScriptedModel, ScriptedServer
from support import OK_BODY

REPO = Path(__file__).resolve().parents[1]

CONTEXT_BODY = {"error": {"message": "This model's maximum context length is 8192 tokens. However, your "
                                     "messages resulted in 9000 tokens. Please reduce the length of the messages.",
                          "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}}


def ask(text: str = "hi", **extra) -> dict:
    return {"messages": [{"role": "user", "content": text}], **extra}


SCRIPT = """\
rules:
  - when:
      contains: ["fixture-add"]
      not_contains: ["refuse"]
    replies:
      - "THOUGHT: fix it"
      - "done"
  - when:
      contains: ["fixture"]
    replies: ["generic fixture"]
default:
  - "default reply"
"""


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "script.yaml"
    path.write_text(SCRIPT)
    return path


# -- import hygiene ---------------------------------------------------------------------


def test_importing_evolve_modules_does_not_import_litellm():
    code = ("import evolve.gateway, evolve.models, evolve.scripted, sys; "
            "assert 'litellm' not in sys.modules, 'litellm imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=60)


# -- scripted model --------------------------------------------------------------------------


def test_scripted_rules_turns_and_default(script: Path):
    model = ScriptedModel.from_file(script)
    user = {"role": "user", "content": "please fix fixture-add"}
    assistant = {"role": "assistant", "content": "ok"}
    assert model.reply([user]) == "THOUGHT: fix it"
    assert model.reply([user, assistant, user]) == "done"
    assert model.reply([user, assistant, user, assistant, user]) == "done"  # last reply repeats
    assert model.reply([{"role": "user", "content": "fixture-add but refuse"}]) == "generic fixture"
    assert model.reply([{"role": "user", "content": "nothing matches"}]) == "default reply"
    # Text parts count as content; a match may span messages (joined by newlines).
    parts = [{"role": "system", "content": [{"type": "text", "text": "fixture"}]},
             {"role": "user", "content": [{"type": "text", "text": "-add? no: fixture-add"}]}]
    assert model.reply(parts) == "THOUGHT: fix it"


def test_scripted_without_default_has_fallback(tmp_path: Path):
    path = tmp_path / "s.yaml"
    path.write_text("rules:\n  - when: {contains: [x]}\n    replies: [y]\n")
    assert ScriptedModel.from_file(path).reply([{"role": "user", "content": "z"}]) == FALLBACK_REPLY


@pytest.mark.parametrize("text, key", [
    ("rules: 5\n", "rules"),
    ("rules:\n  - when: {contains: [a]}\n", "rules[0].replies"),
    ("rules:\n  - when: {contains: [a]}\n    replies: []\n", "rules[0].replies"),
    ("rules:\n  - when: {contains: 3}\n    replies: [a]\n", "rules[0].when.contains"),
    ("rules:\n  - when: {contain: [a]}\n    replies: [a]\n", "rules[0].when.contain"),
    ("rules:\n  - when: {contains: [a]}\n    replies: [a]\n    extra: 1\n", "rules[0].extra"),
    ("default: [1, 2]\n", "default"),
    ("defaults: [a]\n", "defaults"),
])
def test_scripted_invalid_script_names_file_and_key(tmp_path: Path, text: str, key: str):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        ScriptedModel.from_file(path)
    assert str(path) in str(info.value) and repr(key) in str(info.value)


def test_scripted_unreadable_or_unparsable(tmp_path: Path):
    with pytest.raises(ConfigError, match="missing.yaml"):
        ScriptedModel.from_file(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        ScriptedModel.from_file(bad)


def test_scripted_server_speaks_openai_http(script: Path):
    with ScriptedServer(script) as server:
        assert server.url.startswith("http://127.0.0.1:") and server.url.endswith("/v1")
        body = json.dumps(ask("fixture-add " + "x" * 80)).encode()
        req = urllib.request.Request(server.url + "/chat/completions", body,
                                     {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            out = json.load(r)
        assert out["object"] == "chat.completion"
        assert out["choices"][0]["message"] == {"role": "assistant", "content": "THOUGHT: fix it"}
        assert out["usage"] == {"prompt_tokens": 92 // 4, "completion_tokens": max(1, 15 // 4),
                                "total_tokens": 92 // 4 + 3}
        with urllib.request.urlopen(server.url + "/models", timeout=10) as r:
            assert json.load(r)["data"][0]["object"] == "model"
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(urllib.request.Request(server.url + "/chat/completions", b"{}"), timeout=10)
        assert info.value.code == 400
    assert len(server.requests) == 1
    server.close()  # idempotent


# -- litellm backend: success ------------------------------------------------------------------


def test_scripted_backend_goes_through_litellm_and_http(script: Path):
    backend, cleanup = backend_for(f"scripted/{script}", {"temperature": 0.0})
    try:
        out = backend.complete(ask("fixture-add", model="ignored", temperature=0.9, max_tokens=50,
                                   frobnicate=True))
        assert isinstance(out, Completion)
        assert out.response["choices"][0]["message"]["content"] == "THOUGHT: fix it"
        assert out.prompt_tokens == max(1, len("fixture-add") // 4) and out.completion_tokens == 3
        assert out.cost_usd == 0.0  # the scripted model's price is 0, set explicitly
        assert backend.price.input_cost_per_token == backend.price.output_cost_per_token == 0.0
        json.dumps(out.response)  # plain JSON
        server_url = backend.params["api_base"]
    finally:
        cleanup()
    # The server is gone after cleanup.
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(server_url + "/models", timeout=5)


def test_request_params_pass_through_and_settings_win(provider_factory):
    provider = provider_factory((200, OK_BODY))
    backend = provider.backend(params={"temperature": 0.0})
    out = backend.complete(ask(model="gpt-9", temperature=0.7, max_tokens=64, stop=["X"], frobnicate=1,
                               seed=3))
    assert out.prompt_tokens == 11 and out.completion_tokens == 7
    sent = provider.bodies[0]
    assert sent["model"] == "x"  # the request's model is ignored
    assert sent["temperature"] == 0.0  # model_params win over the request
    assert sent["max_tokens"] == 64 and sent["stop"] == ["X"] and sent["seed"] == 3
    assert "frobnicate" not in sent


def test_price_params_override_litellm_and_are_not_sent(provider_factory):
    provider = provider_factory((200, OK_BODY))
    backend = provider.backend(params={"input_cost_per_token": 1e-3, "output_cost_per_token": 2e-3})
    out = backend.complete(ask())
    assert out.cost_usd == pytest.approx(11 * 1e-3 + 7 * 2e-3)
    assert not {"input_cost_per_token", "output_cost_per_token"} & set(provider.bodies[0])


def test_stream_and_missing_messages_are_request_errors():
    backend = LiteLLMBackend("openai/x", {"api_base": "http://127.0.0.1:9/v1", "api_key": "k", **FREE})
    with pytest.raises(RequestError, match="stream"):
        backend.complete(ask(stream=True))
    with pytest.raises(RequestError, match="messages"):
        backend.complete({"messages": []})


# -- prices: every backend knows one ----------------------------------------------------------


def test_unpriced_hosted_model_is_refused_naming_the_setting():
    params = {"api_base": "http://127.0.0.1:9/v1"}
    for refuse in (lambda: model_price("hosted_vllm/some-model", params, role="solver"),
                   lambda: check_model("hosted_vllm/some-model", params, role="solver"),
                   lambda: backend_for("hosted_vllm/some-model", params, role="solver"),
                   lambda: LiteLLMBackend("hosted_vllm/some-model", params, role="solver")):
        with pytest.raises(ConfigError) as info:
            refuse()
        msg = str(info.value)
        assert "'hosted_vllm/some-model' has no price" in msg
        assert "models.solver.input_cost_per_token: 0" in msg and "models.solver.output_cost_per_token" in msg
        assert "--model-param input_cost_per_token=0" in msg
    # Without a role the message still names the setting, for either role.
    with pytest.raises(ConfigError, match=r"models\.<role>\.input_cost_per_token"):
        backend_for("openai/my-own-server-model", params)


def test_explicit_zero_price_makes_a_hosted_model_usable(provider_factory):
    price = model_price("hosted_vllm/some-model", {"input_cost_per_token": 0, "output_cost_per_token": 0})
    assert (price.input_cost_per_token, price.output_cost_per_token, price.source) == (0.0, 0.0, "configured price")
    backend, cleanup = backend_for("hosted_vllm/some-model", {"api_base": "http://127.0.0.1:9/v1", **FREE})
    cleanup()
    assert backend.price.cost(1000, 1000) == 0.0
    # A real call through litellm's hosted_vllm client costs the price set: 0, and is counted as such.
    provider = provider_factory((200, OK_BODY))
    out = provider.backend(model="hosted_vllm/some-model").complete(ask())
    assert out.prompt_tokens == 11 and out.cost_usd == 0.0
    # One of the two set is a price: the other one is 0.
    assert model_price("hosted_vllm/m", {"output_cost_per_token": 2e-6}).cost(10, 10) == pytest.approx(2e-5)


def test_listed_model_costs_its_litellm_price_never_zero(provider_factory):
    price = model_price("openai/gpt-4o-mini")
    assert price.source == "litellm price list" and price.input_cost_per_token > 0
    provider = provider_factory((200, OK_BODY))
    out = provider.backend(model="openai/gpt-4o-mini", params={"input_cost_per_token": None,
                                                               "output_cost_per_token": None}).complete(ask())
    assert out.cost_usd == pytest.approx(price.cost(11, 7))


@pytest.mark.parametrize("value", ["free", -1, float("nan")])
def test_bad_price_is_config_error(value):
    with pytest.raises(ConfigError, match="input_cost_per_token.*USD per token"):
        LiteLLMBackend("hosted_vllm/m", {"input_cost_per_token": value, "output_cost_per_token": 0})


def test_scripted_model_is_free_unless_priced(script: Path):
    backend, cleanup = backend_for(f"scripted/{script}", {"input_cost_per_token": 1e-3})
    try:
        assert backend.complete(ask("fixture-add")).cost_usd == pytest.approx(1e-3 * max(1, len("fixture-add") // 4))
    finally:
        cleanup()


def test_eval_refuses_an_unpriced_model_before_any_sandbox(mini_evalset, tmp_path: Path):
    runs = tmp_path / "runs"
    out = subprocess.run([str(Path(sys.executable).with_name("evolve")), "eval", "--evals", str(mini_evalset),
                          "--model", "hosted_vllm/some-model", "--api-base", "http://127.0.0.1:9/v1",
                          "--runs-dir", str(runs)],
                         cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "COLUMNS": "400"})
    assert out.returncode == 1, out.stdout + out.stderr
    assert "models.solver.input_cost_per_token: 0" in " ".join(out.stderr.split())  # however rich wraps it
    assert "Traceback" not in out.stderr
    assert not any(runs.rglob("run.json"))  # nothing started: no sandbox, no run


def test_params_may_not_take_over_control_keys():
    with pytest.raises(ConfigError, match="num_retries"):
        LiteLLMBackend("openai/x", {"num_retries": 3})


# -- litellm backend: retries ------------------------------------------------------------------


@pytest.mark.parametrize("failures", [1, 2])
def test_rate_limit_is_retried_then_succeeds(provider_factory, caplog, failures: int):
    rate = (429, {"error": {"message": "Rate limit reached", "type": "rate_limit_error"}})
    provider = provider_factory(*[rate] * failures, (200, OK_BODY))
    with caplog.at_level(logging.WARNING, logger="evolve.models"):
        out = provider.backend(retries=4, max_wait_s=0.2).complete(ask())
    assert out.response["choices"][0]["message"]["content"] == "hello there"
    assert provider.hits == failures + 1
    # Every retry is logged: what, which attempt of how many, the wait and the reason.
    retries = [r for r in caplog.records if r.name == "evolve.models" and "retrying in" in r.getMessage()]
    assert len(retries) == failures
    assert "model 'openai/x' call failed (attempt 1 of 5); retrying in" in retries[0].getMessage()
    assert "RateLimitError" in retries[0].getMessage()


def test_persistent_503_becomes_upstream_error(provider_factory):
    provider = provider_factory((503, {"error": {"message": "engine overloaded, try later"}}))
    with pytest.raises(UpstreamError) as info:
        provider.backend(retries=3, max_wait_s=0.05).complete(ask())
    assert provider.hits == 4
    assert "engine overloaded" in str(info.value) and "4 attempts" in str(info.value)


def test_unmapped_status_5xx_is_retried_4xx_is_not(provider_factory):
    provider = provider_factory((529, {"error": {"message": "overloaded"}}), (200, OK_BODY))
    provider.backend().complete(ask())
    assert provider.hits == 2
    provider = provider_factory((418, {"error": {"message": "teapot"}}))
    with pytest.raises(UpstreamError, match="teapot"):
        provider.backend().complete(ask())
    assert provider.hits == 1


# -- litellm backend: fail fast --------------------------------------------------------------


def test_auth_failure_is_model_error_at_once_and_hides_the_key(provider_factory):
    provider = provider_factory((401, {"error": {"message": "Incorrect API key provided: sk-test-secret-123",
                                                 "type": "invalid_request_error", "code": "invalid_api_key"}}))
    with pytest.raises(ModelError) as info:
        provider.backend(retries=4).complete(ask())
    assert provider.hits == 1
    msg = str(info.value)
    assert "OPENAI_API_KEY" in msg and "Incorrect API key provided" in msg
    assert "sk-test-secret-123" not in msg


def test_auth_hint_names_the_provider_env_var():
    assert "ANTHROPIC_API_KEY" in LiteLLMBackend("anthropic/claude-x", FREE)._key_hint()
    assert "GEMINI_API_KEY" in LiteLLMBackend("gemini/gemini-x", FREE)._key_hint()


@pytest.mark.parametrize("status", [403, 404])
def test_permission_and_not_found_are_model_errors(provider_factory, status: int):
    provider = provider_factory((status, {"error": {"message": f"error {status} from provider"}}))
    with pytest.raises(ModelError, match=f"error {status} from provider"):
        provider.backend().complete(ask())
    assert provider.hits == 1


def test_unknown_provider_is_model_error():
    with pytest.raises(ModelError, match="check the model string") as info:
        LiteLLMBackend("nonexistentprovider/foo", FREE).complete(ask())
    assert "LLM Provider NOT provided" in str(info.value)
    for make in (lambda: backend_for("nonexistentprovider/foo"), lambda: LiteLLMBackend("nonexistentprovider/foo"),
                 lambda: backend_for("nonexistentprovider/foo", FREE)):
        with pytest.raises(ModelError, match="nonexistentprovider/foo"):  # not a missing price
            make()


def test_backend_for_missing_script_is_config_error(tmp_path: Path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        backend_for(f"scripted/{tmp_path / 'nope.yaml'}")


# -- litellm backend: context window and bad requests ---------------------------------------------


def test_context_length_message_is_context_window_error(provider_factory):
    provider = provider_factory((400, CONTEXT_BODY))
    with pytest.raises(ContextWindowError, match="maximum context length"):
        provider.backend(retries=4).complete(ask())
    assert provider.hits == 1


def test_context_length_code_alone_is_context_window_error(provider_factory):
    # litellm maps only the message text; the OpenAI error code is checked by evolve.
    provider = provider_factory((400, {"error": {"message": "input too big", "type": "invalid_request_error",
                                                 "code": "context_length_exceeded"}}))
    with pytest.raises(ContextWindowError, match="input too big"):
        provider.backend().complete(ask())


def test_other_bad_request_is_request_error(provider_factory):
    provider = provider_factory((400, {"error": {"message": "tools[0].function.name is invalid",
                                                 "type": "invalid_request_error"}}))
    with pytest.raises(RequestError, match="tools"):
        provider.backend(retries=4).complete(ask())
    assert provider.hits == 1


def test_litellm_uses_the_local_price_list():
    # Importing litellm through evolve never downloads the price list.
    backend_for("openai/gpt-4o-mini", {"api_key": "k"})
    assert os.environ.get("LITELLM_LOCAL_MODEL_COST_MAP") == "True"
