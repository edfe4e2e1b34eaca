"""The repo snapshot at ``/testbed`` inside a sandbox, the patch taken from it, and the one
protocol by which evolve's steps run in a sandbox.

The harness sees /testbed as a single-commit git repository holding the tree
at ``base_commit``: history is never shown, since it may contain the fix
(agents find it with ``git log --all``; SWE-bench removes it for the same
reason). The ``model_patch`` is taken against a second, root-only copy of the
base tree (``SHADOW``), so whatever the harness does to ``/testbed/.git``
(commits, resets, deleting it) the patch is the work tree's real change.

Both git repositories are built once per (repo, commit, owner) on the host,
with the same git commands the sandbox would run, and go in together with
the tree as one tar archive (``snapshot``, cached in memory). Images that
already hold the repo at /testbed get theirs made inside the sandbox
(``prepare_testbed``); ``testbed_archive`` picks.

The protocol (``run_as_root``): an archive goes in and one root script runs;
the script runs a step as the sandbox user with ``$as_user``. Whether the
archive comes on the exec's standard input (``UNPACK``) and ``$as_user`` is
``setpriv``, or the engine copies the archive and there is no ``$as_user``, is
decided there and nowhere else.

The shell and Python run inside sandboxes are package files
(``evolve/sandbox/scripts/``); per-call values go in as a header of
shell-quoted variable assignments (``shell_header``), never spliced into a
script's text. After the harness, ``reap_script`` kills whatever it left
running (what a restart did, without one) and ``collect_script`` takes the
patch and copies the harness's outputs for one read.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import os
import re
import shlex
import tarfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from importlib import resources
from pathlib import Path, PurePosixPath

from evolve import hostgit, owner
from evolve.errors import EvalSetError, InfraError
from evolve.sandbox.docker import TAR_TRAILER, ExecResult, Sandbox, tar_entry
from evolve.types import Task

TESTBED = "/testbed"
SHADOW = "/var/lib/evolve/base.git"
"""Root-only git dir holding the base tree; the harness (uid 1000) cannot read or change it."""
PRIVATE = "/var/lib/evolve"
"""Root-only (0700) directory of evolve's own files inside a sandbox."""
COLLECTED = f"{PRIVATE}/out"
"""Where ``collect_script`` puts the patch and the harness's output files, for one copy out."""
MAX_PATCH_BYTES = 20_000_000
"""A ``model_patch`` over this many bytes is not kept: the task is ``patch_too_large``, not graded."""
LARGE_UNTRACKED_BYTES = 5_000_000
"""Untracked files (not in the base tree, not ignored) over this many bytes are left out of the
``model_patch`` (``IntegrityFlag.LARGE_FILES_SKIPPED``), so a huge stray file next to a fix neither
breaks the diff nor hides the fix. Files of the base tree that grew are kept (and may make the
patch too large)."""
LARGE_FILES_LISTED_BYTES = 65_536
"""Bound on the collected list of left-out files (``size path`` records)."""
_EXCLUDE = "__pycache__/\n*.pyc\n.pytest_cache/\n*.egg-info/\n"
GIT = "git -c core.hooksPath=/dev/null -c core.fsmonitor=false -c safe.directory='*'"
"""Git in a sandbox, as a shell command prefix: no hooks, no fsmonitor, any owner."""
TREE_RESET = f"{GIT} checkout -q -- . && {GIT} clean -fdq"
"""Shell command that puts /testbed's tracked files back and removes untracked files, run from
/testbed. Not ``clean -x``: a snapshot's ignored files (an sdist's egg-info, a generated
``_version.py``) are part of the tree the tests run against, untracked in the visible repository,
and must survive a reset; files the tests write under ignore rules are no part of any patch."""
_VISIBLE_MESSAGE = "evolve: snapshot at base_commit"
_SETUP_PATCH = f"{PRIVATE}/setup.patch"
_SETUP_FAILED = "evolve-setup-patch-failed"
_REPACK = ["repack", "-a", "-d", "-q", "-n", "--window=0", "--no-write-bitmap-index"]
"""Git arguments that put a host-built repository's loose objects into one pack (no delta search,
no bitmap, no ``objects/info/packs``): two files in the sandbox instead of one per object."""
SNAPSHOT_CACHE_BYTES = 1 << 30
"""Snapshot archives kept in memory per process, least recently used dropped first."""


