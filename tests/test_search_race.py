"""Racing K candidates against one parent: Holm's procedure, the shared parent, early drops, and the
per-generation false-accept rate of null candidates (real acceptance code, seeded outcomes)."""

from __future__ import annotations

import random

import pytest

from evolve.acceptance import run_acceptance
from evolve.config import AcceptanceConfig
from evolve.search.race import holm, run_race

IDS = [f"t{i:02d}" for i in range(20)]
CFG = AcceptanceConfig(confidence=0.95, rerun_discordant=1)


def test_holm_steps_down():
    # K=4: thresholds 0.0125, 0.0167, 0.025, 0.05
    assert holm([0.01, 0.04, 0.03, 0.012], 0.05) == [0, 3]  # 0.03 >= 0.05/2 stops it
    assert holm([0.01, 0.04, 0.02, 0.012], 0.05) == [0, 3, 2, 1]
    assert holm([0.013, 0.001, 0.9, 0.02], 0.05) == [1, 0, 3]  # 0.013 < 0.05/3, 0.02 < 0.05/2
    assert holm([0.03, 0.03], 0.05) == []  # the smallest must beat alpha / K
    assert holm([0.049], 0.05) == [0]


def test_the_best_candidate_wins_the_shared_parent_runs_once_and_losers_stop_early():
    parent = {i: k % 2 == 0 for k, i in enumerate(IDS)}  # half the tasks resolved
    outcome = [dict(parent),                                 # no change
               {i: True for i in IDS},                       # fixes every task
               {i: k % 4 == 0 for k, i in enumerate(IDS)},   # loses half its parent's tasks
               {i: k % 2 == 0 or k < 8 for k, i in enumerate(IDS)}]  # fixes 4
    asked: list[tuple[int | None, str, int]] = []

    def evaluate(who, ids, rep):
        asked.extend((who, i, rep) for i in ids)
        return {i: (parent if who is None else outcome[who])[i] for i in ids}

    race = run_race(evaluate, IDS, 4, CFG, stages=(0.5, 1.0))
    assert race.winner == 1 and race.accepted(1) and 1 in race.passed and 2 not in race.passed
    assert race.verdicts[2].stopped_early and not race.verdicts[1].stopped_early
    parent_asks = [(i, rep) for who, i, rep in asked if who is None]
    assert len(parent_asks) == len(set(parent_asks))  # each (task, repeat) of the parent asked once
    assert race.task_runs == len(asked)
    assert "candidate 2 of 4" in race.reason and "Holm" in race.reason


def test_one_candidate_is_the_single_paired_test():
    rng = random.Random(3)
    child = {i: rng.random() < 0.7 for i in IDS}
    parent = {i: rng.random() < 0.4 for i in IDS}
    race = run_race(lambda who, ids, rep: {i: (parent if who is None else child)[i] for i in ids}, IDS, 1, CFG)
    single = run_acceptance(lambda who, ids, rep: {i: (parent if who == "parent" else child)[i] for i in ids},
                            IDS, CFG)
    assert race.verdicts[0].p_value == single.p_value and (race.winner == 0) == single.accepted
    with pytest.raises(ValueError):
        run_race(lambda *a: {}, IDS, 0, CFG)


@pytest.mark.parametrize("k", [1, 4])
def test_null_candidates_are_falsely_accepted_at_most_alpha_per_generation(k):
    """Every candidate behaves exactly like its parent (per-task probabilities, fresh noise each run):
    with K=4 and no correction a generation would accept one about 1-(1-0.05)^4 = 19% of the time."""
    rng = random.Random(20 + k)
    trials, accepts, uncorrected = 300, 0, 0
    for _ in range(trials):
        prob = {i: rng.choice([0.02, 0.5, 0.5, 0.98, 0.3]) for i in IDS}
        race = run_race(lambda who, ids, rep: {i: rng.random() < prob[i] for i in ids}, IDS, k, CFG)
        accepts += race.winner is not None
        uncorrected += any(v.accepted for v in race.verdicts)
    assert accepts / trials <= 0.05 + 2 * (0.05 * 0.95 / trials) ** 0.5  # 7.5%: alpha plus two standard errors
    if k == 4:
        assert uncorrected > accepts  # the correction is what holds it


