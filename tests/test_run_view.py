"""What a person watching ``evolve run`` sees during a race round (``search.candidates`` K > 1: the
parent's runs and every candidate's run at once): the real loop (scripted optimizer, MarkerEvaluator
behind the evaluator seam, no Docker) with the real views, rendered by rich into a recording console.

``Concurrent`` reports a round as ``DockerEvaluator.evaluate_many`` does: one progress sink per
evaluation, asked before they start, fed from one thread each; halfway through every evaluation the
threads meet and the screen is captured."""

from __future__ import annotations

import io
import re
import threading

from loop_support import MarkerEvaluator, make_loop, make_project
from rich.console import Console
from test_search_generation import configure

from evolve.report import RunLiveView
from evolve.runlog import RunLogView


class Concurrent(MarkerEvaluator):
    """``evaluate_many``: each request's results reported from its own thread; ``at_half()`` runs once
    every evaluation of the round has finished half of its task-runs."""

    progress = None
    at_half = None

    def evaluate_many(self, requests, split):
        self.batches.append([label for *_, label in requests])
        sinks = [self.progress(label, len(ids)) for _, ids, _, label in requests]
        reports = [self.evaluate(h, ids, rep, label, split) for h, ids, rep, label in requests]
        halfway = threading.Barrier(len(requests), action=self.at_half)

        def feed(sink, report) -> None:
            half = len(report.results) // 2
            for i, r in enumerate(report.results):
                if i == half:
                    halfway.wait(timeout=60)
                sink.started(r.instance_id, r.repeat)
                sink.finished(r, cached=False)

        threads = [threading.Thread(target=feed, args=pair) for pair in zip(sinks, reports)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return reports


def race(tmp_path, view, at_half):
    repo = make_project(tmp_path)
    configure(repo, 2)
    evaluator = Concurrent(repo / "runs" / "marker")
    evaluator.progress, evaluator.at_half = view.eval_progress, at_half
    loop, close = make_loop(repo, evaluator=evaluator)
    loop.view = loop.recorder.view = view
    try:
        with view:
            loop.run(generations=1)
    finally:
        close()
    return loop, evaluator


def test_a_race_round_is_one_progress_line_with_each_evaluation_under_one_bar(tmp_path):
    console = Console(file=io.StringIO(), width=200, force_terminal=True, color_system=None)
    view = RunLiveView(console, None, 1)
    screens: list[str] = []

    def capture() -> None:
        screen = Console(file=io.StringIO(), width=200, record=True, force_terminal=True, color_system=None)
        screen.print(view.live.renderable)
        screens.append(screen.export_text())

    loop, evaluator = race(tmp_path, view, capture)
    (rec,) = loop.store.gens()
    assert rec.status == "accepted" and len(rec.candidates) == 2
    rounds = [b for b in evaluator.batches if len(b) > 1]
    assert rounds and len(screens) == len(evaluator.batches)
    first = screens[0]
    bars = [line for line in first.splitlines() if "━" in line]
    round_lines = [line for line in bars if "g001 race round 1 (r0) " in line]
    assert len(round_lines) == 1, first
    line = round_lines[0]
    sizes = {label: len(ids) for label, _, ids, _ in evaluator.calls if label in rounds[0]}
    for label in rounds[0]:  # each evaluation's counts after the one bar, halfway through
        name = label.removeprefix("g001-").removesuffix("-r0")
        assert f"{name} {sizes[label] // 2}/{sizes[label]} (" in line, (name, line)
    total = sum(sizes.values())
    assert f" {sum(n // 2 for n in sizes.values())}/{total} " in line, line
    assert not any(label in first for label in rounds[0]), first  # no bar of its own for any of them
    assert "0 running" in line


def test_the_plain_log_heartbeat_names_every_evaluation_of_a_round(tmp_path):
    out = io.StringIO()
    view = RunLogView(out, every_s=3600)
    race(tmp_path, view, lambda: view.beat())
    beats = [line for line in out.getvalue().splitlines() if "evaluate still running" in line]
    assert beats, out.getvalue()
    for name in ("g001-parent-r0", "g001-c1-r0", "g001-c2-r0"):
        assert re.search(rf"; {name}: \d+/\d+ done", beats[0]), beats[0]