@functools.cache
def script(name: str) -> str:
    """The text of the package file ``evolve/sandbox/scripts/NAME``."""
    return resources.files("evolve.sandbox").joinpath("scripts", name).read_text()


def shell_header(**values: str | int) -> str:
    """Shell lines that set each variable to its value, shell-quoted, and unexported (``unset``
    first: a variable the environment brought in would otherwise stay exported to children)."""
    for name in values:
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
            raise ValueError(f"not a script variable name: {name!r}")
    return f"unset {' '.join(values)}\n" + "".join(f"{k}={shlex.quote(str(v))}\n" for k, v in values.items())


def archive_at(repo_dir: Path, commit: str) -> bytes:
    """A tar of the tree of ``commit`` in the local repo ``repo_dir`` (no ``.git``).

    Raises:
        EvalSetError: the repo or the commit does not exist.
    """
    if not Path(repo_dir).is_dir():
        raise EvalSetError(f"cannot read commit {commit} of {repo_dir}: no such directory. "
                           "Check the task's repo_path and base_commit.")
    try:
        if commit.startswith("-"):
            raise hostgit.HostGitError(["archive"], 128, f"not a commit: {commit!r}")
        return hostgit.run(["archive", "--format=tar", commit], only=repo_dir)
    except hostgit.HostGitError as e:
        raise EvalSetError(f"cannot read commit {commit} of {repo_dir}: {e}. "
                           "Check the task's repo_path and base_commit.") from None


def sandbox_ids(sandbox: Sandbox) -> tuple[int, int] | None:
    """``(uid, gid)`` of the sandbox's non-root user, or None (no user, root, or not numeric)."""
    uid, _, gid = (sandbox.user or "").partition(":")
    if not uid.isdigit() or not gid.isdigit() or int(uid) == 0:
        return None
    return int(uid), int(gid)


def user_prefix(ids: tuple[int, int]) -> str:
    """Prefix with which a root shell runs a program as ``uid:gid``, as ``docker exec --user uid:gid``
    would: no capabilities, the group as the only supplementary group."""
    uid, gid = ids
    return f"setpriv --reuid={uid} --regid={gid} --groups={gid}"


# -- the snapshot, built on the host ----------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    sha: str
    """The shadow's base commit (40 hex)."""
    entries: bytes
    """Tar entries (no trailer) that put /testbed, /testbed/.git and the shadow at ``/``."""


_snapshots: OrderedDict[tuple, Snapshot] = OrderedDict()
_snapshot_bytes = 0
_snapshot_locks: dict[tuple, threading.Lock] = {}
_cache_lock = threading.Lock()


def snapshot(repo_dir: Path, commit: str, uid: int, gid: int) -> Snapshot:
    """The snapshot of ``commit`` of ``repo_dir`` with /testbed owned by ``uid:gid`` (cached).

    Raises:
        EvalSetError: the repo or the commit does not exist.
        InfraError: git on the host failed.
    """
    global _snapshot_bytes
    key = (str(Path(repo_dir).resolve()), commit, uid, gid)
    with _cache_lock:
        lock = _snapshot_locks.setdefault(key, threading.Lock())
    with lock:
        with _cache_lock:
            if key in _snapshots:
                _snapshots.move_to_end(key)
                return _snapshots[key]
        snap = _build_snapshot(Path(repo_dir), commit, uid, gid)
        with _cache_lock:
            _snapshots[key] = snap
            _snapshot_bytes += len(snap.entries)
            while _snapshot_bytes > SNAPSHOT_CACHE_BYTES and len(_snapshots) > 1:
                _, old = _snapshots.popitem(last=False)
                _snapshot_bytes -= len(old.entries)
        return snap


def _host_git(args: list[str], cwd: Path, home: Path) -> str:
    # Only git's defaults and the sandbox image's system settings: no host config may change the result.
    try:
        return hostgit.text(args, cwd=cwd, home=home)
    except hostgit.HostGitError as e:
        raise InfraError("docker", str(e)) from None


