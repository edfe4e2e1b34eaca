"""The run's lessons: one append-only entry per generation, never rewritten.

A lesson is appended only after its generation's record is final, and at most once
per generation (``append_once``), so a resumed run never adds a second, contradicting
entry. ``load`` keeps the last line of each generation, which lets a later line
supersede an earlier one in logs written before that rule.

The planner reads the most relevant entries: those sharing the most words
with the current failure analysis, ties broken by recency, always including
the latest few so the model knows what was just tried.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, Field

from evolve import store
from evolve.errors import RunFileError


class Lesson(BaseModel):
    """What one generation tried and how it turned out."""

    generation: int
    hypothesis: str = ""
    """The plan's hypothesis; empty when the generation failed before it had a plan."""
    change: str = ""
    """Summary of the change: the plan's files and its expected effect."""
    outcome: str
    """accepted, rejected, refused or failed."""
    reason: str = ""
    """Why: the verdict's sentence (``acceptance.Verdict.reason``) or what failed."""
    delta: float | None = None
    """Child minus parent resolve rate on the search split (0.05 = +5 points); None without a verdict."""
    fixed: list[str] = Field(default_factory=list)
    """instance_ids the child resolved more often than its parent."""
    broken: list[str] = Field(default_factory=list)
    """instance_ids it resolved less often."""


def append(path: Path, lesson: Lesson) -> None:
    """Append ``lesson`` as one JSON line (fsynced)."""
    store.append_jsonl(path, lesson.model_dump(mode="json"))


def append_once(path: Path, lesson: Lesson) -> bool:
    """Append ``lesson`` unless the log already has one for its generation; True if appended.
    A torn last line (a kill during an append) is cut off first."""
    if any(entry.generation == lesson.generation for entry in load(path, repair=True)):
        return False
    append(path, lesson)
    return True


def load(path: Path, *, repair: bool = False) -> list[Lesson]:
    """The lessons in generation order, one per generation (its last line wins).

    Lines are read by ``store.read_jsonl_lines``: a last line torn by a kill during an append is
    left out, and with ``repair`` cut off the file first (``store.end_torn_line``).

    Raises:
        EvolveError: a line other than a torn last one is not a valid lesson (``RunFileError``).
    """
    if repair:
        store.end_torn_line(path)
    what = "a valid lesson"
    fix = "Delete that line; `evolve run --resume` writes a missing generation's lesson again from its record."
    by_gen: dict[int, Lesson] = {}
    for n, obj in store.read_jsonl_lines(path, what=what, fix=fix):
        try:
            lesson = Lesson.model_validate(obj)
        except ValueError as e:  # pydantic's ValidationError is one
            raise RunFileError(f"{path}, line {n}: not {what} ({str(e).splitlines()[0][:200]}). {fix}") from None
        by_gen[lesson.generation] = lesson
    return [by_gen[g] for g in sorted(by_gen)]


def _words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z_][a-z0-9_]{3,}", text.lower())}


def relevant(lessons: list[Lesson], query: str, k: int = 8, recent: int = 3) -> list[Lesson]:
    """At most ``k`` lessons, in generation order: the ``recent`` latest plus the best word-overlap matches."""
    if len(lessons) <= k:
        return list(lessons)
    chosen = {lesson.generation for lesson in lessons[-recent:]}
    words = _words(query)
    ranked = sorted(lessons[:-recent], key=lambda l: (len(words & _words(l.hypothesis + " " + l.change + " "
                                                                         + l.reason)), l.generation),
                    reverse=True)
    chosen |= {lesson.generation for lesson in ranked[: k - len(chosen)]}
    return [lesson for lesson in lessons if lesson.generation in chosen]
