"""Model backends: litellm behind one small interface.

A backend turns an OpenAI chat-completions request body into a ``Completion``
(the OpenAI response JSON plus tokens and USD cost). The gateway is its only
caller. litellm is imported lazily, on the first call, because importing it
takes seconds; ``import evolve.models`` does not import it.

Errors (all in ``evolve.errors``, re-exported here), as the gateway sees them:

* ``ContextWindowError``: the request is longer than the model's context. The
  harness gets an HTTP 400 it can handle (e.g. by trimming its history).
* ``RequestError``: the provider rejected the request itself (HTTP 400/422,
  e.g. a malformed tool schema), or it asked to stream. The harness's fault.
* ``UpstreamError``: a transient failure (429, timeout, 5xx, connection) that
  persisted after retries (``evolve.retry``). Infrastructure: never scored
  against the harness.
* ``ModelError``: bad credentials, no permission or credit, unknown model.
  Retrying cannot help; the whole evaluation must stop.

Prices: every backend knows what a call costs before its first call, so the
USD limits (``limits.max_cost_usd``, ``budget.budget_usd``) always count. A
price is either set explicitly (``input_cost_per_token`` and
``output_cost_per_token`` in the parameters; 0 is a price) or litellm's price
list has the model. Otherwise ``model_price`` raises a ``ConfigError`` naming
the setting to add, before anything is evaluated. evolve itself sets a price of
0 for what it serves: the scripted model here, local servers in
``evolve.roles.resolve_role``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

from evolve.errors import ConfigError, ContextWindowError, ModelError, RequestError, UpstreamError
from evolve.retry import retrying

log = logging.getLogger(__name__)

SCRIPTED_PREFIX = "scripted/"
"""Model strings ``scripted/<path-to-yaml>`` select the scripted model (see ``evolve.scripted``)."""

PASSTHROUGH_PARAMS = frozenset({
    "temperature", "top_p", "max_tokens", "max_completion_tokens", "stop", "seed", "n",
    "presence_penalty", "frequency_penalty", "response_format", "tools", "tool_choice",
})
"""OpenAI request parameters a harness may set; any other request key is ignored."""

PRICE_PARAMS = ("input_cost_per_token", "output_cost_per_token")
"""Backend params giving USD per token; they override litellm's price list and are not sent.
Setting either one sets the model's price; the other one is then 0 unless set too."""
FREE = {"input_cost_per_token": 0.0, "output_cost_per_token": 0.0}
"""The explicit price evolve gives the models it serves itself (scripted, local servers)."""

_TRANSIENT_NAMES = ("RateLimitError", "Timeout", "APIConnectionError", "InternalServerError",
                    "ServiceUnavailableError", "BadGatewayError")
_SECRET_HINTS = ("key", "token", "secret", "password")


@dataclass(frozen=True)
class Completion:
    """One successful model call.

    Attributes:
        response: OpenAI ``chat.completion`` JSON (id, object, created, model,
            choices, usage), JSON-serializable.
        prompt_tokens, completion_tokens: token counts reported by the provider.
        cost_usd: USD for this call, at the backend's price (``model_price``); 0.0 only for a
            model priced at 0.
    """

    response: dict
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float


class ModelBackend(Protocol):
    """What the gateway calls. ``complete`` may run concurrently from several threads."""

    model: str

    def complete(self, request: dict) -> Completion:
        """Answer one OpenAI chat request body (``messages`` plus optional parameters).

        Raises:
            ContextWindowError, RequestError, UpstreamError, evolve.errors.ModelError.
        """
        ...


_litellm_lock = threading.Lock()
_litellm_mod: Any = None


def _litellm() -> Any:
    """Import and configure litellm once (never downloads the price list)."""
    global _litellm_mod
    if _litellm_mod is None:
        with _litellm_lock:
            if _litellm_mod is None:
                os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
                import litellm

                litellm.suppress_debug_info = True
                if hasattr(litellm, "telemetry"):
                    litellm.telemetry = False
                _litellm_mod = litellm
    return _litellm_mod


