"""Rich renderers: state in, tables and progress bars out. No logic lives here."""

from __future__ import annotations

import threading
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from evolve.evaluate import EvalReport
from evolve.types import TaskResult, TestStatus


class _Counts(ProgressColumn):
    def __init__(self, view: "EvalProgressView") -> None:
        super().__init__()
        self.view = view

    def render(self, task) -> Text:
        v = self.view
        return Text.assemble((f"{v.resolved} resolved", "green"), "  ", (f"{v.running} running", "cyan"),
                             "  ", (f"{v.infra} infra", "yellow" if v.infra else "dim"),
                             "  ", (f"${v.cost:.4f}", "magenta"))


class EvalProgressView:
    """A progress bar showing done/total, resolved, running, infra, cost and ETA.

    Implements ``evolve.evaluate.EvalProgress``; safe to call from worker threads.
    """

    def __init__(self, console: Console, total: int, label: str) -> None:
        self.resolved = self.running = self.infra = 0
        self.cost = 0.0
        self._lock = threading.Lock()
        self.bar = Progress(TextColumn("{task.description}", style="bold", markup=False), BarColumn(),
                            TextColumn("{task.completed}/{task.total}"), _Counts(self),
                            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                            console=console, transient=False)
        self.task_id = self.bar.add_task(label, total=total)

    def __enter__(self) -> "EvalProgressView":
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()

    def started(self, instance_id: str, repeat: int) -> None:
        """One more task running."""
        with self._lock:
            self.running += 1
        self.bar.refresh()

    def finished(self, result: TaskResult, cached: bool) -> None:
        """Advance the bar and add ``result`` to the counts (a cached result was never running)."""
        with self._lock:
            if not cached:
                self.running -= 1
            self.resolved += result.resolved
            self.infra += result.is_infra
            self.cost += result.usage.cost_usd
        self.bar.advance(self.task_id)


def _tests(statuses: dict[str, TestStatus]) -> str:
    if not statuses:
        return "-"
    ok = sum(s is TestStatus.PASSED for s in statuses.values())
    return f"{ok}/{len(statuses)}"


def results_table(report: EvalReport) -> Table:
    """One row per (task, repeat)."""
    table = Table(title=Text(f"{report.evalset} / {report.split}"), title_justify="left")
    for col in ("instance_id", "rep", "resolved", "class", "F2P", "P2P", "calls", "tokens", "cost $", "s"):
        table.add_column(col, justify="right" if col in ("rep", "calls", "tokens", "cost $", "s") else "left")
    for r in report.results:
        mark = Text("yes", "green") if r.resolved else Text("infra", "yellow") if r.is_infra else Text("no", "red")
        table.add_row(Text(r.instance_id), str(r.repeat), mark, r.failure_class.value, _tests(r.FAIL_TO_PASS),
                      _tests(r.PASS_TO_PASS), str(r.usage.calls),
                      str(r.usage.prompt_tokens + r.usage.completion_tokens), f"{r.usage.cost_usd:.4f}",
                      f"{r.seconds:.1f}")
    return table


