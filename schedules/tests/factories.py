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
