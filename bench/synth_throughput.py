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
            start = time.perf_counter()
            meta = build(args.recipe, dest=Path(tmp) / "out", seed=args.seed, per_project=args.per_project,
                         projects=projects, workers=args.workers)
            seconds = time.perf_counter() - start
        rate = meta["tasks"] / seconds * 60
        rates.append(rate)
        results.append((seconds, meta))
        print(f"round {r + 1}: {meta['tasks']} tasks in {seconds:.1f} s -> {rate:.2f} validated tasks/min")
    seconds, meta = results[rates.index(statistics.median_low(rates))]
    print()
    print(f"{'project':<12} {'tasks':>5} {'tried':>5} {'valid':>5} {'baseline s':>10} {'mutants s':>9}")
    for name, s in meta["projects"].items():
        print(f"{name:<12} {s['tasks']:>5} {s.get('tried', 0):>5} {s.get('mutants_kept', 0):>5} "
              f"{s.get('baseline_seconds', 0):>10.1f} {s.get('mutation_seconds', 0):>9.1f}")
    rest = seconds - sum(s.get("mutation_seconds", 0) for s in meta["projects"].values()) - meta["grading_wait_seconds"]
    print(f"grader check after the last project (the rest overlaps mutation): {meta['grading_wait_seconds']:.1f} s; "
          f"the rest (start, snapshots, writing): {rest:.1f} s")
    print(f"mutants valid: {meta['mutants_valid']}/{meta['mutants_tried']} "
          f"({100 * meta['mutants_valid_share']:.0f}%); tasks kept: {meta['tasks']}")
    print(f"THROUGHPUT: {statistics.median(rates):.2f} validated tasks per minute "
          f"(median of {len(rates)}; {os.cpu_count()} cores)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
