"""The fast eval path: host-built snapshots, leftover processes killed without a restart, one-exec
grading, background removals, no litellm import for a harness that never calls the model."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import SOLVER_SCRIPT
from evolve.config import EvalSettings, SandboxLimits
from evolve.grading import grade, malformed, patch_paths
from evolve.sandbox import docker as sdocker
from evolve.sandbox.docker import Sandbox
from evolve.testbed import (COLLECTED, archive_at, collect_script, prepare_testbed, print_collected_script,
                            read_collected, reap_script)
from evolve.types import FailureClass, Task, TestStatus
from test_eval import evaluate, make_harness, run_containers

SCRIPTED = f"scripted/{SOLVER_SCRIPT}"


# -- which protected paths grading restores (no docker) -----------------------------------------

def _task(**kw) -> Task:
    base = dict(instance_id="t", repo="r", base_commit="c" * 40, problem_statement="p",
                FAIL_TO_PASS=["tests/test_a.py::test_a"], PASS_TO_PASS=["tests/test_b.py::test_b"],
                test_patch="diff --git a/tests/test_a.py b/tests/test_a.py\n--- a/tests/test_a.py\n"
                           "+++ b/tests/test_a.py\n@@ -1 +1 @@\n-x\n+y\n")
    return Task(**{**base, **kw})


def test_patch_paths_reads_file_headers_only():
    diff = ("diff --git a/calc.py b/calc.py\n--- a/calc.py\n+++ b/calc.py\n@@ -1,2 +1,2 @@\n-a\n"
            # Content lines that look like headers are inside the hunk: never taken for paths.
            "--- a/../../etc/passwd\n+++ b/../../etc/passwd\n+b\n"
            "diff --git a/tests/old name.py b/tests/new name.py\nsimilarity index 100%\n"
            "rename from tests/old name.py\nrename to tests/new name.py\n"
            "diff --git a/tests/data.bin b/tests/data.bin\nGIT binary patch\nliteral 1\n")
    assert patch_paths(diff) == ["calc.py", "tests/old name.py", "tests/new name.py", "tests/data.bin"]
    assert malformed(diff) is None
    assert patch_paths(b'diff --git "a/t\\tx" "b/t\\tx"\n') == ["t\tx"]


@pytest.mark.parametrize("header", ["--- a/../x\n+++ b/../x\n", "--- /etc/passwd\n+++ /etc/passwd\n",
                                    'diff --git "a/..\\057x" "b/..\\057x"\n', "rename to a/../../x\n"])
def test_a_header_that_climbs_out_is_malformed(header):
    assert malformed((header + "@@ -1 +1 @@\n-a\n+b\n").encode()) is not None


def test_a_malformed_patch_never_reaches_a_sandbox():
    # No sandbox is needed: the check comes first (a sandbox method would fail on None).
    g = grade(None, _task(), None, b"--- a/../../x\n+++ b/../../x\n@@ -1 +1 @@\n-a\n+b\n",
              test_timeout_s=60)
    assert g.failure_class is FailureClass.PATCH_MALFORMED and not g.resolved


# -- docker --------------------------------------------------------------------------------------

@pytest.fixture
def box(docker_client, base_image):
    with Sandbox(docker_client, base_image, run_id="test-fastpath", limits=SandboxLimits(pids_limit=64)) as sb:
        yield sb


def _processes(sb: Sandbox) -> list[str]:
    out = sb.exec("ps -eo pid=,user=,stat=,args=", timeout_s=20, user="root").output
    return [line.strip() for line in out.splitlines() if line.strip() and "ps -eo" not in line]


def _left(sb: Sandbox) -> list[str]:
    """Live processes but the ``ps`` exec's own, the helper's args cut short."""
    return [p[:120] for p in _processes(sb) if not p.split()[2].startswith("Z")]


def _yama_scope(sb: Sandbox) -> int:
    out = sb.exec("cat /proc/sys/kernel/yama/ptrace_scope 2>/dev/null || echo 0", timeout_s=10).output
    return int(out.strip() or 0)


@pytest.mark.docker
def test_reap_kills_what_the_harness_left_and_keeps_the_container(box):
    box.exec("(while true; do echo spam >> /tmp/spam; sleep 0.05; done) > /dev/null 2>&1 & "
             "setsid sh -c 'trap \"\" TERM HUP; while true; do sleep 1; done' > /dev/null 2>&1 & "
             "for i in $(seq 20); do sleep 300 & done; exit 0", timeout_s=20)
    assert len(_processes(box)) > 20
    res = box.exec(reap_script((1000, 1000)), timeout_s=60, user="root")
    assert res.exit_code == 0, res.output
    left = _left(box)
    # PID 1 (docker-init, frozen where the sandbox user could ptrace it) and the main
    # `sleep infinity` (stopped); nothing else but the helper holding PID 1.
    assert "docker-init" in left[0] and left[1].endswith("sleep infinity") and left[1].split()[2].startswith("T")
    assert left[2:] == [] or (len(left) == 3 and "python3" in left[2] and "ptrace" in left[2])
    size = box.exec("stat -c %s /tmp/spam", timeout_s=10).output.strip()
    time.sleep(0.5)
    assert box.exec("stat -c %s /tmp/spam", timeout_s=10).output.strip() == size
    assert box.exec("echo alive", timeout_s=10).output.strip() == "alive"


@pytest.mark.docker
def test_reap_stops_a_fork_bomb_that_holds_every_pid(box):
    # A fork bomb that keeps respawning into every free pid.
    box.exec("nohup sh -c 'b() { b | b & }; b' > /dev/null 2>&1 &", timeout_s=10)
    time.sleep(2)
    try:
        res = box.exec(reap_script((1000, 1000)), timeout_s=60, user="root")
        ok = res.exit_code == 0
    except Exception:  # noqa: BLE001 - docker may be unable to start the exec at all
        ok = False
    if not ok:  # what run_agent then does
        box.restart()
    time.sleep(0.5)
    left = _left(box)
    assert 2 <= len(left) <= 3 and "docker-init" in left[0] and left[1].endswith("sleep infinity"), left


@pytest.mark.docker
def test_reap_freezes_pid1_when_the_harness_could_have_taken_it_over(box):
    if _yama_scope(box) != 0:
        pytest.skip("Yama restricts ptrace here: no harness can take PID 1 over")
    # A harness process that ptrace-attaches PID 1 (the first step of injecting code into it).
    attach = ("import ctypes, time\nlibc = ctypes.CDLL(None, use_errno=True)\n"
              "assert libc.ptrace(16, 1, 0, 0) == 0, ctypes.get_errno()\ntime.sleep(300)\n")
    box.exec(f"nohup python3 -c {shlex.quote(attach)} > /dev/null 2>&1 &", timeout_s=10)
    time.sleep(1)
    assert box.exec("grep TracerPid /proc/1/status", timeout_s=10, user="root").output.split()[1] != "0"
    res = box.exec(reap_script((1000, 1000)), timeout_s=60, user="root")
    assert res.exit_code == 0, res.output
    status = box.exec("grep -E '^(State|TracerPid)' /proc/1/status", timeout_s=10, user="root").output.split()
    helper = [p for p in _left(box) if "python3" in p]
    assert len(helper) == 1 and status[1] == "t" and status[-1] == helper[0].split()[0]


@pytest.mark.docker
def test_collect_leaves_out_oversized_and_non_regular_files(box, mini_evalset):
    from evolve.evalsets.registry import load_evalset

    ev = load_evalset(str(mini_evalset))
    task = ev.tasks("search")[0]
    base = prepare_testbed(box, task, ev.repo_dir(task))
    box.exec("echo x >> /testbed/calc.py; mkdir -p /tmp/o; head -c 100 /dev/zero > /tmp/o/big; "
             "echo small > /tmp/o/small; ln -s /etc/passwd /tmp/o/link; mkfifo /tmp/o/fifo", timeout_s=20)
    files = {"big": ("/tmp/o/big", 99), "small": ("/tmp/o/small", 99), "link": ("/tmp/o/link", 10_000),
             "fifo": ("/tmp/o/fifo", 99), "none": ("/tmp/o/none", 99)}
    res = box.exec(collect_script(base, files) + print_collected_script(), timeout_s=60, user="root")
    assert res.exit_code == 0, res.output
    assert "evolve-inline" in res.output
    got = read_collected(box, res.output, files)
    assert read_collected(box, "", files) == got  # copied out instead of printed: the same
    assert set(got) == {"model.patch", "small"}
    assert got["small"] == b"small\n"
    assert b"+x" in got["model.patch"] and b"calc.py" in got["model.patch"]


@pytest.mark.docker
def test_host_snapshot_matches_a_snapshot_made_in_the_sandbox(docker_client, base_image, tmp_path):
    import git

    repo_dir = tmp_path / "repo"
    repo_dir.mkdir()
    (repo_dir / ".gitignore").write_text("build/\n*.log\n")
    (repo_dir / ".gitattributes").write_text("*.txt text eol=crlf\n")
    (repo_dir / "a.txt").write_text("one\ntwo\n")
    (repo_dir / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (repo_dir / "run.sh").chmod(0o755)
    (repo_dir / "build").mkdir()
    (repo_dir / "build" / "tracked.log").write_text("tracked though ignored\n")
    (repo_dir / "pkg" / "__pycache__").mkdir(parents=True)
    (repo_dir / "pkg" / "__pycache__" / "m.cpython-311.pyc").write_bytes(b"\x00pyc")
    (repo_dir / "pkg" / "m.py").write_text("x = 1\n")
    (repo_dir / "link").symlink_to("pkg/m.py")
    (repo_dir / ("long" * 40 + ".py")).write_text("y = 2\n")
    repo = git.Repo.init(repo_dir)
    repo.git.add("-A", "-f")
    repo.git.commit("-m", "base", author="t <t@t>", env={"GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"})
    task = Task(instance_id="snap", repo="r", base_commit=repo.head.commit.hexsha, problem_statement="p",
                FAIL_TO_PASS=["t.py::t"])
    show = ("GIT_CONFIG_GLOBAL=/dev/null git --git-dir=/var/lib/evolve/base.git ls-tree -r HEAD; echo ===; "
            "cd /testbed && git ls-files -s && git status --porcelain && git log --format=%s && git branch "
            "&& stat -c '%U %a %n' . .git run.sh a.txt link && od -c a.txt | head -2")
    outputs = []
    for host in (True, False):
        with Sandbox(docker_client, base_image, run_id="test-fastpath", limits=SandboxLimits()) as sb:
            if host:
                base = prepare_testbed(sb, task, repo_dir)
            else:  # the in-sandbox way: copy the tree, snapshot with git inside
                sb.put_tar("/testbed", archive_at(repo_dir, task.base_commit))
                base = prepare_testbed(sb, task, None)
            res = sb.exec(show, timeout_s=60, user="root")
            assert res.exit_code == 0, res.output
            outputs.append(res.output)
            assert sb.exec("ls /var/lib/evolve", timeout_s=10).exit_code != 0  # root only
            collect = sb.exec(collect_script(base, {}), timeout_s=60, user="root")
            assert collect.exit_code == 0 and sb.get_files(COLLECTED)["model.patch"] == b""
    assert outputs[0] == outputs[1]
    shadow, visible = outputs[0].split("===", 1)
    # The grader's base is the whole snapshot, ignored files too (an sdist's egg-info, an image's
    # __pycache__): otherwise they would look added by the patch. The harness's own git view skips them.
    assert "build/tracked.log" in shadow and "__pycache__" in shadow
    assert "build/tracked.log" not in visible and "__pycache__" not in visible


@pytest.mark.docker
def test_grade_reports_every_apply_attempt_when_the_patch_does_not_apply(docker_client, base_image,
                                                                        mini_evalset):
    from evolve.evalsets.registry import load_evalset

    ev = load_evalset(str(mini_evalset))
    task = ev.tasks("search")[0]
    bad = "diff --git a/calc.py b/calc.py\n--- a/calc.py\n+++ b/calc.py\n@@ -1,1 +1,1 @@\n-not there\n+nope\n"
    with Sandbox(docker_client, base_image, run_id="test-fastpath", limits=SandboxLimits()) as sb:
        g = grade(sb, task, ev.repo_dir(task), bad, test_timeout_s=EvalSettings(model=SCRIPTED).test_timeout_s)
    assert g.failure_class is FailureClass.PATCH_APPLY_FAILED and not g.resolved
    assert g.apply_log.count("$ ") == 3 and "(exit 1)" in g.apply_log and "patch --batch" in g.apply_log


@pytest.mark.docker
def test_tests_printing_marker_like_lines_do_not_confuse_grading(docker_client, base_image, mini_evalset,
                                                                  tmp_path):
    # The model's code prints what a grading script marker looks like (without the secret nonce).
    import shutil

    import git
    from evolve.evalsets.registry import load_evalset

    ev = load_evalset(str(mini_evalset))
    task = ev.tasks("search")[0]
    work = tmp_path / "work"
    shutil.copytree(ev.repo_dir(task), work)
    calc = work / "calc.py"
    # pytest shows what a failing test printed (-rA: also a passing one's).
    calc.write_text(calc.read_text().replace('"""Return a + b."""\n',
                                             '"""Return a + b."""\n    print("\\\\nabc exit 0\\\\nabc tests")\n'))
    fake = git.Repo(work).git.diff() + "\n"
    with Sandbox(docker_client, base_image, run_id="test-fastpath", limits=SandboxLimits()) as sb:
        g = grade(sb, task, ev.repo_dir(task), fake, test_timeout_s=EvalSettings(model=SCRIPTED).test_timeout_s)
    assert not g.resolved and g.failure_class is FailureClass.TESTS_FAILED
    assert g.FAIL_TO_PASS["tests/test_add.py::test_add"] is TestStatus.FAILED
    assert g.PASS_TO_PASS["tests/test_calc.py::test_sub"] is TestStatus.PASSED
    assert "abc exit 0" in g.test_output


FORK_BOMB = r"""
sed -i '0,/return a - b/s//return a + b/' /testbed/calc.py
nohup sh -c 'b() { b | b & }; b' > /dev/null 2>&1 &
sleep 2
exit 0
"""


@pytest.mark.docker
def test_harness_fork_bomb_neither_breaks_the_run_nor_the_patch(mini_evalset, base_image, docker_client,
                                                                tmp_path):
    h = make_harness(tmp_path, "bomb", {"bomb.sh": FORK_BOMB}, "sh bomb.sh")
    report = evaluate(mini_evalset, h, tmp_path / "runs")
    (r,) = report.results
    assert not r.is_infra, r.error
    assert r.resolved and "+    return a + b" in r.model_patch
    assert not run_containers(docker_client, report.run_id)


@pytest.mark.docker
def test_harness_that_kills_the_containers_main_process(mini_evalset, base_image, docker_client, tmp_path):
    # The container stops with its main process: only a restart of the stopped container can
    # still take the patch, so a resolved, non-infra result shows the restart path ran. The
    # harness did not run up to its limit: not timed out.
    h = make_harness(tmp_path, "killer", {"k.sh": "sed -i '0,/return a - b/s//return a + b/' /testbed/calc.py\n"
                                                  "kill -9 $(pgrep -x sleep | head -1)\nsleep 5\n"}, "sh k.sh")
    report = evaluate(mini_evalset, h, tmp_path / "runs")
    (r,) = report.results
    assert not r.is_infra, r.error
    assert not r.harness_timed_out and r.resolved
    assert not run_containers(docker_client, report.run_id)


@pytest.mark.docker
def test_harness_without_model_calls_never_imports_litellm(mini_evalset, base_image, tmp_path):
    h = make_harness(tmp_path, "noop", {}, "true")
    code = (
        "import sys; sys.path.insert(0, %r)\n"
        "from pathlib import Path\n"
        "from test_eval import evaluate\n"
        "r = evaluate(Path(%r), Path(%r), Path(%r))\n"
        "assert not r.results[0].is_infra, r.results[0].error\n"
        "assert 'litellm' not in sys.modules, 'litellm imported'\n"
        "print('ok')\n") % (str(Path(__file__).parent), str(mini_evalset), str(h), str(tmp_path / "runs"))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).parent, env={**os.environ, "PYTHONPATH": str(Path(__file__).parent)})
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stdout + proc.stderr


@pytest.mark.docker
def test_background_removals_are_waited_for(docker_client, base_image):
    sb = Sandbox(docker_client, base_image, run_id="test-bg-remove", limits=SandboxLimits())
    sb.start()
    cid = sb.container.id
    sb.close(background=True)
    sdocker.wait_removals("test-bg-remove")
    assert not docker_client.containers.list(all=True, filters={"id": cid})
    assert "test-bg-remove" not in sdocker._removals


@pytest.mark.docker
def test_an_image_without_setpriv_still_runs_and_grades(docker_client, base_image, mini_evalset, tmp_path):
    from evolve.evalsets.registry import load_evalset
    from evolve.harness import resolve_harness
    from evolve.models import backend_for
    from evolve.runner import run_agent

    c = docker_client.containers.create(base_image, ["sleep", "infinity"], user="root")
    try:
        c.start()
        assert c.exec_run(["rm", "-f", "/usr/bin/setpriv"], user="root").exit_code == 0
        image = c.commit(repository="evolve-test", tag="nosetpriv").id
    finally:
        c.remove(force=True)
    try:
        ev = load_evalset(str(mini_evalset))
        task = ev.tasks("search")[0]
        h = make_harness(tmp_path, "fixer", {}, "sed -i '0,/return a - b/s//return a + b/' /testbed/calc.py")
        harness = resolve_harness(str(h), workdir=tmp_path / "harnesses")
        settings = EvalSettings(model=SCRIPTED)
        backend, close = backend_for(SCRIPTED)

        def factory(mounts=None):
            return Sandbox(docker_client, image, run_id="test-nosetpriv", limits=SandboxLimits(), mounts=mounts)
        try:
            run = run_agent(factory, task, ev.repo_dir(task), harness, backend, settings, tmp_path / "trace.jsonl")
        finally:
            close()
        assert run.exit_code == 0 and not run.timed_out and b"+    return a + b" in run.model_patch
        with factory() as sb:
            g = grade(sb, task, ev.repo_dir(task), run.model_patch, test_timeout_s=settings.test_timeout_s)
        assert g.resolved, g.apply_log + g.test_output[-2000:]
        sdocker.wait_removals("test-nosetpriv")
        assert not run_containers(docker_client, "test-nosetpriv")
    finally:
        docker_client.images.remove("evolve-test:nosetpriv", force=True)


@pytest.mark.docker
def test_exec_stdin_unpacks_an_archive_as_it_is(box):
    from evolve.sandbox.docker import TAR_TRAILER, tar_entry
    from evolve.testbed import UNPACK, unpack_failure

    big = os.urandom(3_000_000)
    archive = (tar_entry("srv", uid=1000, gid=1000, mode=0o755) + tar_entry("srv/big", big, uid=1000, gid=1000)
               + tar_entry("srv/private", mode=0o700) + tar_entry("srv/private/x", b"secret\n", mode=0o600)
               + TAR_TRAILER)
    res = box.exec(UNPACK + "stat -c '%u %a %n' /srv /srv/big /srv/private /srv/private/x; sha256sum /srv/big; "
                   "cat | wc -c", timeout_s=60, user="root", stdin=archive)
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[:4] == ["1000 755 /srv", "1000 644 /srv/big", "0 700 /srv/private", "0 600 /srv/private/x"]
    import hashlib
    assert lines[4].split()[0] == hashlib.sha256(big).hexdigest()
    assert lines[5].strip() == "0"  # what follows gets no input
    assert box.exec("cat /srv/private/x", timeout_s=10).exit_code != 0
    bad = box.exec(UNPACK + "echo never", timeout_s=60, user="root", stdin=b"not a tar archive" * 100)
    assert unpack_failure(bad.output) is not None and "never" not in bad.output


@pytest.mark.docker
def test_a_daemon_the_tests_leave_holding_the_output_does_not_hold_grading(docker_client, base_image,
                                                                           mini_evalset, tmp_path):
    import shutil

    import git
    from evolve.evalsets.registry import load_evalset

    ev = load_evalset(str(mini_evalset))
    task = ev.tasks("search")[0]
    work = tmp_path / "work"
    shutil.copytree(ev.repo_dir(task), work)
    calc = work / "calc.py"
    calc.write_text("import subprocess, sys\n"
                    "subprocess.Popen(['sleep', '1000'], start_new_session=True, stdout=sys.__stdout__)\n"
                    + calc.read_text().replace("return a - b", "return a + b", 1))
    patch = git.Repo(work).git.diff() + "\n"
    start = time.monotonic()
    with Sandbox(docker_client, base_image, run_id="test-fastpath", limits=SandboxLimits()) as sb:
        g = grade(sb, task, ev.repo_dir(task), patch, test_timeout_s=60)
    assert g.resolved, g.test_output[-2000:]
    assert time.monotonic() - start < 45


@pytest.mark.docker
def test_grading_reads_its_frames_with_or_without_gzip_and_base64_in_the_image(docker_client, base_image,
                                                                                 mini_evalset, tmp_path):
    """grade.sh packs its frames (the neutraliser's report, the plugin's records) with gzip and
    base64 where the image has both, else with Python: the verdict and the findings are the same."""
    import shutil

    import git
    from evolve.evalsets.registry import load_evalset

    ev = load_evalset(str(mini_evalset))
    task = ev.tasks("search")[0]
    work = tmp_path / "work"
    shutil.copytree(ev.repo_dir(task), work)
    calc = work / "calc.py"
    calc.write_text(calc.read_text().replace("return a - b", "return a + b", 1))
    (work / "tests" / "conftest.py").write_text("import pytest\n")  # test infrastructure: restored, flagged
    repo = git.Repo(work)
    repo.git.add("-A")
    patch = repo.git.diff("--cached") + "\n"
    images = {"gzip": base_image}
    try:
        for tool in ("base64", "gzip"):  # without either, the frames are Python's
            c = docker_client.containers.create(base_image, ["sleep", "infinity"], user="root")
            try:
                c.start()
                assert c.exec_run(["rm", "-f", f"/usr/bin/{tool}"], user="root").exit_code == 0
                images[f"no {tool}"] = c.commit(repository="evolve-test", tag=f"no{tool}").id
            finally:
                c.remove(force=True)
        grades = {}
        for name, image in images.items():
            with Sandbox(docker_client, image, run_id="test-frames", limits=SandboxLimits()) as sb:
                has = sb.exec("command -v gzip && command -v base64", timeout_s=30).exit_code == 0
                assert has is (name == "gzip")
                grades[name] = grade(sb, task, ev.repo_dir(task), patch,
                                     test_timeout_s=EvalSettings(model=SCRIPTED).test_timeout_s)
        for name, g in grades.items():
            assert g.resolved, (name, g.apply_log, g.test_output[-2000:])
            assert "test_files_changed" in {str(getattr(f, "value", f)) for f in g.flags}, (name, g.flags, g.notes)
            assert g.FAIL_TO_PASS["tests/test_add.py::test_add"] is TestStatus.PASSED
            assert (g.flags, g.FAIL_TO_PASS, g.PASS_TO_PASS) == (grades["gzip"].flags, grades["gzip"].FAIL_TO_PASS,
                                                                 grades["gzip"].PASS_TO_PASS), name
        sdocker.wait_removals("test-frames")
    finally:
        for tool in ("base64", "gzip"):
            if f"no {tool}" in images:
                docker_client.images.remove(f"evolve-test:no{tool}", force=True)


# -- the sandbox scripts' own start-up, without Docker -------------------------------------------------

_SCRIPTS = Path(__file__).resolve().parents[1] / "evolve" / "sandbox" / "scripts"


def test_the_neutralisers_git_reads_the_shadow_and_a_failing_git_is_its_error(tmp_path):
    """grade_neutralise.py starts git with fork and exec (not subprocess): the output is git's, a
    failing git raises GitError (an OSError), and main() then exits 1 with a message."""
    import git

    sys.path.insert(0, str(_SCRIPTS))
    try:
        import grade_neutralise
    finally:
        sys.path.pop(0)
    repo = git.Repo.init(tmp_path / "r")
    (tmp_path / "r" / "a.py").write_text("x = 1\n")
    repo.index.add(["a.py"])
    sha = repo.index.commit("base").hexsha
    spec = {"shadow": str(tmp_path / "r" / ".git"), "base": sha}
    tree = grade_neutralise.base_tree(spec)
    assert tree == {"a.py": ("100644", repo.head.commit.tree["a.py"].hexsha)}
    assert grade_neutralise.blob_sha(b"x = 1\n") == tree["a.py"][1]  # the SHA-1 git uses
    with pytest.raises(OSError, match="ls-tree exited"):
        grade_neutralise.git(spec, "ls-tree", "-r", "0" * 40)
    (tmp_path / "spec.json").write_text(
        '{"base": "%s", "shadow": "%s", "testbed": "%s", "test_files": [], "test_patch_paths": []}'
        % ("0" * 40, spec["shadow"], tmp_path / "r"))
    res = subprocess.run([sys.executable, "-I", str(_SCRIPTS / "grade_neutralise.py"), str(tmp_path / "spec.json")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and "could not neutralise the work tree: git ls-tree exited" in res.stderr


@pytest.mark.parametrize("argv, message", [
    (["--port", "1", "--socket", "s"], "missing --max-connections"),
    (["--port", "x", "--socket", "s", "--max-connections", "2"], "take integers"),
    (["--port", "1", "--socket", "s", "--max-connections", "2", "--verbose"], "unexpected argument '--verbose'"),
    (["--port"], "unexpected argument '--port'"),
])
def test_the_bridge_refuses_a_bad_command_line(argv, message):
    res = subprocess.run([sys.executable, "-I", "-S", str(_SCRIPTS / "bridge.py"), *argv],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and message in res.stderr, res.stderr
