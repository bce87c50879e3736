"""Run events as project webhooks: emitted by the engine's transitions, delivered signed through the outbox.

A real HTTP receiver on loopback checks every signature and that each event arrives exactly once.
"""

import json
from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone
from rest_framework.test import APIClient

from alerts import notify, services
from alerts.models import Notification, RunWebhook
from catalog.models import Project
from dataflare_portal.core.secrets import decrypt_secret
from pipelines.tests.factories import QCPolicyFactory
from tasks.choices import RunEventKind, RunStatus
from tasks.models import QCLot, RunEvent, StageRun
from tasks.qc import review_item_decide
from tasks.services import reap, run_retry, run_start
from tasks.tests import kinds_for_tests
from tasks.tests.conftest import (  # noqa: F401 - the engine's fixtures: in-process doorbell, real workers
    _session_tmp,
    doorbell,
    shared_db,
    workers,
)
from tasks.tests.factories import make_pipeline, make_records

from .test_notify import SECRET, receiver  # noqa: F401 - the loopback receiver fixture

pytestmark = pytest.mark.django_db

kinds_for_tests.register()


def hook(receiver, project, *, name="ops", events=None, actor=None):  # noqa: F811
    return services.webhook_save(
        actor=actor,
        webhook=RunWebhook(project=project, name=name, target=receiver.url, events=events or []),
        secret=SECRET,
    )


def send_all():
    """Two overlapping sender passes: each row is claimed once, so nothing goes out twice."""
    first = services.notifications_send(worker="sender:1")
    second = services.notifications_send(worker="sender:2")
    return first, second


def received(receiver):  # noqa: F811
    """The bodies the receiver got, after checking each signature against the shared secret."""
    out = []
    for r in receiver.requests:
        headers = {k.lower(): v for k, v in r["headers"].items()}
        assert notify.verify(SECRET, r["body"], headers["x-dataflare-signature"]), "bad signature"
        body = json.loads(r["body"])
        assert headers["x-dataflare-event"] == body["event"]
        assert headers["x-dataflare-delivery"] == str(body["delivery"])
        out.append(body)
    return out


def test_a_run_sends_started_published_succeeded_once_each_to_the_projects_webhooks(doorbell, file_root, receiver):  # noqa: F811
    pipeline = make_pipeline(file_root, records=make_records(300), batch_size=50)
    every = hook(receiver, pipeline.project)
    only_done = hook(receiver, pipeline.project, name="done", events=[RunEventKind.SUCCEEDED])
    other = Project.objects.create(name="Other", slug="other")
    hook(receiver, other, name="elsewhere")
    run = run_start(pipeline=pipeline, actor=None)
    # Every message delivered twice: transitions are conditional, so no event is recorded twice.
    doorbell.drain(duplicate=True)
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, run.status_reason
    kinds = list(RunEvent.objects.filter(run=run).values_list("kind", "sequence"))
    assert sorted(kinds) == sorted(
        [(RunEventKind.STARTED, 1), (RunEventKind.VERSION_PUBLISHED, 1), (RunEventKind.SUCCEEDED, 1)]
    )
    assert Notification.objects.filter(webhook=every).count() == 3
    assert Notification.objects.filter(webhook=only_done).count() == 1
    assert not Notification.objects.filter(webhook__project=other).exists()

    first, second = send_all()
    assert first["sent"] == 4 and second["sent"] == 0
    bodies = received(receiver)
    assert len(bodies) == 4
    assert len({b["delivery"] for b in bodies}) == 4
    by_hook: dict[str, list[str]] = {}
    for b in bodies:
        by_hook.setdefault(b["channel"], []).append(b["event"])
        assert b["run"]["id"] == str(run.pk) and b["run"]["project_id"] == pipeline.project_id
    assert sorted(by_hook["ops"]) == sorted(["run.started", "version.published", "run.succeeded"])
    assert by_hook["done"] == ["run.succeeded"]
    published = next(b for b in bodies if b["event"] == "version.published")
    assert published["version"]["id"] == run.output_version_id
    assert published["version"]["records"] == run.records_out
    succeeded = next(b for b in bodies if b["event"] == "run.succeeded" and b["channel"] == "ops")
    assert succeeded["run"]["status"] == "succeeded" and succeeded["run"]["finished_at"]


