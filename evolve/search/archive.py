"""The archive: every harness a run evaluated, one node per candidate, append-only.

    runs/<run>/archive.jsonl      one JSON object per line: one line per generation (0 = the base),
                                  plus one per losing candidate of a generation that raced K > 1

A node is written once, when its generation is final (``evolve.recorder.Recorder.finish``,
after the record and before the lesson); a resumed run that finds it already written writes
nothing (the first line of a (gen, cand) wins; a torn last line from a kill is cut off). Other
tools (reports, dashboards) read it with ``load`` or as plain JSON lines. Schema of a line
(``Node``)::

    gen          int    generation; 0 is the run's base
    cand         int?   with ``search.candidates`` K > 1: the candidate's number 1..K in its
                        generation; null when the generation made one candidate (K = 1, the base)
    lost         bool   a candidate of a K > 1 generation that is not the generation's own node:
                        it lost the race (or another was recorded as the generation); it lives on
                        "evolve/<run>/gNNN-cJ". The generation's node (``lost`` false) is the winner,
                        or with no winner the candidate with the largest estimated gain; it lives
                        on "evolve/<run>/gNNN" like a K = 1 generation's
    commit       str?   the harness's commit: the verdict commit (same tree as the candidate), the
                        candidate when no verdict was written, the base for gen 0; null when no
                        candidate was made (a refused or failed patch)
    parent       str?   commit of the harness it was made from (null for the base)
    parent_gen   int?   that parent's generation (0 = base; null for the base)
    parent_cand  int?   the parent's candidate number when the parent is a lost candidate
                        (``gNNN-cJ``, drawn by ``search.parent: dgm``); null otherwise
    branch       str?   where the commit lives: "evolve/<run>/gNNN", "evolve/<run>/gNNN-cJ" (a lost
                        candidate) or "evolve/<run>/base"
    status       str    "base" | "accepted" | "rejected" | "refused" | "failed"
    stone        bool   a stepping stone: kept on its branch, may be a parent (``evolve.search.parents``)
    rate         float? estimated resolve rate on the search split, in [0, 1]
    delta        float? estimated gain over the harness it was compared with (0.05 = 5 points)
    p_value      float? one-sided p of "better than the harness it was compared with"
    p_worse      float? one-sided p of "worse than its parent" (decides ``stone``)
    hypothesis   str    the plan's hypothesis
    category     str    the analysis's failure category the plan aimed at ("" when none)
    outcomes     {instance_id: {"repeats": [int], "parent": [bool], "child": [bool]}}
                        the paired outcomes against its parent, every repeat (true = resolved)
    task_runs    int    task evaluations its verdict asked for (parent and child)
    cost_usd     float  optimizer plus fresh solver spend of its generation, USD
    at           str    ISO time the node was written

**Stepping stones** (as in DGM, which keeps every agent that compiles and still edits code, and
found that a greedy-only search stalls): a candidate is kept when it compiled and was evaluated
(accepted or rejected, no new tampering) and is not significantly worse than its parent: the
one-sided sign-flip p of "worse" on the same paired outcomes, ``p_worse``, is at least
``1 - confidence``. evolve is stricter than DGM (which keeps anything that compiles): a harness
that measurably broke its parent's tasks is not worth building on. ``best`` never moves for a
stone; it moves only on a paired win against the current best (``evolve.loop``).
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from evolve import store
from evolve.acceptance import TaskRecord, signflip_pvalue

ARCHIVE_FILE = "archive.jsonl"


class Node(BaseModel):
    """One evaluated harness of the archive (a line of ``archive.jsonl``; see the module docstring)."""

    gen: int
    commit: str | None
    cand: int | None = None
    lost: bool = False
    parent: str | None = None
    parent_gen: int | None = None
    parent_cand: int | None = None
    branch: str | None = None
    status: Literal["base", "accepted", "pending", "rejected", "refused", "failed"]
    stone: bool = False
    rate: float | None = None
    delta: float | None = None
    p_value: float | None = None
    p_worse: float | None = None
    hypothesis: str = ""
    category: str = ""
    outcomes: dict[str, dict] = Field(default_factory=dict)
    task_runs: int = 0
    cost_usd: float = 0.0
    at: str = Field(default_factory=store.now_iso)


def path_of(run_dir: Path) -> Path:
    return run_dir / ARCHIVE_FILE


def load(run_dir: Path) -> list[Node]:
    """The nodes of the run in ``run_dir``, by generation then candidate, a generation's own node
    first (the first line of each (gen, cand) wins; a torn last line is left out).

    Raises:
        RunFileError: a line other than a torn last one is not a node (the file was edited by hand;
            ``evolve.store.read_jsonl`` says which lines are torn).
    """
    from evolve.runstate import RunFileError

    path = path_of(run_dir)
    if not path.exists():
        return []
    fix = "Delete that line; `evolve run --resume` writes it again from the generation's record."
    nodes: dict[tuple[int, bool, int], Node] = {}
    for n, obj in store.read_jsonl_lines(path, what="an archive node", fix=fix):
        try:
            node = Node.model_validate(obj)
        except ValueError:  # pydantic's ValidationError is one
            raise RunFileError(f"{path}, line {n}: not an archive node. {fix}") from None
        nodes.setdefault(key(node), node)
    return [nodes[k] for k in sorted(nodes)]


def key(node: Node) -> tuple[int, bool, int]:
    """A node's identity in the archive: (gen, lost, cand)."""
    return node.gen, node.lost, node.cand or 0


