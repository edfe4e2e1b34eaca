"""Task data in a candidate harness: a change that memorises the eval set instead of improving.

The failure analysis shows the optimizer the search tasks' test output, so a
candidate can carry task-specific answers ("for mini__calc-1, change `-` to
`+`"). That raises the search score without improving the harness, and only
the sealed holdout split would notice. ``task_leaks`` looks for it in the
lines a candidate adds: any task's instance_id, a line of a task's reference
``patch`` or ``test_patch``, or a line of its problem statement that no other
task shares. It is detection, not prevention: data encoded or paraphrased
passes it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from evolve.types import Task

MIN_DIFF_LINE = 20
"""Characters (stripped) a diff line needs to count as evidence; shorter ones are too common."""
MIN_STATEMENT_LINE = 40
"""Characters (stripped) a problem-statement line needs to count as evidence."""


def added_lines(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """Lines of ``after``'s files (``{path: text}``) that the same file in ``before`` does not have."""
    out: list[str] = []
    for path, text in after.items():
        old = set(before.get(path, "").splitlines())
        out += [line for line in text.splitlines() if line not in old]
    return out


def _diff_lines(diff: str) -> set[str]:
    lines = set()
    for line in diff.splitlines():
        if line[:1] in "+-" and not line.startswith(("+++", "---")):
            body = line[1:].strip()
            if len(body) >= MIN_DIFF_LINE:
                lines.add(body)
    return lines


def task_leaks(added: Iterable[str], tasks: Iterable[Task]) -> list[str]:
    """Evidence that ``added`` (lines a candidate adds to its harness) carries data of ``tasks``:
    one message per task and kind, e.g. ``"mini__calc-1: its instance_id"``; [] when none."""
    tasks = list(tasks)
    text = "\n".join(added)
    if not text.strip():
        return []
    shared = Counter(line.strip() for t in tasks for line in set(t.problem_statement.splitlines()))
    found: list[str] = []
    for t in tasks:
        if len(t.instance_id) >= 6 and t.instance_id in text:
            found.append(f"{t.instance_id}: its instance_id")
        for kind, lines in (("reference patch", _diff_lines(t.patch)), ("test_patch", _diff_lines(t.test_patch))):
            hit = next((line for line in sorted(lines) if line in text), None)
            if hit is not None:
                found.append(f"{t.instance_id}: a line of its {kind} ({hit[:60]!r})")
        unique = sorted(line.strip() for line in t.problem_statement.splitlines()
                        if len(line.strip()) >= MIN_STATEMENT_LINE and shared[line.strip()] == 1)
        hit = next((line for line in unique if line in text), None)
        if hit is not None:
            found.append(f"{t.instance_id}: a line of its problem statement ({hit[:60]!r})")
    return found
