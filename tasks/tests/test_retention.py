"""Workspace retention: old finished runs' workspaces go, nothing a run or a re-run still needs does, a re-run
or resume of a pruned run is refused saying when, old downloads go; the database decides a pruning racing a
re-run start."""

import os
import threading
import time
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connection, connections
from django.utils import timezone
from rest_framework.test import APIClient

from dataflare_portal.core.config import config_set
from dataflare_portal.core.duties import duty_run
from tasks import reruns, retention, workspace
from tasks.choices import RunStatus
from tasks.models import TaskRun
from tasks.reruns import run_rerun_from_stage
from tasks.retention import downloads_prune, workspaces_prune
from tasks.services import RunRefused, run_resume, run_start
from tasks.tests.factories import make_pipeline, make_records

pytestmark = pytest.mark.django_db

DAY = timedelta(days=1)


def finished(doorbell, pipeline, *, days_ago: float) -> TaskRun:
    """A real run of the pipeline, finished `days_ago` days ago."""
    run = run_start(pipeline=pipeline, actor=None)
    doorbell.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, run.status_reason
    TaskRun.objects.filter(pk=run.pk).update(finished_at=timezone.now() - days_ago * DAY)
    return TaskRun.objects.get(pk=run.pk)


def age(run, *, days_ago: float, status=None) -> None:
    fields = {"finished_at": timezone.now() - days_ago * DAY if days_ago is not None else None}
    if status is not None:
        fields["status"] = status
    TaskRun.objects.filter(pk=run.pk).update(**fields)


def kept(run) -> bool:
    run.refresh_from_db()
    there = workspace.run_dir(run.pk).is_dir()
    assert there == (run.workspace_pruned_at is None), (there, run.workspace_pruned_at)
    return there


def test_it_prunes_old_finished_workspaces_and_keeps_what_is_needed(doorbell, file_root):
    config_set(key="workspace_retention_days", value=7, actor=None)
    pipeline = make_pipeline(file_root, records=make_records(150), batch_size=50)
    old = finished(doorbell, pipeline, days_ago=8)
    recent = finished(doorbell, pipeline, days_ago=6)
    still_running = finished(doorbell, pipeline, days_ago=30)
    age(still_running, days_ago=None, status=RunStatus.RUNNING)
    waiting = finished(doorbell, pipeline, days_ago=30)
    age(waiting, days_ago=None, status=RunStatus.WAITING)
    # An old run with a re-run going on, one whose re-run finished yesterday, one whose re-run's re-run runs.
    with_active_rerun = finished(doorbell, pipeline, days_ago=20)
    with_recent_rerun = finished(doorbell, pipeline, days_ago=20)
    recent_child = run_rerun_from_stage(run=with_recent_rerun, stage="dedup", actor=None)
    doorbell.drain()
    age(recent_child, days_ago=1)
    with_grandchild = finished(doorbell, pipeline, days_ago=40)
    middle = run_rerun_from_stage(run=with_grandchild, stage="dedup", actor=None)
    doorbell.drain()
    age(middle, days_ago=30)
    # These two stay running until the doorbell rings.
    child = run_rerun_from_stage(run=with_active_rerun, stage="dedup", actor=None)
    grandchild = run_rerun_from_stage(run=TaskRun.objects.get(pk=middle.pk), stage="dedup", actor=None)
    assert grandchild.rerun_of_id == middle.pk and middle.rerun_of_id == with_grandchild.pk

    result = workspaces_prune()
    assert result["workspaces"] == 1 and not kept(old)
    for run in (recent, still_running, waiting, with_active_rerun, with_recent_rerun, with_grandchild, middle):
        assert kept(run), run

    # Once the re-runs are done and old, their sources go too; a second pass finds nothing more.
    doorbell.drain()
    for run in (child, recent_child, grandchild):
        age(run, days_ago=10)
    workspaces_prune()
    for run in (with_active_rerun, with_recent_rerun, with_grandchild, middle, child, recent_child, grandchild):
        assert not kept(run), run
    assert kept(recent)
    assert workspaces_prune()["workspaces"] == 0


