"""Running a harness on one task inside a sandbox (the agent phase).

The container layout the harness sees (its contract):

    /testbed                 the repo snapshot at base_commit (cwd of bash actions)
    /evolve/harness/         a copy of the harness directory; the entrypoint runs here
    /evolve/task.json        {"instance_id", "problem_statement", "repo", "base_commit"}
    /evolve/output/          trajectory.json goes here
    /evolve/gw/gateway.sock  the model gateway (OpenAI chat completions over HTTP)
    /evolve/env/             the harness's environment, read-only, when it declares requirements
                             (``evolve.harness_env``; its bin/ is first on the harness's PATH)

The model endpoint: ``http://127.0.0.1:18000`` (``ENDPOINT_PORT``) is the same gateway over TCP; a
loopback bridge (``scripts/bridge.py``), started before the harness, carries it to the socket.

Environment: EVOLVE_TASK_FILE, EVOLVE_OUTPUT_DIR, EVOLVE_GATEWAY_SOCKET,
EVOLVE_REPO and EVOLVE_MODEL; for the endpoint (``_endpoint_env``) OPENAI_BASE_URL and
OPENAI_API_BASE (``http://127.0.0.1:18000/v1``), ANTHROPIC_BASE_URL (``http://127.0.0.1:18000``),
OPENAI_API_KEY and ANTHROPIC_API_KEY (the task's token, never a real key; the gateway refuses any
other key), EVOLVE_ENDPOINT_PORT, and NO_PROXY for 127.0.0.1. No network, no real API key: the
only way out is the gateway's socket, and every call through it is recorded on the host.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from evolve import owner
from evolve.config import EvalSettings
from evolve.errors import InfraError
from evolve.gateway import Gateway
from evolve.harness import Harness
from evolve.harness_env import HarnessEnv
from evolve.models import ModelBackend
from evolve.sandbox.docker import TAR_TRAILER, Sandbox, tar_entry
from evolve.testbed import (INLINE_BYTES, LARGE_UNTRACKED_BYTES, TESTBED, TakenPatch, collect_script,
                            print_collected_script, read_collected, reap_script, run_as_root, sandbox_ids, script,
                            shell_header, taken_patch, testbed_archive)
from evolve.types import IntegrityFlag, Task, Usage

HARNESS_LOG_BYTES = 5_000_000
"""Harness stdout+stderr kept per task; a harness printing more is cut off (SIGPIPE)."""
TRAJECTORY_BYTES = 50_000_000
COLLECT_TIMEOUT_S = 300
"""Seconds allowed for killing leftover processes and taking the patch after the harness ends."""
_OUT = "/evolve/output"
_OUTPUTS = {"trajectory.json": (f"{_OUT}/trajectory.json", TRAJECTORY_BYTES),
            "harness.log": (f"{_OUT}/harness.log", HARNESS_LOG_BYTES + 1024),
            ".exit_code": (f"{_OUT}/.exit_code", 64)}
_MAX_OUTPUT = 2 * INLINE_BYTES + 1_000_000
"""The collect exec's output: markers, error messages, the collected files in base64."""
_ENTRYPOINT_SH = "/evolve/entrypoint.sh"
"""The entrypoint's wrapper (``scripts/entrypoint.sh`` with its header), root-owned, run as the sandbox user."""
_BRIDGE = "/evolve/bridge.py"
"""The loopback bridge (``scripts/bridge.py``), root-owned, started by the entrypoint's wrapper."""
_GATEWAY_SOCKET = "/evolve/gw/gateway.sock"
ENDPOINT_PORT = 18000
"""The loopback port of the model endpoint inside the sandbox (each container has its own loopback)."""
BRIDGE_SLACK = 4
"""Connections the bridge carries at once beyond ``limits.max_connections``, so that the gateway's
own limit (429, idle reaping) decides."""
_HARNESS_EXIT = "evolve-harness-exit"
_COLLECTED = "evolve-collected"
LARGE_FILES_NOTED = 20
"""Left-out large files named one note each; the rest are counted in one more note."""