def test_stages_in_evolve_yaml_are_validated(tmp_path):
    from evolve.config import load_project_config
    from evolve.errors import ConfigError

    path = tmp_path / "evolve.yaml"
    path.write_text("acceptance:\n  stages: [0.2, 0.4, 0.7, 1.0]\n  futility_z: null\n")
    cfg = load_project_config(path)
    assert cfg.acceptance.stages == [0.2, 0.4, 0.7, 1.0] and cfg.acceptance.futility_z is None
    for bad in ("[0.5, 0.9]", "[0.7, 0.4, 1.0]", "[0, 1.0]", "[]"):
        path.write_text(f"acceptance:\n  stages: {bad}\n")
        with pytest.raises(ConfigError, match="acceptance.stages"):
            load_project_config(path)


@pytest.mark.parametrize("seed,stages,rerun,infra", [(0, (0.3, 0.6, 1.0), 1, 0.0), (1, (0.5, 1.0), 2, 0.1),
                                                     (2, None, 1, 0.05), (3, (1.0,), 0, 0.0)])
def test_stages_together_reach_each_candidates_own_verdict(seed, stages, rerun, infra):
    """The lockstep race gives every candidate exactly the verdict ``run_acceptance`` gives it alone
    (same tasks in the same order, same re-runs and infra re-asks, same p-value), on scripted
    outcomes fixed per (side, task, repeat), infra failures included; and each round holds every
    surviving candidate's runs with the parent's."""
    rng = random.Random(seed)
    ids = [f"t{i:02d}" for i in range(40)]
    rates = [0.4, 0.4, 0.75, 0.1, 0.55]  # the parent, then 4 candidates: neutral, better, worse, a little better
    table = {(who, i, rep): None if rng.random() < infra else rng.random() < rates[0 if who is None else who + 1]
             for who in (None, 0, 1, 2, 3) for i in ids for rep in range(3)}
    cfg = AcceptanceConfig(confidence=0.95, rerun_discordant=rerun, infra_reruns=1)
    rounds: list[list[tuple]] = []

    def many(reqs):
        rounds.append([(j, tuple(b), rep) for j, b, rep in reqs])
        return [{i: table[(j, i, rep)] for i in b} for j, b, rep in reqs]

    race = run_race(None, ids, 4, cfg, stages=stages, futility_z=0.0, evaluate_many=many)
    for j in range(4):
        alone = run_acceptance(lambda who, b, rep: {i: table[(None if who == "parent" else j, i, rep)] for i in b},
                               ids, cfg, stages=stages, futility_z=0.0)
        got = race.verdicts[j]
        assert (got.p_value, got.delta, got.records, got.stopped_early, got.reason, got.child_runs,
                got.parent_runs, got.accepted) == (alone.p_value, alone.delta, alone.records, alone.stopped_early,
                                                   alone.reason, alone.child_runs, alone.parent_runs, alone.accepted)
    # round 1: the parent's and all 4 candidates' first stage at repeat 0, in one batch
    first = rounds[0]
    assert sorted((j for j, _, _ in first), key=lambda j: -1 if j is None else j) == [None, 0, 1, 2, 3]
    assert all(rep == 0 for _, _, rep in first) and len({b for _, b, _ in first}) == 1
    for r in rounds:  # at most one request per candidate, and the parent's once per repeat
        cands = [j for j, _, _ in r if j is not None]
        assert len(cands) == len(set(cands))
        assert len([rep for j, _, rep in r if j is None]) == len({rep for j, _, rep in r if j is None})
    assert race.rounds == len(rounds) and race.task_runs == sum(len(b) for r in rounds for _, b, _ in r)
    # the same race asked one request at a time reaches the same result with the same runs
    one = run_race(lambda j, b, rep: {i: table[(j, i, rep)] for i in b}, ids, 4, cfg, stages=stages, futility_z=0.0)
    assert [v.reason for v in one.verdicts] == [v.reason for v in race.verdicts]
    assert (one.winner, one.passed, one.task_runs) == (race.winner, race.passed, race.task_runs)
    if infra == 0:  # each parent (task, repeat) asked once: the parent costs what it costs one candidate
        parent_runs = [(i, rep) for r in rounds for j, b, rep in r if j is None for i in b]
        assert len(parent_runs) == len(set(parent_runs))
    if stages and len(stages) > 1:
        assert any(v.stopped_early for v in race.verdicts)  # the worse candidate is dropped at a look