def _exc_types(*names: str) -> tuple[type[BaseException], ...]:
    exceptions = _litellm().exceptions
    return tuple(t for t in (getattr(exceptions, n, None) for n in names)
                 if isinstance(t, type) and issubclass(t, BaseException))


def _status(e: BaseException) -> int | None:
    status = getattr(e, "status_code", None)
    return status if isinstance(status, int) else None


def _is_transient(e: BaseException) -> bool:
    if isinstance(e, _exc_types(*_TRANSIENT_NAMES)):
        return True
    # litellm raises a bare APIError for status codes it has no class for.
    if isinstance(e, _exc_types("APIError")) and not isinstance(e, _exc_types("BadRequestError")):
        status = _status(e)
        return status is None or status >= 500 or status in (408, 409, 425, 429)
    return False


_CONTEXT_HINTS = ("context_length_exceeded", "maximum context length", "context window",
                  "context length", "prompt is too long", "too many tokens", "reduce the length")


def _looks_like_context_overflow(e: BaseException) -> bool:
    body = getattr(e, "body", None)
    code = getattr(e, "code", None) or (body.get("code") if isinstance(body, dict) else None)
    if code == "context_length_exceeded":
        return True
    text = str(e).lower()
    return any(h in text for h in _CONTEXT_HINTS)


@dataclass(frozen=True)
class Price:
    """USD per token of one model, and where the numbers come from."""

    input_cost_per_token: float
    output_cost_per_token: float
    source: str
    """``configured price``, ``litellm price list`` or ``scripted model, free``."""

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return prompt_tokens * self.input_cost_per_token + completion_tokens * self.output_cost_per_token


def configured_price(params: dict | None) -> Price | None:
    """The price ``params`` set explicitly (``input_cost_per_token`` / ``output_cost_per_token``), or None.

    Raises:
        ConfigError: a price that is not a number, or is negative.
    """
    params = params or {}
    if all(params.get(k) is None for k in PRICE_PARAMS):
        return None
    values = []
    for k in PRICE_PARAMS:
        value = params.get(k)
        try:
            number = float(value) if value is not None else 0.0
        except (TypeError, ValueError):
            number = -1.0
        if number < 0 or number != number:
            raise ConfigError(f"model_params {k!r} must be a number of USD per token (0 or more), not {value!r}")
        values.append(number)
    return Price(values[0], values[1], "configured price")


def _unpriced_message(model: str, role: str | None) -> str:
    key = f"models.{role}" if role else "models.<role>"
    return (f"model {model!r} has no price in litellm's price list, so the USD limits (limits.max_cost_usd, "
            f"budget.budget_usd) could not count its calls. Set its price in USD per token: "
            f"{key}.input_cost_per_token and {key}.output_cost_per_token in evolve.yaml "
            f"(e.g. {key}.input_cost_per_token: 0 and {key}.output_cost_per_token: 0 for a free local model), "
            "or for `evolve eval`: --model-param input_cost_per_token=0 --model-param output_cost_per_token=0")


def model_price(model: str, params: dict | None = None, *, role: str | None = None) -> Price:
    """What one token of ``model`` costs: the price set in ``params`` if any, else litellm's price list.

    ``scripted/`` models cost 0 (``backend_for`` sets that price). litellm is
    imported only when no price is set.

    Args:
        role: ``solver`` or ``optimizer``, to name the setting in the error.

    Raises:
        ConfigError: no price is set and litellm's price list does not have the model;
            the message names the settings to add.
        ModelError: no price is set and litellm knows no provider for the model.
    """
    price = configured_price(params)
    if price is not None:
        return price
    if model.startswith(SCRIPTED_PREFIX):
        return Price(0.0, 0.0, "scripted model, free")
    params = params or {}
    litellm = _litellm()
    try:
        info = litellm.get_model_info(model, custom_llm_provider=params.get("custom_llm_provider"))
    except Exception as e:  # noqa: BLE001 - litellm raises "This model isn't mapped yet" (or others) here
        _check_provider(model, params)  # an unknown provider is a ModelError, not a missing price
        log.debug("litellm has no price for %s: %s", model, e)
        info = {}
    p_in, p_out = info.get("input_cost_per_token"), info.get("output_cost_per_token")
    if p_in is None and p_out is None:
        raise ConfigError(_unpriced_message(model, role))
    return Price(float(p_in or 0.0), float(p_out or 0.0), "litellm price list")


