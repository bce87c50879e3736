"""Each rule kind driven from fixture rollups or run rows through firing, acknowledging and resolving.

Every transition must write exactly one notification per channel, and a repeated evaluation none.
"""

import datetime as dt

import pytest
from django.utils import timezone

from alerts import services
from alerts.models import Alert, AlertEvent, AlertRule, Notification
from metrics.models import BatchEvent, RollupWatermark
from metrics.services import bucket_floor
from tasks.models import StageRun

from .factories import RuleFactory, TaskRunFactory, summary

MIN = dt.timedelta(minutes=1)


def evaluate(rule, now):
    return services.rule_evaluate(rule=AlertRule.objects.get(pk=rule.pk), now=now)


def sent_events(rule) -> list[str]:
    return list(Notification.objects.filter(alert__rule=rule).order_by("pk").values_list("event", flat=True))


def step(rule, now, event, severity=None, *, scope=None):
    """Evaluate twice: the first pass makes exactly this transition (one notification), the second nothing."""
    before = sent_events(rule)
    changes = evaluate(rule, now)
    assert [(c.event, c.severity) for c in changes] == [(event, severity or changes[0].severity)], changes
    if scope is not None:
        assert changes[0].scope == scope
    assert sent_events(rule) == [*before, event]
    assert evaluate(rule, now) == []
    assert sent_events(rule) == [*before, event]
    return Alert.objects.get(pk=changes[0].alert_id)


def acknowledge(alert, user):
    services.alert_acknowledge(alert=alert, actor=user, note="looking at it")
    alert.refresh_from_db()
    assert alert.status == "acknowledged" and alert.ack_note == "looking at it"
    assert AlertEvent.objects.filter(alert=alert, kind="acknowledged").count() == 1
    return alert


# ---- failure_rate ------------------------------------------------------------------------------------
def test_it_fires_escalates_and_resolves_a_failure_rate(pipeline, channel, now, admin_user):
    p = pipeline
    rule = RuleFactory(kind="failure_rate", project=p.project, pipeline=p, min_samples=10, channels=[channel])
    summary(bucket=now - 5 * MIN, project_id=p.project_id, pipeline_id=p.pk, records_in=1000, records_failed=100)
    alert = step(rule, now, "fired", "warning", scope="")
    assert alert.value == pytest.approx(0.1)
    assert alert.evidence["thresholds"] == {"warning": 0.05, "critical": 0.2}
    assert alert.evidence["window"]["minutes"] == 15
    assert f"pipeline={p.pk}" in alert.evidence["links"]["dashboard"]
    assert alert.project_id == p.project_id and alert.pipeline_id == p.pk
    alert = acknowledge(alert, admin_user)
    assert evaluate(rule, now) == []
    assert sent_events(rule) == ["fired"]

    summary(bucket=now - 4 * MIN, project_id=p.project_id, pipeline_id=p.pk, records_in=1000, records_failed=900)
    alert = step(rule, now, "escalated", "critical")
    assert alert.status == "firing"  # the acknowledgement covered a warning, not this
    alert = step(rule, now + 30 * MIN, "resolved")
    assert alert.status == "resolved" and alert.resolved_by is None
    assert Alert.objects.filter(rule=rule).count() == 1


def test_it_splits_a_grouped_rule_per_pipeline_and_ignores_thin_windows(channel, now):
    from .factories import PipelineFactory

    a, b = PipelineFactory(), PipelineFactory()
    rule = RuleFactory(kind="failure_rate", group_by="pipeline", min_samples=100, channels=[channel])
    summary(bucket=now - 2 * MIN, project_id=a.project_id, pipeline_id=a.pk, records_in=500, records_failed=200)
    # Too few records to judge (min_samples): no alert however bad the rate.
    summary(bucket=now - 2 * MIN, project_id=b.project_id, pipeline_id=b.pk, records_in=5, records_failed=5)
    changes = evaluate(rule, now)
    assert [(c.event, c.severity, c.scope) for c in changes] == [("fired", "critical", f"pipeline={a.pk}")]
    assert Alert.objects.get().project_id == a.project_id


def test_it_deescalates_critical_to_warning_as_a_transition(pipeline, channel, now, admin_user):
    # Every transition is notified without a cooldown (test_settings_effect covers the cooldown).
    from dataflare_portal.core.config import config_set

    config_set(key="alert_default_cooldown_minutes", value=0, actor=admin_user)
    p = pipeline
    rule = RuleFactory(kind="failure_rate", pipeline=p, channels=[channel])
    summary(bucket=now - 10 * MIN, project_id=p.project_id, pipeline_id=p.pk, records_in=100, records_failed=50)
    step(rule, now, "fired", "critical")
    summary(bucket=now - 1 * MIN, project_id=p.project_id, pipeline_id=p.pk, records_in=900, records_failed=50)
    alert = step(rule, now, "deescalated", "warning")
    assert alert.severity == "warning"
    assert sent_events(rule) == ["fired", "deescalated"]


