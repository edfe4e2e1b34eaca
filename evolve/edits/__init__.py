"""Edits to the harness: parse the optimizer's SEARCH/REPLACE blocks and apply them.

Pure file logic: no git, no model calls (``evolve.patch`` does those). The
optimizer writes blocks like this (the instructions it sees are
``prompts/edit_format.j2``)::

    harness/agent.py
    ```python
    <<<<<<< SEARCH
    MAX_STEPS = 50
    =======
    MAX_STEPS = 80
    >>>>>>> REPLACE
    ```

``parse_edits`` turns a reply into ``EditBlock`` objects; ``apply_edits``
writes them into a work tree and returns an ``EditReport`` whose
``feedback()`` tells the model exactly what failed, what it probably meant,
and what was already applied, so a retry only re-sends the failures.

The package, one job per module: ``parse`` (replies into ``EditBlock`` objects), ``match``
(the matching ladder below), ``paths`` (which files may be written) and ``apply`` (writing the
edits, the ``EditReport`` and its feedback); ``text`` holds their line helpers.

Safety. ``apply_edits`` never writes outside the harness directory: absolute
paths, ``..`` and symlinks that lead out are refused, and so is any path that
matches a protected glob (eval sets, graders, ``evolve.yaml``). Each path is
checked as written, as resolved, and through symlinks to its real file.

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

Why SEARCH/REPLACE, and the counterpoint. aider measured its edit formats.
On its laziness benchmark (89 Python refactorings in large files, built to
provoke comments like "# ... original method body ...") gpt-4-1106-preview
scored 20% with SEARCH/REPLACE and 61% with unified diffs (lazy comments on 12
tasks vs 4); gpt-4-0613 26% vs 59%. So unified diffs can be much better for a
lazy model on large rewrites. We still default to SEARCH/REPLACE: harness
files are small and the optimizer makes one planned change per generation,
not large refactors; the lazy failure is caught here (a REPLACE line like
"# ... rest of code unchanged" fails the block with feedback instead of
deleting code); and blocks need no line numbers. We have no capable model
offline to measure formats ourselves, so this is a judgement, not a
measurement. It is cheap to revisit: ``parse_unified_diff`` reads the other format,
each parses into ``EditBlock`` objects and shares the tolerant matcher.
``parse_unified_diff`` is the second format: each hunk's ``-`` and context
lines become SEARCH, its ``+`` and context lines REPLACE (``@@`` line numbers
are ignored, as models get them wrong). ``parse_edits`` also falls back to it
when a reply holds a diff and no block. To measure: replay recorded plans
through the patch step with each format and compare first-round apply rates
and rounds per generation.

"""

from __future__ import annotations

from evolve.edits.apply import NEW_FILE_MODE, EditReport, apply_edits
from evolve.edits.parse import EditBlock, parse_edits, parse_unified_diff
from evolve.edits.paths import protected_match
from evolve.errors import EditFormatError

__all__ = ["EditBlock", "EditFormatError", "EditReport", "NEW_FILE_MODE", "apply_edits",
           "parse_edits", "parse_unified_diff", "protected_match"]
