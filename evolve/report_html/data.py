"""A run's report data, read from ``runs/<run>/`` (and git, for diffs): one JSON-ready dict.

Sources (each documented where it is written):

    state.json, generations/gNNN.json     evolve.runstate: scores, verdicts, costs, timings
    optimizer_trace.jsonl                 every optimizer call: ``ts``, ``cost_usd``
    evals/<label>-<stamp>/                one evaluation (evolve.evaluate.Evaluation):
        results.jsonl                     one TaskResult per line, ``cached`` marks reused ones
        events.jsonl                      its ``end`` event's ``ts`` times its solver spend
        tasks/<instance_id>/r<k>/         trajectory.json, trace.jsonl, test_output.txt, harness.log

Labels are the loop's (``evolve.loop``): ``baseline``, ``gNNN-parent``, ``gNNN-smoke``,
``gNNN-{parent,child}-rK``, ``holdout-{baseline,best}``. The shape returned by ``build``::

    {"run": RunState, "pending": [gen], "generations": [Card], "evals": {label: {iid: [resolved...]}},
     "cost": {"optimizer": [[ts, cumulative USD]], "solver": [[ts, cumulative USD]]},
     "heatmap": {"columns": [...], "tasks": [...], "z": [[share resolved or None]]}, "generated": iso}
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from evolve.runstate import GenerationRecord, RunState, RunStore
from evolve.store import now_iso, read_jsonl

_STAMP = re.compile(r"^(?P<label>.+?)(-\d{8}-\d{6}-[0-9a-f]{4})?$")
TASK_FILES = ("trajectory.json", "trace.jsonl", "test_output.txt", "harness.log", "model.patch")
"""A task's files that the report links (as written by ``evolve.evaluate.Evaluation``)."""


def eval_dirs(run_dir: Path) -> dict[str, list[Path]]:
    """``{label: [evaluation folders]}`` under ``run_dir/evals``, oldest first (a resumed run
    evaluates the baseline again, from the cache)."""
    out: dict[str, list[Path]] = {}
    root = run_dir / "evals"
    if not root.is_dir():
        return out
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        out.setdefault(_STAMP.match(d.name).group("label"), []).append(d)
    return out


def outcomes(dirs: list[Path]) -> dict[str, list[bool | None]]:
    """``{instance_id: [resolved, ...]}`` over the folders' results (None: infra, not scored); the
    same (task, repeat) seen in several folders counts once."""
    seen: dict[tuple[str, int], bool | None] = {}
    for d in dirs:
        for r in read_jsonl(d / "results.jsonl"):
            iid = str(r.get("instance_id", ""))
            seen[(iid, int(r.get("repeat", 0) or 0))] = None if r.get("failure_class") == "infra" \
                else bool(r.get("resolved"))
    out: dict[str, list[bool | None]] = {}
    for (iid, _), v in sorted(seen.items()):
        out.setdefault(iid, []).append(v)
    return out


def task_runs(by_label: dict[str, list[Path]], prefix: str, instance_id: str) -> list[dict]:
    """Every run of ``instance_id`` in evaluations whose label starts with ``prefix``:
    ``[{"label", "repeat", "dir", "files": [names present], "result": TaskResult dict or {}}]``."""
    out = []
    for label in sorted(by_label):
        if not label.startswith(prefix):
            continue
        for d in by_label[label]:
            tdir = d / "tasks" / instance_id
            if instance_id in ("", ".", "..") or "/" in instance_id or not tdir.is_dir():
                continue
            for rdir in sorted(tdir.glob("r*")):
                result = _read_json(rdir / "result.json")
                out.append({"label": label, "repeat": rdir.name, "dir": str(rdir),
                            "files": [n for n in TASK_FILES if (rdir / n).is_file()], "result": result})
    return out


def _read_json(path: Path) -> dict:
    try:
        obj = json.loads(path.read_text(errors="replace"))
    except (OSError, json.JSONDecodeError):
        return {}
    return obj if isinstance(obj, dict) else {}