def _safe_name(name: str) -> str | None:
    """``name`` without leading ``./``, or None if it is absolute or climbs out."""
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts:
        return None
    parts = [p for p in path.parts if p != "."]
    return "/".join(parts) if parts else None


def _build_snapshot(repo_dir: Path, commit: str, uid: int, gid: int) -> Snapshot:
    data = archive_at(repo_dir, commit)
    out: list[bytes] = [tar_entry("testbed", uid=uid, gid=gid, mode=0o755)]
    with owner.temp_dir("snapshot") as tmp:
        tmp_path = Path(tmp)
        tree = tmp_path / "testbed"
        tree.mkdir()
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for member in tar:
                name = _safe_name(member.name)
                if name is None or not (member.isfile() or member.isdir() or member.issym()):
                    raise EvalSetError(f"commit {commit} of {repo_dir}: unexpected archive entry {member.name!r}")
                dest = tree / name
                if any(q.is_symlink() for q in (dest, *dest.parents) if q != tree and tree in q.parents):
                    raise EvalSetError(f"commit {commit} of {repo_dir}: archive entry {member.name!r} "
                                       "goes through a symbolic link")
                content = None
                if member.isdir():
                    dest.mkdir(parents=True, exist_ok=True)
                elif member.issym():
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    os.symlink(member.linkname, dest)
                else:
                    content = tar.extractfile(member).read()
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    dest.write_bytes(content)
                    dest.chmod(0o755 if member.mode & 0o111 else 0o644)
                out.append(tar_entry(f"testbed/{name}", content, uid=uid, gid=gid, info=member))
        # The same commands the sandbox runs (see scripts/snapshot.sh, visible_snapshot.sh), run here.
        # Each file the archive holds costs the sandbox about a millisecond of CPU to create (overlayfs),
        # twice per task-run (agent and grading containers), so the repositories go in lean: no template
        # files (sample hooks, which never run: core.hooksPath=/dev/null) and every object in one pack.
        shadow = tmp_path / "base.git"
        _host_git(["init", "-q", "--bare", "--template=", str(shadow)], tmp_path, tmp_path)
        (shadow / "info").mkdir(exist_ok=True)
        (shadow / "info" / "exclude").write_text(_EXCLUDE)
        shadow_git = [f"--git-dir={shadow}", f"--work-tree={tree}"]
        # Everything in the snapshot, ignored or not (an sdist's egg-info, an image's __pycache__):
        # the base the grader compares the work tree with must be the whole of it.
        _host_git([*shadow_git, "add", "-A", "-f", "."], tree, tmp_path)
        # Nobody reads the shadow's reflog: it is not made.
        _host_git([*shadow_git, "-c", "core.logAllRefUpdates=false", "commit", "-q", "--no-verify", "--allow-empty",
                   "-m", "base"], tree, tmp_path)
        sha = _host_git([*shadow_git, "rev-parse", "HEAD"], tree, tmp_path).strip()
        _host_git([*shadow_git, *_REPACK], tree, tmp_path)
        _host_git(["init", "-q", "--template="], tree, tmp_path)
        (tree / ".git" / "info").mkdir(exist_ok=True)
        with open(tree / ".git" / "info" / "exclude", "a") as f:
            f.write(_EXCLUDE)
        _host_git(["add", "-A", "."], tree, tmp_path)
        _host_git(["commit", "-q", "--no-verify", "--allow-empty", "-m", _VISIBLE_MESSAGE], tree, tmp_path)
        _host_git(_REPACK, tree, tmp_path)
        if not re.fullmatch(r"[0-9a-f]{40}", sha):
            raise InfraError("docker", f"unexpected base commit id from git on the host: {sha!r}")
        out += _tree_entries(tree / ".git", "testbed/.git", uid, gid)
        out.append(tar_entry(PRIVATE.lstrip("/"), mode=0o700))
        out += _tree_entries(shadow, SHADOW.lstrip("/"), 0, 0)
    return Snapshot(sha, b"".join(out))


