"""The repo snapshot at ``/testbed`` inside a sandbox, and the patch taken from it.

The harness sees /testbed as a single-commit git repository holding the tree
at ``base_commit``: history is never shown, since it may contain the fix
(agents find it with ``git log --all``; SWE-bench removes it for the same
reason). The ``model_patch`` is taken against a second, root-only copy of the
base tree (``SHADOW``), so whatever the harness does to ``/testbed/.git``
(commits, resets, deleting it) the patch is the work tree's real change.

Both git repositories are built once per (repo, commit, owner) on the host,
with the same git commands the sandbox would run, and go in together with
the tree as one tar archive (``snapshot``, cached in memory), which the
agent's and the grader's single command unpacks from its standard input
(``UNPACK``). Images that already hold the repo at /testbed get theirs made
inside the sandbox, in one command (``prepare_testbed``).

After the harness, ``reap_script`` kills whatever it left running (what a
restart did, without one) and ``collect_script`` takes the patch and copies
the harness's outputs for one read.
"""

from __future__ import annotations

import io
import os
import re
import shlex
import subprocess
import tarfile
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from evolve.errors import EvalSetError, InfraError
from evolve.sandbox.docker import TAR_TRAILER, Sandbox, tar_entry
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
NOISE_PATHSPECS = (":(exclude,glob)**/__pycache__/**", ":(exclude,glob)**/*.py[co]",
                   ":(exclude,glob)**/.pytest_cache/**", ":(exclude,glob)**/*.egg-info/**")
"""What running code and installing the package leave in /testbed: never part of a ``model_patch``,
even where a ``.gitignore`` of the harness's re-includes it or the base already had such files
(pathspec excludes, unlike ignore rules, cannot be overridden from the work tree)."""
_GIT = "git -c core.hooksPath=/dev/null -c core.fsmonitor=false -c safe.directory='*'"
_SHADOW_GIT = f"GIT_CONFIG_GLOBAL=/dev/null {_GIT} --git-dir={SHADOW} --work-tree={TESTBED}"
"""Git on the shadow, as root: no user config (HOME is /tmp, which the harness can write)."""
_COMMIT = "-c user.name=evolve -c user.email=evolve@localhost commit -q --no-verify --allow-empty"
_SHADOW_SNAPSHOT = (
    f"mkdir -p {SHADOW} && chmod 700 /var/lib/evolve && git init -q --bare {SHADOW} "
    f"&& printf '{_EXCLUDE}' > {SHADOW}/info/exclude "
    f"&& {_SHADOW_GIT} add -A -f . && {_SHADOW_GIT} {_COMMIT} -m base && {_SHADOW_GIT} rev-parse HEAD"
)
_VISIBLE_SNAPSHOT = (
    f"cd {TESTBED} && rm -rf .git && git init -q && printf '{_EXCLUDE}' >> .git/info/exclude "
    f"&& {_GIT} add -A . && {_GIT} {_COMMIT} -m 'evolve: snapshot at base_commit'"
)
_VISIBLE_MESSAGE = "evolve: snapshot at base_commit"
SNAPSHOT_CACHE_BYTES = 1 << 30
"""Snapshot archives kept in memory per process, least recently used dropped first."""


def archive_at(repo_dir: Path, commit: str) -> bytes:
    """A tar of the tree of ``commit`` in the local repo ``repo_dir`` (no ``.git``).

    Raises:
        EvalSetError: the repo or the commit does not exist.
    """
    import git

    try:
        repo = git.Repo(repo_dir)
        buf = io.BytesIO()
        repo.archive(buf, treeish=commit, format="tar")
    except (git.exc.GitError, ValueError) as e:
        raise EvalSetError(f"cannot read commit {commit} of {repo_dir}: {e}. "
                           "Check the task's repo_path and base_commit.") from None
    return buf.getvalue()


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


