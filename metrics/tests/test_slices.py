"""The rollup slices always equal the sums of the summary rows they stand for.

`metrics_slice` holds, per bucket and project, the totals and the totals per one dimension of
`metrics_summary`; `metrics_status_slice` the per-status totals of `metrics_status_summary`. The
expected rows are summed here in plain Python from the summary rows (a rule per column: sum, or max
for the latency maximum), after live passes, a late event, a rebuild, compaction and retention, and
after the first pass of a portal upgraded with summary rows but no slices. Then every selector
answers the same from the slices as from the full summary table.
"""

import datetime as dt
from collections import defaultdict

import pytest

from metrics import selectors, services
from metrics.choices import Granularity
from metrics.filtersets import MetricsQuery, metrics_query
from metrics.models import LATENCY_FIELDS, MetricsSlice, MetricsStatusSlice, MetricsStatusSummary, MetricsSummary
from metrics.services import metrics_prune, metrics_rollup, metrics_rollup_rebuild

from .test_rollup_columns import T0, _events

pytestmark = pytest.mark.django_db

SUMMED = (
    "batches",
    "batches_failed",
    "records_in",
    "records_out",
    "records_filtered",
    "records_failed",
    "duration_ms_sum",
    "requests",
    "requests_failed",
    "model_records",
    "prompt_tokens",
    "completion_tokens",
    "retry_tokens",
    "latency_ms_sum",
    *LATENCY_FIELDS,
)
STATUS_SUMMED = ("requests", "records", "prompt_tokens", "completion_tokens", "retry_tokens", "latency_ms_sum")
STATUS_SUMMED += LATENCY_FIELDS
# slice name -> the dimension columns its rows keep (written out here, not taken from the models).
SLICES = {
    "total": (),
    "pipeline": ("pipeline_id",),
    "stage": ("stage_template",),
    "model": ("model_version",),
    "key": ("gateway_key_id", "model_version"),
}
NEUTRAL = {"pipeline_id": 0, "stage_template": "", "model_version": "", "gateway_key_id": 0}
SLICE_KEYS = ("granularity", "dimension", "bucket", "project_id", *NEUTRAL)


def _metric_columns(model, keys) -> set[str]:
    return {f.attname for f in model._meta.concrete_fields} - set(keys) - {"id", "updated_at"}


def _add(into: dict, row: dict, summed) -> None:
    for column in summed:
        into[column] = into.get(column, 0) + row[column]
    into["latency_ms_max"] = max(into.get("latency_ms_max", 0), row["latency_ms_max"])


def _expected_slices() -> dict:
    assert _metric_columns(MetricsSlice, SLICE_KEYS) == {*SUMMED, "latency_ms_max"}, "a slice column without a rule"
    out = defaultdict(dict)
    for row in MetricsSummary.objects.values():
        for name, kept in SLICES.items():
            dims = tuple(row[c] if c in kept else NEUTRAL[c] for c in NEUTRAL)
            _add(out[(row["granularity"], name, row["bucket"], row["project_id"], *dims)], row, SUMMED)
    return dict(out)


def _expected_status_slices() -> dict:
    keys = ("granularity", "bucket", "project_id", "status_code")
    assert _metric_columns(MetricsStatusSlice, keys) == {*STATUS_SUMMED, "latency_ms_max"}
    out = defaultdict(dict)
    for row in MetricsStatusSummary.objects.values():
        _add(out[tuple(row[k] for k in keys)], row, STATUS_SUMMED)
    return dict(out)


def _actual(model, keys) -> dict:
    return {tuple(row[k] for k in keys): row for row in model.objects.values()}


def _check_slices(what: str) -> set[str]:
    """Compare both slice tables with the sums of their summary rows; returns the granularities held."""
    problems = []
    for expected, actual, name in (
        (_expected_slices(), _actual(MetricsSlice, SLICE_KEYS), "slice"),
        (
            _expected_status_slices(),
            _actual(MetricsStatusSlice, ("granularity", "bucket", "project_id", "status_code")),
            "status slice",
        ),
    ):
        for key in sorted(set(expected) | set(actual), key=str):
            want, got = expected.get(key), actual.get(key)
            if want is None or got is None:
                problems.append(f"{name} {key}: expected {want and 'a row'}, found {got and 'a row'}")
                continue
            for column, value in want.items():
                if value != pytest.approx(got[column]):
                    problems.append(f"{name} {key}: {column} = {got[column]}, expected {value}")
    assert not problems, f"{what}: {len(problems)} slice values disagree with the summary:\n" + "\n".join(problems[:30])
    return set(MetricsSlice.objects.values_list("granularity", flat=True))


