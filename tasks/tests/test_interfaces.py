"""The interfaces over the engine services: REST, pages (progress JSON, actions), admin actions, overview."""

import pytest
from django.urls import reverse

from tasks.choices import RunStatus
from tasks.models import StageRun, TaskRun, WorkerHeartbeat
from tasks.tests import kinds_for_tests
from tasks.tests.factories import make_pipeline, make_records, published, reference_output

pytestmark = pytest.mark.django_db

kinds_for_tests.register()


def test_api_starts_a_run_once_per_idempotency_key(doorbell, file_root, client):
    pipeline = make_pipeline(file_root, records=make_records(300))
    body = {"pipeline": pipeline.pk, "parameters": {"note": "x"}}
    first = client.post("/api/v1/tasks/runs/", body, content_type="application/json", HTTP_IDEMPOTENCY_KEY="abc")
    assert first.status_code == 201, first.content
    again = client.post("/api/v1/tasks/runs/", body, content_type="application/json", HTTP_IDEMPOTENCY_KEY="abc")
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    assert TaskRun.objects.count() == 1 and len(doorbell.sent) == 1
    other = {"pipeline": pipeline.pk, "parameters": {"note": "y"}}
    clash = client.post("/api/v1/tasks/runs/", other, content_type="application/json", HTTP_IDEMPOTENCY_KEY="abc")
    assert clash.status_code == 409
    assert clash.json()["error"]["code"] == "idempotency_conflict"
    doorbell.drain()
    run = TaskRun.objects.get()
    assert run.status == RunStatus.SUCCEEDED
    assert published(run) == reference_output(make_records(300))


def test_api_refuses_bad_input_and_paused_pipelines_with_4xx(doorbell, file_root, client):
    missing = client.post("/api/v1/tasks/runs/", {"pipeline": 9999}, content_type="application/json")
    assert missing.status_code == 400 and "pipeline" in missing.json()["error"]["fields"]
    pipeline = make_pipeline(file_root, records=make_records(10))
    pipeline.runs_paused, pipeline.paused_reason = True, "budget breached"
    pipeline.save()
    paused = client.post("/api/v1/tasks/runs/", {"pipeline": pipeline.pk}, content_type="application/json")
    assert paused.status_code == 400
    assert "budget breached" in paused.json()["error"]["message"]


def test_api_cancel_resume_retry_and_reads(doorbell, file_root, client, django_assert_max_num_queries):
    pipeline = make_pipeline(file_root, records=make_records(400), batch_size=50)
    run_id = client.post("/api/v1/tasks/runs/", {"pipeline": pipeline.pk}, content_type="application/json").json()["id"]
    doorbell.drain(limit=4)
    r = client.post(f"/api/v1/tasks/runs/{run_id}/cancel/")
    assert r.status_code == 200 and r.json()["status"] == RunStatus.CANCELLED
    again = client.post(f"/api/v1/tasks/runs/{run_id}/cancel/")
    assert again.status_code == 400
    r = client.post(f"/api/v1/tasks/runs/{run_id}/resume/")
    assert r.status_code == 200 and r.json()["status"] == RunStatus.RUNNING
    doorbell.drain()
    detail = client.get(f"/api/v1/tasks/runs/{run_id}/").json()
    assert detail["status"] == RunStatus.SUCCEEDED and len(detail["stage_runs"]) == 5
    with django_assert_max_num_queries(6):
        assert client.get("/api/v1/tasks/runs/").status_code == 200
    with django_assert_max_num_queries(6):
        batches = client.get(f"/api/v1/tasks/batches/?run={run_id}").json()["results"]
    assert batches and all(b["status"] in ("succeeded", "cancelled") for b in batches)
    assert client.get(f"/api/v1/tasks/stage-runs/?run={run_id}").json()["results"][0]["key"] == "read"
    progress = client.get(f"/api/v1/tasks/runs/{run_id}/progress/").json()
    assert [s["percent"] for s in progress["stages"]] == [100.0] * 5
    retry = client.post(f"/api/v1/tasks/runs/{run_id}/retry/", {}, content_type="application/json")
    assert retry.status_code == 400  # nothing failed


def test_api_actions_need_the_operator_role(doorbell, file_root, client, local_auth, viewer_user, operator_user):
    pipeline = make_pipeline(file_root, records=make_records(10))
    client.force_login(viewer_user)
    assert client.get("/api/v1/tasks/runs/").status_code == 200
    assert (
        client.post("/api/v1/tasks/runs/", {"pipeline": pipeline.pk}, content_type="application/json").status_code
        == 403
    )
    client.force_login(operator_user)
    assert (
        client.post("/api/v1/tasks/runs/", {"pipeline": pipeline.pk}, content_type="application/json").status_code
        == 201
    )


