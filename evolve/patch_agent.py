"""Step 3 with ``optimizer.patch: agent``: a coding agent, driven by the optimizer model, patches the
harness inside a sandbox (the four-step cycle's "the agent modifies its own harness code", as in DGM).

The patch task-run is a solver task-run without grading: ``evolve.runner.run_agent``, the same agent
phase, container contract and gateway. What differs:

    /testbed              the parent commit's tree, minus the eval set, the runs folder and every
                          protected path outside the harness directory (``testbed_tree``)
    /evolve/context/      read-only: plan.md, analysis.md, lessons.md and failures/<instance_id>.md
                          (the failed tasks' statements, steps, model calls and test output, cut
                          as the analysis cuts them: ``evolve.analyze.collect_failures``)
    /evolve/task.json     its problem_statement: ``prompts/patch_agent.j2`` (the plan, where things are)
    /evolve/harness/      the agent: the parent harness (``optimizer.agent: self``), a template or a path

Model calls go container -> socket -> gateway -> the optimizer's backend (keys stay on the host),
with ``optimizer.limits``. The gateway's trace is kept as ``runs/<run>/patch_agent/gNNN/trace-N.jsonl``
(attempt N); ``Optimizer.charge`` summarizes each of its lines in ``optimizer_trace.jsonl`` (``"step":
"patch-agent"``, no bodies) and charges the usage to the optimizer, hence to the loop's ``Meter``. The
agent's ``model_patch`` is applied to the candidate's worktree by ``evolve.edits.diff.apply_diff`` (harness
directory and protected paths enforced). It is cached in the optimizer's cache, keyed by everything
the agent saw, so a resumed run does not pay for it twice.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from evolve import store
from evolve.analyze import Failure
from evolve.config import EvalSettings, ProjectConfig
from evolve.edits.diff import apply_diff
from evolve.edits.paths import _inside, protected_match
from evolve.errors import InfraError
from evolve.harness import Harness, resolve_harness, template_dir
from evolve.hostgit import Repo
from evolve.lessons import Lesson
from evolve.optimizer import Optimizer
from evolve.patch import PatchOutcome
from evolve.plan import Plan
from evolve.prompting import render
from evolve.recorder import kill_point
from evolve.types import Task

log = logging.getLogger(__name__)

CONTEXT_DIR = "/evolve/context"
"""Where the read-only context files are mounted in the patch agent's sandbox."""
STEP = "patch-agent"
"""The ``step`` of the patch agent's lines in ``optimizer_trace.jsonl``."""


@dataclass(frozen=True)
class PatchContext:
    """What the patch agent reads beside the plan: the analysis text, the failed tasks, the lessons."""

    analysis: str
    failures: list[Failure] = field(default_factory=list)
    lessons: list[Lesson] = field(default_factory=list)


def write_context(dest: Path, plan: Plan, ctx: PatchContext) -> None:
    """Write the context files into the new directory ``dest`` (world-readable: the sandbox user reads them)."""
    files = {"plan.md": render("patch_agent_context.j2", kind="plan", plan=plan),
             "analysis.md": ctx.analysis,
             "lessons.md": render("patch_agent_context.j2", kind="lessons", lessons=ctx.lessons)}
    for f in ctx.failures:
        files[f"failures/{_safe(f.instance_id)}.md"] = render("patch_agent_context.j2", kind="failure", f=f)
    dest.mkdir(parents=True, exist_ok=False)
    (dest / "failures").mkdir()
    for d in (dest, dest / "failures"):
        d.chmod(0o755)
    for name, text in files.items():
        path = dest / name
        path.write_text(text, encoding="utf-8")
        path.chmod(0o644)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)[:150] or "task"


def testbed_tree(repo: Path, commit: str, *, harness_dir: str, protected: list[str], hidden: list[str]) -> str:
    """The tree id of ``commit`` without the files the patch agent must not see: those under a
    repo-relative path (file or directory) of ``hidden`` (the eval set, the runs folder) and those matching a
    ``protected`` glob outside ``harness_dir``. Written to ``repo``'s object store (no ref, no index,
    no work tree is touched).

    Raises:
        HostGitError: git failed.
    """
    git = Repo(repo)
    names = [n for n in git.run("ls-tree", "-r", "--name-only", "-z", commit).decode("utf-8", "surrogateescape")
             .split("\0") if n]
    drop = [n for n in names if any(_inside(n, h) for h in hidden)
            or (not _inside(n, harness_dir) and protected_match(n, protected))]
    if not drop:
        return git.git("rev-parse", f"{commit}^{{tree}}")
    with _scratch() as tmp:
        env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        git.run("read-tree", commit, env=env)
        git.run("update-index", "--force-remove", "-z", "--stdin", env=env,
                input="\0".join(drop).encode("utf-8", "surrogateescape") + b"\0")
        return git.git("write-tree", env=env)