def test_a_failed_run_sends_failed_and_a_retry_sends_started_again(doorbell, file_root, receiver, tmp_path):  # noqa: F811
    switch = tmp_path / "fail-on"
    switch.touch()
    stages = [("flaky", "test_fail", {"fail_batches": [1], "switch": str(switch)}), ("publish", "publish", {})]
    pipeline = make_pipeline(file_root, records=make_records(200, unique=True), stages=stages, batch_size=50)
    hook(receiver, pipeline.project, events=[RunEventKind.STARTED, RunEventKind.FAILED])
    run = run_start(pipeline=pipeline, actor=None)
    doorbell.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED
    send_all()
    assert [b["event"] for b in received(receiver)] == ["run.started", "run.failed"]
    failed = received(receiver)[1]
    assert failed["run"]["status_code"] == "batch_failed" and "flaky" in failed["run"]["status_reason"]

    switch.unlink()
    run_retry(run=run, actor=None, stage_run=StageRun.objects.get(run=run, key="flaky"))
    doorbell.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED
    assert list(RunEvent.objects.filter(run=run, kind=RunEventKind.STARTED).values_list("sequence", flat=True)) == [
        1,
        2,
    ]
    send_all()
    # The filter leaves out published and succeeded; the retry's start is a new transition.
    assert [b["event"] for b in received(receiver)] == ["run.started", "run.failed", "run.started"]


def test_a_transition_that_rolls_back_leaves_no_event_and_no_delivery(doorbell, file_root, receiver):  # noqa: F811
    pipeline = make_pipeline(file_root, records=make_records(20), batch_size=50)
    hook(receiver, pipeline.project)

    class Boom(Exception):
        pass

    with pytest.raises(Boom), transaction.atomic():
        run_start(pipeline=pipeline, actor=None)
        raise Boom()
    assert not RunEvent.objects.exists()
    assert not Notification.objects.exists()
    assert send_all()[0]["sent"] == 0
    assert receiver.requests == []


def test_waiting_for_review_is_sent_once_however_often_publish_rechecks(doorbell, file_root, receiver, operator_user):  # noqa: F811
    stages = [("filter", "filter", {"rules": [{"type": "length", "field": "text", "min": 8}]}), ("qc", "qc", {})]
    stages.append(("publish", "publish", {}))
    pipeline = make_pipeline(file_root, records=make_records(300), stages=stages, name="reviewed", batch_size=50)
    pipeline.qc_policy = QCPolicyFactory(aql=2.5, seed=3)
    pipeline.save()
    hook(receiver, pipeline.project)
    run = run_start(pipeline=pipeline, actor=None)
    doorbell.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.WAITING
    for step in range(1, 4):  # the parked publish unit re-checks the lot: still one event
        reap(now=timezone.now() + timedelta(minutes=5 * step))
        doorbell.drain()
    assert RunEvent.objects.filter(run=run, kind=RunEventKind.WAITING_FOR_REVIEW).count() == 1
    lot = QCLot.objects.get(stage_run__run=run)
    for item in lot.items.filter(decision="pending"):
        review_item_decide(item=item, actor=operator_user, decision="accepted")
    reap(now=timezone.now() + timedelta(hours=1))
    doorbell.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, run.status_reason
    send_all()
    assert [b["event"] for b in received(receiver)] == [
        "run.started",
        "run.waiting_for_review",
        "version.published",
        "run.succeeded",
    ]


def test_a_receiver_outage_is_retried_and_delivered_once(doorbell, file_root, receiver):  # noqa: F811
    pipeline = make_pipeline(file_root, records=make_records(20), batch_size=50)
    hook(receiver, pipeline.project, events=[RunEventKind.STARTED])
    run_start(pipeline=pipeline, actor=None)
    receiver.status = 503
    assert services.notifications_send(worker="s:1")["pending"] == 1
    receiver.status = 200
    later = timezone.now() + timedelta(hours=2)
    assert services.notifications_send(worker="s:2", now=later)["sent"] == 1
    assert services.notifications_send(worker="s:3", now=later)["sent"] == 0
    bodies = received(receiver)
    # The same delivery id twice: the first answer was 503, the receiver keeps the one it accepted.
    assert len(bodies) == 2 and bodies[0]["delivery"] == bodies[1]["delivery"]