def cost_series(run_dir: Path, by_label: dict[str, list[Path]]) -> dict[str, list[list]]:
    """Cumulative fresh spend (USD) by role over time: the optimizer's from its trace lines, the
    solver's from each evaluation's non-cached results, at that evaluation's end (or last) event."""
    opt, total = [], 0.0
    for line in read_jsonl(run_dir / "optimizer_trace.jsonl"):
        if "cost_usd" in line and line.get("ts"):
            total += float(line.get("cost_usd") or 0.0)
            opt.append([line["ts"], round(total, 6)])
    points = []
    for dirs in by_label.values():
        for d in dirs:
            usd = sum(float((r.get("usage") or {}).get("cost_usd") or 0.0)
                      for r in read_jsonl(d / "results.jsonl") if not r.get("cached"))
            stamps = [e.get("ts") for e in read_jsonl(d / "events.jsonl") if e.get("ts")]
            if stamps:
                points.append((max(stamps), usd))
    solver, total = [], 0.0
    for ts, usd in sorted(points):
        total += usd
        solver.append([ts, round(total, 6)])
    return {"optimizer": opt, "solver": solver}


def heatmap(state: RunState, gens: list[GenerationRecord], evals: dict[str, dict[str, list]]) -> dict:
    """Each search task's share of resolved runs for the baseline and every accepted (or pending)
    generation's candidate; None where the task was not evaluated (or only hit infra)."""
    columns = [("base", evals.get("baseline", {}))]
    for g in gens:
        if g.status in ("accepted", "pending"):
            merged: dict[str, list] = {}
            child = f"g{g.gen:03d}-child-r" if g.cand is None else f"g{g.gen:03d}-c{g.cand}-r"  # K > 1: its number
            for label, res in evals.items():
                if label.startswith(child):
                    for iid, vals in res.items():
                        merged.setdefault(iid, []).extend(vals)
            columns.append((f"g{g.gen:03d} {g.status}", merged))
    tasks = sorted({iid for _, res in columns for iid in res})
    z = []
    for iid in tasks:
        row = []
        for _, res in columns:
            scored = [v for v in res.get(iid, []) if v is not None]
            row.append(round(sum(scored) / len(scored), 4) if scored else None)
        z.append(row)
    return {"columns": [c for c, _ in columns], "tasks": tasks, "z": z}


def generation_diff(lineage, rec: GenerationRecord, harness_dir: str) -> str:
    """The candidate's change to the harness (empty without a candidate or a repo)."""
    if lineage is None or not rec.candidate or not rec.parent:
        return ""
    return lineage.diff(rec.parent, rec.candidate, [harness_dir])


def build(runs_dir: Path, run_id: str, repo_root: Path | None = None) -> dict:
    """The report data of run ``run_id`` in ``runs_dir``; diffs come from the git repo at
    ``repo_root`` (None: cards show no diff, and say so).

    Raises:
        ConfigError: no such run. RunFileError: its state or a record is unreadable.
    """
    from evolve.lineage import Lineage

    store = RunStore(runs_dir, run_id)
    state, gens = store.load(), store.gens()
    lineage = Lineage(repo_root, run_id, store.dir / "worktrees") if repo_root is not None else None
    by_label = eval_dirs(store.dir)
    evals = {label: outcomes(dirs) for label, dirs in by_label.items()}
    cards = []
    for g in gens:
        card = g.model_dump(mode="json")
        card["diff"] = generation_diff(lineage, g, state.harness_dir)
        card["has_repo"] = lineage is not None
        # a person's decision is a commit on top of the verdict the paired test wrote, which later
        # candidates explored from the pending one name as their parent
        card["tested_commit"] = lineage.sha(f"{g.verdict_commit}^") if lineage and g.decision and g.verdict_commit \
            else g.verdict_commit
        prefix = f"g{g.gen:03d}-"
        card["tasks"] = {iid: {"child": task_runs(by_label, prefix + "child", iid),
                               "parent": task_runs(by_label, prefix + "parent", iid)}
                         for iid in sorted(set(g.fixed) | set(g.broken))}
        cards.append(card)
    return {"run": state.model_dump(mode="json"), "generated": now_iso(),
            "pending": [g.gen for g in gens if g.status == "pending"],
            "generations": cards, "evals": evals, "cost": cost_series(store.dir, by_label),
            "heatmap": heatmap(state, gens, evals)}