@dataclass
class AgentRun:
    """What one harness run left behind. Sizes are capped; seconds are wall-clock."""

    model_patch: bytes
    """The ``git diff --binary`` output, byte for byte; empty when it was not kept (``patch_problem``)."""
    exit_code: int | None
    """The entrypoint's exit status (128 + N when a signal N ended it), or None when unknown or
    when it timed out."""
    timed_out: bool
    """The harness ran up to ``harness_timeout_s`` by the clock (not guessed from an exit code)."""
    usage: Usage
    infra_errors: list[str] = field(default_factory=list)
    trajectory: bytes | None = None
    harness_log: str = ""
    seconds: float = 0.0
    patch_bytes_total: int = 0
    """The diff's size in bytes, also when it was too large to keep."""
    patch_problem: str | None = None
    """Why the diff was not kept (over ``MAX_PATCH_BYTES``, or git could not make it from what
    the harness left): the task is then ``patch_too_large``, the candidate's failure, not infra."""
    flags: list[IntegrityFlag] = field(default_factory=list)
    """Agent-side integrity flags: ``large_files_skipped``, ``trajectory_missing``."""
    notes: list[str] = field(default_factory=list)
    """One line per flag occurrence (file names escaped as JSON strings)."""


@dataclass
class _Outputs:
    """What the agent phase collected from the sandbox."""

    taken: TakenPatch
    exit_code: int | None
    timed_out: bool
    trajectory: bytes | None
    harness_log: bytes
    trajectory_too_large: bool = False
    """The harness wrote a trajectory.json over ``TRAJECTORY_BYTES`` (then ``trajectory`` is None)."""


def run_agent(sandbox_factory, task: Task, repo_dir: Path | None, harness: Harness,
              backend: ModelBackend, settings: EvalSettings, trace_path: Path,
              harness_env: HarnessEnv | None = None) -> AgentRun:
    """Run ``harness`` on ``task`` and take the ``model_patch``.

    ``harness_env`` is the harness's environment (``evolve.harness_env.prepare``), already
    mounted by ``sandbox_factory``: its ``bin`` goes first on the harness's ``PATH``.

    ``sandbox_factory(mounts)`` returns an unstarted ``Sandbox``. Every model
    call is appended to ``trace_path`` by the gateway, whatever the harness logs.

    One root script (``testbed.run_as_root``) does it all: the snapshot,
    task.json, the harness and the output directory go in as one archive; it
    runs the entrypoint as the sandbox user, kills whatever the harness left
    running (``reap_script``), takes the patch and prints the outputs
    (``collect_script``). When it cannot finish that (the harness stopped the
    container, or left a process SIGKILL cannot end), a restart does the
    killing instead. The container is removed in the background.

    Raises:
        InfraError: Docker failed.
        ModelError: the model cannot be called at all (bad key, unknown model).
    """
    start = time.monotonic()
    with owner.temp_dir("gw") as gw_root:  # swept once this process is dead (kill -9)
        # Only the sandbox user and root reach the socket: its parent is private (0700, evolve's user),
        # so no other host user can traverse to it, and `gw` (0711) holds nothing but the socket and is
        # mounted read-only, so the harness can't put a file on the host through it.
        gw_dir = Path(gw_root) / "gw"
        gw_dir.mkdir(mode=0o711)
        gw_dir.chmod(0o711)  # mkdir's mode is masked by the umask
        token = f"evolve-task-{secrets.token_hex(16)}"  # the harness's API key: not a secret, not a real key
        gateway = Gateway(gw_dir / "gateway.sock", trace_path, backend, settings.limits, token=token)
        # Closing the gateway waits for its server loop; once no harness process is left it runs
        # while the outputs are copied out.
        closer = threading.Thread(target=gateway.close, name="evolve-gateway-close")

        def quiet() -> None:
            if closer.ident is None:
                closer.start()

        with gateway, sandbox_factory({str(gw_dir): "/evolve/gw:ro"}) as sandbox:
            out = _run_and_collect(sandbox, task, repo_dir, harness, settings, quiet,
                                   {**_endpoint_env(token), **_harness_env_vars(harness_env)})
            sandbox.close(background=True)
        if closer.ident is not None:
            _wake(gateway.socket_path, closer)
            closer.join()
        if gateway.fatal_error is not None:
            raise gateway.fatal_error
        flags, notes = _integrity(out)
        infra = list(gateway.infra_errors)
        if not gateway.bridge_ready:  # announced before the harness starts: the harness can't fake its absence
            infra.append("bridge: the model endpoint's loopback bridge did not start in the sandbox, so the "
                         "harness did not run (see harness.log)")
        return AgentRun(out.taken.patch, out.exit_code, out.timed_out, gateway.usage, infra,
                        out.trajectory, out.harness_log.decode("utf-8", "replace"), time.monotonic() - start,
                        out.taken.total_bytes, out.taken.problem, flags, notes)


