"""The HTML report: one self-contained file (plotly.js inlined once, no network to view it).

Per workflow: the verdict and its reasons, the metrics and checks tables, and charts -- latency
distribution stable vs candidate (from ``summary["samples"]``), check pass rates, tokens and
cost per model. plotly is the optional extra ``html``; without it :func:`render_html` raises
:class:`PlotlyMissingError` (the plugin turns it into a warning and still writes the other
reports).
"""

from __future__ import annotations

import html
import os
from collections.abc import Mapping, Sequence
from typing import Any

from pytest_modelrollout.report import (
    CHECK_HEADERS,
    METRIC_HEADERS,
    ReportError,
    _write_atomic,
    check_rows,
    crashed_workers,
    metric_rows,
    reason_messages,
    replay_counts,
    tolerance_sentence,
    workflows_of,
)

__all__ = ["PlotlyMissingError", "render_html", "write_html"]

INSTALL_HINT = "pip install 'pytest-modelrollout[html]'"

STABLE_COLOR = "#4c78a8"
CANDIDATE_COLOR = "#f58518"
VERDICT_COLORS = {
    "READY": "#1a7f37",
    "BLOCKED": "#cf222e",
    "INCONCLUSIVE": "#9a6700",
    "KILLED": "#6e40c9",
}
POINTS_LIMIT = 400  # show every sample as a dot up to this many per model
CHART_HEIGHT = 340


class PlotlyMissingError(ReportError):
    """plotly (the ``html`` extra) is not installed."""


def _esc(value: Any) -> str:
    return html.escape(" ".join(str(value).split()), quote=True)


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _role_metrics(wf: Mapping[str, Any], role: str) -> Mapping[str, Any]:
    m = wf.get(role)
    return m if isinstance(m, Mapping) else {}


def _samples(summary: Mapping[str, Any], workflow: str, role: str) -> list[float]:
    samples = summary.get("samples")
    if not isinstance(samples, Mapping):
        return []
    wf = samples.get(workflow)
    if not isinstance(wf, Mapping):
        return []
    values = wf.get(role)
    if not isinstance(values, (list, tuple)):
        return []
    return [v for v in (_num(x) for x in values) if v is not None]


def _layout(title: str, **extra: Any) -> dict[str, Any]:
    layout: dict[str, Any] = {
        "title": {"text": title, "font": {"size": 15}, "x": 0.02, "xanchor": "left"},
        "height": CHART_HEIGHT,
        "margin": {"l": 60, "r": 20, "t": 50, "b": 50},
        "template": "plotly_white",
        "legend": {"orientation": "h", "y": -0.18, "x": 0.5, "xanchor": "center"},
        "font": {"family": "system-ui, -apple-system, 'Segoe UI', 'Noto Sans CJK SC', sans-serif"},
    }
    layout.update(extra)
    return layout


def _latency_figure(
    go: Any, summary: Mapping[str, Any], name: str, wf: Mapping[str, Any], models: tuple[str, str]
) -> Any:
    fig = go.Figure()
    roles = (("stable", STABLE_COLOR), ("candidate", CANDIDATE_COLOR))
    have = False
    for (role, color), model in zip(roles, models, strict=True):
        values = _samples(summary, name, role)
        if not values:
            continue
        have = True
        fig.add_trace(
            go.Box(
                x=values,
                name=f"{role}<br><sub>{_esc(model)}</sub>",
                marker={"color": color, "size": 4, "opacity": 0.55},
                line={"color": color},
                boxpoints="all" if len(values) <= POINTS_LIMIT else "outliers",
                jitter=0.45,
                pointpos=0,
                boxmean=True,
                orientation="h",
                hovertemplate="%{x:.0f} ms<extra>" + role + "</extra>",
            )
        )
    if have:
        fig.update_layout(
            **_layout(
                "Latency distribution (ms)",
                showlegend=False,
                xaxis={"title": {"text": "latency (ms)"}, "rangemode": "tozero"},
                yaxis={"autorange": "reversed"},
            )
        )
        return fig
    # No samples in the summary: the percentiles it does have.
    for role, color in roles:
        m = _role_metrics(wf, role)
        ys = [_num(m.get("latency_p50_ms")), _num(m.get("latency_p95_ms"))]
        fig.add_trace(
            go.Bar(
                x=["p50", "p95"],
                y=ys,
                name=role,
                marker={"color": color},
                texttemplate="%{y:.0f} ms",
                textposition="outside",
            )
        )
    fig.update_layout(
        **_layout(
            "Latency percentiles (ms, no samples in report)",
            barmode="group",
            yaxis={"title": {"text": "ms"}},
        )
    )
    return fig


