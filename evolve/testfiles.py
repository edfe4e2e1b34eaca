"""Which paths count as tests: the one definition evolve's side uses.

The grader puts every path matching ``TEST_LIKE`` back to its base content
before it runs the tests (``evolve/sandbox/scripts/grade_neutralise.py``), so
an agent's edit of a test gains nothing; synthesis never plants a bug in such
a path, since no fix of it could survive grading, and reads test node ids by
it. The grader's script runs in the container under ``python3 -I`` and cannot
import evolve, so it keeps a copy of the pattern; ``tests/test_integrity.py``
checks that the copy is this very string.
"""

from __future__ import annotations

import re

TEST_LIKE_PATTERN = r"(^|/)(tests?|testing)(/|$)|(^|/)test_[^/]*\.py$|_test\.py$|(^|/)conftest\.py$"
"""A directory named ``test``, ``tests`` or ``testing`` (the path itself or anything under it),
``test_*.py``, ``*_test.py`` and ``conftest.py``, anywhere in a ``/``-separated relative path."""
TEST_LIKE = re.compile(TEST_LIKE_PATTERN)

__all__ = ["TEST_LIKE", "TEST_LIKE_PATTERN"]
