# Builds a harness environment (evolve.harness_env) as the sandbox user in a container with no network:
# a venv at $evolve_env made by the image's own python3, filled from the wheelhouse mounted
# read-only at $evolve_wheels by pip run from its wheel ($evolve_installer), with no index.
# pip installs wheels only (--only-binary): no package's code runs. `pip check` then verifies the
# dependencies, and the venv's interpreter prints its version last.
set -e
umask 022
python3 -m venv --without-pip "$evolve_env"
"$evolve_env/bin/python" "$evolve_wheels/$evolve_installer/pip" install --no-index --only-binary=:all: \
  --find-links "$evolve_wheels" --no-cache-dir --disable-pip-version-check --no-input --progress-bar=off \
  -r "$evolve_wheels/requirements.txt"
"$evolve_env/bin/python" "$evolve_wheels/$evolve_installer/pip" check --disable-pip-version-check
"$evolve_env/bin/python" -c 'import sys; print("evolve-env-python", "%d.%d.%d" % sys.version_info[:3])'
