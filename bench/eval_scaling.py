#!/usr/bin/env python3
"""The local executor's speed-up from 1 to 2 workers against the bare loop's, and where each side's
CPU goes per task.

Uses ``eval_overhead.py``'s setup (the mini eval set replicated to ``--tasks``, the no-op harness,
the bare docker+pytest loop).

Part 1, wall time: per round, four whole processes in a rotated order (so drift on a shared
machine hits each alike): ``evolve eval --workers 1``, the same with ``--workers 2``, and the bare
loop with 1 and with 2 threads. It prints the medians, each side's speed-up (goal ≥ 1.7 for
evolve) and evolve/bare per worker count.

Part 2, CPU per task (``--cpu-rounds``, 0 to skip): in this process, alternating, one
``Evaluation.run`` and one bare loop at 1 worker. Per task it sums

- the CPU of every container, read from its cgroup (``cpuacct.usage`` under cgroup v1, ``cpu.stat``
  under v2) just before docker-py removes it: what runs inside (unpacking, git, the tests,
  evolve's grading steps) and runc's own work in the container;
- this process's CPU (``time.process_time``: every thread: the GIL's owner);
- dockerd's and containerd's CPU (from ``/proc``), and the whole machine's busy CPU
  (``/proc/stat``: also containerd's shims, runc and the kernel's work for containers). These are
  shared: other users of the engine or the machine (a CI run) count too, so compare the sides
  within one run.

On a machine with C cores, W workers cannot go faster than C divided by the CPU one task needs, so
these figures show what sets the ceiling.

Part 3, waiting (``--wait-rounds``, 0 to skip): part 1 again, but each task is dominated by waiting,
as a real agent's task waits on its model: the harness only runs ``sleep --wait`` (default 2 s) in its
sandbox, and the bare loop's container sleeps as long before its tests. Waiting takes no CPU, so a
serial part of evolve (a lock, one thread doing every task's host work, serialized Docker calls)
would keep evolve's speed-up from 1 to 2 workers well below the bare loop's; without one, both
approach 2x.

Part 4, the timeline (``--no-timeline`` to skip): one in-process ``Evaluation.run`` at 2 workers
with the no-op harness, with evolve's steps timed where they are called (``Sandbox.start`` for
the agent's and the grader's container, ``run_agent``, ``grade``, the container's removal;
wrapped at runtime, nothing in evolve/ changed). Per step it prints how long two tasks were in it
at the same time: a step serialized by a lock would show none.

Exits non-zero only when something broke.

    python bench/eval_scaling.py                       # 8 tasks, 3 rounds, 2 CPU rounds, 2 waiting rounds
    python bench/eval_scaling.py --rounds 5 --cpu-rounds 0 --wait-rounds 0 --no-timeline
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_overhead import (SPLIT, BenchError, Setup, bare_task, evolve_run_stats,  # noqa: E402
                           evolve_settings, timed)

TARGET_SPEEDUP = 1.7


def wall(args: argparse.Namespace, work: Path, wait_s: float = 0.0, rounds: int | None = None,
         warmup: int | None = None) -> None:
    rounds = args.rounds if rounds is None else rounds
    warmup = args.warmup if warmup is None else warmup
    tag = f"wait{wait_s:g}-" if wait_s else ""
    setups = {w: Setup(work / f"{tag}w{w}", args.tasks, w, wait_s) for w in (1, 2)}
    sides = [("evolve", 1), ("evolve", 2), ("bare", 1), ("bare", 2)]
    times: dict[tuple[str, int], list[float]] = {}
    inner: dict[tuple[str, int], list[float]] = {}  # Evaluation.run's seconds, the bare loop's task loop
    for i in range(warmup + rounds):
        order = sides[i % 4:] + sides[:i % 4]
        line = []
        for side, w in order:
            log = work / f"{tag}{side}-{w}-{i}.log"
            if side == "bare":
                s = timed(setups[w].bare_cmd, log)
                out = json.loads(log.read_text().strip().splitlines()[-1])
                if out["tasks"] != args.tasks:
                    raise BenchError("the bare loop did not run every task")
                loop = out["loop_seconds"]
            else:
                runs = work / f"{tag}runs-{w}-{i}"
                s = timed(setups[w].evolve_cmd(runs), log)
                loop = evolve_run_stats(runs, args.tasks)["run_seconds"]  # raises when a task was infra or missing
                shutil.rmtree(runs, ignore_errors=True)
            line.append(f"{side}/{w} {s:.1f}s")
            if i >= warmup:
                times.setdefault((side, w), []).append(s)
                inner.setdefault((side, w), []).append(loop)
        print(f"  {'warm-up' if i < warmup else f'round {i - warmup + 1}'}: " + "  ".join(line),
              flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    what = f"tasks that wait {wait_s:g} s each" if wait_s else "tasks"
    print(f"\nwall time, {args.tasks} {what}, medians of {rounds} rounds:")
    for w in (1, 2):
        print(f"  workers {w}: evolve {med[('evolve', w)]:.1f}s  bare {med[('bare', w)]:.1f}s"
              f"  evolve/bare {med[('evolve', w)] / med[('bare', w)]:.2f}")
    for side in ("evolve", "bare"):
        print(f"  speed-up 1 -> 2 workers, {side}: {med[(side, 1)] / med[(side, 2)]:.2f}x"
              + (f" (goal >= {TARGET_SPEEDUP})" if side == "evolve" and not wait_s else ""))
    mid = {k: statistics.median(v) for k, v in inner.items()}
    print("  without each process's start-up (evolve: Evaluation.run from summary.json; bare: its task loop):")
    for side in ("evolve", "bare"):
        print(f"    {side}: {mid[(side, 1)]:.1f}s -> {mid[(side, 2)]:.1f}s, speed-up {mid[(side, 1)] / mid[(side, 2)]:.2f}x;"
              f" the rest of the process (imports, start-up, exit) {med[(side, 1)] - mid[(side, 1)]:.1f}s at 1 worker,"
              f" {med[(side, 2)] - mid[(side, 2)]:.1f}s at 2")
    if wait_s:
        print(f"  (the ideal is 2x; {args.tasks} tasks on 2 workers with {wait_s:g} s of waiting each: a serial"
              " part of evolve would show here as a speed-up well under the bare loop's)")


def _container_cpu(cid: str) -> float | None:
    """Seconds of CPU the container used so far, from its cgroup (v1 cgroupfs or v2), or None."""
    v1 = Path(f"/sys/fs/cgroup/cpuacct/docker/{cid}/cpuacct.usage")
    for v2 in (Path(f"/sys/fs/cgroup/system.slice/docker-{cid}.scope/cpu.stat"),
               Path(f"/sys/fs/cgroup/docker/{cid}/cpu.stat")):
        if v2.exists():
            try:
                stat = dict(line.split() for line in v2.read_text().splitlines())
                return int(stat["usage_usec"]) / 1e6
            except (OSError, KeyError, ValueError):
                return None
    try:
        return int(v1.read_text()) / 1e9
    except (OSError, ValueError):
        return None


def _daemons_cpu() -> float:
    tick, total = os.sysconf("SC_CLK_TCK"), 0.0
    for name in ("dockerd", "containerd"):
        pids = subprocess.run(["pgrep", "-x", name], capture_output=True, text=True).stdout.split()
        for pid in pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def _machine_busy() -> float:
    """Seconds of CPU the whole machine spent busy (every core, everything: ``/proc/stat``)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # less idle and iowait


