"""``DockerEvaluator.evaluate_many``: a race's round of evaluations run at once in real Docker
sandboxes, each on its own executor, together within ``workers`` task-runs; results and cache as
one evaluation after another."""

from __future__ import annotations

import threading

import pytest

from conftest import SOLVER_SCRIPT
from evolve.config import EvalSettings
from evolve.evalsets.registry import load_evalset
from evolve.evaluator import DockerEvaluator
from evolve.harness import resolve_harness, template_dir

pytestmark = pytest.mark.docker


class Running:
    """Counts task-runs running across every evaluation (``EvalProgress`` of each), and the most at once."""

    def __init__(self) -> None:
        self.now = self.most = 0
        self.lock = threading.Lock()

    def started(self, instance_id: str, repeat: int) -> None:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)

    def finished(self, result, cached: bool) -> None:
        if not cached:
            with self.lock:
                self.now -= 1


def test_a_round_runs_at_once_within_workers_and_matches_one_by_one(mini_evalset, base_image, docker_client,
                                                                      tmp_path):
    running = Running()
    settings = EvalSettings(model=f"scripted/{SOLVER_SCRIPT}", harness_timeout_s=120, test_timeout_s=120)
    evaluator = DockerEvaluator(load_evalset(str(mini_evalset)), settings, out_dir=tmp_path / "evals",
                                cache_dir=tmp_path / "cache", workers=2, sandbox_run_id="many",
                                progress=lambda label, n: running)
    harness = resolve_harness(str(template_dir("minimal")), workdir=tmp_path / "harnesses")
    # three evaluations of one task each: more than one task-run at once is evaluations running together
    requests = [(harness, ["mini__calc-1"], 0, "g001-parent-r0"), (harness, ["mini__calc-2"], 0, "g001-c1-r0"),
                (harness, ["mini__calc-1"], 1, "g001-c2-r1")]
    reports = evaluator.evaluate_many(requests, "search")
    assert running.most == 2 and running.now == 0  # together, and never more than workers
    got = [[(r.instance_id, r.repeat, r.resolved, r.is_infra) for r in rep.results] for rep in reports]
    assert got == [[("mini__calc-1", 0, True, False)], [("mini__calc-2", 0, False, False)],
                   [("mini__calc-1", 1, True, False)]]
    assert [rep.run_id.rsplit("-", 3)[0] for rep in reports] == ["g001-parent-r0", "g001-c1-r0", "g001-c2-r1"]
    assert len(evaluator._spare) == 2  # the extra executors are kept for the next round
    # one after another: the same results, every one from the cache (same keys), no fresh spend
    again = [evaluator.evaluate(h, ids, rep, label, "search") for h, ids, rep, label in requests]
    assert [[(r.key, r.resolved) for r in rep.results] for rep in again] == \
        [[(r.key, r.resolved) for r in rep.results] for rep in reports]
    assert all(rep.fresh_usage.calls == 0 for rep in again)
    left = docker_client.api.containers(all=True, filters={"label": "evolve.managed=1"})
    assert not [c for c in left if any(rep.run_id in str(c.get("Labels")) for rep in reports)]
