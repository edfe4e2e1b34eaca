"""evolve.acceptance: the paired test, the re-runs, the futility stop, infra handling.

Deterministic: every EvaluateFn here is a plain Python function (scripted or
seeded), and the exact sign-flip test uses no random numbers.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter
from fractions import Fraction

import numpy as np
import pytest
from scipy.stats import binomtest, permutation_test

from evolve.acceptance import (TaskRecord, Verdict, decide, run_acceptance, signflip_pvalue,
                               z_score)
from evolve.config import AcceptanceConfig

IDS = [f"repo__task-{k:03d}" for k in range(40)]


class Scripted:
    """An EvaluateFn from fixed per-side outcome functions; counts every (who, id, repeat) asked."""

    def __init__(self, parent, child):
        self.fn = {"parent": parent, "child": child}
        self.calls: Counter = Counter()
        self.batches: list[tuple[str, tuple[str, ...], int]] = []

    def __call__(self, who, ids, repeat):
        self.batches.append((who, tuple(ids), repeat))
        out = {}
        for i in ids:
            self.calls[(who, i, repeat)] += 1
            out[i] = self.fn[who](i, repeat)
        return out

    def runs(self, who=None, iid=None):
        return sum(n for (w, i, _), n in self.calls.items() if (who is None or w == who) and (iid is None or i == iid))


def idx(iid: str) -> int:
    return int(iid.rsplit("-", 1)[1])


def cfg(**kw) -> AcceptanceConfig:
    return AcceptanceConfig(**kw)


# -- verdicts -----------------------------------------------------------------------------------


def test_identical_outcomes_reject():
    solved = lambda i, r: idx(i) % 3 == 0  # noqa: E731
    ev = Scripted(solved, solved)
    v = run_acceptance(ev, IDS, cfg())
    assert isinstance(v, Verdict)
    assert not v.accepted
    assert v.delta == 0 and v.p_value == 1.0
    assert v.parent_rate == v.child_rate == pytest.approx(14 / 40)
    assert v.fixed == [] and v.broken == [] and v.n_discordant == 0
    assert v.n_tasks == 40 and not v.stopped_early
    # nothing discordant: nothing re-run, exactly one run per task and side
    assert v.task_runs == 80 and v.child_runs == 40 and v.parent_runs == 40
    assert "not significant" in v.reason


def test_clear_big_gain_accepts():
    ev = Scripted(lambda i, r: idx(i) < 10, lambda i, r: idx(i) < 30)
    v = run_acceptance(ev, IDS, cfg())
    assert v.accepted, v.reason
    assert v.delta == pytest.approx(0.5) and v.child_rate - v.parent_rate == pytest.approx(v.delta)
    assert v.p_value == pytest.approx(0.5 ** 20)
    assert v.ci_low > 0 and v.ci_low <= v.delta <= v.ci_high
    assert sorted(v.fixed) == sorted(IDS[10:30]) and v.broken == []
    assert v.reason.startswith("accepted: child +50.0 pts") and "p=" in v.reason


def test_gain_below_min_gain_rejects_with_reason():
    ids = [f"t-{k:03d}" for k in range(100)]
    ev = Scripted(lambda i, r: False, lambda i, r: idx(i) < 6)      # +6 points, p = 1/64
    v = run_acceptance(ev, ids, cfg(min_gain=0.10), stages=(1.0,))
    assert v.p_value == pytest.approx(1 / 64) and v.p_value < 0.05
    assert not v.accepted
    assert "minimum gain" in v.reason and "+10.0 pts" in v.reason and "+6.0 pts" in v.reason
    assert run_acceptance(Scripted(ev.fn["parent"], ev.fn["child"]), ids, cfg(min_gain=0.05),
                          stages=(1.0,)).accepted


def test_confidence_is_the_threshold():
    ids = [f"t-{k:03d}" for k in range(100)]
    ev = lambda: Scripted(lambda i, r: False, lambda i, r: idx(i) < 5)   # noqa: E731 - p = 1/32 = 0.03125
    assert run_acceptance(ev(), ids, cfg(confidence=0.95), stages=(1.0,)).accepted
    v = run_acceptance(ev(), ids, cfg(confidence=0.99), stages=(1.0,))
    assert not v.accepted and "not significant" in v.reason


def test_fixed_and_broken_lists():
    # task 0..3: child fixes (always); 4..5: child breaks (always); 6: flaky child, parent never
    def parent(i, r):
        return idx(i) in (4, 5)

    def child(i, r):
        k = idx(i)
        return k < 4 or (k == 6 and r == 0)

    v = run_acceptance(Scripted(parent, child), IDS, cfg(rerun_discordant=2), stages=(1.0,))
    assert sorted(v.fixed) == [IDS[k] for k in (0, 1, 2, 3, 6)]
    assert sorted(v.broken) == [IDS[4], IDS[5]]
    rec = {r.instance_id: r for r in v.records}
    # task 6: one discordant pair (the child's), two ties: d = (wins - losses) / (wins + losses) = 1
    assert rec[IDS[6]].child == (True, False, False) and rec[IDS[6]].diff == 1
    assert v.delta == pytest.approx((4 - 2 + 1) / 40)
    assert v.parent_rate == pytest.approx(2 / 40) and v.child_rate == pytest.approx(2 / 40 + v.delta)


# -- re-runs ------------------------------------------------------------------------------------


@pytest.mark.parametrize("reruns", [0, 1, 2, 3])
def test_discordant_tasks_rerun_exactly_n_times_for_both(reruns):
    discordant = {IDS[k] for k in (1, 7, 12, 33)}
    ev = Scripted(lambda i, r: idx(i) % 5 == 0 and i not in discordant,
                  lambda i, r: idx(i) % 5 == 0 or i in discordant)
    # (1, 7, 12, 33: the child resolves, the parent not; idx % 5 == 0: both)
    v = run_acceptance(ev, IDS, cfg(rerun_discordant=reruns), futility_z=None)
    for iid in IDS:
        for who in ("parent", "child"):
            expected = 1 + reruns if iid in discordant else 1
            assert ev.runs(who, iid) == expected, (who, iid)
            assert {r for (w, i, r) in ev.calls if w == who and i == iid} == set(range(expected))
    assert max(ev.calls.values()) == 1          # no (who, task, repeat) is asked twice
    assert v.task_runs == ev.runs() == 2 * (40 + 4 * reruns)
    assert v.child_runs == ev.runs("child") and v.parent_runs == ev.runs("parent")
    assert v.n_discordant == 4
    for r in v.records:
        assert r.n == (1 + reruns if r.instance_id in discordant else 1)
        assert r.repeats == tuple(range(r.n))


def test_noise_in_reruns_shrinks_a_lucky_task():
    # the child's win on repeat 0 does not hold up on the re-runs: d = (1 + 0 - 1) / 3 = 0
    ev = Scripted(lambda i, r: r == 1, lambda i, r: r == 0)
    v = run_acceptance(ev, IDS[:1], cfg(rerun_discordant=2))
    (rec,) = v.records
    assert rec.parent == (False, True, False) and rec.child == (True, False, False)
    assert rec.diff == 0 and v.fixed == [] and v.broken == []


# -- infra --------------------------------------------------------------------------------------


def test_one_sided_infra_is_asked_again_then_counts_against_that_side():
    # parent infra on tasks 0..4 at repeat 0, every time it is asked (the child resolves them);
    # child infra on task 10's repeat 1 (a discordant task); task 20 missing from the child's
    # answer = infra. Each is asked again once (infra_reruns=1), persists, and is a loss for its side.
    def parent(i, r):
        if idx(i) < 5 and r == 0:
            return None
        return idx(i) in (12,)

    def child(i, r):
        if idx(i) == 10 and r == 1:
            return None
        return idx(i) < 5 or idx(i) in (10, 11)

    class Missing(Scripted):
        def __call__(self, who, ids, repeat):
            out = super().__call__(who, ids, repeat)
            if who == "child":
                out.pop(IDS[20], None)
            return out

    ev = Missing(parent, child)
    v = run_acceptance(ev, IDS, cfg(rerun_discordant=2, infra_reruns=1), futility_z=None)
    assert v.n_tasks == 40 and v.tasks_total == 40
    rec = {r.instance_id: r for r in v.records}
    for k in range(5):
        assert rec[IDS[k]].parent == (False,) * 3 and rec[IDS[k]].child == (True,) * 3
        assert rec[IDS[k]].infra_losses == (1, 0) and rec[IDS[k]].dropped == 0
        assert ev.calls[("parent", IDS[k], 0)] == 2 and ev.calls[("child", IDS[k], 0)] == 1
    assert ev.calls[("child", IDS[20], 0)] == 2 and rec[IDS[20]].child == (False,)
    assert rec[IDS[20]].infra_losses == (0, 1) and not rec[IDS[20]].discordant
    assert rec[IDS[10]].repeats == (0, 1, 2) and rec[IDS[10]].child == (True, False, True)
    assert rec[IDS[10]].infra_losses == (0, 1) and rec[IDS[10]].diff == 1
    assert ev.calls[("child", IDS[10], 1)] == 2 and ev.calls[("parent", IDS[10], 1)] == 1
    assert sorted(v.fixed) == sorted(IDS[:5] + [IDS[10], IDS[11]]) and v.broken == [IDS[12]]
    assert v.delta == pytest.approx(6 / 40)
    assert v.one_sided_infra == (5, 2) and v.infra_losses == (5, 2)
    assert v.task_runs == ev.runs() and v.child_runs == ev.runs("child")
    assert "infra on one side only: child 2, parent 5 repeats" in v.reason


def test_no_infra_reruns_counts_one_sided_infra_at_once():
    ev = Scripted(lambda i, r: idx(i) < 3, lambda i, r: None if idx(i) < 3 else False)
    v = run_acceptance(ev, IDS[:10], cfg(infra_reruns=0, rerun_discordant=0), futility_z=None)
    assert max(ev.calls.values()) == 1
    assert v.infra_losses == (0, 3) and sorted(v.broken) == IDS[:3] and v.n_tasks == 10


def test_one_sided_infra_that_recovers_is_the_real_outcome():
    # the child's first ask of tasks 3 and 8 (each repeat) is an infra failure, the next one
    # resolves; the parent's first ask of task 5 fails the same way, the next one resolves.
    flaky = {("child", IDS[3]), ("child", IDS[8]), ("parent", IDS[5])}

    def outcome(who):
        def fn(i, r):
            if (who, i) in flaky and ev.calls[(who, i, r)] == 1:
                return None
            return who == "child" and idx(i) in (3, 8) or idx(i) == 5
        return fn

    ev = Scripted(outcome("parent"), outcome("child"))
    v = run_acceptance(ev, IDS[:10], cfg(rerun_discordant=1, infra_reruns=1), futility_z=None)
    rec = {r.instance_id: r for r in v.records}
    for k in (3, 8):
        assert rec[IDS[k]].child == (True, True) and rec[IDS[k]].parent == (False, False)
        assert rec[IDS[k]].one_sided_infra == (0, 2) and rec[IDS[k]].infra_losses == (0, 0)
        assert ev.calls[("child", IDS[k], 0)] == ev.calls[("child", IDS[k], 1)] == 2
    assert rec[IDS[5]].parent == rec[IDS[5]].child == (True,) and rec[IDS[5]].one_sided_infra == (1, 0)
    assert sorted(v.fixed) == [IDS[3], IDS[8]] and v.broken == []
    assert v.infra_losses == (0, 0) and v.one_sided_infra == (1, 4)
    assert v.infra_p_value == pytest.approx(6 / 32)       # P(Bin(5, 1/2) >= 4): not skewed
    assert "infra must not depend" not in v.reason


def test_both_sided_infra_is_dropped_and_not_asked_again():
    # tasks 0..2: both sides infra at repeat 0; task 10: discordant, both sides infra at repeat 1
    def parent(i, r):
        return None if idx(i) < 3 and r == 0 or idx(i) == 10 and r == 1 else False

    def child(i, r):
        return None if idx(i) < 3 and r == 0 or idx(i) == 10 and r == 1 else idx(i) in (0, 1, 2, 10)

    ev = Scripted(parent, child)
    v = run_acceptance(ev, IDS, cfg(rerun_discordant=2), futility_z=None)
    rec = {r.instance_id: r for r in v.records}
    for k in range(3):
        assert rec[IDS[k]].n == 0 and rec[IDS[k]].dropped == 1 and rec[IDS[k]].one_sided_infra == (0, 0)
        assert ev.runs("parent", IDS[k]) == ev.runs("child", IDS[k]) == 1   # not asked again, not re-run
    assert rec[IDS[10]].repeats == (0, 2) and rec[IDS[10]].dropped == 1 and rec[IDS[10]].diff == 1
    assert ev.calls[("child", IDS[10], 1)] == ev.calls[("parent", IDS[10], 1)] == 1
    assert v.n_tasks == 37 and v.fixed == [IDS[10]] and v.broken == []
    assert v.one_sided_infra == v.infra_losses == (0, 0)


def _audit_abstainer():
    """The audit's pattern: a child no better than its parent that returns infra exactly where it
    would fail. Tasks 0..9 are flaky for both (each resolves every other repeat, the child on the
    repeats the parent does not); 10..29 both always resolve; 30..39 both always fail."""
    def parent(i, r):
        k = idx(i)
        return (k + r) % 2 == 1 if k < 10 else k < 30

    def child(i, r):
        k = idx(i)
        solved = (k + r) % 2 == 0 if k < 10 else k < 30
        return True if solved else None

    return Scripted(parent, child)


def test_abstaining_child_is_not_accepted():
    # Dropping every repeat with infra (the old rule) gives exactly the audit's verdict:
    # flaky even tasks keep only their child-won repeats 0 and 2, everything the child failed is gone.
    old = [TaskRecord(IDS[k], (False, False), (True, True), (0, 2), dropped=1) for k in range(0, 10, 2)]
    old += [TaskRecord(IDS[k], (), (), (), dropped=1) for k in range(1, 10, 2)]
    old += [TaskRecord(IDS[k], (True,), (True,)) for k in range(10, 30)]
    old += [TaskRecord(IDS[k], (), (), (), dropped=1) for k in range(30, 40)]
    audit = decide(old, cfg())
    assert audit.accepted and audit.reason.startswith("accepted: child +20.0 pts")
    assert audit.p_value == pytest.approx(1 / 32) and "(5 fixed, 0 broken)" in audit.reason

    for kw in (dict(stages=(1.0,)), dict(stages=(0.5, 1.0))):
        ev = _audit_abstainer()
        v = run_acceptance(ev, IDS, cfg(rerun_discordant=2), **kw)
        assert not v.accepted, v.reason
        assert "0 broken" not in v.reason
    # without the early stop, every task is compared, and the child's failures count as failures
    v = run_acceptance(_audit_abstainer(), IDS, cfg(rerun_discordant=2), stages=(1.0,))
    assert v.n_tasks == 40 and v.delta == pytest.approx(0) and v.p_value > 0.05
    assert sorted(v.fixed) == IDS[0:10:2] and sorted(v.broken) == IDS[1:10:2]
    assert v.infra_losses[1] == v.one_sided_infra[1] > 0 and v.one_sided_infra[0] == 0
    assert v.infra_p_value < 0.05 and "infra must not depend on the harness" in v.reason


def test_child_that_retries_its_failures_through_infra_is_rejected():
    # A re-ask is a second try: a child identical to its parent that reports every failure as
    # infra, and resolves on the re-ask, wins every discordant pair. The paired test alone would
    # accept it; the one-sided infra check rejects it.
    def parent(i, r):
        return (idx(i) + r) % 2 == 0

    def child(i, r):
        return True if ev.calls[("child", i, r)] > 1 or (idx(i) + r) % 2 == 0 else None

    ev = Scripted(parent, child)
    v = run_acceptance(ev, IDS[:20], cfg(rerun_discordant=2), stages=(1.0,))
    assert v.p_value < 0.05 and v.delta > 0 and v.broken == []
    assert v.one_sided_infra == (0, 20) and v.infra_losses == (0, 0)
    assert v.infra_p_value == pytest.approx(0.5 ** 20)
    assert not v.accepted and v.reason.startswith("rejected: infrastructure failures on the child's side only")


def test_infra_check_threshold():
    wins = [TaskRecord(f"w{k}", (False,), (True,)) for k in range(12)]
    few = [TaskRecord(f"i{k}", (True,), (True,), one_sided_infra=(0, 1)) for k in range(4)]
    assert decide(wins + few, cfg()).accepted                           # 4 vs 0: p = 1/16
    five = few + [TaskRecord("i4", (True,), (True,), one_sided_infra=(0, 1))]
    v = decide(wins + five, cfg())
    assert v.infra_p_value == pytest.approx(1 / 32) and not v.accepted  # 5 vs 0: p = 1/32
    parent_side = [TaskRecord(f"p{k}", (True,), (True,), one_sided_infra=(1, 0)) for k in range(10)]
    assert decide(wins + parent_side, cfg()).accepted                   # the parent's infra: not the child's


def test_all_infra_on_both_sides_rejects():
    ev = Scripted(lambda i, r: None, lambda i, r: None)
    v = run_acceptance(ev, IDS[:6], cfg())
    assert not v.accepted and v.n_tasks == 0 and "no task" in v.reason
    assert ev.runs() == 12


def test_empty_task_list_rejects():
    v = run_acceptance(Scripted(lambda i, r: True, lambda i, r: True), [], cfg())
    assert not v.accepted and v.task_runs == 0


# -- early stop ---------------------------------------------------------------------------------


def test_futility_stop_when_child_fails_what_parent_solves():
    ev = Scripted(lambda i, r: idx(i) % 2 == 0, lambda i, r: False)
    v = run_acceptance(ev, IDS, cfg(rerun_discordant=2), stages=(0.5, 1.0))
    assert v.stopped_early and not v.accepted
    assert "futility" in v.reason and v.reason.startswith("rejected early")
    assert v.n_tasks == 20 and v.tasks_total == 40          # stopped after the first half
    assert v.child_runs < 40 + 20 * 2 and v.child_runs == ev.runs("child")
    assert set(v.broken) <= set(IDS) and v.fixed == []
    full = run_acceptance(Scripted(ev.fn["parent"], ev.fn["child"]), IDS, cfg(rerun_discordant=2),
                          futility_z=None)
    assert not full.stopped_early and full.task_runs > v.task_runs


def test_no_futility_stop_for_a_winning_child():
    ev = Scripted(lambda i, r: False, lambda i, r: idx(i) % 4 == 0)
    v = run_acceptance(ev, IDS, cfg(), stages=(0.25, 0.5, 1.0))
    assert not v.stopped_early and v.accepted and v.n_tasks == 40


def test_stages_are_validated():
    ev = Scripted(lambda i, r: True, lambda i, r: True)
    with pytest.raises(ValueError):
        run_acceptance(ev, IDS, cfg(), stages=(0.7, 0.3))
    with pytest.raises(ValueError):
        run_acceptance(ev, IDS, cfg(), stages=(0.5, 1.5))


# -- the test statistic -------------------------------------------------------------------------


def test_one_repeat_is_exact_mcnemar():
    rng = random.Random(3)
    for _ in range(20):
        b, c = rng.randint(0, 12), rng.randint(0, 12)      # child-only wins, parent-only wins
        recs = ([TaskRecord(f"b{k}", (False,), (True,)) for k in range(b)]
                + [TaskRecord(f"c{k}", (True,), (False,)) for k in range(c)]
                + [TaskRecord(f"z{k}", (True,), (True,)) for k in range(5)])
        v = decide(recs, cfg(rerun_discordant=0))
        expected = binomtest(b, b + c, 0.5, alternative="greater").pvalue if b + c else 1.0
        assert v.p_value == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_exact_signflip_matches_full_enumeration():
    rng = np.random.default_rng(7)
    for _ in range(10):
        k = [int(x) for x in rng.integers(-3, 4, size=12)]            # d_i = k_i / 3
        d = [Fraction(x, 3) for x in k]
        signs = np.array(list(itertools.product((1, -1), repeat=len(k))))
        brute = float(np.mean(signs @ np.array(k) >= sum(k)))
        assert signflip_pvalue(d) == pytest.approx(brute, abs=1e-12)
        if sum(d) != 0:  # scipy's float tolerance misses the ties at an observed sum of exactly 0
            ref = permutation_test((np.array([float(x) for x in d]),), lambda x, axis: np.sum(x, axis=axis),
                                   permutation_type="samples", alternative="greater", n_resamples=np.inf)
            assert signflip_pvalue(d) == pytest.approx(ref.pvalue, abs=1e-12)


def test_signflip_monte_carlo_fallback_is_seeded_and_close():
    d = [0.1 * k + 0.013 for k in range(-3, 9)]          # binary floats: no small lattice
    ref = sum(sum(e * x for e, x in zip(signs, d)) >= sum(d) - 1e-12
              for signs in itertools.product((1, -1), repeat=len(d))) / 2 ** len(d)
    assert signflip_pvalue(d) == pytest.approx(ref, abs=1e-9)   # 4096 < resamples: scipy enumerates


def test_decide_is_deterministic_and_consistent():
    recs = [TaskRecord("a", (False, True, False), (True, True, True)),
            TaskRecord("b", (True,), (True,)),
            TaskRecord("c", (True, False, True), (False, False, True)),
            TaskRecord("d", (False, False, False), (True, False, True))]
    v1, v2 = decide(recs, cfg()), decide(list(recs), cfg())
    assert v1 == v2
    # a: 2 wins 0 losses -> 1; b: 0; c: 0 wins 1 loss -> -1; d: 2 wins -> 1
    assert [r.diff for r in recs] == [1, 0, -1, 1]
    assert v1.delta == pytest.approx(1 / 4)
    assert v1.parent_rate == pytest.approx(2 / 4)          # the parent's repeat 0 (unbiased)
    assert v1.child_rate - v1.parent_rate == pytest.approx(v1.delta)
    assert v1.fixed == ["a", "d"] and v1.broken == ["c"]
    assert v1.p_value == pytest.approx(4 / 8)              # signs of (1, -1, 1): sum >= 1 in 4 of 8
    assert z_score(recs) == pytest.approx(1 / 3 ** 0.5)
    assert decide(recs, cfg(), estimator="mean").delta == pytest.approx((2 / 3 - 1 / 3 + 2 / 3) / 4)


@pytest.mark.parametrize("p,c", [(0.0, 1.0), (0.4, 0.2), (0.5, 0.5), (0.1, 0.6), (0.9, 0.3), (0.05, 0.15)])
@pytest.mark.parametrize("reruns", [1, 2, 3])
def test_task_estimate_is_exactly_unbiased(p, c, reruns):
    """E[d_i] = c - p exactly, by enumerating every outcome sequence of one task under the
    procedure (re-run iff repeat 0 is discordant); the plain mean difference is not."""
    exp_rb = exp_mean = 0.0
    for p0, c0 in itertools.product((False, True), repeat=2):
        w0 = (p if p0 else 1 - p) * (c if c0 else 1 - c)
        if p0 == c0:
            continue                                         # concordant: d_i = 0
        for rest in itertools.product(itertools.product((False, True), repeat=2), repeat=reruns):
            w = w0
            for pr, cr in rest:
                w *= (p if pr else 1 - p) * (c if cr else 1 - c)
            rec = TaskRecord("t", (p0,) + tuple(x for x, _ in rest), (c0,) + tuple(y for _, y in rest))
            exp_rb += w * rec.diff
            num, den = rec.diff_fraction("mean")
            exp_mean += w * num / den
    assert exp_rb == pytest.approx(c - p, abs=1e-12)
    pdisc = p + c - 2 * p * c
    assert exp_mean == pytest.approx((c - p) * (1 + reruns * pdisc) / (1 + reruns), abs=1e-12)


# -- a small simulation: the false-accept rate at zero true gain -------------------------------


def _sim_probs(rng: np.random.Generator, n: int, gain: float) -> tuple[np.ndarray, np.ndarray]:
    kind = rng.choice(3, size=n, p=[0.45, 0.2, 0.35])
    p = np.where(kind == 0, rng.beta(0.3, 8, n), np.where(kind == 1, rng.beta(8, 0.4, n), rng.beta(1.2, 1.2, n)))
    c = p.copy()
    # move some tasks up and some down by the same total: the true mean gain is `gain`
    idx_ = rng.permutation(n)
    up, down = idx_[: n // 5], idx_[n // 5: 2 * n // 5]
    shift = 0.3
    c[up] = np.clip(p[up] + shift, 0, 1)
    c[down] = np.clip(p[down] - shift, 0, 1)
    rest = np.setdiff1d(np.arange(n), np.r_[up, down])
    excess = (c - p).sum() - gain * n          # fix the total exactly on the untouched tasks
    room = p[rest] if excess > 0 else 1 - p[rest]
    c[rest] = p[rest] - np.sign(excess) * room * min(1.0, abs(excess) / max(room.sum(), 1e-9))
    return p, c


def _simulate(trials: int, gain: float, seed: int, n: int = 50) -> float:
    rng = np.random.default_rng(seed)
    ids = [f"t-{k:03d}" for k in range(n)]
    accepted = 0
    for _ in range(trials):
        p, c = _sim_probs(rng, n, gain)
        assert abs((c - p).mean() - gain) < 1e-9
        probs = {"parent": p, "child": c}
        draw = np.random.default_rng(rng.integers(2**63))

        def ev(who, batch, repeat):
            return {i: bool(draw.random() < probs[who][idx(i)]) for i in batch}

        accepted += run_acceptance(ev, ids, cfg()).accepted
    return accepted / trials


def test_simulated_false_accept_rate_at_zero_gain():
    assert _simulate(200, 0.0, seed=11) <= 0.08


def test_simulated_big_gain_is_usually_accepted():
    assert _simulate(60, 0.15, seed=12) >= 0.6