def cpu(args: argparse.Namespace, work: Path) -> None:
    import docker.api.container

    from evolve.config import EvalSettings
    from evolve.evalsets.registry import load_evalset
    from evolve.evaluate import Evaluation
    from evolve.harness import resolve_harness

    setup = Setup(work / "cpu", args.tasks, 1)
    image, test_cmd, limits = evolve_settings()
    seen: list[tuple[bool, float | None]] = []  # (had bind mounts: evolve's agent container, cpu)
    orig_remove = docker.api.container.ContainerApiMixin.remove_container

    def remove_container(self, container, *a, **kw):
        cid = container["Id"] if isinstance(container, dict) else str(container)
        try:
            binds = bool((self.inspect_container(cid).get("HostConfig") or {}).get("Binds"))
        except docker.errors.DockerException:
            binds = False
        seen.append((binds, _container_cpu(cid)))
        return orig_remove(self, container, *a, **kw)

    docker.api.container.ContainerApiMixin.remove_container = remove_container
    client = docker.from_env(timeout=120)
    tasks = [json.loads(line) for line in (setup.evalset / f"{SPLIT}.jsonl").read_text().splitlines() if line]
    rows: dict[str, list[dict]] = {"evolve": [], "bare": []}
    for i in range(args.cpu_rounds + 1):
        for side in ("evolve", "bare") if i % 2 == 0 else ("bare", "evolve"):
            seen.clear()
            p0, d0, m0, w0 = time.process_time(), _daemons_cpu(), _machine_busy(), time.perf_counter()
            if side == "evolve":
                with tempfile.TemporaryDirectory(prefix="eval-scaling-", dir=work) as tmp:
                    h = resolve_harness(str(setup.harness), workdir=Path(tmp) / "harnesses")
                    report = Evaluation(evalset=load_evalset(str(setup.evalset)), split=SPLIT, harness=h,
                                        settings=EvalSettings(model=f"scripted/{setup.script}"),
                                        runs_dir=Path(tmp), workers=1, use_cache=False).run()
                    if any(r.failure_class == "infra" for r in report.results):
                        raise BenchError("an evolve task was infra")
            else:
                with ThreadPoolExecutor(1) as pool:
                    list(pool.map(lambda t: bare_task(client, t, setup.evalset, image, test_cmd, limits), tasks))
            n = args.tasks
            known = [c for _, c in seen if c is not None]
            row = {"wall": (time.perf_counter() - w0) / n, "process": (time.process_time() - p0) / n,
                   "daemons (shared)": (_daemons_cpu() - d0) / n,
                   "machine busy (shared)": (_machine_busy() - m0) / n,
                   "containers": sum(known) / n if len(known) == len(seen) else float("nan"),
                   "  with mounts (evolve: agent)": sum(c or 0 for b, c in seen if b) / n,
                   "  without (evolve: grading)": sum(c or 0 for b, c in seen if not b) / n,
                   "containers per task": len(seen) / n}
            if i:
                rows[side].append(row)
            print(f"  {'warm-up' if not i else f'round {i}'} {side}: "
                  + "  ".join(f"{k.strip()} {v:.3f}" for k, v in row.items()), flush=True)
    print(f"\nper task at 1 worker, seconds (medians of {args.cpu_rounds} rounds):")
    print(f"  {'':32} {'evolve':>8} {'bare':>8}")
    for key in rows["evolve"][0]:
        e, b = (statistics.median(r[key] for r in rows[s]) for s in ("evolve", "bare"))
        print(f"  {key:32} {e:8.3f} {b:8.3f}")


