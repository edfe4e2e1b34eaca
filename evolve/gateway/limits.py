"""Per-task accounting and the limit rule (``evolve.config.Limits``), all under one lock.

- ``admit``: every request but the free GETs is numbered (``seq``, from 1, in arrival order) and, before
  its body is read, counted toward ``max_calls`` or refused: 403 ``limit_exceeded`` once calls reach
  ``max_calls``, prompt plus completion tokens reach ``max_tokens`` or USD reach ``max_cost_usd``; 503
  ``gateway_closed`` after ``close``. A refusal counts in ``errors``, not in ``calls``.
- ``begin_call`` / ``charge`` / ``end_call``: a model call in flight; its tokens and USD are added when it
  ends, so calls in flight can overshoot the token and USD limits; the request limit is exact.
- ``infra_errors`` (upstream failures that persisted, gateway faults) make the task infra; ``fatal``
  (bad key, unknown model: the first one) stops the evaluation.
"""

from __future__ import annotations

import threading

from evolve.config import Limits
from evolve.errors import ModelError
from evolve.gateway.wire import HTTPError
from evolve.types import Usage

_CLOSED = "the task is over: the gateway has shut down"


class Ledger:
    """One task's counts and the limit rule; every method is thread-safe."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._inflight = 0
        self._seq = 0
        self._calls = 0
        self._prompt_tokens = 0
        self._completion_tokens = 0
        self._cost_usd = 0.0
        self._errors = 0
        self._infra_errors: list[str] = []
        self._fatal: ModelError | None = None
        self._refused_connections = 0
        self._closed = False

    # -- state ----------------------------------------------------------------------------

    def close(self) -> bool:
        """Refuse every request from now on; False if already closed."""
        with self._lock:
            if self._closed:
                return False
            self._closed = True
            return True

    @property
    def closed(self) -> bool:
        return self._closed

    def usage(self) -> Usage:
        with self._lock:
            return Usage(calls=self._calls, prompt_tokens=self._prompt_tokens,
                         completion_tokens=self._completion_tokens, cost_usd=self._cost_usd,
                         errors=self._errors)

    @property
    def refused_connections(self) -> int:
        with self._lock:
            return self._refused_connections

    @property
    def infra_errors(self) -> list[str]:
        with self._lock:
            return list(self._infra_errors)

    @property
    def fatal(self) -> ModelError | None:
        with self._lock:
            return self._fatal

    # -- the rule -------------------------------------------------------------------------

    def _limit_reason(self) -> str | None:
        """Why no further request may be made, or None. Caller holds ``self._lock``."""
        lim = self.limits
        if self._calls >= lim.max_calls:
            return (f"call limit reached: {self._calls} of {lim.max_calls} calls used for this task (every "
                    "request counts, valid or not); stop and submit what you have")
        tokens = self._prompt_tokens + self._completion_tokens
        if tokens >= lim.max_tokens:
            return (f"token limit reached: {tokens} of {lim.max_tokens} tokens (prompt plus completion) "
                    "used for this task; stop and submit what you have")
        if self._cost_usd >= lim.max_cost_usd:
            return (f"cost limit reached: {self._cost_usd:.4f} of {lim.max_cost_usd:.4f} USD used for this "
                    "task; stop and submit what you have")
        return None

    def admit(self) -> tuple[int, HTTPError | None]:
        """Number one arriving request and count it toward the limits, before its body is read.

        Returns ``(call number, None)`` for a counted request, or ``(call number, refusal)``
        (403 ``limit_exceeded``, 503 ``gateway_closed``) for one to answer at once without
        counting it; a refusal counts in ``errors``.
        """
        with self._lock:
            self._seq += 1
            seq = self._seq
            refusal = None
            if self._closed:
                refusal = HTTPError(503, "gateway_closed", _CLOSED)
            else:
                reason = self._limit_reason()
                if reason is not None:
                    refusal = HTTPError(403, "limit_exceeded", reason)
            if refusal is None:
                self._calls += 1
            else:
                self._errors += 1
        return seq, refusal

    # -- calls and errors -----------------------------------------------------------------

    def begin_call(self) -> None:
        """A model call starts. Raises HTTPError 503 (closed) or 502 ``model_error`` (a fatal error)."""
        with self._lock:
            if self._closed:
                raise HTTPError(503, "gateway_closed", _CLOSED)
            if self._fatal is not None:
                raise HTTPError(502, "model_error", str(self._fatal))
            self._inflight += 1

    def charge(self, prompt_tokens: int, completion_tokens: int, cost_usd: float) -> dict:
        """Add a finished call's usage; returns the answer's ``"evolve"`` totals (USD, requests)."""
        with self._lock:
            self._prompt_tokens += prompt_tokens
            self._completion_tokens += completion_tokens
            self._cost_usd += cost_usd
            return {"cost_usd": cost_usd, "total_cost_usd": self._cost_usd, "calls": self._calls,
                    "remaining_calls": max(0, self.limits.max_calls - self._calls)}

    def end_call(self) -> None:
        with self._idle:
            self._inflight -= 1
            self._idle.notify_all()

    def wait_idle(self, timeout_s: float) -> None:
        """Wait at most ``timeout_s`` seconds for the calls in flight to end."""
        with self._idle:
            self._idle.wait_for(lambda: self._inflight == 0, timeout=max(0.0, timeout_s))

    def count_error(self) -> None:
        with self._lock:
            self._errors += 1

    def infra(self, text: str) -> None:
        """Record an infrastructure error (``"upstream: ..."``, ``"gateway: ..."``)."""
        with self._lock:
            self._infra_errors.append(text)

    def set_fatal(self, error: ModelError) -> None:
        with self._lock:
            if self._fatal is None:
                self._fatal = error

    def connection_refused(self) -> None:
        with self._lock:
            self._refused_connections += 1
