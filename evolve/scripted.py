"""A scripted model: an OpenAI-compatible HTTP server whose replies come from a YAML script.

It stands in for the model's words only. Everything around it is real: evolve
reaches it through litellm and HTTP exactly as it reaches a hosted model (see
``evolve.models.backend_for`` with a model string ``scripted/<path-to-yaml>``),
at an explicit price of 0 USD per token (``evolve.models.FREE``) unless the
model's parameters set one, so USD limits count its calls like any other's.

Script format::

    # Rules are tried in order; the first whose `when` holds answers.
    rules:
      - when:
          contains: ["fixture-add"]      # every substring must occur in the conversation
          not_contains: ["some phrase"]  # optional: none may occur
        replies:                          # reply for turn k = assistant messages already sent;
          - "THOUGHT: fix it ..."         # past the end the last reply repeats
          - "echo COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT"
    default:                              # optional; used when no rule matches
      - "echo COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT"

The conversation is every message's text content joined by newlines. A rule
without ``when`` always matches. Without ``default`` an unmatched conversation
gets the reply ``"I cannot help with that."``.
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from evolve.errors import ConfigError

log = logging.getLogger(__name__)

FALLBACK_REPLY = "I cannot help with that."
MAX_BODY_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Rule:
    """One scripted rule: answers when every ``contains`` and no ``not_contains`` substring occurs."""

    contains: tuple[str, ...]
    not_contains: tuple[str, ...]
    replies: tuple[str, ...]

    def matches(self, conversation: str) -> bool:
        return (all(s in conversation for s in self.contains)
                and not any(s in conversation for s in self.not_contains))


def message_text(message: Any) -> str:
    """The text of one OpenAI chat message (string content or a list of text parts)."""
    if not isinstance(message, dict):
        return ""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
        return "\n".join(parts)
    return ""


class ScriptedModel:
    """Replies chosen by the first matching rule of a script, by turn number."""

    def __init__(self, rules: list[Rule], default: list[str] | None = None, *, source: str = "<script>") -> None:
        self.rules = list(rules)
        self.default = list(default) if default else [FALLBACK_REPLY]
        self.source = source

    @classmethod
    def from_file(cls, path: str | Path) -> "ScriptedModel":
        """Load a YAML script.

        Raises:
            ConfigError: the file cannot be read or parsed, or a key is missing or
                of the wrong type; the message names the file and the key.
        """
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"{path}: cannot read the scripted model's script ({e.strerror or e}). "
                              "The model string is scripted/<path-to-yaml>.") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: the scripted model's script is not valid YAML: {e}") from None
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "<script>") -> "ScriptedModel":
        """Build from parsed YAML. Raises ConfigError naming ``source`` and the key at fault."""

        def bad(key: str, why: str) -> ConfigError:
            return ConfigError(f"{source}: key {key!r} {why}")

        def strings(value: Any, key: str, *, nonempty: bool) -> tuple[str, ...]:
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise bad(key, "must be a list of strings")
            if nonempty and not value:
                raise bad(key, "must hold at least one string")
            return tuple(value)

        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: a scripted model's script must be a mapping with keys "
                              f"'rules' and 'default', not {type(data).__name__}")
        unknown = sorted(set(data) - {"rules", "default"})
        if unknown:
            raise bad(unknown[0], "is unknown; a script has only 'rules' and 'default'")
        raw_rules = data.get("rules") or []
        if not isinstance(raw_rules, list):
            raise bad("rules", "must be a list of rules")
        rules = []
        for i, raw in enumerate(raw_rules):
            where = f"rules[{i}]"
            if not isinstance(raw, dict):
                raise bad(where, "must be a mapping with 'when' and 'replies'")
            unknown = sorted(set(raw) - {"when", "replies"})
            if unknown:
                raise bad(f"{where}.{unknown[0]}", "is unknown; a rule has only 'when' and 'replies'")
            if "replies" not in raw:
                raise bad(f"{where}.replies", "is missing")
            when = raw.get("when") or {}
            if not isinstance(when, dict):
                raise bad(f"{where}.when", "must be a mapping with 'contains' and/or 'not_contains'")
            unknown = sorted(set(when) - {"contains", "not_contains"})
            if unknown:
                raise bad(f"{where}.when.{unknown[0]}", "is unknown; use 'contains' or 'not_contains'")
            rules.append(Rule(
                contains=strings(when.get("contains") or [], f"{where}.when.contains", nonempty=False),
                not_contains=strings(when.get("not_contains") or [], f"{where}.when.not_contains",
                                     nonempty=False),
                replies=strings(raw["replies"], f"{where}.replies", nonempty=True),
            ))
        default = None
        if data.get("default") is not None:
            default = list(strings(data["default"], "default", nonempty=True))
        return cls(rules, default, source=source)

    def reply(self, messages: list[dict]) -> str:
        """The scripted reply to a conversation (a list of OpenAI chat messages)."""
        conversation = "\n".join(message_text(m) for m in messages)
        turn = sum(1 for m in messages if isinstance(m, dict) and m.get("role") == "assistant")
        replies = self.default
        for rule in self.rules:
            if rule.matches(conversation):
                replies = list(rule.replies)
                break
        return replies[min(turn, len(replies) - 1)]


def _count_tokens(chars: int) -> int:
    return max(1, chars // 4)


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"
    protocol_version = "HTTP/1.1"
    server_version = "evolve-scripted"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("scripted model: " + format, *args)

    def _send(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str) -> None:
        self._send(status, {"error": {"message": message, "type": "invalid_request_error",
                                      "param": None, "code": None}})

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        if self.path.rstrip("/") in ("/v1/models", "/models"):
            self._send(200, {"object": "list", "data": [
                {"id": "scripted", "object": "model", "created": 0, "owned_by": "evolve"}]})
        else:
            self._error(404, f"no route for GET {self.path}")

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
            self._error(404, f"no route for POST {self.path}")
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY_BYTES:
            self.close_connection = True
            self._error(400, "a request needs a valid Content-Length")
            return
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            self._error(400, f"the request body is not JSON: {e}")
            return
        messages = body.get("messages") if isinstance(body, dict) else None
        if not isinstance(messages, list) or not messages:
            self._error(400, "'messages' must be a non-empty list")
            return
        if body.get("stream"):
            self._error(400, "the scripted model does not stream")
            return
        self.server.record(body)
        text = self.server.model.reply(messages)
        prompt_chars = sum(len(message_text(m)) for m in messages)
        pt, ct = _count_tokens(prompt_chars), _count_tokens(len(text))
        self._send(200, {
            "id": f"chatcmpl-scripted-{next(self.server.ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": "scripted",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct},
        })


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], model: ScriptedModel, owner: "ScriptedServer") -> None:
        self.model = model
        self.ids = itertools.count(1)
        self.owner = owner
        super().__init__(address, _Handler)

    def record(self, body: dict) -> None:
        with self.owner._lock:
            self.owner._requests.append(body)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("scripted model: error while handling a request", exc_info=True)


class ScriptedServer:
    """An OpenAI-compatible chat-completions server on 127.0.0.1 answering from a script.

    Serves ``POST /v1/chat/completions`` and ``GET /v1/models``. Usage numbers are
    estimates (4 characters per token), so traces carry real, nonzero counts.
    """

    def __init__(self, model: ScriptedModel | str | Path, host: str = "127.0.0.1", port: int = 0) -> None:
        self.model = model if isinstance(model, ScriptedModel) else ScriptedModel.from_file(model)
        self._address = (host, port)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._url: str | None = None
        self._lock = threading.Lock()
        self._requests: list[dict] = []

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:PORT/v1``; only valid after ``start()``."""
        if self._url is None:
            raise RuntimeError("the scripted server is not started")
        return self._url

    @property
    def requests(self) -> list[dict]:
        """The chat-completion bodies answered so far, in arrival order (kept after close)."""
        with self._lock:
            return list(self._requests)

    def start(self) -> "ScriptedServer":
        if self._server is None:
            self._server = _Server(self._address, self.model, self)
            host, port = self._server.server_address[:2]
            self._url = f"http://{host}:{port}/v1"
            self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                            name="evolve-scripted-model", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving. Idempotent."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._server = self._thread = None
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> "ScriptedServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()
