"""Every rolled-up column, at every granularity, against sums computed here from the raw events.

The expected rows are computed in plain Python from the events this test wrote (a hand-written rule
per column: count, sum or max), not with the rollup code's own field lists, so a column aggregated
the wrong way (latency max rolled up with MIN, a sum taken from the wrong source, a failure filter
dropped) fails. A new metric column without a rule here fails too: decide how it rolls up.
"""

import datetime as dt
import random
from collections import defaultdict

import pytest

from metrics.choices import Granularity
from metrics.models import LATENCY_FIELDS, BatchEvent, MetricsStatusSummary, MetricsSummary, TokenUsage
from metrics.services import metrics_rollup, metrics_rollup_rebuild

pytestmark = pytest.mark.django_db

T0 = dt.datetime(2026, 3, 10, 22, 0, tzinfo=dt.UTC)  # two hours before midnight: buckets cross a day

# column -> (source, how, raw field, only failures)
SUMMARY_RULES = {
    "batches": ("batch", "count", None),
    "batches_failed": ("batch", "count_failed", None),
    "records_in": ("batch", "sum", "records_in"),
    "records_out": ("batch", "sum", "records_out"),
    "records_filtered": ("batch", "sum", "records_filtered"),
    "records_failed": ("batch", "sum", "records_failed"),
    "duration_ms_sum": ("batch", "sum", "duration_ms"),
    "requests": ("token", "sum", "requests"),
    "requests_failed": ("token", "sum_failed", "requests"),
    "model_records": ("token", "sum", "records"),
    "prompt_tokens": ("token", "sum", "prompt_tokens"),
    "completion_tokens": ("token", "sum", "completion_tokens"),
    "retry_tokens": ("token", "sum", "retry_tokens"),
    "latency_ms_sum": ("token", "sum", "latency_ms_sum"),
    "latency_ms_max": ("token", "max", "latency_ms_max"),
    **{name: ("token", "sum", name) for name in LATENCY_FIELDS},
}
STATUS_RULES = {
    "requests": ("token", "sum", "requests"),
    "records": ("token", "sum", "records"),
    "prompt_tokens": ("token", "sum", "prompt_tokens"),
    "completion_tokens": ("token", "sum", "completion_tokens"),
    "retry_tokens": ("token", "sum", "retry_tokens"),
    "latency_ms_sum": ("token", "sum", "latency_ms_sum"),
    "latency_ms_max": ("token", "max", "latency_ms_max"),
    **{name: ("token", "sum", name) for name in LATENCY_FIELDS},
}
KEYS = ("granularity", "bucket", "project_id", "pipeline_id", "stage_template", "model_version", "gateway_key_id")


def _floor(ts: dt.datetime, gran: str) -> dt.datetime:
    if gran == Granularity.MINUTE:
        return ts.replace(second=0, microsecond=0)
    if gran == Granularity.HOUR:
        return ts.replace(minute=0, second=0, microsecond=0)
    day = ts.replace(hour=0, minute=0, second=0, microsecond=0)
    if gran == Granularity.WEEK:  # ISO weeks start on Monday
        return day - dt.timedelta(days=day.weekday())
    if gran == Granularity.MONTH:
        return day.replace(day=1)
    return day


