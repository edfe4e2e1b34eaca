#!/usr/bin/env python3
"""What do harness environments cost? The build (cold and warm) and the per-task start-up.

1. Build: ``evolve.harness_env.prepare`` of the mini-swe-agent template's requirements for
   the base image, in a fresh ``$EVOLVE_HOME`` (cold: pip resolves and downloads the wheels,
   with pip's own HTTP cache off, then the offline install in a container), then again
   (warm: the cache answers). Each is timed with ``time.perf_counter`` around the call.
2. Start-up: the real ``Evaluation`` (Docker, gateway, grading; ``use_cache=False``) of one
   task of the test suite's mini eval set, with three harnesses that make no model call,
   rotated A B C, B C A, C A B ... after one uncounted warm-up round:
     A  stdlib: ``python3 -c "import json"`` (today's kind of harness);
     B  env:    the same entrypoint with the mini-swe-agent environment mounted (PATH, mount);
     C  import: the env, and ``python3 -c "import litellm, minisweagent.agents.default"``.
   The figure per side is the task's ``agent_seconds`` (sandbox start to outputs collected),
   median over ``--rounds``; it prints B-A (what the mount costs) and C-A (what a harness
   with dependencies pays per task before its first model call) and the ratios. Each
   entrypoint also prints its own CPU seconds (``time.process_time``), which a busy machine
   does not inflate the way it inflates wall time.

Exit status is non-zero only when something broke (an infra result, a harness that failed).

    python bench/harness_env.py                 # 5 rounds
    python bench/harness_env.py --rounds 3 --skip-build
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "tests")]


def build(home: Path) -> tuple[float, float, int]:
    from evolve.harness import resolve_harness, template_dir
    from evolve.harness_env import prepare
    from evolve.sandbox.docker import docker_client
    from evolve.sandbox.image import ensure_image

    client = docker_client()
    image = ensure_image(client)
    harness = resolve_harness(str(template_dir("mini-swe-agent")), workdir=home / "harnesses")
    os.environ["PIP_NO_CACHE_DIR"] = "1"
    try:
        t = time.perf_counter()
        env = prepare(client, harness, image, home=home)
        cold = time.perf_counter() - t
    finally:
        del os.environ["PIP_NO_CACHE_DIR"]
    t = time.perf_counter()
    prepare(client, harness, image, home=home)
    warm = time.perf_counter() - t
    size = sum(p.stat().st_size for p in env.root.rglob("*") if p.is_file() and not p.is_symlink())
    return cold, warm, size


CPU = 'print(\\"evolve-bench-cpu\\", time.process_time())'
"""The entrypoints' last statement (inside the shell's double quotes): its CPU seconds, in harness.log."""
HARNESSES = {
    "A stdlib": ("", f'python3 -c "import json, time; {CPU}"'),
    "B env": ("requirements_file: requirements.txt\n", f'python3 -c "import json, time; {CPU}"'),
    "C import": ("requirements_file: requirements.txt\n",  # as the template's agent.py sets them
                 "LITELLM_LOCAL_MODEL_COST_MAP=True MSWEA_SILENT_STARTUP=1 "
                 f'python3 -c "import time, litellm, minisweagent.agents.default; {CPU}"'),
}


def startup(rounds: int, work: Path) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    from conftest import build_mini_evalset

    from evolve.config import EvalSettings
    from evolve.evalsets.registry import load_evalset
    from evolve.evaluate import Evaluation
    from evolve.harness import resolve_harness, template_dir

    evalset = load_evalset(str(build_mini_evalset(work / "evals" / "mini")))
    reqs = (template_dir("mini-swe-agent") / "requirements.txt").read_text()
    harnesses = {}
    for name, (extra, entry) in HARNESSES.items():
        d = work / name.split()[0]
        d.mkdir()
        (d / "harness.yaml").write_text(f"name: bench-{name.split()[1]}\nentrypoint: '{entry}'\n{extra}")
        (d / "requirements.txt").write_text(reqs)
        harnesses[name] = resolve_harness(str(d), workdir=work / "snapshots")
    noop = work / "noop.yaml"
    noop.write_text("default: ['nothing']\n")
    settings = EvalSettings(model=f"scripted/{noop}", harness_timeout_s=300, test_timeout_s=120)
    names = list(HARNESSES)
    seconds: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds + 1):
        order = names[r % 3:] + names[:r % 3]
        for name in order:
            ev = Evaluation(evalset=evalset, split="search", harness=harnesses[name], settings=settings,
                            runs_dir=work / "runs", workers=1, instance_ids=["mini__calc-1"], use_cache=False)
            (res,) = ev.run().results
            if res.is_infra or res.harness_exit_code != 0:
                raise SystemExit(f"{name}: broke: exit {res.harness_exit_code}, {res.error}")
            if r:
                log = (ev.run_dir / "tasks" / res.instance_id / f"r{res.repeat}" / "harness.log").read_text()
                seconds[name].append(res.agent_seconds)
                cpu[name].append(float(log.split("evolve-bench-cpu", 1)[1].split()[0]))
    return seconds, cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--skip-build", action="store_true", help="only the start-up figures")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="evolve-bench-env-") as tmp:
        if not args.skip_build:
            cold, warm, size = build(Path(tmp) / "home")
            print(f"environment build (mini-swe-agent, {size / 1e6:.0f} MB installed): "
                  f"cold {cold:.1f} s (resolve + download + offline install), warm {warm:.2f} s (cached)")
        seconds, cpu = startup(args.rounds, Path(tmp))
    med = {n: statistics.median(v) for n, v in seconds.items()}
    for n, v in seconds.items():
        print(f"{n:9s} agent phase: median {med[n]:.2f} s  (min {min(v):.2f}, max {max(v):.2f}, n={len(v)}); "
              f"the entrypoint's CPU: median {statistics.median(cpu[n]):.2f} s")
    a = med["A stdlib"]
    print(f"mount only   B-A {med['B env'] - a:+.2f} s per task  (B/A {med['B env'] / a:.2f}x)")
    print(f"with imports C-A {med['C import'] - a:+.2f} s per task  (C/A {med['C import'] / a:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
