"""The one unified-diff walker (evolve.diffwalk) under its two readers, ``grading.patch_paths`` and
``swesmith.reverse_diff``, on real ``git diff --binary`` output from a real repo: names git quotes
(spaces, non-ASCII, a tab), new and deleted files (/dev/null), renames, binary patches, files without
a final newline, and content lines that look like file headers."""

from __future__ import annotations

import subprocess

import pytest

from evolve.diffwalk import walk
from evolve.evalsets.swesmith import reverse_diff
from evolve.grading import patch_paths

ORIGINAL = {
    "plain.py": "-- not a header\nx = 1\n",
    "with space/my file.py": "a = 1\nb = 2\n",
    "café/ünï.py": "v = 'é'\n",
    "tab\there.py": "t = 1\n",
    "gone.py": "g = 1\n",
    "tail.txt": "no newline",
    "moved.py": "m = 1\n" * 20,
    "blob.bin": bytes(range(256)),
}


def git(repo, *args) -> bytes:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                          capture_output=True).stdout


@pytest.fixture
def repo(tmp_path):
    """A committed repo holding ``ORIGINAL``."""
    root = tmp_path / "r"
    for path, content in ORIGINAL.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(content if isinstance(content, bytes) else content.encode())
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "clean")
    return root


def change_text_files(root) -> bytes:
    """Edits, a new and a deleted file, as ``git diff --binary`` writes them (staged)."""
    (root / "plain.py").write_text("++ not a header either\nx = 2\n")  # shown as "--- ..." and "+++ ..."
    (root / "with space/my file.py").write_text("a = 1\nb = 3\n")
    (root / "café/ünï.py").write_text("v = 'ü'\n")
    (root / "tab\there.py").write_text("t = 2\n")
    (root / "gone.py").unlink()
    (root / "new dir/né w.py").parent.mkdir()
    (root / "new dir/né w.py").write_text("n = 1\n")
    (root / "tail.txt").write_text("still no newline")
    git(root, "add", "-A")
    return git(root, "diff", "--binary", "--cached", "HEAD")


def test_patch_paths_reads_every_header_name_git_writes_and_no_content_line(repo):
    diff = change_text_files(repo)
    assert b'"a/caf\\303\\251/\\303\\274n\\303\\257.py"' in diff and b'"a/tab\\there.py"' in diff  # quoted
    assert b"\n--- not a header" in diff and b"\n+++ not a header either" in diff  # content, not headers
    assert sorted(patch_paths(diff)) == sorted(["plain.py", "with space/my file.py", "café/ünï.py", "tab\there.py",
                                                "gone.py", "new dir/né w.py", "tail.txt"])
    (repo / "moved.py").rename(repo / "moved to.py")
    (repo / "blob.bin").write_bytes(bytes(range(255, -1, -1)))
    git(repo, "add", "-A")
    diff = git(repo, "diff", "--binary", "-M", "--cached", "HEAD")
    assert b"rename from moved.py" in diff and b"GIT binary patch" in diff
    assert "moved.py" in patch_paths(diff) and "moved to.py" in patch_paths(diff) and "blob.bin" in patch_paths(diff)
    assert "not a header" not in " ".join(patch_paths(diff))


def test_the_reversed_diff_restores_the_tree_and_reverses_back(repo):
    bug = change_text_files(repo).decode("utf-8")
    git(repo, "commit", "-qm", "bug")
    fix = reverse_diff(bug)
    assert fix is not None and fix != bug
    (repo.parent / "fix.patch").write_text(fix)
    git(repo, "apply", "--index", str(repo.parent / "fix.patch"))
    assert git(repo, "diff", "--cached", "HEAD~1", "--stat") == b""  # exactly the clean tree
    assert not (repo / "new dir/né w.py").exists() and (repo / "gone.py").read_text() == "g = 1\n"
    assert reverse_diff(fix) == bug  # reversing twice is the identity
    assert patch_paths(fix) and sorted(patch_paths(fix)) == sorted(patch_paths(bug))


def test_renames_and_binary_patches_are_not_reversed(repo):
    (repo / "moved.py").rename(repo / "moved to.py")
    git(repo, "add", "-A")
    assert reverse_diff(git(repo, "diff", "--binary", "-M", "--cached", "HEAD").decode()) is None
    git(repo, "reset", "-q", "--hard")
    (repo / "blob.bin").write_bytes(b"\x00" + bytes(range(255, 0, -1)))
    assert reverse_diff(git(repo, "diff", "--binary", "HEAD").decode("utf-8", "surrogateescape")) is None
    assert reverse_diff(git(repo, "diff", "HEAD").decode("utf-8", "surrogateescape")) is None  # "Binary files"


def test_the_walker_ends_a_hunk_by_its_counts(repo):
    diff = change_text_files(repo)
    kinds = {d.text: d.kind for d in walk(diff)}
    assert kinds[b"--- not a header"] == "-" and kinds[b"+++ not a header either"] == "+"
    assert kinds[b"--- a/plain.py"] == "header" and kinds[b"\\ No newline at end of file"] == "\\"
    assert b"".join(d.text + b"\n" for d in walk(diff))[:-1] == diff  # every line, once, in order


def test_a_quoted_climbing_name_with_gits_trailing_tab_is_malformed():
    """Hostile: git ends a name holding a space with a tab, quoted names too; the tab must not keep
    the name from being unquoted, or ``\\056\\056`` (``..``) passes the grader's path check."""
    from evolve.grading import malformed

    headers = b'--- "a/\\056\\056/x y"\t\n+++ "b/\\056\\056/x y"\t\n@@ -1 +1 @@\n-a\n+b\n'
    for diff in (headers, b'diff --git "a/\\056\\056/x y" "b/\\056\\056/x y"\n' + headers):
        assert patch_paths(diff) == ["../x y"]
        assert "'..' are not allowed" in malformed(diff)
