"""Step 2 of a generation: the optimizer proposes one change.

It sees the failure analysis, the harness code and the most relevant lessons
(what earlier generations tried and how it turned out), and answers with a
hypothesis, the files it will touch and the effect it expects.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from evolve.digest import cut
from evolve.errors import PlanError
from evolve.lessons import Lesson
from evolve.optimizer import Optimizer
from evolve.prompting import render
from evolve.replies import json_block

FORMAT_RETRIES = 1
"""Extra asks after a reply without a usable JSON plan."""


@dataclass(frozen=True)
class Plan:
    """The one change the optimizer proposes, read from its JSON reply (the shape ``plan.j2`` asks for)."""

    hypothesis: str
    """Why the change should resolve more tasks; never empty. Recorded in the lesson and the verdict commit."""
    files: list[str] = field(default_factory=list)
    """Files the optimizer means to touch, relative to the harness directory (as the model wrote them)."""
    expected_effect: str = ""
    """Which tasks or failure categories should improve."""
    change: str = ""
    """Precisely what to change: the instruction the patch step follows."""


def plan(optimizer: Optimizer, *, analysis: str, files: dict[str, str], lessons: list[Lesson],
         harness_dir: str, score: float, aim: dict | None = None) -> Plan:
    """One change to make, from the optimizer.

    Args:
        analysis: the failure analysis text (``analyze.Analysis.text``), cut to fit.
        files: the harness's files (path relative to ``harness_dir``: text), each cut to fit.
        lessons: the run's relevant lessons (``lessons.relevant``).
        harness_dir: the harness directory, relative to the repository.
        score: the accepted harness's resolve rate on the search split, in [0, 1].
        aim: the failure category to aim the change at (one of ``analyze.Analysis.categories``:
            ``{"name", "description", "instance_ids"}``), when a generation makes several
            candidates; None: the prompt asks for the most important category.

    Raises:
        ContextWindowError: the prompt does not fit even when cut down (``Optimizer.ask_fitting``).
        PlanError: no JSON plan with a hypothesis after ``FORMAT_RETRIES`` retries.
    """
    def build(scale: float) -> list[dict]:
        first = render("plan.j2", analysis=cut(analysis, int(20_000 * scale)), lessons=lessons,
                       files={p: cut(t, int(30_000 * scale)) for p, t in files.items()},
                       harness_dir=harness_dir, score=score, aim=aim)
        return [{"role": "user", "content": first}, *retries]

    retries: list[dict] = []
    for attempt in range(FORMAT_RETRIES + 1):
        reply = optimizer.ask_fitting("plan", build)
        data = json_block(reply)
        if isinstance(data, dict) and str(data.get("hypothesis", "")).strip():
            listed = data.get("files") or []
            return Plan(hypothesis=str(data["hypothesis"]).strip(),
                        files=[str(f) for f in listed] if isinstance(listed, list) else [str(listed)],
                        expected_effect=str(data.get("expected_effect", "")),
                        change=str(data.get("change", "")))
        retries += [{"role": "assistant", "content": reply},
                    {"role": "user", "content": "Your answer had no JSON object with a non-empty \"hypothesis\". "
                                                 "Answer again with one ```json block holding hypothesis, files, "
                                                 "expected_effect and change."}]
    raise PlanError("the optimizer gave no usable plan (no JSON object with a hypothesis)")
