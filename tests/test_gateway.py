"""The per-task gateway over a real unix socket, with real HTTP clients and real backends.

The model behind the gateway is the scripted model (a real OpenAI-compatible
HTTP server reached through litellm) or a small local HTTP "provider" that
answers with chosen status codes (tests/support.py's FakeProvider).
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import stat
import subprocess
import threading
import time
import tracemalloc
from pathlib import Path

import pytest

from evolve.config import Limits
from evolve.errors import ModelError
from evolve.gateway import (ADMIT_WAIT_S, EXCERPT_BYTES, IDLE_REAP_S, SUMMARY_LINE_BYTES, Gateway,
                            UnixHTTPConnection)
from evolve.models import FREE, LiteLLMBackend, backend_for
from evolve.types import Usage

SCRIPT = """\
rules:
  - when: {contains: ["fixture-add"]}
    replies:
      - "THOUGHT: fix it\\n```bash\\nsed -i 's/a - b/a + b/' calc.py\\n```"
      - "```bash\\necho COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT\\n```"
default:
  - "no idea"
"""

PROBLEM = "fixture-add: add() subtracts instead of adding. " * 4


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scripted(tmp_path_factory):
    path = tmp_path_factory.mktemp("script") / "script.yaml"
    path.write_text(SCRIPT)
    backend, cleanup = backend_for(f"scripted/{path}")
    yield backend
    cleanup()


@pytest.fixture
def gw_dir(tmp_path_factory) -> Path:
    # Short path: a socket path must fit in sockaddr_un (the runner uses /tmp/evolve-gw-*).
    d = tmp_path_factory.mktemp("gw")
    return d


@pytest.fixture
def make_gateway(gw_dir: Path):
    made: list[Gateway] = []

    def make(backend, limits: Limits | None = None, name: str = "gateway.sock") -> Gateway:
        gw = Gateway(gw_dir / name, gw_dir / "trace" / "calls.jsonl", backend, limits or Limits())
        gw.start()
        made.append(gw)
        return gw

    yield make
    for gw in made:
        gw.close()


OK_BODY = {"id": "c", "object": "chat.completion", "created": 1, "model": "x",
           "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
           "usage": {"prompt_tokens": 1000, "completion_tokens": 100, "total_tokens": 1100}}


def call(gw: Gateway, body, path: str = "/v1/chat/completions", method: str = "POST") -> tuple[int, dict]:
    conn = UnixHTTPConnection(gw.socket_path, timeout=30)
    try:
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        conn.request(method, path, data, {"Content-Type": "application/json"} if data is not None else {})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def chat(text: str = PROBLEM, assistant_turns: int = 0, **extra) -> dict:
    messages = [{"role": "system", "content": "You are a coding agent."}, {"role": "user", "content": text}]
    for _ in range(assistant_turns):
        messages += [{"role": "assistant", "content": "ok"}, {"role": "user", "content": "go on"}]
    return {"model": "anything", "messages": messages, **extra}


def trace(gw: Gateway) -> list[dict]:
    if not gw.trace_path.exists():
        return []
    return [json.loads(line) for line in gw.trace_path.read_text().splitlines()]


GW_API_KEY = "sk-gw-secret-42"
"""The key this file's providers are called with (the 401 test checks it never leaks)."""


@pytest.fixture
def provider(provider_factory):
    """``make(status, payload, delay_s=0.0)``: a ``support.FakeProvider`` with one fixed answer."""
    def make(status: int, payload: dict, delay_s: float = 0.0):
        return provider_factory((status, payload), delay_s=delay_s, api_key=GW_API_KEY)

    return make


# -- success path ------------------------------------------------------------------------------


