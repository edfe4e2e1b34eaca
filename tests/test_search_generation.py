"""Several candidates per generation (``search.candidates: K``) through the real loop: scripted
optimizer words, the MarkerEvaluator behind the evaluator seam, real git, real run files.

``fixtures/race/optimizer.yaml``: the analysis names three categories; the plan aimed at
"edits without reproduction" truly helps (0% -> 100%), "format errors" is neutral, "protected
settings" edits a protected path and is refused. ``fixtures/race/null.yaml``: three neutral plans.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import git
import pytest
import yaml

from loop_support import make_loop, make_project
from test_search_archive import run

from evolve.search import archive

FIXTURES = Path(__file__).parent / "fixtures" / "race"
EVOLVE = str(Path(sys.executable).parent / "evolve")
AIM = "Yours is **"


def configure(repo: Path, k: int, script: str | None = "optimizer.yaml", generations: int = 1,
              **acceptance) -> None:
    """``search.candidates: k``, one generation; ``script`` None keeps the loop tests' optimizer."""
    cfg = yaml.safe_load((repo / "evolve.yaml").read_text())
    if script is not None:
        cfg["models"]["optimizer"]["model"] = f"scripted/{FIXTURES / script}"
    cfg["budget"]["generations"] = generations
    cfg["search"] = {"candidates": k}
    cfg["acceptance"].update(acceptance)
    (repo / "evolve.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    git.Repo(repo).git.commit("-qam", "race settings", env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
                                                            "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"})


def plan_aims(run_dir: Path) -> list[str]:
    """The category each plan prompt of the optimizer's trace aimed at (read from the real trace)."""
    aims = []
    for line in (run_dir / "optimizer_trace.jsonl").read_text().splitlines():
        rec = json.loads(line)
        text = rec["request"]["messages"][0]["content"]
        if text.startswith("## Step: plan"):
            aims.append(text.split(AIM, 1)[1].split("**", 1)[0] if AIM in text else "")
    return aims


def branches(repo: Path, run_id: str) -> list[str]:
    refs = git.Repo(repo).git.for_each_ref("--format=%(refname)", f"refs/heads/evolve/{run_id}/").splitlines()
    return sorted(r.rsplit("/", 1)[1] for r in refs)