TIMELINE_STEPS = ("agent container start", "grading container start", "agent phase", "grading",
                  "container removal")


def timeline(args: argparse.Namespace, work: Path) -> None:
    """One in-process 2-worker run; per step, the seconds during which two tasks were in it at once."""
    import threading

    import evolve.grading
    import evolve.runner
    import evolve.sandbox.docker as sandbox_docker
    from evolve.config import EvalSettings
    from evolve.evalsets.registry import load_evalset
    from evolve.evaluate import Evaluation
    from evolve.harness import resolve_harness

    setup = Setup(work / "timeline", args.tasks, 2)
    spans: list[tuple[str, float, float]] = []
    lock = threading.Lock()

    def timed_call(step, fn):
        def wrapper(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                name = step(*a) if callable(step) else step
                with lock:
                    spans.append((name, t0, time.perf_counter()))
        return wrapper

    patches = [(sandbox_docker.Sandbox, "start",
                lambda box: "agent container start" if box.mounts else "grading container start"),
               (evolve.runner, "run_agent", "agent phase"), (evolve.grading, "grade", "grading"),
               (sandbox_docker, "_remove_tracked", "container removal")]
    originals = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
    for obj, name, step in patches:
        setattr(obj, name, timed_call(step, getattr(obj, name)))
    try:
        with tempfile.TemporaryDirectory(prefix="eval-scaling-", dir=work) as tmp:
            h = resolve_harness(str(setup.harness), workdir=Path(tmp) / "harnesses")
            t_start = time.perf_counter()
            report = Evaluation(evalset=load_evalset(str(setup.evalset)), split=SPLIT, harness=h,
                                settings=EvalSettings(model=f"scripted/{setup.script}"),
                                runs_dir=Path(tmp), workers=2, use_cache=False).run()
            t_end = time.perf_counter()
    finally:
        for obj, name, fn in originals:
            setattr(obj, name, fn)
    if any(r.failure_class == "infra" for r in report.results):
        raise BenchError("an evolve task was infra")
    print(f"\ntimeline of one run at 2 workers ({args.tasks} tasks, no-op harness, {t_end - t_start:.1f} s):")
    print(f"  {'step':26} {'count':>5} {'seconds in it':>14} {'two at once':>12} {'share':>6}")
    for step in TIMELINE_STEPS:
        mine = sorted((a, b) for s, a, b in spans if s == step)
        edges = sorted([(a, 1) for a, _ in mine] + [(b, -1) for _, b in mine])
        both, depth, last = 0.0, 0, None
        for t, d in edges:
            if depth >= 2 and last is not None:
                both += t - last
            depth, last = depth + d, t
        total = sum(b - a for a, b in mine)
        share = 2 * both / total if total else 0.0  # the share of the step's time spent alongside another task
        print(f"  {step:26} {len(mine):5d} {total:13.2f}s {both:11.2f}s {share:6.0%}")
    busy = sorted([(a, 1) for s, a, _ in spans if s in ("agent phase", "grading")]
                  + [(b, -1) for s, _, b in spans if s in ("agent phase", "grading")])
    two, depth, last = 0.0, 0, None
    for t, d in busy:
        if depth >= 2 and last is not None:
            two += t - last
        depth, last = depth + d, t
    print(f"  two tasks in their agent phase or grading at once: {two:.1f} s of the run's {t_end - t_start:.1f} s")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--cpu-rounds", type=int, default=2)
    p.add_argument("--wait", type=float, default=2.0, help="seconds each task waits in part 3")
    p.add_argument("--wait-rounds", type=int, default=2, help="rounds of part 3 (0 to skip)")
    p.add_argument("--no-timeline", action="store_true", help="skip part 4")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="eval-scaling-"))
    try:
        if args.rounds:
            wall(args, work)
        if args.cpu_rounds:
            cpu(args, work)
        if args.wait_rounds and args.wait > 0:
            print(f"\nwaiting tasks (each waits {args.wait:g} s in its sandbox):", flush=True)
            wall(args, work, wait_s=args.wait, rounds=args.wait_rounds, warmup=0 if args.rounds else args.warmup)
        if not args.no_timeline:
            timeline(args, work)
        return 0
    except BenchError as e:
        print(f"eval_scaling: {e}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
