"""seed_demo: realistic, valid, idempotent demo data."""

import json

import pytest
from django.apps import apps
from django.core.management import call_command

APP_LABELS = ("core", "auth", "catalog", "pipelines", "tasks", "metrics", "alerts")


def table_counts() -> dict[str, int]:
    return {
        m._meta.label: m._default_manager.count()
        for m in apps.get_models()
        if m._meta.app_label in APP_LABELS and not m._meta.proxy
    }


def seed(**options):
    call_command("seed_demo", verbosity=0, **options)


@pytest.mark.django_db
def test_it_is_idempotent(file_root):
    seed(days=4)
    first = table_counts()
    files = {p.name: p.stat().st_mtime_ns for p in (file_root / "demo").iterdir()}
    seed(days=4)
    assert table_counts() == first
    assert {p.name: p.stat().st_mtime_ns for p in (file_root / "demo").iterdir()} == files


@pytest.mark.django_db
def test_it_creates_the_demo_configuration(file_root):
    from catalog.models import Dataset, DataSource, Project
    from pipelines.models import ModelConfig, Pipeline, PipelineTemplate, QCPolicy

    seed(days=2)
    assert Project.objects.count() == 3
    assert set(DataSource.objects.values_list("kind", flat=True)) == {"file", "postgresql"}
    pg = DataSource.objects.get(kind="postgresql")
    assert pg.config["database"] == "dataflare_demo" and pg.status == "unknown"
    assert {m.model_name for m in ModelConfig.objects.all()} == {"quality-scorer", "token-counter", "annotator"}
    assert QCPolicy.objects.count() == 2
    # Templates come from the templates service: one per pipeline, two versions of web cleaning.
    assert PipelineTemplate.objects.count() == 6
    assert list(PipelineTemplate.objects.filter(name="Web page cleaning").values_list("version", flat=True)) == [2, 1]
    assert Pipeline.objects.get(name="Web page cleaning").template.version == 2
    web = Pipeline.objects.get(name="Web page cleaning")
    kinds = list(web.stages.values_list("kind", flat=True))
    assert kinds == ["read", "clean", "filter", "dedup", "model_inference", "qc", "publish"]
    # Every seeded stage and policy passes the real validation of its kind (upsert ran full_clean too).
    for pipeline in Pipeline.objects.all():
        for stage in pipeline.stages.all():
            stage.full_clean()
    # The input files are real, below an allowed file root, with realistic bilingual records.
    web_in = Dataset.objects.get(name="web_pages_raw")
    path = file_root / "demo" / web_in.location
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == web_in.row_count == 400
    records = [json.loads(line) for line in lines]
    assert {r["lang"] for r in records} == {"zh", "en"}
    assert any("<div" in r["text"] for r in records), "the cleaning stage needs HTML to strip"
    assert (file_root / "demo" / "code_snippets.csv").read_text(encoding="utf-8").startswith("id,repo,path")


@pytest.mark.django_db
def test_it_generates_history_with_live_runs_and_metrics(file_root):
    from metrics.models import BatchEvent, TokenUsage
    from tasks.models import QuarantinedRecord, ReviewItem, StageRun, TaskRun

    seed(days=14)
    statuses = set(TaskRun.objects.values_list("status", flat=True))
    assert {"succeeded", "waiting"} <= statuses
    assert statuses & {"failed", "cancelled"}
    assert (
        TaskRun.objects.filter(status="failed").exclude(status_reason="").count()
        == TaskRun.objects.filter(status="failed").count()
    )
    assert ReviewItem.objects.filter(decision="pending").exists()
    # The live runs are real runs the engine executes (queued batches, a snapshot), not frozen rows.
    live = TaskRun.objects.filter(status__in=["pending", "running"])
    assert sorted(r.pipeline.name for r in live) == ["Code dedup and token count", "Web page cleaning"]
    for run in live:
        assert run.pipeline_snapshot and run.stage_runs.exists()
    # Nothing claims to be running without work a worker could do.
    assert not StageRun.objects.filter(status="running", batches__isnull=True).exists()
    # Left alone for 25 minutes (no worker), the demo raises no throughput drop by itself.
    import datetime as dt

    from django.utils import timezone

    from alerts.models import Alert
    from alerts.services import alerts_evaluate

    alerts_evaluate(now=timezone.now() + dt.timedelta(minutes=25))
    assert not Alert.objects.filter(rule__kind="throughput_drop").exists()
    # Run totals agree with their stage runs and with the raw token events.
    run = TaskRun.objects.filter(status="succeeded", pipeline__name="Chat SFT annotation").first()
    first_stage = run.stage_runs.order_by("position").first()
    assert run.records_in == first_stage.records_in > 0
    tokens = sum(TokenUsage.objects.filter(run_id=run.id).values_list("prompt_tokens", flat=True))
    assert tokens == run.prompt_tokens > 0
    assert BatchEvent.objects.filter(run_id=run.id, stage_template="read").count() == first_stage.total_batches
    assert run.output_version.status in {"published", "archived"}
    assert TokenUsage.objects.exclude(status_code="OK").exists()
    assert QuarantinedRecord.objects.exists()


