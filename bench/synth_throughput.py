#!/usr/bin/env python3
"""Synthesis throughput: validated tasks per minute, on this machine (2 cores here).

Builds the default recipe's ``--projects`` (default: parse and xmltodict)
with ``--per-project`` tasks each (default 6) into a temporary directory,
exactly as ``evolve evals build default --projects ...`` does: baseline runs,
mutant validation in reused containers, then the real grader's check of every
task (reference patch resolves, empty patch does not). The sdists are
downloaded first and not timed (they are cached after the first build).

It prints, per project and in total: tasks kept, mutants tried and the share
valid, seconds, and the figure of merit: validated tasks per minute of wall
time. ``--rounds N`` repeats the build (fresh output each time) and reports
the median. The exit status is non-zero only if a build fails.

On a shared machine wall time says more about the neighbours than about the
build, so it also reports CPU seconds per task: this process and its children
(``getrusage``) plus every container the build starts (their cgroup's
``cpuacct.usage`` or ``cpu.stat``, sampled every 0.2 s while they live; the
Docker daemon's own work is not counted).

    .venv/bin/python bench/synth_throughput.py
    .venv/bin/python bench/synth_throughput.py --projects toolz --per-project 10 --workers 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))


class ContainerCPU:
    """CPU seconds used by the containers this process starts (sampled from their cgroups)."""

    def __init__(self) -> None:
        import threading

        from evolve.sandbox.docker import docker_client

        self.client = docker_client()
        self.seen: dict[str, float] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _usage(self, cid: str) -> float | None:
        v1 = Path(f"/sys/fs/cgroup/cpuacct/docker/{cid}/cpuacct.usage")
        if v1.exists():
            return int(v1.read_text()) / 1e9
        for v2 in (Path(f"/sys/fs/cgroup/system.slice/docker-{cid}.scope/cpu.stat"),
                   Path(f"/sys/fs/cgroup/docker/{cid}/cpu.stat")):
            if v2.exists():
                for line in v2.read_text().splitlines():
                    if line.startswith("usage_usec "):
                        return int(line.split()[1]) / 1e6
        return None

    def _run(self) -> None:
        while not self.stop.wait(0.2):
            try:
                listed = self.client.api.containers(filters={"label": f"evolve.pid={os.getpid()}"})
            except Exception:  # noqa: BLE001 - a missed sample only under-counts, and says so below
                continue
            for c in listed:
                try:
                    used = self._usage(c["Id"])
                except (OSError, ValueError):
                    continue
                if used is not None:
                    self.seen[c["Id"]] = max(self.seen.get(c["Id"], 0.0), used)

    def __enter__(self) -> "ContainerCPU":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()

    def seconds(self) -> float:
        return sum(self.seen.values())


def host_cpu() -> float:
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--projects", default="parse,xmltodict", help="comma-separated projects of the recipe")
    parser.add_argument("--per-project", type=int, default=6)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--recipe", default="default")
    args = parser.parse_args()

    from evolve.synth.build import build, fetch_sdist, find_recipe, load_recipe, sdist_cache

    projects = [p.strip() for p in args.projects.split(",") if p.strip()]
    recipe = load_recipe(find_recipe(args.recipe))
    specs = [p for p in recipe.projects if p.name in projects]
    for spec in specs:  # downloads are not what this measures
        fetch_sdist(spec, sdist_cache())
    print(f"synth throughput: {', '.join(projects)} x {args.per_project} tasks, {args.workers} workers, "
          f"{os.cpu_count()} cores, seed {args.seed}")
    rates, results = [], []
    for r in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="evolve-bench-synth-") as tmp:
            start, cpu0 = time.perf_counter(), host_cpu()
            load0 = os.getloadavg()[0]
            with ContainerCPU() as containers:
                meta = build(args.recipe, dest=Path(tmp) / "out", seed=args.seed, per_project=args.per_project,
                             projects=projects, workers=args.workers)
            seconds = time.perf_counter() - start
            host = host_cpu() - cpu0
        rate = meta["tasks"] / seconds * 60
        rates.append(rate)
        results.append((seconds, meta))
        cpu = host + containers.seconds()
        print(f"round {r + 1}: {meta['tasks']} tasks in {seconds:.1f} s -> {rate:.2f} validated tasks/min; "
              f"CPU {cpu:.0f} s ({host:.0f} s host, {containers.seconds():.0f} s in {len(containers.seen)} "
              f"containers) = {cpu / max(1, meta['tasks']):.1f} CPU s per task; load average "
              f"{load0:.1f} -> {os.getloadavg()[0]:.1f}")
    seconds, meta = results[rates.index(statistics.median_low(rates))]
    print()
    print(f"{'project':<12} {'tasks':>5} {'tried':>5} {'valid':>5} {'baseline s':>10} {'mutants s':>9}")
    for name, s in meta["projects"].items():
        print(f"{name:<12} {s['tasks']:>5} {s.get('tried', 0):>5} {s.get('mutants_kept', 0):>5} "
              f"{s.get('baseline_seconds', 0):>10.1f} {s.get('mutation_seconds', 0):>9.1f}")
    wait = meta.get("grading_wait_seconds", 0.0)
    rest = seconds - sum(s.get("mutation_seconds", 0) for s in meta["projects"].values()) - wait
    print(f"grader check after the last project (the rest overlaps mutation): {wait:.1f} s; "
          f"the rest (start, snapshots, writing): {rest:.1f} s")
    print(f"mutants valid: {meta['mutants_valid']}/{meta['mutants_tried']} "
          f"({100 * meta['mutants_valid_share']:.0f}%); tasks kept: {meta['tasks']}")
    print(f"THROUGHPUT: {statistics.median(rates):.2f} validated tasks per minute "
          f"(median of {len(rates)}; {os.cpu_count()} cores)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
