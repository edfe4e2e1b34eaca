#!/usr/bin/env python3
"""The power of the search: greedy K=1, K candidates raced with Holm, and the DGM archive, on a
stream of simulated candidates, through the REAL acceptance, race and parent-selection code.

Run it as ``bench/acceptance_sim.py --search`` (or directly). Model:

* A harness is a vector of per-task resolve probabilities on the N-task search split
  (``acceptance_sim.draw_parent``: 45% hard, 20% easy, 35% flaky tasks; a flaky task flips
  between runs of the same harness with probability 2p(1-p)). Each harness keeps its own
  outcomes by (task, repeat), as the result cache does: a run is paid once ("fresh"). Infra
  failures (1%) are never kept.
* A candidate changes its parent by a true gain drawn from a realistic stream: 45% harmful
  (-2 to -15 points), 30% neutral (0), 18% small gains (+2 to +6), 7% large (+8 to +15),
  spread over 40% of the tasks with per-task logit noise (``acceptance_sim.draw_child``:
  some tasks fixed, some broken, most hard tasks out of reach).
* ``greedy``: one candidate per generation from ``best``, ``run_acceptance`` against it.
  ``race K``: K candidates from ``best``, ``evolve.search.race.run_race`` (Holm). ``dgm``: one
  candidate per generation from a parent drawn by ``evolve.search.parents.dgm_weights`` over
  the stepping stones (``evolve.search.archive.is_stone``); a child of a stone that beats its
  parent must then beat ``best`` too, paired (``evolve.loop.Loop._against_best``).

Reported: the false-accept rate of null candidates per generation for K = 1, 2, 4, 8 (Holm's
bound); the power to accept a true +10 by split size (and, for a race, a +10 among K-1 neutral
candidates); and per strategy on the stream: false accepts per generation and per candidate
with no true gain over the accepted head ("/null cand."), task-runs per generation against a
full evaluation (every candidate once on every task: K x N fresh runs, the parent cached), and
the true gain of ``best`` after a fixed budget of fresh task-runs (mean ± standard error over
nights, and the share of nights that end no better than the base).

What it does not model: a landscape where a worse stepping stone leads somewhere better (DGM's
reason for the archive): a child's gain here does not depend on its parent's history.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from acceptance_sim import draw_child, draw_parent  # noqa: E402

from evolve.acceptance import run_acceptance  # noqa: E402
from evolve.config import AcceptanceConfig  # noqa: E402
from evolve.search.archive import Node, is_stone, p_worse  # noqa: E402
from evolve.search.parents import dgm_weights  # noqa: E402
from evolve.search.race import run_race  # noqa: E402


INFRA = 0.01


@dataclass
class Harness:
    """Per-task probabilities and the outcomes drawn so far (the result cache)."""

    p: np.ndarray
    seen: dict = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return float(self.p.mean())


class World:
    """Draws outcomes for harnesses; counts fresh (uncached) runs."""

    def __init__(self, rng: np.random.Generator, ids: list[str]) -> None:
        self.rng, self.ids = rng, ids
        self.idx = {iid: k for k, iid in enumerate(ids)}
        self.fresh = 0

    def run(self, h: Harness, ids: list[str], rep: int) -> dict[str, bool | None]:
        out = {}
        for iid in ids:
            key = (iid, rep)
            if key in h.seen:
                out[iid] = h.seen[key]
                continue
            self.fresh += 1
            if self.rng.random() < INFRA:
                out[iid] = None
                continue
            h.seen[key] = out[iid] = bool(self.rng.random() < h.p[self.idx[iid]])
        return out

    def pair(self, parent: Harness, child: Harness):
        return lambda who, ids, rep: self.run(parent if who == "parent" else child, ids, rep)


def stream_gain(rng: np.random.Generator) -> float:
    u = rng.random()
    if u < 0.45:
        return -rng.uniform(0.02, 0.15)
    if u < 0.75:
        return 0.0
    if u < 0.93:
        return rng.uniform(0.02, 0.06)
    return rng.uniform(0.08, 0.15)


def make_child(rng: np.random.Generator, parent: Harness, gain: float | None = None, kind: str = "mixed") -> Harness:
    """A child: true gain ``gain`` (None: drawn from the stream); ``kind`` "identical" is the parent itself
    (the sharp null), "mixed" spreads fixes and breaks over 40% of the tasks."""
    while True:
        g = stream_gain(rng) if gain is None else gain
        c = draw_child(rng, parent.p, kind, g)
        if c is not None:
            return Harness(c)
        if gain is not None:  # unreachable from this parent: a gentler one
            gain = gain * 0.5


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (0.0, 1.0)
    r = k / n
    den = 1 + z * z / n
    mid = (r + z * z / (2 * n)) / den
    half = z * math.sqrt(r * (1 - r) / n + z * z / (4 * n * n)) / den
    return max(0.0, mid - half), min(1.0, mid + half)


# -- 1. the per-generation false-accept rate of null candidates -----------------------------------


def null_table(args, cfg: AcceptanceConfig, kw: dict) -> bool:
    print(f"\n== null candidates: every one of K has true gain 0 ({args.null_trials} generations per row, "
          f"{args.tasks} tasks; identical = the parent itself, mixed = fixes and breaks that cancel) ==")
    print(f"{'null':<10}{'K':>3}{'accept/gen':>12}  {'95% CI':<16}{'uncorrected':>12}  "
          f"target <= {1 - cfg.confidence:.0%}")
    ok = True
    for kind, k in [(kind, k) for kind in ("identical", "mixed") for k in (1, 2, 4, 8)]:
        rng = np.random.default_rng([args.seed, 1, k, len(kind)])
        ids = [f"t{i:03d}" for i in range(args.tasks)]
        acc = unc = 0
        for _ in range(args.null_trials):
            world = World(rng, ids)
            parent = Harness(draw_parent(rng, args.tasks))
            kids = [make_child(rng, parent, 0.0, kind) for _ in range(k)]
            race = run_race(lambda j, b, rep: world.run(parent if j is None else kids[j], b, rep), ids, k, cfg, **kw)
            acc += race.winner is not None
            unc += any(v.accepted for v in race.verdicts)
        lo, hi = wilson(acc, args.null_trials)
        met = "met" if acc / args.null_trials <= 1 - cfg.confidence else ("within noise" if lo <= 0.05 else "NOT MET")
        ok &= lo <= 1 - cfg.confidence
        print(f"{kind:<10}{k:>3}{acc / args.null_trials:>12.1%}  [{lo:5.1%}, {hi:5.1%}]"
              f"{unc / args.null_trials:>12.1%}  {met}")
    return ok


# -- 2. power at +10 points ---------------------------------------------------------------------------


def power_table(args, cfg: AcceptanceConfig, kw: dict) -> None:
    print(f"\n== power: P(accept a true +10 points) ({args.power_trials} trials per cell) ==")
    sizes = [int(s) for s in args.power_sizes.split(",")]
    ks = (1, 4)
    print(f"{'tasks':>6}" + "".join(f"{'K=' + str(k):>10}" for k in ks) + f"{'3 repeats':>11}"
          "   (K>1: one +10 among K-1 "
          "neutral candidates; '3 repeats': K=1, rerun_discordant 2 -> every task run 3 times)")
    for n in sizes:
        ids = [f"t{i:03d}" for i in range(n)]
        row = []
        for k in ks:
            rng = np.random.default_rng([args.seed, 2, n, k])
            hit = 0
            for _ in range(args.power_trials):
                world = World(rng, ids)
                parent = Harness(draw_parent(rng, n))
                kids = [make_child(rng, parent, 0.10)] + [make_child(rng, parent, 0.0) for _ in range(k - 1)]
                race = run_race(lambda j, b, rep: world.run(parent if j is None else kids[j], b, rep), ids, k, cfg,
                                **kw)
                hit += race.winner == 0
            row.append(hit / args.power_trials)
        rng = np.random.default_rng([args.seed, 3, n])
        hit = 0
        for _ in range(args.power_trials):
            world = World(rng, ids)
            parent = Harness(draw_parent(rng, n))
            child = make_child(rng, parent, 0.10)
            hit += repeated_accept(world, parent, child, ids, cfg, 3)
        row.append(hit / args.power_trials)
        print(f"{n:>6}" + "".join(f"{x:>10.0%}" for x in row[:-1]) + f"{row[-1]:>11.0%}")


def repeated_accept(world: World, parent: Harness, child: Harness, ids: list[str], cfg: AcceptanceConfig,
                    repeats: int) -> bool:
    """Every task run ``repeats`` times on both sides, then the same exact paired test (d_i from all
    repeats): what a user gets by enlarging the split with repeats instead of tasks."""
    from evolve.acceptance import TaskRecord, decide

    recs = []
    for iid in ids:
        par, chi, reps = [], [], []
        for rep in range(repeats):
            a, b = world.run(parent, [iid], rep)[iid], world.run(child, [iid], rep)[iid]
            if a is None and b is None:
                continue
            par.append(bool(a))
            chi.append(bool(b))
            reps.append(rep)
        recs.append(TaskRecord(iid, tuple(par), tuple(chi), tuple(reps)))
    return decide(recs, cfg).accepted


# -- 3. the stream: greedy, race, archive --------------------------------------------------------------


@dataclass
class Night:
    generations: int = 0
    false_accepts: int = 0
    accepts: int = 0
    fresh: int = 0
    candidates: int = 0
    nulls: int = 0
    """Candidates whose true gain over the accepted head they were judged against is <= 0."""
    gain: float = 0.0


def night(strategy: str, k: int, args, cfg: AcceptanceConfig, kw: dict, rng: np.random.Generator) -> Night:
    ids = [f"t{i:03d}" for i in range(args.tasks)]
    world = World(rng, ids)
    base = Harness(draw_parent(rng, args.tasks))
    world.run(base, ids, 0)  # the baseline evaluation (not counted against the budget)
    world.fresh = 0
    best = base
    out = Night()
    archive: list[tuple[Node, Harness]] = [(Node(gen=0, commit="0", status="base", stone=True, rate=base.rate), base)]
    budget = args.budget * args.tasks
    alpha = 1 - cfg.confidence
    while world.fresh < budget:
        out.generations += 1
        if strategy == "race":
            kids = [make_child(rng, best) for _ in range(k)]
            out.nulls += sum(kid.rate <= best.rate for kid in kids)
            race = run_race(lambda j, b, rep: world.run(best if j is None else kids[j], b, rep), ids, k, cfg, **kw)
            out.candidates += k
            if race.winner is not None:
                win = kids[race.winner]
                out.accepts += 1
                out.false_accepts += win.rate <= best.rate
                best = win
            continue
        out.candidates += 1
        if strategy == "greedy":
            parent_gen, parent = 0, best
        else:
            nodes = [n for n, _ in archive]
            w = dgm_weights(nodes)
            gens = sorted(g for g, _ in w)  # the bench's archive has no lost candidates: refs are (gen, None)
            pick = int(rng.choice(gens, p=[w[(g, None)] for g in gens])) if gens else 0
            parent_gen, parent = pick, dict((n.gen, h) for n, h in archive)[pick]
        child = make_child(rng, parent)
        out.nulls += child.rate <= best.rate
        v = run_acceptance(world.pair(parent, child), ids, cfg, **kw)
        accepted = v.accepted
        if accepted and parent is not best:
            v2 = run_acceptance(world.pair(best, child), ids, cfg, **kw)
            accepted = v2.accepted
        if strategy == "dgm":
            status = "accepted" if accepted else "rejected"
            stone = is_stone(status, p_worse(v.records), alpha, False)
            node = Node(gen=len(archive), commit=str(len(archive)), parent_gen=parent_gen, status=status,
                        stone=stone, rate=v.child_rate)
            archive.append((node, child))
        if accepted:
            out.accepts += 1
            out.false_accepts += child.rate <= best.rate
            best = child
    out.fresh = world.fresh
    out.gain = best.rate - base.rate
    return out


def stream_table(args, cfg: AcceptanceConfig, kw: dict) -> None:
    print(f"\n== the stream: {args.nights} nights per strategy, {args.tasks} tasks, a budget of {args.budget} x N "
          f"fresh task-runs per night ==")
    print(f"{'strategy':<12}{'gens':>6}{'accepts':>9}{'false acc/gen':>15}{'/null cand.':>12}{'runs/gen vs full':>18}"
          f"{'true gain (pts)':>17}{'P(gain<=0)':>12}")
    for strategy, k in [("greedy", 1)] + [("race", k) for k in args.race_k] + [("dgm", 1)]:
        rng = np.random.default_rng([args.seed, 4, k, len(strategy)])
        nights = [night(strategy, k, args, cfg, kw, rng) for _ in range(args.nights)]
        gens = sum(n.generations for n in nights)
        ratio = sum(n.fresh for n in nights) / (sum(n.candidates for n in nights) * args.tasks)
        gains = np.array([n.gain for n in nights]) * 100
        fa = sum(n.false_accepts for n in nights)
        name = strategy if strategy != "race" else f"race K={k}"
        print(f"{name:<12}{gens / args.nights:>6.1f}{sum(n.accepts for n in nights) / args.nights:>9.2f}"
              f"{fa / gens:>15.1%}{fa / max(1, sum(n.nulls for n in nights)):>12.2%}{ratio:>17.2f}x"
              f"{gains.mean():>+11.1f} ± {gains.std() / math.sqrt(len(gains)):.1f}"
              f"{(gains <= 0).mean():>12.0%}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=int, default=29, help="search split size N (evolve's default eval set: 29)")
    ap.add_argument("--seed", type=int, default=20261201)
    ap.add_argument("--confidence", type=float, default=0.95)
    ap.add_argument("--rerun", type=int, default=None, help="cfg.rerun_discordant (default: evolve's for the split size)")
    ap.add_argument("--stages", type=str, default="auto", help="cumulative fractions, e.g. 0.5,1 or 1; auto: evolve's default for the split size")
    ap.add_argument("--futility-z", type=lambda v: v if v == "auto" else float(v), default="auto",
                    help="a number, or auto: evolve's default for the split size")
    ap.add_argument("--null-trials", type=int, default=600)
    ap.add_argument("--power-trials", type=int, default=300)
    ap.add_argument("--power-sizes", default="29,50,100,150")
    ap.add_argument("--nights", type=int, default=100)
    ap.add_argument("--budget", type=float, default=30.0, help="fresh task-runs per night, in units of N")
    ap.add_argument("--race-k", default="2,4", help="K values of the race rows")
    ap.add_argument("--only", default="", help="comma list of null,power,stream (default: all)")
    args = ap.parse_args(argv)
    args.race_k = [int(x) for x in args.race_k.split(",") if x]
    cfg = AcceptanceConfig(confidence=args.confidence, rerun_discordant=args.rerun)
    kw = dict(stages=None if args.stages == "auto" else tuple(float(s) for s in args.stages.split(",")),
              futility_z=args.futility_z)
    only = {x for x in args.only.split(",") if x} or {"null", "power", "stream"}
    print(f"search_sim: {args.tasks} tasks, confidence {args.confidence}, rerun_discordant {'auto' if args.rerun is None else args.rerun}, "
          f"stages {kw['stages'] or 'auto'}, futility_z {args.futility_z}, seed {args.seed}")
    ok = True
    if "null" in only:
        ok = null_table(args, cfg, kw)
    if "power" in only:
        power_table(args, cfg, kw)
    if "stream" in only:
        stream_table(args, cfg, kw)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
