#!/usr/bin/env python3
"""How much slower is ``evolve eval`` than a bare docker+pytest loop over the same tasks?

Side A runs the real CLI as a subprocess::

    evolve eval --harness NOOP --evals EVALSET --model scripted/NOOP.yaml --no-cache \
                --runs-dir <fresh temp dir> --workers W

with a no-op harness (``entrypoint: "true"``: no model call, no edit), so all
that is left is evolve's own work: snapshot the repo, run the harness, take the
patch, grade in a fresh container. Side B is what a minimal hand-written
evaluator does per task, also as a subprocess (``eval_overhead.py --bare``):
start a container from the same image (network none, init, same limits),
copy the repo at ``base_commit`` into /testbed (``git archive``), apply the
task's ``test_patch``, run the same pytest command on the same test files,
read the output, remove the container; W tasks at once.

Both sides run on the same generated eval set (the test suite's mini eval set,
its tasks replicated under new instance_ids), alternating A B A B ..., after a
warm-up pair that is not counted. Each run is timed as a whole process from
the outside (``time.perf_counter`` around ``subprocess.run``), so interpreter
start-up and imports count on both sides. The ratio is the median of A over
the median of B; the target is printed beside it but never fails the run.
The exit status is non-zero only when something broke (a run failed, a task
was graded ``infra``, a bare run did not see its tests).

    python bench/eval_overhead.py                       # 8 tasks, 2 workers, 3 rounds
    python bench/eval_overhead.py --tasks 4 --rounds 5
    python bench/eval_overhead.py --profile             # + one in-process run counting docker calls
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
TARGET_RATIO = 1.15
SPLIT = "search"
NOOP_HARNESS = 'name: noop\ndescription: does nothing; measures evolve\'s own overhead\nentrypoint: "true"\n'
NOOP_SCRIPT = 'default:\n  - "echo COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT"\n'


def waiting_harness(wait_s: float) -> str:
    """A harness that only waits ``wait_s`` seconds in its sandbox, as an agent waits on its model."""
    return (f"name: wait\ndescription: waits {wait_s:g} s and does nothing else (a task dominated by waiting)\n"
            f'entrypoint: "sleep {wait_s:g}"\n')


class BenchError(Exception):
    """Something broke: the comparison would be meaningless."""


# -- setup ---------------------------------------------------------------------


def build_evalset(root: Path, n_tasks: int) -> Path:
    """The mini eval set of ``tests/conftest.py`` with its tasks replicated to ``n_tasks`` in ``search``."""
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    try:
        from conftest import build_mini_evalset
    finally:
        sys.path.pop(0)
    build_mini_evalset(root)
    originals = [json.loads(line) for split in ("search", "holdout")
                 for line in (root / f"{split}.jsonl").read_text().splitlines() if line.strip()]
    rows = []
    for i in range(n_tasks):
        row = dict(originals[i % len(originals)])
        row["instance_id"] = f"{row['instance_id']}__{i:03d}"
        rows.append(row)
    (root / f"{SPLIT}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def evolve_settings() -> tuple[str, str, dict]:
    """(image, test command, sandbox limits) evolve uses for these tasks, read from evolve itself."""
    from evolve.config import SandboxLimits
    from evolve.grading import DEFAULT_TEST_CMD
    from evolve.sandbox.image import base_image_tag

    return base_image_tag(), DEFAULT_TEST_CMD, SandboxLimits().model_dump()


def evolve_exe() -> str:
    exe = Path(sys.executable).parent / "evolve"
    return str(exe) if exe.exists() else (shutil.which("evolve") or "evolve")


# -- side B: the bare loop -------------------------------------------------------


def _test_files(task: dict) -> list[str]:
    files: list[str] = []
    for test in task["FAIL_TO_PASS"] + task.get("PASS_TO_PASS", []):
        path = test.split("::", 1)[0]
        if path not in files:
            files.append(path)
    return files


def _tar_of(name: str, data: bytes) -> bytes:
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size, info.mtime = len(data), int(time.time())
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def bare_task(client, task: dict, evalset: Path, image: str, test_cmd: str, limits: dict,
              wait_s: float = 0.0) -> dict:
    """One task the way a minimal evaluator does it. Returns {instance_id, seconds, statuses}.
    With ``wait_s``, the container first runs ``sleep wait_s`` (the waiting harness's counterpart)."""
    import shlex

    start = time.perf_counter()
    snapshot = subprocess.run(["git", "-C", str(evalset / task["repo_path"]), "archive", "--format=tar",
                               task["base_commit"]], capture_output=True, check=True).stdout
    container = client.containers.run(
        image, ["sleep", "infinity"], detach=True, init=True, network_mode="none",
        mem_limit=limits["mem_limit"], memswap_limit=limits["mem_limit"],
        nano_cpus=int(limits["cpus"] * 1e9), pids_limit=limits["pids_limit"],
        environment={"HOME": "/tmp", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"})
    try:
        if not (container.put_archive("/testbed", snapshot)
                and container.put_archive("/tmp", _tar_of("test.patch", task["test_patch"].encode()))):
            raise BenchError(f"{task['instance_id']}: put_archive failed")
        if wait_s:
            container.exec_run(["sleep", f"{wait_s:g}"])
        code, out = container.exec_run(["sh", "-c", "cd /testbed && git apply /tmp/test.patch"])
        if code != 0:
            raise BenchError(f"{task['instance_id']}: test_patch does not apply: {out.decode()[-300:]}")
        cmd = f"cd /testbed && {test_cmd} " + " ".join(map(shlex.quote, _test_files(task)))
        code, out = container.exec_run(["sh", "-c", cmd])
    finally:
        container.remove(force=True)
    text = out.decode("utf-8", "replace")
    statuses = {}
    for test in task["FAIL_TO_PASS"] + task.get("PASS_TO_PASS", []):
        m = re.search(rf"^(PASSED|FAILED|ERROR) {re.escape(test)}\b", text, re.M)
        statuses[test] = m.group(1) if m else "MISSING"
    if code not in (0, 1) or "MISSING" in statuses.values():
        raise BenchError(f"{task['instance_id']}: pytest exit {code}, statuses {statuses}:\n{text[-1000:]}")
    return {"instance_id": task["instance_id"], "seconds": time.perf_counter() - start, "statuses": statuses}


def run_bare(evalset: Path, workers: int, image: str, test_cmd: str, limits: dict, wait_s: float = 0.0) -> None:
    """Side B as a command: evaluate every task of ``search`` and print one JSON summary line."""
    import docker

    client = docker.from_env(timeout=120)
    tasks = [json.loads(line) for line in (evalset / f"{SPLIT}.jsonl").read_text().splitlines() if line.strip()]
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(lambda t: bare_task(client, t, evalset, image, test_cmd, limits, wait_s), tasks))
    print(json.dumps({"tasks": len(results), "loop_seconds": time.perf_counter() - start,
                      "task_seconds": [r["seconds"] for r in results],
                      "statuses": {r["instance_id"]: r["statuses"] for r in results}}))


# -- driver ------------------------------------------------------------------------


def timed(cmd: list[str], log: Path) -> float:
    with open(log, "wb") as f:
        start = time.perf_counter()
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
        seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise BenchError(f"exit {proc.returncode}: {' '.join(cmd)}\n--- {log}:\n{log.read_text()[-3000:]}")
    return seconds


def evolve_run_stats(runs_dir: Path, n_tasks: int) -> dict:
    """Check one evolve run and pull its phase timings out of results.jsonl and summary.json."""
    run_dirs = [p for p in runs_dir.iterdir() if p.is_dir() and p.name.startswith("eval-")]
    if len(run_dirs) != 1:
        raise BenchError(f"expected one run under {runs_dir}, found {[p.name for p in run_dirs]}")
    results = [json.loads(line) for line in (run_dirs[0] / "results.jsonl").read_text().splitlines()]
    summary = json.loads((run_dirs[0] / "summary.json").read_text())
    bad = [r["instance_id"] for r in results if r["failure_class"] == "infra" or r["cached"]]
    if len(results) != n_tasks or bad:
        raise BenchError(f"{run_dirs[0]}: {len(results)}/{n_tasks} results, infra or cached: {bad}")
    statuses = {r["instance_id"]: {**r["FAIL_TO_PASS"], **r["PASS_TO_PASS"]} for r in results}
    return {"run_seconds": summary["seconds"], "statuses": statuses,
            "agent": [r["agent_seconds"] for r in results], "grade": [r["grade_seconds"] for r in results],
            "task": [r["seconds"] for r in results]}


def fmt(xs: list[float]) -> str:
    return f"median {statistics.median(xs):.1f}s (min {min(xs):.1f}s)"


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


class Setup:
    """The generated eval set, no-op harness and model script under ``work``, and both sides' commands."""

    def __init__(self, work: Path, n_tasks: int, workers: int, wait_s: float = 0.0) -> None:
        """``wait_s``: the harness only waits that long (``waiting_harness``) and the bare loop's
        container sleeps as long; 0: the no-op harness."""
        self.image, test_cmd, limits = evolve_settings()
        self.workers = workers
        self.evalset = build_evalset(work / "evalset", n_tasks)
        self.harness = work / "noop-harness"
        self.harness.mkdir()
        (self.harness / "harness.yaml").write_text(waiting_harness(wait_s) if wait_s else NOOP_HARNESS)
        self.script = work / "noop-model.yaml"
        self.script.write_text(NOOP_SCRIPT)
        self.bare_cmd = [sys.executable, str(Path(__file__).resolve()), "--bare", str(self.evalset),
                         "--workers", str(workers), "--image", self.image, "--test-cmd", test_cmd,
                         "--limits", json.dumps(limits)] + (["--wait", f"{wait_s:g}"] if wait_s else [])

    def evolve_cmd(self, runs_dir: Path | str) -> list[str]:
        return [evolve_exe(), "eval", "--harness", str(self.harness), "--evals", str(self.evalset),
                "--split", SPLIT, "--model", f"scripted/{self.script}", "--workers", str(self.workers),
                "--no-cache", "--runs-dir", str(runs_dir), "--no-show-tasks"]


def print_commands(work: Path, args: argparse.Namespace) -> int:
    """Write the fixtures under ``work`` and print both sides as shell commands, to time them elsewhere."""
    import shlex

    work.mkdir(parents=True, exist_ok=True)
    if any(work.iterdir()):
        raise BenchError(f"{work} is not empty")
    s = Setup(work, args.tasks, args.workers)
    (work / "runs").mkdir()
    evolve = shlex.join(s.evolve_cmd("RUNS"))
    evolve = evolve.replace(" RUNS ", f' "$(mktemp -d -p {shlex.quote(str(work / "runs"))})" ')
    print(f"# A: evolve eval, a fresh --runs-dir each time\nsh -c {shlex.quote('exec ' + evolve)}")
    print(f"# B: the bare docker+pytest loop\n{shlex.join(s.bare_cmd)}")
    return 0


def compare(args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="eval-overhead-"))
    try:
        setup = Setup(work, args.tasks, args.workers)
        image, evalset, harness, script = setup.image, setup.evalset, setup.harness, setup.script
        bare_cmd, evolve_cmd = setup.bare_cmd, setup.evolve_cmd

        print(f"eval_overhead: image {image}, {args.tasks} tasks, {args.workers} workers, "
              f"{args.warmup} warm-up pair(s) + {args.rounds} rounds (A = evolve eval, B = bare loop)", flush=True)
        a_times, b_times, stats, bare_stats = [], [], [], []
        for i in range(args.warmup + args.rounds):
            counted = i >= args.warmup
            label = f"round {i - args.warmup + 1}" if counted else "warm-up"
            runs_dir = work / f"runs-{i}"
            a = timed(evolve_cmd(runs_dir), work / f"evolve-{i}.log")
            s = evolve_run_stats(runs_dir, args.tasks)
            shutil.rmtree(runs_dir, ignore_errors=True)
            b = timed(bare_cmd, work / f"bare-{i}.log")
            bs = json.loads((work / f"bare-{i}.log").read_text().strip().splitlines()[-1])
            if bs["tasks"] != args.tasks:
                raise BenchError(f"bare loop ran {bs['tasks']} tasks, expected {args.tasks}")
            if bs["statuses"] != s["statuses"]:  # both sides must have run the same tests to the same end
                raise BenchError(f"test outcomes differ: evolve {s['statuses']} bare {bs['statuses']}")
            print(f"  {label}: evolve {a:.1f}s  bare {b:.1f}s  ratio {a / b:.2f}", flush=True)
            if counted:
                a_times.append(a)
                b_times.append(b)
                stats.append(s)
                bare_stats.append(bs)

        ratio = statistics.median(a_times) / statistics.median(b_times)
        agent = [x for s in stats for x in s["agent"]]
        grade = [x for s in stats for x in s["grade"]]
        task = [x for s in stats for x in s["task"]]
        run_s = [s["run_seconds"] for s in stats]
        outside = [a - s["run_seconds"] for a, s in zip(a_times, stats)]
        bare_task_s = [x for s in bare_stats for x in s["task_seconds"]]
        bare_loop = [s["loop_seconds"] for s in bare_stats]
        print()
        print(f"eval_overhead: tasks={args.tasks} workers={args.workers} rounds={args.rounds}")
        print(f"  evolve eval (no-op harness): {fmt(a_times)}")
        print(f"  bare docker+pytest loop:     {fmt(b_times)}")
        print(f"  ratio evolve/bare: {ratio:.2f}  (target <= {TARGET_RATIO})"
              f"  [{'met' if ratio <= TARGET_RATIO else 'NOT met'}]")
        print()
        print("evolve breakdown (medians over rounds; per-task means over all counted tasks):")
        print(f"  process wall                          {statistics.median(a_times):6.1f}s")
        print(f"    Evaluation.run (summary.json)       {statistics.median(run_s):6.1f}s")
        print(f"    outside run: start-up, imports, exit {statistics.median(outside):6.1f}s")
        print(f"  per task: total {mean(task):.2f}s = agent {mean(agent):.2f}s + grade {mean(grade):.2f}s"
              f" + other {mean(task) - mean(agent) - mean(grade):.2f}s"
              " (other: grading container start/remove, result files)")
        packed = mean(task) * args.tasks / args.workers
        print(f"    run() minus task-seconds/workers     {statistics.median(run_s) - packed:6.1f}s"
              " (run()'s own start-up: docker client, sweep, image check, scripted model server;"
              " waiting for background removals; idle workers at the end)")
        print("bare breakdown:")
        print(f"  process wall {statistics.median(b_times):.1f}s, of which task loop"
              f" {statistics.median(bare_loop):.1f}s; per task {mean(bare_task_s):.2f}s")
        print(f"  per-task ratio evolve/bare: {mean(task) / mean(bare_task_s):.2f}")
        if args.profile:
            print()
            profile(evalset, harness, script, args.workers)
        return 0
    finally:
        if args.keep:
            print(f"(kept {work})")
        else:
            shutil.rmtree(work, ignore_errors=True)


# -- optional: count docker calls in one in-process run -----------------------------


def profile(evalset: Path, harness: Path, script: Path, workers: int) -> None:
    """Run one evaluation in-process, counting and timing every docker call per phase.

    Wraps methods of evolve's ``Sandbox`` and docker's ``APIClient.request`` at
    runtime (nothing in evolve/ is changed). The phase of a call is the
    innermost of ``run_agent``/``grade`` on its thread's stack, else ``run``;
    calls on evolve's helper threads get their own phase: ``pre`` (the grading
    sandbox, started while the harness runs) and ``bg`` (background removals).
    """
    import threading
    from collections import defaultdict

    import docker.api.client
    import requests

    import evolve.gateway
    import evolve.grading
    import evolve.models
    import evolve.runner
    import evolve.testbed
    from evolve.config import EvalSettings
    from evolve.evalsets.registry import load_evalset
    from evolve.evaluate import Evaluation
    from evolve.harness import resolve_harness
    from evolve.sandbox import docker as sdocker

    counts: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0.0])
    lock = threading.Lock()
    local = threading.local()

    thread_phases = {"evolve-grader-start": "pre", "evolve-remove": "bg", "evolve-gateway-close": "agent"}

    def phase() -> str:
        default = thread_phases.get(threading.current_thread().name, "run")
        return getattr(local, "phase", default)

    def record(key: str, seconds: float) -> None:
        with lock:
            c = counts[(phase(), key)]
            c[0] += 1
            c[1] += seconds

    def with_phase(fn, name):
        def wrapper(*a, **kw):
            old = phase()
            local.phase = name
            start = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                record("(phase wall)", time.perf_counter() - start)
                local.phase = old
        return wrapper

    def timed_function(module, name, label):
        orig = getattr(module, name)

        def wrapper(*a, **kw):
            start = time.perf_counter()
            try:
                return orig(*a, **kw)
            finally:
                record(label, time.perf_counter() - start)
        setattr(module, name, wrapper)

    def timed_method(cls, name, key=None):
        orig = getattr(cls, name)

        def wrapper(self, *a, **kw):
            label = key(self, *a, **kw) if key else name
            start = time.perf_counter()
            try:
                return orig(self, *a, **kw)
            finally:
                record(label, time.perf_counter() - start)
        setattr(cls, name, wrapper)

    def exec_label(self, cmd, **kw):
        names, f = [], sys._getframe(2)  # 0: here, 1: the wrapper, 2: who called Sandbox.exec
        while f is not None and len(names) < 2:
            if f.f_code.co_name != "wrapper":  # skip this profiler's own wrappers
                names.append(f.f_code.co_name)
            f = f.f_back
        return "exec <- " + " <- ".join(names)

    def http_label(self, method, url, *a, **kw):
        path = re.sub(r"^[a-z+]+://[^/]+|/v1\.\d+", "", url)
        path = re.sub(r"/[0-9a-f]{64}", "/<id>", path)
        return f"  http {method} {path}"

    evolve.runner.run_agent = with_phase(evolve.runner.run_agent, "agent")
    evolve.grading.grade = with_phase(evolve.grading.grade, "grade")
    timed_function(evolve.models, "backend_for", "backend_for (scripted server)")
    timed_function(evolve.models, "_litellm", "litellm import (first model call)")
    timed_function(evolve.testbed, "archive_at", "archive_at (git archive on the host)")
    timed_function(evolve.testbed, "_build_snapshot", "snapshot build (host git; once per repo+commit)")
    timed_function(sdocker, "_remove_quietly", "container remove")
    timed_method(evolve.gateway.Gateway, "start", lambda s: "gateway start")
    timed_method(evolve.gateway.Gateway, "close", lambda s: "gateway close")
    timed_method(sdocker.Sandbox, "start", lambda s: "container start (create+start)")
    timed_method(sdocker.Sandbox, "close",
                 lambda s, *a, **k: "close (background removal)" if k.get("background") else "close (remove)")
    timed_method(sdocker.Sandbox, "restart", lambda s: "container restart")
    timed_method(sdocker.Sandbox, "exec", exec_label)
    timed_method(sdocker.Sandbox, "get_file", lambda s, *a, **k: "get_file (get_archive)")
    timed_method(evolve.grading.PreparedGrader, "take", lambda s: "wait for the grading sandbox started early")
    timed_method(sdocker.Sandbox, "get_files", lambda s, *a, **k: "get_files (get_archive of a dir)")
    timed_method(sdocker.Sandbox, "put_archive", lambda s, *a, **k: "put_archive (one tar at /)")
    orig_request = requests.Session.request

    def request(self, method, url, *a, **kw):
        start = time.perf_counter()
        try:
            return orig_request(self, method, url, *a, **kw)
        finally:
            record(http_label(self, method, url), time.perf_counter() - start)
    docker.api.client.APIClient.request = request

    with tempfile.TemporaryDirectory(prefix="eval-overhead-profile-") as tmp:
        ev = load_evalset(str(evalset))
        h = resolve_harness(str(harness), workdir=Path(tmp) / "harnesses")
        evaluation = Evaluation(evalset=ev, split=SPLIT, harness=h,
                                settings=EvalSettings(model=f"scripted/{script}"), runs_dir=Path(tmp),
                                workers=workers, use_cache=False)
        # The run's own start-up (sweep, image check) happens outside both phases.
        evaluation._one = with_phase(evaluation._one, "task")
        start = time.perf_counter()
        report = evaluation.run()
        wall = time.perf_counter() - start
    n = len(report.results)
    print(f"docker calls and other costs in one in-process run ({n} tasks, {workers} workers, run() {wall:.1f}s);"
          " count and seconds are per task (run rows: per run). Phases: run = Evaluation.run outside tasks,"
          " task = a task outside agent/grade, agent = run_agent, grade = grade(), pre = the grading sandbox,"
          " started while the harness runs, bg = background removals; indented rows are"
          " the HTTP requests to dockerd inside the rows above them")
    print(f"  {'phase':6} {'what':58} {'count':>6} {'sec':>7}")
    for ph in ("run", "task", "agent", "pre", "grade", "bg"):
        rows = sorted(((k, v) for (p, k), v in counts.items() if p == ph), key=lambda kv: -kv[1][1])
        div = 1 if ph == "run" else n
        for key, (c, s) in rows:
            print(f"  {ph:6} {key:58} {c / div:6.1f} {s / div:7.2f}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", type=int, default=8, help="tasks in the eval set (mini tasks replicated)")
    p.add_argument("--workers", type=int, default=2, help="tasks at once, both sides")
    p.add_argument("--rounds", type=int, default=3, help="counted A/B pairs")
    p.add_argument("--warmup", type=int, default=1, help="uncounted A/B pairs first")
    p.add_argument("--profile", action="store_true", help="then count docker calls per task in-process")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (eval set, logs)")
    p.add_argument("--print-commands", metavar="DIR", type=Path,
                   help="write the eval set and harness under DIR (new or empty) and print both sides as "
                        "shell commands, e.g. to time them with /usr/bin/time or hyperfine")
    p.add_argument("--bare", metavar="EVALSET_DIR", type=Path, help="run side B only (used by the driver)")
    p.add_argument("--image", help=argparse.SUPPRESS)
    p.add_argument("--test-cmd", help=argparse.SUPPRESS)
    p.add_argument("--limits", help=argparse.SUPPRESS)
    p.add_argument("--wait", type=float, default=0.0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if min(args.tasks, args.workers, args.rounds) < 1 or args.warmup < 0:
        p.error("--tasks, --workers and --rounds must be >= 1, --warmup >= 0")
    try:
        if args.bare:
            image, test_cmd, limits = ((args.image, args.test_cmd, json.loads(args.limits))
                                       if args.image and args.test_cmd and args.limits else evolve_settings())
            run_bare(args.bare, args.workers, image, test_cmd, limits, args.wait)
            return 0
        if args.print_commands:
            return print_commands(args.print_commands, args)
        return compare(args)
    except (BenchError, subprocess.CalledProcessError) as e:
        print(f"eval_overhead: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
