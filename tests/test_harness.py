"""Resolving harnesses from directories and git refs, and the minimal template."""

from __future__ import annotations

import ast
import json
import os
import shutil
import string
import sys
from pathlib import Path

import git
import pytest

from evolve.errors import HarnessError
from evolve.harness import Harness, HarnessSpec, resolve_harness, template_dir

SPEC = "name: demo\ndescription: a test harness\nentrypoint: python3 agent.py\n"


def write_harness(directory: Path, spec: str = SPEC, agent: str = "print('hi')\n") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "harness.yaml").write_text(spec)
    (directory / "agent.py").write_text(agent)
    (directory / "prompts").mkdir(exist_ok=True)
    (directory / "prompts" / "system.txt").write_text("You are $name.\n")
    return directory


def commit_all(repo_dir: Path, message: str = "commit") -> git.Repo:
    repo = git.Repo.init(repo_dir) if not (repo_dir / ".git").exists() else git.Repo(repo_dir)
    with repo.config_writer() as cw:
        cw.set_value("user", "name", "Test")
        cw.set_value("user", "email", "test@example.com")
    repo.git.add("-A")
    repo.index.commit(message)
    return repo


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path / "work"


# --- directories -----------------------------------------------------------------------------

def test_directory_resolves_to_a_snapshot(tmp_path: Path, workdir: Path) -> None:
    src = write_harness(tmp_path / "h")
    h = resolve_harness(str(src), workdir=workdir)
    assert isinstance(h, Harness)
    assert h.spec == HarnessSpec(name="demo", description="a test harness", entrypoint="python3 agent.py")
    assert len(h.tree_hash) == 40 and all(c in "0123456789abcdef" for c in h.tree_hash)
    assert h.root == workdir / f"harness-{h.tree_hash[:12]}"
    assert h.source == str(src.resolve())
    assert (h.root / "prompts" / "system.txt").read_text() == "You are $name.\n"

    # The snapshot is private: editing the source afterwards does not change it.
    (src / "agent.py").write_text("print('edited')\n")
    assert (h.root / "agent.py").read_text() == "print('hi')\n"


def test_directory_hash_matches_git_and_ignores_caches(tmp_path: Path, workdir: Path) -> None:
    src = write_harness(tmp_path / "h")
    repo = commit_all(src)  # also puts a .git directory inside the harness directory
    expected = repo.head.commit.tree.hexsha

    (src / "__pycache__").mkdir()
    (src / "__pycache__" / "agent.cpython-311.pyc").write_bytes(b"\0junk")
    (src / "stray.pyc").write_bytes(b"\0junk")
    h = resolve_harness(str(src), workdir=workdir)
    assert h.tree_hash == expected
    names = {p.relative_to(h.root).as_posix() for p in h.root.rglob("*")}
    assert names == {"harness.yaml", "agent.py", "prompts", "prompts/system.txt"}


def test_same_content_same_hash_one_byte_changes_it(tmp_path: Path, workdir: Path) -> None:
    a = write_harness(tmp_path / "a")
    b = write_harness(tmp_path / "b")
    ha, hb = (resolve_harness(str(d), workdir=workdir) for d in (a, b))
    assert ha.tree_hash == hb.tree_hash and ha.root == hb.root

    (b / "prompts" / "system.txt").write_text("You are $Name.\n")  # one byte differs
    hb2 = resolve_harness(str(b), workdir=workdir)
    assert hb2.tree_hash != ha.tree_hash and hb2.root != ha.root
    assert (hb2.root / "prompts" / "system.txt").read_text() == "You are $Name.\n"


def test_executable_bit_is_part_of_the_content(tmp_path: Path, workdir: Path) -> None:
    src = write_harness(tmp_path / "h")
    before = resolve_harness(str(src), workdir=workdir)
    (src / "agent.py").chmod(0o755)
    after = resolve_harness(str(src), workdir=workdir)
    assert before.tree_hash != after.tree_hash
    assert os.access(after.root / "agent.py", os.X_OK)