class LiteLLMBackend:
    """Calls a model through ``litellm.completion``, retrying transient failures.

    Args:
        model: litellm model string, e.g. ``anthropic/claude-sonnet-4-5``.
        params: extra litellm parameters (``api_base``, ``api_key``,
            ``temperature``, ``timeout`` in seconds...). They win over the same
            parameters in a request. ``input_cost_per_token`` and
            ``output_cost_per_token`` (USD per token) price the calls instead of
            litellm's price list and are not sent.
        retries: retries after the first attempt for transient failures (``evolve.retry``).
        max_wait_s: cap in seconds of one randomized exponential backoff wait.
        role: ``solver`` or ``optimizer``, to name the setting in a missing-price error.

    Raises:
        evolve.errors.ConfigError: ``params`` set ``model``, ``messages``,
            ``stream``, ``num_retries`` or ``max_retries``, which evolve controls;
            or the model has no price (see ``model_price``).
        evolve.errors.ModelError: no price is set and litellm knows no provider for the model.
    """

    def __init__(self, model: str, params: dict | None = None, *, retries: int = 4,
                 max_wait_s: float = 20.0, role: str | None = None) -> None:
        self.model = model
        params = dict(params or {})
        for k in ("model", "messages", "stream", "num_retries", "max_retries"):
            if k in params:
                raise ConfigError(f"model_params may not set {k!r}: evolve sets it itself")
        self.price = model_price(model, params, role=role)
        for k in PRICE_PARAMS:
            params.pop(k, None)
        self.params = params
        self.retries = max(0, int(retries))
        self.max_wait_s = float(max_wait_s)

    def __repr__(self) -> str:
        return f"LiteLLMBackend({self.model!r})"

    # -- public -------------------------------------------------------------

    def complete(self, request: dict) -> Completion:
        """Answer one OpenAI chat request body; the request's ``model`` is ignored.

        Transient failures are retried ``retries`` times with randomized
        exponential backoff (at most ``max_wait_s`` seconds per wait).

        Raises:
            RequestError: no ``messages``, ``stream: true``, or the provider
                rejected the request as invalid.
            ContextWindowError: the request exceeds the model's context.
            UpstreamError: transient failures persisted after retries.
            evolve.errors.ModelError: bad key, no access or credit, unknown model.
        """
        if not isinstance(request, dict):
            raise RequestError("the request body must be a JSON object")
        messages = request.get("messages")
        if not isinstance(messages, list) or not messages:
            raise RequestError("'messages' must be a non-empty list of chat messages")
        if request.get("stream"):
            raise RequestError("streaming is not supported: send 'stream': false or leave it out")
        kwargs = {k: v for k, v in request.items() if k in PASSTHROUGH_PARAMS and v is not None}
        from_request = bool(kwargs)
        kwargs.update(self.params)
        # litellm may rewrite messages in place for some providers; keep the caller's intact.
        messages = json.loads(json.dumps(messages))

        litellm = _litellm()
        try:
            resp = self._call_with_retries(litellm, messages, kwargs)
        except Exception as e:  # noqa: BLE001 - classified below, unknown ones re-raised
            mapped = self._classify(e, request_had_params=from_request)
            if mapped is e:
                raise
            raise mapped from e
        return self._completion(litellm, resp)

    # -- internals ----------------------------------------------------------

    def _call_with_retries(self, litellm: Any, messages: list, kwargs: dict) -> Any:
        for attempt in retrying(f"model {self.model!r} call", retry_on=_is_transient, attempts=self.retries + 1,
                                logger=log, max_wait_s=self.max_wait_s):
            with attempt:
                return litellm.completion(model=self.model, messages=messages, **kwargs, num_retries=0)
        raise AssertionError("unreachable")  # pragma: no cover

    def _scrub(self, text: str) -> str:
        """Remove secret parameter values (api keys) from a message sent to the harness."""
        for k, v in self.params.items():
            if isinstance(v, str) and len(v) >= 4 and any(h in k.lower() for h in _SECRET_HINTS):
                text = text.replace(v, "***")
        return text

    def _classify(self, e: BaseException, *, request_had_params: bool) -> BaseException:
        """Map a litellm exception to the errors of this module; others are returned unchanged."""
        msg = self._scrub(str(e) or type(e).__name__)
        status = _status(e)
        context, bad_request, unsupported = (_exc_types("ContextWindowExceededError"),
                                             _exc_types("BadRequestError", "UnprocessableEntityError"),
                                             _exc_types("UnsupportedParamsError"))
        if isinstance(e, context):
            return ContextWindowError(msg)
        if isinstance(e, _exc_types("AuthenticationError")) or status == 401:
            return ModelError(f"the provider rejected the credentials for model {self.model!r}: set "
                              f"{self._key_hint()} (or api_key in model_params). litellm said: {msg}")
        if isinstance(e, _exc_types("PermissionDeniedError")) or status == 403:
            return ModelError(f"the credentials for model {self.model!r} lack permission to use it: check "
                              f"{self._key_hint()} and your account's access to the model. litellm said: {msg}")
        if isinstance(e, _exc_types("PaymentRequiredError")) or status == 402:
            return ModelError(f"the provider of model {self.model!r} requires payment: check the billing "
                              f"of the account behind {self._key_hint()}. litellm said: {msg}")
        if isinstance(e, _exc_types("NotFoundError")) or status == 404:
            return ModelError(f"model {self.model!r} was not found: check the model string (litellm expects "
                              f"provider/model, e.g. anthropic/claude-sonnet-4-5) and any api_base in "
                              f"model_params. litellm said: {msg}")
        if "LLM Provider NOT provided" in msg or isinstance(e, _exc_types("ModelNotMappedError")):
            return ModelError(f"unknown model {self.model!r}: check the model string; litellm expects "
                              f"provider/model, e.g. anthropic/claude-sonnet-4-5. litellm said: {msg}")
        if unsupported and isinstance(e, unsupported) and not request_had_params:
            # Only model_params can have brought in the unsupported parameter.
            return ModelError(f"model_params hold a parameter model {self.model!r} does not support: "
                              f"remove it. litellm said: {msg}")
        if isinstance(e, bad_request) or status in (400, 413, 422):
            if status == 413 or _looks_like_context_overflow(e):
                return ContextWindowError(msg)
            return RequestError(msg)
        if _is_transient(e):
            return UpstreamError(f"model {self.model!r} failed after {self.retries + 1} attempts: {msg}")
        if isinstance(e, _exc_types("APIError", "APIResponseValidationError", "OpenAIError")):
            return UpstreamError(f"model {self.model!r} failed: {msg}")
        return e

    def _key_hint(self) -> str:
        """Environment variable(s) holding the provider's API key, as litellm knows them."""
        try:
            missing = _litellm().validate_environment(model=self.model).get("missing_keys") or []
        except Exception:  # noqa: BLE001 - only a hint
            missing = []
        keys = [k for k in missing if isinstance(k, str) and k.isupper()]
        if not keys:
            provider = self.model.split("/", 1)[0] if "/" in self.model else ""
            if provider and provider.replace("_", "").isalnum():
                keys = [f"{provider.upper()}_API_KEY"]
        return " or ".join(keys) if keys else "the provider's API key environment variable"

    def _completion(self, litellm: Any, resp: Any) -> Completion:
        raw = resp.model_dump() if hasattr(resp, "model_dump") else dict(resp)
        response = json.loads(json.dumps(raw, default=str))
        usage = response.get("usage") or {}
        pt = int(usage.get("prompt_tokens") or 0)
        ct = int(usage.get("completion_tokens") or 0)
        cost = self.price.cost(pt, ct)
        if self.price.source == "litellm price list":
            # litellm's pricing of the response also counts cached tokens and price tiers; the listed
            # price per token is the fallback.
            try:
                cost = float(litellm.completion_cost(completion_response=resp))
            except Exception as e:  # noqa: BLE001 - e.g. a response naming a dated model litellm has not mapped
                log.debug("litellm could not price a response of %s (%s); using its listed price per token",
                          self.model, e)
        return Completion(response=response, prompt_tokens=pt, completion_tokens=ct, cost_usd=cost)