def test_two_candidates_the_one_that_helps_wins_and_the_other_is_a_lost_stone(tmp_path):
    repo = make_project(tmp_path)
    configure(repo, 2)
    loop, state = run(repo)
    (rec,) = loop.store.gens()
    assert rec.status == "accepted" and rec.winner == rec.cand == 1
    assert rec.hypothesis.startswith("PLAN-A") and rec.category == "edits without reproduction"
    assert [(c.cand, c.status, c.category) for c in rec.candidates] == [
        (1, "accepted", "edits without reproduction"), (2, "rejected", "format errors")]
    loser = rec.candidates[1]
    assert loser.hypothesis.startswith("PLAN-N") and loser.delta == 0.0 and loser.stone and loser.p_worse == 1.0
    assert "lost the race" in loser.reason and "candidate 1 of 2" in rec.reason and "Holm" in rec.reason
    (lesson,) = [json.loads(line) for line in (loop.store.dir / "lessons.jsonl").read_text().splitlines()]
    assert lesson["hypothesis"].startswith("PLAN-A") and "Also tried in this generation: candidate 2 (rejected, " \
        "+0.0 points): PLAN-N" in lesson["reason"]
    # best moved to the winner's verdict commit, on gNNN; the loser keeps its own branch (a stepping stone)
    assert state.best == rec.verdict_commit == loop.lineage.sha(loop.lineage.refs.best)
    assert loop.lineage.sha(loop.lineage.refs.gen(1)) == rec.verdict_commit
    assert loop.lineage.sha(f"{rec.verdict_commit}^") == rec.candidate
    assert loop.lineage.sha(loop.lineage.refs.gen(1, 2)) == loser.candidate != rec.candidate
    assert branches(repo, loop.run_id) == ["base", "best", "g001", "g001-c2"]
    assert not list((loop.store.dir / "worktrees").glob("g001*"))
    # every candidate is an archive node; the loser is marked lost and is no parent
    nodes = archive.load(loop.store.dir)
    assert [(n.gen, n.cand, n.lost, n.status) for n in nodes] == [
        (0, None, False, "base"), (1, 1, False, "accepted"), (1, 2, True, "rejected")]
    assert nodes[2].branch == f"evolve/{loop.run_id}/g001-c2" and nodes[2].category == "format errors"
    assert set(nodes[2].outcomes) <= set(loop.search_ids) and nodes[2].outcomes
    assert archive.accepted_path(nodes, state.best) == {(0, None), (1, None)}
    assert archive.children(nodes) == {0: 2, 1: 0}
    # plans aimed at distinct categories, made concurrently through one optimizer: the trace is whole
    assert sorted(plan_aims(loop.store.dir)) == ["edits without reproduction", "format errors"]
    calls = [json.loads(line)["call"] for line in (loop.store.dir / "optimizer_trace.jsonl").read_text().splitlines()]
    assert calls == list(range(1, len(calls) + 1))
    # the parent is evaluated once per (task, repeat), shared; each candidate has its own labels
    labels = [label for label, *_ in loop.evaluator.calls]
    assert "g001-c1-r0" in labels and "g001-c2-r0" in labels and "g001-c1-smoke" in labels
    assert not any(label.startswith("g001-child") for label in labels)
    parent_runs = [(i, rep) for label, _, ids, rep in loop.evaluator.calls if label.startswith("g001-parent-r")
                   for i in ids]
    assert len(parent_runs) == len(set(parent_runs))
    # stages together: the race's first round asks the parent and both candidates at once
    assert sorted(loop.evaluator.batches[0]) == ["g001-c1-r0", "g001-c2-r0", "g001-parent-r0"]
    assert all(len(b) == len(set(b)) for b in loop.evaluator.batches)

    env = {**os.environ, "COLUMNS": "200"}
    shown = subprocess.run([EVOLVE, "status"], cwd=repo, capture_output=True, text=True, timeout=120, env=env)
    assert shown.returncode == 0, shown.stderr
    assert "c1 accepted" in shown.stdout and "c2 rejected stone" in shown.stdout and "PLAN-N" in shown.stdout
    tree = subprocess.run([EVOLVE, "status", "--tree"], cwd=repo, capture_output=True, text=True, timeout=120,
                          env=env)
    assert tree.returncode == 0, tree.stderr
    assert "* g001 accepted" in tree.stdout and "g001-c2 rejected stone" in tree.stdout
    assert "* g001-c2" not in tree.stdout


def test_a_refused_candidate_drops_out_and_fewer_categories_make_fewer_candidates(tmp_path):
    repo = make_project(tmp_path)
    configure(repo, 4, keep_rejected=False, generations=2)  # 3 categories for K = 4: 3 candidates, and a note
    loop, state = run(repo)
    rec, rec2 = loop.store.gens()
    assert [(c.cand, c.status) for c in rec.candidates] == [(1, "accepted"), (2, "rejected"), (3, "refused")]
    refused = rec.candidates[2]
    assert refused.hypothesis.startswith("PLAN-C") and "refused" in refused.reason and refused.candidate is None
    assert rec.status == "accepted" and rec.winner == 1 and "of 2" in rec.reason  # only 2 were raced
    note, note2 = [e for e in loop.store.events() if e.get("event") == "candidates"]
    assert note["gen"] == 1 and note["made"] == 3 and note["asked"] == 4
    # generation 2's parent fails nothing: the analysis names no category, so one candidate, no aim
    # (this script then gives no plan): the generation fails, and its one node is that candidate's
    assert note2["gen"] == 2 and note2["made"] == 1 and "no failure category" in note2["note"]
    assert rec2.status == "failed" and [(c.cand, c.status) for c in rec2.candidates] == [(1, "failed")]
    assert rec2.cand == 1 and "PlanError" in rec2.reason and plan_aims(loop.store.dir)[-1] == ""
    assert sorted(a for a in plan_aims(loop.store.dir) if a) == ["edits without reproduction", "format errors",
                                                                  "protected settings"]
    assert not any(label.startswith("g001-c3") for label, *_ in loop.evaluator.calls)
    # the refused candidate has no commit: its branch (at the parent) is gone; the neutral loser is a stone
    assert branches(repo, loop.run_id) == ["base", "best", "g001", "g001-c2"]
    assert [(n.gen, n.cand, n.lost, n.status, n.commit) for n in archive.load(loop.store.dir)[1:]] == [
        (1, 1, False, "accepted", rec.verdict_commit), (1, 2, True, "rejected", rec.candidates[1].candidate),
        (1, 3, True, "refused", None), (2, 1, False, "failed", None)]


