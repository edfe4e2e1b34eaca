"""A harness floods its gateway from a real sandbox: the host's disk and evolve's memory hold.

Real Docker, real gateway, scripted model words. The flooding harness sends
valid chat requests big enough to fill the trace past its cap, invalid bodies
under the body cap, hundreds of megabytes of bodies over it, misrouted
requests, requests past the call limit and a burst of connections; it tries to
write into the gateway's directory. Meanwhile the test watches that directory
on the host and tries the socket as another host user.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from conftest import SOLVER_SCRIPT
from evolve.config import EvalSettings, Limits
from evolve.evalsets.registry import load_evalset
from evolve.evaluate import Evaluation
from evolve.gateway import SUMMARY_LINE_BYTES
from evolve.harness import resolve_harness

pytestmark = pytest.mark.docker
SCRIPTED = f"scripted/{SOLVER_SCRIPT}"
MAX_CALLS = 40
MAX_TRACE_BYTES = 2_000_000

FLOOD = r'''
import errno, json, os, socket, threading

SOCK = os.environ["EVOLVE_GATEWAY_SOCKET"]
GW = os.path.dirname(SOCK)
report = {"sent_bytes": 0, "statuses": {}, "probes": {}, "send_errors": 0}
lock = threading.Lock()


def count(key, status):
    with lock:
        report[key][str(status)] = report[key].get(str(status), 0) + 1


def read_status(s):
    data = b""
    try:
        while b"\r\n" not in data:
            piece = s.recv(4096)
            if not piece:
                break
            data += piece
    except OSError as e:
        return "error:" + type(e).__name__
    return int(data.split()[1]) if data.startswith(b"HTTP/") else "closed"


def request(length, path="/v1/chat/completions", body=None):
    """POST `body` (or `length` bytes of 'x'), then read the status line."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(120)
    sent = 0
    try:
        s.connect(SOCK)
        length = len(body) if body is not None else length
        s.sendall(("POST %s HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
                   "Content-Length: %d\r\n\r\n" % (path, length)).encode())
        if body is not None:
            s.sendall(body)
            sent = len(body)
        else:
            block = b"x" * (1 << 20)
            while sent < length:
                n = min(len(block), length - sent)
                s.sendall(block if n == len(block) else block[:n])
                sent += n
    except OSError:
        with lock:
            report["send_errors"] += 1
    with lock:
        report["sent_bytes"] += sent
    status = read_status(s)
    s.close()
    count("statuses", status)


