"""A real Ray cluster on this machine for the tests: ``ray start --head`` plus worker nodes, each a
``ray start --block`` process in a session of its own, with its own ``evolve_sandbox`` resource,
ports and a shared temp dir, all on the machine's one Docker engine.

A node is stopped by killing every process of its session (SIGKILL: the node dies as a machine
would); ``close`` does that for every node left. Ray's health checks are shortened (environment
``RAY_health_check_*``) so the head notices a dead node in seconds.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

RAY = str(Path(sys.executable).parent / "ray")
REPO = Path(__file__).resolve().parent.parent
OBJECT_STORE_BYTES = 100 * 1024 * 1024
HEALTH = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3",
          "RAY_health_check_initial_delay_ms": "1000", "RAY_USAGE_STATS_ENABLED": "0",
          # The head's Ray Client server starts a server process per client and waits this long for
          # it (default 30 s): too short on 2 busy cores.
          "RAY_CLIENT_SERVER_CHECK_CHANNEL_TIMEOUT_S": "180"}


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _session_pids(sid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[3]) == sid:  # after ")": state ppid pgrp session
            pids.append(int(entry.name))
    return pids


def kill_session(sid: int, *, tries: int) -> None:
    """SIGKILL every process of session ``sid``, up to ``tries`` rounds 0.1 s apart (a dying raylet
    may start workers meanwhile)."""
    for _ in range(tries):
        pids = _session_pids(sid)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)


@dataclass
class Node:
    proc: subprocess.Popen
    node_id: str = ""

    def kill(self) -> None:
        """SIGKILL every process of the node's session (the raylet, its workers, its agents)."""
        kill_session(self.proc.pid, tries=20)
        self.proc.wait(timeout=30)


class RayCluster:
    """``start()`` the head with ``head_slots`` of ``evolve_sandbox``; ``add_node(slots)`` more."""

    def __init__(self, head_slots: int = 1) -> None:
        self.client_port = free_ports(1)[0]
        self.client_address = f"ray://127.0.0.1:{self.client_port}"
        """The head's Ray Client server (``ray start --ray-client-server-port``)."""
        self.temp = Path(tempfile.mkdtemp(prefix="evray", dir="/tmp"))  # short: Ray's unix socket paths
        self.port = free_ports(1)[0]
        self.address = f"127.0.0.1:{self.port}"
        self.nodes: list[Node] = []
        self.head_slots = head_slots
        self.env = {**os.environ, **HEALTH, "PYTHONPATH": str(REPO)}

    def _start(self, args: list[str], slots: int) -> Node:
        p = free_ports(7)
        cmd = [RAY, "start", "--block", "--disable-usage-stats", "--node-ip-address=127.0.0.1",
               "--num-cpus=1", f"--object-store-memory={OBJECT_STORE_BYTES}",
               f"--resources={json.dumps({'evolve_sandbox': slots})}",
               f"--node-manager-port={p[0]}", f"--object-manager-port={p[1]}",
               f"--dashboard-agent-listen-port={p[2]}", f"--dashboard-agent-grpc-port={p[3]}",
               f"--metrics-export-port={p[4]}", f"--runtime-env-agent-port={p[5]}",
               # Worker processes take ports from a range of the node's own (a busy one is skipped).
               f"--min-worker-port={p[6]}", f"--max-worker-port={p[6] + 40}", *args]
        log = open(self.temp / f"node-{len(self.nodes)}.log", "wb")
        proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                cwd=self.temp)
        node = Node(proc)
        self.nodes.append(node)
        return node

    def start(self) -> "RayCluster":
        self._start(["--head", f"--port={self.port}", f"--ray-client-server-port={self.client_port}",
                     "--include-dashboard=false", f"--temp-dir={self.temp}"],
                    self.head_slots)
        self._wait(1)
        return self

    def add_node(self, slots: int = 1) -> Node:
        node = self._start([f"--address={self.address}"], slots)
        self._wait(len([n for n in self.nodes if n.proc.poll() is None]))
        return node

    def node_ids(self) -> dict[str, bool]:
        """``{node id: alive}`` of every node the cluster has known (asked in a subprocess)."""
        code = (f"import ray, json; ray.init(address={self.address!r}, logging_level='ERROR');"
                "print(json.dumps({n['NodeID']: n['Alive'] for n in ray.nodes()}))")
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=self.env, timeout=60,
                           check=True)
        return json.loads(r.stdout.strip().splitlines()[-1])

    def head_id(self) -> str:
        """The head node's id (the node holding Ray's ``node:__internal_head__`` resource)."""
        code = (f"import ray; ray.init(address={self.address!r}, logging_level='ERROR');"
                "print(next(n['NodeID'] for n in ray.nodes() if 'node:__internal_head__' in n['Resources']))")
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=self.env, timeout=60,
                           check=True)
        return r.stdout.strip().splitlines()[-1]

    def _wait(self, n_alive: int, timeout: float = 120) -> None:
        """Until ``n_alive`` nodes are alive (asked through ``ray.nodes()`` in a subprocess)."""
        code = (f"import ray, json; ray.init(address={self.address!r}, logging_level='ERROR');"
                "print(json.dumps([n['NodeID'] for n in ray.nodes() if n['Alive']]))")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:  # the head's GCS port first: ray.init hangs until it answers
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        while time.monotonic() < deadline:
            for node in self.nodes:
                if node.proc.poll() is not None and node.proc.returncode not in (0, -9):
                    raise RuntimeError(f"ray node exited {node.proc.returncode}: see {self.temp}")
            try:
                r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=self.env,
                                   timeout=60)
            except subprocess.TimeoutExpired:
                continue
            if r.returncode == 0:
                ids = json.loads(r.stdout.strip().splitlines()[-1])
                if len(ids) >= n_alive:
                    return
            time.sleep(1)
        raise TimeoutError(f"{n_alive} Ray nodes did not come up in {timeout}s (logs in {self.temp})")

    def close(self) -> None:
        for node in reversed(self.nodes):
            if node.proc.poll() is None or _session_pids(node.proc.pid):
                node.kill()
        import shutil

        shutil.rmtree(self.temp, ignore_errors=True)
