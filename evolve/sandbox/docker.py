"""Docker sandboxes: one container, no network, hard limits, always removed.

Every container evolve starts
- has no network (``network_mode="none"``),
- runs as a non-root user (``1000:1000`` unless configured otherwise),
- has memory, CPU and pids limits and ``init=True``,
- carries the labels ``evolve.managed``, ``evolve.run``, ``evolve.owner``,
  ``evolve.pid`` and ``evolve.host``, so that ``sweep_run`` (Ctrl-C) and
  ``sweep_stale`` (start of every command) can remove what a dead or
  interrupted process left. The owner is ``evolve.owner.current()``: boot id,
  PID and the process's start time, so a reused PID does not keep a dead
  process's containers alive (``evolve.pid`` is kept for filters and for
  containers labelled before owners had tokens),
- is removed in ``Sandbox.close`` (called from ``__exit__``), or in the
  background with ``close(background=True)``; ``wait_removals(run_id)`` waits
  for those, and ``sweep_run`` catches any that failed.

docker-py's ``exec_run`` has no timeout, so ``Sandbox.exec`` enforces the
wall-clock limit twice: inside the container with ``timeout --kill-after``
and from the host, which kills the container if the command outlives its
deadline plus a grace period.
"""

from __future__ import annotations

import copy
import io
import logging
import math
import os
import shlex
import socket
import tarfile
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from evolve import owner
from evolve.config import SandboxLimits
from evolve.errors import InfraError, SandboxError

if TYPE_CHECKING:  # pragma: no cover
    import docker

LABEL = "evolve.managed"
KILL_AFTER_S = 5
"""Seconds between ``timeout``'s TERM and KILL inside the container."""
HOST_GRACE_S = 15
"""Seconds past a command's deadline before the host kills the container."""
TAR_TRAILER = b"\0" * 1024
"""End-of-archive marker; ``tar_entry`` blocks plus this make a tar archive."""

_log = logging.getLogger(__name__)
_removals_lock = threading.Lock()
_removals: dict[str, set[threading.Thread]] = {}


def docker_client() -> "docker.DockerClient":
    """A connected docker client.

    Raises:
        SandboxError: no Docker engine answers, with what to do about it.
    """
    import docker
    from docker.errors import DockerException

    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except DockerException as e:
        raise SandboxError(
            f"no Docker engine answers ({e}). Start one: as root, "
            "`apt-get install -y docker.io && dockerd &` (or run scripts/setup.sh), "
            "or set DOCKER_HOST to a reachable engine."
        ) from None
    return client


@dataclass(frozen=True)
class ExecResult:
    """The outcome of one command run in a sandbox.

    ``output`` is stdout and stderr interleaved, decoded as UTF-8 with
    replacement, keeping the head and the tail when longer than the cap.
    """

    exit_code: int | None
    """None when the host had to kill the container."""
    output: str
    timed_out: bool
    truncated: bool
    """Output is missing: over the cap (an elision marker is in ``output``), or the stream broke."""
    seconds: float
    stream_error: str | None = None
    """Why the output stream (or the standard input's) broke before the command's end, when it
    did; ``output`` then ends with a line saying so."""


