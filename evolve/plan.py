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



@dataclass(frozen=True)
class Plan:
    hypothesis: str
    files: list[str] = field(default_factory=list)
    expected_effect: str = ""
    change: str = ""


def plan(optimizer: Optimizer, *, analysis: str, files: dict[str, str], lessons: list[Lesson],
         harness_dir: str, score: float) -> Plan:
    """One change to make, from the optimizer.

    Raises:
        PlanError: no JSON plan with a hypothesis after ``FORMAT_RETRIES`` retries.
    """
    def build(scale: float) -> list[dict]:
        first = render("plan.j2", analysis=cut(analysis, int(20_000 * scale)), lessons=lessons,
                       files={p: cut(t, int(30_000 * scale)) for p, t in files.items()},
                       harness_dir=harness_dir, score=score)
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
