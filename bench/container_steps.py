#!/usr/bin/env python3
"""Where a task-run's container CPU goes, step by step, in real task-runs.

Runs the real ``Evaluation`` in this process (Docker, gateway, grading; no-op harness, the mini eval
set replicated to ``--tasks``, 1 worker, ``--rounds`` evaluations) with marks added to the text of
the sandbox scripts as they are read (``evolve.testbed.script`` wrapped at runtime; nothing in
evolve/ changes). A mark is one shell ``read`` of the container's cgroup CPU counter
(``cpuacct.usage``, cgroup v1) appended to ``/tmp/.marks`` in the container: no process is started
for it. Just before docker-py removes a container, the bench reads the marks and the cgroup's
final count, and charges each step the CPU from its mark to the next:

- agent container: start (container start, the exec's start, unpacking the archive), ``agent.sh``,
  ``bridge_start.sh`` (the loopback bridge's Python), ``entrypoint.sh`` (the harness, here ``true``),
  ``reap.sh`` (``kill_all``, waiting for zombies, the PID-1 freezer's Python), ``collect.sh``
  (find, ``git add``, the noise listing, ``git diff``, the output files), ``print_collected.sh``;
- grading container: start, the neutraliser (Python, ``git ls-tree``, hashing), its frame, the
  test_patch, the plugin's install and channel, the tests (pytest with evolve's plugin), the
  channel's frame.

Prints per step the median and minimum milliseconds over all task-runs. Measured inside each
container, so load from other processes moves the figures less than wall times, but not to zero.
Compare trees by running this file with ``PYTHONPATH`` set to each.

    python bench/container_steps.py [--tasks N] [--rounds R]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_overhead import SPLIT, BenchError, Setup  # noqa: E402
from eval_scaling import _container_cpu  # noqa: E402

_MARK = 'read __u < /sys/fs/cgroup/cpuacct/cpuacct.usage; echo "%s $__u" >> /tmp/.marks 2>/dev/null\n'
_RESET = ": > /tmp/.marks; chmod 666 /tmp/.marks\n"
"""The first mark of each container's root script makes the file the sandbox user's steps append to."""

# (script, text the mark goes before, step name); a None text marks the script's start.
_MARKS = [
    ("agent.sh", None, "agent.sh"),
    ("bridge_start.sh", None, "bridge_start.sh"),
    ("entrypoint.sh", None, "harness (entrypoint.sh)"),
    ("reap.sh", None, "reap: kill_all"),
    ("reap.sh", "scope=0\n", "reap: zombies"),
    ("reap.sh", '  f="$evolve_private/freeze.out"', "reap: PID-1 freezer"),
    ("reap.sh", '  kill -STOP "$main"', "reap: the rest"),
    ("collect.sh", None, "collect: set-up"),
    ("collect.sh", "# Untracked (not", "collect: find"),
    ("collect.sh", "ok=1\n", "collect: large files"),
    ("collect.sh", "if [ $ok = 1 ]; then\n  if [ -s", "collect: git add"),
    ("collect.sh", "# What running code", "collect: noise listing"),
    ("collect.sh", "if [ $ok = 1 ]; then\n  shadow_git diff --cached --binary", "collect: git diff"),
    ("collect.sh", "# CAP is one", "collect: output files"),
    ("print_collected.sh", None, "print_collected.sh"),
    ("grade.sh", None, "grade.sh"),
    ("grade.sh", "mark neutralise\n", "neutraliser"),
    ("grade.sh", "frame neutral <", "frame of its report"),
    ("grade.sh", 'if [ "$evolve_apply_test" = 1 ]', "test_patch"),
    ("grade.sh", "installed=0\n", "plugin install, channel"),
    ("grade.sh", "mark tests\n", "tests"),
    ("grade.sh", "kill_all\nmark exit", "kill_all"),
    ("grade.sh", "mark exit $rc", "frame of the records"),
]


def _with_marks(original):
    def script(name: str) -> str:
        text = original(name)
        for file, before, step in _MARKS:
            if file != name:
                continue
            mark = _MARK % step.replace(" ", "~")
            if before is None:
                text = (_RESET if name in ("agent.sh", "grade.sh") else "") + mark + text
            elif before in text:
                text = text.replace(before, mark + before, 1)
            else:
                raise BenchError(f"{name} no longer holds {before!r}: update the bench's marks")
        return text
    return script


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", type=int, default=8)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()

    import docker.api.container

    import evolve.grading
    import evolve.runner
    import evolve.testbed
    from evolve.config import EvalSettings
    from evolve.evalsets.registry import load_evalset
    from evolve.evaluate import Evaluation
    from evolve.harness import resolve_harness

    script = _with_marks(evolve.testbed.script.__wrapped__)
    for module in (evolve.testbed, evolve.runner, evolve.grading):
        module.script = script
    rows: dict[str, list[dict[str, float]]] = {"agent": [], "grading": []}
    orig_remove = docker.api.container.ContainerApiMixin.remove_container

    def remove_container(self, container, *a, **kw):
        cid = container["Id"] if isinstance(container, dict) else str(container)
        try:
            agent = bool((self.inspect_container(cid).get("HostConfig") or {}).get("Binds"))
            end = _container_cpu(cid)
            out = self.exec_start(self.exec_create(cid, ["cat", "/tmp/.marks"], user="root")["Id"]).decode()
        except docker.errors.DockerException:
            end, out = None, ""
        marks = [(w[0].replace("~", " "), int(w[1]) / 1e6) for w in (line.split() for line in out.splitlines())
                 if len(w) == 2 and w[1].isdigit()]
        if end is not None and marks:
            steps: dict[str, float] = {}
            for (name, t), (_, t2) in zip([("start", 0.0)] + marks, marks + [("", end * 1000)]):
                steps[name] = steps.get(name, 0.0) + t2 - t
            steps["whole container"] = end * 1000
            rows["agent" if agent else "grading"].append(steps)
        return orig_remove(self, container, *a, **kw)

    docker.api.container.ContainerApiMixin.remove_container = remove_container
    work = Path(tempfile.mkdtemp(prefix="container-steps-"))
    try:
        setup = Setup(work / "setup", args.tasks, 1)
        for _ in range(args.rounds):
            with tempfile.TemporaryDirectory(dir=work) as tmp:
                h = resolve_harness(str(setup.harness), workdir=Path(tmp) / "harnesses")
                report = Evaluation(evalset=load_evalset(str(setup.evalset)), split=SPLIT, harness=h,
                                    settings=EvalSettings(model=f"scripted/{setup.script}"), runs_dir=Path(tmp),
                                    workers=1, use_cache=False).run()
            if any(r.failure_class == "infra" for r in report.results):
                raise BenchError("a task was infra")
    except BenchError as e:
        print(f"container_steps: {e}", file=sys.stderr)
        return 1
    finally:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    print(f"container CPU per step, ms (PYTHONPATH {os.environ.get('PYTHONPATH', '-')}, load average "
          f"{os.getloadavg()[0]:.1f}):")
    for side, rs in rows.items():
        print(f"  {side} container ({len(rs)} task-runs)        median      min")
        for step in dict.fromkeys(k for r in rs for k in r):
            vals = [r.get(step, 0.0) for r in rs]
            print(f"    {step:30} {statistics.median(vals):7.1f} {min(vals):8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
