"""Schedules through the API (roles, field-named errors, audit), the admin (preview on save, actions, pipeline
columns) and the `schedule` command."""

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse
from django.utils import translation

from dataflare_portal.core.models import AuditLogEntry
from schedules.models import DatasetTrigger, Schedule
from tasks.tests import kinds_for_tests

from .factories import make_schedule, pipeline_for

pytestmark = pytest.mark.django_db

kinds_for_tests.register()
API = "/api/v1/schedules/schedules/"


def body(pipeline, **extra):
    data = {
        "pipeline": pipeline.pk,
        "name": "nightly",
        "kind": "cron",
        "cron": "0 2 * * *",
        "timezone": "Asia/Shanghai",
    }
    data.update(extra)
    return data


def test_api_creates_previews_pauses_and_resumes_a_schedule(file_root, client):
    pipeline = pipeline_for(file_root)
    r = client.post(
        API, body(pipeline, overlap="queue", catchup="all", catchup_limit=3), content_type="application/json"
    )
    assert r.status_code == 201, r.content
    data = r.json()
    assert data["next_fire_at"].endswith(("18:00:00Z", "18:00:00+00:00"))
    pk = data["id"]
    preview = client.get(f"{API}{pk}/preview/").json()
    assert preview["timezone"] == "Asia/Shanghai" and len(preview["fire_times"]) == 5
    assert client.post(f"{API}{pk}/pause/").json()["enabled"] is False
    assert client.post(f"{API}{pk}/resume/").json()["enabled"] is True
    r = client.patch(f"{API}{pk}/", {"cron": "30 3 * * 1"}, content_type="application/json")
    assert r.status_code == 200 and r.json()["cron"] == "30 3 * * 1"
    actions = list(AuditLogEntry.objects.filter(object_type__icontains="schedule").values_list("action", flat=True))
    assert {"create", "pause", "unpause", "update"} <= set(actions)


STRICT_SCHEMA = {"type": "object", "properties": {"lang": {"type": "string"}}, "additionalProperties": False}


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"cron": "61 * * * *"}, "cron"),
        ({"cron": "0 2 * *"}, "cron"),
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"kind": "interval", "cron": ""}, "interval_seconds"),
        ({"kind": "interval", "interval_seconds": 0}, "interval_seconds"),
        ({"overlap": "sometimes"}, "overlap"),
        ({"catchup_limit": 100000}, "catchup_limit"),
        ({"parameters": {"x": 1}}, "parameters"),
        ({"parameters": "nope"}, "parameters"),
    ],
)
def test_api_refuses_bad_schedules_naming_the_field(file_root, client, extra, field):
    pipeline = pipeline_for(file_root)
    # A declared schema makes {"x": 1} a bad value (a pipeline without one takes free parameters).
    type(pipeline).objects.filter(pk=pipeline.pk).update(parameters_schema=STRICT_SCHEMA)
    r = client.post(API, body(pipeline, **extra), content_type="application/json")
    assert r.status_code == 400, r.content
    assert field in r.json()["error"]["fields"], r.json()
    assert not Schedule.objects.exists()


def test_api_roles_viewer_reads_operator_writes_admin_deletes(
    file_root, client, local_auth, viewer_user, operator_user
):
    pipeline = pipeline_for(file_root)
    client.force_login(viewer_user)
    assert client.get(API).status_code == 200
    assert client.post(API, body(pipeline), content_type="application/json").status_code == 403
    client.force_login(operator_user)
    r = client.post(API, body(pipeline), content_type="application/json")
    assert r.status_code == 201
    pk = r.json()["id"]
    assert client.post(f"{API}{pk}/pause/").status_code == 200
    assert client.delete(f"{API}{pk}/").status_code == 403
    trig = client.post(
        "/api/v1/schedules/triggers/",
        {"pipeline": pipeline.pk, "dataset": pipeline.input_dataset_id},
        content_type="application/json",
    )
    assert trig.status_code == 201, trig.content
    assert DatasetTrigger.objects.get().created_by == operator_user


def test_api_lists_stay_within_a_query_budget(file_root, client, django_assert_max_num_queries):
    pipeline = pipeline_for(file_root)
    for i in range(5):
        make_schedule(pipeline, name=f"s{i}")
    for path in (API, "/api/v1/schedules/schedule-fires/", "/api/v1/schedules/triggers/"):
        with django_assert_max_num_queries(6):
            assert client.get(path).status_code == 200
    assert client.get(API + "?bogus=1").status_code == 400


