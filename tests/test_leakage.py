"""A candidate that memorises the eval set is caught before it is evaluated (no Docker)."""

from __future__ import annotations

from evolve.leakage import added_lines, task_leaks
from evolve.types import Task


def _task(instance_id: str, statement: str, patch: str = "", test_patch: str = "") -> Task:
    return Task(instance_id=instance_id, repo="r", base_commit="c" * 40, problem_statement=statement,
                patch=patch, test_patch=test_patch, FAIL_TO_PASS=["tests/test_a.py::test_a"])


TASKS = [
    _task("proj__mut-1a2b3c4d", "Traceback (most recent call last):\n"
          "  AssertionError: parse_header('a=1; b=2') returned {'a': '1'} instead of both keys\n",
          patch="--- a/p.py\n+++ b/p.py\n@@ -1 +1 @@\n-    return dict(pairs[:1])\n+    return dict(pairs)  # all pairs\n",
          test_patch="+++ b/tests/test_p.py\n+    assert parse_header('a=1; b=2') == {'a': '1', 'b': '2'}\n"),
    _task("proj__mut-99999999", "Traceback (most recent call last):\n  something else entirely, nothing shared\n"),
]


def test_a_generic_change_is_clean():
    before = {"prompts/system.txt": "You fix bugs.\n"}
    after = {"prompts/system.txt": "You fix bugs.\nReproduce the failure before you edit anything.\n"}
    assert task_leaks(added_lines(before, after), TASKS) == []


def test_an_instance_id_in_the_harness_is_a_leak():
    after = {"agent.py": "if task['instance_id'] == 'proj__mut-1a2b3c4d':\n    hint = 'look at pairs'\n"}
    found = task_leaks(added_lines({}, after), TASKS)
    assert found == ["proj__mut-1a2b3c4d: its instance_id"]


def test_a_line_of_the_fix_or_of_the_hidden_test_is_a_leak():
    fix = {"prompts/system.txt": "Known fix:    return dict(pairs)  # all pairs\n"}
    assert any("reference patch" in f for f in task_leaks(added_lines({}, fix), TASKS))
    test = {"prompts/system.txt": "assert parse_header('a=1; b=2') == {'a': '1', 'b': '2'}\n"}
    assert any("test_patch" in f for f in task_leaks(added_lines({}, test), TASKS))


def test_a_distinctive_statement_line_is_a_leak_but_a_shared_one_is_not():
    unique = {"p.txt": "AssertionError: parse_header('a=1; b=2') returned {'a': '1'} instead of both keys\n"}
    assert any("problem statement" in f for f in task_leaks(added_lines({}, unique), TASKS))
    shared = {"p.txt": "Traceback (most recent call last):\n"}
    assert task_leaks(added_lines({}, shared), TASKS) == []


def test_lines_the_parent_already_had_do_not_count():
    text = "if task['instance_id'] == 'proj__mut-1a2b3c4d':\n    pass\n"
    assert task_leaks(added_lines({"agent.py": text}, {"agent.py": text + "# tidy\n"}), TASKS) == []