def _events(seed: int, base: dt.datetime):
    """Raw events over 3 hours across midnight: several per minute, minute and hour, per key."""
    rng = random.Random(seed)
    batches, tokens = [], []
    offsets = [rng.randrange(0, 3 * 3600) for _ in range(60)] + [5, 10, 15, 70, 3650, 3700]
    for i, offset in enumerate(offsets):
        ts = base + dt.timedelta(seconds=offset)
        records_in = rng.randrange(1, 200)
        failed = rng.randrange(0, records_in // 4 + 1)
        filtered = rng.randrange(0, records_in - failed + 1)
        batches.append(
            BatchEvent(
                ts=ts,
                project_id=1 + i % 2,
                pipeline_id=None if i % 7 == 0 else 10,
                stage_template=("filter", "clean")[i % 3 == 0],
                model_version="",
                records_in=records_in,
                records_out=records_in - failed - filtered,
                records_filtered=filtered,
                records_failed=failed,
                duration_ms=rng.randrange(1, 5000) / 4,
                succeeded=rng.random() > 0.25,
            )
        )
        requests = rng.randrange(1, 30)
        hist = dict.fromkeys(LATENCY_FIELDS, 0)
        for _ in range(requests):
            hist[rng.choice(LATENCY_FIELDS)] += 1
        tokens.append(
            TokenUsage(
                ts=ts + dt.timedelta(seconds=rng.randrange(0, 30)),
                project_id=1 + i % 2,
                pipeline_id=None if i % 7 == 0 else 10,
                stage_template="model_inference",
                model_name="m",
                model_version=("v1", "v2")[i % 2 == 0],
                status_code=rng.choice(["OK", "OK", "OK", "UNAVAILABLE", "INVALID_ARGUMENT"]),
                requests=requests,
                records=rng.randrange(0, 50),
                prompt_tokens=rng.randrange(0, 5000),
                completion_tokens=rng.randrange(0, 900),
                retry_tokens=rng.randrange(0, 300),
                # Some calls came through the gateway with a key: a dimension of their own in every rollup.
                gateway_key_id=(None, 42, 43)[i % 3],
                latency_ms_sum=rng.randrange(1, 100_000) / 8,
                latency_ms_max=rng.randrange(1, 20_000) / 2,  # exact in binary: sums compare exactly
                **hist,
            )
        )
    BatchEvent.objects.bulk_create(batches)
    TokenUsage.objects.bulk_create(tokens)
    return batches, tokens


def _aggregate(rules: dict, grouped: dict) -> dict:
    out = {}
    for key, sources in grouped.items():
        row = {}
        for column, (source, how, field) in rules.items():
            events = sources.get(source, [])
            if how == "count":
                row[column] = len(events)
            elif how == "count_failed":
                row[column] = sum(1 for e in events if not e.succeeded)
            elif how == "sum":
                row[column] = sum(getattr(e, field) for e in events)
            elif how == "sum_failed":
                row[column] = sum(getattr(e, field) for e in events if e.status_code != "OK")
            elif how == "max":
                row[column] = max((getattr(e, field) for e in events), default=0)
        out[key] = row
    return out


def _expected(batches, tokens):
    summary, status = defaultdict(dict), defaultdict(dict)
    for gran in Granularity.values:
        for source, events in (("batch", batches), ("token", tokens)):
            for e in events:
                gateway_key = getattr(e, "gateway_key_id", None) or 0
                key = (
                    gran,
                    _floor(e.ts, gran),
                    e.project_id,
                    e.pipeline_id or 0,
                    e.stage_template,
                    e.model_version,
                    gateway_key,
                )
                summary[key].setdefault(source, []).append(e)
                if source == "token":
                    status[key + (e.status_code,)].setdefault(source, []).append(e)
    return _aggregate(SUMMARY_RULES, summary), _aggregate(STATUS_RULES, status)


def _actual(model, rules, extra_keys=()):
    keys = KEYS + extra_keys
    metric_columns = {f.attname for f in model._meta.concrete_fields} - set(keys) - {"id", "updated_at"}
    assert metric_columns == set(rules), f"{model.__name__} columns without a rollup rule here: " + str(
        sorted(metric_columns ^ set(rules))
    )
    rows = {}
    for row in model.objects.values(*keys, *sorted(rules)):
        rows[tuple(row[k] for k in keys)] = {c: row[c] for c in rules}
    return rows


def _compare(expected: dict, actual: dict, what: str) -> list[str]:
    problems = []
    for key in sorted(set(expected) | set(actual), key=str):
        want, got = expected.get(key), actual.get(key)
        if want is None or got is None:
            problems.append(f"{what} {key}: expected {want}, rolled up {got}")
            continue
        for column in want:
            if want[column] != pytest.approx(got[column]):
                problems.append(f"{what} {key[:2]} {key[2:]}: {column} = {got[column]}, expected {want[column]}")
    return problems


@pytest.mark.parametrize("path", ["minute-hour-day", "history-hour-day", "history-day"])
def test_every_rolled_up_column_matches_the_raw_events(settings, path):
    settings.TIME_ZONE = "UTC"
    if path == "minute-hour-day":
        # A live pass: minutes from raw, hours from minutes, days from hours, weeks and months from days.
        batches, tokens = _events(7, T0)
        metrics_rollup(now=T0 + dt.timedelta(hours=3, minutes=5))
        grans = set(Granularity.values)
    elif path == "history-hour-day":
        # History beyond the minute horizon, within the hour horizon: hours from raw, days from hours.
        batches, tokens = _events(11, T0)
        metrics_rollup_rebuild(
            start=T0 - dt.timedelta(days=1), end=T0 + dt.timedelta(days=1), now=T0 + dt.timedelta(days=20)
        )
        grans = {Granularity.HOUR, Granularity.DAY, Granularity.WEEK, Granularity.MONTH}
    else:
        # History beyond the hour horizon: days straight from raw (no hours to compact later).
        batches, tokens = _events(13, T0)
        metrics_rollup_rebuild(
            start=T0 - dt.timedelta(days=1), end=T0 + dt.timedelta(days=1), now=T0 + dt.timedelta(days=60)
        )
        grans = {Granularity.DAY, Granularity.WEEK, Granularity.MONTH}
    summary, status = _expected(batches, tokens)
    summary = {k: v for k, v in summary.items() if k[0] in grans}
    status = {k: v for k, v in status.items() if k[0] in grans}
    assert {k[0] for k in summary} == grans
    # The data exercises what it must: several finer rows per coarser one, distinct maxima among them.
    hours = [k for k in summary if k[0] == Granularity.HOUR]
    days = [k for k in summary if k[0] == Granularity.DAY]
    assert len(days) >= 4 and (len(hours) >= 8 or Granularity.HOUR not in grans)
    problems = _compare(summary, _actual(MetricsSummary, SUMMARY_RULES), "summary")
    problems += _compare(status, _actual(MetricsStatusSummary, STATUS_RULES, ("status_code",)), "status")
    assert not problems, f"{len(problems)} wrong rollup values:\n" + "\n".join(problems[:40])