def as_user(ids: tuple[int, int], cmd: str) -> str:
    """A command a root shell runs to run the shell command ``cmd`` as ``uid:gid``."""
    return f"{user_prefix(ids)} sh -c {shlex.quote(cmd)}"


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
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LANG": "C",
           "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull, "GIT_TERMINAL_PROMPT": "0"}
    cmd = ["git", "-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false", "-c", "safe.directory=*",
           "-c", "init.defaultBranch=main", "-c", "user.name=evolve", "-c", "user.email=evolve@localhost",
           "-c", "core.autocrlf=false", "-c", "core.symlinks=true", "-c", "core.filemode=true", *args]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise InfraError("docker", f"git {' '.join(args[:3])} failed on the host (exit {proc.returncode}): "
                                   f"{(proc.stdout + proc.stderr)[-500:]}")
    return proc.stdout


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
    with tempfile.TemporaryDirectory(prefix="evolve-snapshot-") as tmp:
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
        # The same commands the sandbox ran (see _SHADOW_SNAPSHOT, _VISIBLE_SNAPSHOT), run here.
        shadow = tmp_path / "base.git"
        _host_git(["init", "-q", "--bare", str(shadow)], tmp_path, tmp_path)
        (shadow / "info").mkdir(exist_ok=True)
        (shadow / "info" / "exclude").write_text(_EXCLUDE)
        shadow_git = [f"--git-dir={shadow}", f"--work-tree={tree}"]
        # Everything in the snapshot, ignored or not (an sdist's egg-info, an image's __pycache__):
        # the base the grader compares the work tree with must be the whole of it.
        _host_git([*shadow_git, "add", "-A", "-f", "."], tree, tmp_path)
        _host_git([*shadow_git, "commit", "-q", "--no-verify", "--allow-empty", "-m", "base"], tree, tmp_path)
        sha = _host_git([*shadow_git, "rev-parse", "HEAD"], tree, tmp_path).strip()
        _host_git(["init", "-q"], tree, tmp_path)
        with open(tree / ".git" / "info" / "exclude", "a") as f:
            f.write(_EXCLUDE)
        _host_git(["add", "-A", "."], tree, tmp_path)
        _host_git(["commit", "-q", "--no-verify", "--allow-empty", "-m", _VISIBLE_MESSAGE], tree, tmp_path)
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


def prepare_testbed(sandbox: Sandbox, task: Task, repo_dir: Path | None) -> str:
    """Put the task's snapshot at /testbed and return the base commit's sha (40 hex).

    ``repo_dir`` is the local repository to copy in, or None when the image
    already holds the repo at /testbed. (The agent and grading commands unpack
    ``snapshot`` from their standard input instead; see ``UNPACK``.)

    Raises:
        EvalSetError: the repo or the commit does not exist.
        InfraError: the snapshot could not be made (Docker or git).
    """
    ids = sandbox_ids(sandbox)
    if repo_dir is not None and ids is not None:
        snap = snapshot(repo_dir, task.base_commit, *ids)
        sandbox.put_archive(snap.entries + TAR_TRAILER)
        return snap.sha
    # The image holds the repo (or the sandbox has no numeric user): snapshot inside the sandbox.
    if repo_dir is not None:
        sandbox.put_tar(TESTBED, archive_at(repo_dir, task.base_commit))
    chown = f"chown -R {sandbox.user} {TESTBED} && " if repo_dir is None and sandbox.user else ""
    later = "evolve-visible-snapshot-later"
    visible = (f" && {{ if command -v setpriv > /dev/null 2>&1; then {as_user(ids, _VISIBLE_SNAPSHOT)} >&2; "
               f"else echo {later}; fi; }}" if ids else "")
    shadow = sandbox.exec(chown + _SHADOW_SNAPSHOT + visible, timeout_s=600, user="root")
    lines = shadow.output.strip().splitlines()
    sha = next((line for line in reversed(lines) if re.fullmatch(r"[0-9a-f]{40}", line)), "")
    if shadow.exit_code != 0 or len(sha) != 40:
        raise InfraError("docker", f"could not snapshot {TESTBED} (exit {shadow.exit_code}): {shadow.output[-500:]}")
    if not ids or later in lines:
        visible_res = sandbox.exec(_VISIBLE_SNAPSHOT, timeout_s=300)
        if visible_res.exit_code != 0:
            raise InfraError("docker", f"could not init git in {TESTBED} (exit {visible_res.exit_code}): "
                                       f"{visible_res.output[-500:]}")
    return sha


