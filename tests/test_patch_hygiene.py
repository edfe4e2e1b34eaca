"""Patch hygiene and results that must not be lost or mislabelled (the agent phase).

The ``model_patch`` is bytes end to end (``git diff --binary``, byte for byte);
huge untracked files are left out of it with a note; a diff too large to keep
is the candidate's ``patch_too_large``, never infra nor ``empty_patch``; a
harness timed out only when it ran up to the limit; a harness that wrote no
trajectory is flagged.
"""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

import pytest

from evolve.evalsets.registry import load_evalset
from evolve.evaluate import merge_flags, patch_fields
from evolve.testbed import LARGE_UNTRACKED_BYTES, MAX_PATCH_BYTES, taken_patch
from evolve.types import FailureClass, IntegrityFlag, TaskResult
from test_eval import evaluate, make_harness

FIX = "sed -i '0,/return a - b/s//return a + b/' /testbed/calc.py\n"
TRAJECTORY = "echo '{\"messages\": []}' > \"$EVOLVE_OUTPUT_DIR/trajectory.json\"\n"


# -- no docker -------------------------------------------------------------------------------------

def test_patch_fields_keep_the_exact_bytes():
    text = "diff --git a/x b/x\n+caf\u00e9\r\n".encode()
    fields = patch_fields(text)
    assert fields == {"model_patch": text.decode(), "model_patch_encoding": "utf-8"}
    raw = b"diff --git a/x b/x\n+caf\xe9\x00\xff\n"
    fields = patch_fields(raw)
    assert fields["model_patch_encoding"] == "base64" and base64.b64decode(fields["model_patch"]) == raw
    for patch in (text, raw, b""):
        r = TaskResult(instance_id="t", key="k", failure_class=FailureClass.NONE, **patch_fields(patch))
        assert TaskResult.model_validate_json(r.model_dump_json()).patch_bytes() == patch


def test_flags_are_merged_once_in_definition_order():
    got = merge_flags([IntegrityFlag.LARGE_FILES_SKIPPED, IntegrityFlag.TRAJECTORY_MISSING],
                      [IntegrityFlag.TEST_FILES_CHANGED, IntegrityFlag.LARGE_FILES_SKIPPED])
    assert got == [IntegrityFlag.TEST_FILES_CHANGED, IntegrityFlag.TRAJECTORY_MISSING,
                   IntegrityFlag.LARGE_FILES_SKIPPED]


def test_taken_patch_reads_sizes_lists_and_errors():
    listed = b"7340032 -dash\x002147483648 we\"ird\nna'me\x00123 cut sh"
    t = taken_patch({"model.patch": b"diff\n", "large_files": listed, "large_files.count": b"3\n"})
    assert t.patch == b"diff\n" and t.total_bytes == 5 and t.problem is None
    assert t.large_files == ((b"-dash", 7340032), (b"we\"ird\nna'me", 2147483648)) and t.large_files_count == 3
    big = taken_patch({"model.patch": b"", "patch_size": b"25000000\n"})
    assert big.patch == b"" and big.total_bytes == 25_000_000 and "25000000 bytes" in big.problem
    bad = taken_patch({"model.patch": b"", "diff_error": b"git add: fatal: adding files failed"})
    assert bad.problem.startswith("could not diff: git add") and bad.patch == b""


# -- docker ------------------------------------------------------------------------------------------

def _clone_at_base(mini_evalset: Path, dest: Path) -> Path:
    ev = load_evalset(str(mini_evalset))
    task = next(t for t in ev.tasks("search") if t.instance_id == "mini__calc-1")
    subprocess.run(["git", "clone", "-q", str(ev.repo_dir(task)), str(dest)], check=True)
    subprocess.run(["git", "-C", str(dest), "checkout", "-q", task.base_commit], check=True)
    return dest


def _large_notes(r: TaskResult) -> list[str]:
    return [n for n in r.integrity_notes if n.startswith("large_files_skipped:")]


def _apply(clone: Path, patch: bytes) -> None:
    proc = subprocess.run(["git", "-C", str(clone), "apply", "--verbose", "-"], input=patch, capture_output=True)
    assert proc.returncode == 0, proc.stderr.decode("utf-8", "replace")


