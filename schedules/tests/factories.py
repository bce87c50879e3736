"""Schedules over the engine tests' pipeline (a JSONL file in, filter/clean/dedup, a published version out)."""

from datetime import UTC, datetime

from schedules.models import DatasetTrigger, Schedule
from schedules.services import schedule_save, trigger_save
from tasks.tests.factories import make_pipeline, make_records


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def pipeline_for(root, name: str = "sched", n: int = 60, **kwargs):
    return make_pipeline(root, records=make_records(n), name=name, **kwargs)


def make_schedule(pipeline, *, now=None, name: str = "every minute", **fields) -> Schedule:
    defaults = {"kind": "cron", "cron": "* * * * *", "timezone": "UTC"}
    defaults.update(fields)
    return schedule_save(schedule=Schedule(pipeline=pipeline, name=name, **defaults), actor=None, now=now)


def make_trigger(pipeline, dataset, **fields) -> DatasetTrigger:
    return trigger_save(trigger=DatasetTrigger(pipeline=pipeline, dataset=dataset, **fields), actor=None)


def demo_rows() -> dict:
    """A schedule, a fire, a trigger and a trigger fire over the demo data (for the permission policy test)."""
    from django.utils import timezone

    from catalog.models import Dataset, DatasetVersion
    from pipelines.models import Pipeline
    from schedules.models import ScheduleFire, TriggerFire

    pipeline = Pipeline.objects.order_by("pk").first()
    schedule = make_schedule(pipeline, name="policy check")
    ScheduleFire.objects.create(schedule=schedule, slot=timezone.now().replace(microsecond=0), outcome="skipped")
    version = DatasetVersion.objects.filter(status="published").order_by("pk").first()
    trigger = make_trigger(pipeline, version.dataset) if version.dataset_id != pipeline.output_dataset_id else None
    if trigger is None:
        other = Dataset.objects.filter(project=pipeline.project).exclude(pk=pipeline.output_dataset_id).first()
        trigger = make_trigger(pipeline, other)
    TriggerFire.objects.create(trigger=trigger, dataset_version=version, outcome="failed")
    return {"schedule": schedule, "trigger": trigger}


def fresh_trigger():
    """A trigger nothing refers to, on a dataset of its pipeline's project that has none yet."""
    from catalog.models import Dataset
    from pipelines.models import Pipeline

    for pipeline in Pipeline.objects.order_by("pk"):
        taken = DatasetTrigger.objects.filter(pipeline=pipeline).values("dataset_id")
        dataset = (
            Dataset.objects.filter(project=pipeline.project)
            .exclude(pk__in=taken)
            .exclude(pk=pipeline.output_dataset_id or 0)
            .first()
        )
        if dataset is not None:
            return make_trigger(pipeline, dataset)
    return None
