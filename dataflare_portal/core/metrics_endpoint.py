"""Prometheus `/metrics`: HTTP requests, runs and batches by state, model calls by outcome, queue depth, rollup lag.

Request counters live in this process (label them per instance in Prometheus); the rest is read
from the database at scrape time with small indexed counts, so every web process answers the
same. The core imports no app: models are looked up by label, and a metric whose app is absent
is simply left out. Enabled by settings.METRICS_ENABLED; METRICS_TOKEN requires a bearer token.
"""

from __future__ import annotations

import datetime
import hmac
import logging
import time

from django.apps import apps
from django.conf import settings
from django.db.models import Count, Min, Sum
from django.http import Http404, HttpResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily

from . import registry as portal_registry

logger = logging.getLogger(__name__)

REGISTRY = CollectorRegistry(auto_describe=False)
HTTP_REQUESTS = Counter(
    "dataflare_http_requests",
    "HTTP requests answered by this process, by method and status.",
    ["method", "status", "area"],
    registry=REGISTRY,
)
# Non-terminal batch states are few rows whatever the table size (the status index answers).
ACTIVE_BATCH_STATES = ("pending", "queued", "running", "waiting")


def request_observed(request, response) -> None:
    path = request.path
    area = "api" if path.startswith("/api/") else "static" if path.startswith("/static/") else "page"
    if path == "/metrics":
        area = "metrics"
    HTTP_REQUESTS.labels(request.method, str(response.status_code), area).inc()


def _model(label: str):
    try:
        return apps.get_model(label)
    except LookupError:
        return None


def _counts_by_status(model, statuses=None) -> dict[str, int]:
    qs = model._default_manager.all()
    if statuses is not None:
        qs = qs.filter(status__in=statuses)
    return dict(qs.order_by().values_list("status").annotate(n=Count("pk")).values_list("status", "n"))


def _queue_depth() -> dict[str, int] | None:
    url = getattr(settings, "CELERY_BROKER_URL", "") or ""
    if not url.startswith(("redis://", "rediss://")):
        return None
    import redis

    from dataflare_portal.celery import app

    names = {getattr(settings, "CELERY_TASK_DEFAULT_QUEUE", "celery")}
    for queue in app.conf.task_queues or ():
        names.add(queue.name)
    for route in (getattr(settings, "CELERY_TASK_ROUTES", None) or {}).values():
        if isinstance(route, dict) and route.get("queue"):
            names.add(route["queue"])
    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        return {name: int(client.llen(name)) for name in sorted(names)}
    finally:
        client.close()


class PortalCollector:
    """Reads the database (and the broker) at scrape time."""

    def collect(self):
        started = time.perf_counter()
        yield from self._safe(self._runs)
        yield from self._safe(self._batches)
        yield from self._safe(self._model_calls)
        yield from self._safe(self._rollup_lag)
        yield from self._safe(self._queues)
        for collector in portal_registry.prometheus_collectors:
            yield from self._safe(collector)
        scrape = GaugeMetricFamily("dataflare_scrape_duration_seconds", "Time spent reading the portal metrics.")
        scrape.add_metric([], time.perf_counter() - started)
        yield scrape

    @staticmethod
    def _safe(producer):
        try:
            return list(producer())
        except Exception:  # one failing source must not blank the whole scrape
            logger.exception("metrics source %s failed", getattr(producer, "__name__", producer))
            return []

    def _runs(self):
        model = _model("tasks.TaskRun")
        if model is None:
            return
        family = GaugeMetricFamily("dataflare_runs", "Task runs by state.", labels=["state"])
        for state, n in sorted(_counts_by_status(model).items()):
            family.add_metric([state], n)
        yield family

    def _batches(self):
        model = _model("tasks.Batch")
        if model is None:
            return
        family = GaugeMetricFamily("dataflare_batches", "Batches in a non-terminal state.", labels=["state"])
        counts = _counts_by_status(model, ACTIVE_BATCH_STATES)
        for state in ACTIVE_BATCH_STATES:
            family.add_metric([state], counts.get(state, 0))
        yield family

    def _model_calls(self):
        model = _model("metrics.MetricsStatusSummary")
        if model is None:
            return
        since = timezone.now() - datetime.timedelta(hours=1)
        rows = (
            model._default_manager.filter(granularity="minute", bucket__gte=since)
            .order_by()
            .values("status_code")
            .annotate(n=Sum("requests"))
        )
        family = GaugeMetricFamily(
            "dataflare_model_calls_last_hour",
            "Model requests in the last hour by outcome (rollups).",
            labels=["outcome"],
        )
        for row in sorted(rows, key=lambda r: r["status_code"]):
            family.add_metric([row["status_code"]], row["n"] or 0)
        yield family

    def _rollup_lag(self):
        model = _model("metrics.RollupWatermark")
        if model is None:
            return
        # A watermark is created at datetime.min before its first pass: that is "never rolled up", not a
        # lag of 2,026 years. Until a granularity has rolled once it is left out; with none, no sample.
        never = datetime.datetime.min.replace(tzinfo=datetime.UTC)
        oldest = model._default_manager.filter(rolled_until__gt=never).aggregate(m=Min("rolled_until"))["m"]
        if oldest is None:
            return
        family = GaugeMetricFamily("dataflare_rollup_lag_seconds", "Age of the oldest rollup watermark.")
        family.add_metric([], max((timezone.now() - oldest).total_seconds(), 0.0))
        yield family

    def _queues(self):
        depth = _queue_depth()
        if depth is None:
            return
        family = GaugeMetricFamily("dataflare_queue_depth", "Messages waiting in the broker queue.", labels=["queue"])
        for name, n in depth.items():
            family.add_metric([name], n)
        yield family


REGISTRY.register(PortalCollector())


@never_cache
def metrics_view(request):
    """The Prometheus text exposition (404 when disabled, 401 without the bearer token when one is set)."""
    if not settings.METRICS_ENABLED:
        raise Http404
    token = settings.METRICS_TOKEN
    if token:
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            response = HttpResponse("unauthorized\n", status=401, content_type="text/plain")
            response["WWW-Authenticate"] = 'Bearer realm="metrics"'
            return response
    return HttpResponse(generate_latest(REGISTRY), content_type=CONTENT_TYPE_LATEST)