def _show(path: bytes) -> str:
    """A file name as a JSON string: quotes, newlines and bytes that are not UTF-8 escaped."""
    return json.dumps(path.decode("utf-8", "surrogateescape"))


def _integrity(out: _Outputs) -> tuple[list[IntegrityFlag], list[str]]:
    """The agent phase's integrity flags and notes."""
    flags: list[IntegrityFlag] = []
    notes: list[str] = []
    taken = out.taken
    if taken.large_files_count:
        flags.append(IntegrityFlag.LARGE_FILES_SKIPPED)
        for path, size in taken.large_files[:LARGE_FILES_NOTED]:
            notes.append(f"large_files_skipped: {_show(path)} ({size} bytes) is untracked and over "
                         f"{LARGE_UNTRACKED_BYTES} bytes: left out of the model_patch")
        more = taken.large_files_count - min(len(taken.large_files), LARGE_FILES_NOTED)
        if more > 0:
            notes.append(f"large_files_skipped: {more} more untracked files over {LARGE_UNTRACKED_BYTES} bytes "
                         "left out of the model_patch")
    for path in taken.noise[:LARGE_FILES_NOTED]:
        flag = (IntegrityFlag.PACKAGE_METADATA if b".egg-info/" in b"/" + path
                else IntegrityFlag.SHADOWING_MODULE)
        if flag not in flags:
            flags.append(flag)
        notes.append(f"{flag.value}: {_show(path)} is build output the harness re-included (a .gitignore "
                     "negation): left out of the model_patch")
    if out.trajectory is None:
        if out.trajectory_too_large:
            notes.append(f"trajectory.json is over the {TRAJECTORY_BYTES}-byte cap: not kept")
        else:
            flags.append(IntegrityFlag.TRAJECTORY_MISSING)
            notes.append(f"trajectory_missing: the harness wrote no {_OUT}/trajectory.json")
    return flags, notes


def _ran_out(res, limit_s: float) -> bool:
    """Whether an exec of the entrypoint under ``timeout`` ran up to ``limit_s`` by the host's clock:
    a harness that exits 124 or 137 by itself, or is killed, before the limit did not time out."""
    return res.exit_code is None or (res.exit_code in (124, 137) and res.seconds >= limit_s)


def _outputs(taken: TakenPatch, files: dict[str, bytes], timed_out: bool, rc: int | None,
             trajectory_too_large: bool = False) -> _Outputs:
    """``_Outputs`` from the collected ``files`` (a trajectory over its cap counts as too large);
    ``rc`` is the entrypoint's wrapper's exit status, used when it wrote no exit code."""
    raw = files.get(".exit_code")
    code = int(raw.strip()) if raw and raw.strip().lstrip(b"-").isdigit() else None
    if code is None and not timed_out:
        code = rc
    trajectory = files.get("trajectory.json")
    too_large = trajectory_too_large or (trajectory is not None and len(trajectory) > TRAJECTORY_BYTES)
    return _Outputs(taken, code, timed_out, None if too_large else trajectory, files.get("harness.log", b""),
                    too_large)


def _wake(socket_path: Path, closer: threading.Thread, within_s: float = 0.3) -> None:
    """Connect to the gateway's socket while ``closer`` stops its server: the server loop checks
    for a stop only between waits of up to 0.2 s, or right after a connection comes."""
    import socket

    deadline = time.monotonic() + within_s
    while closer.is_alive() and time.monotonic() < deadline:
        # Expected: the server may already have stopped listening; a refused connect still did its job.
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(0.05)
            s.connect(str(socket_path))
        closer.join(0.01)


