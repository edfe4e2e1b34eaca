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
