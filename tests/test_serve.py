"""LocalServer: readiness polling, early exit, timeout, and stopping, with real child processes.

The servers here are a small OpenAI-compatible HTTP server (tests/support.py's
STUB_SERVER, run as a real child process through ``serve.command``) that can be
told to be slow, to list no model at first, to crash, or to ignore SIGTERM. The real llama.cpp server is
exercised in tests/test_local_model.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from evolve.config import ServeConfig
from evolve.errors import ConfigError
from evolve.serve import LocalServer, ServeError, pick_backend
from support import port_open, stub_cfg


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is gone as far as a server goes.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


# -- readiness ---------------------------------------------------------------------------------------


def test_waits_through_503_and_empty_model_list(stub_script, tmp_path):
    log = tmp_path / "server.log"
    server = LocalServer(stub_cfg(stub_script, "--unavailable-s", "1.0", "--no-models-s", "1.0",
                                  "--model-id", "served/thing"), log_path=log)
    t0 = time.monotonic()
    with server:
        waited = time.monotonic() - t0
        assert waited >= 2.0, "ready before /v1/models listed a model"
        assert server.model_id == "served/thing"
        assert server.litellm_model == "openai/served/thing"
        assert server.api_base == f"http://127.0.0.1:{server.port}/v1"
        assert server.running and 2.0 <= server.startup_seconds <= waited + 0.01
        with urllib.request.urlopen(f"{server.api_base}/models", timeout=5) as resp:
            assert json.loads(resp.read())["data"][0]["id"] == "served/thing"
        pid, port = server.pid, server.port
    assert not alive(pid) and not port_open(port)
    assert server.seconds >= waited
    assert "stub: starting" in log.read_text()  # a log given by the caller is kept


def test_server_that_is_slow_to_listen(stub_script):
    with LocalServer(stub_cfg(stub_script, "--delay-s", "1.5")) as server:
        assert server.startup_seconds >= 1.5
        own_log = server.log_path
        assert own_log.exists()
    assert not own_log.exists()  # evolve's own temp log goes after a clean stop


def test_early_exit_is_a_clear_error_with_the_log_tail(stub_script):
    server = LocalServer(stub_cfg(stub_script, "--exit-after-s", "0.3", "--exit-code", "3"))  # evolve's own log
    t0 = time.monotonic()
    with pytest.raises(ServeError) as info:
        server.start()
    msg = str(info.value)
    assert time.monotonic() - t0 < 10, "early exit must be noticed at once, not at the timeout"
    assert "exited with status 3 before it was ready" in msg
    assert "cannot load model weights (simulated)" in msg  # the log's tail
    assert str(stub_script) in msg  # the command
    assert str(server.log_path) in msg and server.log_path.exists()  # kept for the user
    assert not server.running
    server.log_path.unlink()


def test_not_ready_in_time_is_a_clear_error_and_nothing_is_left(stub_script, tmp_path):
    pid_file = tmp_path / "child.pid"
    server = LocalServer(stub_cfg(stub_script, "--unavailable-s", "100", "--child-pid-file", str(pid_file),
                                  ready_timeout_s=1.5), log_path=tmp_path / "server.log")
    with pytest.raises(ServeError) as info:
        server.start()
    msg = str(info.value)
    assert "was not ready within 1.5 s" in msg and "HTTP 503" in msg and "ready_timeout_s" in msg
    grandchild = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(grandchild), "the server's own children must go with it"
    assert not server.running and not port_open(server.port)


def test_nothing_listening_reports_the_connection_error(stub_script, tmp_path):
    server = LocalServer(stub_cfg(stub_script, "--delay-s", "100", ready_timeout_s=0.8), log_path=tmp_path / "s.log")
    with pytest.raises(ServeError, match="ConnectionRefusedError|Connection refused"):
        server.start()


# -- stopping ------------------------------------------------------------------------------------------


def test_stop_kills_the_process_group_even_if_sigterm_is_ignored(stub_script, tmp_path):
    pid_file = tmp_path / "child.pid"
    server = LocalServer(stub_cfg(stub_script, "--ignore-term", "--child-pid-file", str(pid_file)),
                         stop_grace_s=1.0).start()
    pid, child = server.pid, int(pid_file.read_text())
    assert alive(pid) and alive(child)
    t0 = time.monotonic()
    server.stop()
    assert time.monotonic() - t0 < 10
    assert not alive(pid)
    deadline = time.monotonic() + 5
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(child)
    server.stop()  # idempotent


def test_ctrl_c_while_waiting_leaves_nothing(stub_script, tmp_path):
    """SIGINT to a process waiting for its server: the server goes too (KeyboardInterrupt path)."""
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent.parent)!r})\n"
            "from evolve.config import ServeConfig\nfrom evolve.serve import LocalServer\n"
            f"cfg = ServeConfig(command=[sys.executable, {str(stub_script)!r}, '--port', '{{port}}', "
            f"'--unavailable-s', '100', '--child-pid-file', {str(tmp_path / 'c.pid')!r}])\n"
            "s = LocalServer(cfg)\nprint('starting', flush=True)\n"
            "try:\n    s.start()\nexcept KeyboardInterrupt:\n    print('interrupted', s.pid, s.log_path.exists(), flush=True)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "starting"
    deadline = time.monotonic() + 20
    while not (tmp_path / "c.pid").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert out.startswith("interrupted None False"), out  # stopped: no pid any more, no log left behind
    child = int((tmp_path / "c.pid").read_text())
    deadline = time.monotonic() + 5
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(child)


def test_killed_parent_takes_the_server_with_it(stub_script, tmp_path):
    """SIGKILL to evolve itself (no atexit, no finally): the server dies too (PR_SET_PDEATHSIG)."""
    code = (f"import sys, time; sys.path.insert(0, {str(Path(__file__).parent.parent)!r})\n"
            "from evolve.config import ServeConfig\nfrom evolve.serve import LocalServer\n"
            f"cfg = ServeConfig(command=[sys.executable, {str(stub_script)!r}, '--port', '{{port}}'])\n"
            f"s = LocalServer(cfg, log_path={str(tmp_path / 'server.log')!r}).start()\n"
            "print(s.pid, flush=True)\ntime.sleep(100)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    pid = int(proc.stdout.readline())
    assert alive(pid)
    proc.kill()
    proc.wait(10)
    deadline = time.monotonic() + 10
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(pid)


def test_exit_of_the_interpreter_stops_the_server(stub_script):
    """A script that starts a server and forgets it: atexit stops it."""
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent.parent)!r})\n"
            "from evolve.config import ServeConfig\nfrom evolve.serve import LocalServer\n"
            f"cfg = ServeConfig(command=[sys.executable, {str(stub_script)!r}, '--port', '{{port}}',"
            " '--ignore-term'])\n"
            "s = LocalServer(cfg, stop_grace_s=1.0).start()\nprint(s.pid, flush=True)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    pid = int(out.stdout.strip())
    assert not alive(pid)


def test_server_dying_while_serving_is_reported(stub_script, tmp_path):
    server = LocalServer(stub_cfg(stub_script), log_path=tmp_path / "server.log").start()
    try:
        server.check_alive()
        os.kill(server.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while server._proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        with pytest.raises(ServeError, match="while serving"):
            server.check_alive()
    finally:
        server.stop()


# -- backends and configuration --------------------------------------------------------------------------


def test_backend_choice():
    assert pick_backend(ServeConfig()) == "llama.cpp"  # the embedded GGUF
    assert pick_backend(ServeConfig(model="/m/model.Q4.gguf")) == "llama.cpp"
    # A Hugging Face id without a GPU (or without vLLM/SGLang installed) falls back to llama.cpp.
    assert pick_backend(ServeConfig(model="Qwen/Qwen2.5-Coder-7B-Instruct"), gpu=False) == "llama.cpp"
    assert pick_backend(ServeConfig(backend="vLLM", model="x")) == "vllm"
    assert pick_backend(ServeConfig(backend="llama_cpp")) == "llama.cpp"
    assert pick_backend(ServeConfig(command=["x"])) == "command"
    with pytest.raises(ConfigError, match="expected one of auto, vllm, sglang, llama.cpp"):
        pick_backend(ServeConfig(backend="tgi"))


def test_missing_backend_packages_name_the_fix():
    with pytest.raises(ConfigError, match="serve.model is required for backend vllm"):
        LocalServer(ServeConfig(backend="vllm")).build_command()
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="pip install vllm"):
            LocalServer(ServeConfig(backend="vllm", model="some/model")).build_command()
    with pytest.raises(ConfigError, match="no such file"):
        server = LocalServer(ServeConfig(backend="llama.cpp", model="/nonexistent/model.gguf"))
        from evolve.serve import llama_cpp_available

        if not llama_cpp_available():
            pytest.skip("llama-cpp-python not installed: the missing-package error comes first")
        server.build_command()


def test_llama_cpp_command_line(tmp_path):
    from evolve.serve import llama_cpp_available

    if not llama_cpp_available():
        pytest.skip("llama-cpp-python[server] not installed")
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF")
    server = LocalServer(ServeConfig(model=str(gguf), port=1234, args=["--n_ctx", "1024"]))
    cmd = server.build_command()
    assert cmd[:3] == [sys.executable, "-m", "llama_cpp.server"]
    assert cmd[cmd.index("--model") + 1] == str(gguf) and cmd[cmd.index("--port") + 1] == "1234"
    assert cmd.count("--n_ctx") == 1 and cmd[cmd.index("--n_ctx") + 1] == "1024"  # the user's wins
    assert cmd[cmd.index("--model_alias") + 1] == "tiny"


def test_serve_cli_without_the_backend_says_what_to_install():
    try:
        import vllm  # noqa: F401
        pytest.skip("vllm is installed")
    except ImportError:
        pass
    evolve_bin = str(Path(sys.executable).parent / "evolve")
    proc = subprocess.run([evolve_bin, "serve", "--backend", "vllm", "--model", "x/y", "--port", "0"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "pip install vllm" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_help_status_and_serve_never_import_litellm():
    code = ("import sys\nfrom evolve.cli import app\n"
            "for argv in (['--help'], ['serve', '--help'], ['eval', '--help']):\n"
            "    try:\n        app(argv)\n    except SystemExit:\n        pass\n"
            "assert 'litellm' not in sys.modules, 'litellm imported'\n"
            "import evolve.serve, evolve.roles\nassert 'litellm' not in sys.modules\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).parent.parent)
    assert out.returncode == 0, out.stderr