def test_three_null_candidates_accept_nothing(tmp_path):
    repo = make_project(tmp_path)
    configure(repo, 3, "null.yaml", keep_rejected=False)
    loop, state = run(repo)
    (rec,) = loop.store.gens()
    assert rec.status == "rejected" and rec.winner is None and state.best == state.base
    assert loop.lineage.sha(loop.lineage.refs.best) == state.base
    assert [c.status for c in rec.candidates] == ["rejected"] * 3
    assert all(c.delta == 0.0 and c.stone for c in rec.candidates)
    assert "no candidate of 3 passes Holm" in rec.reason and rec.cand == 1  # ties: the first is recorded
    assert sorted(plan_aims(loop.store.dir)) == ["alpha", "beta", "gamma"]
    assert len({c.candidate for c in rec.candidates}) == 3
    nodes = archive.load(loop.store.dir)
    assert [(n.cand, n.lost, n.status) for n in nodes[1:]] == [(1, False, "rejected"), (2, True, "rejected"),
                                                              (3, True, "rejected")]
    assert branches(repo, loop.run_id) == ["base", "best", "g001", "g001-c2", "g001-c3"]  # stones stay


def test_a_tampering_candidate_cannot_win(tmp_path):
    """Both candidates resolve every task here (the evaluator counts the greeting as a fix too), so
    both pass Holm with the same gain; candidate 1 would win the tie, but its results carry a
    tampering flag its parent's do not: candidate 2 wins instead."""
    from loop_support import MarkerEvaluator

    from evolve.types import IntegrityFlag

    class GreetingFixesAndC1Tampers(MarkerEvaluator):
        def evaluate(self, harness, instance_ids, repeat, label, split):
            report = super().evaluate(harness, instance_ids, repeat, label, split)
            greets = "Hello." in (harness.root / "prompts" / "system.txt").read_text()
            for r in report.results:
                r.resolved = r.resolved or greets
                if label.startswith("g001-c1-r"):
                    r.integrity_flags = [IntegrityFlag.RUNNER_PATCHING]
            return report

    repo = make_project(tmp_path)
    configure(repo, 2)
    loop, close = make_loop(repo, evaluator=GreetingFixesAndC1Tampers(repo / "runs" / "marker"))
    try:
        state = loop.run()
    finally:
        close()
    (rec,) = loop.store.gens()
    tamperer, clean = rec.candidates
    assert tamperer.hypothesis.startswith("PLAN-A") and tamperer.delta == clean.delta == 1.0
    assert tamperer.tampering and not tamperer.stone and tamperer.status == "rejected"
    assert rec.status == "accepted" and rec.winner == rec.cand == 2 and rec.hypothesis.startswith("PLAN-N")
    assert "new tampering and cannot win" in rec.reason and not rec.tampering
    assert state.best == rec.verdict_commit and loop.lineage.sha(f"{state.best}^") == clean.candidate


def test_one_candidate_is_unchanged(tmp_path):
    """K = 1 (the default, and set explicitly): no aim in the plan prompt, no candidate branches,
    the record and archive as before racing existed."""
    repo = make_project(tmp_path)
    configure(repo, 1, None)
    loop, state = run(repo)
    (rec,) = loop.store.gens()
    assert rec.status == "accepted" and rec.candidates == [] and rec.cand is None and rec.winner is None
    assert plan_aims(loop.store.dir) == [""]
    assert branches(repo, loop.run_id) == ["base", "best", "g001"]
    assert [label for label, *_ in loop.evaluator.calls if label.startswith("g001")][:3] == [
        "g001-parent", "g001-smoke", "g001-parent-r0"]
    assert all(n.cand is None and not n.lost for n in archive.load(loop.store.dir))


