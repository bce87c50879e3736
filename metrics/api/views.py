"""Metrics API: read-only endpoints over the rollups, each also as a streamed CSV with the same filters."""

from __future__ import annotations

import csv
import itertools

from django.http import HttpResponse, StreamingHttpResponse
from django.utils.translation import gettext_lazy as _
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import renderers
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response
from rest_framework.reverse import reverse
from rest_framework.views import APIView

from .. import selectors
from ..filtersets import metrics_query
from ..services import csv_export_audit


class CSVPassthroughRenderer(renderers.BaseRenderer):
    """Lets `?format=csv` through content negotiation; the view streams the CSV itself."""

    media_type = "text/csv"
    format = "csv"
    charset = "utf-8"

    def render(self, data, accepted_media_type=None, renderer_context=None):
        return data if isinstance(data, bytes) else str(data).encode()


class _Echo:
    def write(self, value):
        return value


CSV_BLOCK_CHARS = 64 * 1024


def csv_response(filename: str, header: list[str], rows) -> HttpResponse | StreamingHttpResponse:
    """A CSV download made in blocks of about 64 KiB, never built whole in memory.

    An export that fits one block is sent whole with its length, as the JSON answer is; a bigger one streams
    its blocks as they are made. A piece per row made the server write (and the client decode) one chunk of
    the response per row: most of what a cached export cost beyond the JSON answer.
    """
    writer = csv.writer(_Echo())

    def blocks():
        # A BOM first, so spreadsheet programs read UTF-8 (Chinese labels) correctly.
        block = ["\ufeff", writer.writerow(header)]
        size = 0
        for row in rows:
            line = writer.writerow(["" if row.get(col) is None else row.get(col) for col in header])
            block.append(line)
            size += len(line)
            if size >= CSV_BLOCK_CHARS:
                yield "".join(block)
                block, size = [], 0
        if block:
            yield "".join(block)

    made = blocks()
    first, second = next(made), next(made, None)
    content_type = "text/csv; charset=utf-8"
    if second is None:
        response = HttpResponse(first, content_type=content_type)
    else:
        response = StreamingHttpResponse(itertools.chain((first, second), made), content_type=content_type)
    response["Content-Disposition"] = f'attachment; filename="{filename}.csv"'
    return response


# Documented loosely (an object per endpoint) so the schema lists every metrics endpoint and its
# filters; the result shapes are described in the endpoint docstrings.
METRIC_FILTERS = [
    OpenApiParameter("range", OpenApiTypes.STR, enum=["today", "7d", "30d", "custom"]),
    OpenApiParameter("start", OpenApiTypes.DATETIME),
    OpenApiParameter("end", OpenApiTypes.DATETIME),
    OpenApiParameter("granularity", OpenApiTypes.STR),
    OpenApiParameter("project", OpenApiTypes.INT),
    OpenApiParameter("pipeline", OpenApiTypes.INT),
    OpenApiParameter("model_version", OpenApiTypes.STR),
    OpenApiParameter("stage_template", OpenApiTypes.STR),
    OpenApiParameter("period", OpenApiTypes.STR, description="history only: day, week or month"),
    OpenApiParameter("periods", OpenApiTypes.INT, description="history only"),
    OpenApiParameter("metric", OpenApiTypes.STR, description="history only"),
]
METRIC_RESPONSES = {200: OpenApiTypes.OBJECT, (200, "text/csv"): OpenApiTypes.STR}


def _audit_csv(request, dataset: str, rows) -> None:
    filters = {k: v for k, v in request.query_params.items() if k != "format"}
    csv_export_audit(actor=request.user, dataset=dataset, filters=filters, rows=len(rows))


class MetricsView(APIView):
    """Base: parse filters, run one selector, answer JSON with freshness, or CSV rows."""

    renderer_classes = [renderers.JSONRenderer, renderers.BrowsableAPIRenderer, CSVPassthroughRenderer]
    dataset = ""
    csv_always = False

    def query(self, request):
        # A Django ValidationError naming the field becomes the API's 400 (core exception handler).
        return metrics_query(request.query_params)

    def results(self, params, query):
        """The dataset for `query`; `params` is the query string (history reads its own options)."""
        raise NotImplementedError

    def options(self, params) -> tuple:
        """Validated dataset-specific parameters that change the answer (part of the cache key)."""
        return ()

    def cached_results(self, params, query, fresh=None):
        """(freshness, results): memoised until the rollups change, shared by JSON, CSV and prewarm."""
        fresh = fresh or selectors.freshness(now=query.now)
        key = (sorted(query.params().items()), query.granularity, self.options(params))
        return fresh, selectors.cached(self.dataset, key, fresh, lambda: self.results(params, query))

    def csv_rows(self, results) -> list[dict]:
        return results

    @extend_schema(parameters=METRIC_FILTERS, responses=METRIC_RESPONSES)
    def get(self, request, *args, **kwargs):
        query = self.query(request)
        fresh, results = self.cached_results(request.query_params, query)
        if self.csv_always or request.query_params.get("format") == "csv":
            return self.csv_download(request, results)
        return Response({**fresh.as_dict(), "window": query.describe(), "results": results})

    def csv_download(self, request, results):
        """The dataset's CSV for `results`, its download audited."""
        rows = self.csv_rows(results)
        header = list(rows[0]) if rows else self.empty_header()
        _audit_csv(request, self.dataset, rows)
        return csv_response(self.dataset, header, rows)

    def empty_header(self) -> list[str]:
        return []


