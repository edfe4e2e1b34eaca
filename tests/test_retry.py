"""The one retry policy (evolve.retry): which errors, how many attempts, how long, and the log line."""

from __future__ import annotations

import logging

import pytest

from evolve.errors import InfraError, ModelError
from evolve.retry import retrying

log = logging.getLogger("evolve.test_retry")


def run(fn, **kw):
    waits: list[float] = []
    for attempt in retrying("the thing", logger=log, sleep=waits.append, **kw):
        with attempt:
            return fn(attempt.retry_state.attempt_number), waits
    raise AssertionError("unreachable")


def test_transient_errors_are_retried_and_every_retry_is_logged(caplog):
    seen = []

    def flaky(n):
        if n < 3:
            raise InfraError("docker", f"boom {n}")
        return "ok"

    with caplog.at_level(logging.WARNING, logger="evolve.test_retry"):
        out, waits = run(flaky, retry_on=InfraError, attempts=4, base_s=0.5, max_wait_s=20,
                         on_retry=lambda n, e: seen.append((n, str(e))))
    assert out == "ok" and len(waits) == 2
    assert 0 <= waits[0] <= 0.5 and 0 <= waits[1] <= 1.0  # full jitter under a doubling bound
    assert seen == [(1, "docker: boom 1"), (2, "docker: boom 2")]
    lines = [r for r in caplog.records if r.name == "evolve.test_retry"]
    assert [r.levelno for r in lines] == [logging.WARNING] * 2
    assert lines[0].getMessage().startswith("the thing failed (attempt 1 of 4); retrying in ")
    assert lines[0].getMessage().endswith(" s: InfraError: docker: boom 1")
    assert "attempt 2 of 4" in lines[1].getMessage()


def test_the_last_error_is_raised_unchanged_after_the_attempts():
    calls = []

    def always(n):
        calls.append(n)
        raise InfraError("grader_timeout", f"slow {n}")

    with pytest.raises(InfraError, match="slow 3") as info:
        run(always, retry_on=InfraError, attempts=3)
    assert calls == [1, 2, 3] and info.value.kind == "grader_timeout"


def test_other_errors_are_raised_at_once(caplog):
    calls = []

    def fatal(n):
        calls.append(n)
        raise ModelError("bad key")

    with caplog.at_level(logging.WARNING), pytest.raises(ModelError):
        run(fatal, retry_on=InfraError, attempts=5)
    assert calls == [1] and not caplog.records


def test_a_predicate_chooses_what_is_transient_and_waits_are_capped():
    def flaky(n):
        if n < 6:
            raise OSError(429, "rate limited")
        return n

    out, waits = run(flaky, retry_on=lambda e: isinstance(e, OSError) and e.errno == 429, attempts=6,
                     base_s=1.0, max_wait_s=3.0)
    assert out == 6 and len(waits) == 5 and max(waits) <= 3.0
