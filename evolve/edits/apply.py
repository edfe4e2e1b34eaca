"""Applying ``EditBlock`` objects to a work tree (``apply_edits``) and reporting what happened
(``EditReport``), with feedback that tells the model what failed and what it probably meant.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from evolve.edits.match import _Ambiguous, _closest, _find, _is_dots, _NoMatch, _replace, _replace_dots
from evolve.edits.parse import EditBlock
from evolve.edits.paths import _harness_files, _places, _Refused, _resolve, _similar_names
from evolve.edits.text import _join, _lines, _normalize_newlines, _with_newline


NEW_FILE_MODE = 0o644
"""Permissions of files the optimizer creates; edited files keep theirs."""


@dataclass
class EditReport:
    """What ``apply_edits`` did, block by block, in reply order within each list."""

    applied: list[EditBlock] = field(default_factory=list)
    failed: list[tuple[EditBlock, str]] = field(default_factory=list)
    """Blocks that did not match, with why (and the closest real lines)."""
    refused: list[tuple[EditBlock, str]] = field(default_factory=list)
    """Blocks for paths the optimizer may not edit, with why. Never written."""
    changed_files: list[str] = field(default_factory=list)
    """Repo-relative posix paths whose content changed, in order of first edit."""

    @property
    def ok(self) -> bool:
        """True when no block failed or was refused."""
        return not self.failed and not self.refused

    def feedback(self) -> str:
        """A message for the model: what failed and why, what it probably meant, what is applied."""
        total = len(self.applied) + len(self.failed) + len(self.refused)
        if total == 0:
            return "Your reply had no SEARCH/REPLACE blocks; nothing was changed."
        if self.ok:
            files = ", ".join(self.changed_files) or "(no file changed)"
            done = "The SEARCH/REPLACE block was" if total == 1 else f"All {total} SEARCH/REPLACE blocks were"
            return f"{done} applied: {files}."
        out: list[str] = []
        if self.failed:
            n = len(self.failed)
            out.append(f"# {n} of {total} SEARCH/REPLACE {_plural(total, 'block')} failed to match!")
        if self.refused:
            n = len(self.refused)
            out.append(f"# {n} of {total} SEARCH/REPLACE {_plural(total, 'block')} {'was' if n == 1 else 'were'} "
                       f"refused: {'it edits a file' if n == 1 else 'they edit files'} you may not change.")
        for block, why in self.failed:
            out.append(f"## Failed to match in {block.path}\n{_render_block(block)}\n{why}")
        if self.failed:
            out.append("The SEARCH lines must match existing lines of the file exactly, including whitespace, "
                       "indentation, comments and docstrings. Copy them from the file; don't abbreviate.")
        for block, why in self.refused:
            out.append(f"## Refused: {block.path}\n{why}")
        k = len(self.applied)
        if k:
            out.append(f"# The other {k} {_plural(k, 'block')} {'was' if k == 1 else 'were'} applied already; "
                       f"don't send {'it' if k == 1 else 'them'} again.")
        else:
            out.append("# No block was applied.")
        if self.failed:
            out.append("Reply with corrected versions of the blocks that failed to match, and nothing else.")
        if self.refused:
            out.append("Don't send the refused blocks again: those files can't be changed. Make the change "
                       "inside the harness instead, if it can be made there.")
        return "\n\n".join(out)


def _plural(n: int, word: str) -> str:
    return word if n == 1 else word + "s"


def _render_block(block: EditBlock) -> str:
    body = (f"<<<<<<< SEARCH\n{_with_newline(block.search)}=======\n"
            f"{_with_newline(block.replace)}>>>>>>> REPLACE")
    fence = _fence_for(body)
    return f"{fence}\n{body}\n{fence}"


def _fence_for(text: str) -> str:
    runs = [len(m.group(0)) for m in re.finditer(r"^\s*(`{3,})", text, re.MULTILINE)]
    return "`" * max([3] + [r + 1 for r in runs])


class _Failed(Exception):
    pass


@dataclass
class _File:
    rel: str
    real: Path
    original: str | None
    """Normalized text as read (None: the file does not exist)."""
    text: str | None
    crlf: bool = False
    bom: bool = False
    no_final_newline: bool = False
    mode: int = NEW_FILE_MODE


def apply_edits(root: Path, harness_dir: str, blocks: list[EditBlock], protected: list[str]) -> EditReport:
    """Apply ``blocks`` in order to the files under ``root``; later blocks see earlier edits.

    Args:
        root: the work tree (a git worktree of the candidate's branch).
        harness_dir: repo-relative directory every edit must stay in (``"."``
            allows the whole repo, minus ``protected``).
        blocks: from ``parse_edits`` or ``parse_unified_diff``.
        protected: repo-relative globs never written (``ProjectConfig.protected_paths``);
            see ``protected_match``.

    Paths are repo-relative. A path outside ``harness_dir`` is read relative
    to ``harness_dir`` instead when it names nothing at the repo root but
    works inside the harness: ``agent.py`` means ``harness/agent.py`` if there
    is no ``./agent.py``; ``prompts/new.txt`` creates ``harness/prompts/new.txt``
    if there is no ``./prompts``. A path that names something outside the
    harness is refused, never remapped.

    Refused (never written): absolute paths, paths escaping ``root`` or
    ``harness_dir`` (``..``, symlinks, including a symlinked parent
    directory), any path inside a ``.git`` directory, and paths matching a
    protected glob as written, as resolved, or as the symlink's real target.

    Failed: no match, several matches, a missing file with non-empty SEARCH,
    an empty SEARCH for a file that has content, a non-UTF-8 file, a directory.

    Files keep their permissions, UTF-8 BOM, CRLF line ends and missing final
    newline. Each changed file is written once, at the end, atomically (a temp
    file in the same directory, then ``os.replace``); a symlink inside the
    harness is written through to its target. An OSError while writing
    propagates, possibly after earlier files were written (the caller's git
    branch is the undo).

    Raises:
        ConfigError: ``harness_dir`` is absolute or outside ``root``.
    """
    root = Path(root)
    root_real, hd, harness_real = _places(root, harness_dir)
    report = EditReport()
    files: dict[Path, _File] = {}
    for block in blocks:
        try:
            rel, real = _resolve(block.path, root, root_real, hd, harness_real, protected)
        except _Refused as e:
            report.refused.append((block, str(e)))
            continue
        try:
            f = files.get(real) or _load(rel, real)
            files[real] = f
            f.text = _apply_one(f, block, harness_real, root_real, files)
        except _Failed as e:
            report.failed.append((block, str(e)))
            continue
        report.applied.append(block)
    for f in files.values():
        if f.text is not None and f.text != f.original:
            _write(f)
            report.changed_files.append(f.rel)
    return report


def _load(rel: str, real: Path) -> _File:
    if not os.path.lexists(real):
        return _File(rel, real, None, None)
    if real.is_dir():
        raise _Failed(f"{rel} is a directory, not a file.")
    data = real.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise _Failed(f"{rel} is not UTF-8 text; it can't be edited with SEARCH/REPLACE blocks.") from None
    f = _File(rel, real, None, None, mode=real.stat().st_mode & 0o7777)
    if text.startswith("\ufeff"):
        f.bom, text = True, text[1:]
    n_lf, n_crlf = text.count("\n"), text.count("\r\n")
    if n_crlf and n_crlf == n_lf:
        f.crlf, text = True, text.replace("\r\n", "\n")
    if text and not text.endswith("\n"):
        f.no_final_newline, text = True, text + "\n"
    f.original = f.text = text
    return f


def _write(f: _File) -> None:
    text = f.text or ""
    if f.no_final_newline and text.endswith("\n"):
        text = text[:-1]
    if f.crlf:
        text = text.replace("\n", "\r\n")
    if f.bom:
        text = "\ufeff" + text
    f.real.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=f.real.parent, prefix=f".{f.real.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(text.encode("utf-8"))
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, f.mode)
        os.replace(tmp, f.real)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise

_LAZY = re.compile(
    r"^\s*(?:#|//|/\*|<!--|--|;|\*)\s*(?:.*(?:\.\.\.|\u2026).*\b(?:existing|unchanged|rest|original|remain\w*|same"
    r"|previous|omitted|other|logic|here)\b|(?:the\s+)?(?:rest|remainder)\s+of\s+(?:the\s+)?(?:code|file|function"
    r"|method|class|body)|(?:existing|original)\s+code)", re.IGNORECASE)
"""A REPLACE comment that stands for code instead of writing it ("# ... rest of code unchanged")."""


def _lazy_line(part: list[str], repl: list[str]) -> str | None:
    """The first REPLACE line that elides code with a comment and is not in SEARCH, if any."""
    kept = {ln.strip() for ln in part}
    return next((ln.strip() for ln in repl if _LAZY.search(ln) and ln.strip() not in kept), None)


def _apply_one(f: _File, block: EditBlock, harness_real: Path, root_real: Path, files: dict[Path, _File]) -> str:
    """The file's new text, or raise _Failed with feedback for the model."""
    search = _with_newline(_normalize_newlines(block.search))
    replace = _with_newline(_normalize_newlines(block.replace))
    if not search.strip():
        if f.text is None or not f.text.strip():
            return replace
        raise _Failed(f"The SEARCH section is empty, but {f.rel} already exists and has content. An empty "
                      f"SEARCH only creates a new file (or fills an empty one). To add lines, SEARCH for the "
                      f"lines next to where they go and repeat them in REPLACE with the new lines.")
    if f.text is None:
        msg = f"{f.rel} does not exist. To create it, leave the SEARCH section empty."
        close = _similar_names(f.rel, harness_real, root_real)
        if close:
            msg += " Did you mean " + " or ".join(close) + "?"
        raise _Failed(msg)
    whole, repl = _lines(f.text), _lines(replace)
    part = _lines(search)
    lazy = _lazy_line(part, repl)
    if lazy is not None:
        raise _Failed(f"The REPLACE line {lazy!r} stands for code instead of writing it out. REPLACE is "
                      f"written literally, so the code it stands for would be deleted. Write every line of "
                      f"REPLACE in full; to keep a long stretch unchanged, end the block before it and start "
                      f"another after it.")
    try:
        # Expected: no exact or whitespace-tolerant match; the `...` rung and the message below come next.
        with contextlib.suppress(_NoMatch):
            return _join(_replace(whole, part, repl))
    except _Ambiguous as e:
        raise _Failed(f"The SEARCH text matches {len(e.starts)} places in {f.rel} (starting at lines "
                      f"{', '.join(str(s + 1) for s in e.starts[:5])}). Add more context lines around the change "
                      f"so that SEARCH matches exactly one place.") from None
    if any(_is_dots(ln) for ln in part):
        try:
            return _join(_replace_dots(whole, part, repl))
        except _NoMatch as e:
            if e.args:
                reason, piece = e.args
                raise _Failed(f"{reason} in {f.rel}." + (_did_you_mean(f.rel, whole, piece) if piece else "")) \
                    from None
        except _Ambiguous as e:
            raise _Failed(f"A piece of the SEARCH text between `...` lines matches {len(e.starts)} places in "
                          f"{f.rel}. Add more context lines to it, or copy the lines instead of eliding "
                          f"them with `...`.") from None
    raise _Failed(_no_match_message(f, whole, part, replace, harness_real, root_real, files))


def _did_you_mean(rel: str, whole: list[str], part: list[str]) -> str:
    near = _closest(whole, part)
    if near is None:
        return f"\nNo lines of {rel} resemble it; check that this is the right file."
    start, end = near
    shown = _join(whole[start:end])
    fence = _fence_for(shown)
    where = f"line {start + 1}" if end - start == 1 else f"lines {start + 1}-{end}"
    return f"\nDid you mean to match these lines from {rel} ({where})?\n{fence}\n{shown}{fence}"


def _no_match_message(f: _File, whole: list[str], part: list[str], replace: str, harness_real: Path,
                      root_real: Path, files: dict[Path, _File]) -> str:
    msg = [f"The SEARCH text matches no lines of {f.rel}." + _did_you_mean(f.rel, whole, part)]
    if replace.strip() and _find(whole, _lines(replace), indent=False, rstrip=True):
        msg.append(f"The REPLACE lines are already in {f.rel}: this edit may have been applied already. "
                   f"If so, don't send it again.")
    other = _matching_file(part, f.real, harness_real, root_real, files)
    if other:
        msg.append(f"The SEARCH text does match {other}; did you mean that file?")
    return "\n".join(msg)


def _matching_file(part: list[str], this: Path, harness_real: Path, root_real: Path,
                   files: dict[Path, _File]) -> str | None:
    """Another harness file where ``part`` matches exactly one place (steps 1-4), if any."""
    for path in _harness_files(harness_real):
        if path == this:
            continue
        f = files.get(path)
        if f is not None:
            text = f.text
        else:
            try:
                if path.stat().st_size > 512_000:
                    continue
                text = _normalize_newlines(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError):
                continue
        if not text:
            continue
        try:
            _replace(_lines(_with_newline(text)), part, [])
        except (_NoMatch, _Ambiguous):
            continue
        return path.relative_to(root_real).as_posix()
    return None