NO_TOOLS = "evolve-no-tools"
_UNPACK_FAILED = "evolve-unpack-failed"
UNPACK = (f"command -v tar > /dev/null 2>&1 && command -v setpriv > /dev/null 2>&1 || "
          f"{{ echo {NO_TOOLS}; exit 0; }}\n"
          f"tar -x -f - -C / 2>&1 || {{ echo; echo {_UNPACK_FAILED}; exit 0; }}\n"
          f"exec < /dev/null\n")
"""Shell run as root at the start of a command whose standard input is a tar archive of
``tar_entry`` entries: unpacks it at ``/`` as it is (owners, modes), like ``Sandbox.put_archive``
without its cost. Prints ``NO_TOOLS`` first thing and exits when the image lacks GNU tar or
setpriv (then use ``put_archive`` and the slow path)."""


def unpack_failure(output: str) -> str | None:
    """What ``tar`` said when ``UNPACK`` failed (the output of its command then ends with a
    marker), else None."""
    end = f"\n{_UNPACK_FAILED}\n"
    return output[: -len(end)][-500:] if output.endswith(end) else None


# -- taking the patch ---------------------------------------------------------------------------


# Run as the sandbox user with ``python3 -I -S`` from ``/``: no module the harness left (in /testbed,
# in a user site directory) can be imported.
_FREEZE_PID1 = r"""
import ctypes, os, signal, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.restype = ctypes.c_long
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
SEIZE, INTERRUPT, O_TRACECLONE, WALL = 0x4206, 0x4207, 0x8, 0x40000000
seized = set()
try:
    while True:
        tids = {int(t) for t in os.listdir("/proc/1/task")} - seized
        if not tids:
            break
        for tid in tids:
            if (libc.ptrace(SEIZE, tid, None, ctypes.c_void_p(O_TRACECLONE)) != 0
                    or libc.ptrace(INTERRUPT, tid, None, None) != 0):
                raise OSError(ctypes.get_errno(), "ptrace of thread %d of PID 1" % tid)
            os.waitpid(tid, WALL)
            seized.add(tid)
    print("frozen", flush=True)
except BaseException as e:
    print("error", e, flush=True)
    sys.exit(1)
signal.pause()
"""


def kill_all_script() -> str:
    """Shell (dash) run as root that kills every process but PID 1, the container's main process
    (left stopped) and the calling exec, or exits 3. See step 1 of ``reap_script``."""
    return """
kill -STOP -1 2>/dev/null
main=0
for d in /proc/[0-9]*; do
  p=${d#/proc/}
  [ "$p" = 1 ] && continue
  line=
  read -r line 2>/dev/null < "$d/stat"
  [ -n "$line" ] || continue
  set -- ${line##*) }
  if [ "$2" = 1 ] && { [ "$main" = 0 ] || [ "$p" -lt "$main" ]; }; then main=$p; fi
done
spare=
reap() {
  left=1
  round=0
  while [ "$left" != 0 ] && [ "$round" -lt 1000 ]; do
    left=0
    round=$((round + 1))
    for d in /proc/[0-9]*; do
      p=${d#/proc/}
      case "$p" in 1|"$main"|"$$"|"$PPID"|"$spare") continue;; esac
      line=
      read -r line 2>/dev/null < "$d/stat"
      [ -n "$line" ] || continue
      set -- ${line##*) }
      case "$1" in Z|X|x) continue;; esac
      kill -KILL "$p" 2>/dev/null
      left=$((left + 1))
    done
  done
  [ "$left" = 0 ] || { echo "evolve: $left processes survived SIGKILL" >&2; exit 3; }
}
reap
kill -CONT "$PPID" 2>/dev/null
"""


