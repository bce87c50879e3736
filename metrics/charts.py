"""Plotly figure builders for the dashboard (plain figure dicts: plotly.js renders them as they are).

Figures are built as the JSON plotly.js takes rather than through plotly.graph_objects: the
object layer validates every property on construction, which cost more than the SQL behind a
dashboard request. A test runs each figure through graph_objects to keep them valid.
"""

from __future__ import annotations

from django.utils.translation import gettext as _

PALETTE = ["#1f5f8b", "#c2410c", "#15803d", "#7c3aed", "#b91c1c", "#0e7490", "#a16207", "#4b5563"]
STATUS_COLORS = {"OK": "#15803d", "UNAVAILABLE": "#b91c1c", "DEADLINE_EXCEEDED": "#c2410c"}


def _layout(title: str, **extra) -> dict:
    layout = {
        # Left-aligned, so the modebar (top right) never covers it in a narrow card.
        "title": {"text": title, "font": {"size": 14}, "x": 0.01, "xanchor": "left"},
        "margin": {"l": 56, "r": 16, "t": 44, "b": 72},
        "height": 320,
        "font": {"family": "-apple-system, Segoe UI, Helvetica, Arial, sans-serif", "size": 12, "color": "#222"},
        "paper_bgcolor": "rgba(0,0,0,0)",
        "plot_bgcolor": "rgba(0,0,0,0)",
        # Below the plot, clear of tick labels however tall automargin makes them.
        "legend": {"orientation": "h", "x": 0, "y": 0, "yref": "container", "yanchor": "bottom"},
        "xaxis": {"automargin": True},
        "yaxis": {"automargin": True},
        "colorway": PALETTE,
    }
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(layout.get(key), dict):
            layout[key] = {**layout[key], **value}  # an axis title keeps the axis defaults
        else:
            layout[key] = value
    return layout


def plot_config(filename: str, locale: str | None = None) -> dict:
    """Plotly config: the modebar's camera button downloads the chart as PNG (client-side).

    plotly.js 4 shows a "Share chart" button by default that uploads the figure to Plotly's cloud:
    never from an offline portal, so it is off, removed, and given no server to send to.
    `locale` is a plotly.js locale name (zh-CN) whose file the page loads.
    """
    config = {
        "displaylogo": False,
        "responsive": True,
        "showSendToCloud": False,
        "showEditInChartStudio": False,
        "showLink": False,
        "plotlyServerURL": "",
        "toImageButtonOptions": {"format": "png", "filename": filename, "scale": 2},
        # Download, zoom, pan and reset stay; the rest crowded the title of a card-sized chart.
        "modeBarButtonsToRemove": [
            "select2d",
            "lasso2d",
            "zoomIn2d",
            "zoomOut2d",
            "autoScale2d",
            "sendChartToCloud",
            "editInChartStudio",
        ],
    }
    if locale:
        config["locale"] = locale
    return config


def _empty(fig: dict) -> dict:
    fig["layout"]["annotations"] = [
        {
            "text": _("No data in this window"),
            "showarrow": False,
            "xref": "paper",
            "yref": "paper",
            "x": 0.5,
            "y": 0.5,
            "font": {"size": 14, "color": "#555"},
        }
    ]
    return fig


def stage_comparison_bar(stages: list[dict]) -> dict:
    """Records in, out and failed per stage template (grouped bars)."""
    x = [row.get("stage_label") or row["stage_template"] or _("(no stage)") for row in stages]
    traces = [
        {"type": "bar", "name": _("Records in"), "x": x, "y": [r["records_in"] for r in stages]},
        {"type": "bar", "name": _("Records out"), "x": x, "y": [r["records_out"] for r in stages]},
        {"type": "bar", "name": _("Records failed"), "x": x, "y": [r["records_failed"] for r in stages]},
    ]
    fig = {"data": traces, "layout": _layout(_("Stage comparison"), barmode="group", yaxis={"title": _("Records")})}
    return fig if stages else _empty(fig)


def token_usage_bar(tokens: list[dict]) -> dict:
    """Prompt and completion tokens per model version (stacked bars)."""
    x = [row["model_version"] for row in tokens]
    traces = [
        {"type": "bar", "name": _("Prompt tokens"), "x": x, "y": [r["prompt_tokens"] for r in tokens]},
        {"type": "bar", "name": _("Completion tokens"), "x": x, "y": [r["completion_tokens"] for r in tokens]},
    ]
    layout = _layout(_("Token usage by model version"), barmode="stack", yaxis={"title": _("Tokens")})
    fig = {"data": traces, "layout": layout}
    return fig if tokens else _empty(fig)


