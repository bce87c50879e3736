"""QC inside a real run: the engine builds the lot, publish waits for review, then publishes once accepted."""

from datetime import timedelta

import pytest
from django.utils import timezone

from catalog.models import DatasetVersion
from pipelines.models import PipelineStage
from pipelines.tests.factories import QCPolicyFactory
from tasks.choices import BatchStatus, LotDecision, RunStatus
from tasks.models import Batch, QCLot
from tasks.qc import review_item_decide
from tasks.services import reap, run_start
from tasks.tests.factories import make_pipeline, make_records

pytestmark = pytest.mark.django_db

STAGES = [
    ("filter", "filter", {"rules": [{"type": "length", "field": "text", "min": 8}]}),
    ("qc", "qc", {}),
    ("publish", "publish", {}),
]


def _run(doorbell, file_root, policy, name):
    pipeline = make_pipeline(file_root, records=make_records(300), stages=STAGES, name=name, batch_size=50)
    pipeline.qc_policy = policy
    pipeline.save()
    run = run_start(pipeline=pipeline, actor=None)
    doorbell.drain()
    run.refresh_from_db()
    return run


def test_publish_waits_for_review_then_publishes(doorbell, file_root, operator_user):
    run = _run(doorbell, file_root, QCPolicyFactory(aql=2.5, seed=3), "reviewed")
    lot = QCLot.objects.get(stage_run__run=run)
    assert run.status == RunStatus.WAITING and lot.decision == LotDecision.PENDING
    assert lot.lot_size == run.stage_runs.get(kind="filter").records_out
    assert Batch.objects.get(stage_run__run=run, stage_run__kind="publish").status == BatchStatus.WAITING
    assert not DatasetVersion.objects.filter(run_id=run.pk).exclude(status="failed").exists()
    for item in lot.items.filter(decision="pending"):
        review_item_decide(item=item, actor=operator_user, decision="accepted")
    lot.refresh_from_db()
    assert lot.decision == LotDecision.ACCEPTED
    reap(now=timezone.now() + timedelta(seconds=1))
    doorbell.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, run.status_reason
    version = DatasetVersion.objects.get(pk=run.output_version_id)
    assert version.qc_decision["decision"] == "accepted" and version.qc_decision["lot_id"] == lot.pk


def test_no_review_policy_publishes_in_one_go(doorbell, file_root):
    run = _run(doorbell, file_root, QCPolicyFactory(aql=2.5, require_review=False), "auto")
    assert run.status == RunStatus.SUCCEEDED, run.status_reason
    assert DatasetVersion.objects.get(pk=run.output_version_id).qc_decision["decision"] == "accepted"
    assert PipelineStage.objects.filter(pipeline=run.pipeline, kind="qc").exists()
