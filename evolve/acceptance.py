"""Accept or roll back a candidate harness: a paired, re-run, sequentially stopped comparison.

Pure logic: no Docker, no files, no clock. The loop passes an ``EvaluateFn`` that
runs real (cached) evaluations; ``bench/acceptance_sim.py`` passes one that samples
simulated outcomes. Both run exactly this code.

Procedure (``run_acceptance``)
------------------------------
1. **Paired, same tasks.** The child (candidate) and the parent (accepted harness)
   are evaluated on the same search-split tasks at the same repeat indices, so
   each task is its own control: task difficulty, the largest source of
   variance, cancels. The tasks are put in a fixed pseudo-random order (sha256 of
   the instance_id) and taken in *stages* (default: ``evolve.config.Procedure.default`` for the split's size), so an
   interim look sees a representative subset rather than, say, one repository.
2. **Re-run the discordant tasks.** A task whose repeat-0 outcomes differ (one
   side resolved it, the other not) is re-run ``cfg.rerun_discordant`` (R) more
   times, repeats 1..R, for *both* sides, so one lucky or unlucky run cannot make
   a verdict. Over a task's paired repeats let W be the child-only wins and L the
   parent-only wins; the task's estimated change is

       d_i = (W - L) / (W + L)        (0 for a task without a discordant pair)

   Its sign is that of mean(child_i) - mean(parent_i), so ``fixed``/``broken``
   are the tasks whose per-task mean outcome got better/worse.
3. **Futility stop (binding, one-sided).** After every stage but the last, if
   ``z = sum(d_i) / sqrt(sum(d_i^2)) < futility_z`` (default 0 below 100 tasks: the
   child is behind so far; 0.25 from 100) the candidate is rejected without evaluating the remaining
   tasks. This is where task-runs are saved: most candidates are no better than
   their parent. A futility stop can only turn an accept into a reject, never the
   reverse, so it cannot raise the false-accept rate: event by event,
   P(accept with stopping) <= P(accept without) (Jennison & Turnbull, *Group
   Sequential Methods with Applications to Clinical Trials*, 2000, sect. 10:
   binding futility boundaries are conservative). Its cost in power is measured
   by the bench.
4. **Paired one-sided test** (``decide``) on the d_i of every task with a paired
   repeat 0: the sign-flip permutation test of H0 "on every task, child and
   parent are exchangeable" against "child better", statistic ``sum(d_i)``,
   p = P(sum(e_i d_i) >= observed) over all 2^n sign vectors e. It is computed
   *exactly* (a convolution on the lattice the d_i live on, multiples of
   1/lcm(1..R+1)), so a verdict needs no random numbers and is reproducible; a
   seeded Monte-Carlo ``scipy.stats.permutation_test`` is the fallback only for
   a huge lattice. With R = 0 (d_i in {-1, 0, +1}) it is exactly the one-sided
   exact McNemar test (a binomial test on the discordant tasks, McNemar 1947);
   in general it is Fisher's randomization test for paired data.
   **Accept iff p < 1 - confidence and mean(d) >= min_gain** (and the infra check
   below passes); ``delta`` is
   mean(d). ``parent_rate`` is the parent's repeat-0 resolve rate on the
   compared tasks (unbiased), ``child_rate = parent_rate + delta``. The interval
   is the paired t interval of mean(d) at two-sided level ``2*confidence - 1``:
   its lower end is the one-sided ``confidence`` bound matching the test.

Why re-running only the discordant tasks does not inflate false accepts
----------------------------------------------------------------------
* *The naive estimate is biased.* With d_i = mean(child_i) - mean(parent_i), a
  task with true probabilities p_i (parent) and c_i (child) has
  E[d_i] = (c_i - p_i)(1 + R P_i)/(1 + R), P_i = p_i + c_i - 2 p_i c_i its
  discordance probability: re-runs happen only where repeat 0 disagreed, so
  reliable swings (0 -> 1, P = 1) weigh up to R + 1 times more than partial ones
  (0.4 -> 0.2). A child with no real gain that fixes a few tasks reliably and
  pays for it with many small partial losses then looks better than it is:
  the bench's "0 adversarial" row is accepted ~15% of the time on 100 tasks
  with that estimator (worse as the split grows: the bias stays, the noise
  shrinks).
* *d_i = (W - L)/(W + L) is exactly unbiased*: E[d_i] = c_i - p_i for every
  task, any R. Given the counts (W, L) the repeats are exchangeable, so the
  repeat-0 pair is equally likely to be any of the W + L discordant pairs and
  E[c0 - p0 | W, L] = (W - L)/(W + L): d_i is the Rao-Blackwellization of the
  repeat-0 difference c0 - p0 (itself unbiased; McNemar's statistic), hence
  unbiased with a variance no larger (Rao 1945, Blackwell 1947). Checked by
  exact enumeration in ``tests/test_acceptance.py``. So sum(d_i) is unbiased for
  the true net gain N(c - p) whatever mix of fixes and breaks produced it.
* *Exact under the sharp null.* If the child behaves like the parent on every
  task (c_i = p_i), the whole procedure (which tasks get re-run, which repeats
  infra drops, which infra is asked again or counted as a loss, the stop) is
  symmetric in the two labels of each task, so each
  d_i is symmetric about 0, independently: the sign-flip null holds exactly and
  P(false accept) <= 1 - confidence for any number of tasks and any noise.
* *Weak null* (fixes and breaks that cancel in expectation): sum(d_i) has mean
  0, and the permutation variance sum(d_i^2) has expectation sum E[d_i^2] >=
  sum Var(d_i), so the test is valid in the normal approximation and leans
  conservative, as McNemar's does with heterogeneous pairs. The bench's null
  rows (identical, mixed, adversarial) stay at or below 5%.
* *Infra failures* (None; the evaluator has already retried them, and never
  caches one). A repeat where **both** sides had one is dropped from the task's
  pairs (a task without a paired repeat 0 is left out and not re-run). A repeat
  where **one side only** had one is asked again for that side, up to
  ``cfg.infra_reruns`` times: a real outcome from a re-ask is that side's
  outcome; if the failure persists it counts as *not resolved* for that side.
  And if the child has more one-sided infra failures than the parent beyond
  chance (exact one-sided binomial test: under the sharp null each is the
  child's or the parent's with probability 1/2, independently, since which
  repeats are asked does not depend on the labels; p < 1 - confidence), the
  child is rejected: infra must not depend on which harness ran, and this is
  where it shows that it does.
  - *Still exact.* All three rules look only at which side had the failure,
    never at which side is the child, so they are label-symmetric and keep the
    sharp-null argument above; the infra check can only turn an accept into a
    reject. Genuine infra (rare after the evaluator's retries, and the same for
    both harnesses) almost always recovers on the re-ask, costs either side the
    same, and trips the check with probability at most 1 - confidence.
  - *Abstention does not pay.* Dropping every repeat with infra (as before) let a
    harness turn its likely failures into infra: they left the comparison, so a
    child no better than its parent that abstains where it would fail never lost
    a pair ("+20 pts, p=0.03, 5 fixed, 0 broken"). Now a failure passed off as
    infra is a failure unless a re-ask resolves the task, and a re-ask is a
    second try: alone it still pays a harness whose abstention is random (the
    bench's "0 abstaining" row at ``--abstain 1``: 36% false accepts with the
    re-ask alone, as many as dropping). The infra check closes that: a harness
    can pass off only a few failures before it is rejected for them (with the
    parent at none, 5 one-sided failures give p = 1/32), so the bench's
    abstaining child is accepted no more often than a neutral one.
* *Cached parent runs.* The loop re-uses the parent's cached outcomes. They
  helped the parent get accepted, so they lean lucky: that makes the next
  comparison harder, never easier. For the same reason one-sided infra falls
  mostly on the child (a parent's infra was not cached, so it has had an earlier
  try already): the infra loss rule and the infra check then lean against the
  child, never for it.
* *Not covered:* the rate is per verdict. A run of G generations of neutral
  candidates accepts at least one with probability up to 1 - (1 - alpha)^G.

Sources: Fisher, *The Design of Experiments* (1935), sect. 21 (the paired
randomization test); McNemar, Psychometrika 12:153 (1947) (its binary special
case); Good, *Permutation, Parametric, and Bootstrap Tests of Hypotheses* (2005),
sect. 3.6 (one-sample sign-flip tests); Rao, Bull. Calcutta Math. Soc. 37 (1945)
and Blackwell, Ann. Math. Stat. 18 (1947) (conditioning an unbiased estimator on
a statistic keeps it unbiased and does not raise its variance); Jennison &
Turnbull (2000) (futility stopping).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from functools import cached_property, lru_cache
from typing import Optional

from evolve.config import AcceptanceConfig

RunOutcome = Optional[bool]
"""One harness's outcome on one task at one repeat: True resolved, False not resolved, None an
infrastructure failure (asked again if only one side had it, and then not resolved for that side if
it persists; left out if both sides had it). Unrelated to synthesis's outcome of one candidate
(``evolve.synth.env``)."""

EvaluateFn = Callable[[str, list[str], int], Mapping[str, RunOutcome]]
"""``evaluate(who, instance_ids, repeat) -> {instance_id: resolved?}``; who is "parent" or "child".
An instance_id missing from the answer counts as an infrastructure failure."""

PARENT, CHILD = "parent", "child"
"""The ``who`` an ``EvaluateFn`` is called with."""
EXACT_LIMIT = 20_000_000
"""Above this many cells x steps the exact sign-flip convolution gives way to Monte Carlo."""
MC_RESAMPLES = 100_000
"""Random sign vectors of the Monte-Carlo fallback (seeded from the records: reproducible)."""


@dataclass(frozen=True)
class TaskRecord:
    """One task's paired outcomes: ``parent[k]`` and ``child[k]`` come from the same repeat
    ``repeats[k]``; repeats where both sides had an infra failure are left out, and an infra
    failure on one side only that persisted is in the pairs as not resolved for that side."""

    instance_id: str
    parent: tuple[bool, ...]
    child: tuple[bool, ...]
    repeats: tuple[int, ...] = ()
    """Repeat index of each pair (empty means 0, 1, 2, ...)."""
    dropped: int = 0
    """Repeats left out because both sides had an infrastructure failure."""
    one_sided_infra: tuple[int, int] = (0, 0)
    """(parent, child): repeats where that side alone had an infrastructure failure when first asked."""
    infra_losses: tuple[int, int] = (0, 0)
    """(parent, child): of those, the ones that persisted after ``cfg.infra_reruns`` more asks, in the
    pairs as not resolved for that side."""

    def __post_init__(self) -> None:
        if len(self.parent) != len(self.child):
            raise ValueError(f"{self.instance_id}: parent and child need the same number of paired repeats")
        if self.repeats and len(self.repeats) != len(self.parent):
            raise ValueError(f"{self.instance_id}: one repeat index per pair")

    @property
    def n(self) -> int:
        """Paired repeats."""
        return len(self.parent)

    @cached_property
    def wins(self) -> int:
        """Pairs the child resolved and the parent did not."""
        return sum(c and not p for p, c in zip(self.parent, self.child))

    @cached_property
    def losses(self) -> int:
        """Pairs the parent resolved and the child did not."""
        return sum(p and not c for p, c in zip(self.parent, self.child))

    @property
    def discordant(self) -> bool:
        """The outcomes differ in at least one paired repeat."""
        return self.wins + self.losses > 0

    def diff_fraction(self, estimator: str = "rao-blackwell") -> tuple[int, int]:
        """d_i as (numerator, denominator), exact. ``rao-blackwell`` (the default):
        (wins - losses) / (wins + losses), 0 without a discordant pair; ``mean``:
        mean(child) - mean(parent) = (wins - losses) / n."""
        if estimator == "mean":
            return (self.wins - self.losses, self.n or 1)
        if estimator != "rao-blackwell":
            raise ValueError(f"unknown estimator {estimator!r}")
        return (self.wins - self.losses, (self.wins + self.losses) or 1)

    @property
    def diff(self) -> float:
        """d_i, the task's estimated change in resolve probability (Rao-Blackwell estimator)."""
        num, den = self.diff_fraction()
        return num / den


