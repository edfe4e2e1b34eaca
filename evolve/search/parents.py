"""Which harness a generation starts from (``search.parent`` in evolve.yaml).

``greedy``: the accepted head, always: a hill-climb on one lineage (evolve's behaviour before
the archive, and the default).

``dgm``: DGM's parent selection ("score_child_prop"; Zhang, Hu, Lu, Lange, Clune, *Darwin Gödel
Machine: Open-Ended Evolution of Self-Improving Agents*, arXiv:2505.22954, 2025, sect. 3 and
appendix "parent selection"; their code ``DGM_outer.py``, ``choose_selfimproves``). Among the
archive's stepping stones that have not solved every task, node i with search resolve rate
alpha_i and n_i children is drawn with probability proportional to

    s_i * h_i,   s_i = 1 / (1 + exp(-lambda * (alpha_i - alpha_0))),   h_i = 1 / (1 + n_i)

(DGM: lambda = 10, alpha_0 = 0.5): good nodes are favoured, and so are nodes that have been
explored less. Where evolve differs: DGM scores a node by its own full evaluation; evolve uses
the node's paired estimate (parent's rate + the unbiased delta of its verdict), since evaluating
every stone fully again would cost what racing saves. The draw is seeded with the run id and the
generation, so a resumed run draws the same parent.

With ``search.candidates`` K > 1 the candidates that lost their generation's race (archive nodes
with ``lost``) that are stepping stones are drawn too, as in DGM, which draws among all its kept
agents: each is its own node (``archive.ref``: ``(gen, cand)``), with its own estimated rate and
its own children; a child made from one branches from ``evolve/<run>/gNNN-cJ`` and records
``parent_cand``.
"""

from __future__ import annotations

import hashlib
import math
import random

from evolve.search.archive import Node, Ref, children_by_ref, ref


def sigmoid_weight(rate: float, lam: float, midpoint: float) -> float:
    """DGM's s_i = 1 / (1 + exp(-lam * (rate - midpoint))); rate in [0, 1]."""
    return 1.0 / (1.0 + math.exp(-lam * (rate - midpoint)))


def dgm_weights(nodes: list[Node], *, lam: float = 10.0, midpoint: float = 0.5) -> dict[Ref, float]:
    """``{ref: probability}`` (``archive.ref``: ``(gen, None)`` for a generation's node, ``(gen, cand)``
    for a lost candidate) over the eligible nodes (stepping stones with a commit and a rate below 1,
    lost candidates included); empty when none is eligible."""
    kids = children_by_ref(nodes)
    eligible = [n for n in nodes if n.stone and n.commit and n.rate is not None and n.rate < 1.0]
    raw = {ref(n): sigmoid_weight(n.rate, lam, midpoint) / (1 + kids[ref(n)]) for n in eligible}
    total = sum(raw.values())
    return {g: w / total for g, w in raw.items()} if total > 0 else {}


def choose_parent(strategy: str, nodes: list[Node], *, best_gen: int, seed: str, lam: float = 10.0,
                  midpoint: float = 0.5) -> Ref:
    """The node whose harness the next candidate is made from, as ``archive.ref``: ``(gen, None)``,
    or ``(gen, cand)`` for a lost candidate (dgm only).

    Args:
        strategy: ``greedy`` or ``dgm``.
        nodes: the archive (``evolve.search.archive.load``).
        best_gen: the accepted head's generation (0 = base): greedy's answer, and dgm's when no
            node is eligible.
        seed: any string; the same seed and archive give the same parent (``"<run>/<gen>"``).

    Raises:
        ValueError: an unknown strategy.
    """
    if strategy == "greedy":
        return best_gen, None
    if strategy != "dgm":
        raise ValueError(f"unknown search.parent {strategy!r}: use greedy or dgm")
    weights = dgm_weights(nodes, lam=lam, midpoint=midpoint)
    if not weights:
        return best_gen, None
    rng = random.Random(int.from_bytes(hashlib.sha256(seed.encode()).digest()[:8], "big"))
    refs = sorted(weights, key=lambda r: (r[0], -1 if r[1] is None else r[1]))
    return rng.choices(refs, weights=[weights[r] for r in refs])[0]