Ref = tuple[int, "int | None"]
"""What a node is as a parent: ``(gen, None)`` for a generation's own node, ``(gen, cand)`` for a
lost candidate; a node's parent is ``(parent_gen, parent_cand)``."""


def ref(node: Node) -> Ref:
    """``node`` as a parent (``Ref``)."""
    return node.gen, node.cand if node.lost else None


def parent_ref(node: Node) -> Ref | None:
    """The ``Ref`` of the node ``node`` was made from; None for the base."""
    return None if node.parent_gen is None else (node.parent_gen, node.parent_cand)


def name(node: Node) -> str:
    """``gNNN`` for a generation's node, ``gNNN-cJ`` for a lost candidate (its branch's last part)."""
    return f"g{node.gen:03d}" + (f"-c{node.cand}" if node.lost else "")


def append_once(run_dir: Path, node: Node) -> bool:
    """Append ``node`` unless a node with its ``key`` is already written; True if appended."""
    path = path_of(run_dir)
    store.end_torn_line(path)
    if any(key(n) == key(node) for n in load(run_dir)):
        return False
    store.append_jsonl(path, json.loads(node.model_dump_json()))
    return True


def p_worse(records: list[TaskRecord]) -> float:
    """One-sided exact sign-flip p-value of "the child is worse than its parent" on the paired
    records of a verdict (the mirror image of ``evolve.acceptance.decide``'s test); 1.0 without pairs."""
    fracs = [r.diff_fraction() for r in records if r.n > 0]
    return signflip_pvalue([-Fraction(num, den) for num, den in fracs])


def is_stone(status: str, p_worse_value: float | None, alpha: float, tampering: bool) -> bool:
    """Whether a final generation is kept as a stepping stone (module docstring): evaluated,
    no new tampering, and ``p_worse >= alpha``. Accepted candidates always are."""
    if status == "accepted":
        return True
    return status == "rejected" and not tampering and p_worse_value is not None and p_worse_value >= alpha


def outcomes_of(records: list[TaskRecord]) -> dict[str, dict]:
    """``{instance_id: {"repeats", "parent", "child"}}`` of a verdict's paired records."""
    return {r.instance_id: {"repeats": list(r.repeats), "parent": list(r.parent), "child": list(r.child)}
            for r in records if r.n > 0}


def children(nodes: list[Node]) -> dict[int, int]:
    """``{gen: number of nodes made from it}``, for every generation's own node (0 when none); lost
    candidates count as children of their parent (they explored it). ``children_by_ref`` counts
    the lost candidates' children too."""
    return {g: n for (g, cand), n in children_by_ref(nodes).items() if cand is None}


def children_by_ref(nodes: list[Node]) -> dict[Ref, int]:
    """``{ref: number of nodes made from it}`` for every node, lost candidates included (0 when none)."""
    out = {ref(n): 0 for n in nodes}
    for n in nodes:
        p = parent_ref(n)
        if p is not None and p in out:
            out[p] += 1
    return out


def accepted_path(nodes: list[Node], best_commit: str) -> set[Ref]:
    """The nodes (``Ref``) on the path from the base to the node whose commit is ``best_commit``: the
    generations' own nodes, and a lost candidate the path passes through (a ``search.parent: dgm``
    parent on ``gNNN-cJ``). Empty when no node has that commit (``decided`` first, for a person's
    approval commit)."""
    by_commit = {n.commit: n for n in nodes if n.commit and not n.lost}
    by_ref = {ref(n): n for n in nodes}
    node, path = by_commit.get(best_commit), set()
    while node is not None and ref(node) not in path:
        path.add(ref(node))
        p = parent_ref(node)
        node = by_ref.get(p) if p is not None else None
    return path


def decided(nodes: list[Node], records) -> list[Node]:
    """``nodes`` with each pending generation's own node brought up to date with its record
    (``evolve.runstate.GenerationRecord``s): once a person decided it (``evolve approve``/``reject``,
    ``evolve.approval``) the node takes that verdict and its commit (the decision's verdict commit,
    where ``best`` moves on approval; an approved one is a stepping stone, as every accepted node is).
    The archive stays as written (append-only, one line per node when its generation ends); this is
    how it reads after a decision."""
    by_gen = {r.gen: r for r in records}
    out = []
    for n in nodes:
        r = by_gen.get(n.gen)
        if n.status == "pending" and not n.lost and r is not None and r.verdict_commit \
                and r.status in ("accepted", "rejected"):
            n = n.model_copy(update={"status": r.status, "commit": r.verdict_commit,
                                     "stone": n.stone or r.status == "accepted"})
        out.append(n)
    return out
