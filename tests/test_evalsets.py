"""Eval-set files and directories, written for real in tmp_path."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import git
import pytest

from evolve.errors import EvalSetError
from evolve.evalsets import (
    EvalSet,
    assign_split,
    dump_tasks,
    evalset_dirs,
    list_evalsets,
    load_evalset,
    load_tasks,
)
from evolve.types import Task

# Shaped like a row of princeton-nlp/SWE-bench_Lite as exported to JSONL:
# the test lists are JSON-encoded strings and there are fields evolve does not use.
SWEBENCH_ROW = {
    "repo": "astropy/astropy",
    "instance_id": "astropy__astropy-12907",
    "base_commit": "d16bfe05a744909de4b27f5875fe0d4ed41ce607",
    "patch": "diff --git a/astropy/modeling/separable.py b/astropy/modeling/separable.py\n"
             "--- a/astropy/modeling/separable.py\n+++ b/astropy/modeling/separable.py\n"
             "@@ -242,7 +242,7 @@ def _cstack(left, right):\n"
             "-        cright[-right.shape[0]:, -right.shape[1]:] = 1\n"
             "+        cright[-right.shape[0]:, -right.shape[1]:] = right\n",
    "test_patch": "diff --git a/astropy/modeling/tests/test_separable.py "
                  "b/astropy/modeling/tests/test_separable.py\n",
    "problem_statement": "Modeling's `separability_matrix` does not compute separability "
                         "correctly for nested CompoundModels\n\u2028Consider the following model:",
    "hints_text": "",
    "created_at": "2022-03-03T15:14:54Z",
    "version": "4.3",
    "FAIL_TO_PASS": json.dumps([
        "astropy/modeling/tests/test_separable.py::test_separable[compound_model6-result6]",
        "astropy/modeling/tests/test_separable.py::test_separable[compound_model9-result9]",
    ]),
    "PASS_TO_PASS": json.dumps([
        "astropy/modeling/tests/test_separable.py::test_coord_matrix",
        "astropy/modeling/tests/test_separable.py::test_cdot",
    ]),
    "environment_setup_commit": "298ccb478e6bf092953bca67a3d29dc6c35f6752",
}


def row(instance_id: str, **fields: object) -> dict:
    data = {
        "instance_id": instance_id,
        "repo": "acme/widgets",
        "base_commit": "0" * 40,
        "problem_statement": f"Fix bug {instance_id}.",
        "FAIL_TO_PASS": [f"tests/test_w.py::test_{instance_id.replace('-', '_')}"],
    }
    data.update(fields)
    return data


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_lines(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def make_repo(path: Path) -> str:
    """A git repository with one commit; returns the commit's sha."""
    repo = git.Repo.init(path)
    (path / "widgets.py").write_text("def answer():\n    return 41\n")
    repo.index.add(["widgets.py"])
    actor = git.Actor("evolve tests", "tests@example.invalid")
    sha = repo.index.commit("snapshot", author=actor, committer=actor).hexsha
    repo.close()
    return sha


def make_evalset(root: Path, search: list[dict], holdout: list[dict], spec: str | None = None) -> Path:
    write_rows(root / "search.jsonl", search)
    write_rows(root / "holdout.jsonl", holdout)
    if spec is not None:
        (root / "evalset.yaml").write_text(spec)
    return root


def raises(fn, *args, **kwargs) -> EvalSetError:
    with pytest.raises(EvalSetError) as info:
        fn(*args, **kwargs)
    return info.value


# ---------------------------------------------------------------------------
# format: load_tasks / dump_tasks


