"""Synthesis pieces that need no Docker: mutations, problem statements, snapshot repos, ordering."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from evolve.synth.mutate import OPERATORS, apply_site, find_sites, unified_diff
from evolve.synth.mutation import Baseline, order_candidates
from evolve.synth.output import EvalSetWriter, OutputError, SnapshotRepo
from evolve.synth.problem import leaks, mutation_statement, parse_failures, patch_lines, scrub
from evolve.synth.source import default_test_cmd
from evolve.types import Task

SOURCE = '''"""A module."""
import functools

LIMIT = 10


class Box:
    size = 3

    @functools.lru_cache(maxsize=128)
    def fits(self, n: int = 5) -> bool:
        """Docstring."""
        if n < self.size and not self.closed:
            self.count += 1
            return True
        while n > 0 or self.spin:
            n = n - 1
        return self.size == n


def pick(items, i):
    total = sum(items)
    log("picked", i)
    return divmod(items[i], total)
'''


def _mutants(source: str) -> dict[str, list[str]]:
    by_op: dict[str, list[str]] = {}
    for site in find_sites(source):
        mutated = apply_site(source, site)
        assert mutated is not None, site
        changed = [l for l in unified_diff("m.py", source, mutated).splitlines()
                   if l[:1] in "+-" and not l.startswith(("+++", "---"))]
        by_op.setdefault(site.operator, []).append(" | ".join(changed))
    return by_op


def test_every_operator_makes_its_bug():
    by_op = _mutants(SOURCE)
    assert set(by_op) == set(OPERATORS)
    joined = {op: "\n".join(v) for op, v in by_op.items()}
    assert "+        if n <= self.size and not self.closed:" in joined["flip_comparison"]
    assert "+        return self.size != n" in joined["flip_comparison"]
    assert "+            self.count += 2" in joined["off_by_one"]
    assert "+            self.count += 0" in joined["off_by_one"]
    assert "+        if not (n < self.size and not self.closed):" in joined["negate_condition"]
    assert "+        while not (n > 0 or self.spin):" in joined["negate_condition"]
    assert "+    return divmod(total, items[i])" in joined["swap_arguments"]
    assert "+    log(i, \"picked\")" in joined["swap_arguments"]
    assert "-            self.count += 1" in joined["remove_statement"]
    assert "-    total = sum(items)" in joined["remove_statement"]
    assert "+            return False" in joined["change_return"]
    assert "+        return None" in joined["change_return"]
    assert "+            n = n + 1" in joined["flip_operator"]
    assert "+        if n < self.size or not self.closed:" in joined["flip_operator"]


def test_only_function_bodies_are_mutated():
    for site in find_sites(SOURCE):
        assert site.function in ("Box.fits", "pick"), site
    joined = "\n".join(l for v in _mutants(SOURCE).values() for l in v)
    # Not the decorator's argument, the parameter default, the annotation, constants or the docstring.
    for untouched in ("maxsize", "n: int", "LIMIT", "size = 3", "Docstring"):
        assert untouched not in joined


def test_sites_are_deterministic_and_functions_know_their_decorators():
    a, b = find_sites(SOURCE), find_sites(SOURCE)
    assert a == b
    fits = next(s for s in a if s.function == "Box.fits")
    assert fits.func_lines == (10, 11)  # first decorator line, def line (co_firstlineno is the former)


def test_unparseable_source_has_no_sites():
    assert find_sites("def f(:\n") == []


def test_diffs_apply_with_git_and_the_reverse_restores(tmp_path):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "m.py").write_text(SOURCE)
    for site in find_sites(SOURCE)[:12]:
        mutated = apply_site(SOURCE, site)
        forward, back = unified_diff("m.py", SOURCE, mutated), unified_diff("m.py", mutated, SOURCE)
        (tmp_path / "f.patch").write_text(forward)
        (tmp_path / "b.patch").write_text(back)
        subprocess.run(["git", "apply", "f.patch"], cwd=tmp_path, check=True)
        assert (tmp_path / "m.py").read_text() == mutated
        subprocess.run(["git", "apply", "b.patch"], cwd=tmp_path, check=True)
        assert (tmp_path / "m.py").read_text() == SOURCE


def test_diff_of_a_file_without_final_newline_and_with_form_feeds(tmp_path):
    old = "def f():\n    \x0c\n    return 1"
    new = "def f():\n    \x0c\n    return 2"
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "m.py").write_text(old)
    (tmp_path / "p.patch").write_text(unified_diff("m.py", old, new))
    subprocess.run(["git", "apply", "p.patch"], cwd=tmp_path, check=True)
    assert (tmp_path / "m.py").read_text() == new


PYTEST_OUTPUT = """\
==================================== ERRORS ====================================
________________________ ERROR at setup of test_fixture ________________________
tests/test_calc.py:12: in broken
    raise ValueError("boom")