def hidden_paths(repo_root: Path, runs_dir: Path, evalset) -> list[str]:
    """Repo-relative paths the patch agent never sees (``testbed_tree``'s ``hidden``), when inside the
    repository at ``repo_root``: the runs folder ``runs_dir`` and the directory of ``evalset``
    (``evolve.evalsets.EvalSet``; only its split files and evalset.yaml when that is the repository's top)."""
    root = Path(os.path.realpath(repo_root))
    places = [runs_dir, evalset.root]
    if Path(os.path.realpath(evalset.root)) == root:
        places[1:] = [*evalset.files.values(), evalset.root / "evalset.yaml"]
    out = []
    for d in places:
        real = Path(os.path.realpath(d))
        if root in real.parents:
            out.append(real.relative_to(root).as_posix())
    return out


def _scratch():
    from evolve import owner

    return owner.temp_dir("patchindex")


class PatchAgent:
    """Runs the patch step as an agent (this module's docstring). One per ``Loop``.

    Args:
        cfg: the project's config (``optimizer``, ``sandbox``, ``harness``, ``protected_paths``).
        optimizer: the loop's optimizer: its backend answers the agent, its trace and usage get the calls.
        repo_root: the user's repository: commits are read from it; a named agent directory
            (``optimizer.agent``) is read from its work tree once, here, and snapshotted.
        run_dir: ``runs/<run>``; the patch task-runs' files go to ``run_dir/patch_agent/gNNN/``.
        run_id: labels the sandboxes.
        hidden: repo-relative paths (files or directories) never shown to the agent (the eval set, the runs folder).
        harness_workdir: where resolved harnesses are snapshotted.

    Raises:
        HarnessError: ``optimizer.agent`` names no harness (so a run fails at its start, not in every generation).
    """

    def __init__(self, cfg: ProjectConfig, optimizer: Optimizer, *, repo_root: Path, run_dir: Path, run_id: str,
                 hidden: list[str], harness_workdir: Path) -> None:
        self.cfg, self.optimizer, self.repo_root, self.run_dir = cfg, optimizer, repo_root, run_dir
        self.run_id, self.hidden, self.harness_workdir = run_id, hidden, harness_workdir
        backend = optimizer.client.backend
        self.settings = EvalSettings(model=backend.model, model_params=optimizer.params,
                                     harness_timeout_s=cfg.optimizer.timeout_s, limits=cfg.optimizer.limits,
                                     sandbox=cfg.sandbox)
        self.named = None if cfg.optimizer.agent == "self" else self._resolve(cfg.optimizer.agent)

    def agent(self, parent: Harness) -> Harness:
        """The harness that runs as the agent: ``parent`` for ``self``, else the named one."""
        return parent if self.named is None else self.named

    def _resolve(self, name: str) -> Harness:
        """A directory of the repository, else a template (a bare name), else a git ref (``REF:SUBDIR``)."""
        where = self.repo_root / name
        if not where.is_dir() and "/" not in name and ":" not in name:
            where = template_dir(name)
        return resolve_harness(str(where) if where.is_dir() else name, workdir=self.harness_workdir,
                               repo=self.repo_root)

    def patch(self, gen: int, plan: Plan, ctx: PatchContext, *, parent: str, parent_harness: Harness,
              worktree: Path, label: str | None = None) -> PatchOutcome:
        """Run the agent on the harness at commit ``parent`` and apply its ``model_patch`` to ``worktree``.
        ``label`` names its folder ``patch_agent/<label>/`` (default ``gNNN``; one per candidate when a
        generation makes several).

        Returns the outcome as ``evolve.patch.patch`` does (changed and refused files; ``feedback``
        says why nothing applied).

        Raises:
            InfraError: Docker or the gateway failed (the generation fails, not the candidate's fault).
            ModelError: the optimizer model cannot be called at all.
            HarnessError: the agent harness cannot be resolved or its environment built.
        """
        label = label or f"g{gen:03d}"
        harness_dir = self.cfg.harness.strip("/") or "."
        protected = self.cfg.protected_paths
        agent = self.agent(parent_harness)
        tree = testbed_tree(self.repo_root, parent, harness_dir=harness_dir, protected=protected, hidden=self.hidden)
        statement = render("patch_agent.j2", plan=plan, harness_dir=harness_dir, protected_paths=protected,
                           context_dir=CONTEXT_DIR, failures=ctx.failures)
        key = hashlib.sha256(json.dumps([self.settings.fingerprint(), tree, agent.tree_hash, statement,
                                         asdict(plan), ctx.analysis, [asdict(f) for f in ctx.failures],
                                         [l.model_dump() for l in ctx.lessons]], sort_keys=True, default=str)
                             .encode()).hexdigest()
        cached = self.optimizer.cache_dir / f"{STEP}-{key}.json"
        if cached.exists():
            done = json.loads(cached.read_text())
            model_patch, problem = base64.b64decode(done["model_patch_b64"]), done.get("patch_problem")
        else:
            model_patch, problem = self._run(label, plan, ctx, tree, statement, agent)
            store.atomic_write_json(cached, {"step": STEP, "gen": gen, "label": label,
                                             "model_patch_b64": base64.b64encode(model_patch).decode(),
                                             "patch_problem": problem})
            kill_point("patch-cached", gen)  # test-only: a kill here must not cost a second agent run
        report = apply_diff(worktree, harness_dir, model_patch, protected)
        outcome = PatchOutcome(changed_files=report.changed_files, refused=report.refused)
        if not report.changed_files:
            outcome.feedback.append("; ".join(report.failed) if report.failed else
                                    f"the agent's diff was not kept: {problem}" if problem else
                                    "the agent's model_patch changed no file" if not model_patch.strip() else
                                    "the agent's model_patch changed no allowed file")
            outcome.feedback[-1] += f" (its files: {self.run_dir.name}/patch_agent/{label}/)"
        return outcome

    def _run(self, label: str, plan: Plan, ctx: PatchContext, tree: str, statement: str,
             agent: Harness) -> tuple[bytes, str | None]:
        """One patch task-run (the agent phase only, retried on infrastructure failures as a task-run's
        is: ``evolve.taskrun.MAX_ATTEMPTS``): (its model_patch, why it was not kept or None). Files go to
        ``patch_agent/<label>/``: context/, trace-N.jsonl (attempt N), trajectory.json, harness.log,
        model.patch, run.json. Its containers are labelled ``<run id>-patch-<label>`` and all gone on return."""
        from evolve.retry import retrying
        from evolve.runner import run_agent
        from evolve.sandbox.docker import Sandbox, docker_client, sweep_run, wait_removals
        from evolve.taskrun import MAX_ATTEMPTS, RETRY_PAUSE_S, agent_env, task_images

        out = self.run_dir / "patch_agent" / label
        if out.exists():  # a redone generation: the killed attempt's files go
            import shutil

            shutil.rmtree(out)
        write_context(out / "context", plan, ctx)
        task = Task.model_construct(  # never graded: it has no FAIL_TO_PASS, so it skips the validation that wants one
            instance_id=f"evolve-patch-{label}", repo=self.repo_root.name, base_commit=tree,
            problem_statement=statement, patch="", test_patch="", FAIL_TO_PASS=[], PASS_TO_PASS=[], image=None,
            test_cmd=None, repo_path=None)
        client, box_label = docker_client(), f"{self.run_id}-patch-{label}"
        try:
            (image,) = task_images(client, [task], "patch").values()
            agent_ref, env = agent_env(client, agent, image, self.settings)
            mounts = {str((out / "context").resolve()): f"{CONTEXT_DIR}:ro", **(env.mounts() if env else {})}

            def sandbox(extra: dict[str, str] | None = None) -> Sandbox:
                return Sandbox(client, agent_ref, run_id=box_label, limits=self.settings.sandbox,
                               mounts={**(extra or {}), **mounts})

            for attempt in retrying(f"the patch agent of {label}", retry_on=InfraError, attempts=MAX_ATTEMPTS,
                                    logger=log, base_s=RETRY_PAUSE_S):
                with attempt:
                    trace, run = out / f"trace-{attempt.retry_state.attempt_number}.jsonl", None
                    try:
                        run = run_agent(sandbox, task, self.repo_root, agent, self.optimizer.client.backend,
                                        self.settings, trace, harness_env=env)
                    finally:  # the gateway's count; when run_agent raised, what its trace records
                        self.optimizer.charge(run.usage if run is not None else _usage_of(trace), trace, STEP)
                    if run.infra_errors:
                        raise InfraError("gateway", f"the patch agent's gateway: {run.infra_errors[-1]}")
        finally:
            wait_removals(box_label)  # removed in the background by run_agent
            sweep_run(client, box_label)
            client.close()
        for name, data in (("model.patch", run.model_patch), ("harness.log", run.harness_log.encode()),
                           ("trajectory.json", run.trajectory or b"")):
            (out / name).write_bytes(data)
        store.atomic_write_json(out / "run.json", {
            "exit_code": run.exit_code, "timed_out": run.timed_out, "seconds": run.seconds,
            "usage": run.usage.model_dump(), "patch_bytes_total": run.patch_bytes_total,
            "patch_problem": run.patch_problem, "flags": [f.value for f in run.flags], "notes": run.notes})
        return (b"", run.patch_problem) if run.patch_problem is not None else (run.model_patch, None)


def _usage_of(trace: Path):
    """The usage the gateway's ``trace`` records (every line with a ``usage``); the gateway's own
    count is lost when ``run_agent`` raises, so the trace is what is charged."""
    from evolve.types import Usage

    total = Usage()
    for rec in store.read_jsonl(trace, fix="The patch agent's cost cannot be counted; delete that line."):
        if "call" not in rec:
            continue
        usage = rec.get("usage") if isinstance(rec.get("usage"), dict) else {}
        total = total.add(Usage(calls=1, prompt_tokens=int(usage.get("prompt_tokens") or 0),
                                completion_tokens=int(usage.get("completion_tokens") or 0),
                                cost_usd=float(rec.get("cost_usd") or 0.0),
                                errors=int(rec.get("status", 200) != 200)))
    return total