def _tree_entries(root: Path, name: str, uid: int, gid: int) -> list[bytes]:
    """Tar entries for the directory ``root`` (regular files and directories) under ``name``."""
    entries = [tar_entry(name, uid=uid, gid=gid, mode=0o755)]
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel = Path(dirpath).relative_to(root)
        for d in dirnames:
            entries.append(tar_entry(f"{name}/{(rel / d).as_posix()}", uid=uid, gid=gid, mode=0o755))
        for fname in sorted(filenames):
            path = Path(dirpath) / fname
            if path.is_symlink() or not path.is_file():
                continue
            mode = path.stat().st_mode & 0o777 & ~0o022
            entries.append(tar_entry(f"{name}/{(rel / fname).as_posix()}", path.read_bytes(),
                                     uid=uid, gid=gid, mode=mode))
    return entries


# -- putting the snapshot into a sandbox ---------------------------------------------------


def testbed_archive(sandbox: Sandbox, task: Task, repo_dir: Path | None) -> tuple[str, bytes]:
    """The base commit's sha and the tar entries (no trailer) that put the task's snapshot at
    /testbed: the host-built ``snapshot`` when the sandbox has a numeric user and there is a local
    repo and no ``setup_patch``, else none (``prepare_testbed`` has then made it inside the sandbox).

    Raises:
        EvalSetError: the repo or the commit does not exist.
        InfraError: the snapshot could not be made (Docker or git), or the task's ``setup_patch`` does not
            apply (``"eval_set"``).
    """
    ids = sandbox_ids(sandbox)
    if repo_dir is not None and ids is not None and not setup_patch(task):
        snap = snapshot(repo_dir, task.base_commit, *ids)
        return snap.sha, snap.entries
    return prepare_testbed(sandbox, task, repo_dir), b""


def setup_patch(task: Task) -> bytes:
    """The task's ``setup_patch`` (an extra field, a unified diff; b"" when absent): applied as root to
    /testbed before the snapshot, so the agent and the grader both start from the patched tree. SWE-smith
    tasks carry their bug here (``evolve.evalsets.swesmith``): its images hold the clean repo and the bug
    is the instance's patch."""
    value = (task.model_extra or {}).get("setup_patch")
    return value.encode("utf-8", "surrogateescape") if isinstance(value, str) and value.strip() else b""


def prepare_testbed(sandbox: Sandbox, task: Task, repo_dir: Path | None) -> str:
    """Put the task's snapshot at /testbed and return the base commit's sha (40 hex).

    ``repo_dir`` is the local repository to copy in, or None when the image
    already holds the repo at /testbed. A task's ``setup_patch`` is applied
    first, inside the sandbox. (``testbed_archive`` instead gives the
    host-built snapshot as tar entries when it can.)

    Raises:
        EvalSetError: the repo or the commit does not exist.
        InfraError: the snapshot could not be made (Docker or git), or the task's ``setup_patch`` does not
            apply (``"eval_set"``: the eval set's problem, never the agent's).
    """
    ids = sandbox_ids(sandbox)
    setup = setup_patch(task)
    if repo_dir is not None and ids is not None and not setup:
        snap = snapshot(repo_dir, task.base_commit, *ids)
        sandbox.put_archive(snap.entries + TAR_TRAILER)
        return snap.sha
    # The image holds the repo (or the sandbox has no numeric user): snapshot inside the sandbox.
    if repo_dir is not None:
        sandbox.put_tar(TESTBED, archive_at(repo_dir, task.base_commit))
    if setup:
        sandbox.put_archive(tar_entry(_SETUP_PATCH.lstrip("/"), setup, mode=0o600) + TAR_TRAILER)
    later = "evolve-visible-snapshot-later"
    visible = shell_header(evolve_testbed=TESTBED, evolve_exclude=_EXCLUDE,
                           evolve_message=_VISIBLE_MESSAGE) + script("visible_snapshot.sh")
    header = shell_header(evolve_testbed=TESTBED, evolve_shadow=SHADOW, evolve_private=PRIVATE,
                          evolve_exclude=_EXCLUDE, evolve_later=later, evolve_visible=visible,
                          evolve_chown=sandbox.user if repo_dir is None and sandbox.user else "",
                          evolve_uid=ids[0] if ids else "", evolve_gid=ids[1] if ids else "",
                          evolve_setup_patch=_SETUP_PATCH if setup else "", evolve_setup_failed=_SETUP_FAILED)
    shadow = sandbox.exec(header + script("snapshot.sh"), timeout_s=600, user="root")
    lines = shadow.output.strip().splitlines()
    if _SETUP_FAILED in lines:
        raise InfraError("eval_set", f"the task's setup_patch does not apply to {TESTBED} of image {task.image}: "
                                     f"{shadow.output[-800:]}")
    sha = next((line for line in reversed(lines) if re.fullmatch(r"[0-9a-f]{40}", line)), "")
    if shadow.exit_code != 0 or len(sha) != 40:
        raise InfraError("docker", f"could not snapshot {TESTBED} (exit {shadow.exit_code}): {shadow.output[-500:]}")
    if not ids or later in lines:
        visible_res = sandbox.exec(visible, timeout_s=300)
        if visible_res.exit_code != 0:
            raise InfraError("docker", f"could not init git in {TESTBED} (exit {visible_res.exit_code}): "
                                       f"{visible_res.output[-500:]}")
    return sha