def test_the_run_page_shows_progress_and_its_json_updates(doorbell, file_root, client):
    from tasks.services import run_start

    pipeline = make_pipeline(
        file_root,
        records=make_records(300),
        stages=[
            ("filter", "filter", {"on_fail": "quarantine", "rules": [{"type": "length", "field": "text", "min": 8}]}),
            ("publish", "publish", {}),
        ],
        batch_size=100,
    )
    run = run_start(pipeline=pipeline, actor=None)
    page = client.get(reverse("tasks:run-detail", args=[run.pk]))
    assert page.status_code == 200
    html = page.content.decode()
    assert 'data-progress-url="/runs/' in html and "tasks/run_detail.js" in html and "Cancel run" in html
    before = client.get(reverse("tasks:run-progress", args=[run.pk])).json()
    assert before["active"] and before["stages"][0]["batches_done"] == 0
    doorbell.drain(limit=3)
    mid = client.get(reverse("tasks:run-progress", args=[run.pk])).json()
    assert mid["stages"][0]["batches_done"] > 0 and mid["records_in"] > 0
    doorbell.drain()
    after = client.get(reverse("tasks:run-progress", args=[run.pk])).json()
    assert not after["active"] and after["status"] == "succeeded"
    flt = after["stages"][1]
    assert flt["records_failed"] > 0 and flt["records_in"] == flt["records_out"] + flt["records_failed"]
    html = client.get(reverse("tasks:run-detail", args=[run.pk])).content.decode()
    stage = StageRun.objects.get(run=run, key="filter")
    link = f"/tasks/quarantinedrecord/?stage_run__id__exact={stage.pk}"
    assert link in html
    listing = client.get(link)
    assert (
        listing.status_code == 200
        and "too_short" in listing.content.decode()
        and "fewer than" in listing.content.decode()
    )


def test_run_page_actions_post_with_csrf(doorbell, file_root, settings, local_auth, operator_user, viewer_user):
    from django.test import Client

    from tasks.services import run_start

    run = run_start(pipeline=make_pipeline(file_root, records=make_records(200), batch_size=50), actor=None)
    viewer = Client(enforce_csrf_checks=True)
    viewer.force_login(viewer_user)
    page = viewer.get(reverse("tasks:run-detail", args=[run.pk]))
    assert page.status_code in (200, 302)
    operator = Client(enforce_csrf_checks=True)
    operator.force_login(operator_user)
    url = reverse("tasks:run-action", args=[run.pk, "cancel"])
    assert operator.post(url).status_code == 403  # no CSRF token
    operator.get(reverse("tasks:run-detail", args=[run.pk]))
    token = operator.cookies["csrftoken"].value
    # Cancel asks first (a page of its own), then cancels on the confirmation.
    assert operator.post(url, HTTP_X_CSRFTOKEN=token).status_code == 200
    r = operator.post(url, {"confirm": "yes"}, HTTP_X_CSRFTOKEN=token)
    assert r.status_code == 302
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED
    r = operator.post(reverse("tasks:run-action", args=[run.pk, "resume"]), HTTP_X_CSRFTOKEN=token)
    run.refresh_from_db()
    assert run.status == RunStatus.RUNNING


def test_admin_actions_call_the_services(doorbell, file_root, admin_client):
    from tasks.services import run_start

    run = run_start(pipeline=make_pipeline(file_root, records=make_records(100)), actor=None)
    r = admin_client.post(
        "/tasks/taskrun/", {"action": "run_cancel_action", "_selected_action": [str(run.pk)]}, follow=True
    )
    assert r.status_code == 200
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED
    admin_client.post("/tasks/taskrun/", {"action": "run_resume_action", "_selected_action": [str(run.pk)]})
    doorbell.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED
    r = admin_client.post("/tasks/task/", {"action": "run_task_again_action", "_selected_action": [run.task_id]})
    assert TaskRun.objects.filter(task=run.task).count() == 2
    assert admin_client.get("/tasks/taskrun/").status_code == 200
    assert admin_client.get(f"/tasks/taskrun/{run.pk}/change/").status_code == 200


def test_run_pipeline_admin_action_for_the_pipeline_admin(doorbell, file_root, admin_user, rf):
    from django.contrib import admin as django_admin
    from django.contrib.messages.storage.fallback import FallbackStorage

    from pipelines.models import Pipeline
    from tasks.admin_actions import run_pipeline_action

    pipeline = make_pipeline(file_root, records=make_records(20))
    request = rf.post("/")
    request.user = admin_user
    request.session = {}
    request._messages = FallbackStorage(request)
    model_admin = django_admin.ModelAdmin(Pipeline, django_admin.site)
    run_pipeline_action(model_admin, request, Pipeline.objects.filter(pk=pipeline.pk))
    assert TaskRun.objects.filter(pipeline=pipeline).count() == 1


def test_the_workers_page_marks_silent_workers_dead_and_their_batches_orphaned(doorbell, file_root, client):
    from datetime import timedelta

    from django.utils import timezone

    from tasks import engine
    from tasks.services import run_start

    now = timezone.now()
    WorkerHeartbeat.objects.create(name="alive@h", hostname="h", pid=1, queues=["stages"], last_seen_at=now)
    WorkerHeartbeat.objects.create(
        name="gone@h", hostname="h", pid=2, queues=["stages"], last_seen_at=now - timedelta(hours=1)
    )
    run = run_start(pipeline=make_pipeline(file_root, records=make_records(20)), actor=None)
    engine.batch_claim(batch_id=doorbell.sent[0][0], owner="gone@h:2")
    html = client.get("/workers/").content.decode()
    assert "gone@h" in html and "df-worker-dead" in html and "df-worker-alive" in html
    assert 'class="df-orphaned"' in html and f"/runs/{run.pk}/" in html
    data = client.get("/api/v1/tasks/workers/overview/").json()
    assert data["alive"] == 1 and data["dead"] == 1 and len(data["orphaned"]) == 1
    assert set(data["queues"]) == {"stages", "inference", "default"}


def test_the_overview_panel_lists_active_runs(doorbell, file_root, client):
    from tasks.services import run_start

    run = run_start(pipeline=make_pipeline(file_root, records=make_records(20)), actor=None)
    html = client.get("/").content.decode()
    assert f"/runs/{run.pk}/" in html