class KPIView(MetricsView):
    """Headline numbers of the window, each with the previous same-length window and the delta."""

    dataset = "kpis"

    def results(self, params, query):
        return selectors.kpis(query)

    def csv_rows(self, results):
        return [{"kpi": key, **value} for key, value in results.items()]


class TimeseriesView(MetricsView):
    """One row per rollup bucket of the window."""

    dataset = "timeseries"

    def results(self, params, query):
        return selectors.timeseries(query)

    def empty_header(self):
        return ["bucket", "records_processed", "records_out", "records_failed", "throughput_per_s", "requests"]


class LiveView(MetricsView):
    """Records and requests per second over the last hour, per minute."""

    dataset = "live"

    def results(self, params, query):
        return selectors.live_throughput(query)


class StagesView(MetricsView):
    """One row per stage template."""

    dataset = "stages"

    def results(self, params, query):
        return selectors.stages_table(query)

    def empty_header(self):
        return ["stage_template", "batches", "records_in", "records_out", "records_failed", "success_rate"]


class TokensView(MetricsView):
    """Token usage per model version."""

    dataset = "tokens"

    def results(self, params, query):
        return selectors.token_usage(query)

    def empty_header(self):
        return ["model_version", "requests", "prompt_tokens", "completion_tokens", "tokens", "retry_tokens"]


class RequestStructureView(MetricsView):
    """Model requests by outcome status."""

    dataset = "request-structure"

    def results(self, params, query):
        return selectors.request_structure(query)

    def empty_header(self):
        return ["status_code", "requests", "records", "share"]


def history_params(params) -> dict:
    """Validate the history-only parameters (period, periods, metric)."""
    errors = {}
    period = params.get("period") or "day"
    if period not in selectors.PERIODS:
        errors["period"] = [_("Choose one of: %(choices)s.") % {"choices": ", ".join(selectors.PERIODS)}]
    metric = params.get("metric") or "records_processed"
    if metric not in selectors.HISTORY_METRICS:
        errors["metric"] = [_("Choose one of: %(choices)s.") % {"choices": ", ".join(selectors.HISTORY_METRICS)}]
    periods = None
    if params.get("periods"):
        try:
            periods = int(params["periods"])
        except ValueError:
            errors["periods"] = [_("Enter a whole number.")]
        else:
            top = selectors.MAX_PERIODS.get(period, 36)
            if not 1 <= periods <= top:
                errors["periods"] = [_("Enter a number from 1 to %(max)d.") % {"max": top}]
    if errors:
        raise ValidationError(errors)
    return {"period": period, "periods": periods, "metric": metric}


class HistoryView(MetricsView):
    """Day, week or month totals with 环比 (period over period) and 同比 (year over year) deltas."""

    dataset = "history"

    def options(self, params) -> tuple:
        return tuple(sorted(history_params(params).items(), key=lambda kv: kv[0]))

    def results(self, params, query):
        return selectors.history(query, **history_params(params))


class CSVExportView(MetricsView):
    """`<dataset>/export.csv`: the dataset's CSV (same as `?format=csv`)."""

    csv_always = True

    @extend_schema(parameters=METRIC_FILTERS, responses={(200, "text/csv"): OpenApiTypes.STR})
    def get(self, request, *args, dataset: str, **kwargs):
        view = DATASETS[dataset]()
        view.request = request
        query = self.query(request)
        # The same memoised answer as the JSON endpoint: an export costs what the page does.
        _fresh, results = view.cached_results(request.query_params, query)
        return view.csv_download(request, results)


DATASETS = {
    "kpis": KPIView,
    "timeseries": TimeseriesView,
    "live": LiveView,
    "stages": StagesView,
    "tokens": TokensView,
    "request-structure": RequestStructureView,
    "history": HistoryView,
}


class MetricsRootView(APIView):
    """The metric endpoints, with their filters."""

    @extend_schema(responses={200: OpenApiTypes.OBJECT})
    def get(self, request, *args, **kwargs):
        endpoints = {name: reverse(f"metrics-api:{name}", request=request) for name in DATASETS}
        return Response(
            {
                "endpoints": endpoints,
                "filters": [
                    "range (today|7d|30d|custom)",
                    "start",
                    "end",
                    "granularity",
                    "project",
                    "pipeline",
                    "model_version",
                    "stage_template",
                ],
                "history_parameters": ["period (day|week|month)", "periods", "metric"],
                "csv": _("Add ?format=csv, or use <endpoint>export.csv, for a streamed CSV with the same filters."),
            }
        )