NO_TOOLS = "evolve-no-tools"
_UNPACK_FAILED = "evolve-unpack-failed"
UNPACK = shell_header(evolve_no_tools=NO_TOOLS, evolve_unpack_failed=_UNPACK_FAILED) + script("unpack.sh")
"""Shell run as root at the start of a command whose standard input is a tar archive of
``tar_entry`` entries (``scripts/unpack.sh``): unpacks it at ``/`` as it is (owners, modes), like
``Sandbox.put_archive`` without its cost. Prints ``NO_TOOLS`` first thing and exits when the image
lacks GNU tar or setpriv."""


def unpack_failure(output: str) -> str | None:
    """What ``tar`` said when ``UNPACK`` failed (the output of its command then ends with a
    marker), else None."""
    end = f"\n{_UNPACK_FAILED}\n"
    return output[: -len(end)][-500:] if output.endswith(end) else None


# -- the protocol: one root script per phase ------------------------------------------------------

_STARTED = "evolve-started"


@dataclass(frozen=True)
class RootRun:
    """What ``run_as_root`` ran."""

    result: ExecResult
    """The script's exec (its output without the protocol's own lines)."""
    as_user: bool
    """The script could run steps as the sandbox user (``$as_user`` was set). When False, its
    steps ran as root, and a step that must never run as root (the harness) needs its own exec
    as the sandbox user (``Sandbox.exec`` without ``user``)."""


def run_as_root(sandbox: Sandbox, body: str, archive: bytes, *, timeout_s: float,
                env: dict[str, str] | None = None, max_output: int = 1_000_000) -> RootRun:
    """Put ``archive`` (tar entries and ``TAR_TRAILER``) into ``sandbox`` and run the shell
    ``body`` as root: the one way evolve runs a phase in a sandbox.

    ``body`` gets two variables: ``as_user``, a command prefix that runs a program as the sandbox
    user (``$as_user cmd ...``, unquoted), and ``user_ids`` (``uid:gid``, the owner for the files
    it makes for that user). How is decided here only:

    - the sandbox has a numeric non-root user and the image has GNU tar and util-linux's setpriv:
      the archive is the exec's standard input, unpacked by ``UNPACK``, and ``as_user`` is
      ``setpriv`` to that user, with no capabilities (one exec in all);
    - otherwise the engine copies the archive in (``put_archive``) and ``body`` runs in an exec of
      its own with ``as_user`` empty and ``user_ids`` ``0:0``: its steps run as root
      (``RootRun.as_user`` False).

    Raises:
        InfraError: Docker failed, or the archive did not unpack.
    """
    ids = sandbox_ids(sandbox)
    if ids is not None:
        header = shell_header(as_user=user_prefix(ids), user_ids=f"{ids[0]}:{ids[1]}")
        res = sandbox.exec(f"{UNPACK}echo {_STARTED}\n{header}{body}", timeout_s=timeout_s, user="root", env=env,
                           max_output=max_output, stdin=archive)
        if not res.output.startswith(NO_TOOLS):
            at = res.output.find(f"{_STARTED}\n")
            if at < 0:
                raise InfraError("docker", f"could not copy the archive in: "
                                           f"{unpack_failure(res.output) or res.output[-500:]}")
            return RootRun(dataclasses.replace(res, output=res.output[at + len(_STARTED) + 1:]), True)
    sandbox.put_archive(archive)
    res = sandbox.exec(shell_header(as_user="", user_ids="0:0") + body, timeout_s=timeout_s, user="root", env=env,
                       max_output=max_output)
    return RootRun(res, False)


