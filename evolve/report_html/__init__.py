"""``evolve report``: a run as a self-contained static HTML report, with its data as JSON beside it.

    data.py      runs/<run>/ (and the repo's git, for diffs) -> one JSON-ready dict
    figures.py   that dict -> plotly figures (score, lineage, cost, task heat map)
    render.py    figures, cards and task pages -> files in the report folder (jinja2 templates)

Everything read from a run (task ids, diffs, notes, trajectories) is data written by a harness
that may be hostile: templates autoescape it, and pages carry a Content-Security-Policy.
"""
