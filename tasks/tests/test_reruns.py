"""Re-run from a stage: the stages before it are reused from the finished run's checkpoints, not redone,
and the output equals a full run's; bad requests are refused with the problem named."""

from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from pipelines.models import PipelineStage
from tasks import engine
from tasks.choices import BatchStatus, RunEventKind, RunStatus
from tasks.models import Batch, RunEvent, StageRun, TaskRun
from tasks.reruns import run_rerun_from_stage
from tasks.services import RunRefused, run_start
from tasks.tests.factories import STANDARD_STAGES, make_pipeline, make_records, published, reference_output

pytestmark = pytest.mark.django_db

# A per-record stage right after a global one: its inputs are the global stage's checkpointed parts.
AFTER_GLOBAL = [
    ("filter", "filter", {"rules": [{"type": "length", "field": "text", "min": 8}]}),
    ("dedup", "dedup", {"fields": ["text"]}),
    ("clean", "clean", {"steps": [{"op": "normalize_whitespace"}, {"op": "strip_html"}]}),
    ("publish", "publish", {}),
]


@pytest.fixture
def executed(monkeypatch):
    """The stage keys the engine executes (read, per-record, global), in order."""
    seen: list[str] = []
    for name in ("_do_read", "_do_per_record", "_do_global"):
        original = getattr(engine, name)

        def spy(spec, stage, *args, _original=original, **kwargs):
            seen.append(stage.key)
            return _original(spec, stage, *args, **kwargs)

        monkeypatch.setattr(engine, name, spy)
    return seen


def _full_run(doorbell, pipeline):
    run = run_start(pipeline=pipeline, actor=None)
    doorbell.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, run.status_reason
    return run


@pytest.mark.parametrize(
    ("stages", "stage", "reused"),
    [
        (STANDARD_STAGES, "dedup", ["read", "filter", "clean"]),
        (AFTER_GLOBAL, "clean", ["read", "filter", "dedup"]),
    ],
    ids=["global-stage-3", "per-record-stage-3"],
)
def test_rerun_from_stage_3_equals_a_full_run_without_redoing_the_stages_before(
    doorbell, file_root, executed, stages, stage, reused
):
    records = make_records(640)
    pipeline = make_pipeline(file_root, records=records, stages=stages, batch_size=50)
    first = _full_run(doorbell, pipeline)
    assert published(first) == reference_output(records, stages)
    executed.clear()

    rerun = run_rerun_from_stage(run=first, stage=stage, actor=None)
    assert rerun.task_id == first.task_id and rerun.number == first.number + 1
    assert rerun.trigger == {"kind": "rerun", "run": str(first.pk), "run_number": 1, "from_stage": stage}
    doorbell.drain()
    rerun.refresh_from_db()
    assert rerun.status == RunStatus.SUCCEEDED, rerun.status_reason
    # Same output as the full run (and as the plain-loop reference), in a new version.
    assert published(rerun) == published(first) == reference_output(records, stages)
    assert rerun.output_version_id != first.output_version_id
    # Nothing before the chosen stage ran again: its rows are copies that no worker claimed.
    assert not set(executed) & set(reused), executed
    assert stage in executed
    for sr in StageRun.objects.filter(run=rerun, key__in=reused):
        old = StageRun.objects.get(run=first, key=sr.key)
        assert sr.status == "succeeded" and (sr.records_in, sr.records_out) == (old.records_in, old.records_out)
        batches = Batch.objects.filter(stage_run=sr)
        assert batches.count() == Batch.objects.filter(stage_run=old, status=BatchStatus.SUCCEEDED).count()
        assert all("reused_from" in b.input_ref and b.lease_owner == "" for b in batches)
    assert (rerun.records_in, rerun.records_out, rerun.records_filtered) == (
        first.records_in,
        first.records_out,
        first.records_filtered,
    )
    assert RunEvent.objects.filter(run=rerun, kind=RunEventKind.SUCCEEDED).count() == 1


def test_it_names_the_problem_for_bad_requests(doorbell, file_root):
    pipeline = make_pipeline(file_root, records=make_records(200), batch_size=50)
    active = run_start(pipeline=pipeline, actor=None)
    with pytest.raises(RunRefused) as exc:
        run_rerun_from_stage(run=active, stage="dedup", actor=None)
    assert "has not finished" in exc.value.message_dict["run"][0]
    doorbell.drain()
    active.refresh_from_db()

    with pytest.raises(RunRefused) as exc:
        run_rerun_from_stage(run=active, stage="translate", actor=None)
    message = exc.value.message_dict["stage"][0]
    assert "translate is not in pipeline" in message and "read, filter, clean, dedup, publish" in message

    with pytest.raises(RunRefused) as exc:  # clean ran fused with filter: its input was never written
        run_rerun_from_stage(run=active, stage="clean", actor=None)
    assert "Nothing checkpointed before stage clean" in exc.value.message_dict["stage"][0]

    PipelineStage.objects.filter(pipeline=pipeline, key="filter").update(
        config={"rules": [{"type": "length", "field": "text", "min": 20}]}
    )
    with pytest.raises(RunRefused) as exc:
        run_rerun_from_stage(run=active, stage="dedup", actor=None)
    assert "Stage filter changed since run" in exc.value.message_dict["stage"][0]
    assert TaskRun.objects.count() == 1


