"""Eval sets: task files (``format``) and named, split collections of them (``registry``).

``commands`` prints ``evolve evals list|show``. This package is low in the layering: it
imports nothing of synthesis (``evolve.synth`` makes eval sets), grading, runners or sandboxes.
"""

from evolve.evalsets.format import dump_tasks, load_task_lines, load_tasks
from evolve.evalsets.registry import (
    DEFAULT_HOLDOUT_FRACTION,
    REQUIRED_SPLITS,
    EvalSet,
    EvalSetInfo,
    EvalSetSpec,
    assign_split,
    evalset_dirs,
    list_evalsets,
    load_evalset,
)

__all__ = [
    "DEFAULT_HOLDOUT_FRACTION",
    "REQUIRED_SPLITS",
    "EvalSet",
    "EvalSetInfo",
    "EvalSetSpec",
    "assign_split",
    "dump_tasks",
    "evalset_dirs",
    "list_evalsets",
    "load_evalset",
    "load_task_lines",
    "load_tasks",
]
