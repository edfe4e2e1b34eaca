"""``evolve run``'s plain log off a terminal (``evolve.runlog.RunLogView``) on the real loop without
Docker (``MarkerEvaluator`` behind the seam). The CLI itself, with stdout a pipe and real Docker
evaluations, is checked in tests/test_loop.py."""

from __future__ import annotations

import io
import re

from loop_support import MarkerEvaluator, make_loop, make_project

from evolve.runlog import RunLogView

LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \S+ \S")


class Beating(MarkerEvaluator):
    """Reports progress like the real evaluator and asks the view for a heartbeat mid-evaluation
    (where the view's thread would print one every ``every_s`` seconds)."""

    view: RunLogView

    def evaluate(self, harness, instance_ids, repeat, label, split):
        progress = self.view.eval_progress(label, len(instance_ids))
        report = super().evaluate(harness, instance_ids, repeat, label, split)
        for r in report.results[:1]:
            progress.started(r.instance_id, repeat)
            progress.finished(r, cached=False)
        self.view.beat()
        for r in report.results[1:]:
            progress.started(r.instance_id, repeat)
            progress.finished(r, cached=False)
        return report


def logged_run(tmp_path, generations: int = 1, interrupt_at: str | None = None) -> list[str]:
    repo = make_project(tmp_path)
    out = io.StringIO()
    view = RunLogView(out, every_s=3600)
    evaluator = Beating(repo / "runs" / "marker")
    evaluator.view = view
    loop, close = make_loop(repo, evaluator=evaluator)
    loop.view = loop.recorder.view = view
    if interrupt_at:
        real = evaluator.evaluate
        evaluator.evaluate = lambda h, ids, r, label, split: (_ for _ in ()).throw(KeyboardInterrupt) \
            if label == interrupt_at else real(h, ids, r, label, split)
    try:
        with view:
            view.note("a note with \x1b[2J\x1b[31mescapes\r\n and a newline")
            loop.run(generations=generations)
    except KeyboardInterrupt:
        pass
    finally:
        close()
    return out.getvalue().splitlines()


def test_every_step_starts_and_ends_on_plain_timestamped_lines(tmp_path):
    lines = logged_run(tmp_path)
    assert lines and all(LINE.match(line) for line in lines), lines
    assert lines[0].endswith(" evolve a note with ?[2J?[31mescapes and a newline")  # escapes defused, one line
    assert not any(re.search(r"[\x00-\x1f\x7f]", line) for line in lines)
    for step in ("baseline", "analyze", "plan", "patch", "check", "evaluate", "decide", "holdout"):
        starts = [i for i, line in enumerate(lines) if f": {step} started" in line]
        ends = [i for i, line in enumerate(lines) if f": {step} done in" in line]
        assert starts and ends and starts[0] < ends[0], step
    beat = next(line for line in lines if "generation 1: evaluate still running after" in line)
    assert re.search(r"; g001-(parent|child)-r0: 1/\d+ done, [01] resolved, 0 running, 0 infra; spent \$", beat), beat
    assert any(re.search(r"evaluation g001-child-r0: (\d)/\1 done, \1 resolved, 0 running, 0 infra in \d+s$", line)
               for line in lines)
    assert any("generation 1: accepted (+100.0 pts) 'PLAN-A" in line for line in lines)


def test_an_interrupted_step_says_so(tmp_path):
    lines = logged_run(tmp_path, interrupt_at="g001-child-r0")
    assert "generation 1: evaluate interrupted after" in lines[-1]
    assert not any(": evaluate done in" in line for line in lines)
