"""The console says why a run waits, scopes review to one lot, and shows published data to people."""

import json
import re

import pytest
from django.urls import reverse

from dataflare_portal.core.models import AuditLogEntry
from pipelines.tests.factories import QCPolicyFactory
from tasks.admin_review import record_rows
from tasks.choices import LotDecision, RunStatus
from tasks.models import TaskRun
from tasks.publish import publish_run
from tasks.qc import qc_stage_run, review_item_decide

from .qc_helpers import make_run, qc_stage, records

pytestmark = pytest.mark.django_db


def _lot(n_records=25, sample=2):
    run = make_run(qc_policy=QCPolicyFactory(aql=6.5, sample_size=sample, acceptance_number=0))
    TaskRun.objects.filter(pk=run.pk).update(status=RunStatus.WAITING)
    run.refresh_from_db()
    return run, qc_stage_run(stage_run=qc_stage(run), records_iter=iter([records(n_records)]))


# ---- Say why -------------------------------------------------------------------------------------
def test_it_says_a_run_waits_for_its_lot_and_links_to_that_lots_review(client, admin_user):
    run, lot = _lot()
    client.force_login(admin_user)
    page = client.get(reverse("tasks:run-detail", args=[run.pk])).content.decode()
    review_url = reverse("admin:tasks_reviewitem_review") + f"?lot={lot.pk}"
    assert f"waits for the review of QC lot {lot.pk}" in page
    assert f'href="{review_url}" id="df-run-unblock"' in page
    # The status badge is styled by its colour class, not by the raw status value.
    assert 'class="df-badge df-badge-warn" id="df-run-status"' in page


def test_it_names_the_failed_stage_and_offers_to_retry_it(client, admin_user):
    run = make_run()
    stage = run.stage_runs.order_by("position")[1]
    stage.status, stage.last_error = "failed", "boom: the regex did not compile"
    stage.save()
    TaskRun.objects.filter(pk=run.pk).update(status=RunStatus.FAILED)
    client.force_login(admin_user)
    page = client.get(reverse("tasks:run-detail", args=[run.pk])).content.decode()
    assert "boom: the regex did not compile" in page
    assert f"Retry stage {stage.key}" in page and f'value="{stage.pk}"' in page


def test_cancel_asks_for_confirmation_first(client, admin_user):
    run, _lot_ = _lot()
    client.force_login(admin_user)
    url = reverse("tasks:run-action", args=[run.pk, "cancel"])
    asked = client.post(url)
    assert asked.status_code == 200 and b'name="confirm" value="yes"' in asked.content
    run.refresh_from_db()
    assert run.status == RunStatus.WAITING
    done = client.post(url, {"confirm": "yes"})
    assert done.status_code == 302
    run.refresh_from_db()
    assert run.status in (RunStatus.CANCELLING, RunStatus.CANCELLED)


# ---- Review scoped to a lot ------------------------------------------------------------------------
def test_finishing_a_lot_never_moves_on_to_another_lot(client, admin_user):
    _run_a, lot_a = _lot(sample=1)
    _run_b, lot_b = _lot(sample=1)
    client.force_login(admin_user)
    only = lot_a.items.get()
    response = client.post(
        reverse("admin:tasks_reviewitem_review_item", args=[only.pk]), {"decision": "accepted", "reason": ""}
    )
    assert response.status_code == 302
    assert response["Location"] == reverse("admin:tasks_reviewitem_review") + f"?lot={lot_a.pk}"
    page = client.get(response["Location"]).content.decode()
    # The other lot is offered as an explicit choice, not opened.
    assert f"?lot={lot_b.pk}" in page and "No sampled records of lot" in page
    assert lot_b.items.get().record["text"] not in page


def test_the_review_page_without_a_lot_asks_which_lot(client, admin_user):
    _run, lot = _lot()
    client.force_login(admin_user)
    page = client.get(reverse("admin:tasks_reviewitem_review")).content.decode()
    assert "Choose the lot to review." in page and f"?lot={lot.pk}" in page
    assert 'id="df-accept"' not in page


