"""Dashboard pages: the statistics dashboard and the JSON its refresh fetches (same filters)."""

from __future__ import annotations

import datetime as dt

from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.http import JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.utils.formats import date_format
from django.utils.http import urlencode
from django.utils.translation import get_language, gettext_lazy
from django.utils.translation import gettext as _

from catalog.models import Project
from dataflare_portal.core.auth import role_required
from pipelines.models import Pipeline

from . import charts, selectors
from .api.views import history_params
from .choices import Granularity
from .filtersets import GRANULARITY_CHOICES, RANGE_CHOICES, MetricsFilterSet, metrics_query
from .models import MetricsSlice, MetricsSummary
from .services import config_value
from .staticfiles import STATIC_PATH, plotly_locale

CHART_KINDS = ("line", "bar")
HISTORY_METRIC_LABELS = {
    "records_processed": gettext_lazy("Records processed"),
    "tokens": gettext_lazy("Tokens"),
    "requests": gettext_lazy("Model requests"),
}


def refresh_seconds(request) -> int:
    """The refresh interval: `?refresh=` (1..3600) if given, else the system setting."""
    raw = request.GET.get("refresh", "")
    if raw.isdigit() and 1 <= int(raw) <= 3600:
        return int(raw)
    return int(config_value("dashboard_refresh_seconds", 60))


def _dimension_choices() -> dict:
    """Projects, pipelines, stage templates and model versions for the filter form.

    Projects and pipelines are read each time (two small indexed lists, so a pipeline created a moment
    ago is there to pick); the dimensions found in the rollups take a scan of 90 days and are cached.
    """
    found = cache.get("metrics:dashboard:dimensions")
    if found is None:
        since = timezone.now() - dt.timedelta(days=90)
        if selectors.slices_ready():
            recent = MetricsSlice.objects.filter(granularity=Granularity.DAY, bucket__gte=since).order_by()
            stage_rows, model_rows = recent.filter(dimension="stage"), recent.filter(dimension="model")
        else:  # a portal upgraded with history, before its first rollup pass fills the slices
            stage_rows = model_rows = MetricsSummary.objects.filter(granularity=Granularity.DAY, bucket__gte=since)
        stages = stage_rows.order_by().values_list("stage_template", flat=True).distinct()[:200]
        models = model_rows.order_by().values_list("model_version", flat=True).distinct()[:200]
        found = {
            "stage_templates": sorted(s for s in stages if s),
            "model_versions": sorted(m for m in models if m),
            "gateway_keys": sorted(selectors.gateway_key_names(None).items(), key=lambda kv: kv[1])[:500],
        }
        cache.set("metrics:dashboard:dimensions", found, 300)
    return {
        "projects": list(Project.objects.order_by("name").values_list("id", "name")[:500]),
        "pipelines": list(Pipeline.objects.order_by("name").values_list("id", "name")[:500]),
        **found,
    }


RATE_KPIS = {"success_rate", "failure_rate", "record_failure_rate"}


def kpi_display(key: str, value) -> str:
    """A KPI value as shown on its card."""
    if value is None:
        return "—"
    if key in RATE_KPIS:
        return f"{value * 100:.1f}%"
    if key.endswith("_ms"):
        return f"{value:,.0f} ms"
    if isinstance(value, float):
        return f"{value:,.2f}"
    return f"{value:,}"


def as_of_display(moment) -> str:
    """The rollup watermark as an operator reads it: portal-local time in the active language's format."""
    if moment is None:
        return ""
    local = timezone.localtime(moment)
    return f"{date_format(local, 'DATETIME_FORMAT')} ({local.tzname()})"


def _card(card: dict) -> dict:
    pct = card.get("delta_pct")
    rate = card["key"] in RATE_KPIS
    if rate and card.get("delta") is not None:
        delta_text = f"{card['delta'] * 100:+.1f} pp"
    else:
        delta_text = "" if pct is None else f"{pct:+.1f}%"
    trend = "flat" if not card.get("delta") else ("up" if card["delta"] > 0 else "down")
    return {
        **card,
        "label": str(card["label"]),
        "display": kpi_display(card["key"], card["value"]),
        "previous_display": kpi_display(card["key"], card.get("previous")),
        "delta_display": delta_text,
        "trend": trend,
    }


def dashboard_payload(query, *, period: str, kind: str, metric: str) -> dict:
    """Everything the dashboard shows for one query (memoised until the rollups change)."""
    fresh = selectors.freshness(now=query.now)
    key = (sorted(query.params().items()), query.granularity, period, kind, metric, get_language())
    return selectors.cached("dashboard", key, fresh, lambda: _payload(query, fresh, period, kind, metric))


