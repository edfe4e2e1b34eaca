"""Synthesizing eval sets: ``evolve evals synth`` (from a repo) and ``evolve evals build`` (from a recipe).

Tasks come from ``mutation`` (procedural bugs made by ``mutate``) or ``history``
(bug fixes mined from git); both run the project's tests in sandboxes
(``validate``), get bug-report ``problem`` statements, are checked by the real
grader (``synthesize.verify``) and are written by ``output`` in the format
``evolve.evalsets`` loads. ``env`` holds the types both sources share,
``source`` the project tree; ``build`` is the recipe build, ``progress`` and
``commands`` what the CLI shows.
"""
