#!/usr/bin/env python3
"""What the sandbox's loopback bridge adds to one model call, against the gateway's socket itself.

Both sides run in the same real sandbox container (network none), from the same client, in one
harness run through ``evolve.runner.run_agent`` (the real gateway on the host, the scripted model
behind litellm, every call traced):

A: POST /v1/chat/completions to ``OPENAI_BASE_URL`` (http://127.0.0.1:18000, the loopback bridge
   ``evolve/sandbox/scripts/bridge.py``, then the gateway's unix socket);
B: the same request straight to the gateway's unix socket (``EVOLVE_GATEWAY_SOCKET``).

The client is stdlib ``http.client``; each call opens a new connection (as the minimal harness
does) unless ``--keep-alive``; the sides alternate (A B, then B A, ...) after ``--warmup`` uncounted
calls per side. Both sides are measured for a chat call and for ``GET /v1/models`` (free, no model call: the
transport alone, without the model's own jitter). Prints per side the median and p90 latency in milliseconds, the ratio of medians
A/B, and the milliseconds the bridge adds per call (difference of medians and median of per-pair
differences) against the goal of 5 ms. Exits non-zero only when something broke (a call that was
not answered 200, an infra error), never for missing the goal.

    .venv/bin/python bench/bridge_latency.py [--calls 200] [--warmup 10] [--keep-alive]

Needs the Docker engine and the base image (``evolve sandbox build``); about 30 seconds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "tests"))

from conftest import build_mini_evalset  # noqa: E402

from evolve.config import EvalSettings, Limits, SandboxLimits  # noqa: E402

CLIENT = r'''
import http.client, json, os, socket, sys, time

CALLS, WARMUP, KEEP = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
PORT, KEY, SOCK = int(os.environ["EVOLVE_ENDPOINT_PORT"]), os.environ["OPENAI_API_KEY"], os.environ["EVOLVE_GATEWAY_SOCKET"]
BODY = json.dumps({"model": "any", "messages": [{"role": "user", "content": "bench: say hi"}]}).encode()


class Unix(http.client.HTTPConnection):
    def __init__(self):
        super().__init__("localhost", timeout=60)

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(SOCK)


def make(side):
    return http.client.HTTPConnection("127.0.0.1", PORT, timeout=60) if side == "bridge" else Unix()


conns = {}


def once(side, route):
    conn = conns.get(side) if KEEP else None
    if conn is None:
        conn = conns[side] = make(side)
    start = time.perf_counter()
    if route == "chat":
        conn.request("POST", "/v1/chat/completions", BODY, {"Content-Type": "application/json",
                                                             "Authorization": "Bearer " + KEY})
    else:
        conn.request("GET", "/v1/models", headers={"Authorization": "Bearer " + KEY})
    resp = conn.getresponse()
    data = resp.read()
    took = time.perf_counter() - start
    if not KEEP:
        conn.close()
    if resp.status != 200:
        raise SystemExit(f"{side}: HTTP {resp.status}: {data[:300]!r}")
    return took


out = {}
for route in ("chat", "models"):
    for _ in range(WARMUP):
        once("bridge", route), once("socket", route)
    out[route] = {"bridge": [], "socket": []}
    for i in range(CALLS):
        for side in (("bridge", "socket") if i % 2 == 0 else ("socket", "bridge")):
            out[route][side].append(once(side, route))
with open(os.path.join(os.environ["EVOLVE_OUTPUT_DIR"], "trajectory.json"), "w") as f:
    json.dump(out, f)
'''


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=200, help="counted calls per side")
    p.add_argument("--warmup", type=int, default=10, help="uncounted calls per side first")
    p.add_argument("--keep-alive", action="store_true", help="one connection per side for all calls")
    args = p.parse_args()
    if args.calls < 1 or args.warmup < 0:
        p.error("--calls must be >= 1, --warmup >= 0")

    from evolve.evalsets.registry import load_evalset
    from evolve.harness import resolve_harness
    from evolve.models import backend_for
    from evolve.runner import run_agent
    from evolve.sandbox.docker import Sandbox, docker_client
    from evolve.sandbox.image import ensure_image

    client = docker_client()
    image = ensure_image(client)
    with tempfile.TemporaryDirectory(prefix="evolve-bench-bridge-") as tmp:
        root = Path(tmp)
        ev = load_evalset(str(build_mini_evalset(root / "evals" / "mini")))
        task = ev.tasks("search")[0]
        h = root / "bench-harness"
        h.mkdir()
        (h / "harness.yaml").write_text(f"name: bench-bridge\nentrypoint: python3 client.py {args.calls} "
                                        f"{args.warmup} {int(args.keep_alive)}\n")
        (h / "client.py").write_text(CLIENT)
        (root / "script.yaml").write_text('default:\n  - "hi"\n')
        calls = 2 * (args.calls + args.warmup)
        settings = EvalSettings(model=f"scripted/{root / 'script.yaml'}", harness_timeout_s=900,
                                limits=Limits(max_calls=calls + 10, max_trace_bytes=200_000_000))
        backend, close = backend_for(settings.model)
        try:
            run = run_agent(lambda mounts=None: Sandbox(client, image, run_id="bench-bridge", limits=SandboxLimits(),
                                                        mounts=mounts),
                            task, ev.repo_dir(task), resolve_harness(str(h), workdir=root / "harnesses"),
                            backend, settings, root / "trace.jsonl")
        finally:
            close()
    if run.infra_errors or run.exit_code != 0 or not run.trajectory:
        print(f"the bench harness failed (exit {run.exit_code}, infra {run.infra_errors}):\n{run.harness_log[-2000:]}")
        return 1
    out = json.loads(run.trajectory)
    mode = "one keep-alive connection per side" if args.keep_alive else "a new connection per call"
    print(f"{args.calls} calls per side, {mode}, inside the sandbox container")
    for route, what in (("chat", "POST /v1/chat/completions (scripted model through litellm, traced)"),
                        ("models", "GET /v1/models (the transport alone: no model call)")):
        a, b = [x * 1000 for x in out[route]["bridge"]], [x * 1000 for x in out[route]["socket"]]
        print(what)
        for name, xs in (("A bridge (127.0.0.1 TCP -> socket)", a), ("B gateway socket directly", b)):
            print(f"  {name:36s} median {statistics.median(xs):7.2f} ms   p90 {pct(xs, 0.9):7.2f} ms")
        added = statistics.median(a) - statistics.median(b)
        paired = statistics.median(x - y for x, y in zip(a, b))
        print(f"  ratio of medians A/B {statistics.median(a) / statistics.median(b):.3f}; added by the bridge per "
              f"call: {added:.2f} ms (difference of medians), {paired:.2f} ms (median of paired differences); "
              f"goal <= 5 ms: {'met' if max(added, paired) <= 5 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
