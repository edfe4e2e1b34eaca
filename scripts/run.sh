#!/usr/bin/env bash
# The main job on the embedded defaults, from a fresh machine:
#   1. set everything up (scripts/setup.sh: .venv, Docker, sandbox image, the embedded local model);
#   2. build the demo eval set: 3 projects of the default recipe, 8 tasks each (skipped when built);
#      the full default set (15 projects, up to 255 tasks) is
#      `evolve evals build default`, built when you want it, not before the demo's first generation;
#   3. make a demo project with `evolve init` (runs/demo, git-ignored; kept between runs);
#   4. `evolve run` on it: solver and optimizer are the embedded SmolLM2-135M served by llama.cpp.
# That model proves the whole path (HTTP, tokens, traces, verdicts), not quality: expect 0% resolved.
# Point both roles at a capable model in runs/demo/evolve.yaml (README: Models) for real gains.
# Extra arguments go to `evolve run`, e.g. `bash scripts/run.sh --generations 5`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
EVOLVE="$PWD/.venv/bin/evolve"

DEMO_EVALS="$(.venv/bin/python -c 'from evolve.evalsets.registry import evolve_home; print(evolve_home() / "evals" / "demo")')"
if ! "$EVOLVE" evals show demo >/dev/null 2>&1; then
  "$EVOLVE" evals build default --projects parse,xmltodict,toolz --per-project 8 --out "$DEMO_EVALS"
fi

DEMO="${EVOLVE_DEMO_DIR:-runs/demo}"
if [ ! -f "$DEMO/evolve.yaml" ]; then
  "$EVOLVE" init "$DEMO" --template minimal
  # Sized for a 135M model on 2 CPU cores: a 4-task subset of the demo set's search split (its holdout
  # split has about 7 tasks), few short calls per task.
  .venv/bin/python - "$DEMO/evolve.yaml" <<'PY'
import sys, yaml
path = sys.argv[1]
cfg = yaml.safe_load(open(path))
cfg["models"]["solver"].update(max_tokens=256)
cfg["models"]["optimizer"].update(max_tokens=768)
cfg["evals"].update(name="demo", max_tasks=4, workers=2, harness_timeout_s=900, test_timeout_s=600)
cfg["limits"].update(max_calls=5)
cfg["budget"].update(generations=2)
open(path, "w").write(yaml.safe_dump(cfg, sort_keys=False))
PY
  git -C "$DEMO" add evolve.yaml
  git -C "$DEMO" -c user.name=evolve -c user.email=evolve@localhost commit -qm "demo settings for the embedded model"
fi
cd "$DEMO"
exec "$EVOLVE" run "$@"