def test_a_failed_run_reruns_from_its_failed_stage_but_not_past_it(doorbell, file_root, tmp_path, monkeypatch):
    # One dedup unit: it completes (a checkpoint) before the stage after it starts and fails.
    monkeypatch.setattr(engine, "PARTITIONED_ENABLED", False)
    switch = tmp_path / "fail-on"
    switch.touch()
    stages = [
        ("dedup", "dedup", {"fields": ["text"]}),
        ("flaky", "test_fail", {"fail_batches": [1], "switch": str(switch)}),
        ("publish", "publish", {}),
    ]
    from tasks.tests import kinds_for_tests

    kinds_for_tests.register()
    records = make_records(200, unique=True)
    pipeline = make_pipeline(file_root, records=records, stages=stages, batch_size=50, max_batch_attempts=1)
    run = run_start(pipeline=pipeline, actor=None)
    doorbell.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED
    with pytest.raises(RunRefused) as exc:
        run_rerun_from_stage(run=run, stage="publish", actor=None)
    assert "stage flaky of run" in exc.value.message_dict["stage"][0] and "did not finish" in str(exc.value)
    switch.unlink()
    rerun = run_rerun_from_stage(run=run, stage="flaky", actor=None)
    doorbell.drain()
    rerun.refresh_from_db()
    assert rerun.status == RunStatus.SUCCEEDED, rerun.status_reason
    assert published(rerun) == records


def test_api_and_command(doorbell, file_root, admin_user):
    pipeline = make_pipeline(file_root, records=make_records(120), batch_size=50)
    first = _full_run(doorbell, pipeline)
    client = APIClient()
    client.force_authenticate(admin_user)
    bad = client.post(f"/api/v1/tasks/runs/{first.pk}/rerun/", {"stage": "nope"}, format="json")
    assert bad.status_code == 400 and "nope is not in pipeline" in bad.content.decode()
    ok = client.post(f"/api/v1/tasks/runs/{first.pk}/rerun/", {"stage": "dedup"}, format="json")
    assert ok.status_code == 201, ok.content
    assert ok.json()["trigger"]["from_stage"] == "dedup"
    doorbell.drain()
    assert TaskRun.objects.get(pk=ok.json()["id"]).status == RunStatus.SUCCEEDED

    out = StringIO()
    call_command("rerun", str(first.pk), "--from-stage", "dedup", stdout=out)
    assert "dedup" in out.getvalue()
    doorbell.drain()
    assert TaskRun.objects.filter(task=first.task, status=RunStatus.SUCCEEDED).count() == 3
    with pytest.raises(CommandError, match="nope is not in pipeline"):
        call_command("rerun", str(first.pk), "--from-stage", "nope")


def test_admin_action_asks_for_the_stage_then_reruns(doorbell, file_root, admin_client):
    pipeline = make_pipeline(file_root, records=make_records(120), batch_size=50)
    first = _full_run(doorbell, pipeline)
    url = "/tasks/taskrun/"
    page = admin_client.post(url, {"action": "run_rerun_action", "_selected_action": [first.pk]})
    assert page.status_code == 200 and "read → filter → clean → dedup → publish" in page.content.decode()
    body = {"action": "run_rerun_action", "_selected_action": [first.pk], "apply": "1"}
    refused = admin_client.post(url, {**body, "stage": "clean"}, follow=True)
    assert "Nothing checkpointed before stage clean" in refused.content.decode()
    assert TaskRun.objects.count() == 1
    done = admin_client.post(url, {**body, "stage": "dedup"}, follow=True)
    assert done.status_code == 200
    rerun = TaskRun.objects.exclude(pk=first.pk).get()
    assert rerun.trigger["from_stage"] == "dedup"
    doorbell.drain()
    rerun.refresh_from_db()
    assert rerun.status == RunStatus.SUCCEEDED and published(rerun) == published(first)


# ---- Quarantined records ----------------------------------------------------------------------
QUARANTINING = [
    ("clean", "clean", {"steps": [{"op": "normalize_whitespace"}, {"op": "strip_html"}]}),
    ("filter", "filter", {"on_fail": "quarantine", "rules": [{"type": "length", "field": "text", "min": 8}]}),
    ("publish", "publish", {}),
]
FIXED_FILTER = {"on_fail": "quarantine", "rules": [{"type": "length", "field": "text", "min": 3}]}