@pytest.mark.django_db
def test_it_seeds_live_runs_that_no_reaper_pass_can_complete_or_publish(file_root, monkeypatch):
    """A fabricated live run has no workspace files: completing it would publish an empty version.

    The runs in flight are real runs (Command._live_runs): their batches are dispatched to workers, as
    any run's are. Only the fabricated one (waiting for QC review) must be left alone by the reaper.
    """
    from catalog.models import DatasetVersion
    from tasks import engine
    from tasks.models import Batch, StageRun, TaskRun
    from tasks.services import reap

    sent = []
    monkeypatch.setattr(engine, "dispatch", sent.extend)
    monkeypatch.setattr(engine, "dispatch_on_commit", sent.extend)
    seed(days=2)
    live = set(TaskRun.objects.filter(status__in=["running", "waiting"]).values_list("pk", flat=True))
    assert len(live) == 3
    fabricated = set(TaskRun.objects.filter(pk__in=live, status="waiting").values_list("pk", flat=True))
    real = live - fabricated
    assert len(real) == 2 and len(fabricated) == 1
    versions, batches = DatasetVersion.objects.count(), Batch.objects.count()
    reap()
    reap()
    dispatched_runs = set(
        Batch.objects.filter(pk__in=[b for b, _q, _g in sent]).values_list("stage_run__run_id", flat=True)
    )
    assert dispatched_runs == real
    assert Batch.objects.count() == batches and DatasetVersion.objects.count() == versions
    assert set(TaskRun.objects.filter(pk__in=fabricated).values_list("status", flat=True)) == {"waiting"}
    assert set(TaskRun.objects.filter(pk__in=real).values_list("status", flat=True)) <= {"running", "waiting"}
    # The review run waits where the engine would: QC done, publish waiting with its unit not done.
    review = TaskRun.objects.get(pk__in=live, status="waiting")
    stages = {s.kind: s for s in StageRun.objects.filter(run=review)}
    assert stages["qc"].status == "succeeded" and stages["publish"].status == "waiting"
    assert stages["publish"].batches_done == 0


@pytest.mark.django_db
def test_reset_history_regenerates_without_touching_configuration(file_root):
    from pipelines.models import Pipeline
    from tasks.models import TaskRun

    seed(days=3)
    pipeline_ids = set(Pipeline.objects.values_list("pk", flat=True))
    old_runs = set(TaskRun.objects.values_list("pk", flat=True))
    seed(days=3, reset_history=True)
    assert set(Pipeline.objects.values_list("pk", flat=True)) == pipeline_ids
    assert TaskRun.objects.exists()
    # Same seed: the regenerated runs have the same deterministic ids, none left over twice.
    assert TaskRun.objects.count() == len(set(TaskRun.objects.values_list("pk", flat=True)))
    assert old_runs


@pytest.mark.django_db
def test_it_creates_roles_and_the_local_admin(local_auth):
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group

    seed(days=1, admin_password="demo-Secret-42")
    assert set(Group.objects.values_list("name", flat=True)) >= {"viewer", "operator", "admin"}
    admin = get_user_model().objects.get(username="admin")
    assert admin.is_superuser and admin.check_password("demo-Secret-42")


@pytest.mark.django_db
def test_it_creates_no_admin_without_a_password(local_auth):
    from django.contrib.auth import get_user_model

    seed(days=1)
    assert not get_user_model().objects.filter(username="admin").exists()


@pytest.mark.django_db
def test_it_takes_the_admin_password_from_settings(local_auth):
    from django.contrib.auth import get_user_model

    local_auth.DEMO_ADMIN_PASSWORD = "from-the-Env-7"
    seed(days=1)
    assert get_user_model().objects.get(username="admin").check_password("from-the-Env-7")
