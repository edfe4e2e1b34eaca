#!/usr/bin/env python3
"""The Ray executor against the local one, and 1 → 2 workers with each, on this machine.

Uses ``eval_overhead.py``'s setup (the mini eval set replicated to ``--tasks``, the no-op harness,
the bare docker+pytest loop) and runs, per worker count W in ``--workers`` and per round, three
whole processes in a rotated order (so drift on a shared machine hits each side alike):

  L: ``evolve eval ... --workers W``                               (local executor)
  R: ``evolve eval ... --workers W --executor ray --ray-address A`` (a one-node Ray cluster started
     here with ``ray start --head``, ``evolve_sandbox: max(W)``, as tests/ray_cluster.py does)
  B: the bare loop with W threads

It prints the medians, the ratio R/L per W (goal ≤ 1.15), the speed-up from the first to the last W
of each side (goal ≥ 1.7 for evolve), and the per-task seconds each side measured, which the README's
extrapolation uses. Timings are wall-clock on a shared 2-core machine: noisy, so compare the sides
of one run, not runs. Exits non-zero only when something broke.

    python bench/executor_compare.py                  # 8 tasks, workers 1 and 2, 3 rounds
    python bench/executor_compare.py --rounds 5 --tasks 8
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import signal
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from eval_overhead import BenchError, Setup, evolve_run_stats, timed  # noqa: E402

TARGET_RAY_RATIO = 1.15
TARGET_SPEEDUP = 1.7


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", type=int, default=8)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    args = p.parse_args()
    from ray_cluster import RayCluster

    def stop(signum, frame):  # SIGTERM stops the cluster too (the finally below)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)

    work = Path(tempfile.mkdtemp(prefix="executor-compare-"))
    cluster = RayCluster(head_slots=max(args.workers))
    try:
        cluster.start()
        times: dict[tuple[str, int], list[float]] = {}
        per_task: dict[tuple[str, int], list[float]] = {}
        cpu: dict[tuple[str, int], list[float]] = {}
        for w in args.workers:
            setup = Setup(work / f"w{w}", args.tasks, w)
            sides = {"local": lambda runs: setup.evolve_cmd(runs),
                     "ray": lambda runs: setup.evolve_cmd(runs) + ["--executor", "ray", "--ray-address",
                                                                   cluster.address],
                     "bare": None}
            for i in range(args.warmup + args.rounds):
                order = list(sides)[i % 3:] + list(sides)[:i % 3]
                line = []
                for side in order:
                    runs = work / f"runs-{side}-{w}-{i}"
                    log = work / f"{side}-{w}-{i}.log"
                    before = resource.getrusage(resource.RUSAGE_CHILDREN)
                    if side == "bare":
                        s = timed(setup.bare_cmd, log)
                        stats = json.loads(log.read_text().strip().splitlines()[-1])
                        task_s = stats["task_seconds"]
                    else:
                        s = timed(sides[side](runs), log)
                        task_s = evolve_run_stats(runs, args.tasks)["task"]
                        shutil.rmtree(runs, ignore_errors=True)
                    after = resource.getrusage(resource.RUSAGE_CHILDREN)
                    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
                    line.append(f"{side} {s:.1f}s (cpu {cpu_s:.1f}s)")
                    if i >= args.warmup:
                        cpu.setdefault((side, w), []).append(cpu_s)
                        times.setdefault((side, w), []).append(s)
                        per_task.setdefault((side, w), []).extend(task_s)
                print(f"  workers {w} {'warm-up' if i < args.warmup else f'round {i - args.warmup + 1}'}: "
                      + "  ".join(line), flush=True)
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"\nexecutor_compare: {args.tasks} tasks, {args.rounds} rounds, medians of whole-process wall time")
        for w in args.workers:
            r = med[("ray", w)] / med[("local", w)]
            print(f"  workers {w}: local {med[('local', w)]:.1f}s  ray {med[('ray', w)]:.1f}s  "
                  f"bare {med[('bare', w)]:.1f}s  ray/local {r:.2f} (goal <= {TARGET_RAY_RATIO})  "
                  f"local/bare {med[('local', w)] / med[('bare', w)]:.2f}")
        lo, hi = args.workers[0], args.workers[-1]
        for side in ("local", "ray", "bare"):
            print(f"  speed-up {lo} -> {hi} workers, {side}: {med[(side, lo)] / med[(side, hi)]:.2f}x"
                  + (f" (goal >= {TARGET_SPEEDUP})" if side != "bare" else ""))
        print("  per-task seconds (mean over counted rounds; evolve: agent + grade + files):")
        for (side, w), xs in sorted(per_task.items()):
            print(f"    {side:5s} workers {w}: {statistics.mean(xs):.2f}s")
        print("  host CPU seconds per task of the measured process and its children (user + sys, median;"
              " ray: the driver only, its workers run under the raylet):")
        for (side, w), xs in sorted(cpu.items()):
            print(f"    {side:5s} workers {w}: {statistics.median(xs) / args.tasks:.2f}s")
        return 0
    except BenchError as e:
        print(f"executor_compare: {e}", file=sys.stderr)
        return 1
    finally:
        cluster.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
