"""Workspace retention: delete the workspaces of runs finished long ago, and old downloads.

A finished run's workspace (runs/<run>/: its batches' outputs, partition keys, a network source's
snapshot) is what a re-run from a stage, a retry and a resume read. The `workspace_retention_days`
setting says how long it is kept after the run finished; the duty `tasks.prune_workspaces` (beat,
settings.CELERY_BEAT_SCHEDULE["prune-workspaces"]) deletes what is older, except:

- the workspace of a run that is not finished (running, waiting for review, cancelling), and
- the workspace of a run that a re-run or reprocessing still needs: a run started from it (`rerun_of`,
  transitively, since a re-run's reused batches point at the first run's files) that is active or
  finished less than the retention ago.

The database decides a pruning racing a re-run start: both lock the run's row (`select_for_update`; on
SQLite every transaction takes the write lock up front) and check in that transaction, the re-run that
`workspace_pruned_at` is empty (`workspace_claim`), the pruner that no run started from it is active.
Whichever commits first wins; the other sees it. A pruned run keeps its row, counters and published
version; re-runs, retries and resumes of it are refused with the date it was pruned.

The shared download cache of the http connector (<workspace>/downloads, used outside runs) is pruned
by last use: a file not fetched or reused for `download_cache_retention_days` is deleted, unless a
fetch holds its lock at that moment.
"""

from __future__ import annotations

import fcntl
from datetime import datetime, timedelta
from pathlib import Path

from django.db import transaction
from django.utils import formats, timezone
from django.utils.translation import gettext as _

from . import workspace
from .choices import RunStatus
from .models import TaskRun

__all__ = [
    "downloads_prune",
    "workspace_claim",
    "workspace_pruned_message",
    "workspaces_prune",
]

# Candidate runs read per query of a pass (keyset pagination by finish time).
CHUNK = 200


def _days(key: str) -> float:
    from dataflare_portal.core.config import config_get

    return float(config_get(key))


def _when(moment: datetime) -> str:
    return formats.date_format(timezone.localtime(moment), "DATETIME_FORMAT")


def workspace_pruned_message(run: TaskRun) -> str:
    """Why a run cannot be re-run, retried or resumed: its workspace was deleted, and when."""
    return _(
        "The workspace of run %(run)s was pruned on %(when)s (it finished more than the workspace retention "
        "ago), so its checkpointed outputs are gone. Start a new run instead."
    ) % {"run": run, "when": _when(run.workspace_pruned_at)}


def workspace_claim(run_ids) -> None:
    """In the caller's transaction: lock the runs whose workspaces a new run will read, refusing a pruned one.

    The lock holds until the caller commits the new run, so the pruner (which locks the same row and then
    looks for active runs started from it) either finishes first, and this refuses, or waits and sees
    the new run.
    """
    from .services import RunRefused

    ids = sorted({str(pk) for pk in run_ids})
    if not ids:
        return
    rows = list(TaskRun.objects.select_for_update().filter(pk__in=ids).order_by("pk"))
    pruned = [row for row in rows if row.workspace_pruned_at is not None]
    if pruned:
        raise RunRefused({"run": [workspace_pruned_message(pruned[0])]}, code="workspace_pruned")


def _still_needed(run_id, cutoff: datetime) -> bool:
    """Whether a run started from this one (or from one of those, and so on) is active or finished after cutoff."""
    frontier = [run_id]
    seen = {str(run_id)}
    while frontier:
        children = list(TaskRun.objects.filter(rerun_of__in=frontier).values_list("pk", "status", "finished_at"))
        for _pk, status, finished_at in children:
            if status not in RunStatus.terminal() or finished_at is None or finished_at >= cutoff:
                return True
        frontier = [pk for pk, _s, _f in children if str(pk) not in seen]
        seen.update(str(pk) for pk in frontier)
    return False


def _prune_one(run_id, cutoff: datetime, now: datetime) -> bool:
    with transaction.atomic():
        row = (
            TaskRun.objects.select_for_update()
            .filter(pk=run_id, status__in=RunStatus.terminal(), finished_at__lt=cutoff, workspace_pruned_at=None)
            .first()
        )
        # Read after the lock: a re-run that held it has committed, and this statement sees its new run.
        if row is None or _still_needed(run_id, cutoff):
            return False
        TaskRun.objects.filter(pk=run_id, workspace_pruned_at=None).update(workspace_pruned_at=now)
    # The row says "pruned" before a file goes: a re-run either started before (and kept it) or is refused.
    workspace.run_dir_remove(run_id)
    return True


def workspaces_prune(*, now: datetime | None = None) -> dict:
    """Delete the workspaces of runs finished more than `workspace_retention_days` ago that nothing needs."""
    now = now or timezone.now()
    cutoff = now - timedelta(days=_days("workspace_retention_days"))
    pruned = kept = 0
    after = None
    while True:
        candidates = TaskRun.objects.filter(
            status__in=RunStatus.terminal(), finished_at__lt=cutoff, workspace_pruned_at=None
        ).order_by("finished_at", "pk")
        if after is not None:
            candidates = candidates.filter(finished_at__gte=after[0]).exclude(finished_at=after[0], pk__lte=after[1])
        page = list(candidates.values_list("pk", "finished_at")[:CHUNK])
        if not page:
            break
        for pk, _finished in page:
            if _prune_one(pk, cutoff, now):
                pruned += 1
            else:
                kept += 1
        after = (page[-1][1], page[-1][0])
    downloads = downloads_prune(now=now)
    return {"workspaces": pruned, "kept": kept, "downloads": downloads}


# ---- the shared download cache -----------------------------------------------------------------
def _last_use(paths: list[Path]) -> float:
    stamps = []
    for path in paths:
        try:
            stamps.append(path.stat().st_mtime)
        except FileNotFoundError:
            continue
    return max(stamps, default=0.0)


def downloads_prune(*, now: datetime | None = None) -> int:
    """Delete downloads of the shared cache unused for `download_cache_retention_days`; returns how many.

    A download is its file plus `.part` and `.meta.json`; its last use is the newest of their modification
    times (a fetch that reuses a file touches its meta). A download whose lock a fetch holds now is
    skipped. The empty `.lock` file stays: a fetch may have opened it already, and a new one in its place
    would let two fetches write the same `.part`.
    """
    now = now or timezone.now()
    folder = workspace.root() / "downloads"
    if not folder.is_dir():
        return 0
    cutoff = now.timestamp() - _days("download_cache_retention_days") * 86400
    stems: dict[str, list[Path]] = {}
    for path in folder.iterdir():
        if path.name.startswith(".") or not path.is_file():
            continue
        stem = path.name
        for suffix in (".lock", ".meta.json", ".part", ".tmp"):
            if stem.endswith(suffix):
                stem = stem[: -len(suffix)]
                break
        if stem.endswith(".meta.json"):
            stem = stem[: -len(".meta.json")]
        if not path.name.endswith(".lock"):
            stems.setdefault(stem, []).append(path)
    removed = 0
    for stem, paths in stems.items():
        if _last_use(paths) >= cutoff:
            continue
        lock = folder / f"{stem}.lock"
        with open(lock, "a+b") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a fetch is downloading or reusing it right now
            try:
                group = [p for p in folder.glob(f"{stem}*") if p.name != lock.name]
                if _last_use(group) >= cutoff:
                    continue
                for path in group:
                    path.unlink(missing_ok=True)
                removed += 1
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
    return removed