@dataclass(frozen=True)
class Verdict:
    """The outcome of one acceptance decision; every number the loop reports."""

    accepted: bool
    reason: str
    """One sentence, e.g. ``accepted: child +8.0 pts [90% CI +1.2, +14.8], p=0.012 < 0.05 ...``."""
    parent_rate: float
    """The parent's repeat-0 resolve rate on the compared tasks, in [0, 1]."""
    child_rate: float
    """parent_rate + delta: the child's estimated resolve rate on the same tasks."""
    delta: float
    """mean(d_i), the estimated gain in resolve rate (0.05 = 5 points); unbiased."""
    ci_low: float
    ci_high: float
    """Paired t interval of delta at two-sided level 2*confidence - 1."""
    p_value: float
    """One-sided exact sign-flip p-value (child better)."""
    n_tasks: int
    """Tasks in the paired comparison (evaluated, with a paired repeat 0)."""
    task_runs: int
    """Task evaluations requested, parent and child, including re-runs and cached parent runs."""
    fixed: list[str]
    """Tasks where the child's mean outcome beats the parent's (d_i > 0)."""
    broken: list[str]
    """Tasks where it is worse (d_i < 0)."""
    stopped_early: bool
    """Rejected by the futility stop before every stage was evaluated."""
    records: list[TaskRecord]
    """Every task asked for, paired or not, in evaluation order."""
    child_runs: int = 0
    """Task evaluations requested for the child (task_runs = child_runs + parent_runs)."""
    parent_runs: int = 0
    n_discordant: int = 0
    """Tasks whose paired outcomes differ in at least one repeat."""
    tasks_total: int = 0
    """Tasks asked for (n_tasks is fewer after an early stop or infra failures)."""
    one_sided_infra: tuple[int, int] = (0, 0)
    """(parent, child): repeats where that side alone had an infra failure when first asked (all records)."""
    infra_losses: tuple[int, int] = (0, 0)
    """(parent, child): of those, the ones that persisted and count as not resolved for that side."""
    infra_p_value: float = 1.0
    """One-sided exact binomial p-value of "the child has more one-sided infra failures than the
    parent", P(Bin(child + parent, 1/2) >= child); below 1 - confidence the child is rejected."""