def test_relative_directory_and_snapshot_reuse(tmp_path: Path, workdir: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    write_harness(tmp_path / "h")
    monkeypatch.chdir(tmp_path)
    first = resolve_harness("h", workdir=workdir)
    marker = first.root / "marker"
    marker.write_text("x")  # a second resolve reuses the snapshot instead of copying again
    second = resolve_harness("./h", workdir=workdir)
    assert second.root == first.root and marker.exists()
    assert not [p for p in workdir.iterdir() if p.name.startswith(".harness-")]


def test_missing_directory(tmp_path: Path, workdir: Path) -> None:
    with pytest.raises(HarnessError, match="does not exist"):
        resolve_harness(str(tmp_path / "nope"), workdir=workdir)


# --- git refs --------------------------------------------------------------------------------

def test_ref_and_directory_of_identical_content_share_the_hash(tmp_path: Path, workdir: Path) -> None:
    repo_dir = tmp_path / "repo"
    write_harness(repo_dir)
    commit_all(repo_dir)
    copy = write_harness(tmp_path / "copy")  # same files, no git

    from_ref = resolve_harness("HEAD", workdir=workdir, repo=repo_dir)
    from_dir = resolve_harness(str(copy), workdir=workdir)
    assert from_ref.tree_hash == from_dir.tree_hash
    assert from_ref.spec.name == "demo"
    assert from_ref.source == f"{repo_dir}@HEAD"
    assert (from_ref.root / "agent.py").read_text() == "print('hi')\n"


def test_ref_with_subdir(tmp_path: Path, workdir: Path) -> None:
    repo_dir = tmp_path / "repo"
    write_harness(repo_dir / "harnesses" / "demo")
    (repo_dir / "README.md").write_text("project\n")
    repo = commit_all(repo_dir, "v1")
    repo.create_tag("v1")
    v1_agent = "print('hi')\n"
    (repo_dir / "harnesses" / "demo" / "agent.py").write_text("print('v2')\n")
    commit_all(repo_dir, "v2")
    branch = repo.active_branch.name

    old = resolve_harness("v1:harnesses/demo", workdir=workdir, repo=repo_dir)
    new = resolve_harness(f"{branch}:harnesses/demo/", workdir=workdir, repo=repo_dir)
    assert old.source == f"{repo_dir}@v1:harnesses/demo"
    assert (old.root / "agent.py").read_text() == v1_agent
    assert (new.root / "agent.py").read_text() == "print('v2')\n"
    assert not (old.root / "README.md").exists()
    assert old.tree_hash == repo.tree("v1")["harnesses/demo"].hexsha
    assert old.tree_hash != new.tree_hash

    # The user's work tree and branch are untouched.
    assert repo.active_branch.name == branch and not repo.is_dirty(untracked_files=True)
    assert (repo_dir / "harnesses" / "demo" / "agent.py").read_text() == "print('v2')\n"


def test_ref_defaults_to_the_repo_containing_cwd(tmp_path: Path, workdir: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    repo_dir = tmp_path / "repo"
    write_harness(repo_dir / "harness")
    (repo_dir / "sub").mkdir()
    (repo_dir / "sub" / "file").write_text("x\n")
    commit_all(repo_dir)
    monkeypatch.chdir(repo_dir / "sub")
    h = resolve_harness("HEAD:harness", workdir=workdir)
    assert h.spec.name == "demo"


def test_bad_ref(tmp_path: Path, workdir: Path) -> None:
    repo_dir = tmp_path / "repo"
    write_harness(repo_dir)
    commit_all(repo_dir)
    with pytest.raises(HarnessError, match=r"'no-such-branch' is neither an existing directory nor a git ref"):
        resolve_harness("no-such-branch", workdir=workdir, repo=repo_dir)


def test_missing_subdir(tmp_path: Path, workdir: Path) -> None:
    repo_dir = tmp_path / "repo"
    write_harness(repo_dir)
    commit_all(repo_dir)
    with pytest.raises(HarnessError, match=r"no directory 'missing' at HEAD.*git ls-tree"):
        resolve_harness("HEAD:missing", workdir=workdir, repo=repo_dir)
    with pytest.raises(HarnessError, match="is a file"):
        resolve_harness("HEAD:agent.py", workdir=workdir, repo=repo_dir)


def test_not_a_git_repo(tmp_path: Path, workdir: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(HarnessError, match="not inside a git repository"):
        resolve_harness("main", workdir=workdir, repo=plain)


# --- harness.yaml validation -----------------------------------------------------------------

@pytest.mark.parametrize(("spec", "message"), [
    ("name: demo\n", r"harness\.yaml: field 'entrypoint' is required"),
    ("entrypoint: x\n", r"harness\.yaml: field 'name' is required"),
    (SPEC + "docker: foo\n", r"harness\.yaml: unknown field 'docker' \(allowed: name, entrypoint, description, "
                             r"requirements, requirements_file, image\)"),
    (SPEC + "requirements: ['litellm>=1.75', 'not a req!']\n",
     r"harness\.yaml: field 'requirements': requirements: 'not a req!' is not a valid requirement"),
    (SPEC + "requirements: ['evil @ file:///tmp/evil']\n",
     r"'evil @ file:///tmp/evil' points at a source \(file:///tmp/evil\) pip would have to build"),
    (SPEC + "requirements_file: ../outside.txt\n", r"field 'requirements_file': '\.\./outside\.txt' must be a relative"),
    (SPEC + "requirements_file: missing.txt\n", r"requirements_file 'missing\.txt' is not a file inside the harness"),
    ("name: demo\nentrypoint: ''\n", r"harness\.yaml: field 'entrypoint': "),
    ("name: [unclosed\n", r"harness\.yaml: not valid YAML"),
    ("- a list\n", r"harness\.yaml: must be a mapping"),
])
def test_invalid_spec(tmp_path: Path, workdir: Path, spec: str, message: str) -> None:
    src = write_harness(tmp_path / "h", spec=spec)
    with pytest.raises(HarnessError, match=message) as info:
        resolve_harness(str(src), workdir=workdir)
    assert str(src.resolve() / "harness.yaml") in str(info.value)
    # Nothing invalid is left behind as a snapshot.
    assert not workdir.exists() or not list(workdir.iterdir())


def test_missing_spec_in_directory_and_ref(tmp_path: Path, workdir: Path) -> None:
    src = tmp_path / "h"
    src.mkdir()
    (src / "agent.py").write_text("pass\n")
    with pytest.raises(HarnessError, match=r"h/harness\.yaml: not found; every harness needs"):
        resolve_harness(str(src), workdir=workdir)
    commit_all(src)
    with pytest.raises(HarnessError, match=r"@HEAD:harness\.yaml: not found"):
        resolve_harness("HEAD", workdir=workdir, repo=src)


# --- the minimal template --------------------------------------------------------------------

MINIMAL = template_dir("minimal")


def test_template_dir() -> None:
    assert MINIMAL.name == "minimal" and (MINIMAL / "agent.py").is_file()
    with pytest.raises(HarnessError, match="available templates: .*minimal"):
        template_dir("nonexistent")
    with pytest.raises(HarnessError):
        template_dir("../evolve")


def test_minimal_template_resolves(workdir: Path) -> None:
    h = resolve_harness(str(MINIMAL), workdir=workdir)
    assert h.spec.name == "minimal"
    assert h.spec.entrypoint == "python3 agent.py"
    for name in ("agent.py", "config.json", "prompts/system.txt", "prompts/instance.txt",
                 "prompts/observation.txt", "prompts/format_error.txt", "prompts/timeout.txt"):
        assert (h.root / name).is_file(), name


def test_minimal_agent_is_stdlib_only_and_short() -> None:
    source = (MINIMAL / "agent.py").read_text()
    assert len(source.splitlines()) <= 220
    tree = ast.parse(source, feature_version=(3, 8))  # runs in any image with a python3 >= 3.8
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative import"
            modules.add(node.module.split(".")[0])
    assert modules and modules <= set(sys.stdlib_module_names), modules - set(sys.stdlib_module_names)


def test_minimal_config_and_prompts() -> None:
    config = json.loads((MINIMAL / "config.json").read_text())
    for key in ("step_limit", "cost_limit_usd", "command_timeout_s", "observation_max_chars", "model_params"):
        assert key in config, key
    instance = (MINIMAL / "prompts" / "instance.txt").read_text()
    assert "$problem_statement" in instance and "COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT" in instance
    # Every placeholder used by a prompt is one agent.py provides.
    provided = {"command_timeout", "problem_statement", "test_cmd", "repo", "repo_dir", "instance_id", "step_limit",
                "returncode", "output", "count", "command", "timeout"}
    for prompt in (MINIMAL / "prompts").iterdir():
        for match in string.Template.pattern.finditer(prompt.read_text()):
            name = match.group("named") or match.group("braced")
            assert match.group("invalid") is None, (prompt.name, match.group(0))
            assert name is None or name in provided, (prompt.name, name)


def test_harness_is_copied_not_linked(tmp_path: Path, workdir: Path) -> None:
    src = tmp_path / "copy"
    shutil.copytree(MINIMAL, src)
    h = resolve_harness(str(src), workdir=workdir)
    assert h.tree_hash == resolve_harness(str(MINIMAL), workdir=workdir).tree_hash
    assert not any(p.is_symlink() for p in h.root.rglob("*"))
