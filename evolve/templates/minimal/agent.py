#!/usr/bin/env python3
"""minimal: a bash-only coding agent in the spirit of mini-swe-agent.

Loop: the model replies with one ```bash block, we run it in the repository
and send back its return code and output, until the model prints
COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT or a limit is hit. evolve takes the fix
itself (git diff of the repository); this script only has to edit the files.

Standard library only (Python >= 3.8). Limits and model parameters live in
config.json; prompts are string.Template files in prompts/ ($name
placeholders; write $$ for a literal dollar sign).

Environment (set by evolve inside the sandbox):
  EVOLVE_REPO            repository to fix            (default /testbed)
  EVOLVE_TASK_FILE       task JSON                    (default /evolve/task.json)
  EVOLVE_GATEWAY_SOCKET  model gateway, unix socket   (default /evolve/gateway.sock)
  EVOLVE_MODEL           model name for the gateway   (default "default")
  EVOLVE_OUTPUT_DIR      where trajectory.json goes   (default /evolve/output)
"""
import contextlib
import http.client
import json
import os
import re
import signal
import socket
import string
import subprocess
import sys
import time
import traceback
from pathlib import Path

NAME = "minimal"
HERE = Path(__file__).resolve().parent
REPO = os.environ.get("EVOLVE_REPO", "/testbed")
TASK_FILE = os.environ.get("EVOLVE_TASK_FILE", "/evolve/task.json")
SOCKET = os.environ.get("EVOLVE_GATEWAY_SOCKET", "/evolve/gateway.sock")
MODEL = os.environ.get("EVOLVE_MODEL", "default")
OUTPUT_DIR = Path(os.environ.get("EVOLVE_OUTPUT_DIR", "/evolve/output"))
SUBMIT = "COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT"
BASH_BLOCK = re.compile(r"```bash[ \t]*\n(.*?)\n?```", re.DOTALL)
CONFIG = json.loads((HERE / "config.json").read_text(encoding="utf-8"))


class Stop(Exception):
    """Ends the run in an orderly way; ``status`` becomes info.exit_status."""
    def __init__(self, status, message=""):
        super().__init__(message or status)
        self.status = status


def render(name, **values):
    text = (HERE / "prompts" / name).read_text(encoding="utf-8")
    return string.Template(text).safe_substitute(**values)