def test_slices_equal_the_summary_sums_through_passes_rebuild_compaction_and_retention(settings, monkeypatch):
    settings.TIME_ZONE = "UTC"
    # Several transactions per prune step, so a chunk boundary is crossed.
    monkeypatch.setattr(services, "PRUNE_CHUNK", 50)
    _events(7, T0)
    now = T0 + dt.timedelta(hours=3, minutes=5)
    metrics_rollup(now=now)
    assert _check_slices("first pass") == set(Granularity.values)
    assert MetricsSlice.objects.filter(dimension="key", gateway_key_id=42).exists()

    # A later pass with new events in its trailing window and one very late event (a new id, an old minute).
    _events(8, now - dt.timedelta(minutes=1))
    _events(9, T0 - dt.timedelta(hours=20))
    metrics_rollup(now=now + dt.timedelta(minutes=10))
    _check_slices("second pass with late events")

    # A rebuild of the range, as if 20 days later: hours from raw again, the days and months re-rolled.
    metrics_rollup_rebuild(
        start=T0 - dt.timedelta(days=2), end=T0 + dt.timedelta(days=2), now=T0 + dt.timedelta(days=20)
    )
    _check_slices("rebuild")

    # 60 days later: raw events past retention go, minute rows past theirs, hours compacted into days.
    later = T0 + dt.timedelta(days=60)
    metrics_rollup(now=later)
    before = MetricsSlice.objects.filter(granularity__in=["minute", "hour"]).count()
    result = metrics_prune(now=later)
    assert before and result.minute_rollups and result.hour_rollups
    held = _check_slices("compaction and retention")
    assert held == {Granularity.DAY, Granularity.WEEK, Granularity.MONTH}


def test_the_first_pass_after_an_upgrade_fills_the_slices_of_existing_summary_rows(settings):
    settings.TIME_ZONE = "UTC"
    _events(7, T0)
    now = T0 + dt.timedelta(hours=3, minutes=5)
    metrics_rollup(now=now)
    expected = _actual(MetricsSlice, SLICE_KEYS)
    MetricsSlice.objects.all().delete()
    MetricsStatusSlice.objects.all().delete()
    metrics_rollup(now=now + dt.timedelta(minutes=1))
    _check_slices("backfill")
    assert set(_actual(MetricsSlice, SLICE_KEYS)) == set(expected)


def test_a_portal_upgraded_with_history_answers_from_the_summary_until_its_slices_are_filled(settings, monkeypatch):
    """Between `migrate` (slice tables empty) and the first pass that fills them, the answers are the
    summary's, not zeros."""
    monkeypatch.setattr(selectors, "_slices_seen", False)  # a process started after the upgrade
    settings.TIME_ZONE = "UTC"
    _events(7, T0)
    now = T0 + dt.timedelta(hours=3, minutes=5)
    metrics_rollup(now=now)
    query = metrics_query({"range": "today"}, now=now)
    filled = _answers(query)
    assert filled["kpis"]["requests"]["value"], "the window must hold data"
    MetricsSlice.objects.all().delete()
    MetricsStatusSlice.objects.all().delete()
    monkeypatch.setattr(selectors, "_slices_seen", False)
    assert _answers(query) == filled


def _answers(query):
    return {
        "kpis": selectors.kpis(query),
        "timeseries": selectors.timeseries(query),
        "live": selectors.live_throughput(query),
        "stages": selectors.stages_table(query),
        "tokens": selectors.token_usage(query),
        "gateway": selectors.gateway_usage(query),
        "requests": selectors.request_structure(query),
        "tables": selectors.tables(query),
        "history": [selectors.history(query, period=p) for p in ("day", "week", "month")],
    }


@pytest.mark.parametrize(
    "filters",
    [
        {},
        {"project": "1"},
        {"stage_template": "clean"},
        {"model_version": "v2"},
        {"gateway_key": "42"},
        {"pipeline": "10"},
    ],
)
@pytest.mark.parametrize("window", [{"range": "today"}, {"range": "7d"}, {"range": "custom", "start": "2026-03-09"}])
def test_every_selector_answers_the_same_from_the_slices_as_from_the_summary(settings, monkeypatch, window, filters):
    settings.TIME_ZONE = "UTC"
    _events(7, T0)
    now = T0 + dt.timedelta(hours=3, minutes=5)
    metrics_rollup(now=now)
    query = metrics_query({**window, **filters}, now=now)
    from_slices = _answers(query)
    # The dashboard's one-statement read of the three tables answers what the three selectors do.
    assert from_slices["tables"] == {k: from_slices[k] for k in ("stages", "tokens", "gateway")}
    if not filters:  # the one-statement path (filtered queries take the selectors' own)
        assert all(from_slices["tables"].values())
    monkeypatch.setattr(MetricsQuery, "slice_dimension", lambda self, group=(): None)
    assert _answers(query) == from_slices
    kpis = from_slices["kpis"]
    assert kpis["requests"]["value"] or kpis["records_processed"]["value"], "the window must hold data"
