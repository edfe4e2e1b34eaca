"""The Docker sandbox against a real engine: limits, timeouts, cleanup."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from evolve import owner
from evolve.config import SandboxLimits
from evolve.sandbox.docker import LABEL, Sandbox, run_labels, sweep_run, sweep_stale
from evolve.sandbox.image import RECIPE, base_image_tag

pytestmark = pytest.mark.docker


@pytest.fixture
def box(docker_client, base_image):
    with Sandbox(docker_client, base_image, run_id="test-sandbox", limits=SandboxLimits(pids_limit=64)) as sb:
        yield sb


def test_container_is_locked_down(box, docker_client):
    attrs = docker_client.api.inspect_container(box.container.id)
    host = attrs["HostConfig"]
    assert host["NetworkMode"] == "none"
    assert host["Init"] is True
    assert host["PidsLimit"] == 64
    assert host["Memory"] == 2 * 1024**3
    assert host["NanoCpus"] == 1_000_000_000
    assert attrs["Config"]["User"] == "1000:1000"
    assert attrs["Config"]["Labels"][LABEL] == "1"
    assert attrs["Config"]["Labels"]["evolve.run"] == "test-sandbox"
    res = box.exec("id -u; python3 -c 'import socket; socket.create_connection((\"1.1.1.1\", 80), timeout=3)'",
                   timeout_s=20)
    assert res.output.splitlines()[0] == "1000"
    assert "Network is unreachable" in res.output or "unreachable" in res.output.lower()


def test_exec_timeout_is_enforced_inside(box):
    t0 = time.monotonic()
    res = box.exec("sleep 60", timeout_s=2)
    assert res.timed_out
    assert res.exit_code == 124
    assert time.monotonic() - t0 < 15


def test_exec_timeout_survives_a_command_ignoring_term(box):
    # `timeout --kill-after` escalates to KILL when TERM is ignored.
    res = box.exec("trap '' TERM; sleep 60 & wait; sleep 60", timeout_s=2)
    assert res.timed_out
    assert res.exit_code in (124, 137)


def test_output_is_capped_head_and_tail(box):
    res = box.exec("seq 1 200000", timeout_s=30, max_output=10_000)
    assert res.truncated
    assert res.output.startswith("1\n2\n")
    assert res.output.rstrip().endswith("200000")
    assert "bytes elided by evolve" in res.output
    assert len(res.output) < 12_000


def test_put_and_get_files(box):
    box.put_files("/tmp/in", {"a/b.txt": "hello", "c.bin": b"\x00\x01"})
    res = box.exec("cat /tmp/in/a/b.txt; echo; stat -c %u /tmp/in/a/b.txt", timeout_s=10)
    assert res.output.split() == ["hello", "1000"]
    assert box.get_file("/tmp/in/c.bin") == b"\x00\x01"
    assert box.get_file("/tmp/nope") is None


def test_restart_kills_processes_and_keeps_files(box):
    box.exec("echo kept > /tmp/f; nohup sh -c 'while true; do sleep 1; done' >/dev/null 2>&1 &", timeout_s=10)
    assert "sleep 1" in box.exec("ps -eo args", timeout_s=10).output
    box.restart()
    after = box.exec("cat /tmp/f; ps -eo args", timeout_s=10).output
    assert "kept" in after
    assert "while true" not in after


def test_pids_limit_stops_a_fork_bomb(box):
    res = box.exec("for i in $(seq 200); do sleep 30 & done; wait", timeout_s=5)
    assert "fork" in res.output.lower() or "resource" in res.output.lower()
    box.restart()
    assert box.exec("echo alive", timeout_s=10).output.strip() == "alive"


def test_container_removed_on_exit(docker_client, base_image):
    with Sandbox(docker_client, base_image, run_id="test-removed", limits=SandboxLimits()) as sb:
        cid = sb.container.id
    assert not docker_client.containers.list(all=True, filters={"id": cid})


def test_sweeps(docker_client, base_image):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    labels = {**run_labels("test-sweep"), "evolve.pid": dead}
    del labels["evolve.owner"]  # labelled before owner tokens: the pid decides
    stale = docker_client.containers.run(base_image, ["sleep", "infinity"], detach=True, init=True,
                                         network_mode="none", labels=labels)
    # Our own PID, but another start time: the PID was reused by this process, the owner is dead.
    me, start = owner.current().rsplit("-", 1)
    reused = docker_client.containers.run(base_image, ["sleep", "infinity"], detach=True, init=True,
                                          network_mode="none",
                                          labels={**run_labels("test-sweep-reused"),
                                                  "evolve.owner": f"{me}-{int(start) + 1}"})
    live = docker_client.containers.run(base_image, ["sleep", "infinity"], detach=True, init=True,
                                        network_mode="none", labels=run_labels("test-sweep-live"))
    try:
        sweep_stale(docker_client)  # its count may be short: another evolve process's sweep may come first
        ids = {c.id for c in docker_client.containers.list(all=True, filters={"label": LABEL})}
        assert stale.id not in ids
        assert reused.id not in ids
        assert live.id in ids  # our own process is alive: its containers stay
        assert sweep_run(docker_client, "test-sweep-live") == 1
    finally:
        for c in (stale, reused, live):
            try:
                c.remove(force=True)
            except Exception:
                pass


def test_base_image_tag_follows_recipe():
    tag = base_image_tag()
    assert tag.startswith("evolve-sandbox:")
    assert base_image_tag({**RECIPE, "packages": [*RECIPE["packages"], "curl"]}) != tag
    assert base_image_tag(dict(RECIPE)) == tag


def test_base_image_has_what_grading_needs(box):
    res = box.exec("python3 --version && python3 -m pytest --version && git --version && patch --version "
                   "&& timeout --version && id agent", timeout_s=30)
    assert res.exit_code == 0, res.output
    setuid = box.exec("find / -xdev -perm /6000 -type f 2>/dev/null", timeout_s=60)
    assert setuid.output.strip() == ""
