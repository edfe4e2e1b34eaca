"""Helpers shared by the tests: stand-in model providers over real HTTP, and small probes.

Nothing here mocks evolve: the stand-ins are real HTTP servers on 127.0.0.1 that
answer like an OpenAI-compatible API, so litellm's real client, its exception
mapping and evolve's retry and classification logic all run against them.

* ``FakeProvider``: an in-process server answering chosen (status, body) pairs;
  the ``provider_factory`` fixture (tests/conftest.py) makes them and closes them.
* ``STUB_SERVER``: the source of a stand-alone server run as a real child process
  (through ``serve.command``, see ``stub_cfg``), for ``LocalServer``'s readiness,
  exit and stop handling; the ``stub_script`` fixture writes it to a file.

Import from a test module as ``from support import ...`` (pytest puts tests/ on
``sys.path``, as for ``loop_support``).
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from evolve.config import ServeConfig
from evolve.models import FREE, LiteLLMBackend

OK_BODY = {
    "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "x",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello there"},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
}
"""A successful chat completion: the reply "hello there", 11 prompt and 7 completion tokens."""

PROVIDER_API_KEY = "sk-test-secret-123"
"""The API key ``FakeProvider.backend`` sends unless told otherwise; tests check it never leaks."""


class FakeProvider:
    """An OpenAI-compatible endpoint on 127.0.0.1 that answers every POST with the next of
    ``answers`` (``(HTTP status, JSON body)``; the last one repeats), after ``delay_s`` seconds.

    It records what it was sent: ``bodies`` (each request's JSON) and ``headers``, in arrival
    order; ``hits`` counts the requests (counted before the delay, so a test can see a request
    that is still being answered). ``url`` is its ``/v1`` base for ``api_base``. Call ``close()``
    when done (the ``provider_factory`` fixture does).

    Args:
        answers: the scripted (status, body) pairs; none means ``(200, OK_BODY)``.
        delay_s: seconds to wait before each answer.
        api_key: the key ``backend()`` configures.
    """

    def __init__(self, *answers: tuple[int, dict], delay_s: float = 0.0,
                 api_key: str = PROVIDER_API_KEY) -> None:
        self.answers = list(answers) or [(200, OK_BODY)]
        self.api_key = api_key
        self.bodies: list[dict] = []
        self.headers: list[dict] = []
        lock = threading.Lock()
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    i = len(provider.bodies)
                    provider.bodies.append(body)
                    provider.headers.append(dict(self.headers))
                time.sleep(delay_s)
                status, payload = provider.answers[min(i, len(provider.answers) - 1)]
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    @property
    def hits(self) -> int:
        """Requests received so far."""
        return len(self.bodies)

    def close(self) -> None:
        """Stop serving and free the port."""
        self.server.shutdown()
        self.server.server_close()

    def backend(self, model: str = "openai/x", *, params: dict | None = None, **kw) -> LiteLLMBackend:
        """A real litellm backend pointed at this provider, free of charge unless ``params`` sets
        prices; ``kw`` goes to ``LiteLLMBackend`` (default: 2 retries, at most 0.05 s between them)."""
        return LiteLLMBackend(model, {"api_base": self.url, "api_key": self.api_key, **FREE, **(params or {})},
                              **{"retries": 2, "max_wait_s": 0.05, **kw})


STUB_SERVER = r'''
"""An OpenAI-compatible stand-in server for tests (stdlib only)."""
import argparse, json, os, signal, subprocess, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

p = argparse.ArgumentParser()
p.add_argument("--host", default="127.0.0.1")
p.add_argument("--port", type=int, required=True)
p.add_argument("--model-id", default="stub-model")
p.add_argument("--unavailable-s", type=float, default=0.0, help="answer 503 for this long")
p.add_argument("--no-models-s", type=float, default=0.0, help="then list no model for this long")
p.add_argument("--delay-s", type=float, default=0.0, help="sleep before listening at all")
p.add_argument("--exit-after-s", type=float, default=None, help="exit with --exit-code after this long")
p.add_argument("--exit-code", type=int, default=3)
p.add_argument("--ignore-term", action="store_true")
p.add_argument("--child-pid-file", default=None, help="spawn a sleeping grandchild, write its pid here")
a = p.parse_args()
print(f"stub: starting on {a.host}:{a.port}", flush=True)
if a.ignore_term:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if a.child_pid_file:
    child = subprocess.Popen(["sleep", "1000"])
    with open(a.child_pid_file, "w") as f:
        f.write(str(child.pid))
if a.exit_after_s is not None:
    time.sleep(a.exit_after_s)
    print("stub: fatal: cannot load model weights (simulated)", flush=True)
    sys.exit(a.exit_code)
time.sleep(a.delay_s)
t0 = time.monotonic()


class H(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def send(self, status, payload):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        age = time.monotonic() - t0
        if self.path.rstrip("/") == "/health":
            return self.send(200, {"ok": True})
        if self.path.rstrip("/") != "/v1/models":
            return self.send(404, {"error": "no route"})
        if age < a.unavailable_s:
            return self.send(503, {"error": "loading"})
        if age < a.unavailable_s + a.no_models_s:
            return self.send(200, {"object": "list", "data": []})
        self.send(200, {"object": "list", "data": [{"id": a.model_id, "object": "model"}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        words = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
        seen = {"model": body.get("model"), "auth": self.headers.get("Authorization"),
                "max_tokens": body.get("max_tokens"), "temperature": body.get("temperature")}
        self.send(200, {"id": "stub-1", "object": "chat.completion", "created": 1, "model": a.model_id,
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": json.dumps(seen)}}],
                        "usage": {"prompt_tokens": words, "completion_tokens": 5, "total_tokens": words + 5}})


ThreadingHTTPServer((a.host, a.port), H).serve_forever()
'''
"""Source of a stand-alone OpenAI-compatible server (stdlib only), run as a child process.

Flags: ``--host``, ``--port`` (required), ``--model-id``; ``--unavailable-s`` (answer 503 that long),
``--no-models-s`` (then list no model that long), ``--delay-s`` (sleep before listening),
``--exit-after-s``/``--exit-code`` (crash), ``--ignore-term``, ``--child-pid-file`` (spawn a sleeping
grandchild). ``GET /health`` and ``GET /v1/models`` as a server being loaded would answer; ``POST``
replies with a completion whose content is the JSON of what it saw (``model``, ``auth``,
``max_tokens``, ``temperature``), one prompt token per word, 5 completion tokens."""


def stub_cfg(script: Path, *args: str, **kw) -> ServeConfig:
    """A ``serve:`` config that runs the stub server at ``script`` (``STUB_SERVER`` written to a file:
    the ``stub_script`` fixture) with ``args``; ``kw`` sets the other ``ServeConfig`` fields."""
    return ServeConfig(command=[sys.executable, str(script), "--host", "{host}", "--port", "{port}"],
                       args=list(args), **kw)


def port_open(port: int) -> bool:
    """Something accepts TCP connections on 127.0.0.1:``port``."""
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0
