#!/usr/bin/env python3
"""Does ``evolve.acceptance`` tell true gains from noise, and at what cost in task-runs?

Simulated candidates, REAL acceptance code: every simulated generation goes
through ``evolve.acceptance.run_acceptance`` with an ``EvaluateFn`` that samples
outcomes instead of running Docker.

The model
---------
* N tasks (default 50, the size of a search split). Each task has a parent
  resolve probability p_i from a realistic mix: 45% hard (Beta(0.3, 8), mostly
  ~0), 20% easy (Beta(8, 0.4), mostly ~1), 35% flaky (Beta(1.2, 1.2), anywhere);
  mean ~0.38. Per-task noise is Bernoulli: re-running the SAME harness on task i
  flips its outcome with probability 2 p_i (1 - p_i).
* A child changes 40% of the tasks by a logit shift ``mu + N(0, 1.5)``, mu solved
  (Brent) so that the TRUE mean gain sum(c_i - p_i)/N is exactly the scenario's
  (0, +5, +10 points, or -10): the gain is spread over tasks, some fixed, some
  broken, hard tasks mostly out of reach.
  ``0 identical`` is the sharp null (c_i = p_i); ``0 adversarial`` is a worst
  case for re-running only discordant tasks: 10% of the tasks are reliably fixed
  (p < 0.1 -> c = 0.95) and exactly as much is lost as small partial breaks spread
  over all the other tasks that are not already ~0 (c_i = p_i (1 - s)).
  ``0 abstaining`` is the abstention attack: the child is the parent (c_i = p_i)
  but returns an infrastructure failure (``None``) instead of False on a share
  ``--abstain`` of the runs it fails (a fresh draw on every ask, so a re-ask is a
  second try). Dropping every repeat with infra would lose only its failures.
* Caching like the real loop: a parent is kept for ``--children`` consecutive
  candidates (default 4) and its outcomes are cached by (task, repeat), so a
  parent run is fresh only the first time; child runs are always fresh.
  Infrastructure failures (``None``) happen at ``--infra`` rate on both sides;
  one-sided ones are asked again ``--infra-reruns`` times (``cfg.infra_reruns``).

Printed per scenario
--------------------
accept rate with a 95% Wilson interval (its n shrunk by the design effect of
candidates that share a parent), the early-stop rate, the verdicts' mean delta,
and the cost. "Full split" is defined two ways: ``full = 2N`` runs per
generation (parent and child once on every task, nothing cached), against which
``runs/2N`` counts every run requested, cached or not (re-runs included); and
``full = N`` fresh runs (the child once on every task, the parent all cached),
against which ``fresh/N`` counts the child's runs plus the parent's uncached ones
(the parent's repeat 0 is paid once per parent here, i.e. 1/--children of N per
generation; in the loop it is usually cached already, from the generation that
accepted it). The false-accept target (<= 5%) applies to the true-gain-0 rows.

After the configured procedure come variants on the same simulated candidates
(common random numbers): no futility stop, min_gain 0.02, repeat 0 only (the
exact McNemar test), and the NAIVE estimator d_i = mean(child) - mean(parent),
which the discordant-only re-runs bias (see ``evolve/acceptance.py``); it shows
on the "0 adversarial" row, more so with ``--tasks 100``.

Exit status 1 only if a true-gain-0 row of the configured procedure is above 5%
beyond noise (its whole 95% interval above 5%).

    .venv/bin/python bench/acceptance_sim.py                    # 1000 generations per scenario
    .venv/bin/python bench/acceptance_sim.py --trials 400 --min-gain 0.02
    .venv/bin/python bench/acceptance_sim.py --no-variants      # the configured procedure only
    .venv/bin/python bench/acceptance_sim.py --search [options]  # the search: bench/search_sim.py
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import brentq
from scipy.special import expit, logit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evolve.acceptance import run_acceptance  # noqa: E402
from evolve.config import AcceptanceConfig  # noqa: E402


TARGET = 0.05
EPS = 1e-6


# -- simulated tasks and candidates -------------------------------------------------------------


def draw_parent(rng: np.random.Generator, n: int) -> np.ndarray:
    kind = rng.choice(3, size=n, p=[0.45, 0.20, 0.35])
    p = np.where(kind == 0, rng.beta(0.3, 8, n), np.where(kind == 1, rng.beta(8, 0.4, n), rng.beta(1.2, 1.2, n)))
    return np.clip(p, EPS, 1 - EPS)


def draw_child(rng: np.random.Generator, p: np.ndarray, scenario: str, gain: float) -> np.ndarray | None:
    """Child probabilities with mean(c) - mean(p) == gain exactly, or None when unreachable."""
    n = len(p)
    if scenario in ("identical", "abstain"):
        return p.copy()
    if scenario == "adversarial":
        cand = np.flatnonzero(p < 0.1)
        k = max(1, round(0.1 * n))
        if len(cand) < k:
            return None
        fix = rng.choice(cand, size=k, replace=False)
        c = p.copy()
        c[fix] = 0.95
        rest = np.setdiff1d(np.flatnonzero(p > 0.1), fix)
        need = (c - p).sum() - gain * n          # probability mass to take off the rest
        mass = p[rest].sum()
        if mass <= need:
            return None
        c[rest] = p[rest] * (1 - need / mass)
        return c
    affected = rng.random(n) < 0.4
    u = rng.normal(0.0, 1.5, n)
    lp = logit(p)

    def child(mu: float) -> np.ndarray:
        return np.where(affected, expit(lp + u + mu), p)

    def gap(mu: float) -> float:
        return float((child(mu) - p).mean() - gain)

    if gap(-30) > 0 or gap(30) < 0:
        return None
    return child(brentq(gap, -30, 30, xtol=1e-12))


SCENARIOS = [  # (label, kind, true gain)
    ("0 identical", "identical", 0.0),
    ("0 mixed", "mixed", 0.0),
    ("0 adversarial", "adversarial", 0.0),
    ("0 abstaining", "abstain", 0.0),
    ("-10 harmful", "mixed", -0.10),
    ("+5", "mixed", 0.05),
    ("+10", "mixed", 0.10),
]


class SimEvaluate:
    """An EvaluateFn over known probabilities; the parent's outcomes are cached by (task, repeat)."""

    def __init__(self, ids: list[str], p: np.ndarray, c: np.ndarray, rng: np.random.Generator,
                 parent_cache: dict, infra: float, abstain: float = 0.0) -> None:
        self.idx = {iid: k for k, iid in enumerate(ids)}
        self.prob = {"parent": p, "child": c}
        self.rng, self.cache, self.infra, self.abstain = rng, parent_cache, infra, abstain
        self.fresh = {"parent": 0, "child": 0}

    def __call__(self, who: str, ids: list[str], repeat: int) -> dict[str, bool | None]:
        out: dict[str, bool | None] = {}
        for iid in ids:
            key = (iid, repeat)
            if who == "parent" and key in self.cache:
                out[iid] = self.cache[key]
                continue
            self.fresh[who] += 1
            if self.rng.random() < self.infra:
                out[iid] = None                  # infra failures are not cached: the next call retries
                continue
            res = bool(self.rng.random() < self.prob[who][self.idx[iid]])
            if who == "child" and not res and self.abstain and self.rng.random() < self.abstain:
                out[iid] = None                  # the abstaining child passes a failure off as infra
                continue
            if who == "parent":
                self.cache[key] = res
            out[iid] = res
        return out