def _payload(query, fresh, period: str, kind: str, metric: str) -> dict:
    """KPI cards, the stage table, figures and freshness for one query."""
    tables = selectors.tables(query)
    stages = tables["stages"]
    # The history and the live line do not depend on the window's exact bounds (the history on the period
    # holding its end, the live line on the last hour): memoised on what they depend on, a new window
    # reuses them.
    history = selectors.cached(
        "history-series",
        selectors.history_key(query, period=period, metric=metric),
        fresh,
        lambda: selectors.history(query, period=period, metric=metric),
    )
    live = selectors.cached(
        "live-series", selectors.dimension_key(query), fresh, lambda: selectors.live_throughput(query)
    )
    metric_label = str(HISTORY_METRIC_LABELS.get(metric, metric))
    return {
        **fresh.as_dict(),
        "data_as_of_display": as_of_display(fresh.data_as_of),
        "window": query.describe(),
        "kpis": [_card(card) for card in selectors.kpi_cards(selectors.kpis(query))],
        "stages": stages,
        "figures": {
            "stages": charts.stage_comparison_bar(stages),
            "tokens": charts.token_usage_bar(tables["tokens"]),
            "throughput": charts.throughput_line(live),
            "history": charts.history_chart(history, kind=kind, metric_label=metric_label),
            "requests": charts.request_structure_pie(selectors.request_structure(query)),
            "gateway": charts.gateway_usage_bar(tables["gateway"]),
        },
    }


def _page_params(request) -> tuple[dict, dict]:
    """(errors, options) for the page-only parameters: history period, metric and chart kind."""
    errors = {}
    try:
        hist = history_params(request.GET)
    except Exception as exc:  # DRF ValidationError: show it on the form instead of a 400 page
        errors.update(getattr(exc, "detail", {}) or {})
        hist = {"period": "day", "periods": None, "metric": "records_processed"}
    kind = request.GET.get("chart", "line")
    if kind not in CHART_KINDS:
        errors["chart"] = [_("Choose line or bar.")]
        kind = "line"
    if hist["metric"] not in HISTORY_METRIC_LABELS:
        hist["metric"] = "records_processed"
    return errors, {"period": hist["period"], "metric": hist["metric"], "kind": kind}


def default_range() -> str:
    """The time range the dashboard opens with: the `history_default_window` system setting."""
    return str(config_value("history_default_window", "today"))


def _query_or_default(request):
    try:
        return metrics_query(request.GET, default_range=default_range()), {}
    except ValidationError as exc:
        return metrics_query({}, default_range=default_range()), exc.message_dict


@role_required()
def dashboard(request):
    """The statistics dashboard (inside the admin shell)."""
    query, errors = _query_or_default(request)
    page_errors, options = _page_params(request)
    errors.update(page_errors)
    payload = dashboard_payload(query, period=options["period"], kind=options["kind"], metric=options["metric"])
    params = query.params()
    csv_query = urlencode(params)
    page_query = urlencode(
        {**params, "period": options["period"], "metric": options["metric"], "chart": options["kind"]}
    )
    refresh = refresh_seconds(request)
    plotly_locale_path, plotly_locale_name = plotly_locale(get_language()) or (None, None)
    data_url = (
        reverse("metrics:dashboard-data")
        + "?"
        + urlencode({**params, "period": options["period"], "metric": options["metric"], "chart": options["kind"]})
    )
    csv_links = {
        name: reverse(f"metrics-api:{name}-csv") + "?" + csv_query
        for name in ("kpis", "stages", "tokens", "live", "request-structure", "timeseries")
    }
    csv_links["request_structure"] = csv_links["request-structure"]
    csv_links["history"] = (
        reverse("metrics-api:history-csv")
        + "?"
        + urlencode({**params, "period": options["period"], "metric": options["metric"]})
    )
    context = {
        "title": _("Statistics dashboard"),
        "payload": payload,
        "query": query,
        "granularity_label": Granularity(query.granularity).label.lower(),
        "form_values": {
            **{k: request.GET.get(k, "") for k in ("start", "end", "model_version", "stage_template", "granularity")},
            "range": query.range,
            "project": str(query.project_id or ""),
            "pipeline": str(query.pipeline_id or ""),
            "gateway_key": str(query.gateway_key_id or ""),
        },
        "errors": errors,
        "options": options,
        "range_choices": RANGE_CHOICES,
        "granularity_choices": GRANULARITY_CHOICES,
        "period_choices": [("day", _("Day")), ("week", _("Week")), ("month", _("Month"))],
        "metric_choices": [(k, str(v)) for k, v in HISTORY_METRIC_LABELS.items()],
        "chart_choices": [("line", _("Line")), ("bar", _("Bar"))],
        "choices": _dimension_choices(),
        "refresh_seconds": refresh,
        "data_url": data_url,
        "csv_links": csv_links,
        "page_query": page_query,
        "plot_configs": {
            name: charts.plot_config(f"dataflare-{name}", locale=plotly_locale_name) for name in payload["figures"]
        },
        "plotly_bundle": STATIC_PATH,
        "plotly_locale_path": plotly_locale_path,
        "filterset": MetricsFilterSet,
    }
    return render(request, "metrics/dashboard.html", context)


@role_required()
def dashboard_data(request):
    """The dashboard's figures, KPI cards and stage table as JSON, for the refresh without reload."""
    try:
        query = metrics_query(request.GET, default_range=default_range())
    except ValidationError as exc:
        return JsonResponse({"error": {"status": 400, "fields": exc.message_dict}}, status=400)
    errors, options = _page_params(request)
    if errors:
        return JsonResponse(
            {"error": {"status": 400, "fields": {k: [str(m) for m in v] for k, v in errors.items()}}}, status=400
        )
    payload = dashboard_payload(query, period=options["period"], kind=options["kind"], metric=options["metric"])
    return JsonResponse(payload)