def summary_table(report: EvalReport) -> Table:
    """Totals: resolved rate over scored tasks, infra count, integrity flags, tokens, cost and time."""
    s = report.summary()
    table = Table(title="summary", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    rows = [
        ("harness", Text(f"{s['harness']} ({s['harness_tree'][:12]})")),
        ("model", Text(str(s["model"]))),
        ("resolved", f"{s['resolved']}/{s['scored']} ({100 * s['resolve_rate']:.1f}%)"),
        ("infra failures (not scored)", str(s["infra"])),
        ("integrity flags", ", ".join(f"{flag} {n}" for flag, n in s["integrity_flags"].items()) or "none"),
        ("tampering (never resolved)", Text(f"{s['tampering']} tasks", "red bold" if s["tampering"] else "")),
        ("model calls", str(s["calls"])),
        ("tokens (prompt + completion)", f"{s['prompt_tokens']} + {s['completion_tokens']}"),
        ("cost", f"${s['cost_usd']:.4f}"),
        ("wall time", f"{s['seconds']:.1f}s"),
        ("results", Text(str(report.run_dir))),
    ]
    if report.interrupted:
        rows.insert(0, ("status", Text("interrupted: finished results kept", "yellow")))
    for k, v in rows:
        table.add_row(k, v)
    return table


# -- evolve run: live view, status -------------------------------------------------------------

def _pts(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:+.1f}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


_VERDICT_STYLE = {"accepted": "green", "rejected": "red", "refused": "yellow", "failed": "magenta",
                  "running": "cyan", "pending": "bold dark_orange"}


def generations_table(gens, title: str = "generations") -> Table:
    """One row per generation: parent, hypothesis, score with interval, delta, verdict, the candidate's
    tasks with integrity flags (and its new tampering, which rejects it), cost, time. A generation that
    made K > 1 candidates (``search.candidates``) is followed by one row per candidate (``cJ``): its
    category and hypothesis, score, delta, verdict in the race (``stone``: a kept stepping stone)."""
    table = Table(title=title, title_justify="left", expand=False)
    for col, just in (("gen", "right"), ("parent", "left"), ("hypothesis", "left"), ("score", "right"),
                      ("delta [CI] pts", "right"), ("verdict", "left"), ("flagged", "right"), ("cost $", "right"),
                      ("time", "right")):
        table.add_column(col, justify=just, overflow="fold")
    for g in gens:
        ci = "" if g.ci_low is None else f" [{_pts(g.ci_low)}, {_pts(g.ci_high)}]"
        score = "-" if g.child_rate is None else f"{_pct(g.parent_rate)} -> {_pct(g.child_rate)}"
        flagged = Text("-" if g.flagged_tasks is None else str(g.flagged_tasks))
        if g.tampering:
            flagged = Text(f"{g.flagged_tasks}, {len(g.tampering)} tampering", "red bold")
        table.add_row(str(g.gen), Text(g.parent[:8]), Text((g.hypothesis or g.reason or "")[:90]), score,
                      f"{_pts(g.delta)}{ci}", Text(g.status + (" (from pending)" if g.explore_from == "pending" else ""),
                                                   _VERDICT_STYLE.get(g.status, "")), flagged,
                      f"{g.cost_usd:.4f}", f"{g.seconds / 60:.1f}m")
        for c in g.candidates:
            what = f"[{c.category}] {c.hypothesis or c.reason}" if c.category else (c.hypothesis or c.reason)
            verdict = Text(f"c{c.cand} {c.status}", _VERDICT_STYLE.get(c.status, ""))
            if c.stone and c.status == "rejected":
                verdict.append(" stone", "cyan")
            if c.cand == g.cand:
                verdict.append(" (the generation's)", "dim")
            table.add_row(f"  c{c.cand}", "", Text(what[:90], "dim"),
                          "-" if c.child_rate is None else f"-> {_pct(c.child_rate)}", _pts(c.delta), verdict,
                          Text(f"{len(c.tampering)} tampering", "red bold") if c.tampering else Text(""), "", "")
    return table


def lineage_tree(nodes, best_commit: str, on_path: set, title: str = "archive") -> Tree:
    """The archive (``evolve.search.archive.Node`` list) as a tree from the base: one line per node with
    its generation, verdict, estimated search rate, delta against what it was compared with, and
    hypothesis. ``on_path`` (``archive.accepted_path``: the nodes from the base to the accepted head,
    a lost candidate among them when the path goes through it) is marked ``*`` in bold; the accepted
    head says so; stepping stones are marked ``stone``."""
    tree = Tree(Text(title, "bold"))
    from evolve.search.archive import key, name, parent_ref, ref

    kids: dict[tuple | None, list] = {}
    for n in nodes:
        kids.setdefault(parent_ref(n), []).append(n)

    def label(n) -> Text:
        on = ref(n) in on_path
        mark = "* " if on else "  "
        text = Text(f"{mark}{name(n)} ", "bold" if on else "")
        text.append(n.status, _VERDICT_STYLE.get(n.status, "green" if n.status == "base" else ""))
        if n.stone and n.status != "accepted" and n.status != "base":
            text.append(" stone", "cyan")
        text.append(f"  {_pct(n.rate)}")
        if n.delta is not None:
            text.append(f" ({_pts(n.delta)} pts)")
        if n.commit and n.commit == best_commit:
            text.append("  <- accepted head", "green bold")
        if n.hypothesis:
            text.append(f"  {n.hypothesis[:70]}", "dim")
        return text

    def grow(branch: Tree, parent: tuple | None, seen: set[tuple]) -> None:
        for n in kids.get(parent, []):
            if key(n) in seen:
                continue
            seen.add(key(n))
            node = branch.add(label(n))
            grow(node, ref(n), seen)  # a lost candidate may be a parent too (search.parent: dgm)

    seen: set[tuple] = set()
    grow(tree, None, seen)
    for n in nodes:  # a node whose parent is not in the archive (a record rebuilt from git)
        if key(n) not in seen:
            seen.add(key(n))
            node = tree.add(label(n))
            grow(node, ref(n), seen)
    return tree


def transfer_table(holdout: dict) -> Table:
    """Each accepted generation's search delta beside its holdout delta (``RunState.holdout["each"]``,
    written by ``evolve holdout --each`` and at the end of a run)."""
    table = Table(title=f"transfer: each accepted change on the sealed holdout split ({holdout.get('n')} tasks)",
                  title_justify="left")
    for col in ("gen", "commit", "search delta pts", "holdout delta pts", "holdout rate"):
        table.add_column(col, justify="left" if col == "commit" else "right")
    for row in holdout.get("each", []):
        table.add_row(str(row["gen"]), row["commit"][:10], _pts(row.get("search_delta")), _pts(row.get("delta")),
                      f"{_pct(row.get('against_rate'))} -> {_pct(row.get('rate'))}")
    return table


def run_summary(state, budget_usd: float | None = None) -> Table:
    """A run at a glance from its ``runstate.RunState``: status, eval set, baseline and accepted search
    scores, the accepted head, generations, USD spent (against ``budget_usd`` when given) and the
    held-out check once it has run."""
    table = Table(show_header=False, title=Text(f"run {state.run_id}"), title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    spend = f"${state.spent_usd:.4f}" + (f" of ${budget_usd:.2f}" if budget_usd is not None else "")
    rows = [("status", f"{state.status}" + (f" ({state.stop_reason})" if state.stop_reason else "")),
            ("eval set", state.evalset), ("harness", f"{state.harness_dir}/"),
            ("baseline (search)", _pct(state.baseline_rate)), ("accepted (search)", _pct(state.best_rate)),
            ("accepted head", f"evolve/{state.run_id}/best = {state.best[:10]}"),
            ("generations", str(state.generations)), ("spent", spend)]
    if state.holdout:
        h = state.holdout
        rows.append(("held-out check", f"baseline {_pct(h.get('baseline'))} vs best {_pct(h.get('best'))} "
                                       f"on {h.get('n')} tasks"))
    for k, v in rows:
        table.add_row(k, Text(v))
    return table


class _LiveEvalProgress:
    """Adapter: an evaluation's progress as one task line of the live view's Progress."""

    def __init__(self, live: "RunLiveView", label: str, total: int) -> None:
        self.live = live
        self.resolved = self.running = 0
        self.task_id = live.progress.add_task(label, total=total, info="")
        live._keep_latest()

    def _info(self) -> None:
        self.live.progress.update(self.task_id, info=f"{self.resolved} resolved, {self.running} running")

    def started(self, instance_id: str, repeat: int) -> None:
        self.running += 1
        self._info()

    def finished(self, result: TaskResult, cached: bool) -> None:
        if not cached:
            self.running -= 1
        self.resolved += result.resolved
        self.live.spent_live += result.usage.cost_usd if not cached else 0.0
        self._info()
        self.live.progress.advance(self.task_id)
        self.live.refresh()


class _LiveRound:
    """One race round (``RunLiveView.eval_round``): its evaluations, run at once, as one line of the
    live view's Progress: a single bar over all their task-runs, and after it each evaluation's
    done/total and resolved, in the order the round asked them."""

    def __init__(self, live: "RunLiveView", parts: list[tuple[str, int]]) -> None:
        self.live, self._lock = live, threading.Lock()
        labels = [label for label, _ in parts]
        split = [x.split("-") for x in labels]  # gNNN-<who>-rR: the generation and repeat once, in the title

        def shared(i: int) -> str:
            return split[0][i] if all(len(p) >= 3 and p[i] == split[0][i] for p in split) else ""

        gen, rep = shared(0), shared(-1)
        live.rounds[gen] = live.rounds.get(gen, 0) + 1
        self.names = {x: "-".join(p[1 if gen else 0:-1 if rep else None]) for x, p in zip(labels, split)}
        self.counts = {label: [0, total, 0] for label, total in parts}  # done, total, resolved
        self.running = 0
        title = f"{gen} race round {live.rounds[gen]}".lstrip() + (f" ({rep})" if rep else "")
        self.task_id = live.progress.add_task(title, total=sum(total for _, total in parts), info="")
        live._keep_latest()
        self._info()

    def _info(self) -> None:
        with self._lock:
            each = [f"{self.names[label]} {done}/{total} ({resolved} resolved)"
                    for label, (done, total, resolved) in self.counts.items()]
            info = "  ".join(each) + f"  {self.running} running"
        self.live.progress.update(self.task_id, info=info)

    def part(self, label: str) -> "_RoundPart":
        return _RoundPart(self, label)


class _RoundPart:
    """One evaluation of a round (``evolve.evaluate.EvalProgress``), counted into the round's line."""

    def __init__(self, round_: _LiveRound, label: str) -> None:
        self.round, self.label = round_, label

    def started(self, instance_id: str, repeat: int) -> None:
        with self.round._lock:
            self.round.running += 1
        self.round._info()

    def finished(self, result: TaskResult, cached: bool) -> None:
        r = self.round
        with r._lock:
            r.running -= 0 if cached else 1
            counts = r.counts[self.label]
            counts[0] += 1
            counts[2] += bool(result.resolved)
            r.live.spent_live += 0.0 if cached else result.usage.cost_usd
        r._info()
        r.live.progress.advance(r.task_id)
        r.live.refresh()


class RunLiveView:
    """The live view of ``evolve run``: generation and step, evaluation progress,
    accepted score, spend against budget, the last verdicts. Implements ``evolve.loop.RunView``."""

    def __init__(self, console: Console, budget_usd: float | None, generations: int | None,
                 after_verdict=None) -> None:
        """``after_verdict(state, rec)``, when given, is called after each verdict is shown (``evolve run``
        refreshes the HTML report there)."""
        from rich.live import Live

        self.console, self.budget, self.limit = console, budget_usd, generations
        self.after_verdict = after_verdict
        self.header = Text("starting")
        self.spent_live = 0.0
        self.verdicts: list = []
        self.progress = Progress(TextColumn("{task.description}", markup=False), BarColumn(),
                                 TextColumn("{task.completed}/{task.total}"),
                                 TextColumn("{task.fields[info]}", markup=False),
                                 TimeElapsedColumn(), console=console)
        self.live = Live(self._render(), console=console, refresh_per_second=4, transient=False)
        self.round: _LiveRound | None = None
        self.rounds: dict[str, int] = {}
        """Race rounds shown so far, by generation (``g001``)."""

    def __enter__(self) -> "RunLiveView":
        self.live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.update(self._render())
        self.live.stop()

    def _render(self):
        from rich.console import Group

        parts = [self.header, self.progress]
        if self.verdicts:
            parts.append(generations_table(self.verdicts[-5:], title="last verdicts"))
        return Group(*parts)

    def refresh(self) -> None:
        """Redraw the screen now."""
        self.live.update(self._render())

    def step(self, state, gen: int, step: str) -> None:
        """Generation ``gen`` starts ``step`` (off a terminal ``evolve run`` uses ``evolve.runlog.RunLogView``)."""
        spend = f"${state.spent_usd + self.spent_live:.4f}" + (f" / ${self.budget:.2f}" if self.budget else "")
        limit = f"/{self.limit}" if self.limit else ""
        self.header = Text.assemble(("evolve run ", "bold"), state.run_id, "   generation ", (f"{gen}{limit}", "bold"),
                                    "   step ", (step, "cyan bold"), "   accepted ",
                                    (_pct(state.best_rate), "green bold"), "   spent ", spend)
        self.refresh()

    def eval_progress(self, label: str, total: int):
        """A new progress line for an evaluation of ``total`` (task, repeat) jobs; the three latest lines stay
        shown. An evaluation of the race round under way (``eval_round``) is counted into its line instead."""
        current = self.round
        if current is not None and label in current.counts:
            return current.part(label)
        return _LiveEvalProgress(self, label, total)

    @contextmanager
    def eval_round(self, parts: list[tuple[str, int]]):
        """A race round: the evaluations ``parts`` (``(label, task-runs)``, e.g. ``g001-parent-r0``,
        ``g001-c1-r0``, ``g001-c2-r0``) run at once; while it lasts they share one progress line
        (``g001 race round N (r0)``, one bar, each evaluation's counts after it), not one bar each."""
        self.round = _LiveRound(self, parts)
        try:
            yield
        finally:
            self.round = None
            self.refresh()

    def _keep_latest(self, n: int = 3) -> None:
        for old in self.progress.task_ids[:-n]:
            self.progress.remove_task(old)

    def verdict(self, state, rec) -> None:
        """Generation ``rec.gen`` is decided: add it to the last verdicts."""
        self.spent_live = 0.0
        self.verdicts.append(rec.model_copy())
        self.refresh()
        if self.after_verdict is not None:
            self.after_verdict(state, rec)

    def note(self, text: str) -> None:
        """Print ``text`` above the live view, as plain text (never read as markup)."""
        self.console.print(Text(str(text)))