E   ValueError: boom
=================================== FAILURES ===================================
___________________________________ test_add ___________________________________
tests/test_calc.py:4: in test_add
    assert add(2, 3) == 5
E   assert -1 == 5
E    +  where -1 = add(2, 3)
_ TestIdx.test_idx[a very long parameter id that makes pytest shorten the underscores] _
tests/test_calc.py:9: in test_idx
    assert idx([1, 2, 3], i) == [1, 2, 3][i]
calc.py:4: in idx
    return xs[i + 1]
E   IndexError: list index out of range
----------------------------- Captured stdout call -----------------------------
hello from <object at 0x7f3a2b4c5d60>
=========================== short test summary info ============================
FAILED tests/test_calc.py::test_add - assert -1 == 5
"""
FIX = """diff --git a/calc.py b/calc.py
--- a/calc.py
+++ b/calc.py
@@ -3,2 +3,2 @@
 def idx(xs, i):
-    return xs[i + 1]
+    return xs[i]
"""


def test_failures_are_parsed_per_test():
    failures = parse_failures(PYTEST_OUTPUT)
    assert set(failures) == {"ERROR at setup of test_fixture", "test_add",
                             "TestIdx.test_idx[a very long parameter id that makes pytest shorten the underscores]"}
    idx = failures["TestIdx.test_idx[a very long parameter id that makes pytest shorten the underscores]"]
    assert "hello" not in "\n".join(idx.lines)  # captured output is not part of the report


def test_statement_quotes_tests_but_never_library_source_or_the_fix():
    tests = ["tests/test_calc.py::TestIdx::test_idx[a very long parameter id that makes pytest shorten the "
             "underscores]", "tests/test_calc.py::test_add"]
    statement = mutation_statement(tests, PYTEST_OUTPUT, FIX)
    assert "IndexError: list index out of range" in statement
    assert "assert idx([1, 2, 3], i) == [1, 2, 3][i]" in statement  # the test's own line
    assert "calc.py:4: in idx" in statement  # where it failed, without the source line
    assert "return xs[i + 1]" not in statement
    assert "return xs[i]" not in statement
    assert leaks(statement, FIX) == []
    assert "`test_idx[" in statement.split("\n")[0]
    assert mutation_statement(tests, PYTEST_OUTPUT, FIX) == statement  # deterministic


def test_scrub_drops_any_line_holding_a_changed_line():
    patch = "--- a/x.py\n+++ b/x.py\n@@ -1 +1 @@\n-    limit = 10\n+    limit = 11\n-)\n"
    assert patch_lines(patch) == ["limit = 10", "limit = 11"]  # ")" is too short to matter
    text = "the limit = 10 here\nkeep me\nlimit = 11!\n"
    assert scrub(text, patch) == "keep me\n"
    assert leaks("x limit = 10", patch) == ["limit = 10"]


def test_default_test_cmd_adds_src_to_the_path(tmp_path):
    (tmp_path / "src" / "pkg").mkdir(parents=True)
    (tmp_path / "src" / "pkg" / "__init__.py").write_text("")
    assert default_test_cmd(tmp_path).startswith("PYTHONPATH=src python3 -m pytest -rA")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    assert default_test_cmd(tmp_path).startswith("python3 -m pytest -rA")


def _baseline(tests_by_func: dict[tuple[str, str, int], set[str]]) -> Baseline:
    coverage = {(path, name): [(line, frozenset(v))] for (path, name, line), v in tests_by_func.items()}
    stable = set().union(*tests_by_func.values())
    return Baseline(stable, set(), set(), [], 1.0, coverage)


def test_candidate_order_depends_on_the_seed_only_and_spreads_functions():
    source = "def a(x):\n    return x + 1 if x > 0 else x - 1\n\n\ndef b(y):\n    return y * 2 == 4\n"
    sites = {"m.py": find_sites(source)}
    base = _baseline({("m.py", "a", 1): {"t::a"}, ("m.py", "b", 5): {"t::b"}})
    one = order_candidates(sites, base, 0, "p")
    assert [(c.path, c.site) for c in one] == [(c.path, c.site) for c in order_candidates(sites, base, 0, "p")]
    assert {c.site.function for c in one[:2]} == {"a", "b"}  # one per function first
    orders = {tuple(c.site.key for c in order_candidates(sites, base, seed, "p")) for seed in range(6)}
    assert len(orders) > 1
    # Functions no test calls are never candidates.
    uncovered = _baseline({("m.py", "a", 1): {"t::a"}})
    assert {c.site.function for c in order_candidates(sites, uncovered, 0, "p")} == {"a"}


def _git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def test_snapshot_commits_are_parentless_and_deterministic(tmp_path):
    tree = tmp_path / "tree"
    (tree / "pkg").mkdir(parents=True)
    (tree / "pkg" / "m.py").write_text("x = 1\n")
    (tree / "run.sh").write_text("echo\n")
    (tree / "run.sh").chmod(0o755)
    shas = []
    for name in ("r1", "r2"):
        repo = SnapshotRepo(tmp_path / name)
        index = repo.index_of(tree)
        shas.append(repo.commit(index, "tasks/t1", "evolve synth: t1", overrides={"pkg/m.py": b"x = 2\n"}))
        repo.commit(index, "tasks/t2", "evolve synth: t2", overrides={"run.sh": b"echo 2\n"})
        repo.finish()
    assert shas[0] == shas[1]
    r1 = tmp_path / "r1"
    assert _git("--git-dir", str(r1), "rev-list", "--all", "--parents", cwd=tmp_path).count("\n") == 2
    for line in _git("--git-dir", str(r1), "rev-list", "--all", "--parents", cwd=tmp_path).splitlines():
        assert len(line.split()) == 1  # no parents
    assert _git("--git-dir", str(r1), "show", f"{shas[0]}:pkg/m.py", cwd=tmp_path) == "x = 2\n"
    assert "100755" in _git("--git-dir", str(r1), "ls-tree", "tasks/t2", "run.sh", cwd=tmp_path)
    # The original x = 1 is in no commit of t1's tree, and gc removed what no ref holds.
    assert "x = 1" not in _git("--git-dir", str(r1), "show", "tasks/t1:pkg/m.py", cwd=tmp_path)


def _task(i: str) -> Task:
    return Task(instance_id=f"p__mut-{i}", repo="p", base_commit="0" * 40, problem_statement="s",
                FAIL_TO_PASS=["t.py::a"])


def test_writer_is_atomic_and_keeps_foreign_directories(tmp_path):
    dest = tmp_path / "evals" / "mine"
    with pytest.raises(RuntimeError):
        with EvalSetWriter(dest, name="mine") as w:
            (w.root / "search.jsonl").write_text("partial")
            raise RuntimeError("boom")
    assert not dest.exists()
    assert list((tmp_path / "evals").iterdir()) == []  # no hidden build directory left
    with EvalSetWriter(dest, name="mine") as w:
        w.commit([_task("a"), _task("b")], {"kind": "synth"})
    assert sum(json.loads((dest / "synth.json").read_text())["counts"].values()) == 2
    assert {p.name for p in dest.iterdir()} >= {"search.jsonl", "holdout.jsonl", "evalset.yaml", "synth.json"}
    with EvalSetWriter(dest, name="mine") as w:  # evolve's own set: replaced
        w.commit([_task("c")], {"kind": "synth"})
    assert "p__mut-c" in (dest / "search.jsonl").read_text() + (dest / "holdout.jsonl").read_text()
    foreign = tmp_path / "evals" / "hand-made"
    foreign.mkdir()
    (foreign / "search.jsonl").write_text("")
    with pytest.raises(OutputError, match="was not made by"):
        EvalSetWriter(foreign, name="hand-made")
    assert sorted(p.name for p in (tmp_path / "evals").iterdir()) == ["hand-made", "mine"]


def test_no_kind_of_bug_takes_more_than_its_cap_and_the_choice_follows_candidate_order():
    from dataclasses import dataclass

    from evolve.synth.env import CandidateOutcome, SynthOptions, SynthProgress, run_candidates, select_kept

    @dataclass
    class C:
        index: int
        kind: str
        func: str

    # Twelve candidates: the first eight are all one kind, then four of others; all would be kept.
    cands = [C(i, "change_return" if i < 8 else f"k{i % 3}", f"f{i}") for i in range(12)]
    tried: list[int] = []

    def evaluate(_wb, c):
        tried.append(c.index)
        return CandidateOutcome("kept")

    chosen, counts = run_candidates(cands, ["wb1", "wb2"], evaluate, 4, SynthProgress(),
                                    function_key=lambda c: c.func, kind=lambda c: c.kind, kind_cap=1)
    kinds = [c.kind for c, _ in chosen]
    assert len(chosen) == 4 and len(set(kinds)) == 4, kinds
    assert [c.index for c, _ in chosen] == sorted(c.index for c, _ in chosen)
    assert counts.get("capped", 0) >= 5  # the other change_return mutants were never run
    assert len(tried) < 12
    # Without a cap the first four in candidate order win, all of one kind.
    outcomes = {c.index: CandidateOutcome("kept") for c in cands}
    assert [c.index for c in select_kept(cands, outcomes, 4, key=lambda c: c.func)] == [0, 1, 2, 3]
    # One function gives one task even when its kinds differ.
    same = [C(0, "a", "f"), C(1, "b", "f"), C(2, "b", "g")]
    picked = select_kept(same, {c.index: CandidateOutcome("kept") for c in same}, 3, key=lambda c: c.func,
                         kind=lambda c: c.kind, kind_cap=1)
    assert [c.index for c in picked] == [0, 2]
    assert SynthOptions(max_tasks=16).kind_cap() == 4 and SynthOptions(max_tasks=3).kind_cap() == 1


def test_relevant_output_quotes_the_error_not_only_the_tail():
    from evolve.synth.mutation import relevant_output

    noise = [f"tests/test_{i}.py::test_ok PASSED" for i in range(200)]
    output = "\n".join(["===== ERRORS =====", "_____ ERROR collecting tests/test_time.py _____",
                        "E   ModuleNotFoundError: No module named 'freezegun'", *noise,
                        "=== 200 passed, 1 error in 3.2s ==="])
    said = relevant_output(output)
    assert "No module named 'freezegun'" in said and "200 passed, 1 error" in said
    assert len(said.split("\n")) <= 42


def _mut(i: int, op: str, project: str) -> Task:
    return Task(instance_id=f"{project}__mut-{i:04d}", repo=project, base_commit="0" * 40, problem_statement="x",
                FAIL_TO_PASS=["t.py::t"], repo_path=f"repos/{project}",
                synth={"kind": "mutation", "operator": op})


def test_no_kind_of_bug_exceeds_its_share_of_the_whole_set():
    from evolve.synth.balance import cap_kind_share, kind_of

    # Each project is within its own cap (4 of a quota of 16), but two fell short of the quota:
    # change_return is 12 of 28 tasks in the set, over a quarter.
    tasks = ([_mut(i, "change_return", "a") for i in range(4)] + [_mut(10 + i, OPERATORS[i], "a") for i in range(4)]
             + [_mut(20 + i, "change_return", "b") for i in range(4)] + [_mut(30, "off_by_one", "b")]
             + [_mut(40 + i, "change_return", "c") for i in range(4)]
             + [_mut(50 + i, op, "c") for i, op in enumerate(OPERATORS) if op != "change_return"] * 1
             + [_mut(60 + i, "flip_operator", "d") for i in range(3)] + [_mut(70 + i, "swap_arguments", "e") for i in range(2)])
    history = Task(instance_id="h__1", repo="h", base_commit="0" * 40, problem_statement="x",
                   FAIL_TO_PASS=["t.py::t"], repo_path="repos/h", synth={"kind": "history"})
    tasks.append(history)
    assert sum(kind_of(t) == "change_return" for t in tasks) * 4 > len(tasks)
    kept, dropped = cap_kind_share(tasks, 0.25)
    counts: dict[str, int] = {}
    for t in kept:
        counts[kind_of(t) or "-"] = counts.get(kind_of(t) or "-", 0) + 1
    assert max(n for k, n in counts.items() if k != "-") * 4 <= len(kept), counts
    assert dropped and all(kind_of(t) == "change_return" for t in dropped)
    # The fewest: putting back any dropped task breaks the cap again.
    assert sum(kind_of(t) == "change_return" for t in kept) + 1 > 0.25 * (len(kept) + 1)
    assert history in kept and len(kept) + len(dropped) == len(tasks)
    assert [t.instance_id for t in kept] == [t.instance_id for t in tasks if t not in dropped]  # order kept
    assert cap_kind_share(tasks, 0.25) == (kept, dropped)  # deterministic
    # A set already within the share is untouched.
    assert cap_kind_share(kept, 0.25) == (kept, [])
    with pytest.raises(ValueError):
        cap_kind_share(tasks, 0)


def test_the_whole_set_kind_cap_never_empties_a_small_set():
    from evolve.synth.balance import cap_kind_share
    from evolve.types import Task

    def task(i, op):
        return Task(instance_id=f"p__{i}", repo="p", base_commit="0" * 40, problem_statement="x",
                    repo_path="repos/p", FAIL_TO_PASS=["t::a"], PASS_TO_PASS=[], synth={"kind": "mutation", "operator": op})

    kept, dropped = cap_kind_share([task(0, "flip_operator")], 0.25)
    assert [t.instance_id for t in kept] == ["p__0"] and dropped == []
    kept, dropped = cap_kind_share([task(0, "a"), task(1, "b"), task(2, "a")], 0.25)
    assert [t.instance_id for t in kept] == ["p__0", "p__1"] and [t.instance_id for t in dropped] == ["p__2"]