def truncate(text, limit):
    """Keep the head and tail of long output, with a marker for the middle."""
    if len(text) <= limit:
        return text
    head, tail = text[:limit // 2], text[len(text) - (limit - limit // 2):]
    return "%s\n... %d characters elided ...\n%s" % (head, len(text) - limit, tail)


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a unix socket: the sandbox has no network, only the gateway."""
    def __init__(self, path, timeout):
        super().__init__("gateway", timeout=timeout)
        self.socket_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.socket_path)


def query(messages):
    """One chat completion from evolve's gateway; raises Stop when it refuses."""
    body = json.dumps({"model": MODEL, "messages": messages, **CONFIG.get("model_params", {})})
    problem = ""
    for attempt in range(CONFIG.get("query_retries", 2) + 1):
        time.sleep(2 ** attempt - 1)  # 0s, 1s, 3s... before each retry
        try:
            conn = UnixHTTPConnection(SOCKET, CONFIG.get("query_timeout_s", 900))
            conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            status, raw = resp.status, resp.read()
            conn.close()
        except (OSError, http.client.HTTPException) as e:
            problem = "gateway unreachable: %s" % e
            continue
        try:
            payload = json.loads(raw.decode("utf-8", "replace"))
        except ValueError:
            payload = None
        payload = payload if isinstance(payload, dict) else {}
        if status == 200 and payload.get("choices"):
            return payload
        error = payload.get("error") if isinstance(payload.get("error"), dict) else {}
        kind = error.get("type", "")
        problem = "HTTP %d: %s" % (status, error.get("message") or raw[:500].decode("utf-8", "replace"))
        if status == 403 or kind == "limit_exceeded":
            raise Stop("limit_exceeded", problem)
        if kind == "context_window_exceeded":
            raise Stop("context_window_exceeded", problem)
        if status == 502 or kind in ("upstream_error", "model_error"):
            raise Stop(kind or "upstream_error", problem)
    raise Stop("gateway_error", problem)


def run(command):
    """Run one command in the repo; returns (returncode or None on timeout, output)."""
    env = dict(os.environ, **CONFIG.get("command_env", {}))
    proc = subprocess.Popen(["bash", "-c", command], cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=CONFIG["command_timeout_s"])
        return proc.returncode, out.decode("utf-8", "replace")
    except subprocess.TimeoutExpired:
        # The whole process group, not just bash; expected to be gone already if it ended just now.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        try:
            out, _ = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:  # a daemon escaped the group and holds the pipe
            out = b""
        return None, out.decode("utf-8", "replace")


def log(line):
    # Progress goes to evolve's harness.log; a closed pipe is expected at the end and must not stop the run.
    with contextlib.suppress(OSError):
        print(line, file=sys.stderr, flush=True)


def save(traj):
    """Write trajectory.json atomically, so evolve never reads half a file."""
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    tmp = OUTPUT_DIR / "trajectory.json.tmp"
    tmp.write_text(json.dumps(traj, indent=1, ensure_ascii=False), encoding="utf-8")
    os.replace(str(tmp), str(OUTPUT_DIR / "trajectory.json"))


def step(traj, messages):
    """Query the model once and act on its reply. Raises Stop when done."""
    info, cfg, started = traj["info"], CONFIG, time.time()
    if 0 < cfg["step_limit"] <= info["steps"]:
        raise Stop("step_limit")
    if 0 < cfg["cost_limit_usd"] <= info["cost_usd"]:
        raise Stop("cost_limit")
    payload = query(messages)
    usage = payload.get("evolve") or {}
    cost = float(usage.get("cost_usd") or 0.0)
    info["cost_usd"] = float(usage.get("total_cost_usd") or info["cost_usd"] + cost)
    info["steps"] += 1
    reply = payload["choices"][0].get("message", {}).get("content") or ""
    messages.append({"role": "assistant", "content": reply})
    record = {"step": info["steps"], "response": reply, "action": None, "returncode": None,
              "output": "", "cost_usd": cost}
    traj["steps"].append(record)

    actions = BASH_BLOCK.findall(reply)
    if len(actions) != 1:
        record["error"] = "format_error"
        observation = render("format_error.txt", count=len(actions))
    else:
        record["action"] = action = actions[0].strip()
        returncode, output = run(action)
        shown = truncate(output, cfg["observation_max_chars"])
        record.update(returncode=returncode, output=shown, seconds=round(time.time() - started, 3))
        if output.lstrip().split("\n", 1)[0].strip() == SUBMIT:
            info["submitted"] = True
            raise Stop("submitted")
        if returncode is None:
            record["error"] = "timeout"
            observation = render("timeout.txt", command=action, output=shown,
                                 timeout=cfg["command_timeout_s"])
        else:
            observation = render("observation.txt", returncode=returncode, output=shown)
    messages.append({"role": "user", "content": observation})
    record.setdefault("seconds", round(time.time() - started, 3))
    summary = (record["action"] or "<format error>").splitlines()[0][:100]
    log("step %d: %s -> %s" % (record["step"], summary, record["returncode"]))


def main():
    task = json.loads(Path(TASK_FILE).read_text(encoding="utf-8"))
    messages = [
        {"role": "system", "content": render("system.txt", command_timeout=CONFIG["command_timeout_s"])},
        {"role": "user", "content": render(
            "instance.txt", problem_statement=task["problem_statement"], repo=task.get("repo", ""),
            repo_dir=REPO, instance_id=task.get("instance_id", ""), step_limit=CONFIG["step_limit"],
            test_cmd=task.get("test_cmd") or "python3 -m pytest")},
    ]
    info = {"exit_status": None, "submitted": False, "steps": 0, "cost_usd": 0.0, "harness": NAME}
    traj = {"instance_id": task.get("instance_id"), "info": info, "messages": messages, "steps": []}
    code = 0
    try:
        while True:
            step(traj, messages)
            save(traj)
    except Stop as stop:
        info["exit_status"] = stop.status
        if str(stop) != stop.status:
            info["message"] = str(stop)
    except Exception as e:  # a bug in this harness: record it, exit non-zero
        info["exit_status"] = "error: %s" % type(e).__name__
        info["message"] = traceback.format_exc()
        code = 1
    save(traj)
    log("%s after %d steps, $%.4f" % (info["exit_status"], info["steps"], info["cost_usd"]))
    return code


if __name__ == "__main__":
    sys.exit(main())
