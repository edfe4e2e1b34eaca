"""Write a run's report folder: ``index.html`` (plotly inlined), ``report.json`` (its data) and one
page per linked task, with copies of that task's files, so the folder opens offline, anywhere::

    <out>/index.html                 plots, pending candidates, one card per generation
    <out>/report.json                evolve.report_html.data.build's dict
    <out>/tasks/gNNN/<task>.html     a fixed or broken task: child and parent runs, files inline
    <out>/tasks/gNNN/<task>/<run>-<file>.txt   those files: hard links (no disk used), or copies
                                     cut at MAX_COPY_BYTES, within MAX_REPORT_COPY_BYTES a report

Every file is written atomically, so a report refreshed while someone reads it is never half
written. Run data is autoescaped by the templates; diffs are escaped by pygments.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from evolve.store import atomic_write

MAX_COPY_BYTES = 2_000_000
"""Bytes of a task file copied into the report (a trace may be 20 MB; the rest stays in runs/)."""
MAX_REPORT_COPY_BYTES = 256_000_000
"""Bytes a report may copy in all (files it cannot hard-link, or cut); past it a file is linked from
its task page by its path in runs/ only, and the page says so. A night must not fill the disk."""
MAX_INLINE_BYTES = 64_000
"""Bytes of a task file shown inline on its task page."""
INDEX_CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
             "img-src data: blob:; font-src data:")
"""The report page's Content-Security-Policy: only its own inline code runs (plotly's bundle
and figures); nothing is loaded from anywhere."""
TASK_CSP = "default-src 'none'; style-src 'unsafe-inline'"
"""A task page runs no script at all."""


def _write(path: Path, data: str | bytes) -> None:
    """Write ``path`` atomically, readable by all (a report is made to be shared)."""
    atomic_write(path, data)
    path.chmod(0o644)


def task_slug(instance_id: str) -> str:
    """A file name for ``instance_id``: its safe characters (at most 60) and a hash of the whole id,
    so two ids never share a page and no id can name a path outside the folder."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", instance_id)[:60].lstrip(".") or "task"
    return f"{safe}-{hashlib.sha256(instance_id.encode()).hexdigest()[:8]}"


