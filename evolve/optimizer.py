"""The optimizer model: analysis, planning and patching calls, each traced and cached.

Every call is appended to the run's ``optimizer_trace.jsonl`` in the same
shape the gateway writes for solver calls (request, response, tokens, cost,
latency), by ``evolve.roles.RoleClient``. Replies are cached per run by a hash of (model, request), so a
resumed run replays the same generation instead of paying for it twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Callable

from evolve import store
from evolve.errors import ContextWindowError
from evolve.models import ModelBackend
from evolve.types import Usage


class Optimizer:
    """Ask the optimizer model; read ``usage`` for what fresh calls cost.

    Calls go through ``evolve.roles.RoleClient`` (retries, fail-fast errors,
    prices and trace lines shared with the gateway); this adds the per-run reply cache.
    Thread-safe (a generation of K candidates asks from K threads): usage is counted under the
    client's lock, each trace line is numbered and appended under the trace file's lock, and a
    cache entry is written atomically (a temporary file, then a rename).

    Args:
        backend: a model backend (``evolve.models.backend_for``).
        trace_path: JSONL file every call is appended to.
        cache_dir: per-run reply cache.
        params: request parameters (temperature, max_tokens...); the backend's own win.
    """

    def __init__(self, backend: ModelBackend, trace_path: Path, cache_dir: Path, params: dict | None = None) -> None:
        from evolve.roles import ResolvedRole, RoleClient

        self.client = RoleClient(ResolvedRole("optimizer", backend.model), trace_path=trace_path, backend=backend)
        self.cache_dir = cache_dir
        self.params = dict(params or {})
        self.trace_path = Path(trace_path)
        self._agent_usage = Usage()
        self._agent_lock = threading.Lock()

    @property
    def usage(self) -> Usage:
        """Calls, tokens and USD of fresh (uncached) calls so far, the patch agent's included (``charge``)."""
        with self._agent_lock:
            return self.client.usage.add(self._agent_usage)

    def charge(self, usage: Usage, trace: Path, step: str) -> None:
        """Count calls made on the optimizer's behalf through a gateway (the patch agent's,
        ``evolve.patch_agent``): ``usage`` joins ``usage``, and each line of the gateway's ``trace``
        is appended to this optimizer's trace, numbered on, with ``"step": step``, ``"agent_call"`` (its
        number in ``trace``) and ``"agent_trace"`` (``trace``'s path relative to this trace's folder),
        without its ``request`` and ``response`` bodies: those stay in ``trace`` alone (capped by the
        gateway's ``limits.max_trace_bytes``), so the optimizer's trace grows by a summary per call.

        Raises:
            OSError: the traces cannot be read or written.
        """
        from evolve.gateway import append_trace
        from evolve.roles import _next_call, _trace_lock

        with self._agent_lock:
            self._agent_usage = self._agent_usage.add(usage)
        if not trace.exists():
            return
        where = os.path.relpath(trace, self.trace_path.parent)
        with open(trace, encoding="utf-8", errors="replace") as lines:
            for line in lines:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    record = {"unreadable_line": line[:1000]}
                if not isinstance(record, dict):
                    record = {"value": record}
                with _trace_lock(self.trace_path):  # numbered and appended in the file's order
                    append_trace(self.trace_path, {**{k: v for k, v in record.items()
                                                      if k not in ("request", "response")},
                                                   "call": _next_call(self.trace_path), "step": step,
                                                   "agent_call": record.get("call"), "agent_trace": where})

    def ask(self, step: str, messages: list[dict]) -> str:
        """The reply's text; a cached reply if this exact request was answered before in this run.

        Raises:
            ContextWindowError, RequestError, UpstreamError: from the backend, after its retries
                (``evolve.errors`` says who catches each).
            ModelError: the model cannot be called at all.
        """
        key = hashlib.sha256(json.dumps([self.client.backend.model, messages, self.params],
                                        sort_keys=True).encode()).hexdigest()
        cached = self.cache_dir / f"{key}.json"
        if cached.exists():
            return json.loads(cached.read_text())["content"]
        content, _ = self.client.complete(messages, **self.params)
        store.atomic_write_json(cached, {"step": step, "content": content})
        return content

    def ask_fitting(self, step: str, build: Callable[[float], list[dict]], *, tries: int = 4) -> str:
        """Like ``ask``, with ``build(scale)`` making the messages: when the model's
        context overflows, the prompt is rebuilt at half the scale (1, 0.5, 0.25...). This is not a
        retry of a transient failure (those are ``evolve.retry``'s, inside the backend): each try
        sends a different, smaller prompt.

        Raises:
            ContextWindowError: still too long at the smallest scale.
        """
        scale = 1.0
        for attempt in range(tries):
            try:
                return self.ask(step, build(scale))
            except ContextWindowError:
                if attempt == tries - 1:
                    raise
                scale /= 2
        raise AssertionError("unreachable")