def test_candidates_must_be_at_least_one():
    from pydantic import ValidationError

    from evolve.config import SearchConfig

    assert SearchConfig().candidates == 1
    with pytest.raises(ValidationError):
        SearchConfig(candidates=0)


KILL_POINTS = ["plan@1", "check@1", "evaluate@1", "decide@1", "verdict-committed@1", "best-moved@1",
               "archive-written@1"]
"""Inside a K = 2 generation: while the plans and patches run, at the checks, in the race, after
the decision, and through the accept window (the lost candidate's node is written after the
generation's)."""


def _race_outcome(repo: Path, run: str) -> dict:
    from test_loop_kill_resume import outcome

    import re

    got = outcome(repo, run)
    for g in got["gens"]:  # candidate commits carry their commit time; their trees are compared below
        for c in g.get("candidates", []):
            c.pop("candidate")
    got["verdicts"] = {ref: [re.sub(r" commit=[0-9a-f]{40}\b", "", t) for t in trailers]
                       for ref, trailers in got["verdicts"].items()}
    got["trees"] = {ref: git.Repo(repo).git.rev_parse(f"evolve/{run}/{ref}:harness") for ref in got["refs"]}
    return got


def test_a_race_killed_anywhere_resumes_to_the_same_verdict(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from test_loop_kill_resume import run_loop

    def project(where: Path) -> Path:
        repo = make_project(where)
        configure(repo, 2)
        return repo

    ref_repo = project(tmp_path / "reference")
    proc = run_loop(ref_repo)
    assert proc.returncode == 0, proc.stderr
    reference = _race_outcome(ref_repo, proc.stdout.split()[0])
    assert reference["refs"] == ["base", "best", "g001", "g001-c2"] and reference["gens"][0]["winner"] == 1

    def kill_and_resume(point: str) -> str | None:
        repo = project(tmp_path / point.replace("@", "-"))
        killed = run_loop(repo, kill_at=point)
        if killed.returncode != -9:
            return f"{point}: not killed (exit {killed.returncode}): {killed.stderr[-2000:]}"
        run_id = killed.stdout.split()[0]
        resumed = run_loop(repo, run_id)
        if resumed.returncode != 0:
            return f"{point}: resume failed: {resumed.stderr[-2000:]}"
        got = _race_outcome(repo, run_id)
        if got != reference:
            return f"{point}: differs: {({k: (got[k], reference[k]) for k in got if got[k] != reference[k]})}"
        if list((repo / "runs" / run_id / "worktrees").glob("g001*")):
            return f"{point}: a candidate's worktree was left behind"
        return None

    with ThreadPoolExecutor(max_workers=3) as pool:
        problems = [p for p in pool.map(kill_and_resume, KILL_POINTS) if p]
    assert not problems, "\n".join(problems)


def test_with_manual_approval_the_winner_waits_and_approving_it_moves_best(tmp_path):
    from evolve.approval import decide

    repo = make_project(tmp_path)
    configure(repo, 2, approval="manual")
    loop, state = run(repo)
    (rec,) = loop.store.gens()
    assert rec.status == "pending" and rec.winner == 1 and state.best == state.base
    assert [c.status for c in rec.candidates] == ["pending", "rejected"]
    assert loop.lineage.sha(loop.lineage.refs.best) == state.base
    approved = decide(repo / "runs", loop.run_id, 1, approve=True, by="t", why="looks right", root=repo)
    assert approved.status == "accepted"
    assert loop.lineage.sha(loop.lineage.refs.best) == approved.verdict_commit
    assert loop.lineage.sha(f"{approved.verdict_commit}^") == rec.verdict_commit


def test_a_race_from_a_stepping_stone_must_also_beat_the_accepted_head(tmp_path):
    """search.parent: dgm draws generation 1 (three null candidates; its own node a stone) as the
    parent of generation 2, whose winner beats that parent and then the accepted head (the base)."""
    loop, state = run_dgm_from(tmp_path, (1, None))
    g1, g2 = loop.store.gens()
    assert g1.status == "rejected" and g1.stone and g2.parent_gen == 1 and g2.parent == g1.verdict_commit
    assert g2.status == "accepted" and g2.winner == 1 and g2.hypothesis.startswith("PLAN-A")
    assert "against the accepted head" in g2.reason and "beat its parent" in g2.reason
    labels = [label for label, *_ in loop.evaluator.calls]
    assert "g002-best-r0" in labels and "g002-c1-r0" in labels
    assert state.best == g2.verdict_commit == loop.lineage.sha(loop.lineage.refs.best)
    assert archive.accepted_path(archive.load(loop.store.dir), state.best) == {(0, None), (1, None),
                                                                                    (2, None)}


def test_aims_are_distinct_named_categories_and_render_into_the_plan_prompt():
    from evolve.analyze import Analysis
    from evolve.prompting import render
    from evolve.search.generation import aims_of

    cats = [{"name": "  loops  "}, {"name": "loops", "description": "again"}, {"description": "no name"},
            {"name": "format", "description": "no\nbash block", "instance_ids": ["a", 3]}, {"name": "x"}]
    aims, note = aims_of(Analysis(text="t", categories=cats), 2)
    assert aims == [{"name": "loops", "description": "", "instance_ids": []},
                    {"name": "format", "description": "no bash block", "instance_ids": ["a", "3"]}] and note == ""
    aims, note = aims_of(Analysis(text="t", categories=cats), 4)
    assert [a["name"] for a in aims] == ["loops", "format", "x"] and "3 candidates instead of 4" in note
    assert aims_of(Analysis(text="t"), 3) == ([None], "the analysis names no failure category: 1 candidate "
                                                     "instead of 3")
    common = dict(analysis="A", lessons=[], files={"a.py": "x"}, harness_dir="harness", score=0.5)
    for aim in aims:
        prompt = render("plan.j2", aim=aim, **common)
        assert f"Yours is **{aim['name']}**" in prompt and "most important failure category" not in prompt
    plain = render("plan.j2", aim=None, **common)
    assert "Yours is" not in plain and "Propose exactly ONE change that addresses the most important failure " \
                                       "category. Do not repeat a change that was already rejected." in plain


def test_the_dry_run_counts_k_candidates(tmp_path):
    import re

    from evolve.config import load_project_config
    from evolve.session import dry_run_assumptions, dry_run_estimate

    repo = make_project(tmp_path)
    cfg = load_project_config(repo / "evolve.yaml")
    one = dry_run_estimate(cfg, dry_run_assumptions())
    three = dry_run_estimate(cfg.model_copy(update={"search": cfg.search.model_copy(update={"candidates": 3})}),
                             dry_run_assumptions())
    runs = [int(re.search(r"estimate: (\d+) task runs", text).group(1)) for text in (one, three)]
    assert runs[1] == 3 * runs[0] > 0
    assert "candidates per generation" not in one and "3 candidates per generation" in three


def test_dgm_draws_a_lost_candidate_and_its_child_branches_from_gNNN_cJ(tmp_path):
    """search.parent: dgm draws candidate 2 of generation 1 (it lost the race, a stepping stone on
    ``g001-c2``) as generation 2's parent: generation 2 is made from that commit, records
    ``parent_cand``, must beat that parent and then the accepted head, and the tree shows it under
    ``g001-c2``."""
    loop, state = run_dgm_from(tmp_path, (1, 2))
    g1, g2 = loop.store.gens()
    stone = next(c for c in g1.candidates if c.cand == 2)
    assert stone.status == "rejected" and stone.stone and stone.candidate
    assert (g2.parent_gen, g2.parent_cand, g2.parent) == (1, 2, stone.candidate)
    assert loop.lineage.sha(loop.lineage.refs.gen(1, 2)) == stone.candidate  # its branch is kept
    assert loop.lineage.sha(f"{g2.candidate}^") == stone.candidate  # the child is made on top of it
    assert g2.status == "accepted" and "against the accepted head" in g2.reason
    assert state.best == g2.verdict_commit
    nodes = archive.load(loop.store.dir)
    (n2,) = [n for n in nodes if n.gen == 2 and not n.lost]
    assert (n2.parent_gen, n2.parent_cand) == (1, 2)  # and its 2 lost candidates: 3 children of g001-c2
    assert archive.children_by_ref(nodes)[(1, 2)] == 3
    assert archive.accepted_path(nodes, state.best) == {(0, None), (1, 2), (2, None)}
    tree = subprocess.run([EVOLVE, "status", "--tree"], cwd=loop.repo_root, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert tree.returncode == 0, tree.stderr
    lines = tree.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if "g001-c2" in line)
    assert "g002" in lines[at + 1] and lines[at + 1].index("g002") > lines[at].index("g001-c2")


def test_manual_approval_of_a_stepping_stones_child_marks_its_path_through_the_lost_candidate(tmp_path):
    """K = 3, search.parent: dgm, acceptance.approval: manual: generation 2 grows from g001-c2 (a lost
    candidate), beats it and the accepted head, and waits; a person approves it (the real CLI) and
    ``evolve status --tree`` marks the accepted path base -> g001-c2 -> g002, the approval commit as
    the accepted head, and not g001's own node."""
    loop, state = run_dgm_from(tmp_path, (1, 2), approval="manual")
    g1, g2 = loop.store.gens()
    assert (g2.status, g2.parent_gen, g2.parent_cand, g2.winner) == ("pending", 1, 2, 1), g2.reason
    assert state.best == state.base
    env = {**os.environ, "COLUMNS": "200"}
    approved = subprocess.run([EVOLVE, "approve", "2", "--by", "t", "--why", "ok"], cwd=loop.repo_root,
                              capture_output=True, text=True, timeout=120, env=env)
    assert approved.returncode == 0, approved.stderr
    (after,) = [g for g in loop.store.gens() if g.gen == 2]
    best = loop.lineage.sha(loop.lineage.refs.best)
    assert after.status == "accepted" and best == after.verdict_commit != g2.verdict_commit
    assert [c.status for c in after.candidates if c.cand == after.cand] == ["accepted"]
    nodes = archive.decided(archive.load(loop.store.dir), loop.store.gens())
    assert archive.accepted_path(nodes, best) == {(0, None), (1, 2), (2, None)}
    assert archive.accepted_path(archive.load(loop.store.dir), best) == set()  # as written: still pending

    tree = subprocess.run([EVOLVE, "status", "--tree"], cwd=loop.repo_root, capture_output=True, text=True,
                          timeout=120, env=env)
    assert tree.returncode == 0, tree.stderr
    lines = tree.stdout.splitlines()
    line = {name: next(x for x in lines if f" {name} " in x) for name in ("g000", "g001", "g001-c2", "g001-c3",
                                                                          "g002")}
    assert all("* " in line[n] for n in ("g000", "g001-c2", "g002")), tree.stdout
    assert not any("* " in line[n] for n in ("g001", "g001-c3")), tree.stdout
    assert "g002 accepted" in line["g002"] and "<- accepted head" in line["g002"], tree.stdout

    loop.store.gen_path(2).unlink()  # a damaged record deleted: rebuilt from the approval's verdict commit
    again, close = make_loop(loop.repo_root, loop.run_id)
    try:
        again.run()
    finally:
        close()
    (rebuilt,) = [g for g in again.store.gens() if g.gen == 2]
    assert (rebuilt.status, rebuilt.decision, rebuilt.verdict_commit) == ("accepted", "approved by t: ok", best)
    assert [(c.cand, c.status, c.candidate) for c in rebuilt.candidates] == \
        [(c.cand, c.status, c.candidate) for c in after.candidates]
    nodes = archive.decided(archive.load(loop.store.dir), again.store.gens())
    assert archive.accepted_path(nodes, best) == {(0, None), (1, 2), (2, None)}


def run_dgm_from(tmp_path: Path, pick: tuple[int, int | None], **acceptance):
    """(loop, state) of a 2-generation dgm run with 3 null candidates (``null.yaml``), seeded so that
    generation 2's parent is ``pick`` (``archive.ref``) of generation 1's archive; ``acceptance``
    settings as ``configure``'s."""
    from evolve.search.archive import Node
    from evolve.search.parents import choose_parent

    after_g1 = [Node(gen=0, commit="a", status="base", stone=True, rate=0.0),
                Node(gen=1, cand=1, commit="b", parent_gen=0, status="rejected", stone=True, rate=0.0),
                Node(gen=1, cand=2, lost=True, commit="c", parent_gen=0, status="rejected", stone=True, rate=0.0),
                Node(gen=1, cand=3, lost=True, commit="d", parent_gen=0, status="rejected", stone=True, rate=0.0)]
    seed = next(s for s in range(200) if choose_parent("dgm", after_g1, best_gen=0, seed=f"{s}/2") == pick)
    repo = make_project(tmp_path)
    configure(repo, 3, "null.yaml", generations=2, **acceptance)
    cfg = yaml.safe_load((repo / "evolve.yaml").read_text())
    cfg["search"].update(parent="dgm", seed=seed)
    (repo / "evolve.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    git.Repo(repo).git.commit("-qam", "dgm", env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
                                                  "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"})
    return run(repo)