LATIN1 = r'''
import os, pathlib
calc = pathlib.Path('/testbed/calc.py')
src = calc.read_bytes()
calc.write_bytes(b"# -*- coding: latin-1 -*-\n" + src.replace(b"return a - b", b"return a + b", 1)
                 + b'CAFE = "caf\xe9 cr\xe8me"\r\n')
pathlib.Path('/testbed/blob.bin').write_bytes(bytes(range(256)) * 3 + b"\r\n\x00end")
pathlib.Path(os.environ['EVOLVE_OUTPUT_DIR'], 'trajectory.json').write_text('{"messages": []}')
'''


@pytest.mark.docker
def test_a_non_utf8_fix_and_a_binary_file_survive_byte_exact(mini_evalset, base_image, tmp_path):
    h = make_harness(tmp_path, "latin1", {"fix.py": LATIN1}, "python3 fix.py")
    report = evaluate(mini_evalset, h, tmp_path / "runs")
    (r,) = report.results
    assert not r.is_infra, r.error
    assert r.resolved and r.failure_class is FailureClass.NONE, r
    assert r.model_patch_encoding == "base64"
    patch = r.patch_bytes()
    assert r.patch_bytes_total == len(patch) and b"GIT binary patch" in patch
    assert IntegrityFlag.TRAJECTORY_MISSING not in r.integrity_flags
    # The stored model.patch is the same bytes.
    assert (report.run_dir / "tasks/mini__calc-1/r0/model.patch").read_bytes() == patch
    preds = [json.loads(line) for line in (report.run_dir / "predictions.jsonl").read_text().splitlines()]
    assert preds[0]["model_patch_encoding"] == "base64" and base64.b64decode(preds[0]["model_patch"]) == patch

    clone = _clone_at_base(mini_evalset, tmp_path / "clone")
    original = (clone / "calc.py").read_bytes()
    _apply(clone, patch)
    assert (clone / "calc.py").read_bytes() == (b"# -*- coding: latin-1 -*-\n"
                                                + original.replace(b"return a - b", b"return a + b", 1)
                                                + b'CAFE = "caf\xe9 cr\xe8me"\r\n')
    assert (clone / "blob.bin").read_bytes() == bytes(range(256)) * 3 + b"\r\n\x00end"


@pytest.mark.docker
def test_a_huge_untracked_file_is_left_out_and_the_fix_still_counts(mini_evalset, base_image, tmp_path):
    h = make_harness(tmp_path, "huge", {"h.sh": FIX + "truncate -s 2G /testbed/huge.dat\n"
                                        "mkdir -p /testbed/__pycache__ && truncate -s 6M /testbed/__pycache__/x.pyc\n"
                                        + TRAJECTORY}, "sh h.sh")
    report = evaluate(mini_evalset, h, tmp_path / "runs")
    (r,) = report.results
    assert not r.is_infra, r.error
    assert r.resolved and r.failure_class is FailureClass.NONE
    assert IntegrityFlag.LARGE_FILES_SKIPPED in r.integrity_flags
    # Ignored files are not in the patch anyway: not listed.
    assert _large_notes(r) == [f'large_files_skipped: "huge.dat" (2147483648 bytes) is untracked and over '
                               f'{LARGE_UNTRACKED_BYTES} bytes: left out of the model_patch']
    assert "huge.dat" not in r.model_patch and "x.pyc" not in r.model_patch
    assert "+    return a + b" in r.model_patch


@pytest.mark.docker
def test_a_tracked_file_grown_too_large_is_patch_too_large(mini_evalset, base_image, tmp_path):
    grow = FIX + ("python3 -c \"open('/testbed/calc.py', 'a').write('# padding padding padding padding\\n' "
                  "* 700000)\"\n") + TRAJECTORY
    h = make_harness(tmp_path, "grow", {"g.sh": grow}, "sh g.sh")
    report = evaluate(mini_evalset, h, tmp_path / "runs")
    (r,) = report.results
    assert not r.is_infra and r.error is None
    assert r.failure_class is FailureClass.PATCH_TOO_LARGE and not r.resolved
    assert r.patch_bytes_total > MAX_PATCH_BYTES
    assert r.model_patch == "" and r.grade_seconds == 0 and not r.FAIL_TO_PASS
    assert any(n.startswith("patch_too_large:") and str(r.patch_bytes_total) in n for n in r.integrity_notes)