def parallel(n, fn):
    threads = [threading.Thread(target=fn) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def probe(name, fn):
    try:
        fn()
        report["probes"][name] = "done"
    except OSError as e:
        report["probes"][name] = errno.errorcode.get(e.errno, str(e.errno))


def fill():
    with open(os.path.join(GW, "fill"), "wb") as f:
        for _ in range(1024):
            f.write(b"x" * (1 << 20))


# Try to put something on the host through the gateway's directory.
probe("create_file", fill)
probe("mkdir", lambda: os.mkdir(os.path.join(GW, "d")))
probe("listdir", lambda: os.listdir(GW))
probe("symlink", lambda: os.symlink("/etc/passwd", os.path.join(GW, "link")))
probe("bind_socket", lambda: socket.socket(socket.AF_UNIX).bind(os.path.join(GW, "other.sock")))
probe("rename_socket", lambda: os.rename(SOCK, os.path.join(GW, "moved")))
probe("unlink_socket", lambda: os.unlink(SOCK))
probe("chmod_dir", lambda: os.chmod(GW, 0o777))

# 1. Valid chat calls of about 600 kB each: the trace passes its cap.
big = json.dumps({"model": "m", "messages": [{"role": "user", "content": "fixture-add " + "word " * 120000}]})
for _ in range(6):
    request(0, body=big.encode())
# 2. Invalid bodies under the body cap (3 MB, not JSON), four at once.
parallel(4, lambda: [request(3000000) for _ in range(2)])
# 3. The flood: 50 MB bodies, over the body cap, four at once.
parallel(4, lambda: [request(50000000) for _ in range(4)])
# 4. Wrong paths with big bodies.
parallel(2, lambda: request(20000000, path="/v1/embeddings"))
# 5. Past the call limit.
for _ in range(50):
    request(10)
# 6. A burst of connections that send nothing: the first ones wait for a request (until they time out
# here, or are closed to make room), the next get 429.
conns = []
for _ in range(30):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(2)
    s.connect(SOCK)
    conns.append(s)
report["connections"] = {}
for s in conns:
    count("connections", read_status(s))
    s.close()

with open(os.path.join(os.environ["EVOLVE_OUTPUT_DIR"], "trajectory.json"), "w") as f:
    json.dump(report, f)
'''

QUIET = r'''
import http.client, json, os, socket


class Conn(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(os.environ["EVOLVE_GATEWAY_SOCKET"])


c = Conn("gw", timeout=60)
c.request("POST", "/v1/chat/completions", json.dumps({"messages": [{"role": "user", "content": "fixture-add"}]}))
status = c.getresponse().status
with open(os.path.join(os.environ["EVOLVE_OUTPUT_DIR"], "trajectory.json"), "w") as f:
    json.dump({"status": status}, f)
'''


def make_harness(root: Path, name: str, files: dict[str, str], entrypoint: str) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "harness.yaml").write_text(f"name: {name}\nentrypoint: {json.dumps(entrypoint)}\n")
    for rel, content in files.items():
        (d / rel).write_text(content)
    return d


def evaluate(evalset_dir: Path, harness_dir: Path, runs: Path):
    settings = EvalSettings(model=SCRIPTED, harness_timeout_s=300, test_timeout_s=120,
                            limits=Limits(max_calls=MAX_CALLS, max_trace_bytes=MAX_TRACE_BYTES))
    harness = resolve_harness(str(harness_dir), workdir=runs / "harnesses")
    ev = Evaluation(evalset=load_evalset(str(evalset_dir)), split="search", harness=harness,
                    settings=settings, runs_dir=runs, workers=1, instance_ids=["mini__calc-1"], use_cache=False)
    return ev.run()


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/self/status")


def peak_rss_growth(fn) -> tuple[int, object]:
    """Bytes by which this process's peak RSS rose above its RSS while ``fn()`` ran, and fn's result.
    The kernel's peak (VmHWM) is reset first (``/proc/self/clear_refs``, Linux 4.0+)."""
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_kb("VmRSS")
    result = fn()
    return (_status_kb("VmHWM") - before) * 1024, result


class GatewayDirWatcher:
    """Polls the host's temporary directory for gateway directories made while it runs: every name
    ever seen in them, and whether another host user (uid 65534) could connect to a socket there."""

    def __init__(self) -> None:
        self.tmp = Path(tempfile.gettempdir())
        self.since = time.time() - 1
        self.roots: set[str] = set()
        self.in_root: set[str] = set()
        self.in_gw: set[str] = set()
        self.modes: set[tuple[int, int]] = set()
        self.outsider: subprocess.CompletedProcess | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "GatewayDirWatcher":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(10)

    def _gw_roots(self) -> list[Path]:
        """The ``owner.temp_dir("gw")`` directories in every process's scratch directory (``evolve-*``),
        which other processes create and remove meanwhile."""
        roots = []
        for scratch in self.tmp.glob("evolve-*"):
            try:
                roots += [scratch / name for name in os.listdir(scratch) if name.startswith("gw-")]
            except (FileNotFoundError, NotADirectoryError, PermissionError):
                continue
        return roots

    def _run(self) -> None:
        while not self.stop.is_set():
            for root in self._gw_roots():
                try:
                    if root.stat().st_mtime < self.since:
                        continue
                    names = os.listdir(root)
                    if "gw" not in names:  # not made by this code (another process's run of older code)
                        continue
                    gw_names = os.listdir(root / "gw")
                    self.modes.add((root.stat().st_mode & 0o777, (root / "gw").stat().st_mode & 0o777))
                except FileNotFoundError:  # removed between the listing and the look: the task ended
                    continue
                self.roots.add(root.name)
                self.in_root.update(names)
                self.in_gw.update(gw_names)
                if "gateway.sock" in gw_names and self.outsider is None and os.geteuid() == 0:
                    self.outsider = subprocess.run(
                        ["/usr/bin/python3", "-c", "import socket, sys; s = socket.socket(socket.AF_UNIX); "
                         "s.connect(sys.argv[1]); print('CONNECTED')", str(root / "gw" / "gateway.sock")],
                        user=65534, group=65534, extra_groups=[], capture_output=True, text=True, timeout=30)
            time.sleep(0.005)


def test_a_flooding_harness_cannot_fill_the_disk_or_evolves_memory(mini_evalset, base_image, docker_client,
                                                                    tmp_path):
    quiet = make_harness(tmp_path, "quiet", {"quiet.py": QUIET}, "python3 quiet.py")
    flood = make_harness(tmp_path, "flood", {"flood.py": FLOOD}, "python3 flood.py")
    evaluate(mini_evalset, quiet, tmp_path / "warmup")  # imports and first-use costs, not measured
    quiet_growth, quiet_report = peak_rss_growth(lambda: evaluate(mini_evalset, quiet, tmp_path / "quiet"))
    with GatewayDirWatcher() as watcher:
        flood_growth, report = peak_rss_growth(lambda: evaluate(mini_evalset, flood, tmp_path / "flood"))
    print(f"\nevolve peak RSS growth: quiet {quiet_growth / 1e6:.1f} MB, flood {flood_growth / 1e6:.1f} MB")

    (q,) = quiet_report.results
    assert not q.is_infra and q.usage.calls == 1
    (r,) = report.results
    assert not r.is_infra, r.error
    task_dir = report.run_dir / "tasks" / "mini__calc-1" / "r0"
    sent = json.loads((task_dir / "trajectory.json").read_text())
    print(f"harness report: {json.dumps(sent)}")

    # The flood happened: over 500 MB sent, answered with what the contract says.
    assert sent["sent_bytes"] > 500_000_000
    statuses = sent["statuses"]
    # 6 + 8 + 16 + 2 counted, then 8 of the 50 small ones: the limit (40); the other 42 refused.
    assert statuses == {"200": 6, "400": 8 + 8, "413": 16, "404": 2, "403": 42}, statuses
    assert sent["connections"].get("429", 0) >= 1
    assert r.usage.calls == MAX_CALLS

    # Nothing could be written through the gateway's directory; nothing but the socket was ever there.
    assert set(sent["probes"].values()) <= {"EROFS", "EACCES", "EPERM"}, sent["probes"]
    assert len(sent["probes"]) == 8
    assert watcher.roots, "the gateway directory was never seen"
    assert watcher.in_root == {"gw"} and watcher.in_gw == {"gateway.sock"}
    assert watcher.modes == {(0o700, 0o711)}
    if os.geteuid() == 0:
        assert watcher.outsider is not None, "the socket was never seen"
        assert "CONNECTED" not in watcher.outsider.stdout and "PermissionError" in watcher.outsider.stderr

    # The trace on the host: full lines up to the cap, then one summary line per counted request.
    trace = task_dir / "trace.jsonl"
    size = trace.stat().st_size
    assert size <= MAX_TRACE_BYTES + MAX_CALLS * SUMMARY_LINE_BYTES + 2 * SUMMARY_LINE_BYTES
    lines = [json.loads(line) for line in trace.read_text().splitlines()]
    assert [n["note"] for n in lines if "note" in n] == ["trace_cap_reached", "not_traced"]
    calls = [n for n in lines if "call" in n]
    assert len(calls) == MAX_CALLS and all("request" not in n for n in calls if n.get("summarized"))

    # evolve's own memory stayed flat while hundreds of megabytes went through its gateway.
    assert flood_growth < 100_000_000, (flood_growth, quiet_growth)
    assert flood_growth < sent["sent_bytes"] / 5


def test_the_gateway_mount_is_read_only(mini_evalset, base_image, docker_client, tmp_path):
    """The container's view of the mount, from Docker itself: read-only, the `gw` directory only."""
    from evolve.config import SandboxLimits
    from evolve.sandbox.docker import Sandbox

    gw = tmp_path / "gw"
    gw.mkdir(mode=0o711)
    with Sandbox(docker_client, base_image, run_id="test-gw-mount", limits=SandboxLimits(),
                 mounts={str(gw): "/evolve/gw:ro"}) as sb:
        mounts = docker_client.api.inspect_container(sb.container.id)["Mounts"]
        res = sb.exec("touch /evolve/gw/x", timeout_s=30, user="root")
    assert [(m["Source"], m["Destination"], m["RW"]) for m in mounts] == [(str(gw), "/evolve/gw", False)]
    assert res.exit_code != 0 and "Read-only file system" in res.output
    assert os.listdir(gw) == []
