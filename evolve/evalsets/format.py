"""Task files: JSON Lines, one SWE-bench-style task per line.

A row of a SWE-bench dataset export (princeton-nlp/SWE-bench, SWE-bench_Lite,
SWE-bench_Verified) loads unchanged: its ``FAIL_TO_PASS``/``PASS_TO_PASS`` are
JSON-encoded strings there and are decoded by ``Task``; its other fields
(``version``, ``created_at``, ``hints_text``, ``environment_setup_commit``...)
are kept on the task as extra fields. Blank lines are skipped.

Every error is an ``EvalSetError`` naming the file, the 1-based line and,
where there is one, the field.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterable

from pydantic import ValidationError

from evolve.errors import EvalSetError
from evolve.types import Task

__all__ = ["dump_tasks", "load_task_lines", "load_tasks"]


def load_tasks(path: Path) -> list[Task]:
    """The tasks of the JSONL file at ``path``, in file order.

    Raises:
        EvalSetError: the file is missing or unreadable, a line is not a JSON
            object, a task field is missing or has the wrong type,
            ``FAIL_TO_PASS`` is empty, or an ``instance_id`` repeats.
    """
    return [task for _, task in load_task_lines(path)]


def load_task_lines(path: Path) -> list[tuple[int, Task]]:
    """Like ``load_tasks``, each task with its 1-based line number (for error messages)."""
    path = Path(path)
    text = _read_text(path)
    tasks: list[tuple[int, Task]] = []
    seen: dict[str, int] = {}
    # Split on "\n" only: str.splitlines would also split on U+2028 and
    # friends, which JSON allows unescaped inside strings.
    for lineno, line in enumerate(text.split("\n"), start=1):
        line = line.strip()
        if not line:
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise EvalSetError(f"invalid JSON: {e.msg} (column {e.colno})",
                               path=str(path), line=lineno) from None
        if not isinstance(row, dict):
            raise EvalSetError(f"expected a JSON object (one task), got {_json_type(row)}",
                               path=str(path), line=lineno) from None
        task = _validate(row, path, lineno)
        first = seen.get(task.instance_id)
        if first is not None:
            raise EvalSetError(
                f"duplicate instance_id {task.instance_id!r}: already on line {first}; "
                "every task of an eval set needs its own id",
                path=str(path), line=lineno, field="instance_id")
        seen[task.instance_id] = lineno
        tasks.append((lineno, task))
    return tasks


def dump_tasks(tasks: Iterable[Task], path: Path) -> None:
    """Write ``tasks`` to ``path`` as JSONL, atomically.

    The file is written next to ``path`` and moved into place with
    ``os.replace``, so a reader sees the old file or the new one, never half
    of one. Test lists are written as JSON lists (not SWE-bench's encoded
    strings); extra fields are kept, so ``load_tasks`` gives back equal tasks.

    Raises:
        EvalSetError: two tasks share an ``instance_id``.
    """
    path = Path(path)
    lines: list[str] = []
    seen: set[str] = set()
    for task in tasks:
        if task.instance_id in seen:
            raise EvalSetError(f"duplicate instance_id {task.instance_id!r} in the tasks to write",
                               path=str(path), field="instance_id")
        seen.add(task.instance_id)
        lines.append(json.dumps(task.model_dump(mode="json"), ensure_ascii=False) + "\n")

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.writelines(lines)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates the file 0600; keep the old file's mode, else 0644.
        mode = path.stat().st_mode & 0o7777 if path.exists() else 0o644
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):  # expected: os.replace already moved it
            os.unlink(tmp)
        raise


def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise EvalSetError("no such file", path=str(path)) from None
    except IsADirectoryError:
        raise EvalSetError("is a directory, expected a .jsonl file", path=str(path)) from None
    except OSError as e:
        raise EvalSetError(f"cannot read: {e.strerror}", path=str(path)) from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        offset = e.start + (3 if raw.startswith(b"\xef\xbb\xbf") else 0)
        line = raw.count(b"\n", 0, offset) + 1
        raise EvalSetError(f"not UTF-8 text (byte {raw[offset]:#04x})",
                           path=str(path), line=line) from None


def _validate(row: dict, path: Path, lineno: int) -> Task:
    try:
        return Task.model_validate(row)
    except ValidationError as e:
        problems = [(_field_name(err["loc"]), _describe(err)) for err in e.errors()]
        field, message = problems[0]
        for other_field, other_message in problems[1:]:
            message += f"; field {other_field!r}: {other_message}" if other_field else f"; {other_message}"
        raise EvalSetError(message, path=str(path), line=lineno, field=field or None) from None


def _field_name(loc: tuple) -> str:
    # ("FAIL_TO_PASS", 0) -> "FAIL_TO_PASS": the task field is what the user edits.
    return str(loc[0]) if loc else ""


def _describe(err: dict) -> str:
    kind = err.get("type", "")
    if kind == "missing":
        return "missing required field"
    msg = err.get("msg", "invalid value")
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    loc = err.get("loc", ())
    if len(loc) > 1:
        msg += f" (item {'.'.join(str(p) for p in loc[1:])})"
    if kind.endswith("_type"):
        msg += f", got {_json_type(err.get('input'))}"
    return msg


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
