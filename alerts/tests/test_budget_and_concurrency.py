"""Token budgets that pause new runs (and the audited lift), and duplicate concurrent evaluations."""

import datetime as dt
import threading

import pytest
from django.core.exceptions import ValidationError
from django.db import connection

from alerts import services
from alerts.models import Alert, AlertEvent, AlertRule, Notification
from dataflare_portal.core.models import AuditLogEntry
from metrics.services import bucket_floor

from .factories import RuleFactory, summary


def budget_rule(pipeline, channel, **kw):
    spec = {
        "kind": "token_budget",
        "pipeline": pipeline,
        "warning_threshold": 0.8,
        "critical_threshold": 1.0,
        "budget_tokens": 1000,
        "budget_period": "day",
        "pause_runs_on_breach": True,
        "channels": [channel],
    }
    spec.update(kw)
    return RuleFactory(**spec)


def spend(scope_project_id, now, tokens, pipeline_id=0):
    summary(
        bucket=bucket_floor(now - dt.timedelta(hours=2), "hour"),
        granularity="hour",
        project_id=scope_project_id,
        pipeline_id=pipeline_id,
        prompt_tokens=tokens,
    )


def refused_because_paused(pipeline, actor) -> bool:
    """Ask the engine to start a run; True when it refuses because the scope is paused."""
    from tasks.services import RunRefused, run_start

    try:
        run_start(pipeline=pipeline, actor=actor)
    except RunRefused as exc:
        return getattr(exc, "code", None) == "paused" or "paused" in " ".join(exc.messages)
    except ValidationError:
        return False
    return False


def test_a_budget_breach_pauses_new_runs_of_the_pipeline_until_an_operator_lifts_it(
    pipeline, channel, now, admin_user, operator_user
):
    p = pipeline
    rule = budget_rule(p, channel)
    spend(p.project_id, now, 1500, pipeline_id=p.pk)
    [change] = services.rule_evaluate(rule=rule, now=now)
    assert (change.event, change.severity) == ("fired", "critical")
    p.refresh_from_db()
    assert p.runs_paused and rule.name in p.paused_reason
    alert = Alert.objects.get(pk=change.alert_id)
    assert alert.evidence["paused"] == {"type": "pipeline", "id": p.pk, "name": p.name}
    pause = AuditLogEntry.objects.get(action="pause", object_type="pipelines.pipeline", object_id=str(p.pk))
    assert pause.actor_name == "system" and pause.before["runs_paused"] is False and pause.after["runs_paused"] is True
    assert refused_because_paused(p, admin_user)
    # The project itself stays open: only this pipeline spent the budget.
    p.project.refresh_from_db()
    assert not p.project.runs_paused

    assert services.rule_evaluate(rule=AlertRule.objects.get(pk=rule.pk), now=now) == []

    services.budget_pause_lift(scope=p, actor=operator_user, note="budget raised for the launch")
    p.refresh_from_db()
    assert not p.runs_paused and p.paused_reason == ""
    lift = AuditLogEntry.objects.get(action="unpause", object_id=str(p.pk))
    assert lift.actor == operator_user and lift.message == "budget raised for the launch"
    assert lift.before["runs_paused"] is True and lift.after["runs_paused"] is False
    assert not refused_because_paused(p, admin_user)
    # Still over budget, but no new transition: the lift holds.
    assert services.rule_evaluate(rule=AlertRule.objects.get(pk=rule.pk), now=now) == []
    p.refresh_from_db()
    assert not p.runs_paused
    with pytest.raises(ValidationError):
        services.budget_pause_lift(scope=p, actor=operator_user, note="again")


def test_a_per_project_budget_escalating_to_critical_pauses_the_project(pipeline, channel, now):
    p = pipeline
    rule = budget_rule(None, channel, project=None, group_by="project")
    spend(p.project_id, now, 850)
    assert [c.event for c in services.rule_evaluate(rule=rule, now=now)] == ["fired"]
    p.project.refresh_from_db()
    assert not p.project.runs_paused  # a warning does not pause
    spend(p.project_id, now - dt.timedelta(hours=1), 200)
    assert [c.event for c in services.rule_evaluate(rule=AlertRule.objects.get(pk=rule.pk), now=now)] == ["escalated"]
    p.project.refresh_from_db()
    assert p.project.runs_paused
    assert Alert.objects.get(rule=rule).evidence["paused"]["type"] == "project"


def test_a_budget_without_pausing_only_alerts(pipeline, channel, now):
    rule = budget_rule(pipeline, channel, pause_runs_on_breach=False)
    spend(pipeline.project_id, now, 5000, pipeline_id=pipeline.pk)
    services.rule_evaluate(rule=rule, now=now)
    pipeline.refresh_from_db()
    assert not pipeline.runs_paused


def test_budget_rules_need_a_budget_a_period_and_a_scope():
    rule = AlertRule(name="b", kind="token_budget", warning_threshold=0.8)
    with pytest.raises(ValidationError) as err:
        rule.full_clean()
    assert {"budget_tokens", "budget_period", "project"} <= set(err.value.message_dict)
    other = AlertRule(name="c", kind="failure_rate", warning_threshold=0.1, pause_runs_on_breach=True)
    with pytest.raises(ValidationError) as err:
        other.full_clean()
    assert "pause_runs_on_breach" in err.value.message_dict


# ---- Duplicate and concurrent evaluation -------------------------------------------------------------
@pytest.mark.django_db(transaction=True)
def test_concurrent_duplicate_evaluations_produce_one_alert_and_one_notification(now):
    from .factories import EmailChannelFactory, PipelineFactory

    if connection.vendor == "sqlite" and connection.is_in_memory_db():
        # Shared-cache in-memory SQLite fails lock waits at once ("table is locked") instead of honouring the
        # busy timeout the file database uses; TEST_SQLITE_NAME=<file> runs this test on a real file.
        pytest.skip("in-memory SQLite test database; set TEST_SQLITE_NAME to cover SQLite locking")
    p = PipelineFactory()
    channel = EmailChannelFactory()
    rule = RuleFactory(kind="failure_rate", pipeline=p, channels=[channel])
    summary(
        bucket=now - dt.timedelta(minutes=3), project_id=p.project_id, pipeline_id=p.pk, records_in=10, records_failed=9
    )
    workers = 4
    barrier = threading.Barrier(workers)
    results, errors = [], []

    def beat():
        try:
            barrier.wait(timeout=10)
            results.append(services.rule_evaluate(rule=AlertRule.objects.get(pk=rule.pk), now=now))
        except Exception as exc:  # surfaced below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=beat) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert sorted(len(r) for r in results) == [0] * (workers - 1) + [1]
    assert Alert.objects.filter(rule=rule).count() == 1
    assert AlertEvent.objects.filter(alert__rule=rule, kind="fired").count() == 1
    assert Notification.objects.filter(alert__rule=rule).count() == 1


def test_the_open_alert_constraint_is_the_backstop(pipeline, now):
    rule = RuleFactory(kind="failure_rate", pipeline=pipeline)
    summary(
        bucket=now - dt.timedelta(minutes=3),
        project_id=pipeline.project_id,
        pipeline_id=pipeline.pk,
        records_in=10,
        records_failed=9,
    )
    services.rule_evaluate(rule=rule, now=now)
    # An evaluator that missed the first one's alert (no lock) gets the existing row back, not a second one.
    from alerts.evaluation import observe
    from alerts.services import _open_alert

    [obs] = observe(rule, now)
    alert, created = _open_alert(rule, obs, "critical", now)
    assert not created and Alert.objects.filter(rule=rule).count() == 1
