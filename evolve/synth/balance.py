"""No kind of bug dominates a whole eval set: the share cap applied over every project's tasks.

``mutation_tasks`` already caps each operator per project (``SynthOptions.kind_cap``), but a project
that falls short of its quota, or loses tasks to the grader's check, can leave one operator over the
share in the whole set. ``cap_kind_share`` is the last word: it runs on the set's final tasks.
"""

from __future__ import annotations

from evolve.types import Task

__all__ = ["cap_kind_share", "kind_of"]


def kind_of(task: Task) -> str | None:
    """The mutation operator of a synthesized task (``synth.operator``); None for other tasks (never capped)."""
    synth = getattr(task, "synth", None) or {}
    op = synth.get("operator") if synth.get("kind") == "mutation" else None
    return str(op) if op else None


def cap_kind_share(tasks: list[Task], max_share: float) -> tuple[list[Task], list[Task]]:
    """``(kept, dropped)``: ``tasks`` without the fewest tasks needed so that no mutation operator makes
    more than ``max_share`` of the kept tasks (all tasks count in the denominator, capped or not), and
    never fewer than one task of a kind: like the per-project cap, which never goes below 1, the cap
    shapes a set and never empties it (a one-task build keeps its task).

    While a kind is over, one task of the kind furthest over is dropped: the last one, in ``tasks``'
    order, of the project (``repo_path``) holding most of that kind, so projects keep their spread.
    Deterministic; ``kept`` keeps the input order. Same rule as the per-project cap (SWE-smith
    balances its bug kinds the same way), applied to the whole set.

    Raises:
        ValueError: ``max_share`` not in (0, 1].
    """
    if not 0 < max_share <= 1:
        raise ValueError(f"max_share must be in (0, 1], got {max_share}")
    kept = list(tasks)
    dropped: list[Task] = []
    while kept:
        counts: dict[str, int] = {}
        for t in kept:
            k = kind_of(t)
            if k is not None:
                counts[k] = counts.get(k, 0) + 1
        limit = max(1.0, max_share * len(kept)) + 1e-9
        over = [(n - limit, k) for k, n in counts.items() if n > limit]
        if not over:
            break
        _, kind = max(over)
        per_project: dict[str, int] = {}
        for t in kept:
            if kind_of(t) == kind:
                per_project[t.repo_path or ""] = per_project.get(t.repo_path or "", 0) + 1
        project = max(sorted(per_project), key=lambda p: per_project[p])
        victim = next(i for i in range(len(kept) - 1, -1, -1)
                      if kind_of(kept[i]) == kind and (kept[i].repo_path or "") == project)
        dropped.append(kept.pop(victim))
    return kept, dropped