def _checks_figure(go: Any, wf: Mapping[str, Any]) -> Any | None:
    checks = wf.get("checks")
    if not isinstance(checks, Mapping) or not checks:
        return None
    names = sorted(checks, key=str)
    labels = [_esc(n) for n in names]
    fig = go.Figure()
    for role, color in (("stable", STABLE_COLOR), ("candidate", CANDIDATE_COLOR)):
        ys = []
        for n in names:
            info = checks[n] if isinstance(checks[n], Mapping) else {}
            v = _num(info.get(f"{role}_pass_rate"))
            ys.append(None if v is None else v * 100)
        fig.add_trace(
            go.Bar(
                x=labels,
                y=ys,
                name=role,
                marker={"color": color},
                texttemplate="%{y:.0f}%",
                textposition="outside",
                hovertemplate="%{x}: %{y:.1f}%<extra>" + role + "</extra>",
            )
        )
    fig.update_layout(
        **_layout(
            "Check pass rate (%)",
            barmode="group",
            bargap=0.25,
            yaxis={"range": [0, 112], "title": {"text": "pass rate (%)"}},
        )
    )
    return fig


def _cost_figure(go: Any, make_subplots: Any, wf: Mapping[str, Any]) -> Any:
    fig = make_subplots(
        rows=1,
        cols=2,
        horizontal_spacing=0.18,
        subplot_titles=("Tokens per model", "Cost per model (USD)"),
    )
    fig.update_annotations(font={"size": 15})
    roles = ("stable", "candidate")
    metrics = [_role_metrics(wf, r) for r in roles]
    for key, label, opacity in (
        ("input_tokens", "input tokens", 1.0),
        ("output_tokens", "output tokens", 0.55),
    ):
        fig.add_trace(
            go.Bar(
                x=list(roles),
                y=[_num(m.get(key)) for m in metrics],
                name=label,
                marker={
                    "color": [STABLE_COLOR, CANDIDATE_COLOR],
                    "opacity": opacity,
                    "line": {"color": "#333", "width": 0.5},
                },
                hovertemplate="%{x}: %{y:,.0f} " + label + "<extra></extra>",
                showlegend=False,
                texttemplate=label.split()[0][:3] + " %{y:,.0f}",
                textposition="inside",
                insidetextanchor="middle",
                textangle=0,
                textfont={"size": 11},
            ),
            row=1,
            col=1,
        )
    costs = [_num(m.get("cost_usd")) for m in metrics]
    fig.add_trace(
        go.Bar(
            x=list(roles),
            y=costs,
            marker={"color": [STABLE_COLOR, CANDIDATE_COLOR]},
            texttemplate="$%{y:.3~g}",
            textposition="outside",
            showlegend=False,
            hovertemplate="%{x}: $%{y:.6g}<extra></extra>",
        ),
        row=1,
        col=2,
    )
    for i, c in enumerate(costs):
        if c is None:
            fig.add_annotation(
                x=roles[i],
                y=0,
                text="unpriced",
                showarrow=False,
                yshift=12,
                xref="x2",
                yref="y2",
                font={"color": "#888"},
            )
    fig.update_layout(**_layout("", barmode="stack", margin={"l": 60, "r": 20, "t": 60, "b": 50}))
    fig.update_yaxes(rangemode="tozero")
    top = max((c for c in costs if c is not None), default=0.0)
    if top > 0:
        fig.update_yaxes(range=[0, top * 1.25], row=1, col=2)
    return fig


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], cls: str) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


_CSS = """
:root { --fg:#1f2328; --muted:#656d76; --border:#d0d7de; --bg:#f6f8fa; }
* { box-sizing: border-box; }
body { font-family: system-ui, -apple-system, "Segoe UI", "Noto Sans CJK SC", "PingFang SC",
       sans-serif; color: var(--fg); margin: 0; background: #fff; }
header.top { padding: 20px 32px; border-bottom: 1px solid var(--border); background: var(--bg); }
h1 { margin: 0 0 6px 0; font-size: 26px; }
.meta { color: var(--muted); font-size: 14px; }
main { padding: 8px 32px 40px 32px; }
.badge { display: inline-block; padding: 3px 12px; border-radius: 999px; color: #fff;
         font-weight: 600; letter-spacing: .03em; font-size: .8em; vertical-align: middle; }
.warn { background: #fff8c5; border: 1px solid #d4a72c; padding: 8px 12px; border-radius: 6px;
        margin: 12px 0; }
section.workflow { border: 1px solid var(--border); border-radius: 10px; margin: 24px 0;
                   padding: 16px 20px; }
section.workflow h2 { margin: 0 0 8px 0; font-size: 20px; }
.models { color: var(--muted); font-weight: normal; font-size: 15px; }
ul.reasons { margin: 6px 0 12px 0; }
ul.reasons li { margin: 3px 0; font-family: ui-monospace, SFMono-Regular, Menlo, monospace;
                font-size: 13px; }
.tolerated { color: var(--muted); font-style: italic; }
.tables { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }
table { border-collapse: collapse; font-size: 13px; }
th, td { padding: 4px 10px; border-bottom: 1px solid var(--border); text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: var(--bg); }
.charts { display: grid; grid-template-columns: repeat(auto-fill, minmax(400px, 1fr)); gap: 12px;
          margin-top: 14px; }
.chart { border: 1px solid var(--border); border-radius: 8px; padding: 4px; min-width: 0; }
table.overview td.verdict { font-weight: 600; }
footer { color: var(--muted); font-size: 12px; padding: 0 32px 24px 32px; }
"""


