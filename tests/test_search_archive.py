"""The archive and parent selection through the real loop (scripted optimizer words, MarkerEvaluator
behind the evaluator seam, real git and run files), and DGM's rule checked against its formula."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import git
import pytest
import yaml

from loop_support import make_loop, make_project

from evolve.search import archive
from evolve.search.archive import Node
from evolve.search.parents import choose_parent, dgm_weights

FIXTURE = Path(__file__).parent / "fixtures" / "search" / "optimizer.yaml"
EVOLVE = str(Path(sys.executable).parent / "evolve")


def configure(repo: Path, **search) -> None:
    cfg = yaml.safe_load((repo / "evolve.yaml").read_text())
    cfg["models"]["optimizer"]["model"] = f"scripted/{FIXTURE}"
    cfg["budget"]["generations"] = 2
    cfg["search"] = search
    (repo / "evolve.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    git.Repo(repo).git.commit("-qam", "search settings", env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
                                                              "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"})


def run(repo: Path):
    loop, close = make_loop(repo)
    try:
        state = loop.run()
    finally:
        close()
    return loop, state


def test_every_generation_is_a_node_and_the_tree_marks_the_accepted_path(tmp_path):
    loop, state = run(make_project(tmp_path))  # accepted, rejected (worse), refused
    nodes = archive.load(loop.store.dir)
    assert [(n.gen, n.status) for n in nodes] == [(0, "base"), (1, "accepted"), (2, "rejected"), (3, "refused")]
    base, g1, g2, g3 = nodes
    assert base.commit == state.base and base.stone and base.rate == 0.0
    assert g1.stone and g1.commit == state.best and g1.parent == state.base and g1.parent_gen == 0
    assert g2.parent_gen == 1 and g2.parent == g1.commit
    # stopped for futility after 3 tasks, all broken: p_worse = 1/8, not evidence enough to drop it
    assert g2.stone and g2.p_worse == pytest.approx(1 / 8) and len(g2.outcomes) == 3
    assert g3.commit is None and not g3.stone and g3.outcomes == {}
    assert set(g1.outcomes) == set(loop.search_ids)
    assert all(o["parent"][0] is False and o["child"][0] is True for o in g1.outcomes.values())
    assert archive.accepted_path(nodes, state.best) == {(0, None), (1, None)}
    assert loop._parent(state, 4) == ((1, None), state.best)  # greedy: the accepted head's node
    moved = state.model_copy(update={"best": "f" * 40})  # a head made outside the archive (rollback --gen)
    assert loop._parent(moved, 4) == ((None, None), "f" * 40)
    # append-only and idempotent: a second write of a generation changes nothing
    before = archive.path_of(loop.store.dir).read_text()
    assert not archive.append_once(loop.store.dir, g2.model_copy(update={"status": "accepted"}))
    assert archive.path_of(loop.store.dir).read_text() == before

    shown = subprocess.run([EVOLVE, "status", "--tree"], cwd=loop.repo_root, capture_output=True, text=True,
                           timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    g1_line = next(line for line in lines if "g001" in line)
    assert "* g001 accepted" in g1_line and "accepted head" in g1_line
    assert "* g000 base" in shown.stdout and "* g002" not in shown.stdout and "g002 rejected stone" in shown.stdout
    assert lines.index(g1_line) < next(i for i, line in enumerate(lines) if "g002" in line)
    as_json = subprocess.run([EVOLVE, "status", "--json"], cwd=loop.repo_root, capture_output=True, text=True,
                             timeout=120)
    assert [n["gen"] for n in json.loads(as_json.stdout)["archive"]] == [0, 1, 2, 3]


def test_a_damaged_archive_line_is_a_clear_error(tmp_path):
    from evolve.runstate import RunFileError

    path = archive.path_of(tmp_path)
    archive.append_once(tmp_path, Node(gen=0, commit="a" * 40, status="base", stone=True))
    path.write_text(path.read_text() + "{not json\n" + path.read_text())
    with pytest.raises(RunFileError, match="line 2"):
        archive.load(tmp_path)
    path.write_text(path.read_text().split("\n")[0] + '\n{"gen": 1, "comm')  # torn last line: left out
    assert [n.gen for n in archive.load(tmp_path)] == [0]
    assert archive.append_once(tmp_path, Node(gen=1, commit="b" * 40, status="rejected"))
    assert [n.gen for n in archive.load(tmp_path)] == [0, 1]


def test_dgm_weights_follow_the_published_rule():
    nodes = [Node(gen=0, commit="a", status="base", stone=True, rate=0.3),
             Node(gen=1, commit="b", parent_gen=0, status="accepted", stone=True, rate=0.6),
             Node(gen=2, commit="c", parent_gen=1, status="rejected", stone=True, rate=0.55),
             Node(gen=3, commit="d", parent_gen=1, status="rejected", stone=False, rate=0.7),  # not a stone
             Node(gen=4, commit=None, parent_gen=1, status="failed"),
             Node(gen=5, commit="e", parent_gen=2, status="accepted", stone=True, rate=1.0)]  # solved all: out
    w = dgm_weights(nodes)
    raw = {0: 1 / (1 + math.exp(-10 * (0.3 - 0.5))) / 2, 1: 1 / (1 + math.exp(-10 * (0.6 - 0.5))) / 4,
           2: 1 / (1 + math.exp(-10 * (0.55 - 0.5))) / 2}
    assert w == pytest.approx({(g, None): x / sum(raw.values()) for g, x in raw.items()})
    draws = [choose_parent("dgm", nodes, best_gen=5, seed=f"s/{i}") for i in range(3000)]
    for g, p in w.items():
        assert draws.count(g) / len(draws) == pytest.approx(p, abs=0.03)
    assert choose_parent("dgm", nodes, best_gen=5, seed="x") == choose_parent("dgm", nodes, best_gen=5, seed="x")
    assert choose_parent("greedy", nodes, best_gen=5, seed="x") == (5, None)
    assert choose_parent("dgm", nodes[4:5], best_gen=0, seed="x") == (0, None)  # nothing eligible: the accepted head
    with pytest.raises(ValueError, match="greedy or dgm"):
        choose_parent("random", nodes, best_gen=0, seed="x")


def test_dgm_builds_on_a_stepping_stone_and_best_moves_only_on_a_win_against_best(tmp_path):
    # the archive after generation 1 (a neutral change, both at 0%): base with one child, g1 with none
    after_g1 = [Node(gen=0, commit="a", status="base", stone=True, rate=0.0),
                Node(gen=1, commit="b", parent_gen=0, status="rejected", stone=True, rate=0.0)]
    seed = next(s for s in range(100) if choose_parent("dgm", after_g1, best_gen=0, seed=f"{s}/2") == (1, None))
    repo = make_project(tmp_path)
    configure(repo, parent="dgm", seed=seed)
    loop, state = run(repo)
    g1, g2 = loop.store.gens()
    assert g1.status == "rejected" and g1.stone and g1.p_worse == 1.0 and g1.parent_gen == 0
    assert g2.parent_gen == 1 and g2.parent == g1.verdict_commit and g2.best_before == state.base
    assert git.Repo(repo).git.rev_parse(f"{g2.candidate}^") == g1.verdict_commit  # branched from the stone
    labels = [label for label, *_ in loop.evaluator.calls]
    assert "g002-best-r0" in labels and "g001-best-r0" not in labels  # compared with the accepted head too
    assert g2.status == "accepted" and "against the accepted head" in g2.reason and "beat its parent" in g2.reason
    assert state.best == g2.verdict_commit == loop.lineage.sha(loop.lineage.refs.best)
    nodes = archive.load(loop.store.dir)
    assert archive.accepted_path(nodes, state.best) == {(0, None), (1, None), (2, None)}
    assert loop.lineage.sha(loop.lineage.refs.gen(1)) == g1.verdict_commit  # the stone's branch is kept
    (transfer,) = state.holdout["each"]  # compared with the accepted head (the base), not its parent
    assert transfer["gen"] == 2 and transfer["against"] == state.base and transfer["delta"] == 1.0
    assert "holdout-g002" not in labels  # g2 is best: its holdout run is the accepted head's


def test_without_keep_rejected_only_stepping_stones_keep_their_branch(tmp_path):
    repo = make_project(tmp_path)
    cfg = yaml.safe_load((repo / "evolve.yaml").read_text())
    cfg["acceptance"]["keep_rejected"] = False
    (repo / "evolve.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    git.Repo(repo).git.commit("-qam", "drop rejected", env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
                                                            "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"})
    loop, state = run(repo)
    g2 = loop.store.gen(2)
    assert g2.status == "rejected" and g2.stone and loop.lineage.sha(loop.lineage.refs.gen(2)) == g2.verdict_commit


def test_a_significantly_worse_or_tampering_candidate_is_no_stepping_stone():
    from evolve.acceptance import TaskRecord

    broken = [TaskRecord(f"t{i}", (True,), (False,), (0,)) for i in range(6)]
    assert archive.p_worse(broken) == pytest.approx(1 / 64)
    assert archive.p_worse(broken[:3]) == pytest.approx(1 / 8)
    assert archive.p_worse([TaskRecord("t", (False,), (True,), (0,))]) == 1.0
    assert not archive.is_stone("rejected", 1 / 64, 0.05, tampering=False)
    assert archive.is_stone("rejected", 1 / 8, 0.05, tampering=False)
    assert not archive.is_stone("rejected", 1.0, 0.05, tampering=True)
    assert not archive.is_stone("failed", None, 0.05, tampering=False)
    assert archive.is_stone("accepted", 0.001, 0.05, tampering=False)


def test_transfer_of_each_accepted_change_on_the_holdout_split(tmp_path):
    from evolve.config import load_project_config
    from evolve.holdout import run_holdout
    from evolve.loop import LoopSettings

    from loop_support import MarkerEvaluator

    loop, state = run(make_project(tmp_path))  # g1 accepted: 0% -> 100% on every split
    (g1,) = [g for g in loop.store.gens() if g.status == "accepted"]
    assert state.holdout["each"] == [{"gen": 1, "commit": g1.verdict_commit, "rate": 1.0, "against": state.base,
                                      "against_rate": 0.0, "delta": 1.0, "search_delta": g1.delta}]
    # the holdout split is evaluated after the last generation only, never inside one
    labels = [label for label, split, *_ in loop.evaluator.calls]
    first_holdout = next(i for i, (_, split, *_) in enumerate(loop.evaluator.calls) if split == "holdout")
    assert all(split == "holdout" for _, split, *_ in loop.evaluator.calls[first_holdout:])
    assert all(not label.startswith("g") for label in labels[first_holdout:])

    repo = loop.repo_root
    cfg = load_project_config(repo / "evolve.yaml")
    evaluator = MarkerEvaluator(repo / "runs" / "marker2")
    again = run_holdout(cfg, repo, LoopSettings(solver_model="marker", runs_dir=repo / "runs"), evaluator, each=True)
    assert [row["gen"] for row in again.holdout["each"]] == [1]
    assert {label for label, *_ in evaluator.calls} == {"holdout-baseline", "holdout-best"}  # g1 is best
    shown = subprocess.run([EVOLVE, "status"], cwd=repo, capture_output=True, text=True, timeout=120,
                           env={**os.environ, "COLUMNS": "200"})
    assert shown.returncode == 0, shown.stderr
    assert "transfer: each accepted change" in shown.stdout
    row = next(line for line in shown.stdout.splitlines() if g1.verdict_commit[:10] in line and "%" in line)
    assert row.replace("│", " ").split()[:4] == ["1", g1.verdict_commit[:10], "+100.0", "+100.0"]


@pytest.mark.parametrize("point", ["evaluate@2", "verdict-committed@2"])
def test_dgm_killed_mid_generation_resumes_to_the_same_parent_and_verdict(tmp_path, point):
    """Killed while generation 2 (a child of the stone g1) is evaluated, or after its verdict commit and
    before ``best`` moved: the resumed run draws the same parent and moves ``best`` from the head it
    was compared with (not from its parent)."""
    after_g1 = [Node(gen=0, commit="a", status="base", stone=True, rate=0.0),
                Node(gen=1, commit="b", parent_gen=0, status="rejected", stone=True, rate=0.0)]
    seed = next(s for s in range(100) if choose_parent("dgm", after_g1, best_gen=0, seed=f"{s}/2") == (1, None))
    repo = make_project(tmp_path)
    configure(repo, parent="dgm", seed=seed)
    support = Path(__file__).parent / "loop_support.py"
    env = {k: v for k, v in os.environ.items() if k != "EVOLVE_TEST_KILL_AT"}
    killed = subprocess.run([sys.executable, str(support), str(repo)], capture_output=True, text=True, timeout=300,
                            env={**env, "EVOLVE_TEST_KILL_AT": point})
    assert killed.returncode == -9, killed.stderr[-2000:]
    run_id = killed.stdout.split()[0]
    resumed = subprocess.run([sys.executable, str(support), str(repo), run_id], capture_output=True, text=True,
                             timeout=300, env=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    from evolve.runstate import RunStore

    store = RunStore(repo / "runs", run_id)
    g1, g2 = store.gens()
    state = store.load()
    assert g2.parent_gen == 1 and g2.status == "accepted" and state.best == g2.verdict_commit
    assert git.Repo(repo).git.rev_parse(f"evolve/{run_id}/best") == g2.verdict_commit
    assert [n.gen for n in archive.load(store.dir)] == [0, 1, 2]


def test_dgm_draws_lost_stepping_stones_as_their_own_nodes():
    """A lost candidate that is a stepping stone is drawn as DGM draws any kept agent: its own rate,
    its own children (``parent_cand``); one significantly worse (no stone) never is."""
    from evolve.search.archive import accepted_path, children, children_by_ref

    nodes = [Node(gen=0, commit="a", status="base", stone=True, rate=0.3),
             Node(gen=1, cand=1, commit="b", parent_gen=0, status="accepted", stone=True, rate=0.6),
             Node(gen=1, cand=2, lost=True, commit="c", parent_gen=0, status="rejected", stone=True, rate=0.5),
             Node(gen=1, cand=3, lost=True, commit="d", parent_gen=0, status="rejected", stone=False, rate=0.1),
             Node(gen=2, commit="e", parent_gen=1, parent_cand=2, status="accepted", stone=True, rate=0.7)]
    assert children_by_ref(nodes) == {(0, None): 3, (1, None): 0, (1, 2): 1, (1, 3): 0, (2, None): 0}
    assert children(nodes) == {0: 3, 1: 0, 2: 0}
    w = dgm_weights(nodes)
    raw = {(0, None): sigmoid(0.3) / 4, (1, None): sigmoid(0.6) / 1, (1, 2): sigmoid(0.5) / 2, (2, None): sigmoid(0.7)}
    assert w == pytest.approx({r: x / sum(raw.values()) for r, x in raw.items()})
    draws = [choose_parent("dgm", nodes, best_gen=2, seed=f"s/{i}") for i in range(2000)]
    assert (1, 3) not in draws and draws.count((1, 2)) / len(draws) == pytest.approx(w[(1, 2)], abs=0.03)
    # the accepted path runs through the lost candidate to the base: it is on the path, its generation's node is not
    assert accepted_path(nodes, "e") == {(0, None), (1, 2), (2, None)}


def sigmoid(rate: float) -> float:
    return 1 / (1 + math.exp(-10 * (rate - 0.5)))
