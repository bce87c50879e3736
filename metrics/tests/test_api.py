"""Metrics API: numbers against the hand-computed fixture, filters, freshness, CSV and query budgets."""

import csv
import datetime as dt
import io

import pytest
from django.urls import reverse
from django.utils import timezone

from metrics import selectors
from metrics.choices import Granularity
from metrics.models import RollupWatermark

pytestmark = pytest.mark.django_db


def _day(value: dt.datetime) -> str:
    return value.date().isoformat()


def _get(client, name, **params):
    response = client.get(reverse(f"metrics-api:{name}"), params)
    assert response.status_code == 200, response.content[:500]
    return response.json()


def _csv(client, name, **params) -> list[dict]:
    response = client.get(reverse(f"metrics-api:{name}-csv"), params)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    text = response.getvalue().decode("utf-8-sig")
    return list(csv.DictReader(io.StringIO(text)))


def test_it_lists_the_endpoints_at_the_root(client):
    body = client.get("/api/v1/metrics/").json()
    assert set(body["endpoints"]) == {"kpis", "timeseries", "live", "stages", "tokens", "request-structure", "history"}


def test_it_computes_kpis_with_deltas_for_a_filtered_day(client, history_data, django_assert_max_num_queries):
    d1 = history_data["d1"]
    _get(client, "kpis")  # warm up: the built-in operator and the config cache
    # 4 for the rollups, +1 per KPI other apps register (tasks: the active-runs count).
    with django_assert_max_num_queries(4 + len(selectors._extra_kpis)):
        body = _get(client, "kpis", range="custom", start=_day(d1), end=_day(d1), project=1)
    k = body["results"]
    assert body["window"]["granularity"] == Granularity.HOUR
    assert k["records_processed"]["value"] == 300
    assert k["records_processed"]["previous"] == 100  # D-2
    assert k["records_processed"]["delta_pct"] == 200.0
    assert k["success_rate"]["value"] == pytest.approx(2 / 3, abs=1e-6)
    assert k["requests"]["value"] == 19
    assert k["failure_rate"]["value"] == pytest.approx(5 / 19, abs=1e-6)
    assert k["tokens"]["value"] == 1000 + 500 + 400 + 40 + 10 * 0
    # 10 OK at 40 ms and 4 at 40 ms, 5 failed at 1000 ms mean: the 95th percentile is in (500, 1000].
    assert 500 < k["p95_latency_ms"]["value"] <= 1000
    assert k["throughput_per_s"]["value"] == pytest.approx(300 / 86400, abs=1e-4)
    assert body["lagging"] is False and body["data_as_of"]


def test_it_filters_by_model_version_and_stage_template(client, history_data):
    d1 = history_data["d1"]
    window = {"range": "custom", "start": _day(d1), "end": _day(d1)}
    v2 = _get(client, "kpis", model_version="v2", **window)["results"]
    assert (v2["requests"]["value"], v2["tokens"]["value"], v2["records_processed"]["value"]) == (4, 440, 0)
    stage = _get(client, "kpis", stage_template="filter", **window)["results"]
    assert stage["records_processed"]["value"] == 1300 and stage["requests"]["value"] == 0
    both = _get(client, "kpis", **window)["results"]
    assert both["records_processed"]["value"] == 1300


def test_it_serves_stages_tokens_and_request_structure(client, history_data, django_assert_max_num_queries):
    d1 = history_data["d1"]
    window = {"range": "custom", "start": _day(d1), "end": _day(d1), "project": 1}
    _get(client, "kpis")  # warm up: the built-in operator and the config cache
    for name in ("stages", "tokens", "request-structure", "timeseries", "live"):
        with django_assert_max_num_queries(4):
            _get(client, name, **window)
    stages = {r["stage_template"]: r for r in _get(client, "stages", **window)["results"]}
    assert stages["filter"]["records_in"] == 300 and stages["filter"]["batches_failed"] == 1
    assert stages["model_inference"]["requests"] == 19
    tokens = {r["model_version"]: r for r in _get(client, "tokens", **window)["results"]}
    assert tokens["v1"]["prompt_tokens"] == 1000 and tokens["v1"]["requests_failed"] == 5
    assert tokens["v2"]["tokens"] == 440
    pie = _get(client, "request-structure", **window)["results"]
    assert [(r["status_code"], r["requests"]) for r in pie] == [("OK", 14), ("UNAVAILABLE", 5)]
    series = _get(client, "timeseries", **window)["results"]
    assert sum(r["records_processed"] for r in series) == 300
    assert [r["bucket"][11:13] for r in series if r["records_processed"]] == ["10"]


