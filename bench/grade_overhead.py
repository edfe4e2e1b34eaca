#!/usr/bin/env python3
"""What evolve's grading plugin costs a test suite: plain pytest against the plugin before and after a change.

One sandbox container (the base image, network none, init) holds a project of the default recipe
(its pinned sdist, unpacked as ``evolve evals build`` does) and two copies of
``evolve/sandbox/scripts/grade_plugin.py``: "before" (``git show REV:...``, default the last
commit before the plugin's per-test cost was cut) and "after" (this work tree's file). Each round
runs the project's suite three times, in a rotated order: plain pytest, pytest with the plugin
before, pytest with the plugin after. The plugin sides get the channel the grader gives it (a
descriptor on a file, a token file naming a changed source file, so the audit hook is live),
loaded with ``-p`` as the grader does. Each run is timed as the CPU seconds (user + system) of
the pytest process, read with ``os.times`` by a small parent inside the container, so
interpreter start-up and collection count on every side.

Prints per side the median CPU seconds, the ratios of medians before/plain, after/plain,
after/before, and the median of the per-round ratios. Exits non-zero only when something broke:
sides that disagree on the test outcomes, a plugin side without its start and end records, or a
tamper record (the suite is the project's own and does no tampering). Never for a ratio.

    .venv/bin/python bench/grade_overhead.py [--projects six,boltons] [--rounds 7] [--before REV]

Needs the Docker engine, the base image (``evolve sandbox build``) and the sdists (downloaded from
PyPI with pip on first use, into ``$EVOLVE_HOME/cache/sdists``). six (200 tests) takes about 30
seconds at the defaults on 2 cores.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from evolve.sandbox.docker import docker_client, run_labels  # noqa: E402
from evolve.sandbox.image import ensure_image  # noqa: E402
from evolve.synth.build import fetch_sdist, load_recipe, sdist_cache, unpack_sdist  # noqa: E402

PLUGIN = "evolve/sandbox/scripts/grade_plugin.py"
BEFORE = "d0cfc102774b06559121860daa90350319711638"
"""The plugin as measured at 1.28x on six (each test's namespace check raised thousands of audit events)."""

# Runs one side inside the container; prints "cpu=<s> wall=<s> rc=<rc>" and the last line of pytest.
RUNNER = r'''
import os, subprocess, sys, tempfile, time
side, project, changed = sys.argv[1], sys.argv[2], sys.argv[3]
os.chdir(project)
cmd = ["python3", "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir=.", "-o", "addopts="]
env = dict(os.environ)
paths = ["src"] if os.path.isdir("src") else []
fds = ()
if side != "plain":
    tmp = tempfile.mkdtemp()
    with open(tmp + "/t", "wb") as f:
        f.write(b"bench-nonce\n" + os.path.abspath(changed).encode() + b"\0" + b"1-40" + b"\0")
    out = os.open(tmp + "/out", os.O_WRONLY | os.O_CREAT, 0o600)
    env["EVOLVE_GRADE_CHANNEL"] = "%d %s/t" % (out, tmp)
    paths.append("/bench/plugin_" + side)
    cmd += ["-p", "evolve_grade_bench"]
    fds = (out,)
if paths:
    env["PYTHONPATH"] = os.pathsep.join(paths)
start = time.perf_counter()
proc = subprocess.run(cmd, env=env, pass_fds=fds, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
wall = time.perf_counter() - start
t = os.times()
lines = proc.stdout.decode(errors="replace").strip().splitlines()
print("cpu=%.4f wall=%.4f rc=%d" % (t.children_user + t.children_system, wall, proc.returncode))
print(lines[-1] if lines else "")
if side != "plain":
    records = [l for l in open(tmp + "/out") if l.strip()]
    kinds = [__import__("json").loads(l)["t"] for l in records]
    print("records start=%d end=%d tamper=%d reports=%d" % (kinds.count("start"), kinds.count("end"),
          kinds.count("tamper"), kinds.count("report")))
    for l in records:
        if '"tamper"' in l:
            print(l.strip())
'''


def tar_bytes(files: dict[str, bytes], root: Path | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        if root is not None:
            tar.add(str(root), arcname="project")
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def changed_file(root: Path) -> Path:
    """The project's largest non-test module: the file a patch would change."""
    mods = [p for p in root.rglob("*.py") if "test" not in p.name and "test" not in p.parts[-2]
            and "doc" not in str(p.relative_to(root)) and p.name not in ("setup.py", "conftest.py")]
    return max(mods, key=lambda p: p.stat().st_size)


def run_side(container, side: str, changed: str) -> dict:
    rc, out = container.exec_run(["python3", "/bench/runner.py", side, "/bench/project", changed])
    text = out.decode(errors="replace").strip().splitlines()
    if rc != 0 or not text or not text[0].startswith("cpu="):
        raise SystemExit(f"{side}: the runner failed: {out.decode(errors='replace')[-2000:]}")
    fields = dict(f.split("=") for f in text[0].split())
    rec = {"cpu": float(fields["cpu"]), "wall": float(fields["wall"]), "rc": int(fields["rc"]),
           "summary": text[1] if len(text) > 1 else ""}
    if side != "plain":
        rec["records"] = text[2] if len(text) > 2 else ""
        rec["tamper"] = text[3:]
    return rec


def bench_project(client, image: str, name: str, plugins: dict[str, bytes], rounds: int) -> dict:
    recipe = load_recipe(REPO_ROOT / "evolve" / "recipes" / "default.yaml")
    spec = next((p for p in recipe.projects if p.name == name), None)
    if spec is None:
        raise SystemExit(f"{name} is not a project of the default recipe")
    sdist = fetch_sdist(spec, sdist_cache())
    with tempfile.TemporaryDirectory() as tmp:
        root = unpack_sdist(sdist, Path(tmp) / "src")
        changed = "/bench/project/" + str(changed_file(root).relative_to(root))
        files = {"runner.py": RUNNER.encode()}
        for side, src in plugins.items():
            files[f"plugin_{side}/evolve_grade_bench.py"] = src
        archive = tar_bytes(files, root)
    # Labelled as evolve's own, so a bench killed midway leaves nothing `evolve`'s sweep does not remove.
    container = client.containers.run(image, ["sleep", "infinity"], detach=True, network_mode="none", init=True,
                                      working_dir="/bench", labels=run_labels("bench-grade-overhead"))
    try:
        container.exec_run(["mkdir", "-p", "/bench"])
        container.put_archive("/bench", archive)
        sides = ["plain", "before", "after"]
        for side in sides:  # warm-up (bytecode caches), uncounted
            run_side(container, side, changed)
        runs: dict[str, list[dict]] = {s: [] for s in sides}
        for r in range(rounds):
            order = sides[r % 3:] + sides[:r % 3]
            for side in order:
                runs[side].append(run_side(container, side, changed))
    finally:
        container.remove(force=True)
    broke = []
    summaries = {s: {x["summary"].split(" in ")[0] for x in runs[s]} for s in sides}
    if len(set().union(*summaries.values())) != 1:
        broke.append(f"the sides' test outcomes differ: {summaries}")
    for side in ("before", "after"):
        for x in runs[side]:
            if "start=1 end=1 tamper=0" not in x["records"]:
                broke.append(f"{side}: {x['records']} {x['tamper'][:3]}")
                break
    med = {s: statistics.median(x["cpu"] for x in runs[s]) for s in sides}
    paired = {k: statistics.median(runs[a][i]["cpu"] / runs[b][i]["cpu"] for i in range(rounds))
              for k, (a, b) in {"before/plain": ("before", "plain"), "after/plain": ("after", "plain"),
                                "after/before": ("after", "before")}.items()}
    return {"project": name, "changed": changed, "summary": runs["plain"][0]["summary"], "median_cpu_s": med,
            "ratio_of_medians": {"before/plain": med["before"] / med["plain"],
                                 "after/plain": med["after"] / med["plain"],
                                 "after/before": med["after"] / med["before"]},
            "median_paired_ratio": paired, "broke": broke}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--projects", default="six", help="comma-separated projects of the default recipe")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--before", default=BEFORE, help="git revision of the plugin to compare against")
    ap.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = ap.parse_args()
    before = subprocess.run(["git", "-C", str(REPO_ROOT), "show", f"{args.before}:{PLUGIN}"],
                            capture_output=True, check=True).stdout
    plugins = {"before": before, "after": (REPO_ROOT / PLUGIN).read_bytes()}
    client = docker_client()
    image = ensure_image(client)
    failed = False
    for name in args.projects.split(","):
        res = bench_project(client, image, name.strip(), plugins, args.rounds)
        m, r, p = res["median_cpu_s"], res["ratio_of_medians"], res["median_paired_ratio"]
        print(f"{res['project']}: {res['summary']} ({args.rounds} rounds, changed file {res['changed']})")
        print(f"  median CPU s: plain {m['plain']:.3f}  before {m['before']:.3f}  after {m['after']:.3f}")
        for k in ("before/plain", "after/plain", "after/before"):
            print(f"  {k:13s} ratio of medians {r[k]:.3f}   median of paired ratios {p[k]:.3f}")
        for b in res["broke"]:
            print("  BROKE:", b)
            failed = True
        if args.json:
            print(json.dumps(res))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
