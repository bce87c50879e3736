"""The beat tasks on a real Celery worker: evaluate, then deliver a signed webhook to a real server."""

import datetime as dt
import json

import pytest
from django.utils import timezone

from alerts import notify, services
from alerts.models import Alert, AlertRule, Notification, NotificationChannel
from conftest import wait_until
from tasks.tests.conftest import _session_tmp, shared_db, workers  # noqa: F401 - the engine's worker fixtures

from .factories import PipelineFactory, RuleFactory, summary
from .test_notify import SECRET, Receiver


@pytest.mark.integration
def test_the_beat_tasks_fire_and_deliver_through_a_real_worker(workers, settings, admin_user):  # noqa: F811
    from dataflare_portal.celery import app

    receiver = Receiver()
    try:
        AlertRule.objects.all().delete()  # the shared database copy carries the shipped default rules
        p = PipelineFactory()
        hook = services.channel_save(
            actor=admin_user,
            channel=NotificationChannel(name="hook", kind="webhook", target=receiver.url),
            secret=SECRET,
        )
        RuleFactory(kind="failure_rate", pipeline=p, channels=[hook])
        summary(
            bucket=timezone.now() - dt.timedelta(minutes=2),
            project_id=p.project_id,
            pipeline_id=p.pk,
            records_in=200,
            records_failed=120,
        )
        proc = workers.start(extra_env={"SECRETS_ENCRYPTION_KEYS": ",".join(settings.SECRETS_ENCRYPTION_KEYS)})
        workers.wait_ready(proc)
        app.send_task("alerts.evaluate")
        wait_until(lambda: Notification.objects.filter(status="sent").exists(), timeout=90)
        alert = Alert.objects.get()
        assert (alert.severity, alert.status) == ("critical", "firing")
        [req] = receiver.requests
        assert notify.verify(SECRET, req["body"], req["headers"][notify.SIGNATURE_HEADER])
        assert json.loads(req["body"])["alert"]["id"] == alert.pk
        # A duplicate beat changes nothing and sends nothing more.
        app.send_task("alerts.evaluate")
        app.send_task("alerts.send_notifications")
        app.send_task("alerts.send_notifications")
        n = Notification.objects.get()
        wait_until(lambda: Alert.objects.get().last_evaluated_at > alert.last_evaluated_at, timeout=60)
        assert Notification.objects.count() == 1 and Notification.objects.get().attempts == n.attempts == 1
        assert len(receiver.requests) == 1
    finally:
        receiver.close()