def test_success_response_usage_and_trace(make_gateway, scripted):
    gw = make_gateway(scripted, Limits(max_calls=5))
    sock = gw.socket_path
    assert stat.S_ISSOCK(sock.stat().st_mode) and stat.S_IMODE(sock.stat().st_mode) == 0o666

    status, out = call(gw, chat())
    assert status == 200, out
    assert out["object"] == "chat.completion"
    assert out["choices"][0]["message"]["content"].startswith("THOUGHT: fix it")
    assert out["evolve"] == {"cost_usd": 0.0, "total_cost_usd": 0.0, "calls": 1, "remaining_calls": 4}

    status, out = call(gw, chat(assistant_turns=1))
    assert "COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT" in out["choices"][0]["message"]["content"]
    assert out["evolve"]["calls"] == 2 and out["evolve"]["remaining_calls"] == 3

    usage = gw.usage
    assert isinstance(usage, Usage)
    assert usage.calls == 2 and usage.errors == 0 and usage.cost_usd == 0.0
    assert usage.prompt_tokens > 0 and usage.completion_tokens > 0

    lines = trace(gw)
    assert [r["call"] for r in lines] == [1, 2]
    first = lines[0]
    assert set(first) == {"call", "ts", "latency_s", "status", "model", "request", "response", "error",
                          "usage", "cost_usd"}
    assert first["status"] == 200 and first["error"] is None and first["model"] == scripted.model
    assert first["request"] == chat()
    assert first["response"]["choices"][0]["message"]["content"].startswith("THOUGHT")
    assert first["usage"]["prompt_tokens"] > 0 and first["usage"]["completion_tokens"] > 0
    assert first["latency_s"] > 0 and first["cost_usd"] == 0.0
    assert first["ts"].endswith("+00:00")
    assert sum(r["usage"]["prompt_tokens"] for r in lines) == usage.prompt_tokens
    assert sum(r["usage"]["completion_tokens"] for r in lines) == usage.completion_tokens


def test_openai_sdk_over_the_socket(make_gateway, scripted):
    """What a harness does: the official openai client over an httpx unix-socket transport."""
    import httpx
    import openai

    gw = make_gateway(scripted, Limits(max_calls=1))
    http_client = httpx.Client(transport=httpx.HTTPTransport(uds=str(gw.socket_path)))
    client = openai.OpenAI(base_url="http://gateway/v1", api_key="none", http_client=http_client, max_retries=2)
    try:
        out = client.chat.completions.create(model="whatever", messages=chat()["messages"])
        assert out.choices[0].message.content.startswith("THOUGHT")
        assert out.model_extra["evolve"]["remaining_calls"] == 0
        assert [m.id for m in client.models.list()] == [scripted.model]
        # 403, not 429: the SDK does not retry it, so the gateway sees exactly one more call.
        with pytest.raises(openai.PermissionDeniedError) as info:
            client.chat.completions.create(model="whatever", messages=chat()["messages"])
        assert info.value.body["type"] == "limit_exceeded"
    finally:
        http_client.close()
    assert len(trace(gw)) == 2


def test_health_models_and_unknown_routes(make_gateway, scripted):
    gw = make_gateway(scripted)
    assert call(gw, None, "/health", "GET") == (200, {"ok": True})
    status, out = call(gw, None, "/v1/models", "GET")
    assert status == 200 and out["data"][0]["id"] == scripted.model and out["object"] == "list"
    assert gw.usage.calls == 0 and trace(gw) == []  # the two read-only GETs are free
    status, out = call(gw, None, "/v1/nope", "GET")
    assert status == 404 and out["error"]["type"] == "not_found"
    status, out = call(gw, {"x": 1}, "/v1/completions")
    assert status == 404 and "POST /v1/completions" in out["error"]["message"]
    status, out = call(gw, None, "/v1/chat/completions", "GET")
    assert status == 405 and out["error"]["type"] == "method_not_allowed"
    # Every other request counts toward the limits and is traced, with an excerpt of its body.
    assert gw.usage.calls == 3 and gw.usage.errors == 3
    assert [(r["call"], r["status"], r["request"]) for r in trace(gw)] == [
        (1, 404, ""), (2, 404, '{"x": 1}'), (3, 405, "")]


def test_chat_without_v1_prefix_and_chunked_body(make_gateway, scripted):
    gw = make_gateway(scripted)
    assert call(gw, chat(), "/chat/completions")[0] == 200
    conn = UnixHTTPConnection(gw.socket_path, timeout=30)
    try:
        payload = json.dumps(chat()).encode()
        conn.request("POST", "/v1/chat/completions", iter([payload[:10], payload[10:]]),
                     {"Content-Type": "application/json"}, encode_chunked=True)
        resp = conn.getresponse()
        assert resp.status == 200, resp.read()
        resp.read()
        # Keep-alive: a second request on the same connection.
        conn.request("GET", "/health")
        assert conn.getresponse().status == 200
    finally:
        conn.close()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_curl_unix_socket(make_gateway, scripted):
    gw = make_gateway(scripted)
    out = subprocess.run(["curl", "-sS", "--unix-socket", str(gw.socket_path), "http://localhost/v1/chat/completions",
                          "-H", "Content-Type: application/json", "-d", json.dumps(chat())],
                         capture_output=True, text=True, timeout=30, check=True)
    assert json.loads(out.stdout)["choices"][0]["message"]["content"].startswith("THOUGHT")