# -- running ------------------------------------------------------------------------------------


@dataclass
class Procedure:
    name: str
    cfg: AcceptanceConfig
    kwargs: dict


@dataclass
class Result:
    accepts: list[int]          # per epoch
    sizes: list[int]
    stopped: int
    runs: int
    child_runs: int
    fresh: int
    est: float
    n: int

    @property
    def rate(self) -> float:
        return sum(self.accepts) / max(1, sum(self.sizes))


def simulate(proc: Procedure, label: str, kind: str, gain: float, args, trials: int) -> Result:
    ids = [f"task-{k:03d}" for k in range(args.tasks)]
    # common random numbers: every procedure sees the same tasks and candidates
    rng = np.random.default_rng([args.seed, SCENARIOS.index((label, kind, gain))])
    accepts, sizes = [], []
    stopped = runs = child_runs = fresh = 0
    est = 0.0
    left = trials
    while left > 0:
        p = draw_parent(rng, args.tasks)
        cache: dict = {}
        a = m = 0
        for _ in range(min(args.children, left)):
            c = draw_child(rng, p, kind, gain)
            while c is None:
                p = draw_parent(rng, args.tasks)
                cache = {}
                c = draw_child(rng, p, kind, gain)
            ev = SimEvaluate(ids, p, c, np.random.default_rng(rng.integers(2**63)), cache, args.infra,
                             args.abstain if kind == "abstain" else 0.0)
            v = run_acceptance(ev, ids, proc.cfg, **proc.kwargs)
            a += v.accepted
            m += 1
            stopped += v.stopped_early
            runs += v.task_runs
            child_runs += v.child_runs
            fresh += ev.fresh["parent"] + ev.fresh["child"]
            est += v.delta
        accepts.append(a)
        sizes.append(m)
        left -= m
    return Result(accepts, sizes, stopped, runs, child_runs, fresh, est / trials, trials)