# ---- throughput_drop ---------------------------------------------------------------------------------
def test_it_fires_on_a_throughput_drop_only_while_runs_are_active(pipeline, channel, now, admin_user):
    p = pipeline
    rule = RuleFactory(
        kind="throughput_drop",
        pipeline=p,
        warning_threshold=0.5,
        critical_threshold=0.8,
        window_minutes=30,
        min_samples=100,
        channels=[channel],
    )
    summary(bucket=now - 45 * MIN, project_id=p.project_id, pipeline_id=p.pk, records_out=1000)
    summary(bucket=now - 10 * MIN, project_id=p.project_id, pipeline_id=p.pk, records_out=300)
    assert evaluate(rule, now) == []  # no active run: a finished pipeline is not "dropping"
    TaskRunFactory(pipeline=p, status="running")
    alert = step(rule, now, "fired", "warning")
    assert alert.value == pytest.approx(0.7)
    assert alert.evidence["details"] == {"records_out": 300, "previous_records_out": 1000}
    acknowledge(alert, admin_user)
    summary(bucket=now - 11 * MIN, project_id=p.project_id, pipeline_id=p.pk, records_out=-200)
    step(rule, now, "escalated", "critical")
    summary(bucket=now - 12 * MIN, project_id=p.project_id, pipeline_id=p.pk, records_out=1000)
    step(rule, now, "resolved")


# ---- latency_p95 -------------------------------------------------------------------------------------
def test_it_fires_on_p95_latency_from_the_rollup_histograms(channel, now, admin_user):
    rule = RuleFactory(
        kind="latency_p95",
        group_by="model_version",
        warning_threshold=2000,
        critical_threshold=5000,
        min_samples=20,
        channels=[channel],
    )
    summary(bucket=now - 3 * MIN, project_id=1, model_version="scorer-v2", requests=100, lat_le_100=90, lat_le_2500=10)
    # 95th of 100 sits in the (1000, 2500] bucket: interpolated 1000 + 1500 * 5/10 = 1750 ms -> ok.
    assert evaluate(rule, now) == []
    summary(bucket=now - 2 * MIN, project_id=1, model_version="scorer-v2", requests=100, lat_le_2500=100)
    alert = step(rule, now, "fired", "warning", scope="model_version=scorer-v2")
    assert 2000 <= alert.value <= 2500
    assert alert.model_version == "scorer-v2"
    acknowledge(alert, admin_user)
    summary(bucket=now - 1 * MIN, project_id=1, model_version="scorer-v2", requests=800, lat_le_10000=800)
    step(rule, now, "escalated", "critical")
    step(rule, now + 20 * MIN, "resolved")


# ---- token_budget ------------------------------------------------------------------------------------
def test_it_tracks_tokens_against_a_daily_budget(pipeline, channel, now, admin_user):
    p = pipeline
    rule = RuleFactory(
        kind="token_budget",
        project=p.project,
        warning_threshold=0.8,
        critical_threshold=1.0,
        budget_tokens=10_000,
        budget_period="day",
        channels=[channel],
    )
    gran = "hour"  # noon: a 12-hour period reads hour buckets
    morning = bucket_floor(now - dt.timedelta(hours=3), gran)
    yesterday = bucket_floor(now - dt.timedelta(hours=14), gran)
    summary(bucket=yesterday, granularity=gran, project_id=p.project_id, prompt_tokens=50_000)  # not this period
    summary(bucket=morning, granularity=gran, project_id=p.project_id, prompt_tokens=6000, completion_tokens=2500)
    alert = step(rule, now, "fired", "warning")
    assert alert.value == pytest.approx(0.85)
    assert alert.evidence["details"]["tokens"] == 8500 and alert.evidence["details"]["budget"] == 10_000
    acknowledge(alert, admin_user)
    summary(bucket=morning + dt.timedelta(hours=1), granularity=gran, project_id=p.project_id, prompt_tokens=2000)
    alert = step(rule, now, "escalated", "critical")
    assert "paused" not in alert.evidence  # this rule does not pause
    p.project.refresh_from_db()
    assert not p.project.runs_paused
    # A new day starts the budget over.
    step(rule, now + dt.timedelta(days=1), "resolved")