# -- limits ------------------------------------------------------------------------------------------


def test_call_limit_is_403_and_traced(make_gateway, scripted):
    gw = make_gateway(scripted, Limits(max_calls=2))
    assert [call(gw, chat())[0] for _ in range(2)] == [200, 200]
    status, out = call(gw, chat())
    assert status == 403
    assert out["error"]["type"] == "limit_exceeded" and "2 of 2 calls" in out["error"]["message"]
    assert gw.usage.calls == 2 and gw.usage.errors == 1
    last = trace(gw)[-1]
    # Refused before its body is read: a summary line, no request or response.
    assert last["status"] == 403 and last["summarized"] is True and "request" not in last
    assert last["error"]["type"] == "limit_exceeded" and last["request_bytes"] == len(json.dumps(chat()))
    assert last["usage"] == {"prompt_tokens": 0, "completion_tokens": 0}


def test_token_limit(make_gateway, scripted):
    gw = make_gateway(scripted, Limits(max_tokens=20))
    status, out = call(gw, chat())  # PROBLEM alone is ~50 tokens: over the limit after one call
    assert status == 200
    status, out = call(gw, chat())
    assert status == 403 and "token limit" in out["error"]["message"]
    assert gw.usage.calls == 1 and gw.usage.errors == 1


def test_cost_limit(make_gateway, provider):
    p = provider(200, OK_BODY)
    backend = p.backend(params={"input_cost_per_token": 1e-4,
                                "output_cost_per_token": 1e-3})  # 0.1 + 0.1 USD a call
    gw = make_gateway(backend, Limits(max_cost_usd=0.3))
    costs = []
    for _ in range(2):
        status, out = call(gw, chat())
        assert status == 200
        costs.append(out["evolve"]["cost_usd"])
    assert costs == pytest.approx([0.2, 0.2])
    assert out["evolve"]["total_cost_usd"] == pytest.approx(0.4)
    status, out = call(gw, chat())
    assert status == 403 and "cost limit" in out["error"]["message"]
    assert p.hits == 2 and gw.usage.cost_usd == pytest.approx(0.4)
    assert [r["cost_usd"] for r in trace(gw)] == pytest.approx([0.2, 0.2, 0.0])


def test_cost_limit_always_counts_and_a_free_model_never_reaches_it(make_gateway, provider):
    # The USD limit has no "unpriced" escape: a model priced at 0 is free, not uncounted.
    p = provider(200, OK_BODY)
    gw = make_gateway(p.backend(), Limits(max_cost_usd=1e-9))
    for _ in range(3):
        status, out = call(gw, chat())
        assert status == 200 and out["evolve"]["cost_usd"] == 0.0
    assert gw.usage.cost_usd == 0.0 and p.hits == 3
    with pytest.raises(ValueError, match="greater than 0"):
        Limits(max_cost_usd=0)  # a task that may spend nothing could not call the model at all


