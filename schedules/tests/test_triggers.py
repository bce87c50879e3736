"""Dataset triggers: a published version starts the downstream pipeline once, reading that version, with lineage
from the new version back to its trigger; a redelivered hook or the tick's sweep adds nothing."""

import pytest
from django.core.exceptions import ValidationError

from catalog.models import DatasetVersion
from dataflare_portal.core import registry
from schedules.choices import FireOutcome
from schedules.models import TriggerFire
from schedules.services import schedules_tick, triggers_sweep
from tasks.choices import RunStatus
from tasks.models import TaskRun
from tasks.services import run_start
from tasks.tests import kinds_for_tests
from tasks.tests.factories import STREAMING_STAGES, published, reference_output

from .factories import make_trigger, pipeline_for

pytestmark = pytest.mark.django_db

kinds_for_tests.register()


def chain(root):
    """up: in -> up-out (versions); down: reads up-out's versions, publishes down-out."""
    up = pipeline_for(root, name="up", n=200)
    down = pipeline_for(root, name="down", n=5, stages=STREAMING_STAGES)
    down.input_dataset = up.output_dataset
    down.save()
    trigger = make_trigger(down, up.output_dataset)
    return up, down, trigger


def test_a_published_version_starts_the_downstream_pipeline_once(
    doorbell, file_root, django_capture_on_commit_callbacks
):
    up, down, trigger = chain(file_root)
    upstream = run_start(pipeline=up, actor=None)
    with django_capture_on_commit_callbacks(execute=True) as hooks:
        doorbell.drain()
    upstream.refresh_from_db()
    assert upstream.status == RunStatus.SUCCEEDED
    version = upstream.output_version
    assert hooks, "the publish registered its version-published hook"
    # The hook ran on commit: one downstream run, reading exactly that version.
    downstream = TaskRun.objects.get(pipeline=down)
    assert downstream.input_version_id == version.pk
    assert downstream.trigger["trigger"] == trigger.pk and downstream.trigger["version"]["id"] == version.pk
    # Delivered again (a retried hook), and swept by the tick: still one run.
    registry.version_published(version.pk)
    registry.version_published(version.pk)
    assert triggers_sweep() == 0
    assert schedules_tick()["triggered"] == 0
    assert TaskRun.objects.filter(pipeline=down).count() == 1
    fire = TriggerFire.objects.get()
    assert fire.outcome == FireOutcome.STARTED and fire.run_id == downstream.pk
    doorbell.drain()
    downstream.refresh_from_db()
    assert downstream.status == RunStatus.SUCCEEDED, downstream.status_reason
    # It read the version's records (not the dataset's own, never written, location).
    assert published(downstream) == reference_output(published(upstream), STREAMING_STAGES)
    out = downstream.output_version
    assert list(out.parents.all()) == [version]
    assert out.lineage["parents"] == [version.pk]
    assert out.lineage["trigger"]["kind"] == "dataset" and out.lineage["trigger"]["version"]["id"] == version.pk


def test_the_sweep_fires_a_version_whose_hook_was_lost(doorbell, file_root):
    up, down, trigger = chain(file_root)
    upstream = run_start(pipeline=up, actor=None)
    doorbell.drain()  # the test transaction never commits: no on_commit hook ran, as after a crash
    upstream.refresh_from_db()
    assert not TaskRun.objects.filter(pipeline=down).exists()
    out = schedules_tick()
    assert out["triggered"] == 1
    run = TaskRun.objects.get(pipeline=down)
    assert run.input_version_id == upstream.output_version_id
    assert schedules_tick()["triggered"] == 0


def test_versions_published_before_the_trigger_existed_do_not_fire(doorbell, file_root):
    up = pipeline_for(file_root, name="up", n=50)
    run = run_start(pipeline=up, actor=None)
    doorbell.drain()
    down = pipeline_for(file_root, name="down", n=5)
    make_trigger(down, up.output_dataset)
    assert triggers_sweep() == 0
    assert DatasetVersion.objects.filter(pk=TaskRun.objects.get(pk=run.pk).output_version_id).exists()


def test_a_disabled_trigger_does_not_fire_and_a_refused_run_is_recorded(doorbell, file_root):
    up, down, trigger = chain(file_root)
    trigger.enabled = False
    trigger.save()
    run_start(pipeline=up, actor=None)
    doorbell.drain()
    assert triggers_sweep() == 0
    trigger.enabled = True
    trigger.save()
    down.runs_paused, down.paused_reason = True, "budget"
    down.save()
    assert triggers_sweep() == 1
    fire = TriggerFire.objects.get()
    assert fire.outcome == FireOutcome.FAILED and "budget" in fire.reason
    assert not TaskRun.objects.filter(pipeline=down).exists()


def test_a_trigger_is_refused_on_its_own_output_or_another_project(db, file_root):
    from catalog.models import Dataset, Project

    up = pipeline_for(file_root, name="up", n=5)
    with pytest.raises(ValidationError) as err:
        make_trigger(up, up.output_dataset)
    assert "dataset" in err.value.message_dict
    other = Project.objects.create(name="Other", slug="other")
    ds = Dataset.objects.create(project=other, name="x", format="jsonl", location="x.jsonl")
    with pytest.raises(ValidationError) as err:
        make_trigger(up, ds)
    assert "dataset" in err.value.message_dict


def test_a_trigger_that_would_close_a_loop_of_pipelines_is_refused(db, file_root):
    """up publishes A-out; down (triggered by up's output) publishes B-out; a trigger of up on B-out would
    start up, then down, then up again, for ever."""
    up, down, _trigger = chain(file_root)
    with pytest.raises(ValidationError) as err:
        make_trigger(up, down.output_dataset)
    message = " ".join(err.value.message_dict["dataset"])
    names = [down.output_dataset.name, up.name, up.output_dataset.name, down.name, down.output_dataset.name]
    assert " → ".join(names) in message
    # A disabled link breaks the loop; so does a disabled new trigger.
    _trigger.enabled = False
    _trigger.save()
    assert make_trigger(up, down.output_dataset).pk