def test_swebench_row_loads_as_is_and_round_trips(tmp_path: Path) -> None:
    src = tmp_path / "lite.jsonl"
    src.write_text(json.dumps(SWEBENCH_ROW) + "\n")

    [task] = load_tasks(src)
    assert task.instance_id == "astropy__astropy-12907"
    assert task.FAIL_TO_PASS == json.loads(SWEBENCH_ROW["FAIL_TO_PASS"])
    assert task.PASS_TO_PASS == json.loads(SWEBENCH_ROW["PASS_TO_PASS"])
    assert task.problem_statement == SWEBENCH_ROW["problem_statement"]  # U+2028 did not split the line
    assert task.model_extra == {
        "hints_text": "", "created_at": "2022-03-03T15:14:54Z", "version": "4.3",
        "environment_setup_commit": "298ccb478e6bf092953bca67a3d29dc6c35f6752"}
    assert task.image is None and task.repo_path is None

    out = tmp_path / "out" / "copy.jsonl"
    dump_tasks([task], out)
    assert load_tasks(out) == [task]
    written = json.loads(out.read_text())
    assert isinstance(written["FAIL_TO_PASS"], list)
    assert written["version"] == "4.3"
    assert load_tasks(out)[0].content_hash() == task.content_hash()


def test_dump_tasks_replaces_atomically(tmp_path: Path) -> None:
    path = tmp_path / "tasks.jsonl"
    write_rows(path, [row("old-1")])
    os.chmod(path, 0o640)
    tasks = [Task.model_validate(row(f"new-{i}")) for i in range(3)]
    dump_tasks(tasks, path)
    assert [t.instance_id for t in load_tasks(path)] == ["new-0", "new-1", "new-2"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tasks.jsonl"]  # no temp file left

    err = raises(dump_tasks, tasks + [tasks[0]], path)
    assert "new-0" in str(err)
    assert [t.instance_id for t in load_tasks(path)] == ["new-0", "new-1", "new-2"]


def test_blank_lines_are_skipped_and_line_numbers_kept(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "t.jsonl", [json.dumps(row("a")), "", "   ",
                                              json.dumps(row("b")), "{not json"])
    err = raises(load_tasks, path)
    assert err.line == 5
    path.write_text(path.read_text().replace("{not json", ""))
    assert [t.instance_id for t in load_tasks(path)] == ["a", "b"]


def test_bad_json_names_file_and_line(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "bad.jsonl",
                       [json.dumps(row("a")), json.dumps(row("b")), '{"instance_id": "c",'])
    err = raises(load_tasks, path)
    assert (err.path, err.line) == (str(path), 3)
    assert "bad.jsonl, line 3" in str(err)
    assert "invalid JSON" in str(err)


def test_row_not_an_object(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "list.jsonl", [json.dumps(row("a")), json.dumps(["b"])])
    err = raises(load_tasks, path)
    assert "list.jsonl, line 2" in str(err) and "JSON object" in str(err)


def test_missing_field_names_line_and_field(tmp_path: Path) -> None:
    incomplete = row("b")
    del incomplete["problem_statement"]
    path = write_rows(tmp_path / "missing.jsonl", [row("a"), incomplete])
    err = raises(load_tasks, path)
    assert (err.line, err.field) == (2, "problem_statement")
    assert "missing.jsonl, line 2, field 'problem_statement'" in str(err)
    assert "missing" in str(err)


@pytest.mark.parametrize("value", [5, {"t": 1}, "tests/test_w.py::test_a"])
def test_fail_to_pass_not_a_list(tmp_path: Path, value: object) -> None:
    path = write_rows(tmp_path / "f2p.jsonl", [row("a"), row("b"), row("c", FAIL_TO_PASS=value)])
    err = raises(load_tasks, path)
    assert (err.line, err.field) == (3, "FAIL_TO_PASS")
    assert "f2p.jsonl, line 3, field 'FAIL_TO_PASS'" in str(err)


def test_wrong_item_type_names_the_field(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "items.jsonl", [row("a", PASS_TO_PASS=["ok", 7])])
    err = raises(load_tasks, path)
    assert (err.line, err.field) == (1, "PASS_TO_PASS")
    assert "a number" in str(err)


@pytest.mark.parametrize("value", [[], "[]"])
def test_fail_to_pass_empty(tmp_path: Path, value: object) -> None:
    path = write_rows(tmp_path / "empty.jsonl", [row("a", FAIL_TO_PASS=value)])
    err = raises(load_tasks, path)
    assert (err.line, err.field) == (1, "FAIL_TO_PASS")
    assert "empty.jsonl, line 1, field 'FAIL_TO_PASS'" in str(err)
    assert "at least one test" in str(err)


def test_duplicate_instance_id_names_both_lines(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "dup.jsonl", [row("a"), row("b"), row("a")])
    err = raises(load_tasks, path)
    assert (err.line, err.field) == (3, "instance_id")
    assert "dup.jsonl, line 3, field 'instance_id'" in str(err)
    assert "line 1" in str(err) and "'a'" in str(err)


def test_missing_file(tmp_path: Path) -> None:
    err = raises(load_tasks, tmp_path / "nope.jsonl")
    assert "nope.jsonl" in str(err)


# ---------------------------------------------------------------------------
# registry: directories


def test_directory_evalset_with_defaults_and_repos(tmp_path: Path) -> None:
    root = tmp_path / "widgets"
    sha = make_repo(root / "repos" / "widgets")
    make_evalset(
        root,
        search=[row("s-1", base_commit=sha, repo_path="repos/widgets"),
                row("s-2", base_commit=sha, repo_path="repos/widgets", image="custom:1",
                    test_cmd="pytest -x")],
        holdout=[row("h-1", base_commit=sha, repo_path="repos/widgets")],
        spec="name: widget-bugs\n"
             "description: Small bugs in a toy library\n"
             "image: evolve-widgets:latest\n"
             "test_cmd: python -m pytest -rA -p no:cacheprovider\n",
    )
    es = load_evalset(str(root))
    assert isinstance(es, EvalSet)
    assert es.name == "widget-bugs"
    assert es.description == "Small bugs in a toy library"
    assert es.root == root.resolve()
    assert es.counts() == {"holdout": 1, "search": 2}
    s1, s2 = es.tasks("search")
    assert (s1.image, s1.test_cmd) == ("evolve-widgets:latest", "python -m pytest -rA -p no:cacheprovider")
    assert (s2.image, s2.test_cmd) == ("custom:1", "pytest -x")  # the task's own values win
    assert es.tasks("holdout")[0].image == "evolve-widgets:latest"
    assert es.repo_dir(s1) == (root / "repos" / "widgets").resolve()
    assert es.repo_dir(Task.model_validate(row("x"))) is None
    assert es.files == {"search": (root / "search.jsonl").resolve(),
                        "holdout": (root / "holdout.jsonl").resolve()}
    # The fingerprint follows the split's content.
    before = es.fingerprint("holdout")
    write_rows(root / "holdout.jsonl",
               [row("h-1", base_commit=sha, repo_path="repos/widgets", problem_statement="edited")])
    assert load_evalset(root).fingerprint("holdout") != before
    assert load_evalset(root).fingerprint("search") == es.fingerprint("search")


def test_splits_mapping_in_yaml(tmp_path: Path) -> None:
    root = tmp_path / "mapped"
    write_rows(root / "data" / "train.jsonl", [row("a"), row("b")])
    write_rows(root / "data" / "sealed.jsonl", [row("c")])
    write_rows(root / "data" / "extra.jsonl", [row("d")])
    (root / "evalset.yaml").write_text(
        "splits:\n  search: data/train.jsonl\n  holdout: data/sealed.jsonl\n  smoke: data/extra.jsonl\n")
    es = load_evalset(root)
    assert es.name == "mapped"
    assert es.counts() == {"search": 2, "holdout": 1, "smoke": 1}


def test_unknown_yaml_key_names_key_and_line(tmp_path: Path) -> None:
    root = make_evalset(tmp_path / "typo", [row("a")], [row("b")],
                        spec="name: typo\ndescription: x\nholdout_fracton: 0.2\n")
    err = raises(load_evalset, root)
    assert (err.line, err.field) == (3, "holdout_fracton")
    assert "evalset.yaml, line 3, field 'holdout_fracton'" in str(err)
    assert "unknown key" in str(err) and "holdout_fraction" in str(err)


def test_bad_yaml_value_names_key(tmp_path: Path) -> None:
    root = make_evalset(tmp_path / "frac", [row("a")], [row("b")],
                        spec="name: frac\nholdout_fraction: 1.5\n")
    err = raises(load_evalset, root)
    assert (err.line, err.field) == (2, "holdout_fraction")
    assert "evalset.yaml" in str(err)


def test_invalid_yaml_names_line(tmp_path: Path) -> None:
    root = make_evalset(tmp_path / "broken", [row("a")], [row("b")],
                        spec="name: x\ndescription: [unclosed\n")
    err = raises(load_evalset, root)
    assert "evalset.yaml" in str(err) and "invalid YAML" in str(err)
    assert err.line is not None


def test_split_file_from_yaml_missing(tmp_path: Path) -> None:
    root = tmp_path / "gone"
    write_rows(root / "search.jsonl", [row("a")])
    (root / "evalset.yaml").write_text("splits:\n  search: search.jsonl\n  holdout: sealed.jsonl\n")
    err = raises(load_evalset, root)
    assert (err.line, err.field) == (3, "splits.holdout")
    assert "evalset.yaml" in str(err) and "sealed.jsonl" in str(err)


def test_overlap_between_search_and_holdout(tmp_path: Path) -> None:
    root = make_evalset(tmp_path / "leaky", [row("a"), row("shared")], [row("b"), row("c"), row("shared")])
    err = raises(load_evalset, root)
    msg = str(err)
    assert "search.jsonl" in msg and "holdout.jsonl" in msg
    assert err.field == "instance_id" and "'shared'" in msg
    # Files load in name order: holdout.jsonl first, so the duplicate is on search.jsonl line 2.
    assert err.path == str((root / "search.jsonl").resolve()) and err.line == 2
    assert "holdout.jsonl, line 3" in msg


def test_missing_holdout_split_says_how_to_add_it(tmp_path: Path) -> None:
    root = tmp_path / "half"
    write_rows(root / "search.jsonl", [row("a")])
    write_rows(root / "dev.jsonl", [row("b")])
    err = raises(load_evalset, root)
    assert "'holdout'" in str(err) and "holdout.jsonl" in str(err) and "splits:" in str(err)


def test_repo_path_missing(tmp_path: Path) -> None:
    root = make_evalset(tmp_path / "norepo", [row("a"), row("b", repo_path="repos/ghost")], [row("c")])
    err = raises(load_evalset, root)
    assert (err.line, err.field) == (2, "repo_path")
    assert "search.jsonl, line 2, field 'repo_path'" in str(err)
    assert "repos/ghost" in str(err)


def test_repo_path_not_a_git_repo(tmp_path: Path) -> None:
    root = tmp_path / "plain"
    (root / "repos" / "plain").mkdir(parents=True)
    make_evalset(root, [row("a")], [row("b", repo_path="repos/plain")])
    err = raises(load_evalset, root)
    assert (err.line, err.field) == (1, "repo_path")
    assert "holdout.jsonl, line 1, field 'repo_path'" in str(err)
    assert "not a git repository" in str(err)


def test_base_commit_not_in_repo(tmp_path: Path) -> None:
    root = tmp_path / "badsha"
    sha = make_repo(root / "repos" / "w")
    make_evalset(root, [row("a", base_commit=sha, repo_path="repos/w"),
                        row("b", base_commit="f" * 40, repo_path="repos/w")], [row("c")])
    err = raises(load_evalset, root)
    assert (err.line, err.field) == (2, "base_commit")
    assert "search.jsonl, line 2, field 'base_commit'" in str(err)


def test_unknown_split_lists_available(tmp_path: Path) -> None:
    es = load_evalset(make_evalset(tmp_path / "ok", [row("a")], [row("b")]))
    err = raises(es.tasks, "test")
    assert "'test'" in str(err) and "holdout, search" in str(err)


def test_bad_row_in_split_file_names_that_file(tmp_path: Path) -> None:
    root = make_evalset(tmp_path / "rowbad", [row("a"), row("b", FAIL_TO_PASS=[])], [row("c")])
    err = raises(load_evalset, root)
    assert "search.jsonl, line 2, field 'FAIL_TO_PASS'" in str(err)


# ---------------------------------------------------------------------------
# registry: single files


def expected_split(instance_id: str, fraction: float = 0.3) -> str:
    bucket = int(hashlib.sha256(instance_id.encode()).hexdigest(), 16) % 1000
    return "holdout" if bucket < fraction * 1000 else "search"


def test_single_jsonl_splits_deterministically(tmp_path: Path) -> None:
    ids = [f"acme__widgets-{i}" for i in range(200)]
    path = write_rows(tmp_path / "export.jsonl", [row(i) for i in ids])
    es = load_evalset(str(path))
    assert es.name == "export"
    assert es.root == tmp_path.resolve()
    got = {t.instance_id: split for split in ("search", "holdout") for t in es.tasks(split)}
    assert got == {i: expected_split(i) for i in ids}
    assert 40 <= len(es.tasks("holdout")) <= 80  # about 30%
    # A task's split depends on its id alone: a reordered subset agrees.
    sub = write_rows(tmp_path / "subset.jsonl", [row(i) for i in reversed(ids[::7])])
    es2 = load_evalset(sub)
    assert all(got[t.instance_id] == "holdout" for t in es2.tasks("holdout"))
    assert all(got[t.instance_id] == "search" for t in es2.tasks("search"))
    assert assign_split("acme__widgets-0") == expected_split("acme__widgets-0")


def test_single_swebench_export_loads(tmp_path: Path) -> None:
    rows = [dict(SWEBENCH_ROW, instance_id=f"astropy__astropy-{n}") for n in range(12000, 12010)]
    path = write_rows(tmp_path / "swe-lite.jsonl", rows)
    es = load_evalset(path)
    assert sum(es.counts().values()) == 10
    assert set(es.counts()) == {"search", "holdout"}


def test_single_jsonl_with_split_field(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "labelled.jsonl",
                      [row("a", split="search"), row("b", split="holdout"), row("c", split="search")])
    es = load_evalset(path)
    assert [t.instance_id for t in es.tasks("search")] == ["a", "c"]
    assert [t.instance_id for t in es.tasks("holdout")] == ["b"]


def test_single_jsonl_partly_labelled(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "partly.jsonl", [row("a", split="search"), row("b")])
    err = raises(load_evalset, path)
    assert (err.line, err.field) == (2, "split")
    assert "partly.jsonl, line 2" in str(err)


def test_single_jsonl_labelled_without_holdout(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "nohold.jsonl", [row("a", split="search"), row("b", split="dev")])
    err = raises(load_evalset, path)
    assert "'holdout'" in str(err) and '"split": "holdout"' in str(err)


def test_directory_with_one_unsplit_file_uses_holdout_fraction(tmp_path: Path) -> None:
    root = tmp_path / "dropped"
    ids = [f"t-{i}" for i in range(100)]
    write_rows(root / "tasks.jsonl", [row(i) for i in ids])
    (root / "evalset.yaml").write_text("holdout_fraction: 0.5\nimage: base:1\n")
    es = load_evalset(root)
    assert {t.instance_id for t in es.tasks("holdout")} == {
        i for i in ids if expected_split(i, 0.5) == "holdout"}
    assert all(t.image == "base:1" for t in es.tasks("search"))


def test_split_file_of_a_directory_set_is_refused_alone(tmp_path: Path) -> None:
    root = make_evalset(tmp_path / "whole", [row("a")], [row("b")])
    err = raises(load_evalset, root / "search.jsonl")
    assert "load its directory" in str(err)


# ---------------------------------------------------------------------------
# registry: names


def test_lookup_by_name_and_listing(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    make_evalset(first / "alpha", [row("a")], [row("b")], spec="description: the alpha set\n")
    write_rows(first / "beta.jsonl", [row(f"beta-{i}") for i in range(10)])
    make_evalset(first / "broken", [row("a")], [row("a")])
    make_evalset(second / "alpha", [row("x")], [row("y"), row("z")])
    make_evalset(second / "gamma", [row("g")], [row("h")])
    (second / "not-an-evalset").mkdir()

    dirs = [first, second, tmp_path / "does-not-exist"]
    assert load_evalset("alpha", search_dirs=dirs).root == (first / "alpha").resolve()
    assert load_evalset("gamma", search_dirs=dirs).counts() == {"holdout": 1, "search": 1}
    assert load_evalset("beta", search_dirs=dirs).name == "beta"

    err = raises(load_evalset, "delta", search_dirs=dirs)
    msg = str(err)
    assert "'delta'" in msg
    assert str(first) in msg and str(second) in msg and "does-not-exist" in msg
    assert "alpha, beta, broken, gamma" in msg

    infos = list_evalsets(dirs)
    assert [(i.name, i.path) for i in infos] == [
        ("alpha", first / "alpha"), ("beta", first / "beta.jsonl"), ("broken", first / "broken"),
        ("alpha", second / "alpha"), ("gamma", second / "gamma")]
    alpha, beta, broken, alpha2, gamma = infos
    assert alpha.ok and alpha.counts == {"holdout": 1, "search": 1}
    assert alpha.description == "the alpha set" and alpha.shadowed_by is None
    assert beta.ok and sum(beta.counts.values()) == 10
    assert not broken.ok and broken.counts is None and "'a'" in broken.error
    assert alpha2.shadowed_by == first / "alpha" and alpha2.counts == {"holdout": 2, "search": 1}
    assert gamma.shadowed_by is None


def test_missing_path_is_not_looked_up_as_name(tmp_path: Path) -> None:
    err = raises(load_evalset, str(tmp_path / "nowhere.jsonl"))
    assert "nowhere.jsonl" in str(err) and "no such file" in str(err)


def test_evalset_dirs_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EVOLVE_HOME", str(tmp_path / "home"))
    assert evalset_dirs() == [tmp_path / "evals", tmp_path / "home" / "evals"]
    monkeypatch.delenv("EVOLVE_HOME")
    assert evalset_dirs()[1] == Path.home() / ".local" / "share" / "evolve" / "evals"
    # EVOLVE_HOME's evals seen from inside it: listed once.
    monkeypatch.setenv("EVOLVE_HOME", str(tmp_path))
    dirs = evalset_dirs()
    assert dirs == [tmp_path / "evals"]


def test_name_found_via_cwd_evals(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_evalset(tmp_path / "evals" / "local", [row("a")], [row("b")])
    (tmp_path / "local").mkdir()  # an unrelated directory of the same name does not hide it
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EVOLVE_HOME", str(tmp_path / "home"))
    assert load_evalset("local").root == (tmp_path / "evals" / "local").resolve()
    # A path is a path: no lookup.
    assert "no task files" in str(raises(load_evalset, "./local"))
    assert any(i.name == "local" for i in list_evalsets())


def test_a_missing_eval_set_evolve_has_a_recipe_for_says_how_to_build_it(tmp_path: Path) -> None:
    empty = tmp_path / "none"
    empty.mkdir()
    e = raises(load_evalset, "default", search_dirs=[empty])
    assert "no eval set named 'default'" in str(e) and "evolve evals build default" in str(e)
    e = raises(load_evalset, "nosuchset", search_dirs=[empty])
    assert "no eval set named 'nosuchset'" in str(e) and "evals build" not in str(e)
