"""PostgreSQL: how a rollup pass writes — rows rewritten in place, grouping by hashing.

Both are costs a pass pays every 30 s for every row of the current minute, hour, day, week and
month; the figures are in the docstrings of migration `metrics 0011` and `services._tune_session`.
"""

import datetime as dt

import pytest
from django.db import connection, transaction

from metrics import services
from metrics.choices import Granularity
from metrics.models import TokenUsage
from metrics.services import metrics_rollup

from .factories import T0, TokenUsageFactory

pytestmark = pytest.mark.django_db
M = dt.timedelta(minutes=1)
REWRITTEN = ("hour", "day", "week", "month")


@pytest.fixture(autouse=True)
def _postgresql():
    if connection.vendor != "postgresql":
        pytest.skip("fillfactor, HOT updates and the planner's grouping are PostgreSQL's")


def _updates() -> dict[str, tuple[int, int]]:
    """(updates, of which HOT) per summary partition in this transaction so far."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT relname, n_tup_upd, n_tup_hot_upd FROM pg_stat_xact_user_tables "
            "WHERE relname ~ '^metrics_(status_)?summary_'"
        )
        return {name: (upd, hot) for name, upd, hot in cursor.fetchall()}


def test_a_pass_rewrites_the_rows_it_re_rolls_on_their_own_page():
    # 400 dimension keys in one hour: the hour's, day's, week's and month's rows fill ~20 pages each.
    keys = [f"stage-{i}" for i in range(400)]
    TokenUsage.objects.bulk_create([TokenUsageFactory.build(ts=T0 + 5 * M, stage_template=k) for k in keys])
    metrics_rollup(now=T0 + 10 * M)
    TokenUsage.objects.bulk_create([TokenUsageFactory.build(ts=T0 + 9 * M, stage_template=k) for k in keys])
    before = _updates()
    metrics_rollup(now=T0 + 11 * M)
    after = _updates()

    for table in ("metrics_summary", "metrics_status_summary"):
        for gran in REWRITTEN:
            name = f"{table}_{gran}"
            updates = after[name][0] - before.get(name, (0, 0))[0]
            hot = after[name][1] - before.get(name, (0, 0))[1]
            assert updates >= len(keys), name
            # A non-HOT update adds an entry to each of the partition's six indexes.
            assert hot == updates, f"{name}: {updates - hot} of {updates} rewrites left their page"


def test_a_pass_groups_a_busy_minute_by_hashing_not_sorting():
    # A busy minute with statistics that know it (as autovacuum's ANALYZE would): 60k events over 20k
    # dimension keys. Unless the pass turns sorting off, the planner sorts them on the text keys first.
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO tokens_usage (ts, project_id, pipeline_id, stage_template, model_name, model_version, "
            "status_code, requests, records, prompt_tokens, completion_tokens, latency_ms_sum, latency_ms_max, "
            "lat_le_5, lat_le_10, lat_le_25, lat_le_50, lat_le_100, lat_le_250, lat_le_500, lat_le_1000, "
            "lat_le_2500, lat_le_5000, lat_le_10000, lat_inf, retry_tokens) "
            "SELECT %s::timestamptz + (g %% 60) * interval '1 second', 1 + g %% 3, 1 + g %% 20, "
            "'stage-' || (g %% 2000), 'm', 'v' || (g %% 5), CASE WHEN g %% 50 = 0 THEN 'UNAVAILABLE' ELSE 'OK' END, "
            "1, 1, 10, 5, 20.0, 20.0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0 FROM generate_series(1, 60000) g",
            [T0],
        )
        cursor.execute("ANALYZE tokens_usage")
    sql, params = services._raw_status_sql(Granularity.MINUTE, *services._SENTINELS[:2])
    adapt = connection.ops.adapt_datetimefield_value
    bounds = {repr(adapt(s)): adapt(v) for s, v in zip(services._SENTINELS, (T0, T0 + M, T0 + M), strict=True)}
    params = [bounds.get(repr(p), p) for p in params]
    with transaction.atomic():
        services._tune_session()
        with connection.cursor() as cursor:
            # At the bench's 300k events the planner expects ~216k groups, more than the pass's memory
            # holds; a test-sized minute gets there with less memory.
            cursor.execute("SET LOCAL work_mem = '1MB'")
            cursor.execute("EXPLAIN " + sql, params)
            plan = "\n".join(line for (line,) in cursor.fetchall())
    assert "HashAggregate" in plan, plan
    assert "Sort" not in plan, plan