def test_it_computes_history_deltas(client, history_data, django_assert_max_num_queries):
    d1 = history_data["d1"]
    _get(client, "kpis")
    with django_assert_max_num_queries(5):  # user, watermark, first data day, the history window (+ savepoint)
        body = _get(client, "history", range="custom", start=_day(d1), end=_day(d1), project=1, period="day", periods=3)
    rows = {r["period"]: r for r in body["results"]}
    row = rows[_day(d1)]
    assert (row["value"], row["previous"], row["pop_delta"], row["pop_pct"]) == (300, 100, 200, 200.0)
    assert (row["last_year"], row["yoy_delta"], row["yoy_pct"]) == (200, 100, 50.0)
    month = _get(client, "history", range="custom", start=_day(d1), end=_day(d1), project=1, period="month", periods=1)
    m = month["results"][0]
    assert m["period"] == d1.date().replace(day=1).isoformat()
    assert m["last_year"] == 200
    expected_prev = 0 if d1.month == history_data["d2"].month else 100
    assert m["value"] == 300 + (100 if d1.month == history_data["d2"].month else 0)
    assert m["previous"] == expected_prev


def test_history_before_the_first_data_day_is_empty_not_zero(client, today):
    from metrics.services import metrics_rollup_rebuild
    from metrics.tests.factories import BatchEventFactory

    d1, d2 = today - dt.timedelta(days=1), today - dt.timedelta(days=2)
    BatchEventFactory(ts=d2 + dt.timedelta(hours=10))
    BatchEventFactory(ts=d1 + dt.timedelta(hours=10), records_in=0, records_out=0, records_failed=0)
    metrics_rollup_rebuild(start=d2, end=timezone.now(), now=timezone.now())
    body = _get(client, "history", range="custom", start=_day(d1), end=_day(d1), period="day", periods=3)
    rows = {r["period"]: r for r in body["results"]}
    before = rows[_day(d1 - dt.timedelta(days=2))]  # the day before the first data: nothing to show
    assert (before["value"], before["previous"], before["pop_pct"], before["last_year"]) == (None, None, None, None)
    first = rows[_day(d2)]
    assert first["value"] == 100 and first["previous"] is None and first["pop_delta"] is None
    last = rows[_day(d1)]
    assert (last["value"], last["previous"], last["pop_delta"]) == (0, 100, -100)  # a real zero after data began
    assert last["last_year"] is None and last["yoy_pct"] is None


def test_its_csv_matches_the_api_for_a_filtered_view(client, history_data):
    d1 = history_data["d1"]
    params = {"range": "custom", "start": _day(d1), "end": _day(d1), "project": "1"}
    for name, key in (("stages", "stage_template"), ("tokens", "model_version"), ("request-structure", "status_code")):
        api = {str(r[key]): r for r in _get(client, name, **params)["results"]}
        rows = {r[key]: r for r in _csv(client, name, **params)}
        assert set(api) == set(rows)
        for k, api_row in api.items():
            for col, value in api_row.items():
                assert rows[k][col] == ("" if value is None else str(value)), (name, k, col)
    kpi_api = _get(client, "kpis", **params)["results"]
    kpi_csv = {r["kpi"]: r for r in _csv(client, "kpis", **params)}
    assert kpi_csv["records_processed"]["value"] == str(kpi_api["records_processed"]["value"]) == "300"
    via_format = client.get(reverse("metrics-api:history"), {**params, "format": "csv"})
    assert via_format["Content-Type"].startswith("text/csv")


def test_it_says_data_as_of_and_lagging_when_rollups_fall_behind(client, history_data):
    RollupWatermark.objects.update(rolled_until=timezone.now() - dt.timedelta(minutes=10))
    body = _get(client, "kpis", range="7d")
    assert body["lagging"] is True
    assert body["data_as_of"].startswith(_day(timezone.now() - dt.timedelta(minutes=10)))
    RollupWatermark.objects.all().delete()
    assert _get(client, "kpis")["lagging"] is True


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"range": "week"}, "range"),
        ({"range": "custom"}, "start"),
        ({"start": "yesterday"}, "start"),
        ({"start": "2026-03-02", "end": "2026-03-01"}, "end"),
        ({"start": "2020-01-01", "end": "2026-01-01"}, "end"),
        ({"project": "x"}, "project"),
        ({"granularity": "minute", "range": "30d"}, "granularity"),
    ],
)
def test_it_rejects_bad_filters_naming_the_field(client, params, field):
    response = client.get(reverse("metrics-api:kpis"), params)
    assert response.status_code == 400
    assert field in response.json()["error"]["fields"]


def test_it_rejects_bad_history_parameters(client):
    response = client.get(reverse("metrics-api:history"), {"period": "year", "periods": "0"})
    assert response.status_code == 400
    assert set(response.json()["error"]["fields"]) == {"period", "periods"}
    response = client.get(reverse("metrics-api:history"), {"period": "week", "periods": "500"})
    assert set(response.json()["error"]["fields"]) == {"periods"}