# ---- run_failed --------------------------------------------------------------------------------------
def test_it_raises_one_alert_per_failed_run_and_resolves_when_it_is_retried(pipeline, channel, admin_user):
    rule = RuleFactory(
        kind="run_failed",
        pipeline=pipeline,
        warning_threshold=None,
        critical_threshold=1,
        window_minutes=60,
        channels=[channel],
    )
    ok = TaskRunFactory(pipeline=pipeline, status="succeeded", finished_at=timezone.now())
    run = TaskRunFactory(pipeline=pipeline, failed=True)
    StageRun.objects.create(run=run, position=1, key="clean", kind="clean", status="failed", last_error="boom")
    now = timezone.now()
    alert = step(rule, now, "fired", "critical", scope=f"run={run.pk}")
    assert alert.run_id == run.pk and ok.pk != run.pk
    assert "ValueError: bad record" in alert.title
    assert alert.evidence["details"]["stage"] == {"key": "clean", "position": 1}
    assert str(run.pk) in alert.evidence["links"]["run"]
    acknowledge(alert, admin_user)
    assert evaluate(rule, now) == []
    # The operator retries the run: it is active again, the failure is over.
    type(run).objects.filter(pk=run.pk).update(status="running", finished_at=None)
    alert = step(rule, timezone.now(), "resolved")
    assert sent_events(rule) == ["fired", "resolved"]


def test_it_does_not_raise_a_failed_run_again_after_an_operator_resolved_it(pipeline, channel, admin_user):
    rule = RuleFactory(
        kind="run_failed", warning_threshold=None, critical_threshold=1, window_minutes=60, channels=[channel]
    )
    run = TaskRunFactory(pipeline=pipeline, failed=True)
    alert = step(rule, timezone.now(), "fired", "critical")
    services.alert_resolve(alert=alert, actor=admin_user, note="known bad input, re-ingesting")
    assert evaluate(rule, timezone.now()) == []
    # The same run failing again later (after a retry) is a new failure and alerts again.
    type(run).objects.filter(pk=run.pk).update(finished_at=timezone.now() + dt.timedelta(seconds=5))
    assert [c.event for c in evaluate(rule, timezone.now())] == ["fired"]


# ---- run_stuck ---------------------------------------------------------------------------------------
def test_it_flags_a_run_without_progress_and_clears_when_it_moves(pipeline, channel, admin_user):
    rule = RuleFactory(
        kind="run_stuck", warning_threshold=30, critical_threshold=90, pipeline=pipeline, channels=[channel]
    )
    run = TaskRunFactory(pipeline=pipeline, status="running")
    moving = TaskRunFactory(pipeline=pipeline, status="running")
    now = timezone.now()
    # update() skips auto_now: the run last changed 40 minutes ago.
    type(run).objects.filter(pk=run.pk).update(updated_at=now - 40 * MIN)
    alert = step(rule, now, "fired", "warning", scope=f"run={run.pk}")
    assert 39 <= alert.value <= 41 and moving.pk != run.pk
    acknowledge(alert, admin_user)
    type(run).objects.filter(pk=run.pk).update(updated_at=now - 100 * MIN)
    step(rule, now, "escalated", "critical")
    # A stage reports progress: the run is moving again.
    StageRun.objects.create(run=run, position=1, key="clean", kind="clean", status="running")
    step(rule, timezone.now(), "resolved")


# ---- stale_data --------------------------------------------------------------------------------------
def test_it_flags_raw_events_waiting_for_the_rollup(channel, admin_user):
    rule = RuleFactory(kind="stale_data", warning_threshold=5, critical_threshold=15, channels=[channel])
    now = timezone.now()
    assert evaluate(rule, now) == []  # nothing recorded, nothing stale
    event = BatchEvent.objects.create(ts=now - 8 * MIN, project_id=1, records_in=10, records_out=10)
    alert = step(rule, now, "fired", "warning")
    assert 7.9 <= alert.value <= 8.1
    acknowledge(alert, admin_user)
    step(rule, now + 10 * MIN, "escalated", "critical")
    # The rollup catches up: its watermark now covers the event.
    RollupWatermark.objects.create(granularity="minute", rolled_until=now, last_batch_event_id=event.pk)
    step(rule, now + 10 * MIN, "resolved")


def test_it_flags_a_scope_with_active_runs_but_no_recent_data(pipeline, channel, now):
    p = pipeline
    rule = RuleFactory(kind="stale_data", pipeline=p, warning_threshold=10, critical_threshold=60, channels=[channel])
    summary(bucket=now - 25 * MIN, project_id=p.project_id, pipeline_id=p.pk, batches=3, records_in=10)
    assert evaluate(rule, now) == []  # idle pipeline: silence is expected
    TaskRunFactory(pipeline=p, status="running")
    alert = step(rule, now, "fired", "warning")
    assert alert.value == pytest.approx(25)


