"""Data passed between evolve's modules. Everything here is plain data.

The task fields follow SWE-bench (``instance_id``, ``repo``, ``base_commit``,
``problem_statement``, ``patch``, ``test_patch``, ``FAIL_TO_PASS``,
``PASS_TO_PASS``); evolve adds ``image``, ``test_cmd`` and ``repo_path``.
"""

from __future__ import annotations

import json
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

def _json_list(value: Any) -> Any:
    # SWE-bench's Hugging Face exports store test lists as JSON-encoded strings.
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise ValueError(f"expected a list of test ids or a JSON string of one ({e.msg})") from None
    return value


class Task(BaseModel):
    """One SWE-style task. Loaded from one JSONL line.

    A task's repo snapshot is either already in its image at ``/testbed``
    (``repo_path`` is None, as in SWE-bench's images) or a local git repository
    at ``repo_path`` (relative to the eval-set file) checked out at
    ``base_commit`` and copied in without its history.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    instance_id: str = Field(min_length=1)
    repo: str
    base_commit: str
    problem_statement: str
    patch: str = ""
    """Reference fix, as a unified diff."""
    test_patch: str = ""
    """Diff that adds or changes the tests, applied before grading."""
    FAIL_TO_PASS: list[str]
    """Tests that fail before the fix and must pass after it (pytest node ids)."""
    PASS_TO_PASS: list[str] = Field(default_factory=list)
    """Tests that pass before the fix and must keep passing."""
    image: str | None = None
    """Docker image; None means the eval set's default, then evolve's base image."""
    test_cmd: str | None = None
    """Test command run in /testbed; the test files are appended. None means the
    eval set's default, then ``python3 -m pytest -rA``."""
    repo_path: str | None = None
    """Local git repository holding the snapshot, or None if it is in the image."""

    _lists = field_validator("FAIL_TO_PASS", "PASS_TO_PASS", mode="before")(_json_list)

    @field_validator("FAIL_TO_PASS")
    @classmethod
    def _nonempty(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("must name at least one test")
        return v

    def content_hash(self) -> str:
        """sha256 hex of the task's canonical JSON: changes whenever any field does."""
        import hashlib

        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()


class TestStatus(str, Enum):
    """One test's outcome, as parsed from pytest's ``-rA`` report."""

    __test__ = False  # not a pytest test class

    PASSED = "PASSED"
    FAILED = "FAILED"
    ERROR = "ERROR"
    SKIPPED = "SKIPPED"
    XFAIL = "XFAIL"
    XPASS = "XPASS"
    MISSING = "MISSING"
    """Named by the task but absent from the report: counts as not passing."""

    @property
    def passing(self) -> bool:
        """PASSED or XFAIL count as passing (as in the SWE-bench harness)."""
        return self in (TestStatus.PASSED, TestStatus.XFAIL)


class FailureClass(str, Enum):
    """Why a task ended as it did.

    Only ``infra`` is left out of the score, and only with evidence from
    outside the task (a Docker API error, the model upstream failing after
    retries, the tests timing out on the host's clock under the empty patch
    too). Everything the candidate's patch can cause is one of the others.
    """

    NONE = "none"
    """Resolved."""
    EMPTY_PATCH = "empty_patch"
    PATCH_APPLY_FAILED = "patch_apply_failed"
    PATCH_MALFORMED = "patch_malformed"
    """A file header names an absolute path or one with ``..``: never applied."""
    PATCH_TOO_LARGE = "patch_too_large"
    """The work tree's diff is over the size cap (or git could not diff it)."""
    TESTS_FAILED = "tests_failed"
    TESTS_ABORTED = "tests_aborted"
    """The test process ended without the runner's own end record: it exited 124 or 137
    itself, was killed by a signal, or called ``os._exit`` before the session ended."""
    TESTS_TIMEOUT = "tests_timeout"
    """The tests ran over the limit on the host's clock with this patch, not with the empty patch."""
    GRADING_BLOCKED = "grading_blocked"
    """A grading step (neutralising the work tree, applying the test_patch) failed because of
    what the patch did."""
    TAMPERING = "tampering"
    """The tests passed, but the patch reached into the test runner (an integrity flag of the
    ``TAMPERING_FLAGS`` kind): not resolved."""
    INFRA = "infra"


class IntegrityFlag(str, Enum):
    """A blocked or detected attempt to influence grading, recorded per task.

    Flags in ``TAMPERING_FLAGS`` make a task not resolved, and a candidate whose
    patches raise them where its parent's did not is rejected. The others record
    what grading undid; a correct fix next to them still counts.
    """

    TEST_FILES_CHANGED = "test_files_changed"
    """Test files (tests/, test_*.py, *_test.py, conftest.py) changed: restored from the base."""
    CONFIG_NEUTRALISED = "config_neutralised"
    """A non-Python file the test runner may read as configuration (any such file in /testbed's
    root or a directory above a test file) changed: restored from the base."""
    SHADOWING_MODULE = "shadowing_module"
    """A new module or package that would shadow a module importable outside /testbed (the
    standard library, the test runner, an installed package): removed."""
    PACKAGE_METADATA = "package_metadata"
    """Package metadata (``*.dist-info``, ``*.egg-info``, ``*.egg-link``) or a ``.pth`` file
    added or changed (entry points can register runner plugins): removed. Also any file of a virtual
    environment inside /testbed (a directory whose base holds ``pyvenv.cfg``, as in R2E-Gym's images):
    restored."""
    RUNNER_PATCHING = "runner_patching"
    """Non-test code reaching into the test runner, ``sys.modules``, ``builtins``, process exit or
    frame introspection (found in the patch); or, found at run time: the runner's own functions
    replaced, the test suite's files or code changed while the tests ran, a value that claims
    equality with values it was never given (decided by the patch's code, or a matcher no test
    holds), functions of the libraries the tests use replaced by the patch's code."""
    REACH_RECORDED = "reach_recorded"
    """Non-test code gained a use of a dynamic feature that legitimate fixes use too (``exec``,
    ``eval``, ``compile``, ``__import__``, ``importlib.import_module``, a ``sys.modules`` lookup,
    ``globals()``, ``atexit``, ``gc.collect``, ``sys.exit``; ``recorded_only`` in
    ``sandbox/scripts/grade_neutralise.py``): recorded, not tampering. What the code does with it
    (the runner's functions, frames, the heap, tracing) is judged while the tests run."""
    OUTCOME_FORGERY = "outcome_forgery"
    """The test output claims outcomes the out-of-band record contradicts."""
    ABSTENTION = "abstention"
    """The tests exited 124/137 or died without a host timeout, hung only with this patch, or
    a grading step failed because of the patch: an attempt to be labelled infra."""
    TRAJECTORY_MISSING = "trajectory_missing"
    """The harness wrote no ``trajectory.json``."""
    LARGE_FILES_SKIPPED = "large_files_skipped"
    """Untracked files over the size cap were left out of the ``model_patch``."""


TAMPERING_FLAGS = frozenset({IntegrityFlag.SHADOWING_MODULE, IntegrityFlag.PACKAGE_METADATA,
                             IntegrityFlag.RUNNER_PATCHING, IntegrityFlag.OUTCOME_FORGERY,
                             IntegrityFlag.ABSTENTION})
"""Flags that mean "tampering": the task is not resolved, and the loop rejects a candidate that
raises them where its parent did not."""


class Usage(BaseModel):
    """Model usage summed over one task's gateway calls."""

    calls: int = 0
    """Requests counted toward ``limits.max_calls``: every chat request, valid or not (see the
    gateway's counting rule), not only those forwarded to the model."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    errors: int = 0
    """Calls that returned an error to the harness (limits, context overflow, upstream)."""

    def add(self, other: "Usage") -> "Usage":
        """A new ``Usage`` with every field the sum of this one's and ``other``'s (neither is changed)."""
        return Usage(**{k: getattr(self, k) + getattr(other, k) for k in Usage.model_fields})


class TaskResult(BaseModel):
    """The outcome of evaluating one harness on one task, one repeat.

    Resolution rule as in the SWE-bench harness: resolved iff every
    FAIL_TO_PASS and every PASS_TO_PASS test passes.
    """

    instance_id: str
    repeat: int = 0
    key: str
    """Cache key: sha256 of (harness tree hash, task hash, model, settings, repeat)."""
    resolved: bool = False
    failure_class: FailureClass
    error: str | None = None
    """Infrastructure error message when ``failure_class`` is ``infra``."""
    FAIL_TO_PASS: dict[str, TestStatus] = Field(default_factory=dict)
    PASS_TO_PASS: dict[str, TestStatus] = Field(default_factory=dict)
    model_patch: str = ""
    harness_exit_code: int | None = None
    harness_timed_out: bool = False
    usage: Usage = Field(default_factory=Usage)
    seconds: float = 0.0
    """Wall-clock seconds for the whole task: agent run plus grading."""
    agent_seconds: float = 0.0
    """Wall-clock seconds of the agent phase's last attempt (``runner.run_agent``); 0 if it never finished."""
    grade_seconds: float = 0.0
    """Wall-clock seconds of grading (``grading.grade``); 0 when the patch was not graded."""
    attempts: int = 1
    """1 plus the number of infrastructure retries."""
    integrity_flags: list[IntegrityFlag] = Field(default_factory=list)
    """Blocked or detected attempts on the grading, each once, in a fixed order."""
    integrity_notes: list[str] = Field(default_factory=list)
    """One line per flag occurrence, naming the path or the evidence."""
    model_patch_encoding: str = "utf-8"
    """``utf-8``: ``model_patch`` is the patch's text. ``base64``: the patch is not UTF-8, and
    ``model_patch`` holds its bytes in base64 (``patch_bytes()`` decodes either)."""
    patch_bytes_total: int = 0
    """Size of the work tree's diff in bytes (also when it was too large to keep)."""
    node: str | None = None
    """The Ray node id (hex) the task-run ran on with ``--executor ray``; None with the local executor."""

    def patch_bytes(self) -> bytes:
        """The ``model_patch`` as the exact bytes ``git diff --binary`` produced."""
        if self.model_patch_encoding == "base64":
            import base64

            return base64.b64decode(self.model_patch)
        return self.model_patch.encode()

    @property
    def tampering(self) -> list[IntegrityFlag]:
        """The flags of ``TAMPERING_FLAGS`` this task raised."""
        return [f for f in self.integrity_flags if f in TAMPERING_FLAGS]

    @property
    def is_infra(self) -> bool:
        """The ``failure_class`` is ``infra``: left out of the score (``EvalReport.scored``) and never cached."""
        return self.failure_class is FailureClass.INFRA