def reap_script(ids: tuple[int, int]) -> str:
    """Shell (dash) run as root after the harness that leaves nothing the harness started running,
    or exits nonzero (then restart the sandbox instead): what ``Sandbox.restart`` achieves, without
    the restart. Prints nothing but its own error messages.

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
       (every thread ptrace-stopped by a helper that holds it until the
       container goes); the main process is stopped again; whatever PID 1
       started meanwhile is killed.
    """
    return kill_all_script() + f"""
scope=0
read -r scope 2>/dev/null < /proc/sys/kernel/yama/ptrace_scope
if [ "$scope" = 0 ]; then
  kill -CONT 1 2>/dev/null
  zombies=1
  round=0
  while [ "$zombies" != 0 ] && [ "$round" -lt 2000 ]; do
    zombies=0
    round=$((round + 1))
    for d in /proc/[0-9]*; do
      line=
      read -r line 2>/dev/null < "$d/stat"
      set -- ${{line##*) }}
      [ "$1" = Z ] && zombies=$((zombies + 1))
    done
  done
  f={PRIVATE}/freeze.out
  [ -d {PRIVATE} ] || mkdir -p -m 700 {PRIVATE}
  rm -f "$f"
  (cd / && exec {user_prefix(ids)} python3 -I -S -c {shlex.quote(_FREEZE_PID1)}) > "$f" 2>&1 < /dev/null &
  spare=$!
  ans=
  for i in $(seq 500); do
    read -r ans 2>/dev/null < "$f"
    [ -n "$ans" ] && break
    sleep 0.01
  done
  [ "$ans" = frozen ] || {{ echo "evolve: could not freeze PID 1: $ans" >&2; exit 3; }}
  kill -STOP "$main" 2>/dev/null
  reap
fi
"""