@pytest.mark.docker
def test_a_diff_git_cannot_make_is_the_candidates_failure_not_infra(mini_evalset, base_image, tmp_path):
    # An empty repository inside /testbed makes `git add -A` fail.
    h = make_harness(tmp_path, "nested", {"n.sh": FIX + "mkdir /testbed/scratch && cd /testbed/scratch "
                                          "&& git init -q\n" + TRAJECTORY}, "sh n.sh")
    report = evaluate(mini_evalset, h, tmp_path / "runs")
    (r,) = report.results
    assert not r.is_infra and r.error is None and r.attempts == 1
    assert r.failure_class is FailureClass.PATCH_TOO_LARGE and not r.resolved
    assert any(n.startswith("patch_too_large: could not diff: git add") for n in r.integrity_notes), \
        r.integrity_notes


@pytest.mark.docker
@pytest.mark.parametrize("end, code", [("kill -9 $$", 137), ("exit 124", 124), ("exit 137", 137)])
def test_a_harness_ending_early_with_a_timeout_like_status_did_not_time_out(mini_evalset, base_image, tmp_path,
                                                                           end, code):
    h = make_harness(tmp_path, "early", {"e.sh": FIX + TRAJECTORY + end + "\n"}, "sh e.sh")
    report = evaluate(mini_evalset, h, tmp_path / "runs", timeout=60)
    (r,) = report.results
    assert not r.is_infra, r.error
    assert not r.harness_timed_out and r.harness_exit_code == code
    assert r.resolved  # its fix still counts


@pytest.mark.docker
def test_a_harness_that_writes_no_trajectory_is_flagged(mini_evalset, base_image, tmp_path):
    h = make_harness(tmp_path, "silent", {}, FIX.strip())
    report = evaluate(mini_evalset, h, tmp_path / "runs")
    (r,) = report.results
    assert not r.is_infra, r.error
    assert r.resolved and IntegrityFlag.TRAJECTORY_MISSING in r.integrity_flags
    assert any("trajectory.json" in n for n in r.integrity_notes)


WEIRD = r'''
import os, pathlib
root = pathlib.Path('/testbed')
calc = root / 'calc.py'
calc.write_text(calc.read_text().replace('return a - b', 'return a + b', 1))
(root / 'we"ird\nna\'me $(touch x) .txt').write_bytes(b'small\n')
(root / 'big "one"\n\'two\'.bin').write_bytes(b'\0' * 6_000_000)
(root / '-n').write_bytes(b'\0' * 6_000_001)
(root / 'st*ar').write_bytes(b'\0' * 6_000_002)
(root / 'st-glob-ar').write_bytes(b'kept\n')
pathlib.Path(os.environ['EVOLVE_OUTPUT_DIR'], 'trajectory.json').write_text('{}')
'''


@pytest.mark.docker
def test_file_names_with_newlines_and_quotes_do_not_break_collection(mini_evalset, base_image, tmp_path):
    h = make_harness(tmp_path, "weird", {"w.py": WEIRD}, "python3 w.py")
    report = evaluate(mini_evalset, h, tmp_path / "runs")
    (r,) = report.results
    assert not r.is_infra, r.error
    assert r.resolved and IntegrityFlag.LARGE_FILES_SKIPPED in r.integrity_flags
    assert sorted(_large_notes(r)) == sorted(
        f"large_files_skipped: {json.dumps(name)} ({size} bytes) is untracked and over {LARGE_UNTRACKED_BYTES} "
        "bytes: left out of the model_patch"
        for name, size in [('big "one"\n\'two\'.bin', 6_000_000), ("-n", 6_000_001), ("st*ar", 6_000_002)])
    clone = _clone_at_base(mini_evalset, tmp_path / "clone")
    _apply(clone, r.patch_bytes())
    assert (clone / 'we"ird\nna\'me $(touch x) .txt').read_bytes() == b"small\n"
    assert (clone / "st-glob-ar").read_bytes() == b"kept\n"  # `st*ar` excluded literally, not as a glob
    assert not (clone / "x").exists() and not (clone / "-n").exists() and not (clone / "st*ar").exists()