def test_a_pruned_run_is_refused_saying_when(doorbell, file_root, admin_user, admin_client):
    config_set(key="workspace_retention_days", value=7, actor=None)
    pipeline = make_pipeline(file_root, records=make_records(150), batch_size=50)
    run = finished(doorbell, pipeline, days_ago=9)
    workspaces_prune()
    run.refresh_from_db()
    assert run.workspace_pruned_at is not None
    with pytest.raises(RunRefused) as exc:
        run_rerun_from_stage(run=run, stage="dedup", actor=None)
    message = exc.value.message_dict["run"][0]
    assert f"The workspace of run {run} was pruned on" in message and "Start a new run instead" in message
    assert str(timezone.localtime(run.workspace_pruned_at).year) in message

    client = APIClient()
    client.force_authenticate(admin_user)
    answer = client.post(f"/api/v1/tasks/runs/{run.pk}/rerun/", {"stage": "dedup"}, format="json")
    assert answer.status_code == 400 and "was pruned on" in answer.content.decode()
    with pytest.raises(CommandError, match="was pruned on"):
        call_command("rerun", str(run.pk), "--from-stage", "dedup", stdout=StringIO())
    page = admin_client.post(
        "/tasks/taskrun/",
        {"action": "run_rerun_action", "_selected_action": [run.pk], "apply": "1", "stage": "dedup"},
        follow=True,
    )
    assert "was pruned on" in page.content.decode()

    # A failed run that was pruned cannot be resumed either: the batches it kept are gone.
    TaskRun.objects.filter(pk=run.pk).update(status=RunStatus.FAILED)
    with pytest.raises(RunRefused) as exc:
        run_resume(run=run, actor=None)
    assert "was pruned on" in exc.value.message_dict["run"][0]
    assert TaskRun.objects.get(pk=run.pk).status == RunStatus.FAILED
    assert TaskRun.objects.filter(pipeline=pipeline).count() == 1


def test_a_rerun_of_a_rerun_whose_source_was_pruned_says_so(doorbell, file_root):
    # Prune the first run by hand (as if its re-run had been old too): the re-run's reused files were there.
    pipeline = make_pipeline(file_root, records=make_records(150), batch_size=50)
    first = finished(doorbell, pipeline, days_ago=0)
    second = run_rerun_from_stage(run=first, stage="dedup", actor=None)
    doorbell.drain()
    TaskRun.objects.filter(pk=first.pk).update(workspace_pruned_at=timezone.now())
    workspace.run_dir_remove(first.pk)
    with pytest.raises(RunRefused) as exc:
        run_rerun_from_stage(run=TaskRun.objects.get(pk=second.pk), stage="publish", actor=None)
    assert f"The workspace of run {first} was pruned on" in exc.value.message_dict["run"][0]


def test_the_duty_is_scheduled_and_runs_under_its_lease(doorbell, file_root, settings):
    assert settings.CELERY_BEAT_SCHEDULE["prune-workspaces"]["task"] == "tasks.prune_workspaces"
    config_set(key="workspace_retention_days", value=1, actor=None)
    pipeline = make_pipeline(file_root, records=make_records(60), batch_size=50)
    run = finished(doorbell, pipeline, days_ago=2)
    outcome = duty_run("tasks.prune_workspaces", by="test")
    assert outcome["ran"] and outcome["result"]["workspaces"] == 1 and not kept(run)


def test_downloads_unused_for_the_retention_are_pruned(settings):
    import fcntl

    config_set(key="download_cache_retention_days", value=3, actor=None)
    folder = workspace.root() / "downloads"
    folder.mkdir(parents=True, exist_ok=True)
    old_time = time.time() - 4 * 86400

    def download(stem: str, *, used: float, part: bool = False) -> list:
        paths = [folder / stem, folder / f"{stem}.meta.json", folder / f"{stem}.lock"]
        if part:
            paths.append(folder / f"{stem}.part")
        for p in paths:
            p.write_bytes(b"x")
            os.utime(p, (used, used))
        return paths

    old = download("a" * 32 + ".jsonl", used=old_time)
    reused = download("b" * 32 + ".csv", used=old_time)
    os.utime(reused[1])  # a fetch reused it just now: its meta says so
    partial = download("c" * 32 + ".jsonl", used=old_time, part=True)
    busy = download("d" * 32 + ".jsonl", used=old_time)
    with open(busy[2], "a+b") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # a fetch holds it
        assert downloads_prune() == 2
        fcntl.flock(held, fcntl.LOCK_UN)
    assert not old[0].exists() and not old[1].exists() and old[2].exists()  # the lock file stays
    assert not any(p.exists() for p in partial[:2] + partial[3:])
    assert all(p.exists() for p in reused) and all(p.exists() for p in busy)
    assert downloads_prune() == 1 and not busy[0].exists()


