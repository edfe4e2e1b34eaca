"""Run files that are damaged, torn or unwritable give an EvolveError saying how to recover; a killed
run's state reads as interrupted; a deleted record is rebuilt from git. Real loop, no Docker."""

from __future__ import annotations

import json

import pytest

from loop_support import make_loop, make_project

from evolve.errors import EvolveError
from evolve.lessons import Lesson, append, append_once, load
from evolve.runstate import RunFileError, RunLock, RunStore


@pytest.fixture
def finished_run(tmp_path):
    """A repo with a finished two-generation run (accepted, rejected): (repo, run_id)."""
    repo = make_project(tmp_path, generations=2)
    loop, close = make_loop(repo)
    try:
        loop.run()
    finally:
        close()
    return repo, loop.run_id


def resume(repo, run, generations=None):
    loop, close = make_loop(repo, run)
    try:
        return loop, loop.run(generations=generations)
    finally:
        close()


def test_truncated_state_says_how_to_recover(finished_run):
    repo, run = finished_run
    path = repo / "runs" / run / "state.json"
    path.write_text(path.read_text()[:40])
    with pytest.raises(RunFileError, match="state.json is damaged.*To recover"):
        resume(repo, run)


def test_a_damaged_record_deleted_is_rebuilt_from_git(finished_run):
    repo, run = finished_run
    store = RunStore(repo / "runs", run)
    before = store.gens()
    store.gen_path(1).write_text('{"gen": 1, "par')
    with pytest.raises(RunFileError, match=r"g001.json is damaged.*delete it"):
        store.gens()
    store.gen_path(1).unlink()
    loop, state = resume(repo, run, generations=2)
    after = store.gens()
    assert [g.status for g in after] == ["accepted", "rejected"]
    assert after[0].verdict_commit == before[0].verdict_commit == state.best
    assert after[0].fixed == before[0].fixed and after[0].delta == before[0].delta
    assert [entry.outcome for entry in load(store.lessons_path)] == ["accepted", "rejected"]
    assert any("rebuilt" in note for e in store.events() if e["event"] == "resume" for note in e["notes"])


def test_torn_lesson_and_event_lines_are_repaired_on_resume(finished_run):
    repo, run = finished_run
    store = RunStore(repo / "runs", run)
    with open(store.lessons_path, "a") as f:
        f.write('{"generation": 3, "outc')
    with open(store.dir / "events.jsonl", "a") as f:
        f.write('{"ts": "x", "ev')
    assert [entry.generation for entry in load(store.lessons_path)] == [1, 2]
    resume(repo, run, generations=3)
    lessons = [json.loads(line) for line in store.lessons_path.read_text().splitlines()]
    assert [entry["generation"] for entry in lessons] == [1, 2, 3]
    assert store.events()[-1]["event"] == "holdout"


def test_a_bad_lesson_line_in_the_middle_is_an_error(tmp_path):
    path = tmp_path / "lessons.jsonl"
    append(path, Lesson(generation=1, outcome="failed"))
    path.write_text(path.read_text() + "garbage\n")
    append(path, Lesson(generation=2, outcome="failed"))
    with pytest.raises(EvolveError, match="line 2: not a valid lesson.*Delete that line"):
        load(path)


def test_the_jsonl_reader_leaves_out_only_a_torn_last_line(tmp_path):
    from evolve.store import append_jsonl, read_jsonl, read_jsonl_lines

    path = tmp_path / "log.jsonl"
    assert list(read_jsonl(path)) == []  # missing: empty
    append_jsonl(path, {"n": 1, "text": "a\u2028b\rc"})  # JSON may hold U+2028 unescaped
    with open(path, "ab") as f:
        f.write('{"n": 2, "text": "a\u2028b"}\n\n'.encode())  # as the trace writes it; a blank line
        f.write(b'{"n": 3, "tex')  # a kill during the third append
    assert [(n, r["n"], r["text"]) for n, r in read_jsonl_lines(path)] == [(1, 1, "a\u2028b\rc"),
                                                                          (2, 2, "a\u2028b")]
    with open(path, "ab") as f:
        f.write(b't": "x"}')  # the same line, whole but without its newline: a record
    assert [r["n"] for r in read_jsonl(path)] == [1, 2, 3]
    with open(path, "ab") as f:
        f.write(b'\n[1, 2]\n{"n": 5}\n')  # a damaged line before the end: never skipped
    with pytest.raises(RunFileError, match=r"log.jsonl, line 5: not a JSON object. Delete it, please"):
        list(read_jsonl(path, fix="Delete it, please."))


def test_a_torn_last_line_is_ended_before_the_next_append(tmp_path):
    from evolve.store import append_jsonl, end_torn_line, read_jsonl

    path = tmp_path / "log.jsonl"
    end_torn_line(path)  # missing: nothing to do
    assert not path.exists()
    append_jsonl(path, {"n": 1})
    with open(path, "ab") as f:
        f.write(b'{"n": 2, "big": "' + b"x" * 200_000)  # torn, longer than one piece read back
    end_torn_line(path)
    append_jsonl(path, {"n": 3})
    assert [r["n"] for r in read_jsonl(path)] == [1, 3]
    with open(path, "ab") as f:
        f.write(b'{"n": 4}')  # whole but without its newline: a record, kept
    end_torn_line(path)
    append_jsonl(path, {"n": 5})
    assert [r["n"] for r in read_jsonl(path)] == [1, 3, 4, 5]
    path.write_bytes(b'{"n": 6')  # a torn first and only line
    end_torn_line(path)
    assert path.read_bytes() == b""


def test_lessons_are_appended_once_per_generation(tmp_path):
    path = tmp_path / "lessons.jsonl"
    assert append_once(path, Lesson(generation=1, outcome="accepted"))
    assert not append_once(path, Lesson(generation=1, outcome="failed"))
    append(path, Lesson(generation=1, outcome="rejected"))  # an old log's superseding line
    assert [entry.outcome for entry in load(path)] == ["rejected"]


def test_unwritable_run_files_are_an_evolve_error(finished_run):
    repo, run = finished_run
    gens = repo / "runs" / run / "generations"
    for p in gens.iterdir():
        p.unlink()
    gens.rmdir()
    gens.write_text("not a folder")  # as good as read-only, even for root
    with pytest.raises(RunFileError, match="cannot write the run's files.*--resume"):
        resume(repo, run, generations=3)


def test_unwritable_lock_is_an_evolve_error(tmp_path):
    (tmp_path / "runs").write_text("a file where the runs folder should be")
    with pytest.raises(RunFileError, match="cannot create the run lock"):
        with RunLock(tmp_path / "runs"):
            pass


def test_a_dead_owner_reads_as_interrupted(finished_run):
    repo, run = finished_run
    store = RunStore(repo / "runs", run)
    path = store.dir / "state.json"
    data = json.loads(path.read_text())
    data.update(status="running", pid=2 ** 22 + 1)
    path.write_text(json.dumps(data))
    assert store.load().status == "interrupted" and "--resume" in store.load().stop_reason
    with RunLock(repo / "runs"):  # held by a live owner (us) with a dead pid: still dead
        assert store.load().status == "interrupted"
    data["pid"] = None
    path.write_text(json.dumps(data))
    with RunLock(repo / "runs"):  # held, pid unknown: alive
        assert store.load().status == "running"
