"""`evolve doctor` against the real machine: the real Docker engine (and a dead socket), real files,
real git projects; the real `evolve` command, text and JSON."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import SOLVER_SCRIPT
from ray_cluster import kill_session
from evolve.project import init_project

EVOLVE = str(Path(sys.executable).parent / "evolve")
NAMES = ["docker engine", "sandbox image", "disk (docker)", "disk (runs)", "api keys", "local model",
         "evolve.yaml", "models", "serve", "ray executor"]
KEY_ENV = [k for k in os.environ if k.endswith("_API_KEY")]


def doctor(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in KEY_ENV}
    return subprocess.run([EVOLVE, "doctor", *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**clean, "COLUMNS": "400", **env})


def checks_of(proc: subprocess.CompletedProcess) -> dict[str, dict]:
    data = json.loads(proc.stdout)
    return {c["name"]: c for c in data["checks"]}


def project(tmp_path: Path, **changes) -> Path:
    """A project made by `evolve init` with scripted models, ``changes`` merged into its evolve.yaml."""
    root = tmp_path / "proj"
    init_project(root)
    cfg = yaml.safe_load((root / "evolve.yaml").read_text())
    cfg["models"]["solver"]["model"] = cfg["models"]["optimizer"]["model"] = f"scripted/{SOLVER_SCRIPT}"
    cfg.update(changes)
    (root / "evolve.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return root


@pytest.mark.docker
def test_on_this_machine_every_check_passes_or_says_why_not(base_image, tmp_path):
    proc = doctor("--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(proc.stdout)
    assert data["ok"] is True
    assert [c["name"] for c in data["checks"]] == NAMES
    assert all(set(c) == {"name", "status", "detail", "fix"} and c["status"] in ("ok", "warn", "skip")
               for c in data["checks"])
    checks = checks_of(proc)
    assert checks["docker engine"]["status"] == "ok" and "usable by" in checks["docker engine"]["detail"]
    assert checks["sandbox image"]["status"] == "ok" and base_image in checks["sandbox image"]["detail"]
    assert checks["disk (docker)"]["status"] == "ok" and "GiB free" in checks["disk (docker)"]["detail"]
    assert checks["disk (runs)"]["status"] == "ok" and str(tmp_path) in checks["disk (runs)"]["detail"]
    assert checks["api keys"]["status"] == "warn" and checks["api keys"]["fix"]  # none set here
    for outside in ("evolve.yaml", "models", "serve", "ray executor"):
        assert checks[outside]["status"] == "skip"

    # The text form: the same checks, one line each.
    text = doctor(cwd=tmp_path)
    assert text.returncode == 0
    lines = text.stdout.strip().splitlines()
    assert [line.split(None, 1)[1].split(":")[0] for line in lines] == NAMES


def test_a_dead_docker_socket_fails_the_docker_check_with_its_fix(tmp_path):
    sock_path = tmp_path / "docker.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(sock_path))  # bound, never listening: connections are refused
    try:
        proc = doctor(cwd=tmp_path, DOCKER_HOST=f"unix://{sock_path}")
        as_json = doctor("--json", cwd=tmp_path, DOCKER_HOST=f"unix://{sock_path}")
    finally:
        dead.close()
    assert proc.returncode == 1, proc.stdout + proc.stderr
    line = next(line for line in proc.stdout.splitlines() if "docker engine" in line)
    assert line.startswith("FAIL") and str(sock_path) in line and "fix:" in line and "DOCKER_HOST" in line
    assert "Traceback" not in proc.stderr
    assert as_json.returncode == 1
    data = json.loads(as_json.stdout)
    checks = {c["name"]: c for c in data["checks"]}
    assert data["ok"] is False and checks["docker engine"]["status"] == "fail"
    assert "DOCKER_HOST" in checks["docker engine"]["fix"]
    assert checks["sandbox image"]["status"] == "skip" and checks["disk (docker)"]["status"] == "skip"


def test_api_keys_are_named_never_shown(tmp_path):
    secrets = {"ANTHROPIC_API_KEY": "sk-ant-do-not-print-4242", "MISTRAL_API_KEY": "mistral-do-not-print-99"}
    for args in ((), ("--json",)):
        proc = doctor(*args, cwd=tmp_path, **secrets)
        out = proc.stdout + proc.stderr
        assert "ANTHROPIC_API_KEY" in out and "MISTRAL_API_KEY" in out
        assert not any(value in out for value in secrets.values())
        assert not any(value[:8] in out for value in secrets.values())
    assert checks_of(proc)["api keys"]["status"] == "ok"


def test_a_project_is_checked_from_a_subdirectory(tmp_path):
    root = project(tmp_path)
    proc = doctor("--json", cwd=root / "harness")
    checks = checks_of(proc)
    assert checks["evolve.yaml"]["status"] == "ok" and str(root / "evolve.yaml") in checks["evolve.yaml"]["detail"]
    assert checks["models"]["status"] == "ok" and "scripted/" in checks["models"]["detail"]
    assert str(root / "runs") in checks["disk (runs)"]["detail"]
    # every role has a model: the embedded model is not needed, so at worst a warning
    assert checks["local model"]["status"] in ("ok", "warn")


def test_an_invalid_evolve_yaml_and_a_missing_script_fail_with_the_key_named(tmp_path):
    root = project(tmp_path, budget={"generations": -1})
    proc = doctor(cwd=root)
    assert proc.returncode == 1
    line = next(line for line in proc.stdout.splitlines() if line.split(None, 1)[1].startswith("evolve.yaml"))
    assert line.startswith("FAIL") and "budget.generations" in line and "fix:" in line

    cfg = yaml.safe_load((root / "evolve.yaml").read_text())
    cfg["budget"]["generations"] = 1
    cfg["models"]["solver"]["model"] = "scripted/no/such/script.yaml"
    (root / "evolve.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    proc = doctor("--json", cwd=root)
    checks = checks_of(proc)
    assert proc.returncode == 1 and checks["evolve.yaml"]["status"] == "ok"
    assert checks["models"]["status"] == "fail" and "no/such/script.yaml" in checks["models"]["detail"]


def test_a_gpu_backend_without_gpu_or_package_fails_and_llama_cpp_passes(tmp_path):
    root = project(tmp_path, serve={"backend": "vllm", "model": "Qwen/Qwen2.5-0.5B-Instruct"})
    checks = checks_of(doctor("--json", cwd=root))
    serve = checks["serve"]
    assert serve["status"] == "fail" and "vllm is not installed" in serve["detail"]
    assert "GPU" in serve["detail"] and "llama.cpp" in serve["fix"]

    (root / "evolve.yaml").unlink()
    root = project(tmp_path / "again", serve={"backend": "llama.cpp"})
    serve = checks_of(doctor("--json", cwd=root))["serve"]
    from evolve.serve import llama_cpp_available

    assert serve["status"] == ("ok" if llama_cpp_available() else "fail")


def test_a_ray_executor_is_checked_only_where_configured(tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = project(tmp_path, executor={"kind": "ray", "address": f"127.0.0.1:{port}"})
    proc = doctor("--json", cwd=root)
    ray = checks_of(proc)["ray executor"]
    assert proc.returncode == 1
    assert ray["status"] == "fail" and f"127.0.0.1:{port}" in ray["detail"] and ray["fix"]

    local = project(tmp_path / "local", executor={"kind": "local"})
    assert checks_of(doctor("--json", cwd=local))["ray executor"] == {
        "name": "ray executor", "status": "skip", "detail": "executor.kind: local", "fix": ""}


def test_version_names_evolve_python_litellm_and_docker_without_importing_litellm(tmp_path):
    proc = subprocess.run([EVOLVE, "--version"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "400"})
    assert proc.returncode == 0, proc.stderr
    import evolve

    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if not line.startswith("docker "))
    assert lines["evolve"].startswith(f"{evolve.__version__} (evolve-harness, ")
    assert lines["python"].startswith(sys.version.split()[0]) and lines["litellm"][0].isdigit()
    assert "docker engine " in proc.stdout
    child = subprocess.run([sys.executable, "-c", "import sys\nfrom evolve.doctor import versions\nversions()\n"
                            "assert 'litellm' not in sys.modules, 'litellm imported'"],
                           capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, child.stderr


def test_version_says_when_the_docker_engine_is_not_reachable(tmp_path):
    proc = subprocess.run([EVOLVE, "--version"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/none.sock"})
    assert proc.returncode == 0 and "docker engine not reachable" in proc.stdout


# -- a real Ray cluster: one head node in a session of its own, every port chosen here ----------------

def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@pytest.fixture
def ray_head(tmp_path_factory):
    """``address`` of a one-node Ray cluster offering ``evolve_sandbox: 1``; killed after the test."""
    import tempfile

    pytest.importorskip("ray")
    temp = Path(tempfile.mkdtemp(prefix="evdoc", dir="/tmp"))  # short: Ray's unix socket paths
    p = _free_ports(9)
    cmd = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--disable-usage-stats",
           f"--port={p[0]}", "--num-cpus=1", "--object-store-memory=80000000",
           "--resources", json.dumps({"evolve_sandbox": 1}), "--include-dashboard=false", f"--temp-dir={temp}",
           f"--node-manager-port={p[2]}", f"--object-manager-port={p[3]}",
           f"--dashboard-agent-listen-port={p[4]}", f"--dashboard-agent-grpc-port={p[5]}",
           f"--metrics-export-port={p[6]}", f"--runtime-env-agent-port={p[7]}", f"--min-worker-port={p[8]}",
           f"--max-worker-port={p[8] + 20}"]
    with open(temp / "head.log", "wb") as log:
        head = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=temp,
                                env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0",
                                     # no token, whatever ~/.ray holds: drivers connect as they are
                                     "RAY_AUTH_MODE": "disabled"})
    try:
        import time

        deadline = time.monotonic() + 180
        while "Ray runtime started" not in (temp / "head.log").read_text(errors="replace"):
            assert head.poll() is None and time.monotonic() < deadline, (temp / "head.log").read_text()[-3000:]
            time.sleep(0.5)
        # Ray's drivers turn 127.0.0.1 into the node's address: name the head as Ray itself does.
        ip = re.search(r"Local node IP: (\S+)", (temp / "head.log").read_text(errors="replace")).group(1)
        yield f"{ip}:{p[0]}"
    finally:
        kill_session(head.pid, tries=50)
        head.wait(timeout=60)
        import shutil

        shutil.rmtree(temp, ignore_errors=True)


def test_a_reachable_ray_cluster_with_sandbox_slots_passes(tmp_path, ray_head):
    root = project(tmp_path, executor={"kind": "ray", "address": ray_head})
    ray = checks_of(doctor("--json", cwd=root))["ray executor"]
    assert ray["status"] == "ok", ray
    assert ray["detail"] == f"{ray_head}: 1 CPUs, evolve_sandbox 1"


@pytest.mark.docker
def test_a_missing_image_says_whether_it_can_be_built_here(docker_client):
    from evolve.doctor import _docker_engine, check_image

    engine = _docker_engine()
    try:
        check = check_image(engine, tag="evolve-sandbox:no-such-recipe")
    finally:
        engine["client"].close()
    buildable = os.geteuid() == 0 and shutil.which("debootstrap") is not None
    assert check.status == ("warn" if buildable else "fail"), check
    assert "evolve sandbox build" in check.fix
    if not buildable:
        assert "needs" in check.detail


def test_too_little_disk_fails_with_its_fix(tmp_path):
    from evolve.doctor import check_disk

    ok = check_disk("disk (runs)", tmp_path / "runs" / "not-yet", min_free_gib=0)
    assert ok.status == "ok" and f"under {tmp_path}" in ok.detail
    full = check_disk("disk (runs)", tmp_path, min_free_gib=1e9)  # more than any disk here
    assert full.status == "fail" and "1e+09 GiB needed" in full.detail and "docker system prune" in full.fix


def test_text_from_evolve_yaml_is_printed_as_it_is_not_as_markup(tmp_path):
    root = project(tmp_path, **{"[bold]oops[/]": 1})
    proc = doctor(cwd=root)
    assert proc.returncode == 1 and "[bold]oops[/]: unknown key" in proc.stdout