def test_a_reused_download_is_marked_as_used(file_root, tmp_path):
    from catalog.connectors.httpsource import HTTPConnector, _meta_path

    conn = HTTPConnector({"base_url": "http://127.0.0.1:9/"})
    target = conn.local_path("data.jsonl", "jsonl")
    target.write_bytes(b'{"a": 1}\n')
    _meta_path(target).write_text('{"complete": true, "url": "http://127.0.0.1:9/data.jsonl"}')
    stale = time.time() - 10 * 86400
    os.utime(_meta_path(target), (stale, stale))
    assert conn.fetch("data.jsonl", "jsonl", revalidate=False) == target
    assert _meta_path(target).stat().st_mtime > stale + 86400


# ---- the race: a pruning and a re-run start at once ----------------------------------------------------
def _blocked_on_lock() -> bool:
    """PostgreSQL: another session waits for a lock (the other thread is inside the locked section's door)."""
    with connection.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return cur.fetchone()[0] > 0


def _wait_until_blocked(entered: threading.Event) -> None:
    assert entered.wait(60)
    if connection.vendor == "postgresql":
        deadline = time.monotonic() + 60
        while not _blocked_on_lock():
            assert time.monotonic() < deadline, "the second session never waited for the lock"
            time.sleep(0.02)
    else:
        # SQLite: the IMMEDIATE transaction waits in the busy handler, which no query shows; give it time to.
        time.sleep(0.5)


def _in_thread(target, results: dict, name: str) -> threading.Thread:
    def body():
        try:
            results[name] = target()
        except Exception as exc:  # the refusal is the result under test
            results[name] = exc
        finally:
            connections.close_all()

    thread = threading.Thread(target=body, name=name)
    thread.start()
    return thread


@pytest.fixture
def old_run(shared_db, doorbell, file_root):
    config_set(key="workspace_retention_days", value=7, actor=None)
    pipeline = make_pipeline(file_root, records=make_records(150), batch_size=50)
    return finished(doorbell, pipeline, days_ago=10)


def test_race_a_rerun_holding_the_lock_keeps_the_workspace(old_run, monkeypatch):
    claimed, release, pruner_entered = threading.Event(), threading.Event(), threading.Event()
    original_claim = reruns.workspace_claim

    def claim_then_wait(ids):
        original_claim(ids)
        claimed.set()
        assert release.wait(60)

    monkeypatch.setattr(reruns, "workspace_claim", claim_then_wait)
    original_prune_one = retention._prune_one

    def prune_one(*args):
        pruner_entered.set()
        return original_prune_one(*args)

    monkeypatch.setattr(retention, "_prune_one", prune_one)
    results: dict = {}
    rerun = _in_thread(lambda: run_rerun_from_stage(run=old_run, stage="dedup", actor=None), results, "rerun")
    assert claimed.wait(60)
    pruner = _in_thread(workspaces_prune, results, "prune")
    _wait_until_blocked(pruner_entered)
    release.set()
    rerun.join(60)
    pruner.join(60)
    assert isinstance(results["rerun"], TaskRun), results["rerun"]
    assert results["prune"]["workspaces"] == 0 and results["prune"]["kept"] == 1
    assert kept(old_run)


def test_race_a_pruning_holding_the_lock_refuses_the_rerun(old_run, monkeypatch):
    locked, release, rerun_entered = threading.Event(), threading.Event(), threading.Event()
    original_needed = retention._still_needed

    def needed_then_wait(*args):
        answer = original_needed(*args)
        locked.set()
        assert release.wait(60)
        return answer

    monkeypatch.setattr(retention, "_still_needed", needed_then_wait)
    original_create = reruns._run_create_at

    def create(**kwargs):
        rerun_entered.set()  # next: its transaction, whose lock the pruner holds
        return original_create(**kwargs)

    monkeypatch.setattr(reruns, "_run_create_at", create)
    results: dict = {}
    pruner = _in_thread(workspaces_prune, results, "prune")
    assert locked.wait(60)
    rerun = _in_thread(lambda: run_rerun_from_stage(run=old_run, stage="dedup", actor=None), results, "rerun")
    _wait_until_blocked(rerun_entered)
    release.set()
    pruner.join(60)
    rerun.join(60)
    assert results["prune"]["workspaces"] == 1
    assert isinstance(results["rerun"], RunRefused), results["rerun"]
    assert "was pruned on" in results["rerun"].message_dict["run"][0]
    assert not kept(old_run) and TaskRun.objects.filter(rerun_of=old_run).count() == 0