def _env(settings: EvalSettings) -> dict[str, str]:
    return {"EVOLVE_TASK_FILE": "/evolve/task.json", "EVOLVE_OUTPUT_DIR": _OUT,
            "EVOLVE_GATEWAY_SOCKET": _GATEWAY_SOCKET, "EVOLVE_REPO": "/testbed",
            "EVOLVE_MODEL": settings.model.split("/", 1)[0] if settings.model.startswith("scripted/")
            else settings.model}


def _harness_env_vars(harness_env: HarnessEnv | None) -> dict[str, str]:
    """The environment variables that make the harness run with its environment's interpreter."""
    return harness_env.env_vars() if harness_env is not None else {}


def _endpoint_env(token: str) -> dict[str, str]:
    """The model endpoint's variables (this module's docstring); ``token`` is the task's API key."""
    base = f"http://127.0.0.1:{ENDPOINT_PORT}"
    return {"EVOLVE_ENDPOINT_PORT": str(ENDPOINT_PORT),
            "OPENAI_BASE_URL": f"{base}/v1", "OPENAI_API_BASE": f"{base}/v1", "OPENAI_API_KEY": token,
            "ANTHROPIC_BASE_URL": base, "ANTHROPIC_API_KEY": token,
            # clients honour proxy variables an image may set; loopback must never go through one
            "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}


def _entrypoint_sh(harness: Harness, max_connections: int) -> bytes:
    """The entrypoint's wrapper: start the loopback bridge (``scripts/bridge_start.sh``), then run the
    entrypoint (``scripts/entrypoint.sh``): output into a capped log, exit status kept."""
    return (shell_header(evolve_out=_OUT, evolve_log_bytes=HARNESS_LOG_BYTES, evolve_entrypoint=harness.spec.entrypoint,
                         evolve_bridge_port=ENDPOINT_PORT, evolve_bridge_socket=_GATEWAY_SOCKET,
                         evolve_bridge_connections=max_connections + BRIDGE_SLACK)
            + script("bridge_start.sh") + script("entrypoint.sh")).encode()


def _task_info(task: Task) -> str:
    """``/evolve/task.json`` for the harness: the task, and the environment the grader tests it in.

    ``test_cmd`` is the command the grader runs in ``workdir`` (the repository) with the files of the task's
    tests appended (``evolve.grading``): the same command, environment and image, so the harness runs the
    project's tests as they will be judged. The FAIL_TO_PASS/PASS_TO_PASS ids are not given (as in
    SWE-bench, the agent sees the issue, not the hidden tests)."""
    from evolve.grading import DEFAULT_TEST_CMD

    return json.dumps({"instance_id": task.instance_id, "problem_statement": task.problem_statement,
                       "repo": task.repo, "base_commit": task.base_commit,
                       "test_cmd": task.test_cmd or DEFAULT_TEST_CMD,
                       "environment": {"workdir": TESTBED, "image": task.image or "evolve's base image",
                                       "test_cmd_usage": "run in workdir; append test files or pytest node ids "
                                                         "to choose tests, as the grader appends the task's test "
                                                         "files"}}, indent=2)


def _install_entries(task: Task, harness: Harness, ids: tuple[int, int], max_connections: int) -> bytes:
    """Tar entries for /evolve: task.json, the wrapper and the bridge (root), the harness and an empty
    output dir (the sandbox user)."""
    uid, gid = ids
    entries = [tar_entry("evolve", mode=0o755), tar_entry("evolve/task.json", _task_info(task).encode()),
               tar_entry(_ENTRYPOINT_SH.lstrip("/"), _entrypoint_sh(harness, max_connections), mode=0o755),
               tar_entry(_BRIDGE.lstrip("/"), script("bridge.py").encode(), mode=0o644),
               tar_entry("evolve/harness", uid=uid, gid=gid, mode=0o755)]
    dirs: set[str] = set()
    for p in sorted(harness.root.rglob("*")):
        if not p.is_file():
            continue
        rel = p.relative_to(harness.root).as_posix()
        parts = rel.split("/")
        for i in range(1, len(parts)):
            d = "/".join(parts[:i])
            if d not in dirs:
                dirs.add(d)
                entries.append(tar_entry(f"evolve/harness/{d}", uid=uid, gid=gid, mode=0o755))
        entries.append(tar_entry(f"evolve/harness/{rel}", p.read_bytes(), uid=uid, gid=gid, mode=0o755))
    entries.append(tar_entry("evolve/output", uid=uid, gid=gid, mode=0o755))
    return b"".join(entries)


def _run_and_collect(sandbox: Sandbox, task: Task, repo_dir: Path | None, harness: Harness,
                     settings: EvalSettings, on_quiet: Callable[[], None],
                     env_vars: dict[str, str] | None = None) -> _Outputs:
    """Put in the snapshot and the harness, run the entrypoint as the sandbox user, then (as root,
    in the same exec) kill whatever it left running and collect the patch and outputs
    (``run_as_root``). Falls back to ``Sandbox.restart`` when that exec could not finish the job,
    or when the sandbox cannot run the harness from a root script (then the entrypoint runs in its
    own exec as the sandbox user). ``on_quiet`` is called once no harness process is left. The
    harness's run time is measured around ``timeout`` inside the container (or, when that exec
    died, around the exec on the host): it timed out only when it ran up to the limit.

    Raises:
        EvalSetError: the task's repo or commit does not exist.
        InfraError: Docker failed (the harness may not have run).
    """
    ids = sandbox_ids(sandbox)
    run_env = {**_env(settings), **(env_vars or {})}
    base, entries = testbed_archive(sandbox, task, repo_dir)
    archive = entries + _install_entries(task, harness, ids or (0, 0), settings.limits.max_connections) + TAR_TRAILER
    timeout_s = max(1, math.ceil(settings.harness_timeout_s))
    body = (shell_header(evolve_timeout=timeout_s, evolve_entrypoint_sh=_ENTRYPOINT_SH, evolve_out=_OUT,
                         evolve_harness_exit=_HARNESS_EXIT, evolve_owner="" if ids else sandbox.user or "")
            + script("agent.sh") + (reap_script(ids) if ids else "") + collect_script(base, _OUTPUTS)
            + f"echo {_COLLECTED}\n" + print_collected_script())
    run = run_as_root(sandbox, body, archive, timeout_s=timeout_s + 5 + COLLECT_TIMEOUT_S, env=run_env,
                      max_output=_MAX_OUTPUT)
    res = run.result
    if not run.as_user:
        # The root script could not become the sandbox user: the entrypoint runs in an exec of its own.
        res = sandbox.exec(f"sh {_ENTRYPOINT_SH}", timeout_s=settings.harness_timeout_s, env=run_env)
        harness_rc, timed_out = res.exit_code, _ran_out(res, settings.harness_timeout_s)
        res = None
    else:
        m = re.search(rf"^{_HARNESS_EXIT} (-?\d+) (-?\d+)$", res.output, re.M)
        harness_rc = int(m.group(1)) if m else None
        if m is None:  # the exec died with the harness (it stopped the container): the host's clock
            timed_out = res.seconds >= timeout_s
        elif int(m.group(2)) >= 0:
            timed_out = int(m.group(2)) >= timeout_s * 1000
        else:
            timed_out = harness_rc in (124, 137) and res.seconds >= timeout_s
    files = None
    caps = {name: cap for name, cap in _OUTPUTS.items() if name != "trajectory.json"}  # see _outputs
    if res is not None and res.exit_code == 0 and re.search(rf"^{_COLLECTED}$", res.output, re.M):
        on_quiet()
        try:
            files = read_collected(sandbox, res.output, caps)
        except InfraError:
            files = None
    if files is None:
        # Slow path: a restart kills everything, whatever the harness did (to the pid table, to PID 1).
        sandbox.restart()
        res = sandbox.exec(collect_script(base, _OUTPUTS) + print_collected_script(),
                           timeout_s=COLLECT_TIMEOUT_S, user="root", max_output=_MAX_OUTPUT)
        if res.exit_code != 0:
            raise InfraError("docker", f"could not take the patch (exit {res.exit_code}): {res.output[-500:]}")
        on_quiet()
        files = read_collected(sandbox, res.output, caps)
        if files is None:
            raise InfraError("docker", "the collected outputs are missing after taking the patch")
    return _outputs(taken_patch(files), files, timed_out, harness_rc)