def gateway_usage_bar(rows: list[dict]) -> dict:
    """Gateway tokens per key, one stacked trace per model version."""
    keys = list(dict.fromkeys(r["key_name"] for r in rows))
    models = list(dict.fromkeys(r["model_version"] for r in rows))
    traces = []
    for model in models:
        tokens = {r["key_name"]: r["tokens"] for r in rows if r["model_version"] == model}
        traces.append({"type": "bar", "name": model, "x": keys, "y": [tokens.get(k, 0) for k in keys]})
    layout = _layout(_("Gateway tokens by key and model"), barmode="stack", yaxis={"title": _("Tokens")})
    fig = {"data": traces, "layout": layout}
    return fig if rows else _empty(fig)


def throughput_line(live: list[dict]) -> dict:
    """Records and model requests per second, per minute over the last hour."""
    x = [row["bucket"] for row in live]
    traces = [
        {
            "type": "scatter",
            "mode": "lines",
            "name": _("Records/s"),
            "x": x,
            "y": [r["records_per_s"] for r in live],
        },
        {
            "type": "scatter",
            "mode": "lines",
            "name": _("Requests/s"),
            "x": x,
            "y": [r["requests_per_s"] for r in live],
            "line": {"dash": "dot"},
        },
    ]
    return {"data": traces, "layout": _layout(_("Live throughput (last hour)"), yaxis={"title": _("per second")})}


def history_chart(history: list[dict], *, kind: str = "line", metric_label: str = "") -> dict:
    """This period against the same period a year before, with the deltas in the hover text."""
    x = [row["period"] for row in history]
    hover = [
        (_("In progress: not compared with a whole period.") + "<br>" if row.get("partial") else "")
        + _("Previous period: %(prev)s (%(pop)s)<br>Year before: %(ly)s (%(yoy)s)")
        % {
            "prev": row["previous"],
            "pop": _pct_text(row["pop_pct"]),
            "ly": "—" if row["last_year"] is None else row["last_year"],
            "yoy": _pct_text(row["yoy_pct"]),
        }
        for row in history
    ]
    # The period still in progress is drawn faded so it does not read as a drop.
    opacity = [0.45 if row.get("partial") else 1.0 for row in history]
    trace_type = "bar" if kind == "bar" else "scatter"
    mode = {} if kind == "bar" else {"mode": "lines+markers"}
    traces = [
        {
            "type": trace_type,
            **mode,
            "name": _("This period"),
            "x": x,
            "y": [r["value"] for r in history],
            "marker": {"opacity": opacity},
            "text": hover,
            "hovertemplate": "%{x}: %{y}<br>%{text}<extra></extra>",
        },
        {
            "type": trace_type,
            **mode,
            "name": _("Same period last year"),
            "x": x,
            "y": [r["last_year"] for r in history],
        },
    ]
    title = _("History: %(metric)s, period over period and year over year") % {"metric": metric_label}
    layout = _layout(title, barmode="group", yaxis={"title": metric_label})
    if history and history[-1].get("partial"):
        layout["annotations"] = [
            {
                "text": _("in progress"),
                "x": history[-1]["period"],
                "y": 1,
                "xref": "x",
                "yref": "paper",
                "yanchor": "bottom",
                "showarrow": False,
                "font": {"size": 11},
            }
        ]
    return {"data": traces, "layout": layout}


def _pct_text(value) -> str:
    return "—" if value is None else f"{value:+.1f}%"


def request_structure_pie(rows: list[dict]) -> dict:
    """Model requests by outcome status."""
    labels = [r["status_code"] for r in rows]
    trace = {
        "type": "pie",
        "labels": labels,
        "values": [r["requests"] for r in rows],
        "hole": 0.35,
        "sort": False,
        # Labels inside the slices; slivers too small for a label are named by the legend and hover.
        "textinfo": "label+percent",
        "textposition": "inside",
        "insidetextorientation": "horizontal",
        "marker": {"colors": [STATUS_COLORS.get(s, PALETTE[(i + 3) % len(PALETTE)]) for i, s in enumerate(labels)]},
    }
    fig = {
        "data": [trace],
        "layout": _layout(
            _("Request structure by status"), showlegend=True, uniformtext={"minsize": 10, "mode": "hide"}
        ),
    }
    return fig if rows else _empty(fig)