def concurrent_statuses(gw, threads: int, calls_each: int) -> list[int]:
    """The HTTP statuses of ``threads`` threads each making ``calls_each`` calls to ``gw`` at once."""
    results: list[int] = []
    lock = threading.Lock()

    def worker():
        for _ in range(calls_each):
            status, _ = call(gw, chat())
            with lock:
                results.append(status)

    workers = [threading.Thread(target=worker) for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(60)
    return results


def test_concurrent_calls_are_counted_exactly(make_gateway, scripted):
    gw = make_gateway(scripted, Limits(max_calls=1000))
    results = concurrent_statuses(gw, threads=8, calls_each=5)
    assert results == [200] * 40
    usage, lines = gw.usage, trace(gw)
    assert usage.calls == 40 and usage.errors == 0
    assert sorted(r["call"] for r in lines) == list(range(1, 41))
    assert sum(r["usage"]["prompt_tokens"] for r in lines) == usage.prompt_tokens
    assert sum(r["usage"]["completion_tokens"] for r in lines) == usage.completion_tokens


def test_concurrent_calls_never_exceed_the_call_limit(make_gateway, scripted):
    gw = make_gateway(scripted, Limits(max_calls=13))
    results = concurrent_statuses(gw, threads=6, calls_each=4)
    assert results.count(200) == 13 and results.count(403) == 11
    assert gw.usage.calls == 13 and gw.usage.errors == 11 and len(trace(gw)) == 24


# -- bad requests ------------------------------------------------------------------------------------


@pytest.mark.parametrize("body, needle", [
    (b"{not json", "not valid JSON"),
    (b"", "not valid JSON"),
    (b"[1, 2]", "JSON object"),
    (b'{"messages": [{"role": "user", "content": "x"}], "temperature": NaN}', "NaN"),
    (b"[" * 100_000, "not valid JSON"),
    (b"\xff\xfe\x00garbage", "not valid JSON"),
    (json.dumps({"model": "m"}).encode(), "'messages' is required"),
    (json.dumps({"messages": []}).encode(), "'messages' is required"),
    (json.dumps(chat(stream="yes")).encode(), "'stream' must be true or false"),
])
def test_bad_requests_are_400_counted_and_traced(make_gateway, scripted, body: bytes, needle: str):
    gw = make_gateway(scripted)
    status, out = call(gw, body)
    assert status == 400 and out["error"]["type"] == "invalid_request" and needle in out["error"]["message"]
    assert gw.usage.calls == 1 and gw.usage.errors == 1  # an invalid request counts like a call
    (line,) = trace(gw)
    assert line["status"] == 400 and line["error"]["type"] == "invalid_request"
    # Only an excerpt of the raw body, whatever it was.
    assert line["request"] == body[:EXCERPT_BYTES].decode("utf-8", "replace")
    assert line["request_bytes"] == len(body)


# -- backend failures ----------------------------------------------------------------------------------


def test_upstream_failure_is_502_and_infra(make_gateway, provider):
    p = provider(503, {"error": {"message": "engine overloaded"}})
    gw = make_gateway(p.backend())
    status, out = call(gw, chat())
    assert status == 502 and out["error"]["type"] == "upstream_error"
    assert "engine overloaded" in out["error"]["message"]
    assert p.hits == 3  # first attempt + 2 retries
    assert len(gw.infra_errors) == 1 and "engine overloaded" in gw.infra_errors[0]
    assert gw.fatal_error is None
    assert gw.usage.calls == 1 and gw.usage.errors == 1
    assert trace(gw)[0]["error"]["type"] == "upstream_error"


def test_bad_key_is_fatal_and_stops_forwarding(make_gateway, provider):
    p = provider(401, {"error": {"message": "Incorrect API key provided: sk-gw-secret-42",
                                 "type": "invalid_request_error", "code": "invalid_api_key"}})
    gw = make_gateway(p.backend())
    status, out = call(gw, chat())
    assert status == 502 and out["error"]["type"] == "model_error"
    assert "OPENAI_API_KEY" in out["error"]["message"]
    assert "sk-gw-secret-42" not in json.dumps(out) and "sk-gw-secret-42" not in gw.trace_path.read_text()
    assert isinstance(gw.fatal_error, ModelError)
    assert gw.infra_errors == []
    status, _ = call(gw, chat())
    assert status == 502 and p.hits == 1  # not forwarded again
    assert len(trace(gw)) == 2


def test_unknown_model_is_fatal(make_gateway):
    gw = make_gateway(LiteLLMBackend("nonexistentprovider/foo", FREE))  # priced: the provider is checked at the call
    status, out = call(gw, chat())
    assert status == 502 and out["error"]["type"] == "model_error"
    assert "check the model string" in out["error"]["message"]
    assert isinstance(gw.fatal_error, ModelError)


def test_context_window_is_400_the_harness_can_handle(make_gateway, provider):
    p = provider(400, {"error": {"message": "This model's maximum context length is 8192 tokens. However, your "
                                            "messages resulted in 9001 tokens.",
                                 "type": "invalid_request_error", "code": "context_length_exceeded"}})
    gw = make_gateway(p.backend())
    status, out = call(gw, chat())
    assert status == 400
    assert out["error"]["type"] == "context_window_exceeded" and out["error"]["code"] == "context_length_exceeded"
    assert "maximum context length" in out["error"]["message"]
    assert gw.infra_errors == [] and gw.fatal_error is None and gw.usage.errors == 1


def test_provider_rejecting_the_request_is_400(make_gateway, provider):
    p = provider(400, {"error": {"message": "messages[1].role is invalid", "type": "invalid_request_error"}})
    gw = make_gateway(p.backend())
    status, out = call(gw, chat())
    assert status == 400 and out["error"]["type"] == "invalid_request" and "role" in out["error"]["message"]
    assert gw.infra_errors == [] and gw.fatal_error is None


class ExplodingBackend:
    """A ModelBackend with a bug: the gateway must answer 500 and keep serving."""

    model = "exploding"

    def complete(self, request: dict):
        raise RuntimeError("kaboom")


class NoneBackend:
    """A ModelBackend breaking its contract: returns None instead of a Completion."""

    model = "none"

    def complete(self, request: dict):
        return None


@pytest.mark.parametrize("backend, needle", [(ExplodingBackend(), "RuntimeError: kaboom"),
                                             (NoneBackend(), "AttributeError")])
def test_backend_bug_is_500_and_server_keeps_serving(make_gateway, backend, needle):
    gw = make_gateway(backend)
    for _ in range(2):
        status, out = call(gw, chat())
        assert status == 500 and out["error"]["type"] == "gateway_error" and needle in out["error"]["message"]
    assert call(gw, None, "/health", "GET")[0] == 200
    assert len(gw.infra_errors) == 2 and all(needle in e for e in gw.infra_errors)
    assert gw.usage.calls == 2 and gw.usage.errors == 2 and [r["status"] for r in trace(gw)] == [500, 500]


# -- flooding: every request counts, bodies and traces are capped, connections are capped ----------------


def raw_exchange(gw: Gateway, data: bytes, timeout: float = 10) -> bytes:
    """Send raw bytes over a new connection and return everything the gateway sends until it closes."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(gw.socket_path))
        s.sendall(data)
        got = b""
        while True:
            try:
                piece = s.recv(65536)
            except ConnectionResetError:  # closed with our unread bytes: what it sent was read first
                break
            if not piece:
                break
            got += piece
    return got


def answer_of(raw: bytes) -> tuple[int, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def post_head(length: int, *extra: str) -> bytes:
    lines = ["POST /v1/chat/completions HTTP/1.1", "Host: localhost", "Content-Type: application/json",
             f"Content-Length: {length}", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_every_request_counts_valid_or_not(make_gateway, scripted):
    gw = make_gateway(scripted, Limits(max_calls=7, max_request_bytes=4096))
    answers = [call(gw, b"{not json")[0], call(gw, {"model": "m"})[0], call(gw, chat(stream="yes"))[0],
               call(gw, json.dumps(chat("x" * 5000)).encode())[0], call(gw, {"x": 1}, "/v1/embeddings")[0],
               call(gw, None, "/health", "DELETE")[0],
               answer_of(raw_exchange(gw, b"NOT AN HTTP REQUEST LINE AT ALL\r\n\r\n"))[0]]
    assert answers == [400, 400, 400, 413, 404, 405, 400]
    assert gw.usage.calls == 7 and gw.usage.errors == 7
    # The limit is used up by invalid requests alone: a valid call is refused, the free GETs still answer.
    status, out = call(gw, chat())
    assert status == 403 and out["error"]["type"] == "limit_exceeded" and "7 of 7 calls" in out["error"]["message"]
    assert call(gw, None, "/health", "GET")[0] == 200 and call(gw, None, "/v1/models", "GET")[0] == 200
    lines = trace(gw)
    assert [r["call"] for r in lines] == list(range(1, 9))
    assert [r["status"] for r in lines] == answers + [403]
    assert lines[6]["request"] == "NOT AN HTTP REQUEST LINE AT ALL\r\n" and "malformed" in lines[6]["error"]["message"]
    assert gw.usage.calls == 7 and gw.usage.errors == 8


def test_requests_past_the_limit_are_refused_without_reading_the_body(make_gateway, scripted):
    gw = make_gateway(scripted, Limits(max_calls=1))
    assert call(gw, chat())[0] == 200
    tracemalloc.start()
    try:
        t0 = time.monotonic()
        # Announces 1 GB and sends none of it: answered at once, the connection closed.
        status, out = answer_of(raw_exchange(gw, post_head(10 ** 9)))
        took = time.monotonic() - t0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert status == 403 and out["error"]["type"] == "limit_exceeded"
    assert took < 2 and peak < 2_000_000
    # With Expect: 100-continue the client is never asked for the body.
    raw = raw_exchange(gw, post_head(10 ** 9, "Expect: 100-continue"))
    assert raw.startswith(b"HTTP/1.1 403 ") and b"100 Continue" not in raw
    # An ordinary client sending a body gets the answer (the body is read only to be thrown away).
    status, out = call(gw, json.dumps(chat("y" * 100_000)).encode())
    assert status == 403
    assert gw.usage.calls == 1 and [r["status"] for r in trace(gw)] == [200, 403, 403, 403]
    assert all("request" not in r for r in trace(gw)[1:])


def test_body_over_the_cap_is_413_and_never_held_in_memory(make_gateway, scripted):
    cap = 64 * 1024
    gw = make_gateway(scripted, Limits(max_request_bytes=cap))
    big = json.dumps(chat("z" * 30_000_000)).encode()  # made before tracing starts
    tracemalloc.start()
    try:
        status, out = call(gw, big)  # an ordinary client: sends all 30 MB, then reads
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert status == 413 and out["error"]["type"] == "request_too_large"
    message = out["error"]["message"]
    assert f"is {len(big)} bytes" in message and f"limit of {cap} bytes" in message
    assert "limits.max_request_bytes" in message and "send less" in message
    assert peak < 5_000_000  # the gateway kept at most one 64 KiB piece at a time, never the body

    # Announced over the cap with Expect: 100-continue: 413 at once, the body is never asked for.
    raw = raw_exchange(gw, post_head(10 ** 8, "Expect: 100-continue"))
    assert raw.startswith(b"HTTP/1.1 413 ") and b"100 Continue" not in raw and b"Connection: close" in raw

    # Chunked (length unknown up front): read up to the cap, then refused.
    conn = UnixHTTPConnection(gw.socket_path, timeout=30)
    try:
        conn.request("POST", "/v1/chat/completions", iter([b"[" + b" " * 60_000] * 20),
                     {"Content-Type": "application/json"}, encode_chunked=True)
        resp = conn.getresponse()
        assert resp.status == 413 and "goes on" in json.loads(resp.read())["error"]["message"]
    finally:
        conn.close()
    # Just under the cap is served.
    assert call(gw, json.dumps(chat("fixture-add " + "w" * (cap - 1000))).encode())[0] == 200

    lines = trace(gw)
    assert [r["status"] for r in lines] == [413, 413, 413, 200]
    assert [r["request_bytes"] for r in lines[:2]] == [len(big), 10 ** 8]
    assert lines[2]["request_bytes"] > cap
    assert all(len(r["request"]) <= EXCERPT_BYTES for r in lines[:3])
    assert gw.usage.calls == 4 and gw.usage.errors == 3


def test_oversize_headers_are_431_and_counted(make_gateway, scripted):
    gw = make_gateway(scripted)
    headers = "".join(f"X-Pad-{i}: {'h' * 60_000}\r\n" for i in range(100)).encode()  # 6 MB of headers
    request = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n"
    send_errors: list[OSError] = []
    tracemalloc.start()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(30)
            s.connect(str(gw.socket_path))

            def send() -> None:
                try:
                    s.sendall(request)
                except OSError as e:  # the gateway answered and closed before taking it all
                    send_errors.append(e)

            sender = threading.Thread(target=send)
            sender.start()
            raw = b""
            while True:
                try:
                    piece = s.recv(65536)
                except ConnectionResetError:
                    break
                if not piece:
                    break
                raw += piece
            sender.join(30)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    status, out = answer_of(raw)
    assert status == 431 and out["error"]["type"] == "invalid_request" and "header block" in out["error"]["message"]
    assert all(isinstance(e, (BrokenPipeError, ConnectionResetError)) for e in send_errors)
    assert peak < 1_000_000
    assert gw.usage.calls == 1 and trace(gw)[0]["status"] == 431


def test_expect_100_continue_within_the_cap_is_served(make_gateway, scripted):
    gw = make_gateway(scripted)
    body = json.dumps(chat()).encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(str(gw.socket_path))
        s.sendall(post_head(len(body), "Expect: 100-continue"))
        assert s.recv(4096) == b"HTTP/1.1 100 Continue\r\n\r\n"  # asked for the body only now
        s.sendall(body)
        resp = http.client.HTTPResponse(s)
        resp.begin()
        assert resp.status == 200 and json.loads(resp.read())["choices"][0]["message"]["content"]


def test_invalid_request_lines_hold_only_an_excerpt(make_gateway, scripted):
    gw = make_gateway(scripted)
    body = b'{"messages": "' + b"q" * 3_000_000 + b'"}'  # valid JSON, not a chat request, 3 MB
    assert call(gw, body)[0] == 400
    assert call(gw, b"\xff" * 2_000_000)[0] == 400
    raw_lines = gw.trace_path.read_bytes().splitlines()
    assert len(raw_lines) == 2 and all(len(line) < 4 * EXCERPT_BYTES for line in raw_lines)
    first = json.loads(raw_lines[0])
    assert first["request"] == body[:EXCERPT_BYTES].decode() and first["request_bytes"] == len(body)


def test_trace_cap_summarizes_every_call_past_it(make_gateway, scripted):
    cap = 30_000
    gw = make_gateway(scripted, Limits(max_trace_bytes=cap, max_calls=12))
    for _ in range(10):
        assert call(gw, chat("fixture-add " + "p" * 8000))[0] == 200
    assert call(gw, b"!" * 100_000)[0] == 400
    assert call(gw, {"y": 1}, "/" + "v" * 5000)[0] == 404  # a long error message, cut in the summary
    refused = [call(gw, chat())[0] for _ in range(5)]
    assert refused == [403] * 5
    gw.close()

    data = gw.trace_path.read_bytes()
    lines = [json.loads(line) for line in data.splitlines()]
    calls = [r for r in lines if "call" in r]
    notes = [r for r in lines if "note" in r]
    # Each counted request has exactly one line, full or summarized; the refused ones past the cap none.
    assert [r["call"] for r in calls] == list(range(1, 13))
    full = [r for r in calls if not r.get("summarized")]
    summaries = [r for r in calls if r.get("summarized")]
    assert 1 <= len(full) <= 3 and len(full) + len(summaries) == 12
    assert sum(len(json.dumps(r, ensure_ascii=False)) + 1 for r in full) <= cap
    for r in summaries:
        assert "request" not in r and "response" not in r
        assert {"call", "ts", "latency_s", "status", "usage", "cost_usd", "request_bytes", "response_bytes"} <= set(r)
    assert all(len(line) < SUMMARY_LINE_BYTES for line in data.splitlines() if b'"summarized"' in line)
    ok = [r for r in summaries if r["status"] == 200]
    assert ok and all(r["usage"]["prompt_tokens"] > 0 and r["request_bytes"] > 8000 and r["error"] is None
                      for r in ok)
    assert summaries[-2]["error"]["type"] == "invalid_request" and summaries[-2]["request_bytes"] == 100_000
    assert summaries[-1]["error"]["type"] == "not_found"
    # The usage in the lines still adds up.
    assert sum(r["usage"]["prompt_tokens"] for r in calls) == gw.usage.prompt_tokens
    assert [n["note"] for n in notes] == ["trace_cap_reached", "not_traced"]
    assert lines.index(notes[0]) == len(full) and notes[0]["max_trace_bytes"] == cap
    assert notes[1]["refused_requests"] == 5 and notes[1]["refused_connections"] == 0
    assert len(data) <= cap + 12 * SUMMARY_LINE_BYTES + 2 * SUMMARY_LINE_BYTES


def test_connection_cap_answers_excess_connections_at_once_without_threads(make_gateway, provider):
    p = provider(200, OK_BODY, delay_s=3.0)
    gw = make_gateway(p.backend(), Limits(max_connections=2))
    results: list[int] = []
    busy = [threading.Thread(target=lambda: results.append(call(gw, chat())[0])) for _ in range(2)]
    for t in busy:
        t.start()
    deadline = time.monotonic() + 10
    while p.hits < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert p.hits == 2  # both connections are busy with a model call
    threads_before = threading.active_count()
    socks = []
    body = json.dumps(chat()).encode()
    t0 = time.monotonic()
    for _ in range(8):  # a burst of connections, each sending a request
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(str(gw.socket_path))
        s.sendall(post_head(len(body)) + body)
        socks.append(s)
    assert threading.active_count() == threads_before  # no thread was started for any of them
    for s in socks:
        raw = b""
        while True:
            try:
                piece = s.recv(65536)
            except ConnectionResetError:
                break
            if not piece:
                break
            raw += piece
        s.close()
        status, out = answer_of(raw)
        assert status == 429 and out["error"]["type"] == "too_many_connections"
        assert "limits.max_connections" in out["error"]["message"] and "2 connections" in out["error"]["message"]
    assert time.monotonic() - t0 < 8 * ADMIT_WAIT_S + 2  # each answered within the admission wait
    assert gw.refused_connections == 8
    for t in busy:
        t.join(30)
    assert results == [200, 200]
    # Connections over the cap are not requests: nothing was counted or traced for them.
    assert gw.usage.calls == 2 and len(trace(gw)) == 2
    assert call(gw, None, "/health", "GET")[0] == 200  # served again once the calls are done


def test_idle_keep_alive_connections_make_room(make_gateway, scripted):
    gw = make_gateway(scripted, Limits(max_connections=2))
    idle = [UnixHTTPConnection(gw.socket_path, timeout=10) for _ in range(2)]
    for conn in idle:
        conn.request("GET", "/health")
        assert conn.getresponse().read() == b'{"ok": true}'
    time.sleep(IDLE_REAP_S + 0.3)
    # Both slots are held by idle keep-alive connections: a new one takes the place of the idlest.
    assert call(gw, chat())[0] == 200
    assert gw.refused_connections == 0
    closed = 0
    for conn in idle:
        try:
            conn.request("GET", "/health")
            conn.getresponse().read()
        except (http.client.HTTPException, OSError):
            closed += 1
        conn.close()
    assert closed >= 1


def test_trace_readers_stream(tmp_path):
    from evolve.analyze import _calls
    from evolve.digest import TRACE_LINE_BYTES, trace_records

    path = tmp_path / "trace.jsonl"
    response = {"choices": [{"message": {"content": "the answer"}}]}
    with open(path, "w") as f:
        for call_no in range(1, 4):
            rec = {"call": call_no, "status": 200, "request": {"messages": [{"content": "m" * 12 * TRACE_LINE_BYTES}]},
                   "response": response, "error": None, "usage": {"prompt_tokens": 7, "completion_tokens": 1},
                   "cost_usd": 0.0}
            f.write(json.dumps(rec) + "\n")
        for call_no in range(4, 2004):
            f.write(json.dumps({"call": call_no, "status": 403, "summarized": True,
                                "error": {"type": "limit_exceeded", "message": "no"}}) + "\n")
    size = path.stat().st_size
    tracemalloc.start()
    try:
        records = list(trace_records(path))
        text = _calls(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Never the whole file (over 36 MB), never a whole long line (12 MiB): a few lines' worth at most.
    assert size > 36_000_000 and peak < 6 * TRACE_LINE_BYTES
    assert len(records) == 2003
    assert records[0]["truncated"] and records[0]["call"] == 1 and records[0]["response"] == response
    assert records[0]["usage"]["prompt_tokens"] == 7
    assert text.startswith("call 1 (7 prompt tokens): the answer")
    assert "more trace lines left out" in text and text.count("\n") < 450


# -- lifecycle --------------------------------------------------------------------------------------


def test_close_is_idempotent_and_removes_the_socket(gw_dir, scripted):
    path = gw_dir / "gateway.sock"
    path.parent.mkdir(exist_ok=True)
    # A stale socket from a crashed run is replaced.
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()
    with Gateway(path, gw_dir / "t.jsonl", scripted, Limits()) as gw:
        assert call(gw, None, "/health", "GET")[0] == 200
    assert not path.exists()
    gw.close()
    with pytest.raises(OSError):
        UnixHTTPConnection(path, timeout=5).connect()


def test_close_waits_for_calls_in_flight_and_refuses_new_ones(make_gateway, provider):
    p = provider(200, OK_BODY, delay_s=0.6)
    gw = make_gateway(p.backend())
    conn = UnixHTTPConnection(gw.socket_path, timeout=30)  # an open keep-alive connection
    conn.request("GET", "/health")
    conn.getresponse().read()
    results = []
    t = threading.Thread(target=lambda: results.append(call(gw, chat())))
    t.start()
    deadline = time.monotonic() + 10
    while p.hits == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    gw.close()
    # The call in flight was counted before close() returned.
    assert gw.usage.calls == 1 and gw.usage.prompt_tokens == 1000
    t.join(10)
    assert results[0][0] == 200
    conn.request("POST", "/v1/chat/completions", json.dumps(chat()), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 503 and json.loads(resp.read())["error"]["type"] == "gateway_closed"
    conn.close()
    assert p.hits == 1 and [r["status"] for r in trace(gw)] == [200, 503]


def test_long_socket_path(tmp_path, scripted):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    path = deep / "gateway.sock"
    assert len(os.fsencode(str(path))) > 108
    with Gateway(path, deep / "t.jsonl", scripted, Limits()) as gw:
        assert call(gw, chat())[0] == 200
    assert not path.exists()


def test_refuses_to_replace_a_regular_file(gw_dir, scripted):
    from evolve.errors import InfraError

    path = gw_dir / "gateway.sock"
    path.write_text("not a socket")
    with pytest.raises(InfraError, match="not a socket"):
        Gateway(path, gw_dir / "t.jsonl", scripted, Limits()).start()
    assert path.read_text() == "not a socket"


def test_http_client_module_is_stdlib():
    # UnixHTTPConnection is a plain http.client connection (usable by other modules and tests).
    assert issubclass(UnixHTTPConnection, http.client.HTTPConnection)