def test_reprocessing_runs_only_the_quarantined_records_from_their_stage(doorbell, file_root, executed):
    records = make_records(400)
    pipeline = make_pipeline(file_root, records=records, stages=QUARANTINING, batch_size=64)
    first = _full_run(doorbell, pipeline)
    from tasks.models import QuarantinedRecord

    quarantined = [
        q.record
        for q in QuarantinedRecord.objects.filter(stage_run__run=first).order_by("batch__index", "record_index")
    ]
    assert len(quarantined) == first.records_failed > 0
    # The operator fixes the stage (a looser rule), then reprocesses the quarantined records only.
    PipelineStage.objects.filter(pipeline=pipeline, key="filter").update(config=FIXED_FILTER)
    executed.clear()
    again = run_rerun_quarantined(first)
    doorbell.drain()
    again.refresh_from_db()
    assert again.status == RunStatus.SUCCEEDED, again.status_reason
    assert again.trigger["kind"] == "quarantine" and again.trigger["records"] == len(quarantined)
    assert set(executed) == {"filter", "publish"}  # no read, no clean: the records are what entered filter
    assert again.records_in == len(quarantined)
    expected = reference_output(quarantined, [("filter", "filter", FIXED_FILTER)])
    assert len(expected) > 0 and published(again) == expected
    still = StageRun.objects.get(run=again, key="filter")
    assert still.records_in == len(quarantined) and still.records_failed == len(quarantined) - len(expected)


def run_rerun_quarantined(run, **kw):
    from tasks.reruns import run_reprocess_quarantined

    return run_reprocess_quarantined(run=run, actor=None, **kw)


def test_reprocessing_names_the_problem(doorbell, file_root):
    clean = make_pipeline(file_root, records=make_records(50, unique=True), name="clean", batch_size=50)
    done = _full_run(doorbell, clean)
    with pytest.raises(RunRefused) as exc:
        run_rerun_quarantined(done)
    assert "has no quarantined records" in exc.value.message_dict["run"][0]
    pipeline = make_pipeline(file_root, records=make_records(200), stages=QUARANTINING, name="q", batch_size=50)
    active = run_start(pipeline=pipeline, actor=None)
    with pytest.raises(RunRefused) as exc:
        run_rerun_quarantined(active)
    assert "has not finished" in exc.value.message_dict["run"][0]
    doorbell.drain()
    with pytest.raises(RunRefused) as exc:
        run_rerun_quarantined(active, stage="clean")
    assert "quarantined no record at stage clean (it did at: filter (" in exc.value.message_dict["stage"][0]
    with pytest.raises(RunRefused) as exc:
        run_rerun_quarantined(active, stage="nope")
    assert "nope is not in pipeline" in exc.value.message_dict["stage"][0]


def test_reprocessing_from_the_api_the_command_and_the_admin(doorbell, file_root, admin_user, admin_client):
    pipeline = make_pipeline(file_root, records=make_records(200), stages=QUARANTINING, batch_size=50)
    first = _full_run(doorbell, pipeline)
    client = APIClient()
    client.force_authenticate(admin_user)
    ok = client.post(f"/api/v1/tasks/runs/{first.pk}/reprocess-quarantined/", {}, format="json")
    assert ok.status_code == 201, ok.content
    assert ok.json()["trigger"]["kind"] == "quarantine"
    bad = client.post(f"/api/v1/tasks/runs/{first.pk}/reprocess-quarantined/", {"stage": "clean"}, format="json")
    assert bad.status_code == 400 and "quarantined no record at stage clean" in bad.content.decode()
    out = StringIO()
    call_command("rerun", str(first.pk), "--quarantined", stdout=out)
    assert "filter" in out.getvalue()
    admin_client.post("/tasks/taskrun/", {"action": "run_reprocess_quarantined_action", "_selected_action": [first.pk]})
    doorbell.drain()
    runs = TaskRun.objects.filter(trigger__kind="quarantine")
    assert runs.count() == 3 and all(r.status == RunStatus.SUCCEEDED for r in runs)


def test_a_rerun_past_a_qc_stage_is_refused(doorbell, file_root):
    from pipelines.tests.factories import QCPolicyFactory

    stages = [
        ("filter", "filter", {"rules": [{"type": "length", "field": "text", "min": 8}]}),
        ("qc", "qc", {}),
        ("publish", "publish", {}),
    ]
    pipeline = make_pipeline(file_root, records=make_records(100), stages=stages, name="qc", batch_size=50)
    pipeline.qc_policy = QCPolicyFactory(aql=2.5, require_review=False)
    pipeline.save()
    first = _full_run(doorbell, pipeline)
    with pytest.raises(RunRefused) as exc:
        run_rerun_from_stage(run=first, stage="publish", actor=None)
    assert "Stage qc (QC) comes before publish" in exc.value.message_dict["stage"][0]
    rerun = run_rerun_from_stage(run=first, stage="qc", actor=None)
    doorbell.drain()
    rerun.refresh_from_db()
    assert rerun.status == RunStatus.SUCCEEDED, rerun.status_reason
    assert published(rerun) == published(first)
