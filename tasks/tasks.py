"""Celery tasks of the engine: thin wrappers that take ids and call the engine or the services."""

from celery import shared_task

from . import engine


# One batch is short by design; global units (dedup, publish) are sent with longer limits per message
# (engine.GLOBAL_SOFT_TIME_LIMIT). A hard kill leaves the lease to expire and the reaper re-queues.
@shared_task(
    name="tasks.batch_execute", bind=True, acks_late=True, ignore_result=True, soft_time_limit=300, time_limit=360
)
def batch_execute(self, batch_id: str) -> str:
    """Claim, process and commit one batch (a duplicate delivery finds the claim taken and does nothing)."""
    return engine.batch_execute(batch_id=batch_id, owner=engine.worker_owner(self.request.hostname))


@shared_task(name="tasks.reap", ignore_result=True, soft_time_limit=120, time_limit=150)
def reap() -> dict:
    """One reaper pass (expired leases, lost messages, finished waits, stuck runs) under the duty's lease."""
    from dataflare_portal.core.duties import duty_run, process_name

    return duty_run("tasks.reap", by=process_name("beat task"))


@shared_task(name="tasks.prune_workspaces", ignore_result=True, soft_time_limit=1200, time_limit=1260)
def prune_workspaces() -> dict:
    """Delete old finished runs' workspaces and old downloads (tasks/retention.py) under the duty's lease."""
    from dataflare_portal.core.duties import duty_run, process_name

    return duty_run("tasks.prune_workspaces", by=process_name("beat task"))
