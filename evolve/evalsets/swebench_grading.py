"""Grading rules of tasks imported from SWE-bench, taken from the official ``swebench`` package.

A task imported by ``evolve evals import swe-bench`` carries a ``swebench`` field::

    {"log_parser": "parse_log_django", "eval_type": "pass_and_fail", "version": "3.0", "style": "swe-bench"}

For such a task the grader (``evolve.grading``) reads the test output with that log parser
(``swebench.harness.log_parsers.PARSER_REGISTRY``) instead of evolve's pytest parser, and decides
resolution with ``swebench.harness.grading.get_eval_tests_report`` and ``get_resolution_status``
(FULL only), exactly as SWE-bench's ``get_eval_report`` does on the same log. evolve's own checks stay
on top: a patch that tampers with grading is never resolved.

SWE-smith tasks (``"style": "swe-smith"``) are graded the same way: SWE-smith's report function is
swebench's FAIL_TO_PASS/PASS_TO_PASS report and its verdict ``get_resolution_status == FULL``.
R2E-Gym tasks (``{"style": "r2e-gym", "expected": {test: outcome}}``) are read with R2E-Gym's log
parser and resolved by its reward rule (``evolve.evalsets.r2egym``): the outcomes equal ``expected``.

Tasks without the field keep evolve's rule: every FAIL_TO_PASS and PASS_TO_PASS test PASSED or XFAIL.
``swebench`` is imported only when a task needs it (``pip install 'evolve[swebench]'``).
"""

from __future__ import annotations

from evolve.errors import EvalSetError
from evolve.testlog import parse_pytest_report
from evolve.types import Task, TestStatus

__all__ = ["LOG_PARSERS_HINT", "log_parser_names", "parse_log", "record_names", "swebench_fields", "tests_pass"]

LOG_PARSERS_HINT = "install the extra: pip install 'evolve[swebench]' (bash scripts/setup.sh does)"


def swebench_fields(task: Task) -> dict | None:
    """The task's ``swebench`` field (a dict), or None for a task graded by evolve's own rule."""
    value = (task.model_extra or {}).get("swebench")
    return value if isinstance(value, dict) else None


def _swebench():
    try:
        from swebench.harness import grading
        from swebench.harness.log_parsers import PARSER_REGISTRY
    except ImportError as e:
        raise EvalSetError(f"this task is graded as in SWE-bench, which needs the swebench package ({e}): "
                           + LOG_PARSERS_HINT) from None
    return grading, PARSER_REGISTRY


def log_parser_names() -> list[str]:
    """The names of swebench's log parsers (``PARSER_REGISTRY``).

    Raises:
        EvalSetError: the swebench package is not installed.
    """
    return sorted(_swebench()[1])


def _r2e(fields: dict | None) -> bool:
    return fields is not None and fields.get("style") == "r2e-gym"


def _spec(task: Task, fields: dict):
    from swebench.types import TestSpec

    return TestSpec(instance_id=task.instance_id, image=task.image or "", eval_script_list=[], repo=task.repo,
                    version=str(fields.get("version", "")), FAIL_TO_PASS=list(task.FAIL_TO_PASS),
                    PASS_TO_PASS=list(task.PASS_TO_PASS), log_parser=fields["log_parser"],
                    eval_type=fields.get("eval_type") or "pass_and_fail")


def parse_log(task: Task, output: str) -> dict[str, TestStatus]:
    """Per-test outcomes in ``output``: swebench's log parser for an imported SWE-bench task, else
    evolve's pytest ``-rA`` parser (``evolve.testlog.parse_pytest_report``).

    Raises:
        EvalSetError: the task names a log parser swebench does not have, or swebench is missing.
    """
    fields = swebench_fields(task)
    if fields is None:
        return parse_pytest_report(output)
    if _r2e(fields):
        from evolve.evalsets import r2egym

        return {test: TestStatus(status) for test, status in r2egym.parse_log(output).items()}
    _, registry = _swebench()
    parser = registry.get(fields.get("log_parser", ""))
    if parser is None:
        raise EvalSetError(f"task {task.instance_id}: swebench has no log parser {fields.get('log_parser')!r}")
    return {test: TestStatus(status) for test, status in parser(output, _spec(task, fields)).items()
            if status in TestStatus._value2member_map_}


def record_names(task: Task, report: dict[str, TestStatus]) -> dict[str, TestStatus]:
    """Outcomes from evolve's out-of-band record (pytest node ids), named as the task's log parser names
    them: for an R2E-Gym task its names (``r2egym.node_name``), keeping only PASSED, FAILED and ERROR as
    its parser does; other tasks' unchanged."""
    if not _r2e(swebench_fields(task)):
        return report
    from evolve.evalsets.r2egym import node_name

    keep = (TestStatus.PASSED, TestStatus.FAILED, TestStatus.ERROR)
    return {node_name(test): s for test, s in report.items() if s in keep}


def tests_pass(task: Task, f2p: dict[str, TestStatus], p2p: dict[str, TestStatus], *, exit_ok: bool,
               report: dict[str, TestStatus] | None = None) -> bool:
    """Whether the task's tests count as passing, before evolve's tampering checks.

    ``f2p``/``p2p`` map each FAIL_TO_PASS/PASS_TO_PASS test to its outcome (``MISSING`` when absent).
    ``exit_ok``: the test command exited 0 or some test FAILED or ERRORed; otherwise SWE-bench
    rejects the whole log (#620) and evolve too. ``report``: every test's outcome (R2E-Gym tasks).

    SWE-bench and SWE-smith task: ``get_resolution_status(get_eval_tests_report(...)) == "RESOLVED_FULL"``
    on the same outcomes (a SKIPPED PASS_TO_PASS test is kept, a SKIPPED FAIL_TO_PASS test is not resolved).
    R2E-Gym task: ``report`` equals the task's expected outcomes (``r2egym.resolved``).
    Other tasks: every test PASSED or XFAIL.
    """
    fields = swebench_fields(task)
    if fields is None:
        return all(s.passing for s in [*f2p.values(), *p2p.values()])
    if not exit_ok:
        return False
    if _r2e(fields):
        from evolve.evalsets.r2egym import resolved

        return resolved({t: s.value for t, s in (report or {}).items()}, dict(fields.get("expected") or {}))
    grading, _ = _swebench()
    from swebench.harness.constants import EvalType, ResolvedStatus

    status_map = {t: s.value for t, s in [*f2p.items(), *p2p.items()] if s is not TestStatus.MISSING}
    gold = {"FAIL_TO_PASS": list(task.FAIL_TO_PASS), "PASS_TO_PASS": list(task.PASS_TO_PASS)}
    report = grading.get_eval_tests_report(status_map, gold,
                                           eval_type=EvalType(fields.get("eval_type") or "pass_and_fail"))
    return grading.get_resolution_status(report) == ResolvedStatus.FULL.value
