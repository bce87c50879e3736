"""Pre-warm the metrics cache after a rollup pass: the first operator after a pass does not pay.

Cached answers are keyed by the rollup watermark's version, so every pass makes them all cold at
once. Right after the pass the worker computes the views operators open without choosing
anything (each range's dashboard in each language, and each API dataset's default answer)
through the same functions and keys as the requests, so those hit the cache.
"""

from __future__ import annotations

from django.conf import settings
from django.utils import translation

from . import selectors
from .filtersets import RANGE_7D, RANGE_30D, RANGE_TODAY, metrics_query

PREWARM_RANGES = (RANGE_TODAY, RANGE_7D, RANGE_30D)


def metrics_prewarm() -> int:
    """Compute and cache the default views for the current watermark; returns how many."""
    from .api.views import DATASETS
    from .views import dashboard_payload

    warmed = 0
    for rng in PREWARM_RANGES:
        query = metrics_query({"range": rng})
        fresh = selectors.freshness(now=query.now)
        if not fresh.version:
            return warmed  # no pass ran yet: nothing is cached before the first one
        for view_class in DATASETS.values():
            view_class().cached_results({}, query, fresh)
            warmed += 1
        for code, _name in settings.LANGUAGES:
            with translation.override(code):
                dashboard_payload(query, period="day", kind="line", metric="records_processed")
                warmed += 1
    return warmed