def collect_script(base_sha: str, files: dict[str, tuple[str, int]]) -> str:
    """Shell run as root, after every harness process is gone, that writes the ``model_patch`` and
    copies ``files`` (``{name: (path, max bytes)}``; regular files only) into ``COLLECTED``; read
    them with ``read_collected``, which leaves out the files over their cap, and the patch's part
    with ``taken_patch``.

    The ``model_patch`` is the ``git diff --binary`` of /testbed (tracked, untracked and committed
    changes) against ``base_sha``, byte for byte; external diff drivers and text conversions set by
    the harness are ignored. Untracked files over ``LARGE_UNTRACKED_BYTES`` are left out of it and
    listed (``large_files``: NUL-terminated ``size path`` records, ``large_files.count``). A patch
    over ``MAX_PATCH_BYTES`` is left empty with its size in ``patch_size``; when git cannot make the
    diff (what the harness left is too much for it), the patch is empty and ``diff_error`` says
    why. Neither is an error of this script: it exits nonzero only when it cannot write
    ``COLLECTED`` or copy ``files``.

    File names never reach the shell's words: they go through NUL-separated files, with
    ``find -print0``, ``git -z``, ``xargs -0`` and literal pathspecs.
    """
    p = PRIVATE
    shadow_git_env = (f"env GIT_CONFIG_GLOBAL=/dev/null GIT_LITERAL_PATHSPECS=1 {_GIT} --git-dir={SHADOW} "
                      f"--work-tree={TESTBED}")
    lines = [f"if [ -e {COLLECTED} ]; then rm -rf {COLLECTED}; fi; mkdir -m 700 {COLLECTED} || exit 4",
             f"cd {TESTBED} || exit 4",
             # A collect killed half-way (before a restart) may have left git's lock behind.
             f"rm -f {SHADOW}/index.lock {p}/big.z {p}/large.z {p}/spec.z {p}/noise.z",
             # git's messages may quote the harness's file names: they go to a file, never to the
             # output, where only evolve's own markers may appear.
             f"nodiff() {{ {{ printf '%s: ' \"$1\"; tail -c 500 {p}/diff.err; }} | tr -c '[:print:]' ' ' "
             f"> {COLLECTED}/diff_error; : > {COLLECTED}/model.patch; }}",
             # Untracked (not in the base, not ignored) regular files over the cap: left out, listed.
             f"find . -path ./.git -prune -o -type f -size +{LARGE_UNTRACKED_BYTES}c -print0 > {p}/big.z "
             "2> /dev/null",
             "ok=1",
             f"if [ -s {p}/big.z ]; then xargs -0 -r {shadow_git_env} ls-files -z -o --exclude-standard -- "
             f"< {p}/big.z > {p}/large.z 2> {p}/diff.err || {{ nodiff 'listing untracked files'; ok=0; }}; fi",
             f"if [ $ok = 1 ] && [ -s {p}/large.z ]; then "
             f"sed -z 's/^/:(exclude,literal)/' < {p}/large.z > {p}/spec.z "
             f"&& xargs -0 -r stat --printf '%s %n\\0' -- < {p}/large.z | head -c {LARGE_FILES_LISTED_BYTES} "
             f"> {COLLECTED}/large_files && tr -cd '\\000' < {p}/large.z | wc -c > {COLLECTED}/large_files.count "
             "|| exit 4; fi",
             f"if [ $ok = 1 ]; then if [ -s {p}/spec.z ]; then "
             f"{_SHADOW_GIT} add -A --pathspec-from-file={p}/spec.z --pathspec-file-nul; "
             f"else {_SHADOW_GIT} add -A .; fi > /dev/null 2> {p}/diff.err || {{ nodiff 'git add'; ok=0; }}; fi",
             # Noise the harness made visible (a .gitignore re-including *.pyc, say): listed, never diffed.
             f"if [ $ok = 1 ]; then {_SHADOW_GIT} diff --cached --name-only -z --diff-filter=A "
             f"{shlex.quote(base_sha)} -- " + " ".join(shlex.quote(s.replace("exclude,", "")) for s in NOISE_PATHSPECS)
             + f" 2> /dev/null | head -c {LARGE_FILES_LISTED_BYTES} > {p}/noise.z; "
             f"if [ -s {p}/noise.z ]; then cp {p}/noise.z {COLLECTED}/noise || exit 4; fi; fi",
             f"if [ $ok = 1 ]; then {_SHADOW_GIT} diff --cached --binary --no-ext-diff --no-textconv --no-color "
             f"{shlex.quote(base_sha)} -- . " + " ".join(map(shlex.quote, NOISE_PATHSPECS))
             + f" > {COLLECTED}/model.patch 2> {p}/diff.err || nodiff 'git diff'; fi",
             f"if [ ! -e {COLLECTED}/diff_error ] && s=$(stat -c %s {COLLECTED}/model.patch) "
             f"&& [ \"$s\" -gt {MAX_PATCH_BYTES} ]; then echo \"$s\" > {COLLECTED}/patch_size; "
             f": > {COLLECTED}/model.patch; fi"]
    for name, (path, cap) in files.items():
        # One byte over the cap is copied so the reader can tell (see ``read_collected``).
        q = shlex.quote(path)
        lines.append(f"if [ -f {q} ] && [ ! -L {q} ]; then head -c {cap + 1} {q} > {COLLECTED}/{shlex.quote(name)} "
                     f"|| exit 6; fi")
    return "\n".join(lines) + "\n"


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
    """Build noise (``NOISE_PATHSPECS``) that was new and not ignored, so the harness must have
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
    return (f"set -- $(du -sb {COLLECTED}) && if [ \"$1\" -le {INLINE_BYTES} ]; then echo {_INLINE}; "
            f"tar -C {COLLECTED} -cf - . | base64 -w 0 && echo && echo {_INLINE}; fi\n:\n")


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


def take_patch(sandbox: Sandbox, base_sha: str) -> TakenPatch:
    """The ``model_patch`` of /testbed against ``base_sha`` (see ``collect_script``), with its size
    and what was left out of it.

    Call only when no harness process is left (after ``Sandbox.restart`` or ``reap_script``).

    Raises:
        InfraError: the command inside the sandbox failed (not git: see ``TakenPatch.problem``).
    """
    res = sandbox.exec(collect_script(base_sha, {}), timeout_s=300, user="root")
    if res.exit_code != 0:
        raise InfraError("docker", f"could not take the patch in the sandbox (exit {res.exit_code}): "
                                   f"{res.output[-500:]}")
    got = sandbox.get_files(COLLECTED)
    if got is None:
        raise InfraError("docker", "the collected patch is missing after taking it")
    return taken_patch(got)


def extract_patch(sandbox: Sandbox, base_sha: str) -> bytes:
    """``git diff --binary`` of /testbed (tracked, untracked and committed changes) against
    ``base_sha``, as git wrote it: ``take_patch``'s patch, empty when it was not kept.

    Raises:
        InfraError: the command inside the sandbox failed.
    """
    return take_patch(sandbox, base_sha).patch
