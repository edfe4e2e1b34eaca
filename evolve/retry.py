"""The one retry policy: transient failures are retried with jittered exponential backoff, each retry logged.

The rule, for every retry in evolve:

* **which errors**: only those the caller names as transient. A model call
  retries what the OpenAI Python client retries (HTTP 408, 409, 429, 5xx,
  timeouts and connection errors; ``evolve.models``); an evaluation phase
  retries ``InfraError`` (Docker, grader timeout, gateway; ``evolve.evaluate``).
  Anything else (bad credentials, an invalid request, a bug) is raised at once.
* **attempts**: a fixed number in total, first try included (model calls
  ``LiteLLMBackend.retries + 1``, default 5; evaluation phases
  ``evolve.evaluate.MAX_ATTEMPTS``, 3). Then the last error is raised as is.
* **wait**: exponential backoff with full jitter: before retry *n* a random
  wait in ``[0, min(max_wait_s, base_s * 2 ** (n - 1))]`` seconds (tenacity's
  ``wait_random_exponential``). The OpenAI client starts at the same 0.5 s and
  doubles, but keeps 75-100 % of each wait; full jitter spreads out workers
  that hit the same rate limit at once (AWS Architecture Blog, "Exponential
  Backoff And Jitter", 2015).
* **logged**: every retry, on the caller's logger at WARNING, with the attempt
  that failed, the attempts allowed, the wait and the reason. ``on_retry`` lets
  a caller also record it (``evolve.evaluate`` writes an ``infra_retry`` event).

Use::

    for attempt in retrying("model 'x' call", retry_on=is_transient, attempts=5, logger=log):
        with attempt:
            return call()
"""

from __future__ import annotations

import logging
import time
from typing import Callable

from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

BASE_WAIT_S = 0.5
"""Upper bound of the first wait, doubled for each further retry (the OpenAI client's initial delay)."""

ErrorTest = Callable[[BaseException], bool]


def retrying(what: str, *, retry_on: ErrorTest | type[BaseException] | tuple[type[BaseException], ...],
             attempts: int, logger: logging.Logger, base_s: float = BASE_WAIT_S, max_wait_s: float = 20.0,
             on_retry: Callable[[int, BaseException], None] | None = None,
             sleep: Callable[[float], object] = time.sleep) -> Retrying:
    """A tenacity ``Retrying`` that follows the rule of this module.

    Args:
        what: what is tried, for the log line (``"model 'openai/x' call"``).
        retry_on: the transient errors: a predicate, an exception type or a tuple of them.
        attempts: tries in total, the first included (at least 1).
        logger: where each retry is logged (the caller's module logger).
        base_s: upper bound of the first wait in seconds; doubled for each further retry.
        max_wait_s: cap of any one wait's upper bound.
        on_retry: called with (the attempt that failed, its error) before each wait.
        sleep: how to wait (e.g. an ``Event.wait``, so that a stop request cuts the wait short).

    The last error is re-raised unchanged when the attempts are used up.
    """
    if isinstance(retry_on, (type, tuple)):
        types = retry_on

        def retry_on(e: BaseException) -> bool:
            return isinstance(e, types)

    total = max(1, int(attempts))

    def before_sleep(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        reason = f"{type(error).__name__}: {error}" if error is not None else "no error"
        if len(reason) > 500:
            reason = reason[:500] + "..."
        logger.warning("%s failed (attempt %d of %d); retrying in %.1f s: %s",
                       what, state.attempt_number, total, wait, reason)
        if on_retry is not None and error is not None:
            on_retry(state.attempt_number, error)

    return Retrying(
        retry=retry_if_exception(retry_on),
        stop=stop_after_attempt(total),
        wait=wait_random_exponential(multiplier=base_s, max=max_wait_s),
        before_sleep=before_sleep,
        sleep=sleep,
        reraise=True,
    )


__all__ = ["BASE_WAIT_S", "retrying"]