# -- the test -----------------------------------------------------------------------------------


def signflip_pvalue(diffs: Sequence[Fraction | float | int], *, seed: int = 0) -> float:
    """One-sided p-value P(sum(e_i d_i) >= sum(d_i)) over independent random signs e_i.

    Exact for rationals (floats are taken at their exact binary value, which usually
    means the Monte-Carlo fallback: pass Fractions for an exact answer).
    """
    fr = [Fraction(x) for x in diffs if x != 0]
    return _signflip([x.numerator for x in fr], [x.denominator for x in fr], seed)


def _signflip(nums: Sequence[int], dens: Sequence[int], seed: int) -> float:
    """p-value for d_i = nums[i] / dens[i]: exact convolution on the common lattice, or Monte Carlo."""
    pairs = [(a, b) for a, b in zip(nums, dens) if a != 0]
    if not pairs:
        return 1.0
    scale = math.lcm(*(b for _, b in pairs))
    steps = [abs(a) * (scale // b) for a, b in pairs]
    total = sum(steps)
    if total * len(steps) > EXACT_LIMIT:
        return _mc_pvalue([a / b for a, b in pairs], seed)
    import numpy as np

    observed = sum(a * (scale // b) for a, b in pairs)
    dist = np.ones(1)          # distribution of the partial sum, index = value + partial max
    for a in steps:
        nxt = np.zeros(len(dist) + 2 * a)
        nxt[: len(dist)] += 0.5 * dist
        nxt[2 * a:] += 0.5 * dist
        dist = nxt
    return float(min(1.0, dist[observed + total:].sum()))


def _mc_pvalue(d: list[float], seed: int) -> float:
    import numpy as np
    from scipy.stats import permutation_test

    res = permutation_test((np.asarray(d),), lambda x, axis: np.sum(x, axis=axis),
                           permutation_type="samples", alternative="greater",
                           n_resamples=MC_RESAMPLES, rng=np.random.default_rng(seed))
    return float(res.pvalue)


def _t_interval(d: list[float], level: float) -> tuple[float, float]:
    n = len(d)
    if n == 0:
        return (-1.0, 1.0)
    mean = sum(d) / n
    if n == 1:
        return (-1.0, 1.0)
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
    half = _t_quantile(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
    return (max(-1.0, mean - half), min(1.0, mean + half))


@lru_cache(maxsize=256)
def _t_quantile(q: float, df: int) -> float:
    from scipy.stats import t

    return float(t.ppf(q, df))


def z_score(records: Sequence[TaskRecord], estimator: str = "rao-blackwell") -> float:
    """sum(d_i) / sqrt(sum(d_i^2)): the standardized sign-flip statistic (0 when every d_i is 0)."""
    d = [num / den for num, den in (r.diff_fraction(estimator) for r in records)]
    ss = sum(x * x for x in d)
    return sum(d) / math.sqrt(ss) if ss > 0 else 0.0


def _pts(x: float) -> str:
    return f"{x * 100:+.1f} pts"


def decide(records: list[TaskRecord], cfg: AcceptanceConfig, *, estimator: str = "rao-blackwell",
           stopped_early: bool = False, note: str = "", task_runs: int = 0, child_runs: int = 0,
           parent_runs: int = 0, tasks_total: int | None = None) -> Verdict:
    """The statistical test alone: accept iff the one-sided sign-flip p < 1 - confidence
    and mean(d) >= min_gain. Records without a pair are left out. ``stopped_early`` forces a
    rejection (the futility stop) and ``note`` says why. The run counts are only reported."""
    recs = [r for r in records if r.n > 0]
    alpha = 1.0 - cfg.confidence
    total = len(records) if tasks_total is None else tasks_total
    one_sided = tuple(sum(r.one_sided_infra[k] for r in records) for k in (0, 1))
    losses = tuple(sum(r.infra_losses[k] for r in records) for k in (0, 1))
    # each one-sided infra failure is +1 (child) or -1 (parent); under the sharp null a fair coin each
    infra_p = _signflip([1] * one_sided[1] + [-1] * one_sided[0], [1] * sum(one_sided), 0)
    base = dict(task_runs=task_runs, child_runs=child_runs, parent_runs=parent_runs, tasks_total=total,
                records=list(records), stopped_early=stopped_early, one_sided_infra=one_sided,
                infra_losses=losses, infra_p_value=infra_p)
    if not recs:
        return Verdict(accepted=False, reason="rejected: no task has a paired outcome (infrastructure failures on "
                                              "both sides?)",
                       parent_rate=0.0, child_rate=0.0, delta=0.0, ci_low=-1.0, ci_high=1.0, p_value=1.0,
                       n_tasks=0, fixed=[], broken=[], n_discordant=0, **base)
    n = len(recs)
    fracs = [r.diff_fraction(estimator) for r in recs]
    d = [num / den for num, den in fracs]
    parent_rate = sum(r.parent[0] for r in recs) / n
    delta = sum(d) / n
    child_rate = parent_rate + delta
    p = _signflip([num for num, _ in fracs], [den for _, den in fracs], _seed(recs))
    level = 2 * cfg.confidence - 1
    lo, hi = _t_interval(d, level)
    fixed = [r.instance_id for r, (num, _) in zip(recs, fracs) if num > 0]
    broken = [r.instance_id for r, (num, _) in zip(recs, fracs) if num < 0]
    significant = p < alpha
    big_enough = delta >= cfg.min_gain - 1e-12
    infra_skewed = infra_p < alpha
    accepted = significant and big_enough and not stopped_early and not infra_skewed
    stats = f"child {_pts(delta)} [{level:.0%} CI {lo * 100:+.1f}, {hi * 100:+.1f}], p={p:.3g}"
    tail = f" over {n}/{total} tasks ({len(fixed)} fixed, {len(broken)} broken)"
    if any(one_sided):
        tail += (f"; infra on one side only: child {one_sided[1]}, parent {one_sided[0]} repeats, "
                 f"{losses[1]} and {losses[0]} persisted (not resolved)")
    if stopped_early:
        reason = f"rejected early: {note}; {stats}{tail}"
    elif infra_skewed:
        reason = (f"rejected: infrastructure failures on the child's side only in {one_sided[1]} repeats, the "
                  f"parent's in {one_sided[0]} (p={infra_p:.3g} < {alpha:.3g}): infra must not depend on the "
                  f"harness; {stats}{tail}")
    elif accepted:
        gain = f", gain >= min {_pts(cfg.min_gain)}" if cfg.min_gain > 0 else ""
        reason = f"accepted: {stats} < {alpha:.3g}{gain}{tail}"
    elif not significant:
        reason = f"rejected: {stats} >= {alpha:.3g}, not significant{tail}"
    else:
        reason = f"rejected: child {_pts(delta)} is below the minimum gain {_pts(cfg.min_gain)} (p={p:.3g}){tail}"
    return Verdict(accepted=accepted, reason=reason, parent_rate=parent_rate, child_rate=child_rate,
                   delta=delta, ci_low=lo, ci_high=hi, p_value=p, n_tasks=n, fixed=fixed, broken=broken,
                   n_discordant=sum(r.discordant for r in recs), **base)


def _seed(recs: Sequence[TaskRecord]) -> int:
    h = hashlib.sha256()
    for r in recs:
        h.update(f"{r.instance_id}:{r.parent}:{r.child};".encode())
    return int.from_bytes(h.digest()[:8], "big")


# -- the procedure ------------------------------------------------------------------------------


def _order(ids: Sequence[str]) -> list[str]:
    return sorted(ids, key=lambda i: hashlib.sha256(i.encode()).hexdigest())


def _stage_ends(n: int, stages: Sequence[float]) -> list[int]:
    fracs = [float(s) for s in stages]
    if not fracs or any(not 0 < s <= 1 for s in fracs) or fracs != sorted(fracs):
        raise ValueError(f"stages must be increasing fractions in (0, 1], got {list(stages)}")
    return sorted({max(1, min(n, math.ceil(s * n - 1e-9))) for s in fracs} | {n})


@dataclass
class _Pairs:
    parent: list[bool] = field(default_factory=list)
    child: list[bool] = field(default_factory=list)
    repeats: list[int] = field(default_factory=list)
    dropped: int = 0
    one_sided: list[int] = field(default_factory=lambda: [0, 0])
    losses: list[int] = field(default_factory=lambda: [0, 0])

    def add(self, rep: int, first: tuple[RunOutcome, RunOutcome], final: tuple[RunOutcome, RunOutcome]) -> None:
        """One repeat's (parent, child) outcomes when first asked and after the one-sided infra
        re-asks: both None is left out, one None that persisted is not resolved for that side."""
        if first[0] is None and first[1] is None:
            self.dropped += 1
            return
        for k in (0, 1):
            self.one_sided[k] += first[k] is None
            self.losses[k] += final[k] is None
        self.parent.append(bool(final[0]))
        self.child.append(bool(final[1]))
        self.repeats.append(rep)

    def record(self, iid: str) -> TaskRecord:
        return TaskRecord(iid, tuple(self.parent), tuple(self.child), tuple(self.repeats), self.dropped,
                          tuple(self.one_sided), tuple(self.losses))


Request = tuple[str, list[str], int]
"""``(who, instance_ids, repeat)``: one evaluation the procedure asks for (``EvaluateFn``'s arguments)."""

Steps = Generator[list[Request], list[Mapping[str, RunOutcome]], "Verdict"]
"""``acceptance_steps``: yields the requests it needs answered together, is sent their outcomes (one
mapping per request, in order), returns the verdict."""


def run_acceptance(evaluate: EvaluateFn, instance_ids: list[str], cfg: AcceptanceConfig, *,
                   stages: Sequence[float] | None = None, futility_z: float | str | None = "auto",
                   estimator: str = "rao-blackwell") -> Verdict:
    """Evaluate parent and child on ``instance_ids`` (in stages), re-run the discordant
    tasks ``cfg.rerun_discordant`` times for both, stop early for futility, and decide.

    Args:
        evaluate: runs (or looks up) evaluations; called as ``evaluate(who, ids, repeat)``,
            the parent before the child, one call per side, stage and repeat, then again for the
            ids whose outcome was an infra failure on that side only (at most ``cfg.infra_reruns``
            more calls per side, stage and repeat). An infra result must not be cached: asking
            again must run it again.
        instance_ids: the search split's tasks (duplicates are ignored).
        cfg: confidence, min_gain, rerun_discordant and infra_reruns.
        stages: cumulative fractions of the tasks evaluated before each interim look;
            ``(1.0,)`` evaluates everything at once (no early stop); None: ``cfg``'s (its
            ``procedure`` for the number of tasks).
        futility_z: after each stage but the last, reject if the standardized statistic
            ``sum(d)/sqrt(sum(d^2))`` is below this; None disables the stop.
        estimator: how a task's pairs become d_i: ``rao-blackwell`` (the default, unbiased)
            or ``mean`` (plain mean difference: biased, kept for the benchmark's comparison).
    """
    steps = acceptance_steps(instance_ids, cfg, stages=stages, futility_z=futility_z, estimator=estimator)
    answers: list[Mapping[str, RunOutcome]] | None = None
    while True:
        try:
            requests = steps.send(answers)  # type: ignore[arg-type]  (the first send is None)
        except StopIteration as done:
            return done.value
        answers = [evaluate(who, ids, rep) or {} for who, ids, rep in requests]


def acceptance_steps(instance_ids: list[str], cfg: AcceptanceConfig, *, stages: Sequence[float] | None = None,
                     futility_z: float | str | None = "auto", estimator: str = "rao-blackwell") -> Steps:
    """``run_acceptance``'s procedure, one round of requests at a time, so a caller can answer the
    rounds of several procedures together (``evolve.search.race``). Arguments as for
    ``run_acceptance``, which is this generator answered one request after another.

    Each round yields a list of ``Request`` s answerable together (the parent's and the child's
    outcomes on one stage and repeat, or one side's infra re-asks) and is sent one outcome mapping
    per request, in order (missing ids are infra failures). After each stage's last round it yields
    ``[]`` once (the interim look; it is sent ``[]``), except after the last stage. A request is never
    empty. Returns the ``Verdict``.
    """
    ids = list(dict.fromkeys(instance_ids))
    if not ids:
        return decide([], cfg, tasks_total=0)
    order = _order(ids)
    proc = cfg.procedure(len(order))
    ends = _stage_ends(len(order), proc.stages if stages is None else stages)
    futility_z = proc.futility_z if futility_z == "auto" else futility_z
    runs = {PARENT: 0, CHILD: 0}

    def calls(asks: list[Request]):
        """The outcomes of the non-empty ``asks``, each ``{id: outcome}`` over its batch ({} for an empty one)."""
        real = [(who, list(batch), rep) for who, batch, rep in asks if batch]
        got: list[Mapping[str, RunOutcome]] = (yield real) if real else []
        out, it = [], iter(got)
        for who, batch, rep in asks:
            if not batch:
                out.append({})
                continue
            runs[who] += len(batch)
            g = next(it) or {}
            out.append({i: g.get(i) for i in batch})
        return out

    def ask(batch: list[str], rep: int, pairs: dict[str, _Pairs]):
        """Both sides on ``batch`` at repeat ``rep``, into ``pairs``. An infra failure on one side
        only is asked again, up to ``cfg.infra_reruns`` times."""
        p0, c0 = yield from calls([(PARENT, batch, rep), (CHILD, batch, rep)])
        first = {PARENT: p0, CHILD: c0}
        got = {who: dict(out) for who, out in first.items()}
        for who, other in ((PARENT, CHILD), (CHILD, PARENT)):
            for _ in range(cfg.infra_reruns):
                again = [i for i in batch if got[who][i] is None and got[other][i] is not None]
                if not again:
                    break
                (out,) = yield from calls([(who, again, rep)])
                got[who].update({i: o for i, o in out.items() if o is not None})
        for iid in batch:
            pairs.setdefault(iid, _Pairs()).add(rep, (first[PARENT][iid], first[CHILD][iid]),
                                                (got[PARENT][iid], got[CHILD][iid]))

    def verdict(records: list[TaskRecord], **kw) -> Verdict:
        return decide(records, cfg, estimator=estimator, task_runs=runs[PARENT] + runs[CHILD],
                      child_runs=runs[CHILD], parent_runs=runs[PARENT], tasks_total=len(order), **kw)

    pairs: dict[str, _Pairs] = {}
    done = 0
    for k, end in enumerate(ends):
        batch = order[done:end]
        done = end
        yield from ask(batch, 0, pairs)
        rerun = [i for i in batch if pairs[i].parent and pairs[i].parent[0] != pairs[i].child[0]]
        for rep in range(1, proc.rerun_discordant + 1):
            if rerun:
                yield from ask(rerun, rep, pairs)
        records = [pairs[i].record(i) for i in order[:done]]
        if k < len(ends) - 1:
            yield []  # the interim look: a race takes every candidate's at once
            if futility_z is not None:
                z = z_score([r for r in records if r.n], estimator)
                if z < futility_z:
                    return verdict(records, stopped_early=True,
                                   note=f"futility after {done} of {len(order)} tasks, child behind "
                                        f"(z={z:+.2f} < {futility_z:+.2f})")
    return verdict(records)