def wilson(res: Result, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson interval with n shrunk by the design effect of candidates sharing a parent."""
    n, r = sum(res.sizes), res.rate
    e = len(res.sizes)
    if e > 1 and 0 < r < 1:
        mbar = n / e
        var = sum((a - r * m) ** 2 for a, m in zip(res.accepts, res.sizes)) / (e * (e - 1) * mbar ** 2)
        n_eff = max(1.0, min(n, r * (1 - r) / var)) if var > 0 else n
    else:
        n_eff = n
    den = 1 + z * z / n_eff
    mid = (r + z * z / (2 * n_eff)) / den
    half = z * math.sqrt(r * (1 - r) / n_eff + z * z / (4 * n_eff ** 2)) / den
    return max(0.0, mid - half), min(1.0, mid + half)


def table(proc: Procedure, args, trials: int) -> list[tuple[str, Result]]:
    n = args.tasks
    print(f"\n== {proc.name}  ({trials} generations per row) ==")
    print(f"{'true gain (pts)':<16}{'accept':>8}  {'95% CI':<15}{'stopped':>8}{'mean delta':>11}"
          f"{'runs/gen':>9}{'runs/2N':>8}{'fresh/N':>8}  target")
    out = []
    wanted = {x.strip() for x in args.scenarios.split(",") if x.strip()}
    for label, kind, gain in SCENARIOS:
        if wanted and label not in wanted:
            continue
        res = simulate(proc, label, kind, gain, args, trials)
        lo, hi = wilson(res)
        g = res.n
        if gain == 0:
            mark = ("met (whole CI)" if hi <= TARGET else "met" if res.rate <= TARGET
                    else "above, within noise" if lo <= TARGET else "NOT MET")
            target = f"false accept <= 5%: {mark}"
        elif gain > 0:
            target = "power"
        else:
            target = "harmful: should be rejected"
        print(f"{label:<16}{res.rate:>8.1%}  [{lo:5.1%}, {hi:5.1%}]{res.stopped / g:>8.0%}{res.est * 100:>+10.1f} "
              f"{res.runs / g:>9.1f}{res.runs / g / (2 * n):>8.2f}{res.fresh / g / n:>8.2f}  {target}")
        out.append((label, res))
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--search" in argv:  # greedy, racing and the archive on a stream of candidates
        from search_sim import main as search_main

        return search_main([a for a in argv if a != "--search"])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=int, default=50, help="tasks in the search split (N)")
    ap.add_argument("--trials", type=int, default=1000, help="simulated generations per scenario")
    ap.add_argument("--variant-trials", type=int, default=400, help="the same for the comparison procedures")
    ap.add_argument("--seed", type=int, default=20240601)
    ap.add_argument("--confidence", type=float, default=0.95)
    ap.add_argument("--min-gain", type=float, default=0.0)
    ap.add_argument("--rerun", type=int, default=None, help="cfg.rerun_discordant (default: evolve's for the split size)")
    ap.add_argument("--children", type=int, default=4, help="candidates per parent (its runs are cached)")
    ap.add_argument("--infra", type=float, default=0.01, help="infrastructure-failure rate per run")
    ap.add_argument("--infra-reruns", type=int, default=1, help="cfg.infra_reruns")
    ap.add_argument("--abstain", type=float, default=0.5,
                    help="'0 abstaining' row: share of its failed runs the child reports as infra")
    ap.add_argument("--stages", type=str, default="auto", help="cumulative fractions, e.g. 0.5,1 or 1; auto: evolve's default for the split size")
    ap.add_argument("--futility-z", type=lambda v: v if v == "auto" else float(v), default="auto",
                    help="a number, or auto: evolve's default for the split size")
    ap.add_argument("--estimator", default="rao-blackwell", choices=["rao-blackwell", "mean"])
    ap.add_argument("--scenarios", default="", help="comma-separated row labels to run (default: all), e.g. '+5,+10'")
    ap.add_argument("--no-variants", action="store_true", help="skip the comparison procedures")
    args = ap.parse_args(argv)

    stages = None if args.stages == "auto" else tuple(float(s) for s in args.stages.split(","))
    cfg = AcceptanceConfig(confidence=args.confidence, min_gain=args.min_gain, rerun_discordant=args.rerun,
                           infra_reruns=args.infra_reruns)
    main_proc = Procedure(f"configured: confidence {args.confidence}, min_gain {args.min_gain}, rerun_discordant "
                          f"{'auto' if args.rerun is None else args.rerun}, infra_reruns {args.infra_reruns}, stages {stages or 'auto'}, "
                          f"futility_z {args.futility_z}, estimator {args.estimator}",
                          cfg, dict(stages=stages, futility_z=args.futility_z, estimator=args.estimator))
    procs = [main_proc]
    if not args.no_variants:
        procs += [
            Procedure("variant: no futility stop (stages (1,))", cfg,
                      dict(stages=(1.0,), futility_z=None, estimator=args.estimator)),
            Procedure("variant: min_gain 0.02", cfg.model_copy(update={"min_gain": 0.02}),
                      dict(stages=stages, futility_z=args.futility_z, estimator=args.estimator)),
            Procedure("variant: repeat 0 only (rerun_discordant 0: exact McNemar)",
                      cfg.model_copy(update={"rerun_discordant": 0}),
                      dict(stages=stages, futility_z=args.futility_z)),
            Procedure("variant: NAIVE d_i = mean(child) - mean(parent) (biased by the discordant-only re-runs)",
                      cfg, dict(stages=stages, futility_z=args.futility_z, estimator="mean")),
        ]
    n = args.tasks
    print(f"acceptance_sim: {n} tasks, seed {args.seed}, "
          f"{args.children} candidates per cached parent, infra rate {args.infra}, "
          f"abstention {args.abstain} of the '0 abstaining' child's failures")
    print(f"full split: 2N = {2 * n} runs per generation (parent and child once on every task), "
          f"or N = {n} fresh runs if the parent's are cached.")
    print("columns: stopped = early futility stops; mean delta = the verdicts' delta in points (early stops "
          "included);\n  runs/gen = runs requested per generation, parent + child, cached ones included "
          "(= 2 x child runs);\n  runs/2N = that / 2N; fresh/N = (child runs + uncached parent runs) / N")
    t0 = time.perf_counter()
    failed = False
    for proc in procs:
        rows = table(proc, args, args.trials if proc is main_proc else args.variant_trials)
        if proc is main_proc:
            gains = {label: g for label, _, g in SCENARIOS}
            failed = any(wilson(res)[0] > TARGET for label, res in rows if gains[label] == 0)
    print(f"\n{time.perf_counter() - t0:.0f} s")
    if failed:
        print("false-accept target missed for the configured procedure (95% CI entirely above 5%)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