def test_it_needs_the_viewer_role_in_local_auth(client, local_auth, viewer_user, outsider_user):
    client.force_login(outsider_user)
    assert client.get(reverse("metrics-api:kpis")).status_code == 403
    client.force_login(viewer_user)
    assert client.get(reverse("metrics-api:kpis")).status_code == 200


def test_the_granularity_switch_changes_buckets_not_totals(client, history_data):
    d1, d2 = history_data["d1"], history_data["d2"]
    window = {"range": "custom", "start": _day(d2), "end": _day(d1), "project": 1}
    by_day = _get(client, "timeseries", granularity="day", **window)
    by_hour = _get(client, "timeseries", granularity="hour", **window)
    assert by_day["window"]["granularity"] == "day" and by_hour["window"]["granularity"] == "hour"
    assert [r["records_processed"] for r in by_day["results"]] == [100, 300]
    assert [r["bucket"][11:13] for r in by_hour["results"]] == ["10", "10"]
    assert sum(r["records_processed"] for r in by_hour["results"]) == 400
    kpis = {g: _get(client, "kpis", granularity=g, **window)["results"] for g in ("day", "hour")}
    assert kpis["day"]["records_processed"]["value"] == kpis["hour"]["records_processed"]["value"] == 400


def _rollup_reads(queries) -> list[str]:
    tables = ("metrics_summary", "metrics_status_summary", "metrics_slice", "metrics_status_slice")
    return [q["sql"] for q in queries if any(table in q["sql"] for table in tables)]


def test_an_export_is_served_from_the_answer_the_json_endpoint_cached(client, history_data):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    window = {"range": "custom", "start": _day(history_data["d2"]), "end": _day(history_data["d1"]), "period": "week"}
    for name in ("kpis", "stages", "tokens", "history"):
        body = _get(client, name, **window)
        with CaptureQueriesContext(connection) as queries:
            rows = _csv(client, f"{name}", **window)
        assert rows, name
        assert _rollup_reads(queries.captured_queries) == [], name
        assert len(rows) == (len(body["results"]) if name != "kpis" else len(body["results"]))


def test_the_default_views_are_warm_after_a_rollup_pass(client, history_data):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from metrics.prewarm import metrics_prewarm
    from metrics.services import metrics_rollup

    metrics_rollup()  # a new watermark version: every cached answer is cold now
    with CaptureQueriesContext(connection) as cold:
        _get(client, "stages", range="7d")
    assert _rollup_reads(cold.captured_queries)
    metrics_rollup()
    assert metrics_prewarm() > 0
    for name in ("kpis", "timeseries", "stages", "tokens", "request-structure", "history", "live"):
        for rng in ("today", "7d", "30d"):
            with CaptureQueriesContext(connection) as warm:
                _get(client, name, range=rng)
            assert _rollup_reads(warm.captured_queries) == [], (name, rng)
    for lang in ("en", "zh-hans"):
        with CaptureQueriesContext(connection) as warm:
            response = client.get("/dashboard/data/", {"range": "7d"}, HTTP_ACCEPT_LANGUAGE=lang)
        assert response.status_code == 200
        assert _rollup_reads(warm.captured_queries) == [], lang


def test_a_csv_export_is_sent_in_blocks_not_a_piece_per_row_and_whole_when_it_fits_one(monkeypatch):
    """An export of many rows arrives in a few ~64 KiB blocks (a chunk per row made the server write and the
    client decode one piece per row), byte for byte the CSV of its rows, the BOM and header once."""
    from metrics.api import views

    monkeypatch.setattr(views, "CSV_BLOCK_CHARS", 1000)
    rows = [{"day": f"2026-01-{i % 28 + 1:02d}", "label": f'阶段 {i}, "quoted"', "value": i} for i in range(500)]
    response = views.csv_response("export", ["day", "label", "value"], iter(rows))
    assert response.streaming  # more than one block: streamed as they are made
    blocks = list(response.streaming_content)
    assert 10 < len(blocks) < 100, len(blocks)  # ~25 KiB of rows in blocks of at least 1,000 characters
    text = b"".join(blocks).decode("utf-8")
    assert text.startswith("\ufeffday,label,value\r\n") and text.count("\ufeff") == 1
    expected = io.StringIO()
    writer = csv.writer(expected)
    for row in rows:
        writer.writerow([row["day"], row["label"], row["value"]])
    assert text.removeprefix("\ufeffday,label,value\r\n") == expected.getvalue()
    assert list(csv.DictReader(io.StringIO(text.removeprefix("\ufeff"))))[-1] == {
        "day": rows[-1]["day"],
        "label": rows[-1]["label"],
        "value": "499",
    }
    small = views.csv_response("export", ["value"], iter([{"value": 1}, {"value": None}]))
    assert not small.streaming  # one block: sent whole with its length, like the JSON answer
    assert small.content == '\ufeffvalue\r\n1\r\n""\r\n'.encode()
    assert small["Content-Disposition"] == 'attachment; filename="export.csv"'
