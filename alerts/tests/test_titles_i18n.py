"""Alert titles and run reasons are stored as codes and rendered in the reader's language."""

import datetime as dt

from django.utils import timezone, translation

from alerts import services
from alerts.models import Alert, AlertRule
from tasks import reasons

from .factories import AlertFactory, RuleFactory, TaskRunFactory, summary

MIN = dt.timedelta(minutes=1)


def _zh(func):
    with translation.override("zh-hans"):
        return func()


def test_a_metric_alert_title_follows_the_readers_language(pipeline, now):
    rule = RuleFactory(kind="failure_rate", pipeline=pipeline)
    summary(
        bucket=now - 2 * MIN, project_id=pipeline.project_id, pipeline_id=pipeline.pk, records_in=100, records_failed=50
    )
    services.rule_evaluate(rule=AlertRule.objects.get(pk=rule.pk), now=now)
    alert = Alert.objects.get(rule=rule)
    assert alert.title_code == "metric"
    assert alert.title == f"{rule.name}: 50.0% on pipeline {pipeline.name}"  # English for notifications and search
    assert _zh(lambda: alert.title_display) == f"{rule.name}：流水线 {pipeline.name} 上的值为 50.0%"
    with translation.override("en"):
        assert alert.title_display == alert.title


def test_a_failed_run_alert_carries_the_translated_reason(now):
    run = TaskRunFactory(status="failed", finished_at=timezone.now())
    params = {"stage": "clean", "index": 3, "n": 3, "error": "ValueError: bad record"}
    with translation.override("en"):
        text = reasons.reason_render("batch_failed", params)
    type(run).objects.filter(pk=run.pk).update(status_code="batch_failed", status_params=params, status_reason=text)
    run.refresh_from_db()
    assert run.status_reason == "Stage clean failed on batch 3 after 3 attempt(s): ValueError: bad record"
    zh_reason = _zh(lambda: reasons.run_reason(run))
    assert zh_reason == "阶段 clean 的批次 3 在 3 次尝试后失败：ValueError: bad record"
    rule = RuleFactory(kind="run_failed", warning_threshold=None, critical_threshold=1, window_minutes=60)
    services.rule_evaluate(rule=AlertRule.objects.get(pk=rule.pk), now=timezone.now())
    alert = Alert.objects.get(rule=rule)
    assert "failed: Stage clean failed on batch 3" in alert.title
    title = _zh(lambda: alert.title_display)
    assert zh_reason in title and "失败" in title and "Stage" not in title


def test_a_cancelled_run_reads_who_cancelled_it_in_the_readers_language():
    run = TaskRunFactory(status="cancelled", finished_at=timezone.now())
    type(run).objects.filter(pk=run.pk).update(
        status_code="cancelled_by", status_params={"who": "alice"}, status_reason="Cancelled by alice."
    )
    run.refresh_from_db()
    assert _zh(lambda: reasons.run_reason(run)) == "已被 alice 取消。"
    # A code left behind by an earlier status is not shown: the stored text (set by every transition) is.
    type(run).objects.filter(pk=run.pk).update(status="running", status_reason="")
    run.refresh_from_db()
    assert _zh(lambda: reasons.run_reason(run)) == ""


def test_old_rows_without_codes_keep_their_stored_text(pipeline):
    alert = AlertFactory(title="Legacy English title")
    assert _zh(lambda: alert.title_display) == "Legacy English title"
    run = TaskRunFactory(status="failed", status_reason="Legacy reason")
    assert _zh(lambda: reasons.run_reason(run)) == "Legacy reason"


def test_the_banner_speaks_the_readers_language(client, admin_user, pipeline, now):
    rule = RuleFactory(kind="failure_rate", pipeline=pipeline)
    summary(
        bucket=timezone.now() - 2 * MIN,
        project_id=pipeline.project_id,
        pipeline_id=pipeline.pk,
        records_in=100,
        records_failed=50,
    )
    services.rule_evaluate(rule=AlertRule.objects.get(pk=rule.pk), now=timezone.now())
    client.force_login(admin_user)
    english = client.get("/").content.decode()
    assert f"50.0% on pipeline {pipeline.name}" in english
    client.post("/i18n/setlang/", {"language": "zh-hans", "next": "/"})
    chinese = client.get("/").content.decode()  # the same cached banner data, rendered for this reader
    assert f"流水线 {pipeline.name} 上的值为 50.0%" in chinese and "on pipeline" not in chinese


def test_thresholds_show_their_units(client, admin_user):
    rate = RuleFactory(kind="failure_rate", warning_threshold=0.05, critical_threshold=0.2)
    latency = RuleFactory(kind="latency_p95", warning_threshold=2000, critical_threshold=5000)
    stuck = RuleFactory(kind="run_stuck", warning_threshold=30, critical_threshold=None)
    assert (rate.warning_display, rate.critical_display) == ("5.0%", "20.0%")
    assert (latency.warning_display, stuck.warning_display, stuck.critical_display) == ("2000 ms", "30 min", "—")
    assert _zh(lambda: latency.critical_display) == "5000 毫秒"
    client.force_login(admin_user)
    page = client.get("/alerts/alertrule/").content.decode()
    assert "5.0%" in page and "2000 ms" in page
    form = client.get(f"/alerts/alertrule/{rate.pk}/change/").content.decode()
    assert "0.2 = 20%" in form and "milliseconds" in form