def test_the_webhook_url_is_guarded_and_the_secret_stored_encrypted(settings, receiver, admin_user):  # noqa: F811
    project = Project.objects.create(name="Guarded", slug="guarded")
    saved = hook(receiver, project, actor=admin_user)
    assert SECRET not in saved.secret_ciphertext and decrypt_secret(saved.secret_ciphertext) == SECRET
    with pytest.raises(ValidationError) as exc:
        services.webhook_save(
            actor=admin_user, webhook=RunWebhook(project=project, name="nosecret", target=receiver.url)
        )
    assert "secret" in exc.value.message_dict
    settings.ALLOWED_PRIVATE_HOSTS = []
    with pytest.raises(ValidationError) as exc:
        services.webhook_save(
            actor=admin_user,
            webhook=RunWebhook(project=project, name="inside", target="http://169.254.169.254/latest/"),
            secret="x",
        )
    assert "target" in exc.value.message_dict
    with pytest.raises(ValidationError) as exc:  # loopback too, once it is not on the allow-list
        services.webhook_save(
            actor=admin_user, webhook=RunWebhook(project=project, name="loop", target=receiver.url), secret="x"
        )
    assert "target" in exc.value.message_dict


def test_the_api_creates_filters_and_refuses_unknown_events(local_auth, receiver, admin_user, viewer_user):  # noqa: F811
    project = Project.objects.create(name="Api", slug="api")
    client = APIClient()
    client.force_authenticate(admin_user)
    body = {"project": project.pk, "name": "ci", "target": receiver.url, "secret": "abc", "events": ["run.failed"]}
    response = client.post("/api/v1/alerts/webhooks/", body, format="json")
    assert response.status_code == 201, response.content
    data = response.json()
    assert data["has_secret"] is True and "secret" not in data and data["events"] == ["run.failed"]
    assert decrypt_secret(RunWebhook.objects.get(pk=data["id"]).secret_ciphertext) == "abc"
    bad = client.post("/api/v1/alerts/webhooks/", {**body, "name": "x", "events": ["run.exploded"]}, format="json")
    assert bad.status_code == 400 and "events" in bad.content.decode()
    listed = client.get("/api/v1/alerts/webhooks/", {"project": project.pk})
    assert listed.status_code == 200 and [w["name"] for w in listed.json()["results"]] == ["ci"]
    client.force_authenticate(viewer_user)
    assert client.post("/api/v1/alerts/webhooks/", {**body, "name": "y"}, format="json").status_code == 403


@pytest.mark.integration
def test_a_real_worker_delivers_each_event_once_without_a_manual_send(workers, file_root, receiver):  # noqa: F811
    """The worker runs the batches and, rung on commit of each transition, the outbox sender."""
    from conftest import wait_until
    from tasks.tests.conftest import run_wait

    pipeline = make_pipeline(file_root, records=make_records(600), batch_size=200)
    hook(receiver, pipeline.project)
    w = workers.start(name="hooks")
    workers.wait_ready(w)
    run = run_start(pipeline=pipeline, actor=None)
    run_wait(run)
    assert run.status == RunStatus.SUCCEEDED, (run.status_reason, workers.log_tail())
    wait_until(lambda: Notification.objects.filter(status="sent").count() == 3, timeout=60)
    bodies = received(receiver)
    assert sorted(b["event"] for b in bodies) == ["run.started", "run.succeeded", "version.published"]
    assert all(b["run"]["id"] == str(run.pk) for b in bodies)
    assert list(Notification.objects.values_list("attempts", flat=True)) == [1, 1, 1]


def test_the_admin_lists_run_events_and_edits_webhooks(doorbell, file_root, receiver, admin_client):  # noqa: F811
    pipeline = make_pipeline(file_root, records=make_records(20), batch_size=50)
    run_start(pipeline=pipeline, actor=None)
    page = admin_client.get("/tasks/runevent/")
    assert page.status_code == 200 and "Run started" in page.content.decode()
    add = admin_client.post(
        "/alerts/runwebhook/add/",
        {
            "project": pipeline.project_id,
            "name": "ops",
            "target": receiver.url,
            "secret": "s",
            "events": ["run.failed"],
        },
    )
    assert add.status_code == 302, add.content.decode()[:2000]
    saved = RunWebhook.objects.get(name="ops")
    assert saved.events == ["run.failed"] and decrypt_secret(saved.secret_ciphertext) == "s"
    refused = admin_client.post(
        "/alerts/runwebhook/add/",
        {"project": pipeline.project_id, "name": "inside", "target": "http://169.254.169.254/", "secret": "s"},
    )
    assert refused.status_code == 200 and not RunWebhook.objects.filter(name="inside").exists()
