"""What a killed evolve process leaves is found by its owner token and removed; no Docker needed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from evolve import owner, store


def _dead_token() -> str:
    return subprocess.run([sys.executable, "-c", "from evolve import owner; print(owner.current())"],
                          capture_output=True, text=True, check=True).stdout.strip()


def test_owner_token_survives_pid_reuse():
    me = owner.current()
    assert owner.alive(me)
    boot, pid, start = me.split("-")
    assert int(pid) == os.getpid()
    assert not owner.alive(f"{boot}-{pid}-{int(start) + 1}")  # same PID, another process
    assert not owner.alive(f"{'0' * 8 if boot != '0' * 8 else '1' * 8}-{pid}-{start}")  # another boot
    assert not owner.alive(_dead_token())
    assert not owner.alive("garbage")


_MAKE_TEMP = """
import os, signal, sys, time
from pathlib import Path
from evolve import owner
from evolve.synth.output import SnapshotRepo

with owner.temp_dir("gw") as gw, owner.temp_dir("task") as task:
    (Path(gw) / "gateway.sock").write_text("")
    repo = SnapshotRepo(Path(sys.argv[2]))  # its index directory (evolve-index-* before the scratch directory)
    print(owner.scratch(), flush=True)
    if sys.argv[1] == "exit":
        os._exit(0)  # no cleanup runs: no atexit, no finalizers
    if sys.argv[1] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    sys.stdin.read()  # "live": until the test closes stdin, then a normal exit cleans up
"""


def _evolve(*args: str, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from evolve.cli import main; main()", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def _temp_env(tmp_path: Path) -> dict:
    temp = tmp_path / "t"
    temp.mkdir(exist_ok=True)
    return {**os.environ, "TMPDIR": str(temp), "EVOLVE_HOME": str(tmp_path / "home"),
            "PYTHONPATH": str(Path(__file__).resolve().parents[1])}


def test_temp_dirs_of_killed_processes_are_swept_by_the_next_command(tmp_path: Path):
    env = _temp_env(tmp_path)
    temp = Path(env["TMPDIR"])
    left = []
    for how in ("exit", "kill"):
        proc = subprocess.run([sys.executable, "-c", _MAKE_TEMP, how, str(tmp_path / f"snap-{how}")], env=env,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == (0 if how == "exit" else -signal.SIGKILL), proc.stderr
        scratch = Path(proc.stdout.strip())
        assert scratch.parent == temp and scratch.name.startswith("evolve-")
        assert sorted(p.name.split("-")[0] for p in scratch.iterdir()) == ["gw", "index", "task"]
        left.append(scratch)
    live = subprocess.Popen([sys.executable, "-c", _MAKE_TEMP, "live", str(tmp_path / "snap-live")], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        live_scratch = Path(live.stdout.readline().strip())
        assert live_scratch.is_dir()
        legacy = temp / f"evolve-gw-{_dead_token()}-abc"  # one directory per temp dir, as before scratch
        (legacy / "gw").mkdir(parents=True)
        foreign = temp / "evolve-gw-abc"  # no token: not ours to judge
        foreign.mkdir()
        other_user = temp / f"evolve-{_dead_token()}-zzz"  # a dead token, but not this user's directory
        other_user.mkdir()
        os.chown(other_user, 65534, 65534)
        target = tmp_path / "precious"  # a symlink named like a leftover must not lead the sweep elsewhere
        target.mkdir()
        (target / "keep").write_text("x")
        link = temp / f"evolve-{_dead_token()}-lnk"
        link.symlink_to(target)
        assert all(p.is_dir() for p in left)

        done = _evolve("evals", "list", env=env, cwd=tmp_path)  # any command sweeps first
        assert done.returncode == 0, done.stderr
        assert not any(p.exists() for p in left) and not legacy.exists()
        assert live_scratch.is_dir() and len(list(live_scratch.iterdir())) == 3
        assert foreign.is_dir() and other_user.is_dir() and (target / "keep").read_text() == "x"
        assert link.is_symlink()
    finally:
        live.stdin.close()
        live.wait(timeout=60)
    assert live.returncode == 0
    assert not live_scratch.exists()  # a normal exit removes its own scratch directory


def test_a_leftover_that_cannot_be_removed_is_reported(tmp_path: Path):
    if shutil.which("chattr") is None:
        pytest.skip("chattr (e2fsprogs) is needed to make a file that even root cannot remove")
    env = _temp_env(tmp_path)
    stuck = Path(env["TMPDIR"]) / f"evolve-{_dead_token()}-stuck"
    (stuck / "task-x").mkdir(parents=True)
    (stuck / "task-x" / "f").write_text("")
    made = subprocess.run(["chattr", "+i", str(stuck / "task-x")], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"this file system has no immutable flag: {made.stderr.strip()}")
    try:
        done = _evolve("evals", "list", env=env, cwd=tmp_path)
        assert done.returncode == 0, done.stderr  # a leftover never stops the command...
        assert "could not remove" in done.stderr and str(stuck) in done.stderr  # ...and is not swallowed
        assert (stuck / "task-x" / "f").exists()
    finally:
        subprocess.run(["chattr", "-i", str(stuck / "task-x")], check=True)


def test_atomic_write_temp_files_of_dead_owners_are_removed(tmp_path: Path):
    gens = tmp_path / "generations"
    store.atomic_write(gens / "g001.json", "{}")
    assert [p.name for p in gens.iterdir()] == ["g001.json"]
    orphan = gens / f".g002.json.~{_dead_token()}~abcd1234"
    mine = gens / f".g003.json.~{owner.current()}~abcd1234"  # a write in progress
    old = gens / ".g004.json.abcd1234"  # made before tokens, a day old
    recent = gens / ".g005.json.abcd1234"
    for p in (orphan, mine, old, recent):
        p.write_text("{")
    os.utime(old, (0, 0))
    assert store.remove_orphans(tmp_path) == 2
    assert sorted(p.name for p in gens.iterdir()) == sorted(["g001.json", mine.name, recent.name])


def test_eval_left_running_by_a_dead_owner_reads_interrupted(tmp_path: Path):
    def run(name: str, **fields) -> Path:
        store.atomic_write_json(tmp_path / name / "run.json", {"run_id": name, "kind": "eval", **fields})
        return tmp_path / name / "run.json"

    killed = run("killed", status="running", owner=_dead_token())
    live = run("live", status="running", owner=owner.current())
    legacy = run("legacy", status="running")
    done = run("done", status="finished", owner=_dead_token())
    assert store.mark_dead_runs(tmp_path) == ["killed"]
    meta = json.loads(killed.read_text())
    assert meta["status"] == "interrupted" and "died" in meta["error"]
    assert [json.loads(p.read_text())["status"] for p in (live, legacy, done)] == ["running", "running", "finished"]