def test_admin_save_shows_the_next_five_fire_times_in_both_languages(file_root, admin_client):
    pipeline = pipeline_for(file_root)
    data = {
        "pipeline": pipeline.pk,
        "name": "nightly",
        "enabled": "on",
        "kind": "cron",
        "cron": "0 2 * * *",
        "timezone": "Asia/Shanghai",
        "interval_seconds": "",
        "anchor_at_0": "2026-01-01",
        "anchor_at_1": "00:00:00",
        "overlap": "skip",
        "catchup": "latest",
        "catchup_limit": "10",
        "parameters": "{}",
        "fires-TOTAL_FORMS": "0",
        "fires-INITIAL_FORMS": "0",
    }
    page = admin_client.post(reverse("admin:schedules_schedule_add"), data, follow=True)
    assert page.status_code == 200
    text = page.content.decode()
    assert "Next 5 fire times:" in text and "02:00:00 CST" in text, text[:3000]
    schedule = Schedule.objects.get()
    bad = dict(data, cron="0 25 * * *", name="bad")
    page = admin_client.post(reverse("admin:schedules_schedule_add"), bad)
    assert page.status_code == 200 and "Invalid cron expression" in page.content.decode()
    with translation.override("zh-hans"):
        page = admin_client.post(
            reverse("admin:schedules_schedule_change", args=[schedule.pk]),
            dict(data, name="nightly2"),
            follow=True,
            HTTP_ACCEPT_LANGUAGE="zh-hans",
        )
    assert "接下来 5 次触发时间：" in page.content.decode()
    # The pipeline list shows its next run time and last scheduled outcome.
    page = admin_client.get(reverse("admin:pipelines_pipeline_changelist"), HTTP_ACCEPT_LANGUAGE="en")
    assert "next scheduled run" in page.content.decode().lower()
    page = admin_client.get(reverse("admin:pipelines_pipeline_change", args=[pipeline.pk]), HTTP_ACCEPT_LANGUAGE="en")
    assert "nightly2" in page.content.decode()


def test_admin_pause_and_resume_actions(file_root, admin_client):
    s = make_schedule(pipeline_for(file_root))
    url = reverse("admin:schedules_schedule_changelist")
    admin_client.post(url, {"action": "pause_schedules", "_selected_action": [s.pk]})
    s.refresh_from_db()
    assert not s.enabled
    admin_client.post(url, {"action": "resume_schedules", "_selected_action": [s.pk]})
    s.refresh_from_db()
    assert s.enabled
    assert admin_client.get(reverse("admin:schedules_schedule_change", args=[s.pk])).status_code == 200


def test_the_command_creates_lists_previews_pauses_and_refuses_bad_input(file_root, capsys):
    pipeline = pipeline_for(file_root)
    type(pipeline).objects.filter(pk=pipeline.pk).update(parameters_schema=STRICT_SCHEMA)
    call_command("schedule", "create", pipeline.name, "nightly", "--cron", "0 2 * * *", "--timezone", "Asia/Shanghai")
    out = capsys.readouterr().out
    assert "Next 5 fire times:" in out and "02:00:00+08:00" in out
    s = Schedule.objects.get()
    call_command("schedule", "pause", str(s.pk))
    call_command("schedule", "list")
    assert "paused" in capsys.readouterr().out
    call_command("schedule", "resume", str(s.pk))
    s.refresh_from_db()
    assert s.enabled
    with pytest.raises(CommandError, match="timezone"):
        call_command("schedule", "create", pipeline.name, "x", "--cron", "0 2 * * *", "--timezone", "Nowhere/City")
    with pytest.raises(CommandError, match="cron"):
        call_command("schedule", "create", pipeline.name, "y", "--cron", "0 2 * *")
    with pytest.raises(CommandError, match="parameters"):
        call_command("schedule", "create", pipeline.name, "z", "--every", "60", "--parameters", '{"a": 1}')
    with pytest.raises(CommandError, match="No schedule"):
        call_command("schedule", "preview", "9999")
    assert Schedule.objects.count() == 1
