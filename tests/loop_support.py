"""A Docker-free way to run the real loop: the scripted optimizer and an evaluator that
decides each task's outcome from the harness's content.

``MarkerEvaluator`` is the loop's seam (``evolve.evaluator.Evaluator``), not a mock of
evolve's parts: analyze, plan, patch, the optimizer, git and the run files all run for
real. A task counts as resolved when the harness's files contain ``WIDE_MARKER`` (what
the scripted solver of the Docker tests needs to fix a task).

Run as a script it is the process the kill-and-resume tests start and kill::

    python tests/loop_support.py REPO [RUN_ID]   # RUN_ID: resume that run
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from conftest import FIXTURES, WIDE_MARKER, build_wide_evalset  # noqa: E402

from evolve.evaluate import EvalReport  # noqa: E402
from evolve.harness import Harness  # noqa: E402
from evolve.types import FailureClass, TaskResult, Usage  # noqa: E402

OPTIMIZER = FIXTURES / "loop" / "optimizer.yaml"


class MarkerEvaluator:
    """Resolved iff any file of the harness contains ``marker``; deterministic, free, no Docker.

    ``calls`` lists ``(label, split, instance_ids, repeat)`` of every evaluation.
    """

    def __init__(self, out_dir: Path, marker: str = WIDE_MARKER) -> None:
        self.out_dir, self.marker = out_dir, marker
        self.calls: list[tuple[str, str, list[str], int]] = []
        self.batches: list[list[str]] = []
        """The labels of each ``evaluate_many`` call (a race's round)."""

    def evaluate(self, harness: Harness, instance_ids: list[str], repeat: int, label: str,
                 split: str) -> EvalReport:
        self.calls.append((label, split, list(instance_ids), repeat))
        text = "\n".join(p.read_text(errors="replace") for p in sorted(harness.root.rglob("*")) if p.is_file())
        resolved = self.marker in text
        results = [TaskResult(instance_id=i, repeat=repeat, resolved=resolved, harness_exit_code=0,
                              key=hashlib.sha256(f"{harness.tree_hash}/{i}/{repeat}".encode()).hexdigest(),
                              failure_class=FailureClass.NONE if resolved else FailureClass.TESTS_FAILED)
                   for i in instance_ids]
        return EvalReport(run_id=label, run_dir=self.out_dir / label, evalset="wide", split=split,
                          harness=harness.source, harness_tree=harness.tree_hash, model="marker", results=results)

    def evaluate_many(self, requests: list[tuple[Harness, list[str], int, str]], split: str) -> list[EvalReport]:
        """``evaluate`` of each request, one after another (deterministic ``calls``); ``batches`` records the round."""
        self.batches.append([label for _, _, _, label in requests])
        return [self.evaluate(h, ids, rep, label, split) for h, ids, rep, label in requests]

    def compile(self, harness: Harness) -> str | None:
        for path in sorted(harness.root.rglob("*.py")):
            try:
                compile(path.read_text(), str(path), "exec")
            except SyntaxError as e:
                return f"{path.name}: {e}"
        return None

    def result_dir(self, result: TaskResult) -> Path | None:
        d = self.out_dir / "results" / result.key
        d.mkdir(parents=True, exist_ok=True)
        (d / "test_output.txt").write_text(f"FAILED tests for {result.instance_id}\n")
        return d


def make_project(root: Path, generations: int = 3) -> Path:
    """A repo made by ``evolve init`` (minimal harness) configured for the wide eval set and the
    scripted optimizer, committed; returns the repo."""
    import git

    from evolve.project import init_project

    evals = build_wide_evalset(root / "evals" / "wide")
    repo = root / "proj"
    init_project(repo, "minimal", "harness")
    cfg = yaml.safe_load((repo / "evolve.yaml").read_text())
    cfg["models"]["optimizer"]["model"] = f"scripted/{OPTIMIZER}"
    cfg["evals"].update(name=str(evals), workers=1)
    cfg["acceptance"]["rerun_discordant"] = 1
    cfg["budget"]["generations"] = generations
    (repo / "evolve.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    r = git.Repo(repo)
    r.git.add("evolve.yaml")
    r.git.commit("-qm", "configure evolve", env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
                                                 "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"})
    return repo


def make_loop(repo: Path, run_id: str | None = None, evaluator: MarkerEvaluator | None = None):
    """(Loop, close): the real loop on ``repo`` with the scripted optimizer and a MarkerEvaluator."""
    from evolve.config import load_project_config
    from evolve.loop import Loop, LoopSettings
    from evolve.models import backend_for

    cfg = load_project_config(repo / "evolve.yaml")
    backend, close = backend_for(cfg.models.optimizer.model)
    evaluator = evaluator or MarkerEvaluator(repo / "runs" / "marker")
    loop = Loop(cfg, repo, LoopSettings(solver_model="marker", runs_dir=repo / "runs"), backend,
                run_id=run_id, evaluator=evaluator)
    return loop, close


def main(argv: list[str]) -> int:
    repo = Path(argv[0])
    loop, close = make_loop(repo, argv[1] if len(argv) > 1 else None)
    try:
        print(loop.run_id, flush=True)
        loop.run()
    finally:
        close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


class TaskFilesEvaluator(MarkerEvaluator):
    """A ``MarkerEvaluator`` that also writes each evaluation's folder as ``evolve.evaluate.Evaluation``
    does (``<out_dir>/<label>-<stamp>/``: results.jsonl, events.jsonl, tasks/<instance_id>/r<k>/ with
    result.json, trajectory.json, trace.jsonl, test_output.txt), so ``evolve report`` has task files to
    link. ``trajectory_text`` goes into every trajectory (a hostile harness's words, in the tests);
    ``usd`` is each fresh task-run's solver cost."""

    def __init__(self, out_dir: Path, marker: str = WIDE_MARKER, *, trajectory_text: str = "",
                 usd: float = 0.001) -> None:
        super().__init__(out_dir, marker)
        self.trajectory_text, self.usd, self.n = trajectory_text, usd, 0

    def evaluate(self, harness: Harness, instance_ids: list[str], repeat: int, label: str,
                 split: str) -> EvalReport:
        import json
        import time

        from evolve.store import append_jsonl, now_iso

        report = super().evaluate(harness, instance_ids, repeat, label, split)
        self.n += 1
        run_dir = self.out_dir / f"{label}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{self.n:04x}"
        for r in report.results:
            r.usage.cost_usd = self.usd
            tdir = run_dir / "tasks" / r.instance_id / f"r{r.repeat}"
            tdir.mkdir(parents=True, exist_ok=True)
            (tdir / "result.json").write_text(r.model_dump_json(indent=2))
            (tdir / "trajectory.json").write_text(json.dumps({"instance_id": r.instance_id, "messages": [
                {"role": "assistant", "content": f"working on {r.instance_id} {self.trajectory_text}"}]}))
            (tdir / "trace.jsonl").write_text(json.dumps({"ts": now_iso(), "call": 1, "cost_usd": self.usd}) + "\n")
            (tdir / "test_output.txt").write_text(f"{'PASSED' if r.resolved else 'FAILED'} tests of {r.instance_id}\n")
            append_jsonl(run_dir / "results.jsonl", {**r.model_dump(mode="json"), "cached": False})
        append_jsonl(run_dir / "events.jsonl", {"ts": now_iso(), "event": "end"})
        report.fresh_usage = Usage(calls=len(report.results), cost_usd=self.usd * len(report.results))
        return report
