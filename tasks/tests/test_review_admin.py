"""The review queue page: one sampled record at a time, a/r/n keyboard shortcuts, reason and reviewer recorded."""

import pytest
from django.urls import reverse

from pipelines.tests.factories import QCPolicyFactory
from tasks.choices import LotDecision, ReviewDecision
from tasks.qc import qc_stage_run

from .qc_helpers import make_run, qc_stage, records

pytestmark = pytest.mark.django_db


@pytest.fixture
def lot():
    run = make_run(qc_policy=QCPolicyFactory(aql=6.5, sample_size=3, acceptance_number=0))
    return qc_stage_run(stage_run=qc_stage(run), records_iter=iter([records(25)]))


def test_review_page_renders_the_next_record_with_keyboard_shortcuts(client, admin_user, lot):
    client.force_login(admin_user)
    page = client.get(reverse("admin:tasks_reviewitem_review") + f"?lot={lot.pk}")
    assert page.status_code == 200
    html = page.content.decode()
    first = lot.items.order_by("sequence").first()
    assert first.record["text"] in html
    assert 'id="df-accept"' in html and 'id="df-reject"' in html and 'id="df-next"' in html
    assert 'key === "a"' in html and 'key === "r"' in html and 'key === "n"' in html
    assert "Sample n=3, acceptance number Ac=0" in html


def test_review_page_records_decisions_reasons_and_reviewer_then_decides_the_lot(client, admin_user, lot):
    client.force_login(admin_user)
    items = list(lot.items.order_by("sequence"))
    url = reverse("admin:tasks_reviewitem_review_item", args=[items[0].pk])
    missing_reason = client.post(url, {"decision": "rejected", "reason": ""})
    assert missing_reason.status_code == 200 and b"Say why" in missing_reason.content
    moved = client.post(url, {"decision": "rejected", "reason": "toxic"})
    assert moved.status_code == 302 and moved["Location"].endswith(f"/review/{items[1].pk}/")
    for item in items[1:]:
        client.post(reverse("admin:tasks_reviewitem_review_item", args=[item.pk]), {"decision": "accepted"})
    items[0].refresh_from_db()
    assert (
        items[0].decision == ReviewDecision.REJECTED and items[0].reason == "toxic" and items[0].reviewer == admin_user
    )
    lot.refresh_from_db()
    assert lot.decision == LotDecision.REJECTED
    done = client.get(reverse("admin:tasks_reviewitem_review") + f"?lot={lot.pk}")
    assert b"No sampled records of lot" in done.content and b"No sampled records are waiting" in done.content


def test_lot_admin_lists_and_override_action_asks_for_a_reason(client, admin_user, lot):
    client.force_login(admin_user)
    assert client.get(reverse("admin:tasks_qclot_changelist")).status_code == 200
    assert client.get(reverse("admin:tasks_qclot_change", args=[lot.pk])).status_code == 200
    form = client.post(
        reverse("admin:tasks_qclot_changelist"), {"action": "override_lots", "_selected_action": [lot.pk]}
    )
    assert form.status_code == 200 and b"override reason" in form.content.lower()
    client.post(
        reverse("admin:tasks_qclot_changelist"),
        {"action": "override_lots", "_selected_action": [lot.pk], "apply": "1", "reason": "pilot lot"},
    )
    lot.refresh_from_db()
    assert lot.decision == LotDecision.OVERRIDDEN and lot.override_reason == "pilot lot"


def test_dataset_version_admin_offers_archive(client, admin_user, operator_user):
    from catalog.models import DatasetVersion
    from tasks.publish import publish_run
    from tasks.qc import review_item_decide

    run = make_run(qc_policy=QCPolicyFactory(aql=6.5, sample_size=1, acceptance_number=0))
    data = records(10)
    lot = qc_stage_run(stage_run=qc_stage(run), records_iter=iter([data]))
    review_item_decide(item=lot.items.get(), actor=operator_user, decision="accepted")
    version = publish_run(run=run, actor=operator_user, chunks=iter([data]))
    client.force_login(admin_user)
    url = reverse("admin:catalog_datasetversion_changelist")
    client.post(url, {"action": "archive_versions", "_selected_action": [version.pk]}, follow=True)
    assert DatasetVersion.objects.get(pk=version.pk).status == "archived"


def test_a_viewer_cannot_decide_in_the_review_queue(client, viewer_user, local_auth, lot):
    viewer_user.is_staff = True
    viewer_user.save()
    client.force_login(viewer_user)
    item = lot.items.order_by("sequence").first()
    response = client.post(reverse("admin:tasks_reviewitem_review_item", args=[item.pk]), {"decision": "accepted"})
    assert response.status_code == 403
    item.refresh_from_db()
    assert item.decision == ReviewDecision.PENDING
