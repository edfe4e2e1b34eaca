"""The OpenAI-compatible endpoint inside the sandbox: a real container (network_mode none), the real
loopback bridge, the real gateway on the host and the scripted model behind litellm.

A harness probes ``OPENAI_BASE_URL`` / ``ANTHROPIC_BASE_URL`` with stdlib HTTP (tests/fixtures/endpoint/
client.py): models, chat, streamed chat, a wrong key, Messages, streamed Messages, and a flood of idle
connections; the test checks what it saw and that every call is in the gateway's trace.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from evolve.config import EvalSettings, SandboxLimits
from evolve.runner import ENDPOINT_PORT, run_agent
from evolve.sandbox.docker import Sandbox
from test_eval import make_harness

FIXTURE = Path(__file__).parent / "fixtures" / "endpoint"
SCRIPT = 'rules:\n  - when: {contains: ["endpoint-probe"]}\n    replies: ["hello from the scripted model"]\n'
BRIDGE = Path(__file__).parents[1] / "evolve" / "sandbox" / "scripts" / "bridge.py"


@pytest.fixture(scope="module")
def probe_run(docker_client, base_image, mini_evalset, tmp_path_factory):
    from evolve.evalsets.registry import load_evalset
    from evolve.harness import resolve_harness
    from evolve.models import backend_for

    tmp = tmp_path_factory.mktemp("endpoint")
    script = tmp / "script.yaml"
    script.write_text(SCRIPT)
    ev = load_evalset(str(mini_evalset))
    task = ev.tasks("search")[0]
    h = make_harness(tmp, "probe", {"client.py": (FIXTURE / "client.py").read_text()}, "python3 client.py")
    harness = resolve_harness(str(h), workdir=tmp / "harnesses")
    settings = EvalSettings(model=f"scripted/{script}", harness_timeout_s=300)
    backend, close = backend_for(settings.model)

    def factory(mounts=None):
        return Sandbox(docker_client, base_image, run_id="test-endpoint", limits=SandboxLimits(), mounts=mounts)

    try:
        run = run_agent(factory, task, ev.repo_dir(task), harness, backend, settings, tmp / "trace.jsonl")
    finally:
        close()
    lines = [json.loads(x) for x in (tmp / "trace.jsonl").read_text().splitlines()]
    return run, json.loads(run.trajectory or b"{}"), lines


@pytest.mark.docker
def test_the_environment_points_at_the_endpoint_with_a_task_token(probe_run):
    run, seen, _ = probe_run
    assert run.exit_code == 0 and not run.infra_errors, run.harness_log
    env = seen["env"]
    base = f"http://127.0.0.1:{ENDPOINT_PORT}"
    assert env["OPENAI_BASE_URL"] == env["OPENAI_API_BASE"] == f"{base}/v1" and env["ANTHROPIC_BASE_URL"] == base
    assert env["OPENAI_API_KEY"] == env["ANTHROPIC_API_KEY"] and env["OPENAI_API_KEY"].startswith("evolve-task-")
    assert "127.0.0.1" in env["NO_PROXY"]


@pytest.mark.docker
def test_chat_models_and_streaming_through_the_bridge(probe_run):
    _, seen, _ = probe_run
    status, _, body = seen["models"]
    assert status == 200 and json.loads(body)["data"][0]["id"] == "openai/scripted"
    status, ctype, body = seen["chat"]
    out = json.loads(body)
    assert status == 200 and ctype == "application/json"
    assert out["choices"][0]["message"]["content"] == "hello from the scripted model"
    status, ctype, events = seen["stream"]
    assert status == 200 and ctype == "text/event-stream" and events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "hello from the scripted model"
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0  # include_usage
    assert chunks[-1]["evolve"]["calls"] >= 2


@pytest.mark.docker
def test_messages_api_translated_through_litellm(probe_run):
    _, seen, _ = probe_run
    status, _, body = seen["messages"]
    msg = json.loads(body)
    assert status == 200 and msg["type"] == "message" and msg["role"] == "assistant"
    assert msg["content"] == [{"type": "text", "text": "hello from the scripted model"}]
    assert msg["stop_reason"] == "end_turn" and msg["usage"]["output_tokens"] > 0
    status, ctype, events = seen["messages_stream"]
    assert status == 200 and ctype == "text/event-stream"
    kinds = [e["type"] for e in events]
    assert kinds == ["message_start", "content_block_start", "content_block_delta", "content_block_stop",
                     "message_delta", "message_stop"]
    assert events[2]["delta"] == {"type": "text_delta", "text": "hello from the scripted model"}
    assert events[4]["delta"]["stop_reason"] == "end_turn"


@pytest.mark.docker
def test_a_wrong_key_is_refused_counted_and_traced(probe_run):
    _, seen, lines = probe_run
    status, _, body = seen["wrong_key"]
    assert status == 401 and json.loads(body)["error"]["type"] == "invalid_api_key"
    assert "sk-real-looking-key" not in json.dumps(lines)  # a key a harness sends is never written down
    (line,) = [x for x in lines if x.get("status") == 401]
    assert line["error"]["type"] == "invalid_api_key"


@pytest.mark.docker
def test_every_call_through_the_bridge_is_traced_and_counted(probe_run):
    run, seen, lines = probe_run
    calls = [x for x in lines if "call" in x]
    # chat, streamed chat, wrong key, messages, streamed messages, the call after the flood;
    # GET /v1/models is free, as on the socket.
    assert [x["status"] for x in calls] == [200, 200, 401, 200, 200, 200]
    assert run.usage.calls == 6 and run.usage.errors == 1
    assert calls[1]["request"]["stream"] is True and calls[1]["response"]["usage"]["completion_tokens"] > 0
    assert [x.get("api") for x in calls] == [None, None, None, "messages", "messages", None]
    assert calls[3]["response"]["choices"][0]["message"]["content"] == "hello from the scripted model"
    assert sum(x["usage"]["completion_tokens"] for x in calls) == run.usage.completion_tokens
    # The flood of idle connections went through the bridge to the gateway's connection limit.
    assert seen["after_flood"][0] == 200
    (note,) = [x for x in lines if x.get("note") == "not_traced"]
    assert note["refused_connections"] > 0


def test_the_bridge_reports_an_unreachable_gateway_and_does_not_serve(tmp_path):
    res = subprocess.run([sys.executable, str(BRIDGE), "--port", "0", "--socket", str(tmp_path / "none.sock"),
                          "--max-connections", "2"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and "cannot reach the model gateway" in res.stderr


# -- real clients against the bridge on the host (the same script; the container test above runs it in the sandbox) --


@pytest.fixture
def bridged(tmp_path):
    """A gateway with a task token and the scripted model, and the bridge in front of it on a free port."""
    import socket as socketlib

    from evolve.config import Limits
    from evolve.gateway import Gateway
    from evolve.models import backend_for

    script = tmp_path / "script.yaml"
    script.write_text(SCRIPT)
    backend, close = backend_for(f"scripted/{script}")
    gw = Gateway(tmp_path / "gw.sock", tmp_path / "trace.jsonl", backend, Limits(), token="evolve-task-t0k")
    gw.start()
    with socketlib.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    bridge = subprocess.Popen([sys.executable, str(BRIDGE), "--port", str(port), "--socket", str(gw.socket_path),
                               "--max-connections", "4", "--foreground"], stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(200):
            if gw.bridge_ready or bridge.poll() is not None:
                break
            threading.Event().wait(0.05)
        assert gw.bridge_ready, bridge.stderr.read() if bridge.poll() is not None else "bridge not up"
        yield gw, f"http://127.0.0.1:{port}", tmp_path / "trace.jsonl"
    finally:
        bridge.terminate()
        bridge.wait(30)
        gw.close()
        close()


def test_the_openai_sdk_and_litellm_work_unchanged_through_the_bridge(bridged):
    from openai import AuthenticationError, OpenAI

    from evolve.models import _litellm

    litellm = _litellm()  # configured as evolve does: the local price map, never downloaded

    gw, base, trace = bridged
    client = OpenAI(base_url=f"{base}/v1", api_key="evolve-task-t0k", max_retries=0)
    user = [{"role": "user", "content": "endpoint-probe"}]
    assert [m.id for m in client.models.list()] == ["openai/scripted"]
    reply = client.chat.completions.create(model="whatever", messages=user)
    assert reply.choices[0].message.content == "hello from the scripted model" and reply.usage.completion_tokens > 0
    chunks = list(client.chat.completions.create(model="whatever", messages=user, stream=True,
                                                 stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "hello from the scripted model"
    assert chunks[-1].usage.completion_tokens == reply.usage.completion_tokens
    with pytest.raises(AuthenticationError):
        OpenAI(base_url=f"{base}/v1", api_key="sk-not-the-task-key", max_retries=0).chat.completions.create(
            model="whatever", messages=user)
    # litellm's openai/<model>, as a harness such as mini-swe-agent calls it
    out = litellm.completion(model="openai/anything", messages=user, api_base=f"{base}/v1", api_key="evolve-task-t0k")
    assert out.choices[0].message.content == "hello from the scripted model"
    streamed = litellm.completion(model="openai/anything", messages=user, api_base=f"{base}/v1",
                                  api_key="evolve-task-t0k", stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == "hello from the scripted model"
    lines = [json.loads(x) for x in trace.read_text().splitlines()]
    assert [x["status"] for x in lines] == [200, 200, 401, 200, 200]
    assert gw.usage.calls == 5 and gw.usage.errors == 1


@pytest.mark.docker
def test_real_clients_inside_the_sandbox_reach_the_endpoint(mini_evalset, base_image, docker_client, tmp_path):
    """The openai SDK, litellm, httpx and requests from a harness environment (the mini-swe-agent
    template's requirements, so the environment built for it is reused), configured by the environment only."""
    from evolve.evalsets.registry import load_evalset
    from evolve.evaluate import Evaluation
    from evolve.harness import resolve_harness, template_dir

    script = tmp_path / "script.yaml"
    script.write_text(SCRIPT)
    h = make_harness(tmp_path, "sdk", {"agent.py": (FIXTURE / "sdk_agent.py").read_text(),
                                       "requirements.txt": (template_dir("mini-swe-agent") / "requirements.txt")
                                       .read_text()}, "python3 agent.py")
    with open(h / "harness.yaml", "a") as f:
        f.write("requirements_file: requirements.txt\n")
    settings = EvalSettings(model=f"scripted/{script}", harness_timeout_s=300, test_timeout_s=120)
    runs = tmp_path / "runs"
    report = Evaluation(evalset=load_evalset(str(mini_evalset)), split="search",
                        harness=resolve_harness(str(h), workdir=runs / "harnesses"), settings=settings,
                        runs_dir=runs, workers=1, instance_ids=["mini__calc-1"]).run()
    (result,) = report.results
    task_dir = report.run_dir / "tasks" / "mini__calc-1" / "r0"
    assert result.failure_class != "infra", result.error
    seen = json.loads((task_dir / "trajectory.json").read_text())
    hello = "hello from the scripted model"
    assert seen["models"] == ["openai/scripted"] and seen["wrong_key"] == 401
    assert [seen[k] for k in ("sdk", "sdk_stream", "litellm", "httpx", "requests")] == [hello] * 5
    assert seen["sdk_stream_usage"] > 0
    trace = [json.loads(x) for x in (task_dir / "trace.jsonl").read_text().splitlines()]
    assert [x["status"] for x in trace] == [200, 200, 401, 200, 200, 200]
    assert trace[1]["request"]["stream"] is True


@pytest.mark.docker
def test_a_bridge_that_cannot_start_is_infra_and_the_harness_does_not_run(docker_client, base_image, mini_evalset,
                                                                          tmp_path):
    """An image without python3 can't run the bridge: the task is infrastructure (the gateway never heard
    from the bridge, which the harness can't fake), not the harness's failure, and the harness never ran."""
    from evolve.evalsets.registry import load_evalset
    from evolve.harness import resolve_harness
    from evolve.models import backend_for

    c = docker_client.containers.create(base_image, ["sleep", "infinity"], user="root")
    try:
        c.start()
        res = c.exec_run(["sh", "-c", "rm -f /usr/bin/python3* /usr/local/bin/python* /usr/bin/python"], user="root")
        assert res.exit_code == 0, res.output
        image = c.commit(repository="evolve-test", tag="nopython").id
    finally:
        c.remove(force=True)
    try:
        ev = load_evalset(str(mini_evalset))
        task = ev.tasks("search")[0]
        h = make_harness(tmp_path, "shell", {}, "touch /evolve/output/harness-ran; echo ran")
        script = tmp_path / "script.yaml"
        script.write_text(SCRIPT)
        settings = EvalSettings(model=f"scripted/{script}", harness_timeout_s=60)
        backend, close = backend_for(settings.model)
        try:
            run = run_agent(lambda mounts=None: Sandbox(docker_client, image, run_id="test-nopython",
                                                        limits=SandboxLimits(), mounts=mounts),
                            task, ev.repo_dir(task), resolve_harness(str(h), workdir=tmp_path / "w"), backend,
                            settings, tmp_path / "trace.jsonl")
        finally:
            close()
        assert any(e.startswith("bridge:") for e in run.infra_errors), run.infra_errors
        assert "the model endpoint (loopback bridge) could not start: no python3" in run.harness_log
        assert "ran" not in run.harness_log and run.exit_code != 0 and run.model_patch == b""
    finally:
        docker_client.images.remove("evolve-test:nopython", force=True)


# -- tool calls, on the socket itself (the openai SDK over httpx's unix-socket transport) -----------------------

TOOL_BODY = {
    "id": "chatcmpl-tool", "object": "chat.completion", "created": 1, "model": "x",
    "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": None,
        "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "bash", "arguments": '{"cmd": "ls"}'}}]}}],
    "usage": {"prompt_tokens": 9, "completion_tokens": 5, "total_tokens": 14},
}
BASH_TOOL = {"type": "function", "function": {"name": "bash", "description": "run a command", "parameters": {
    "type": "object", "properties": {"cmd": {"type": "string"}}, "required": ["cmd"]}}}


def test_tool_calls_stream_and_translate_to_the_messages_api(provider_factory, tmp_path):
    import httpx
    from openai import OpenAI

    from evolve.config import Limits
    from evolve.gateway import Gateway, UnixHTTPConnection

    provider = provider_factory((200, TOOL_BODY))
    with Gateway(tmp_path / "gw.sock", tmp_path / "trace.jsonl", provider.backend(), Limits(), token="tk") as gw:
        http = httpx.Client(transport=httpx.HTTPTransport(uds=str(gw.socket_path)))
        client = OpenAI(base_url="http://localhost/v1", api_key="tk", http_client=http, max_retries=0)
        user = [{"role": "user", "content": "list the files"}]
        # The SDK's own stream accumulator rebuilds the tool call from the chunks.
        with client.chat.completions.stream(model="m", messages=user, tools=[BASH_TOOL]) as stream:
            final = stream.get_final_completion()
        (call,) = final.choices[0].message.tool_calls
        assert (call.id, call.function.name, call.function.arguments) == ("call_1", "bash", '{"cmd": "ls"}')
        assert final.choices[0].finish_reason == "tool_calls"
        assert provider.bodies[0]["tools"][0]["function"]["name"] == "bash" and "stream" not in provider.bodies[0]

        # The Messages API: Anthropic tools in, a tool_use block out, whole and streamed.
        anthropic_body = {"model": "claude", "max_tokens": 100, "messages": user, "tools": [
            {"name": "bash", "description": "run a command", "input_schema": BASH_TOOL["function"]["parameters"]}]}
        conn = UnixHTTPConnection(gw.socket_path, timeout=60)
        conn.request("POST", "/v1/messages", json.dumps(anthropic_body), {"x-api-key": "tk"})
        msg = json.loads(conn.getresponse().read())
        assert msg["stop_reason"] == "tool_use"
        assert msg["content"] == [{"type": "tool_use", "id": "call_1", "name": "bash", "input": {"cmd": "ls"}}]
        assert provider.bodies[1]["tools"][0]["function"]["name"] == "bash"
        conn.request("POST", "/v1/messages", json.dumps({**anthropic_body, "stream": True}), {"x-api-key": "tk"})
        resp = conn.getresponse()
        assert resp.getheader("Content-Type") == "text/event-stream"
        events = [json.loads(line[6:]) for line in resp.read().decode().splitlines() if line.startswith("data: ")]
        start = next(e for e in events if e["type"] == "content_block_start")
        delta = next(e for e in events if e["type"] == "content_block_delta")
        assert start["content_block"]["type"] == "tool_use" and start["content_block"]["name"] == "bash"
        assert json.loads(delta["delta"]["partial_json"]) == {"cmd": "ls"}
        conn.close()
        # A Messages request litellm can't translate is the harness's 400, counted and traced.
        conn = UnixHTTPConnection(gw.socket_path, timeout=60)
        conn.request("POST", "/v1/messages", json.dumps({"max_tokens": 5, "messages": "not a list"}))
        resp = conn.getresponse()
        assert resp.status == 400 and json.loads(resp.read())["error"]["type"] == "invalid_request"
        conn.close()
        http.close()
    lines = [json.loads(x) for x in (tmp_path / "trace.jsonl").read_text().splitlines()]
    assert [(x["status"], x.get("api")) for x in lines] == [(200, None), (200, "messages"), (200, "messages"),
                                                           (400, None)]
    assert gw.usage.calls == 4 and gw.usage.prompt_tokens == 27
