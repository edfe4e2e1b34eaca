"""Line helpers shared by parsing, matching and applying (only ``\\n`` ends a line)."""

from __future__ import annotations


def _normalize_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _split_lines(text: str) -> list[str]:
    """Lines with their ``\\n``. Only ``\\n`` splits: form feeds and the like stay content."""
    parts = text.split("\n")
    return [p + "\n" for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


def _with_newline(text: str) -> str:
    return text + "\n" if text and not text.endswith("\n") else text


def _lines(text: str) -> list[str]:
    """Lines without line ends; ``text`` ends with a newline (or is empty)."""
    return text.split("\n")[:-1] if text else []


def _join(lines: list[str]) -> str:
    return "".join(ln + "\n" for ln in lines)