def _badge(verdict: str) -> str:
    color = VERDICT_COLORS.get(verdict, "#57606a")
    return f'<span class="badge" style="background:{color}">{_esc(verdict)}</span>'


def render_html(summary: Mapping[str, Any]) -> str:
    """The whole HTML report as one string. Raises :class:`PlotlyMissingError` without plotly."""
    try:
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots
    except ImportError:
        raise PlotlyMissingError(
            f"the HTML report needs plotly, which is not installed: {INSTALL_HINT}"
        ) from None

    plotly_js_written = False

    def figure_html(fig: Any) -> str:
        nonlocal plotly_js_written
        out: str = fig.to_html(
            full_html=False,
            include_plotlyjs=not plotly_js_written,
            include_mathjax=False,
            config={"displaylogo": False, "responsive": True, "displayModeBar": False},
            default_width="100%",
            default_height=f"{CHART_HEIGHT}px",
        )
        plotly_js_written = True
        return f'<div class="chart">{out}</div>'

    verdict = str(summary.get("verdict") or "INCONCLUSIVE")
    stable = summary.get("stable", "—")
    candidate = summary.get("candidate", "—")
    parts: list[str] = []
    meta = [f"{_esc(stable)} → {_esc(candidate)}"]
    if summary.get("started_at"):
        meta.append(f"started {_esc(summary['started_at'])}")
    if summary.get("duration_s") is not None:
        meta.append(f"{_esc(summary['duration_s'])} s")
    if summary.get("decision"):
        meta.append(f"decision {_esc(summary['decision'])}")
    if summary.get("confidence") is not None:
        meta.append(f"confidence {_esc(summary['confidence'])}")
    parts.append(
        f'<header class="top"><h1>Rollout readiness {_badge(verdict)}</h1>'
        f'<div class="meta">{" · ".join(meta)}</div></header><main>'
    )
    if summary.get("complete") is False:
        parts.append(
            '<div class="warn">Incomplete session: the run was interrupted; the verdict '
            "covers only the calls made.</div>"
        )
    crashed = crashed_workers(summary)
    if crashed:
        parts.append(f'<div class="warn">Crashed xdist workers: {_esc(", ".join(crashed))}</div>')

    workflows = workflows_of(summary)
    if len(workflows) > 1:
        rows = []
        for name, wf in workflows:
            rows.append(
                f'<tr><td><a href="#wf-{_esc(name)}">{_esc(name)}</a></td>'
                f'<td class="verdict">{_badge(str(wf.get("verdict") or "INCONCLUSIVE"))}</td>'
                f"<td>{len(reason_messages(wf))}</td></tr>"
            )
        parts.append(
            '<h2>Workflows</h2><table class="overview"><thead><tr><th>workflow</th>'
            "<th>verdict</th><th>reasons</th></tr></thead><tbody>"
            + "".join(rows)
            + "</tbody></table>"
        )
    if not workflows:
        parts.append("<p>No workflow calls were recorded.</p>")

    for name, wf in workflows:
        wf_verdict = str(wf.get("verdict") or "INCONCLUSIVE")
        s_model = str(wf.get("stable_model") or stable)
        c_model = str(wf.get("candidate_model") or candidate)
        parts.append(f'<section class="workflow" id="wf-{_esc(name)}">')
        parts.append(
            f"<h2>{_esc(name)} {_badge(wf_verdict)} "
            f'<span class="models">{_esc(s_model)} → {_esc(c_model)}</span></h2>'
        )
        reasons = reason_messages(wf)
        if reasons:
            parts.append(
                '<ul class="reasons">' + "".join(f"<li>{_esc(r)}</li>" for r in reasons) + "</ul>"
            )
        tol = tolerance_sentence(wf)
        if tol and wf_verdict == "READY":
            parts.append(f'<p class="tolerated">{_esc(tol)}</p>')
        notes = replay_counts(wf)
        if notes:
            parts.append(f'<p class="tolerated">{_esc("; ".join(notes))}</p>')
        tables = [_table(METRIC_HEADERS, metric_rows(wf), "metrics")]
        checks = check_rows(wf)
        if checks:
            tables.append(_table(CHECK_HEADERS, checks, "checks"))
        parts.append('<div class="tables">' + "".join(tables) + "</div>")
        charts = [figure_html(_latency_figure(go, summary, name, wf, (s_model, c_model)))]
        check_fig = _checks_figure(go, wf)
        if check_fig is not None:
            charts.append(figure_html(check_fig))
        charts.append(figure_html(_cost_figure(go, make_subplots, wf)))
        parts.append('<div class="charts">' + "".join(charts) + "</div></section>")

    version = _esc(summary.get("plugin_version") or "")
    parts.append(f"</main><footer>pytest-modelrollout {version}</footer>")
    title = f"Rollout readiness: {_esc(verdict)}"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{title}</title><style>{_CSS}</style></head><body>"
        + "".join(parts)
        + "</body></html>\n"
    )


def write_html(path: str | os.PathLike[str], summary: Mapping[str, Any]) -> None:
    _write_atomic(path, render_html(summary))
