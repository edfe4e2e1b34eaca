#!/usr/bin/env python3
"""How much does evolve's memory grow while a harness floods its gateway, against a quiet harness?

Both sides run the real ``Evaluation`` in this process (real Docker, the real
gateway, the scripted model), one task of the test suite's mini eval set:

- quiet: the harness makes one chat call and exits;
- flood: the harness of ``tests/test_gateway_flood.py``: about 870 MB of
  request bodies (valid 600 kB calls past the trace cap, 3 MB invalid bodies,
  50 MB bodies over the body cap, misrouted bodies, requests past the call
  limit) and a burst of connections.

Before each evaluation the kernel's peak RSS of this process is reset
(``/proc/self/clear_refs``); the growth is the peak during the evaluation
minus the RSS at its start. After an uncounted quiet warm-up (imports, first
use of litellm), the sides alternate (Q F, then F Q, ...) for ``--rounds``
rounds. Printed: each side's median growth and median peak, the ratio of the
peaks flood/quiet, the growth per GB the harness sent, and the trace sizes
against the cap. It exits non-zero only when something broke (an ``infra``
result, a harness that did not report), never for a number.

    .venv/bin/python bench/gateway_flood.py [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "tests"))

from conftest import SOLVER_SCRIPT, build_mini_evalset  # noqa: E402
from test_gateway_flood import FLOOD, QUIET  # noqa: E402

from evolve.config import EvalSettings, Limits  # noqa: E402
from evolve.errors import EvolveError  # noqa: E402
from evolve.evalsets.registry import load_evalset  # noqa: E402
from evolve.evaluate import Evaluation  # noqa: E402
from evolve.harness import resolve_harness  # noqa: E402

LIMITS = Limits(max_calls=40, max_trace_bytes=2_000_000)


class BenchError(Exception):
    """Something broke: the comparison would be meaningless."""


def status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise BenchError(f"no {field} in /proc/self/status (Linux only)")


def make_harness(root: Path, name: str, script: str) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "harness.yaml").write_text(f"name: {name}\nentrypoint: python3 {name}.py\n")
    (d / f"{name}.py").write_text(script)
    return d


def run_once(evalset: Path, harness_dir: Path, runs: Path) -> dict:
    """One evaluation, measured: growth and peak in bytes, bytes the harness sent, trace bytes."""
    settings = EvalSettings(model=f"scripted/{SOLVER_SCRIPT}", harness_timeout_s=300, test_timeout_s=120,
                            limits=LIMITS)
    harness = resolve_harness(str(harness_dir), workdir=runs / "harnesses")
    ev = Evaluation(evalset=load_evalset(str(evalset)), split="search", harness=harness, settings=settings,
                    runs_dir=runs, workers=1, instance_ids=["mini__calc-1"], use_cache=False)
    Path("/proc/self/clear_refs").write_text("5")
    before = status_kb("VmRSS")
    report = ev.run()
    peak = status_kb("VmHWM")
    (result,) = report.results
    if result.is_infra:
        raise BenchError(f"{harness_dir.name}: infra result: {result.error}")
    task_dir = report.run_dir / "tasks" / "mini__calc-1" / "r0"
    try:
        sent = json.loads((task_dir / "trajectory.json").read_text()).get("sent_bytes", 0)
    except (OSError, ValueError) as e:
        raise BenchError(f"{harness_dir.name}: the harness left no report: {e}") from None
    trace = task_dir / "trace.jsonl"
    return {"growth": (peak - before) * 1024, "peak": peak * 1024, "sent": sent,
            "trace": trace.stat().st_size if trace.exists() else 0}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=2, help="counted quiet/flood pairs")
    args = p.parse_args()
    if args.rounds < 1:
        p.error("--rounds must be >= 1")
    from evolve.sandbox.docker import docker_client
    from evolve.sandbox.image import ensure_image

    with tempfile.TemporaryDirectory(prefix="evolve-bench-flood-") as tmp:
        root = Path(tmp)
        try:
            ensure_image(docker_client())
            evalset = build_mini_evalset(root / "evals" / "mini")
            quiet = make_harness(root, "quiet", QUIET)
            flood = make_harness(root, "flood", FLOOD)
            run_once(evalset, quiet, root / "runs-warmup")
            sides: dict[str, list[dict]] = {"quiet": [], "flood": []}
            for i in range(args.rounds):
                order = ["quiet", "flood"] if i % 2 == 0 else ["flood", "quiet"]
                for side in order:
                    m = run_once(evalset, quiet if side == "quiet" else flood, root / f"runs-{side}-{i}")
                    sides[side].append(m)
                    print(f"  round {i + 1} {side:5}: peak RSS {m['peak'] / 1e6:7.1f} MB, growth "
                          f"{m['growth'] / 1e6:6.1f} MB, harness sent {m['sent'] / 1e6:7.1f} MB, "
                          f"trace {m['trace'] / 1e6:5.2f} MB", flush=True)
        except (BenchError, EvolveError, OSError) as e:
            print(f"gateway_flood: error: {e}", file=sys.stderr)
            return 1

    def med(side: str, key: str) -> float:
        return statistics.median(m[key] for m in sides[side])

    gq, gf = med("quiet", "growth"), med("flood", "growth")
    pq, pf = med("quiet", "peak"), med("flood", "peak")
    sent = med("flood", "sent")
    print(f"gateway_flood: {args.rounds} rounds, alternating, after a quiet warm-up; limits: max_request_bytes "
          f"{LIMITS.max_request_bytes}, max_trace_bytes {LIMITS.max_trace_bytes}, max_connections "
          f"{LIMITS.max_connections}")
    print(f"  quiet: median RSS growth {gq / 1e6:6.1f} MB, median peak {pq / 1e6:7.1f} MB")
    print(f"  flood: median RSS growth {gf / 1e6:6.1f} MB, median peak {pf / 1e6:7.1f} MB, "
          f"harness sent {sent / 1e6:.0f} MB")
    print(f"  ratio of peak RSS flood/quiet: {pf / pq:.2f}")
    print(f"  RSS growth flood - quiet: {(gf - gq) / 1e6:.1f} MB, {(gf - gq) / max(sent, 1) * 1e3:.1f} MB per GB "
          "the harness sent")
    print(f"  largest trace: {max(m['trace'] for m in sides['flood']) / 1e6:.2f} MB "
          f"(cap {LIMITS.max_trace_bytes / 1e6:.2f} MB + one summary line per counted request)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
