"""Step 3 of a generation: the optimizer edits the harness in the candidate's worktree.

Edits are SEARCH/REPLACE blocks (``evolve.edits``). Blocks that fail to match
or are refused get precise feedback and the model retries, a few times.
Edits outside the harness directory or to protected paths are never written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from evolve.digest import cut
from evolve.edits import EditFormatError, apply_edits, parse_edits
from evolve.optimizer import Optimizer
from evolve.plan import Plan
from evolve.prompting import render

ROUNDS = 3
"""Optimizer replies per patch step: the first plus retries after feedback."""


@dataclass
class PatchOutcome:
    """What the patch step did to the worktree, over all its rounds.

    The loop fails the generation when ``changed_files`` is empty: as ``refused`` when
    blocks were refused, else as ``failed`` with the last ``feedback``.
    """

    changed_files: list[str] = field(default_factory=list)
    """Repo-relative posix paths whose content changed, each once, in order of first edit."""
    refused: list[str] = field(default_factory=list)
    """Reasons for refused blocks (protected paths, outside the harness)."""
    feedback: list[str] = field(default_factory=list)
    """The message sent back to the optimizer after each round that did not apply cleanly."""


def patch(optimizer: Optimizer, plan: Plan, *, worktree: Path, harness_dir: str, files: dict[str, str],
          protected: list[str]) -> PatchOutcome:
    """Apply the optimizer's edits for ``plan`` in ``worktree``: at most ``ROUNDS`` replies, each
    failed or refused block answered with ``evolve.edits``' feedback.

    Args:
        worktree: the candidate's git worktree; only files under ``harness_dir`` in it are written.
        harness_dir: the harness directory, relative to the worktree.
        files: the harness's files shown to the optimizer (path relative to ``harness_dir``: text).
        protected: repo-relative globs never written (``ProjectConfig.protected_paths``).

    A bad reply never raises: it ends up in ``PatchOutcome.feedback``. Errors of the model call
    itself propagate as from ``Optimizer.ask_fitting``.
    """
    def build(scale: float) -> list[dict]:
        first = render("patch.j2", plan=plan, harness_dir=harness_dir, protected_paths=protected,
                       files={p: cut(t, int(30_000 * scale)) for p, t in files.items()})
        return [{"role": "user", "content": first}, *messages]

    messages: list[dict] = []
    outcome = PatchOutcome()
    for _ in range(ROUNDS):
        reply = optimizer.ask_fitting("patch", build)
        try:
            blocks = parse_edits(reply)
            if not blocks:
                raise EditFormatError("no SEARCH/REPLACE block found in your reply")
        except EditFormatError as e:
            feedback = f"Your edits could not be read: {e}. Send them again in the SEARCH/REPLACE format."
        else:
            report = apply_edits(worktree, harness_dir, blocks, protected)
            outcome.changed_files += [f for f in report.changed_files if f not in outcome.changed_files]
            outcome.refused += [reason for _, reason in report.refused]
            if not report.failed and not report.refused:
                return outcome
            feedback = report.feedback()
        outcome.feedback.append(feedback)
        messages += [{"role": "assistant", "content": reply}, {"role": "user", "content": feedback}]
    return outcome