def test_a_k_candidate_record_rebuilt_from_git_keeps_every_candidate(tmp_path):
    """A damaged generation record is deleted (what the RunFileError says to do) and rebuilt from git on
    resume: with K > 1 it comes back with every candidate (verdict, stone, commit, aim, hypothesis,
    files, rate, delta, p), which is the generation's own and the winner; the branches and archive
    stay as they were."""
    from evolve.runstate import RunFileError

    repo = make_project(tmp_path)
    configure(repo, 4, keep_rejected=False)  # 3 categories: accepted, rejected (a stone), refused
    loop, state = run(repo)
    (original,) = loop.store.gens()
    assert [c.status for c in original.candidates] == ["accepted", "rejected", "refused"]
    nodes = (loop.store.dir / "archive.jsonl").read_text()
    refs = branches(repo, loop.run_id)

    path = loop.store.gen_path(1)
    path.write_text(path.read_text()[:200])  # a torn record
    again, close = make_loop(repo, loop.run_id)
    try:
        with pytest.raises(RunFileError, match="delete it and run `evolve run --resume"):
            again.run()
    finally:
        close()
    path.unlink()
    again, close = make_loop(repo, loop.run_id)
    try:
        again.run()
    finally:
        close()
    (rebuilt,) = again.store.gens()
    assert "rebuilt from the verdict commit" in rebuilt.reason
    same = ["gen", "status", "parent", "candidate", "verdict_commit", "hypothesis", "files", "category", "cand",
            "winner", "stone", "child_rate", "delta", "parent_rate", "n_tasks", "fixed", "broken"]
    assert rebuilt.model_dump(include=set(same)) == original.model_dump(include=set(same))
    brief = {"cand", "status", "stone", "candidate", "category", "hypothesis", "files", "child_rate", "delta"}
    assert [c.model_dump(include=brief) for c in rebuilt.candidates] == \
        [c.model_dump(include=brief) for c in original.candidates]
    assert [c.p_value for c in rebuilt.candidates] == \
        [c.p_value and float(f"{c.p_value:.4g}") for c in original.candidates]
    assert (loop.store.dir / "archive.jsonl").read_text() == nodes and branches(repo, loop.run_id) == refs
    # a verdict commit from before candidates were in its trailers: the kept branches (g001-c2) are what remain
    import re

    from evolve.recorder import candidates_from_git

    trailers = again.lineage.verdict_of(1)[1]
    legacy = {k: v for k, v in trailers.items() if not re.match(r"Evolve-(C\d|Candidate$|Winner$)", k)}
    assert len(legacy) < len(trailers) and "Evolve-Child-Score" in legacy
    (kept,), own, winner = candidates_from_git(1, legacy, again.lineage)
    assert (kept.cand, kept.status, kept.candidate, own, winner) == (2, "rejected", original.candidates[1].candidate,
                                                                     None, None)
    assert kept.hypothesis == original.candidates[1].hypothesis
