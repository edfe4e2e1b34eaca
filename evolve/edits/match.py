"""Finding a SEARCH text in a file and replacing it: the tolerant matching ladder.

Matching loosens in steps, as aider's does, and never beyond them:

1. exact lines;
2. leading whitespace uniformly missing or extra (the REPLACE lines are
   re-indented by the same amount);
3. trailing whitespace ignored (with and without step 2);
4. spurious blank lines at the start or end of SEARCH: SEARCH without them
   is matched (steps 1-3), the file's blank lines next to that place absorb
   as many as they can, and REPLACE loses the others where it has them;
5. ``...`` lines in SEARCH and REPLACE: the pieces between them are matched
   and replaced one by one.

The first step that finds the SEARCH text decides: one place is applied; two
or more fail as ambiguous ("add more context lines"). Nothing is fuzzy-matched:
a near miss fails with the closest real lines as a "did you mean".

No file access here: lists of lines in, lists of lines out; ``_NoMatch`` and ``_Ambiguous``
say why not.
"""

from __future__ import annotations

import difflib


class _NoMatch(Exception):
    pass


class _Ambiguous(Exception):
    def __init__(self, starts: list[int]) -> None:
        super().__init__(starts)
        self.starts = starts

_STEPS = ((False, False), (True, False), (False, True), (True, True))
"""(indent, rstrip) loosenings, tried in this order: exact, leading whitespace, trailing whitespace, both."""


def _replace(whole: list[str], part: list[str], repl: list[str]) -> list[str]:
    """``whole`` with the one place matching ``part`` replaced by ``repl`` (steps 1-4)."""
    found = _match_one(whole, part)
    if found is not None:
        start, new = found[0], _shift(repl, part, found)
        return whole[:start] + new + whole[start + len(part):]
    # Step 4: the lines between SEARCH's blank edges decide where; the file's own blank lines next
    # to that place absorb as many of SEARCH's blank edges as they can, and the rest are spurious.
    lead = next((k for k, ln in enumerate(part) if ln.strip()), len(part))
    if lead == len(part):
        raise _NoMatch()
    trail = next(k for k, ln in enumerate(reversed(part)) if ln.strip())
    core = part[lead:len(part) - trail]
    found = _match_one(whole, core) if lead or trail else None
    if found is None:
        raise _NoMatch()
    start, end = found[0], found[0] + len(core)
    above = below = 0
    while above < lead and start - above > 0 and not whole[start - above - 1].strip():
        above += 1
    while below < trail and end + below < len(whole) and not whole[end + below].strip():
        below += 1
    r = list(repl)
    for _ in range(lead - above):
        if r and not r[0].strip():
            r.pop(0)
    for _ in range(trail - below):
        if r and not r[-1].strip():
            r.pop()
    return whole[:start - above] + _shift(r, core, found) + whole[end + below:]


def _match_one(whole: list[str], part: list[str]) -> tuple[int, str, bool] | None:
    """(start, indentation prefix, re-indent?) of the one place ``part`` matches under steps 1-3.

    The first step that matches anywhere decides: several places raise _Ambiguous. So does a
    whitespace-loose match (steps 2-3) when ignoring leading and trailing whitespace together
    finds more places: the model's whitespace can't tell them apart.
    """
    for indent, rstrip in _STEPS:
        matches = _find(whole, part, indent=indent, rstrip=rstrip)
        if len(matches) > 1:
            raise _Ambiguous([m[0] for m in matches])
        if matches:
            if indent or rstrip:  # a loose match must be the only place even at the loosest step
                loosest = _find(whole, part, indent=True, rstrip=True)
                if len(loosest) > 1:
                    raise _Ambiguous([m[0] for m in loosest])
            return matches[0][0], matches[0][1], indent
    return None


def _shift(repl: list[str], part: list[str], found: tuple[int, str, bool]) -> list[str]:
    _, prefix, indent = found
    return _reindent(repl, _common_indent(part), prefix) if indent else repl


def _find(whole: list[str], part: list[str], *, indent: bool, rstrip: bool) -> list[tuple[int, str]]:
    """Every (start line, indentation prefix) where ``part`` matches ``whole``."""
    n = len(part)
    if n == 0:
        return []
    m = _common_indent(part) if indent else 0
    p = [ln[m:] if ln.strip() else "" for ln in part] if indent else part
    if rstrip:
        p = [ln.rstrip() for ln in p]
    out = []
    for i in range(len(whole) - n + 1):
        prefix: str | None = None
        for k in range(n):
            w = whole[i + k].rstrip() if rstrip else whole[i + k]
            if not indent:
                if w != p[k]:
                    break
                continue
            if not p[k]:
                if w.strip():
                    break
                continue
            if not w.endswith(p[k]):
                break
            pre = w[:len(w) - len(p[k])]
            if pre.strip() or (prefix is not None and pre != prefix):
                break
            prefix = pre
        else:
            out.append((i, prefix or ""))
    return out