def test_the_review_list_filters_by_lot_and_run_and_shows_the_decision(client, admin_user):
    run_a, lot_a = _lot()
    _lot()
    client.force_login(admin_user)
    url = reverse("admin:tasks_reviewitem_changelist")
    by_lot = client.get(url, {"lot__id__exact": lot_a.pk})
    assert by_lot.status_code == 200
    items_a = {str(i.pk) for i in lot_a.items.all()}
    body = by_lot.content.decode()
    assert _listed(body) == items_a
    assert body.count('class="field-decision_badge"') == len(items_a)
    by_run = client.get(url, {"lot__stage_run__run__id__exact": str(run_a.pk)})
    assert by_run.status_code == 200 and _listed(by_run.content.decode()) == items_a


def _listed(body: str) -> set[str]:
    """The review items a change list shows (their change links)."""
    return set(re.findall(r'class="field-record_key"><a href="/tasks/reviewitem/(\d+)/change/', body))


def test_records_render_as_json_not_python_repr():
    rows = dict(record_rows({"meta": {"ok": True, "tags": ["a"]}, "text": "plain", "score": None}))
    assert rows["meta"] == json.dumps({"ok": True, "tags": ["a"]}, indent=2)
    assert rows["text"] == "plain" and rows["score"] == "null"


# ---- Published data you can see ------------------------------------------------------------------------
@pytest.fixture
def version(operator_user):
    run = make_run(qc_policy=QCPolicyFactory(aql=6.5, sample_size=1, acceptance_number=0))
    data = records(12)
    lot = qc_stage_run(stage_run=qc_stage(run), records_iter=iter([data]))
    review_item_decide(item=lot.items.get(), actor=operator_user, decision="accepted")
    return publish_run(run=run, actor=operator_user, chunks=iter([data]))


def test_the_version_page_shows_lineage_preview_and_a_download(client, admin_user, version):
    client.force_login(admin_user)
    page = client.get(reverse("tasks:version-detail", args=[version.pk])).content.decode()
    run = TaskRun.objects.get(pk=version.run_id)
    assert reverse("tasks:run-detail", args=[run.pk]) in page
    if version.template_version_id:
        from pipelines.models import PipelineTemplate

        template = PipelineTemplate.objects.get(pk=version.template_version_id)
        assert f"{template.name} version {template.version}" in page
    assert str(LotDecision(run.stage_runs.get(kind="qc").qc_lot.decision).label) in page
    # The dataset the run read (from the run's snapshot), linked.
    lineage = page[page.index('id="df-lineage"') :]
    source = run.pipeline.input_dataset
    assert f'{reverse("admin:catalog_dataset_change", args=[source.pk])}" translate="no">{source.name}</a>' in lineage
    assert "record number 0 with enough text" in page and 'id="df-version-preview"' in page
    assert reverse("tasks:version-download", args=[version.pk]) in page


def test_the_download_streams_the_published_file_and_is_audited(client, admin_user, version):
    client.force_login(admin_user)
    response = client.get(reverse("tasks:version-download", args=[version.pk]))
    assert response.status_code == 200 and response.streaming
    body = b"".join(response.streaming_content)
    assert len(body) == version.size_bytes
    assert [json.loads(line)["id"] for line in body.decode().splitlines()] == list(range(12))
    assert "attachment" in response["Content-Disposition"]
    assert AuditLogEntry.objects.filter(action="export", object_id=str(version.pk)).exists()


def test_a_viewer_may_see_but_not_download_a_version(client, viewer_user, local_auth, version):
    viewer_user.is_staff = True
    viewer_user.save()
    client.force_login(viewer_user)
    assert client.get(reverse("tasks:version-detail", args=[version.pk])).status_code == 200
    assert client.get(reverse("tasks:version-download", args=[version.pk])).status_code == 403
    assert not AuditLogEntry.objects.filter(action="export", object_id=str(version.pk)).exists()


def test_an_output_datasets_preview_reads_its_latest_version(client, admin_user, version):
    client.force_login(admin_user)
    response = client.get(f"/api/v1/catalog/datasets/{version.dataset_id}/preview/", {"limit": 3})
    assert response.status_code == 200, response.content
    assert [r["id"] for r in response.json()["records"]] == [0, 1, 2]