def check_model(model: str, params: dict | None = None, *, role: str | None = None) -> None:
    """Fail fast, before any call: litellm must know the model's provider, and the model must have a
    price (``model_price``). A ``scripted/`` model passes (``backend_for`` checks its script).

    Args:
        role: ``solver`` or ``optimizer``, to name the setting in a missing-price error.

    Raises:
        evolve.errors.ModelError: the model string names no provider litellm knows.
        evolve.errors.ConfigError: the model has no price (the message names the setting to add).
    """
    if model.startswith(SCRIPTED_PREFIX):
        return
    _check_provider(model, params)
    model_price(model, params, role=role)


def _check_provider(model: str, params: dict | None) -> None:
    params = params or {}
    litellm = _litellm()
    try:
        litellm.get_llm_provider(model=model, custom_llm_provider=params.get("custom_llm_provider"),
                                 api_base=params.get("api_base"))
    except Exception as e:  # noqa: BLE001 - litellm raises BadRequestError (or others) here
        raise ModelError(f"unknown model {model!r}: check the model string; litellm expects provider/model, "
                         f"e.g. anthropic/claude-sonnet-4-5. litellm said: {e}") from None


def backend_for(model: str, params: dict | None = None, *,
                role: str | None = None) -> tuple[ModelBackend, Callable[[], None]]:
    """A backend for a litellm model string, and a cleanup function to call when done.

    ``scripted/<path-to-yaml>`` starts a ``ScriptedServer`` on 127.0.0.1 and
    returns a litellm backend pointed at it, so scripted replies take the same
    litellm and HTTP path as a hosted model; cleanup stops the server. Its price
    is 0, set explicitly (``FREE``) unless ``params`` set one. For any other
    model cleanup does nothing.

    Args:
        role: ``solver`` or ``optimizer``, to name the setting in a missing-price error.

    Raises:
        evolve.errors.ConfigError: a scripted model's script is missing or invalid; or the
            model has no price (see ``model_price``).
        evolve.errors.ModelError: litellm knows no provider for ``model``.
    """
    params = dict(params or {})
    if model.startswith(SCRIPTED_PREFIX):
        from evolve.scripted import ScriptedModel, ScriptedServer

        script = ScriptedModel.from_file(Path(model[len(SCRIPTED_PREFIX):]).expanduser())
        # litellm is imported at the first model call (seconds): a harness that never calls
        # the model never pays for it.
        server = ScriptedServer(script).start()
        try:
            backend = LiteLLMBackend("openai/scripted", {"api_base": server.url, "api_key": "scripted",
                                                         **(FREE if configured_price(params) is None else {}),
                                                         **params})
        except BaseException:
            server.close()
            raise
        return backend, server.close
    check_model(model, params, role=role)
    return LiteLLMBackend(model, params, role=role), lambda: None