def _common_indent(lines: list[str]) -> int:
    widths = [len(ln) - len(ln.lstrip()) for ln in lines if ln.strip()]
    return min(widths) if widths else 0


def _reindent(repl: list[str], m: int, prefix: str) -> list[str]:
    """REPLACE lines shifted as SEARCH's were: a line indented ``m`` gets ``prefix``, the rest keep
    their indentation relative to it (dedenting below ``m`` takes characters off ``prefix``)."""
    out = []
    for ln in repl:
        w = len(ln) - len(ln.lstrip())
        if not ln.strip():
            out.append(ln)
        elif w >= m:
            out.append(prefix + ln[m:])
        else:
            out.append(prefix[:max(0, len(prefix) - (m - w))] + ln.lstrip())
    return out


def _is_dots(line: str) -> bool:
    return line.strip() == "..."


def _replace_dots(whole: list[str], part: list[str], repl: list[str]) -> list[str]:
    """Step 5: the pieces between ``...`` lines, each matched (steps 1-4) and replaced in turn."""
    pieces_s, pieces_r = _split_dots(part), _split_dots(repl)
    if len(pieces_s) != len(pieces_r):
        raise _NoMatch(f"SEARCH has {len(pieces_s) - 1} `...` lines but REPLACE has {len(pieces_r) - 1}; "
                       f"`...` may only stand for unchanged lines, at the same places in both. Better: copy "
                       f"the lines instead of eliding them", None)
    for s, r in zip(pieces_s, pieces_r):
        if not any(ln.strip() for ln in s):
            if any(ln.strip() for ln in r):
                raise _NoMatch("REPLACE adds lines next to a `...` line with no SEARCH lines there to anchor "
                               "them; put real lines around them", None)
            continue
        try:
            whole = _replace(whole, s, r)
        except _NoMatch:
            raise _NoMatch("A piece of the SEARCH text between `...` lines matches no lines", s) from None
    return whole


def _split_dots(lines: list[str]) -> list[list[str]]:
    pieces: list[list[str]] = [[]]
    for ln in lines:
        if _is_dots(ln):
            pieces.append([])
        else:
            pieces[-1].append(ln)
    return pieces


def _closest(whole: list[str], part: list[str]) -> tuple[int, int] | None:
    """The [start, end) window of ``whole`` most like ``part``, if similar enough.

    Each SEARCH line is scored by the trigram (Jaccard) similarity of its
    stripped text to the window's line at the same place, or one line off (a
    line too many or too few in SEARCH); a window scores the mean. Of the five
    best windows the first to score 0.5, or to reach 0.6 on difflib's ratio
    (short lines have few trigrams), wins. At most about 100k line pairs are
    compared (a long SEARCH in a long file is ranked by its first lines).
    """
    core = [ln.strip() for ln in part if not _is_dots(ln)]
    while core and not core[0]:
        core.pop(0)
    while core and not core[-1]:
        core.pop()
    n = min(len(core), len(whole))
    scored = min(n, 100_000 // max(1, len(whole)))  # about a second at most: score only the first lines
    if not scored:
        return None
    grams_w = [_trigrams(ln.strip()) for ln in whole]
    grams_p = [_trigrams(ln) for ln in core[:scored]]
    windows = len(whole) - n + 1
    rows = []  # rows[k][j + 1]: similarity of SEARCH line k and file line j (0 outside the file)
    for k, b in enumerate(grams_p):
        row = [0.0] * (len(whole) + 2)
        for j in range(max(0, k - 1), min(len(whole), windows + k + 1)):
            a = grams_w[j]
            common = len(a & b)
            row[j + 1] = common / (len(a) + len(b) - common)
        rows.append(row)
    ranked = []
    for i in range(windows):
        here = sum(rows[k][i + k + 1] for k in range(scored))
        near = sum(max(rows[k][i + k], rows[k][i + k + 1], rows[k][i + k + 2]) for k in range(scored))
        ranked.append(((near + 0.01 * here) / scored, -i))  # lines one off count; lines in place break ties
    ranked.sort(reverse=True)
    target = "\n".join(core)
    for score, neg_i in ranked[:5]:
        i = -neg_i
        if score >= 0.5:
            return i, i + n
        # short lines have few trigrams, so one typo costs a lot: ask difflib too (cheap when short)
        if len(target) <= 2000 and difflib.SequenceMatcher(
                None, "\n".join(ln.strip() for ln in whole[i:i + n]), target, autojunk=False).ratio() >= 0.6:
            return i, i + n
    return None


def _trigrams(s: str) -> set[str]:
    return {s[i:i + 3] for i in range(max(1, len(s) - 2))}