# ---- breaker_open ------------------------------------------------------------------------------------
@pytest.fixture
def breaker(settings, tmp_path):
    """The breaker store workers share (Redis under REDIS_URL, else a SQLite file) and a model config's key."""
    from pipelines.model_configs import breaker_store_default, model_config_endpoint
    from pipelines.models import ModelConfig

    settings.DATA_DIR = tmp_path  # the SQLite store lives here when there is no Redis
    config = ModelConfig.objects.create(
        name="scorer", endpoint="127.0.0.1:1", model_name="quality", model_version="7", breaker_reset_seconds=600
    )
    store = breaker_store_default()
    key = model_config_endpoint(config).key
    store.reset(key)
    yield config, store, key
    store.reset(key)


def test_it_fires_while_a_model_breaker_is_open(breaker, channel, admin_user):
    config, store, key = breaker
    rule = RuleFactory(kind="breaker_open", warning_threshold=0, critical_threshold=5, channels=[channel])
    now = timezone.now()
    assert evaluate(rule, now) == []  # closed
    for _ in range(config.breaker_failure_threshold):
        store.record_failure(key, config.breaker_failure_threshold)
    alert = step(rule, now, "fired", "warning", scope=f"breaker={key}")
    assert alert.evidence["details"]["state"] == "open" and alert.evidence["details"]["model_config"] == "scorer"
    acknowledge(alert, admin_user)
    step(rule, now + 6 * MIN, "escalated", "critical")
    store.reset(key)
    step(rule, now + 7 * MIN, "resolved")


def test_it_reports_and_leaves_alerts_alone_when_breaker_state_cannot_be_read(breaker, settings, channel):
    from conftest import free_port

    config, store, key = breaker
    rule = RuleFactory(kind="breaker_open", warning_threshold=0, critical_threshold=5, channels=[channel])
    for _ in range(config.breaker_failure_threshold):
        store.record_failure(key, config.breaker_failure_threshold)
    [change] = evaluate(rule, timezone.now())
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    assert evaluate(rule, timezone.now()) == []
    rule.refresh_from_db()
    assert "Cannot read breaker state" in rule.last_error and rule.last_evaluated_at is not None
    assert Alert.objects.get(pk=change.alert_id).status == "firing"  # neither resolved nor changed


# ---- shared behaviour --------------------------------------------------------------------------------
def test_muted_rules_keep_alerts_but_send_nothing(pipeline, channel, now):
    p = pipeline
    rule = RuleFactory(kind="failure_rate", pipeline=p, channels=[channel], muted_until=timezone.now() + 60 * MIN)
    summary(bucket=now - 5 * MIN, project_id=p.project_id, pipeline_id=p.pk, records_in=100, records_failed=50)
    assert [c.event for c in evaluate(rule, now)] == ["fired"]
    assert sent_events(rule) == []


def test_channels_get_only_transitions_at_or_above_their_minimum_severity(pipeline, now):
    from .factories import EmailChannelFactory

    pager = EmailChannelFactory(min_severity="critical")
    mail = EmailChannelFactory(min_severity="warning")
    p = pipeline
    rule = RuleFactory(kind="failure_rate", pipeline=p, channels=[pager, mail])
    summary(bucket=now - 5 * MIN, project_id=p.project_id, pipeline_id=p.pk, records_in=100, records_failed=10)
    evaluate(rule, now)
    summary(bucket=now - 4 * MIN, project_id=p.project_id, pipeline_id=p.pk, records_in=100, records_failed=90)
    evaluate(rule, now)
    got = sorted(Notification.objects.values_list("channel__min_severity", "event"))
    assert got == [("critical", "escalated"), ("warning", "escalated"), ("warning", "fired")]


def test_default_rules_ship_and_validate(keep_defaults):
    rules = {r.kind: r for r in AlertRule.objects.all()}
    assert set(rules) == {
        "failure_rate",
        "throughput_drop",
        "latency_p95",
        "token_budget",
        "run_failed",
        "run_stuck",
        "breaker_open",
        "stale_data",
    }
    for rule in rules.values():
        rule.full_clean()
    assert rules["token_budget"].enabled is False


def test_disabling_a_rule_resolves_its_open_alerts(pipeline, channel, now):
    p = pipeline
    rule = RuleFactory(kind="failure_rate", pipeline=p, channels=[channel])
    summary(bucket=now - 5 * MIN, project_id=p.project_id, pipeline_id=p.pk, records_in=100, records_failed=50)
    services.alerts_evaluate(now=now)
    AlertRule.objects.filter(pk=rule.pk).update(enabled=False)
    assert [c.event for c in services.alerts_evaluate(now=now)] == ["resolved"]
    alert = Alert.objects.get(rule=rule)
    assert alert.status == "resolved" and alert.resolve_note == "The rule was disabled."
    assert sent_events(rule) == ["fired", "resolved"]
    assert services.alerts_evaluate(now=now) == []
