"""Files under ``runs/``: atomic writes, append-only logs, the result cache.

Layout::

    runs/cache/<key[:2]>/<key>/      one finished (task, repeat) evaluation
        result.json  model.patch  trace.jsonl  trajectory.json  harness.log  test_output.txt
    runs/<run_id>/
        run.json             what was evaluated, its status and owner (rewritten atomically);
                             ``running`` with a dead owner is rewritten ``interrupted`` by
                             ``mark_dead_runs`` at the next evaluation's start
        events.jsonl         append-only event log
        results.jsonl        append-only, one TaskResult per finished task
        tasks/<instance_id>/r<k>/   the task's files (hard links into the cache)
        predictions.jsonl    SWE-bench predictions: instance_id, model_name_or_path, model_patch
        summary.json

``model.patch`` is the ``git diff --binary`` output byte for byte. In
``result.json`` and ``predictions.jsonl`` the ``model_patch`` is that text when
it is UTF-8; a patch that is not UTF-8 is stored there in base64, with
``"model_patch_encoding": "base64"`` (``result.json`` always has the key,
``predictions.jsonl`` only then; ``TaskResult.patch_bytes()`` decodes either).

A cache entry is written in a temporary directory and renamed into place, so
an entry either exists whole or not at all. A file is rewritten through a
temporary file named after its owner process (``atomic_write``), so what a
killed process left is found and removed (``remove_orphans``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from evolve import owner
from evolve.errors import RunFileError
from evolve.types import TaskResult


COPY_CHUNK_BYTES = 1024 * 1024
"""Bytes read at a time when a file is copied into place (a trace is never read whole)."""


def write_content(f: Any, data: str | bytes | Path) -> None:
    """Write ``data`` to the binary file ``f``: text (UTF-8), bytes, or a ``Path`` whose file is
    copied by streaming, ``COPY_CHUNK_BYTES`` at a time, never read whole into memory."""
    if isinstance(data, Path):
        with open(data, "rb") as src:
            shutil.copyfileobj(src, f, COPY_CHUNK_BYTES)
    else:
        f.write(data.encode() if isinstance(data, str) else data)


def atomic_write(path: Path, data: str | bytes | Path) -> None:
    """Write ``data`` to ``path`` via a temporary file and ``os.replace``; a ``Path`` means
    "copy that file's content", streamed (see ``write_content``).

    The temporary file is ``.<name>.~<owner>~XXXXXXXX`` (``evolve.owner``): when this process is
    killed mid-write, ``remove_orphans`` removes it on the next open."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.~{owner.current()}~")
    try:
        with os.fdopen(fd, "wb") as f:
            write_content(f, data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


_ORPHAN = re.compile(rf"^\..+\.~({owner.TOKEN})~[a-z0-9_]+$")
_LEGACY_ORPHAN = re.compile(r"^\..+\.[a-z0-9_]{8}$")
LEGACY_ORPHAN_AGE_S = 24 * 3600
"""A temporary file of an atomic write made before owner tokens (``.<name>.XXXXXXXX``) is an
orphan once it is this old: a write takes seconds."""


def remove_orphans(root: Path) -> int:
    """Remove the temporary files ``atomic_write`` left under ``root`` (recursively) when its
    process died mid-write: those whose owner (``evolve.owner``) is dead, and untokened ones older
    than ``LEGACY_ORPHAN_AGE_S``. Returns how many were removed. Call it when a run is opened."""
    n = 0
    now = time.time()
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            if not name.startswith("."):
                continue
            path = Path(dirpath) / name
            m = _ORPHAN.match(name)
            try:
                if m is not None:
                    if owner.alive(m.group(1)):
                        continue
                elif not (_LEGACY_ORPHAN.match(name) and now - path.lstat().st_mtime > LEGACY_ORPHAN_AGE_S):
                    continue
                path.unlink()
                n += 1
            except FileNotFoundError:
                continue
    return n


def mark_dead_runs(runs_dir: Path) -> list[str]:
    """Rewrite as ``interrupted`` every evaluation run.json under ``runs_dir`` that says ``running``
    while its ``owner`` (``evolve.owner``) is dead (a ``kill -9``); returns their run ids. A
    run.json without an ``owner`` (written before owners were recorded) is left as it is."""
    marked = []
    for meta in sorted(runs_dir.glob("*/run.json")):
        try:
            data = json.loads(meta.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict) or data.get("kind") != "eval" or data.get("status") != "running":
            continue
        if not data.get("owner") or owner.alive(data["owner"]):
            continue
        data.update(status="interrupted", updated=now_iso(),
                    error=data.get("error") or "the process running it died without finishing (kill -9 or a crash)")
        atomic_write_json(meta, data)
        marked.append(str(data.get("run_id") or meta.parent.name))
    return marked


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def append_jsonl(path: Path, obj: Any) -> None:
    """Append one JSON line (flushed and fsynced); never rewrites earlier lines."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(obj, sort_keys=True, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())


def end_torn_line(path: Path) -> None:
    """Make ``path`` end in a whole line before an append after a kill, under ``read_jsonl``'s rule:
    a last line without its newline that is a JSON object is a record (its newline is added); any
    other is torn (cut off). Without this, the next append would join the torn piece into a line
    that is damaged for good. Writers of one log must be serialized around it, as around appends."""
    try:
        f = open(path, "rb+")
    except FileNotFoundError:
        return
    with f:
        size = f.seek(0, os.SEEK_END)
        pos = size
        while pos > 0:  # back to the last newline, a piece at a time (a trace line can be large)
            step = min(64 * 1024, pos)
            f.seek(pos - step)
            chunk = f.read(step)
            if pos == size and chunk.endswith(b"\n"):
                return
            nl = chunk.rfind(b"\n")
            if nl >= 0:
                pos = pos - step + nl + 1
                break
            pos -= step
        f.seek(pos)
        try:
            whole = isinstance(json.loads(f.read().decode("utf-8", "replace")), dict)
        except ValueError:
            whole = False
        if whole:
            f.seek(0, os.SEEK_END)
            f.write(b"\n")
        else:
            f.truncate(pos)


def read_jsonl(path: Path, *, what: str = "a JSON object", fix: str = "Delete that line.") -> Iterator[dict]:
    """``read_jsonl_lines`` without the line numbers."""
    return (obj for _, obj in read_jsonl_lines(path, what=what, fix=fix))


def read_jsonl_lines(path: Path, *, what: str = "a JSON object",
                     fix: str = "Delete that line.") -> Iterator[tuple[int, dict]]:
    """``(line number from 1, JSON object)`` for each record of the log ``path``, in file order; a
    missing file has none.
    The reader for what ``append_jsonl`` and the gateway's ``append_trace`` write.

    Lines end at ``"\n"`` only (JSON allows U+2028 unescaped in strings, and traces are written
    with ``ensure_ascii=False``); blank lines are skipped; bytes that are not UTF-8 read as U+FFFD.
    Logs are append-only and each line is written whole, so a kill during an append can leave only
    a partial *last* line, without its newline: such a line, when it is not a JSON object, is left
    out (it was never a record), and ``end_torn_line`` cuts it off before the next append. Any other
    line that is
    not a JSON object was damaged or edited by hand and is an error, never skipped: a reader that
    skipped it would undercount costs or lose events without a word.

    Raises:
        RunFileError: a line other than a torn last one is not a JSON object; the message names
            the file and the 1-based line, calls the line "not ``what``", and ends with ``fix``
            (what the user should do). A caller that checks each object's shape says the same.
    """
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return
    with f:
        for n, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw.decode("utf-8", "replace"))
            except ValueError:
                obj = None
            if isinstance(obj, dict):
                yield n, obj
            elif raw.endswith(b"\n"):
                raise RunFileError(f"{path}, line {n}: not {what}. {fix}")
            # else: the last line, torn by a kill during its append (see above)


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def new_run_id(prefix: str = "eval") -> str:
    """``<prefix>-YYYYmmdd-HHMMSS-<4 hex>`` (UTC)."""
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(2)}"


GRADING_VERSION = 2
"""Enters every cache key: results graded by an earlier grader (one that a patch could fool
in ways this one catches) are never reused."""


def cache_key(harness_tree: str, task_hash: str, model: str, settings_fp: str, repeat: int) -> str:
    """sha256 hex of (harness tree hash, task hash, model, settings fingerprint, repeat index,
    ``GRADING_VERSION``)."""
    blob = json.dumps([harness_tree, task_hash, model, settings_fp, repeat, GRADING_VERSION]).encode()
    return hashlib.sha256(blob).hexdigest()


class Cache:
    """Finished evaluations by cache key. Infrastructure failures are never cached."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def entry(self, key: str) -> Path:
        return self.root / key[:2] / key

    def get(self, key: str) -> TaskResult | None:
        path = self.entry(key) / "result.json"
        if not path.exists():
            return None
        return TaskResult.model_validate_json(path.read_text())

    def put(self, result: TaskResult, files: dict[str, str | bytes | Path]) -> Path:
        """Store ``result`` and its files (content, or a ``Path`` to a file copied by streaming);
        returns the entry directory."""
        final = self.entry(result.key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{result.key[:8]}."))
        try:
            for name, content in files.items():
                with open(tmp / name, "wb") as f:
                    write_content(f, content)
            (tmp / "result.json").write_text(result.model_dump_json(indent=2))
            if final.exists():  # a concurrent writer finished first: keep theirs
                shutil.rmtree(tmp)
            else:
                os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final


def link_tree(src: Path, dst: Path) -> None:
    """Hard-link (or copy, across filesystems) every file of ``src`` into ``dst``."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file():
            target = dst / f.name
            target.unlink(missing_ok=True)
            try:
                os.link(f, target)
            except OSError:
                shutil.copy2(f, target)
