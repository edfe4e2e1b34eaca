"""``evolve run`` off a terminal (nohup, systemd, CI): plain timestamped progress lines, no live screen.

One line per event, each ``<UTC time> <run id> <text>``, flushed at once::

    2026-12-01T14:05:00Z run-...-ab12 generation 3: analyze started (accepted 42.0%, spent $0.1200)
    2026-12-01T14:05:12Z run-...-ab12 generation 3: analyze done in 12s
    2026-12-01T14:05:12Z run-...-ab12 evaluation g003-child-r0 started: 12 task-runs
    2026-12-01T14:06:12Z run-...-ab12 generation 3: evaluate still running after 60s; g003-child-r0: 5/12 done, ...
    2026-12-01T14:07:40Z run-...-ab12 generation 3: accepted (+8.3 pts) 'hypothesis': reason

A step's start and end are logged, and while one lasts a heartbeat line comes every ``every_s``
seconds (default 60), so a stalled night is told apart from a slow one. No control characters
(no progress bars, no colours): the text of run data is printed with them replaced.
"""

from __future__ import annotations

import re
import threading
import time
from datetime import datetime, timezone
from typing import TextIO

HEARTBEAT_S = 60.0
"""Seconds between heartbeat lines during a long step."""
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\x9b]")


def _clean(text: str) -> str:
    """``text`` on one line without control characters (a harness could print escape sequences)."""
    return _CONTROL.sub("?", " ".join(str(text).split()))


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


class _EvalLog:
    """One evaluation's counts (``evolve.evaluate.EvalProgress``), logged at its start and end."""

    def __init__(self, log: "RunLogView", label: str, total: int) -> None:
        self.log, self.label, self.total = log, label, total
        self.done = self.resolved = self.running = self.infra = 0
        self.started_at = time.monotonic()
        self._lock = threading.Lock()
        log.line(f"evaluation {label} started: {total} task-runs")

    def summary(self) -> str:
        with self._lock:
            return (f"{self.label}: {self.done}/{self.total} done, {self.resolved} resolved, {self.running} running, "
                    f"{self.infra} infra")

    def started(self, instance_id: str, repeat: int) -> None:
        with self._lock:
            self.running += 1

    def finished(self, result, cached: bool) -> None:
        with self._lock:
            self.running -= 0 if cached else 1
            self.done += 1
            self.resolved += bool(result.resolved)
            self.infra += bool(result.is_infra)
            last = self.done == self.total
        if last:
            self.log.line(f"evaluation {self.summary()} in {time.monotonic() - self.started_at:.0f}s")


class RunLogView:
    """The ``evolve.loop.RunView`` of ``evolve run`` off a terminal: plain timestamped lines to ``out``.

    Args:
        out: where lines go (stdout).
        every_s: seconds between heartbeat lines while a step lasts.
        after_verdict: ``after_verdict(state, rec)`` called after each verdict line (the report refresh).
    """

    def __init__(self, out: TextIO, every_s: float = HEARTBEAT_S, after_verdict=None) -> None:
        self.out, self.every_s, self.after_verdict = out, every_s, after_verdict
        self.run_id = "evolve"
        self.current: tuple[int, str, float] | None = None
        self.evaluations: list[_EvalLog] = []
        """The step's evaluations so far (a race round runs several at once)."""
        self.spent = ""
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "RunLogView":
        self._thread = threading.Thread(target=self._heartbeat, name="evolve-run-log", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self._end_step()
        elif self.current is not None:
            gen, step, since = self.current
            self.current = None
            why = "interrupted" if issubclass(exc_type, KeyboardInterrupt) else f"stopped by {exc_type.__name__}"
            self.line(f"generation {gen}: {step} {why} after {time.monotonic() - since:.0f}s")
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def line(self, text: str) -> None:
        """Print one timestamped line now."""
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        with self._lock:
            self.out.write(f"{stamp} {self.run_id} {_clean(text)}\n")
            self.out.flush()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.every_s):
            self.beat()

    def beat(self) -> None:
        """One heartbeat line on the step in progress (and its evaluation's counts); nothing between steps."""
        current, evaluations = self.current, list(self.evaluations)
        if current is None:
            return
        gen, step, since = current
        shown = [e for e in evaluations if e.done < e.total] or evaluations[-1:]  # all of a round, else the last
        detail = "".join(f"; {e.summary()}" for e in shown)
        self.line(f"generation {gen}: {step} still running after {time.monotonic() - since:.0f}s{detail}; "
                  f"spent {self.spent}")

    def _end_step(self) -> None:
        if self.current is not None:
            gen, step, since = self.current
            self.current = None
            self.line(f"generation {gen}: {step} done in {time.monotonic() - since:.0f}s")

    # -- evolve.loop.RunView ------------------------------------------------------------

    def step(self, state, gen: int, step: str) -> None:
        """The previous step ends, ``step`` of generation ``gen`` starts."""
        self.run_id, self.spent = state.run_id, f"${state.spent_usd:.4f}"
        self._end_step()
        self.evaluations = []
        self.line(f"generation {gen}: {step} started (accepted {_pct(state.best_rate)}, spent {self.spent})")
        self.current = (gen, step, time.monotonic())

    def eval_progress(self, label: str, total: int) -> _EvalLog:
        evaluation = _EvalLog(self, label, total)
        self.evaluations.append(evaluation)
        return evaluation

    def eval_round(self, parts: list[tuple[str, int]]):
        """A race round: its evaluations log their own start and end lines; a heartbeat names each running one."""
        from contextlib import nullcontext

        return nullcontext()

    def verdict(self, state, rec) -> None:
        """The generation's last step ends and its verdict is logged."""
        self._end_step()
        self.evaluations = []
        delta = "" if rec.delta is None else f" ({100 * rec.delta:+.1f} pts)"
        self.line(f"generation {rec.gen}: {rec.status}{delta} {rec.hypothesis[:100]!r}: {rec.reason[:300]}; "
                  f"cost ${rec.cost_usd:.4f}, {rec.seconds:.0f}s")
        if self.after_verdict is not None:
            self.after_verdict(state, rec)

    def note(self, text: str) -> None:
        self.line(text)
