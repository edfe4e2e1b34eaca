"""What a killed evolve process leaves is found by its owner token and removed; no Docker needed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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


def test_temp_dirs_of_dead_owners_are_swept(tmp_path: Path):
    dead = tmp_path / f"evolve-gw-{_dead_token()}-abc"
    (dead / "gw").mkdir(parents=True)
    (dead / "gw" / "gateway.sock").write_text("")
    foreign = tmp_path / "evolve-gw-abc"  # no token: not ours to judge
    foreign.mkdir()
    with owner.temp_dir("task", tmp_path) as live:
        assert Path(live).name.startswith(f"evolve-task-{owner.current()}-")
        assert owner.sweep_temp_dirs(tmp_path) == 1
        assert Path(live).is_dir()
    assert not dead.exists()
    assert foreign.is_dir()


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
