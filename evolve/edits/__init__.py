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

Matching loosens in steps, as aider's does, and never beyond them (the ladder
is ``evolve.edits.match``'s docstring). Why SEARCH/REPLACE is the default
format, and how ``parse_unified_diff`` reads the other one, is
``evolve.edits.parse``'s.
"""

from __future__ import annotations

from evolve.edits.apply import NEW_FILE_MODE, EditReport, apply_edits
from evolve.edits.parse import EditBlock, parse_edits, parse_unified_diff
from evolve.edits.paths import protected_match
from evolve.errors import EditFormatError

__all__ = ["EditBlock", "EditFormatError", "EditReport", "NEW_FILE_MODE", "apply_edits",
           "parse_edits", "parse_unified_diff", "protected_match"]
