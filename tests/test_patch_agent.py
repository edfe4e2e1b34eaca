"""`optimizer.patch: agent`: the patch step as a coding agent in a sandbox (evolve.patch_agent).

The end-to-end test runs the real loop (analyze, plan, patch, git, run files) with the scripted
optimizer (tests/fixtures/patch_agent/optimizer.yaml: its words only) driving the parent harness
itself (the minimal template, `agent: self`) in real Docker through the real gateway; evaluation
goes through the loop's seam (``MarkerEvaluator``), so only the patch task-runs use Docker.
The other tests apply diffs with real git, no Docker.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import FIXTURES, WIDE_MARKER
from loop_support import MarkerEvaluator, make_project

from evolve.edits.diff import apply_diff
from evolve.patch_agent import testbed_tree as filtered_tree

OPTIMIZER = FIXTURES / "patch_agent" / "optimizer.yaml"
PROTECTED = ["evolve.yaml", "evals/**", "**/harness.yaml"]


def git(cwd: Path, *args: str, input: bytes | None = None) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, input=input,
                          capture_output=True, check=True).stdout.decode()


@pytest.fixture
def repo(tmp_path) -> Path:
    r = tmp_path / "r"
    (r / "harness").mkdir(parents=True)
    (r / "evals").mkdir()
    (r / "harness" / "agent.py").write_text("print('hi')\n")
    (r / "harness" / "harness.yaml").write_text("name: h\nentrypoint: python3 agent.py\n")
    (r / "evals" / "tasks.jsonl").write_text("{}\n")
    (r / "evolve.yaml").write_text("harness: harness\n")
    (r / "README").write_text("readme\n")
    git(r, "init", "-q")
    git(r, "add", "-A")
    git(r, "commit", "-qm", "init")
    return r


def diff_of(r: Path, change) -> bytes:
    """The diff ``change(r)`` makes to the work tree (as the sandbox takes it), then the tree reset."""
    change(r)
    git(r, "add", "-A")
    out = subprocess.run(["git", "diff", "--cached", "--binary"], cwd=r, capture_output=True, check=True).stdout
    git(r, "reset", "-q", "--hard")
    git(r, "clean", "-qfd")
    return out


def test_apply_diff_keeps_harness_edits_and_refuses_the_rest(repo):
    def change(r: Path) -> None:
        (r / "harness" / "agent.py").write_text("print('hello')\n")
        (r / "harness" / "new.txt").write_text("new\n")
        (r / "harness" / "harness.yaml").write_text("name: h\nentrypoint: rm -rf /\n")
        (r / "evolve.yaml").write_text("harness: .\n")
        (r / "outside.txt").write_text("x\n")
        (r / "harness" / "link").symlink_to("/etc/passwd")
    report = apply_diff(repo, "harness", diff_of(repo, change), PROTECTED)
    assert report.changed_files == ["harness/agent.py", "harness/new.txt"] and not report.failed
    refused = " | ".join(report.refused)
    assert len(report.refused) == 4, refused
    assert "harness/harness.yaml is protected" in refused and "evolve.yaml is outside the harness" in refused
    assert "outside.txt is outside the harness directory" in refused and "harness/link is a symbolic link" in refused
    assert (repo / "harness" / "agent.py").read_text() == "print('hello')\n"
    assert (repo / "evolve.yaml").read_text() == "harness: harness\n" and not (repo / "outside.txt").exists()
    assert not (repo / "harness" / "link").exists()


def test_apply_diff_deletes_and_refuses_garbage(repo):
    report = apply_diff(repo, "harness", diff_of(repo, lambda r: (r / "harness" / "agent.py").unlink()), PROTECTED)
    assert report.changed_files == ["harness/agent.py"] and not (repo / "harness" / "agent.py").exists()
    git(repo, "checkout", "-q", "--", ".")
    bad = apply_diff(repo, "harness", b"\xff\xfe not a diff", PROTECTED)
    assert bad.changed_files == [] and "cannot be read" in bad.refused[0]


def test_testbed_hides_the_eval_set_and_protected_paths_outside_the_harness(repo):
    tree = filtered_tree(repo, "HEAD", harness_dir="harness", protected=PROTECTED, hidden=["evals"])
    names = git(repo, "ls-tree", "-r", "--name-only", tree).split()
    assert names == ["README", "harness/agent.py", "harness/harness.yaml"]
    assert git(repo, "status", "--porcelain") == ""  # the user's index and work tree are untouched



@pytest.mark.docker
def run_with_patch_agent(tmp_path: Path, agent: str, generations: int, price: dict | None = None):
    """A project (``make_project``) whose patch step is ``agent``, driven by the scripted optimizer,
    run to its end with the marker evaluator: (project, its head before the run, loop, final state)."""
    from evolve.config import load_project_config
    from evolve.loop import Loop, LoopSettings
    from evolve.models import backend_for

    project = make_project(tmp_path, generations=generations)
    cfg = yaml.safe_load((project / "evolve.yaml").read_text())
    cfg["models"]["optimizer"]["model"] = f"scripted/{OPTIMIZER}"
    cfg["optimizer"] = {"patch": "agent", "agent": agent, "timeout_s": 300}
    (project / "evolve.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    git(project, "commit", "-qam", f"patch agent: {agent}")
    head = git(project, "rev-parse", "HEAD").strip()
    config = load_project_config(project / "evolve.yaml")
    backend, close = backend_for(config.models.optimizer.model, price)
    loop = Loop(config, project, LoopSettings(solver_model="marker", runs_dir=project / "runs"), backend,
                evaluator=MarkerEvaluator(project / "runs" / "marker"))
    try:
        state = loop.run()
    finally:
        close()
    return project, head, loop, state


def test_the_agent_patches_itself_end_to_end(tmp_path, base_image, docker_client):
    price = {"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6}
    project, head, loop, state = run_with_patch_agent(tmp_path, "self", generations=2, price=price)
    run_dir = project / "runs" / loop.run_id
    g1, g2 = loop.store.gens()

    # Generation 1: the agent's edit is the candidate, committed and accepted.
    assert g1.status == "accepted", g1.reason
    shown = git(project, "show", f"{g1.candidate}:harness/prompts/system.txt")
    assert WIDE_MARKER in shown
    assert git(project, "diff", "--name-only", head, g1.candidate).split() == ["harness/prompts/system.txt"]
    # It read its context, which is read-only, and saw no evolve.yaml in /testbed; the check it ran passed.
    steps = json.loads((run_dir / "patch_agent" / "g001" / "trajectory.json").read_text())["steps"]
    outputs = "\n".join(s["output"] for s in steps)
    assert "PLAN-A" in outputs and "NO-EVOLVE-YAML-IN-TESTBED" in outputs and "CHECK-PASSED" in outputs
    assert "Read-only file system" in outputs and "context-write-rc=1" in outputs
    assert "tampered" not in (run_dir / "patch_agent" / "g001" / "context" / "analysis.md").read_text()
    assert list((run_dir / "patch_agent" / "g001" / "context" / "failures").glob("wide__f-*.md"))

    # Generation 2: only forbidden writes -> refused, nothing committed.
    assert g2.status == "refused" and g2.candidate is None, g2.reason
    for what in ("evolve.yaml", "outside.txt", "harness/harness.yaml", "harness/passwd"):
        assert what in g2.reason, (what, g2.reason)
    assert git(project, "log", "--all", "--format=%H", "--", "outside.txt", "harness/passwd") == ""
    assert state.best == g1.verdict_commit
    # `agent: self`: generation 2's agent is generation 1's harness, the one the agent itself improved.
    first = json.loads((run_dir / "patch_agent" / "g002" / "trace-1.jsonl").read_text().splitlines()[0])
    assert WIDE_MARKER in first["request"]["messages"][0]["content"]
    assert len(list((run_dir / "optimizer_cache").glob("patch-agent-*.json"))) == 2  # a resumed run replays them

    assert not docker_client.api.containers(all=True, filters={"label": f"evolve.run={loop.run_id}-patch-g001"})

    # Every agent call is in the optimizer trace and charged to the optimizer's spend.
    trace = [json.loads(line) for line in (run_dir / "optimizer_trace.jsonl").read_text().splitlines()]
    agent_calls = [t for t in trace if t.get("step") == "patch-agent"]
    assert len(agent_calls) == 4 + 2
    assert [t["call"] for t in trace] == list(range(1, len(trace) + 1))
    agent_usd = sum(t["cost_usd"] for t in agent_calls)
    assert agent_usd > 0 and all(t["usage"]["prompt_tokens"] > 0 for t in agent_calls)
    full = [json.loads(line) for line in (run_dir / "patch_agent" / "g001" / "trace-1.jsonl").read_text().splitlines()]
    assert [t["agent_trace"] for t in agent_calls[:4]] == ["patch_agent/g001/trace-1.jsonl"] * 4
    assert [t["agent_call"] for t in agent_calls[:4]] == [f["call"] for f in full] == [1, 2, 3, 4]
    assert "request" not in agent_calls[0] and "PLAN-A" in json.dumps(full[0]["request"])  # bodies in full there
    total_usd = sum(t.get("cost_usd", 0.0) for t in trace)
    assert loop.optimizer.usage.cost_usd == pytest.approx(total_usd)
    assert state.spent_usd == pytest.approx(total_usd)  # the marker evaluator is free: all spend is optimizer's
    assert g1.cost_usd + g2.cost_usd >= agent_usd


def agent_project(root: Path, generations: int) -> Path:
    """``make_project`` with ``optimizer.patch: agent`` (``agent: self``) and this file's scripted words."""
    project = make_project(root, generations=generations)
    cfg = yaml.safe_load((project / "evolve.yaml").read_text())
    cfg["models"]["optimizer"]["model"] = f"scripted/{OPTIMIZER}"
    cfg["optimizer"] = {"patch": "agent", "agent": "self", "timeout_s": 300}
    (project / "evolve.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    git(project, "commit", "-qam", "patch agent")
    return project


def agent_calls(run_dir: Path) -> int:
    """The patch agent's model calls in the optimizer's trace (``"step": "patch-agent"``)."""
    lines = (run_dir / "optimizer_trace.jsonl").read_text().splitlines()
    return sum(json.loads(line).get("step") == "patch-agent" for line in lines)


@pytest.mark.docker
def test_a_kill_after_the_model_patch_is_cached_resumes_without_a_second_agent_run(tmp_path, base_image):
    """kill -9 (a real process, ``EVOLVE_TEST_KILL_AT=patch-cached@1``) right after the agent's model_patch
    is cached, before it is applied or committed; ``--resume`` applies the cached model_patch (the
    agent never runs again) and reaches what an uninterrupted run reaches."""
    import signal

    from test_loop_kill_resume import outcome, run_loop

    reference_repo = agent_project(tmp_path / "reference", generations=1)
    done = run_loop(reference_repo)
    assert done.returncode == 0, done.stderr[-3000:]
    reference_run = done.stdout.split()[0]
    reference = outcome(reference_repo, reference_run)
    assert [g["status"] for g in reference["gens"]] == ["accepted"]
    per_run = agent_calls(reference_repo / "runs" / reference_run)
    assert per_run == 4  # the four scripted replies of PLAN-A

    repo = agent_project(tmp_path / "killed", generations=1)
    killed = run_loop(repo, kill_at="patch-cached@1")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    run = killed.stdout.split()[0]
    run_dir = repo / "runs" / run
    (cached,) = (run_dir / "optimizer_cache").glob("patch-agent-*.json")
    assert json.loads(cached.read_text())["model_patch_b64"]
    assert agent_calls(run_dir) == per_run
    # killed before the apply: no candidate commit, the record still running at its patch step
    assert git(repo, "rev-list", "--count", f"evolve/{run}/base..evolve/{run}/g001").strip() == "0"
    assert json.loads((run_dir / "generations" / "g001.json").read_text())["step"] == "patch"
    trajectory = (run_dir / "patch_agent" / "g001" / "trajectory.json").read_bytes()

    resumed = run_loop(repo, run)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert agent_calls(run_dir) == per_run  # the cached model_patch was replayed: no second agent run
    assert sorted(p.name for p in (run_dir / "patch_agent" / "g001").glob("trace-*.jsonl")) == ["trace-1.jsonl"]
    assert (run_dir / "patch_agent" / "g001" / "trajectory.json").read_bytes() == trajectory
    assert outcome(repo, run) == reference
    assert "REPRODUCE FIRST" in git(repo, "show", f"evolve/{run}/best:harness/prompts/system.txt")


def test_the_agent_is_self_a_template_or_a_path(tmp_path):
    from evolve.config import ProjectConfig
    from evolve.errors import HarnessError
    from evolve.harness import resolve_harness, template_dir
    from evolve.models import backend_for
    from evolve.optimizer import Optimizer
    from evolve.patch_agent import PatchAgent

    backend, close = backend_for(f"scripted/{OPTIMIZER}")
    try:
        optimizer = Optimizer(backend, tmp_path / "trace.jsonl", tmp_path / "cache")
        work = tmp_path / "harnesses"
        parent = resolve_harness(str(template_dir("minimal")), workdir=work)
        mine = tmp_path / "repo" / "tools" / "patcher"
        mine.mkdir(parents=True)
        (mine / "harness.yaml").write_text("name: patcher\nentrypoint: python3 run.py\n")

        def agent(name: str):
            cfg = ProjectConfig.model_validate({"optimizer": {"patch": "agent", "agent": name}})
            return PatchAgent(cfg, optimizer, repo_root=tmp_path / "repo", run_dir=tmp_path / "run", run_id="r",
                              hidden=[], harness_workdir=work).agent(parent)

        assert agent("self") is parent
        assert agent("mini-swe-agent").spec.name == "mini-swe-agent"
        assert agent("tools/patcher").spec.name == "patcher"
        with pytest.raises(HarnessError):
            agent("no-such-harness")
    finally:
        close()


def test_optimizer_config_errors_name_the_key(tmp_path):
    from evolve.config import load_project_config
    from evolve.errors import ConfigError

    (tmp_path / "evolve.yaml").write_text("optimizer: {patch: diff, agnt: self}\n")
    with pytest.raises(ConfigError) as e:
        load_project_config(tmp_path / "evolve.yaml")
    assert "optimizer.patch:" in str(e.value) and "optimizer.agnt: unknown key" in str(e.value)


@pytest.mark.docker
def test_a_named_template_patches_another_harness(tmp_path, base_image):
    """`agent: mini-swe-agent`: the real mini-swe-agent (its harness environment, built by setup.sh) patches
    the minimal harness, driven by the same scripted words."""
    project, _, loop, _ = run_with_patch_agent(tmp_path, "mini-swe-agent", generations=1)
    (g1,) = loop.store.gens()
    assert g1.status == "accepted", g1.reason
    assert WIDE_MARKER in git(project, "show", f"{g1.candidate}:harness/prompts/system.txt")
    out = project / "runs" / loop.run_id / "patch_agent" / "g001"
    assert "exit_status=Submitted" in (out / "harness.log").read_text()  # mini's own words, not minimal's
    assert json.loads((out / "trajectory.json").read_text())["info"]["exit_status"] == "Submitted"


def test_dry_run_counts_the_patch_agent(mini_evalset):
    from evolve.config import ProjectConfig
    from evolve.session import dry_run_assumptions, dry_run_estimate

    def text(patch: str) -> str:
        cfg = ProjectConfig.model_validate({"evals": {"name": str(mini_evalset)}, "optimizer": {"patch": patch},
                                            "models": {"optimizer": {"model": "openai/gpt-4o-mini"}}})
        return dry_run_estimate(cfg, dry_run_assumptions(tokens_per_task=50_000))

    blocks, agent = text("blocks"), text("agent")
    assert "patch-agent" not in blocks and "one patch-agent run per generation" in agent
    line = lambda t: next(x for x in t.splitlines() if "optimizer" in x and "gpt-4o-mini" in x)  # noqa: E731
    assert line(blocks) != line(agent), (line(blocks), line(agent))
