# evolve synth: install a project's test environment into this container, offline (run as root).
# Wheels are at /tmp/evolve-wheels (resolved on the host; pip's own wheel in _installer/), the project at /testbed, the
# requirements in /tmp/evolve-testenv/requirements.txt, the optional setup command in
# /tmp/evolve-testenv/setup.sh. Each step prints "EVOLVE-STEP <name>" first, so a failure names it.
set -eu
W=/tmp/evolve-wheels
E=/tmp/evolve-testenv
export PIP_NO_INDEX=1 PIP_FIND_LINKS=$W PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 \
       PIP_BREAK_SYSTEM_PACKAGES=1 PIP_ROOT_USER_ACTION=ignore PIP_NO_CACHE_DIR=1
# The tree comes with mtime 0 (a reproducible tar); zip, hence every wheel builder, refuses dates before 1980.
find /testbed -exec touch -c -h -d '1980-01-02 00:00:00' {} +
echo "EVOLVE-STEP pip"
python3 "$(ls $W/_installer/pip-*.whl | head -1)/pip" install -q "$(ls $W/_installer/pip-*.whl | head -1)"
echo "EVOLVE-STEP requirements"
if [ -s $E/requirements.txt ]; then python3 -m pip install -q -r $E/requirements.txt; fi
touch $E/stamp
sleep 1
echo "EVOLVE-STEP install"
cd /testbed
if [ -f pyproject.toml ] || [ -f setup.py ] || [ -f setup.cfg ]; then
  python3 -m pip install -q --no-build-isolation -e .
fi
if [ -s $E/setup.sh ]; then
  echo "EVOLVE-STEP setup"
  sh -eu $E/setup.sh
fi
echo "EVOLVE-STEP generated"
# Files the install or the setup command wrote into the tree (setuptools-scm's _version.py,
# *.egg-info...): the host adds them to the project, so every snapshot has them.
find . -newer $E/stamp -type f ! -path './.git/*' ! -path '*/__pycache__/*' ! -name '*.pyc' ! -path './build/*' \
  | sed 's|^\./||' | sort > $E/generated.txt
tar -cf $E/generated.tar -T $E/generated.txt
rm -rf $W
chown -R 1000:1000 /testbed
echo "EVOLVE-STEP done"