# -- taking the patch ---------------------------------------------------------------------------


def kill_all_script() -> str:
    """Shell (dash) functions, run as root (``scripts/kill_all.sh``): ``kill_all`` kills every
    process but PID 1, the container's main process (left stopped) and the calling exec, or exits
    3. See step 1 of ``reap_script``."""
    return script("kill_all.sh")


def reap_script(ids: tuple[int, int]) -> str:
    """Shell (dash) run as root after the harness that leaves nothing the harness started running,
    or exits nonzero (then restart the sandbox instead): what ``Sandbox.restart`` achieves, without
    the restart (``scripts/reap.sh``). Prints nothing but its own error messages.

    1. ``kill -STOP -1`` stops every process but PID 1 and this shell at once
       (forks in flight included), so nothing can spawn while the stopped ones
       are killed one by one; nothing forks meanwhile, so a fork bomb holding
       every pid cannot stop it. Spared: this exec's own ``timeout`` (continued)
       and the container's main process (``sleep infinity``, the child of PID 1
       with the lowest pid), which stays stopped.
    2. PID 1 (docker-init) and the main process run as the sandbox user too,
       and PID 1 can neither be stopped nor killed from inside. Where that user
       may ptrace them (no Yama restriction), a harness could have taken them
       over (injected code), so: PID 1 is continued (should the harness have
       left it stopped) until it has reaped the killed processes, then frozen
       (every thread ptrace-stopped by ``scripts/freeze_pid1.py``, run as the
       sandbox user, which holds it until the container goes); the main process
       is stopped again; whatever PID 1 started meanwhile is killed.
    """
    return (shell_header(as_user=user_prefix(ids), evolve_private=PRIVATE, evolve_freeze_py=script("freeze_pid1.py"))
            + kill_all_script() + script("reap.sh"))


def collect_script(base_sha: str, files: dict[str, tuple[str, int]]) -> str:
    """Shell run as root, after every harness process is gone, that writes the ``model_patch`` and
    copies ``files`` (``{name: (path, max bytes)}``; regular files only) into ``COLLECTED``
    (``scripts/collect.sh``); read them with ``read_collected``, which leaves out the files over
    their cap, and the patch's part with ``taken_patch``.

    The ``model_patch`` is the ``git diff --binary`` of /testbed (tracked, untracked and committed
    changes) against ``base_sha``, byte for byte; external diff drivers and text conversions set by
    the harness are ignored, and so is what running code and installing the package leave
    (``__pycache__``, ``*.pyc``, ``.pytest_cache``, ``*.egg-info``), even where the harness's
    ``.gitignore`` re-includes it (then it is listed in ``noise``). Untracked files over
    ``LARGE_UNTRACKED_BYTES`` are left out of it and listed (``large_files``: NUL-terminated
    ``size path`` records, ``large_files.count``). A patch over ``MAX_PATCH_BYTES`` is left empty
    with its size in ``patch_size``; when git cannot make the diff (what the harness left is too
    much for it), the patch is empty and ``diff_error`` says why. Neither is an error of this
    script: it exits nonzero only when it cannot write ``COLLECTED`` or copy ``files``.
    """
    records = []
    for name, (path, cap) in files.items():
        if not re.fullmatch(r"[A-Za-z0-9._-]+", name) or "\n" in path or path != path.strip():
            raise ValueError(f"cannot collect {name!r} from {path!r}")
        records.append(f"{cap + 1} {name} {path}")
    return shell_header(evolve_private=PRIVATE, evolve_collected=COLLECTED, evolve_testbed=TESTBED,
                        evolve_shadow=SHADOW, evolve_base=base_sha, evolve_large_bytes=LARGE_UNTRACKED_BYTES,
                        evolve_listed_bytes=LARGE_FILES_LISTED_BYTES, evolve_max_patch=MAX_PATCH_BYTES,
                        evolve_files="\n".join(records)) + script("collect.sh")