class _Capped:
    """Keeps the first and last ``cap // 2`` bytes of a stream."""

    def __init__(self, cap: int) -> None:
        self.half = max(cap // 2, 1)
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def feed(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.half - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        if chunk:
            self.tail += chunk
            if len(self.tail) > 2 * self.half:
                del self.tail[: len(self.tail) - self.half]

    def text(self) -> tuple[str, bool]:
        tail = bytes(self.tail[-self.half:])
        kept = len(self.head) + len(tail)
        if kept >= self.total:
            return (bytes(self.head) + tail).decode("utf-8", "replace"), False
        marker = f"\n... [{self.total - kept} bytes elided by evolve] ...\n".encode()
        return (bytes(self.head) + marker + tail).decode("utf-8", "replace"), True


class Sandbox:
    """One running container. Use as a context manager; it is always removed.

    Args:
        client: a docker client (``docker_client()``).
        image: image reference; must exist locally (see ``evolve.sandbox.image``).
        run_id: labels the container so a sweep can find it.
        limits: memory, CPU and pids limits.
        user: ``uid:gid`` the container runs as; None keeps the image's user.
        mounts: host path -> container path bind mounts, read-write; a container path ending in
            ``:ro`` (``/evolve/gw:ro``) is mounted read-only at the path without the suffix.

    Raises:
        InfraError: ``kind="docker"`` when Docker fails to create or start it.
    """

    def __init__(self, client: "docker.DockerClient", image: str, *, run_id: str,
                 limits: SandboxLimits, user: str | None = "1000:1000",
                 mounts: dict[str, str] | None = None) -> None:
        self.client, self.image, self.run_id = client, image, run_id
        self.limits, self.user, self.mounts = limits, user, mounts or {}
        self.container = None
        self.killed = False

    def __enter__(self) -> "Sandbox":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        from docker.errors import DockerException

        try:
            self.container = self.client.containers.run(
                self.image,
                command=["sleep", "infinity"],
                detach=True,
                init=True,
                network_mode="none",
                user=self.user,
                mem_limit=self.limits.mem_limit,
                memswap_limit=self.limits.mem_limit,
                nano_cpus=int(self.limits.cpus * 1e9),
                pids_limit=self.limits.pids_limit,
                # Not no-new-privileges: it would strip the capabilities evolve's own
                # root execs need (chown of /testbed). The harness runs as uid 1000
                # with no capabilities, and the base image has no setuid binaries.
                cap_drop=["NET_RAW", "MKNOD", "SYS_CHROOT", "AUDIT_WRITE", "SETFCAP", "NET_BIND_SERVICE"],
                environment={"HOME": "/tmp", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"},
                volumes={h: {"bind": c.removesuffix(":ro"), "mode": "ro" if c.endswith(":ro") else "rw"}
                         for h, c in self.mounts.items()},
                labels=run_labels(self.run_id),
            )
        except DockerException as e:
            self.close()
            raise InfraError("docker", f"could not start a container from {self.image}: {e}") from None

    def close(self, *, background: bool = False) -> None:
        """Remove the container (force). Idempotent; never raises.

        With ``background`` the removal runs in a thread and this returns at
        once; ``wait_removals(run_id)`` waits for it (``Evaluation.run`` does
        before it returns), and ``sweep_run`` removes it should it fail.
        """
        container, self.container = self.container, None
        if container is None:
            return
        if not background:
            _remove_quietly(container)
            return
        thread = threading.Thread(target=_remove_tracked, args=(container, self.run_id),
                                  name="evolve-remove", daemon=False)
        with _removals_lock:
            _removals.setdefault(self.run_id, set()).add(thread)
        thread.start()

    def exec(self, cmd: str, *, timeout_s: float, user: str | None = None, workdir: str | None = None,
             env: dict[str, str] | None = None, max_output: int = 1_000_000,
             stdin: bytes | None = None) -> ExecResult:
        """Run ``cmd`` with ``sh -c`` and a wall-clock limit of ``timeout_s`` seconds.

        ``stdin``, if given, is the command's standard input (e.g. a tar
        archive for ``tar -x``: a copy in without ``put_archive``); else it
        has none.

        Raises:
            InfraError: ``kind="docker"`` when the engine fails (not when the command does).
        """
        from docker.errors import DockerException

        wrapped = ["timeout", f"--kill-after={KILL_AFTER_S}", str(max(1, math.ceil(timeout_s))), "sh", "-c", cmd]
        api = self.client.api
        start = time.monotonic()
        try:
            exec_id = api.exec_create(self.container.id, wrapped, user=user or self.user or "",
                                      workdir=workdir, environment=env, stdin=stdin is not None)["Id"]
            errors: list[str] = []
            if stdin is None:
                stream = api.exec_start(exec_id, stream=True)
            else:
                stream = _send_stdin(api.exec_start(exec_id, socket=True), stdin, errors)
        except DockerException as e:
            raise InfraError("docker", f"exec failed: {e}") from None
        captured = _Capped(max_output)

        def pump() -> None:
            try:
                for chunk in stream:
                    captured.feed(chunk)
            except Exception as e:  # noqa: BLE001 - socket, urllib3 or docker errors alike: recorded
                errors.append(f"output stream: {type(e).__name__}: {e}")

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        reader.join(timeout_s + KILL_AFTER_S + HOST_GRACE_S)
        host_killed = reader.is_alive()
        if host_killed:
            self.kill()
            reader.join(10)
        exit_code = None
        if not host_killed:
            try:
                exit_code = api.exec_inspect(exec_id)["ExitCode"]
            except DockerException as e:
                raise InfraError("docker", f"exec inspect failed: {e}") from None
        output, truncated = captured.text()
        stream_error = "; ".join(errors) or None
        if stream_error is not None:
            output += f"\n[evolve: the exec's stream broke, output may be missing: {stream_error}]\n"
        return ExecResult(
            exit_code=exit_code,
            output=output,
            timed_out=host_killed or exit_code in (124, 137),
            truncated=truncated or stream_error is not None,
            seconds=time.monotonic() - start,
            stream_error=stream_error,
        )

    def restart(self) -> None:
        """Kill every process in the container and start it again; files are kept.

        Raises:
            InfraError: ``kind="docker"`` when the engine fails.
        """
        from docker.errors import APIError

        try:
            self.container.kill()
        except APIError as e:
            if e.status_code != 409:  # 409: not running (a host-side kill stopped it), nothing to kill
                raise InfraError("docker", f"could not kill the container to restart it: {e}") from None
        try:
            self.container.wait(timeout=30)
            self.container.start()
        except Exception as e:  # noqa: BLE001 - docker or requests timeout
            raise InfraError("docker", f"could not restart the container: {e}") from None
        self.killed = False

    def kill(self) -> None:
        """Kill the container (used when a command outlives its deadline)."""
        from docker.errors import APIError, DockerException, NotFound
        from requests.exceptions import RequestException

        self.killed = True
        try:
            self.container.kill()
        except (NotFound, APIError) as e:
            if isinstance(e, NotFound) or e.status_code == 409:  # gone, or not running: dead already
                return
            raise InfraError("docker", f"could not kill the container: {e}") from None
        except (DockerException, RequestException) as e:
            raise InfraError("docker", f"could not kill the container: {e}") from None

    def put_archive(self, data: bytes, dest: str = "/") -> None:
        """Extract a tar archive at ``dest`` as it is: owners, modes and parent
        directories come from the archive's headers (see ``tar_entry``).

        Raises:
            InfraError: ``kind="docker"`` when the copy fails.
        """
        from docker.errors import DockerException

        try:
            ok = self.container.put_archive(dest, data)
        except DockerException as e:
            raise InfraError("docker", f"copy into {dest} failed: {e}") from None
        if not ok:
            raise InfraError("docker", f"copy into {dest} failed")

    def get_files(self, path: str) -> dict[str, bytes] | None:
        """The regular files directly inside the directory ``path``, by name; None if it does not exist.

        Raises:
            InfraError: ``kind="docker"`` when the copy fails.
        """
        from docker.errors import DockerException, NotFound

        try:
            bits, _stat = self.container.get_archive(path)
            buf = io.BytesIO(b"".join(bits))
        except NotFound:
            return None
        except DockerException as e:
            raise InfraError("docker", f"copy out of {path} failed: {e}") from None
        files: dict[str, bytes] = {}
        with tarfile.open(fileobj=buf) as tar:
            for member in tar:
                parts = member.name.split("/")
                if member.isfile() and len(parts) == 2:
                    files[parts[1]] = tar.extractfile(member).read()
        return files

    def put_tar(self, dest: str, data: bytes, *, owned: bool = True) -> None:
        """Extract a tar archive into ``dest`` (created; owned by the sandbox user if ``owned``, else root).

        Raises:
            InfraError: ``kind="docker"`` when the copy fails.
        """
        self.exec(f"mkdir -p {shlex.quote(dest)}", timeout_s=30, user="root")
        self.put_archive(data, dest)
        if self.user and owned:
            self.exec(f"chown -R {self.user} {shlex.quote(dest)}", timeout_s=120, user="root")

    def put_files(self, dest: str, files: dict[str, bytes | str], mode: int = 0o644, *,
                  owned: bool = True) -> None:
        """Write ``{relative path: content}`` under ``dest``."""
        self.put_tar(dest, tar_of(files, mode=mode), owned=owned)

    def get_file(self, path: str, max_bytes: int = 50_000_000) -> bytes | None:
        """The content of one regular file, or None if it does not exist or is larger than ``max_bytes``."""
        from docker.errors import DockerException, NotFound

        try:
            bits, stat = self.container.get_archive(path)
        except NotFound:
            return None
        except DockerException as e:
            raise InfraError("docker", f"copy out of {path} failed: {e}") from None
        if stat.get("size", 0) > max_bytes:
            return None
        buf = io.BytesIO(b"".join(bits))
        with tarfile.open(fileobj=buf) as tar:
            member = next((m for m in tar.getmembers() if m.isfile()), None)
            return tar.extractfile(member).read() if member else None


def _send_stdin(sock, data: bytes, errors: list[str]):
    """Write ``data`` to an exec's attached socket (then close its input) in a thread; return an
    iterator over the command's output (stdout and stderr, as sent). A write that fails for another
    reason than the command exiting first is added to ``errors``."""
    from docker.utils.socket import frames_iter

    raw = getattr(sock, "_sock", sock)

    def write() -> None:
        try:
            raw.sendall(data)
            raw.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            return  # the command exited without reading it all (UNPACK's NO_TOOLS, say): its output tells
        except OSError as e:
            errors.append(f"standard input: {type(e).__name__}: {e}")

    threading.Thread(target=write, name="evolve-exec-stdin", daemon=True).start()

    def frames():
        try:
            for _stream, chunk in frames_iter(sock, tty=False):
                yield chunk
        finally:
            sock.close()
    return frames()


def tar_of(files: dict[str, bytes | str], mode: int = 0o644) -> bytes:
    """An in-memory tar archive of ``{relative path: content}``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, content in files.items():
            data = content.encode() if isinstance(content, str) else content
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, int(time.time())
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def tar_entry(name: str, data: bytes | None = None, *, uid: int = 0, gid: int = 0, mode: int = 0o644,
              mtime: float | None = None, info: tarfile.TarInfo | None = None) -> bytes:
    """One tar member as raw blocks: a directory when ``data`` is None, else a regular file.

    ``info`` re-emits an existing member (any type) under ``name`` with owner
    ``uid:gid`` instead. Join entries (parents before children) and end with
    ``TAR_TRAILER`` to make an archive for ``Sandbox.put_archive``.
    """
    if info is not None:
        ti = copy.copy(info)
        ti.name, ti.uid, ti.gid, ti.uname, ti.gname = name, uid, gid, "", ""
        ti.pax_headers = {k: v for k, v in info.pax_headers.items()
                          if k not in ("path", "uid", "gid", "uname", "gname")}
    else:
        ti = tarfile.TarInfo(name)
        ti.uid, ti.gid, ti.mode = uid, gid, mode
        ti.mtime = int(time.time() if mtime is None else mtime)
        if data is None:
            ti.type = tarfile.DIRTYPE
        else:
            ti.size = len(data)
    header = ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    if data is None or not ti.isfile():
        return header
    pad = -len(data) % tarfile.BLOCKSIZE
    return header + data + b"\0" * pad


def wait_removals(run_id: str, timeout_s: float = 120) -> None:
    """Wait until the background removals (``close(background=True)``) of ``run_id``'s containers are done."""
    deadline = time.monotonic() + timeout_s
    while True:
        with _removals_lock:
            pending = list(_removals.get(run_id, ()))
        if not pending:
            return
        for thread in pending:
            thread.join(max(0.0, deadline - time.monotonic()))
        if time.monotonic() >= deadline:
            return


def _remove_quietly(container) -> None:
    """Force-remove ``container``; never raises. A failure other than its being gone already is
    logged, and ``sweep_run``/``sweep_stale`` catch the container later."""
    from docker.errors import NotFound

    try:
        container.remove(force=True)
    except NotFound:
        return
    except Exception as e:  # noqa: BLE001 - engine down, removal in progress, request timeout: logged
        _log.warning("could not remove container %s (a sweep will): %s", getattr(container, "id", "?"), e)


def _remove_tracked(container, run_id: str) -> None:
    try:
        _remove_quietly(container)
    finally:
        with _removals_lock:
            threads = _removals.get(run_id)
            if threads is not None:
                threads.discard(threading.current_thread())
                if not threads:
                    del _removals[run_id]


def run_labels(run_id: str) -> dict[str, str]:
    """Labels that tie a container to this process (``evolve.owner``: see ``evolve.owner``) and run."""
    return {LABEL: "1", "evolve.run": run_id, "evolve.owner": owner.current(), "evolve.pid": str(os.getpid()),
            "evolve.host": socket.gethostname()}


def sweep_run(client: "docker.DockerClient", run_id: str) -> int:
    """Force-remove every container of ``run_id``. Returns how many were removed."""
    return _remove(client, client.api.containers(all=True, filters={"label": f"evolve.run={run_id}"}))


def sweep_stale(client: "docker.DockerClient") -> int:
    """Remove evolve containers, and evolve's temporary directories (``owner.sweep_temp_dirs``),
    whose owning process on this host is gone.

    The owner is told by its ``evolve.owner`` token (boot id, PID, start time), so a PID that a
    new process reused does not count as alive; a container labelled before tokens existed falls
    back to its ``evolve.pid``. What live evolve processes own (another run on the same machine)
    is left alone. Returns how many containers were removed; removed directories are logged.
    """
    stale = []
    # The low-level listing: no per-container request, so containers other
    # processes remove meanwhile cannot make it fail.
    for c in client.api.containers(all=True, filters={"label": LABEL}):
        labels = c.get("Labels") or {}
        if labels.get("evolve.host") != socket.gethostname():
            continue
        if "evolve.owner" in labels:
            dead = not owner.alive(labels["evolve.owner"])
        else:
            dead = not owner.pid_alive(int(labels.get("evolve.pid", "0") or 0))
        if dead:
            stale.append(c)
    dirs = owner.sweep_temp_dirs()
    if dirs:
        _log.info("removed %d temporary director%s left by dead evolve processes", dirs, "y" if dirs == 1 else "ies")
    return _remove(client, stale)


def _remove(client: "docker.DockerClient", containers: list[dict]) -> int:
    from docker.errors import APIError, NotFound

    n = 0
    for c in containers:
        try:
            client.api.remove_container(c["Id"], force=True)
            n += 1
        except NotFound:
            continue  # raced with another remover
        except APIError as e:
            if e.status_code != 409:  # 409: another remover's removal is in progress
                _log.warning("could not remove container %s: %s", c["Id"][:12], e)
    return n

