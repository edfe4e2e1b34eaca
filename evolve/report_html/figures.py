"""The report's plots, as plotly figures built from ``evolve.report_html.data.build``'s dict.

Text from a run (hypotheses, task ids) goes into plotly as data: plotly's JSON escapes
``<``, ``>`` and ``/`` for the page, and ``plain`` keeps plotly's own label markup
(``<b>``, ``<a href>``) from reading it as tags.
"""

from __future__ import annotations

import html

COLORS = {"accepted": "#2ca02c", "rejected": "#d62728", "pending": "#ff7f0e", "failed": "#7f7f7f",
          "refused": "#9467bd", "running": "#17becf", "base": "#1f77b4"}


def plain(text: str, limit: int = 120) -> str:
    """``text`` as plotly label text: entities escaped (plotly decodes them back to characters
    and shows them literally, never as markup), cut to ``limit`` characters."""
    text = " ".join(str(text).split())
    return html.escape(text[:limit] + ("..." if len(text) > limit else ""), quote=False)


def _layout(fig, title: str, **kw):
    fig.update_layout(title=title, template="plotly_white", height=kw.pop("height", 380),
                      margin=dict(l=60, r=20, t=50, b=50), **kw)
    return fig


def score_figure(data: dict):
    """Resolve rate on the search split by generation: each candidate with its verdict's interval
    (parent rate + the delta's interval), marked by verdict; the accepted score as a step line;
    the held-out check's baseline and best at the right."""
    import plotly.graph_objects as go

    run, gens = data["run"], data["generations"]
    fig = go.Figure()
    best, xs, ys = run.get("baseline_rate"), [0], [run.get("baseline_rate")]
    for g in gens:
        if g["status"] == "accepted" and g.get("child_rate") is not None:
            best = g["child_rate"]
        xs.append(g["gen"])
        ys.append(best)
    fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line_shape="hv", name="accepted score",
                             line=dict(color=COLORS["accepted"], width=2)))
    for status in ("accepted", "pending", "rejected"):
        pts = [g for g in gens if g["status"] == status and g.get("child_rate") is not None]
        if not pts:
            continue
        up = [max(0.0, (g["parent_rate"] + g["ci_high"]) - g["child_rate"]) if g.get("ci_high") is not None
              else 0.0 for g in pts]
        down = [max(0.0, g["child_rate"] - (g["parent_rate"] + g["ci_low"])) if g.get("ci_low") is not None
                else 0.0 for g in pts]
        fig.add_trace(go.Scatter(
            x=[g["gen"] for g in pts], y=[g["child_rate"] for g in pts], mode="markers", name=status,
            marker=dict(color=COLORS[status], size=11, symbol="x" if status == "rejected" else "circle"),
            error_y=dict(type="data", symmetric=False, array=up, arrayminus=down),
            text=[f"g{g['gen']:03d}: {plain(g['hypothesis'])}<br>p={g.get('p_value')}" for g in pts],
            hoverinfo="text+y"))
    fig.add_trace(go.Scatter(x=[0], y=[run.get("baseline_rate")], mode="markers", name="baseline",
                             marker=dict(color=COLORS["base"], size=11)))
    hold = run.get("holdout")
    if hold:
        x = (gens[-1]["gen"] if gens else 0) + 1
        fig.add_trace(go.Scatter(x=[x, x], y=[hold.get("baseline"), hold.get("best")], mode="markers+text",
                                 name=f"held-out check ({hold.get('n')} tasks)", text=["baseline", "best"],
                                 textposition="middle right", marker=dict(color="#000", size=10, symbol="diamond")))
    return _layout(fig, "Resolve rate over generations (search split; bars: the verdict's interval)",
                   xaxis=dict(title="generation", dtick=1), yaxis=dict(title="resolve rate", range=[-0.05, 1.05], tickformat=".0%"))


def lineage_figure(data: dict):
    """The lineage tree: one node per generation at (generation, candidate's resolve rate; a
    candidate without a score sits at its parent's), an edge from the node it branched from."""
    import plotly.graph_objects as go

    run, gens = data["run"], data["generations"]
    pos = {run["base"]: (0, run.get("baseline_rate") or 0.0)}
    nodes = [(0, run.get("baseline_rate") or 0.0, "base", "base")]
    ex, ey = [], []
    for g in gens:
        px, py = pos.get(g["parent"], (0, run.get("baseline_rate") or 0.0))
        y = g["child_rate"] if g.get("child_rate") is not None else py
        for sha in {g.get("verdict_commit"), g.get("tested_commit")} - {None}:
            pos[sha] = (g["gen"], y)
        ex += [px, g["gen"], None]
        ey += [py, y, None]
        nodes.append((g["gen"], y, g["status"], f"g{g['gen']:03d} {g['status']}: {plain(g['hypothesis'], 80)}"))
    fig = go.Figure(go.Scatter(x=ex, y=ey, mode="lines", line=dict(color="#bbb"), hoverinfo="skip",
                               showlegend=False))
    for status in COLORS:
        pts = [n for n in nodes if n[2] == status]
        if pts:
            fig.add_trace(go.Scatter(x=[n[0] for n in pts], y=[n[1] for n in pts], mode="markers", name=status,
                                     marker=dict(color=COLORS[status], size=13, line=dict(color="#333", width=1)),
                                     text=[n[3] for n in pts], hoverinfo="text"))
    return _layout(fig, "Lineage (each candidate from the accepted head it branched from)",
                   xaxis=dict(title="generation", dtick=1), yaxis=dict(title="resolve rate", tickformat=".0%"))


def cost_figure(data: dict):
    """Cumulative fresh spend in USD by role (solver, optimizer) over wall-clock time."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for role, color in (("solver", "#1f77b4"), ("optimizer", "#ff7f0e")):
        pts = data["cost"].get(role) or []
        fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="lines+markers",
                                 line_shape="hv", name=role, line=dict(color=color)))
    return _layout(fig, "Cumulative cost by role (USD, fresh spend; cached results cost nothing)",
                   xaxis_title="time (UTC)", yaxis=dict(title="USD", rangemode="tozero"))


def heatmap_figure(data: dict):
    """Each search task's share of resolved runs (rows) for the baseline and each accepted or
    pending generation (columns)."""
    import plotly.graph_objects as go

    hm = data["heatmap"]
    fig = go.Figure(go.Heatmap(z=hm["z"], x=hm["columns"], y=[plain(t, 60) for t in hm["tasks"]], zmin=0, zmax=1,
                               colorscale=[[0, "#d62728"], [0.5, "#ffdd57"], [1, "#2ca02c"]],
                               colorbar=dict(title="resolved", tickformat=".0%"), xgap=2, ygap=2,
                               hovertemplate="%{y}<br>%{x}: %{z:.0%}<extra></extra>"))
    return _layout(fig, "Tasks across accepted generations (share of runs resolved; blank: not evaluated)",
                   height=max(300, 60 + 22 * len(hm["tasks"])), yaxis=dict(autorange="reversed", type="category"),
                   xaxis=dict(type="category"))


def all_figures(data: dict) -> dict:
    """``{element id: figure}`` in page order."""
    return {"plot-score": score_figure(data), "plot-lineage": lineage_figure(data), "plot-cost": cost_figure(data),
            "plot-heatmap": heatmap_figure(data)}