def _env():
    from jinja2 import Environment, PackageLoader, StrictUndefined

    env = Environment(loader=PackageLoader("evolve.report_html", "templates"), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["pct"] = lambda v: "-" if v is None else f"{100 * v:.1f}%"
    env.filters["pts"] = lambda v: "-" if v is None else f"{100 * v:+.1f} pts"
    env.filters["usd"] = lambda v: f"${v or 0:.4f}"
    return env


def highlight_diff(diff: str) -> tuple[str, str]:
    """(HTML, CSS) of ``diff`` highlighted by pygments (which escapes every character of it)."""
    from pygments import highlight
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import DiffLexer

    formatter = HtmlFormatter(cssclass="hl")
    return highlight(diff, DiffLexer(), formatter), formatter.get_style_defs(".hl")


def _head(path: Path, limit: int) -> tuple[bytes, bool]:
    """The first ``limit`` bytes of ``path`` and whether it is longer."""
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    return data[:limit], len(data) > limit


class _CopyBudget:
    """Bytes a report may still copy (``MAX_REPORT_COPY_BYTES``)."""

    def __init__(self, left: int = MAX_REPORT_COPY_BYTES) -> None:
        self.left = left


def place_file(src: Path, dst: Path, budget: _CopyBudget) -> bool:
    """Put ``src``'s content at ``dst``: kept when ``dst`` exists (a run's task files never change),
    else a hard link when ``src`` is at most ``MAX_COPY_BYTES``, else (or across filesystems) a copy of
    at most ``MAX_COPY_BYTES`` with a note where it was cut, charged to ``budget``. False when the
    budget does not allow the copy (nothing written)."""
    if dst.exists():
        return True
    size = src.stat().st_size
    dst.parent.mkdir(parents=True, exist_ok=True)
    if size <= MAX_COPY_BYTES:
        tmp = dst.with_name(f".{dst.name}.link")
        tmp.unlink(missing_ok=True)
        try:
            os.link(src, tmp)
            os.replace(tmp, dst)
            return True
        except OSError:  # another filesystem, or links not allowed there: copy instead
            tmp.unlink(missing_ok=True)
    cost = min(size, MAX_COPY_BYTES)
    if cost > budget.left:
        return False
    budget.left -= cost
    data, cut = _head(src, MAX_COPY_BYTES)
    _write(dst, data + (b"\n[cut here: the whole file is in runs/]\n" if cut else b""))
    return True


def write_task_page(out: Path, gen: int, instance_id: str, change: str, runs: dict[str, list[dict]], env,
                    budget: _CopyBudget | None = None) -> str:
    """Write generation ``gen``'s page for ``instance_id`` (``change``: fixed or broken) and place its
    files beside it (``place_file``); returns the page's path relative to ``out``."""
    budget = budget or _CopyBudget()
    slug = task_slug(instance_id)
    rel_dir = f"tasks/g{gen:03d}"
    sections = []
    for side in ("child", "parent"):
        for run in runs.get(side, []):
            files = []
            for name in run["files"]:
                src = Path(run["dir"]) / name
                copy_name = f"{run['label']}-{run['repeat']}-{name}.txt"
                placed = place_file(src, out / rel_dir / slug / copy_name, budget)
                inline, inline_cut = _head(src, MAX_INLINE_BYTES)
                files.append({"name": name, "anchor": f"{run['label']}-{run['repeat']}-{name}",
                              "href": f"{slug}/{copy_name}" if placed else None,
                              "text": inline.decode("utf-8", "replace"),
                              "cut": inline_cut, "source": str(src)})
            sections.append({"side": side, "label": run["label"], "repeat": run["repeat"], "files": files,
                             "result": run["result"]})
    html = env.get_template("task.html.j2").render(gen=gen, instance_id=instance_id, change=change,
                                                   sections=sections, csp=TASK_CSP)
    _write(out / rel_dir / f"{slug}.html", html)
    return f"{rel_dir}/{slug}.html"


def write_report(data: dict, out: Path) -> Path:
    """Write the report of ``data`` (``evolve.report_html.data.build``) into the folder ``out``;
    returns the path of its ``index.html``.

    Raises:
        OSError: the folder cannot be written.
    """
    import plotly.io as pio

    from evolve.report_html.figures import all_figures

    env, budget = _env(), _CopyBudget()
    out.mkdir(parents=True, exist_ok=True)
    css = ""
    cards = []
    for card in data["generations"]:
        diff_html, css = highlight_diff(card["diff"]) if card["diff"] else ("", css)
        links = {}
        for iid, runs in card["tasks"].items():
            change = "fixed" if iid in card["fixed"] else "broken"
            links[iid] = {"page": write_task_page(out, card["gen"], iid, change, runs, env, budget),
                          "files": [f for side in ("child", "parent") for r in runs[side] for f in r["files"]]}
        cards.append({**card, "diff_html": diff_html, "links": links})
    if not css:
        css = highlight_diff("")[1]
    plots, first = {}, True
    for div_id, fig in all_figures(data).items():
        plots[div_id] = pio.to_html(fig, full_html=False, include_plotlyjs=first, div_id=div_id,
                                    config={"displaylogo": False, "responsive": True})
        first = False
    pending = [c for c in cards if c["status"] == "pending"]
    html = env.get_template("report.html.j2").render(run=data["run"], generated=data["generated"], cards=cards,
                                                     pending=pending, plots=plots, pygments_css=css, csp=INDEX_CSP)
    _write(out / "report.json", json.dumps(data, indent=1, sort_keys=True, default=str) + "\n")
    index = out / "index.html"
    _write(index, html)
    return index


def report_run(runs_dir: Path, run_id: str, *, repo_root: Path | None, out: Path | None = None) -> Path:
    """Build and write run ``run_id``'s report into ``out`` (default ``runs_dir/run_id/report``);
    returns its ``index.html``.

    Raises:
        ConfigError: no such run. RunFileError: a run file is unreadable. EvolveError: ``out`` is not writable.
    """
    from evolve.errors import EvolveError
    from evolve.report_html.data import build

    out = out or runs_dir / run_id / "report"
    data = build(runs_dir, run_id, repo_root)
    try:
        return write_report(data, out)
    except OSError as e:
        raise EvolveError(f"cannot write the report in {out}: {e.strerror or e}. Choose a writable folder "
                          "with --out.") from None