@dataclass(frozen=True)
class TakenPatch:
    """The ``model_patch`` part of what ``collect_script`` collected."""

    patch: bytes
    """The exact ``git diff --binary`` output; empty when it was not kept (see ``problem``)."""
    total_bytes: int
    """The diff's size, also when it was too large to keep."""
    problem: str | None = None
    """Why the diff was not kept (over ``MAX_PATCH_BYTES``, or git could not make it): then the
    task is ``patch_too_large`` (the candidate's doing), never infra."""
    large_files: tuple[tuple[bytes, int], ...] = ()
    """Untracked files over ``LARGE_UNTRACKED_BYTES`` left out of the patch: ``(path, size)``
    (the list may be cut short; see ``large_files_count``)."""
    large_files_count: int = 0
    noise: tuple[bytes, ...] = ()
    """Build noise (see ``collect_script``) that was new and not ignored, so the harness must have
    re-included it: left out of the patch."""


def taken_patch(files: dict[str, bytes]) -> TakenPatch:
    """Read the ``model_patch``, its size and what was left out of it from ``collect_script``'s
    collected files (``read_collected``)."""
    patch = files.get("model.patch", b"")
    listed: list[tuple[bytes, int]] = []
    raw = files.get("large_files", b"")
    records = raw.split(b"\0")
    for rec in records[:-1]:  # the last one is empty, or cut short by the cap
        size, _, path = rec.partition(b" ")
        if size.isdigit() and path:
            listed.append((path, int(size)))
    count_raw = files.get("large_files.count", b"").strip()
    count = max(int(count_raw) if count_raw.isdigit() else 0, len(listed))
    error = files.get("diff_error")
    if error is not None:
        text = error.decode("utf-8", "replace").strip()
        return TakenPatch(b"", 0, f"could not diff: {text}", tuple(listed), count)
    size_raw = files.get("patch_size", b"").strip()
    if size_raw.isdigit():
        size = int(size_raw)
        return TakenPatch(b"", size, f"the diff is {size} bytes, over the {MAX_PATCH_BYTES}-byte cap",
                          tuple(listed), count)
    noise = tuple(n for n in files.get("noise", b"").split(b"\0")[:-1] if n)
    return TakenPatch(patch, len(patch), None, tuple(listed), count, noise)


INLINE_BYTES = 2_000_000
"""Collected files up to this size in all are printed (base64 tar) by ``print_collected_script``."""
_INLINE = "evolve-inline"


def print_collected_script() -> str:
    """Shell that prints ``COLLECTED`` as a base64 tar between marker lines when it holds at most
    ``INLINE_BYTES``, saving a copy out (``Sandbox.get_files``); see ``read_collected``."""
    return shell_header(evolve_collected=COLLECTED, evolve_inline_bytes=INLINE_BYTES,
                        evolve_inline=_INLINE) + script("print_collected.sh")


def read_collected(sandbox: Sandbox, output: str, caps: dict[str, tuple[str, int]]) -> dict[str, bytes] | None:
    """The files ``collect_script`` collected (``{name: content}``), from the output of
    ``print_collected_script`` or else copied out; the files over their cap are left out.
    None if there is no ``COLLECTED``.

    Raises:
        InfraError: the copy out failed.
    """
    files: dict[str, bytes] | None = None
    m = re.search(rf"(?:^|\n){_INLINE}\n([A-Za-z0-9+/=]*)\n{_INLINE}\n\Z", output)
    if m:
        import base64

        try:
            with tarfile.open(fileobj=io.BytesIO(base64.b64decode(m.group(1), validate=True))) as tar:
                # Entries are ./NAME: the files directly in COLLECTED.
                files = {PurePosixPath(t.name).name: tar.extractfile(t).read()
                         for t in tar if t.isfile() and len(PurePosixPath(t.name).parts) == 1}
        except (ValueError, tarfile.TarError):
            files = None
    if not files:
        files = sandbox.get_files(COLLECTED)
    if files is None:
        return None
    return {name: data for name, data in files.items() if name not in caps or len(data) <= caps[name][1]}
