"""Schedule and trigger services: save, pause, preview, the tick (fire due slots, start queued fires, sweep
triggers) and the publish hook. Every interface (admin, API, command, beat) calls these.

Idempotency: a fire is a row keyed UNIQUE (schedule, slot) — or (trigger, dataset version) — inserted in a
savepoint inside the transaction that also creates the run. A second tick, a second beat process, a
restarted beat or a redelivered publish hook inserts nothing and starts nothing.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from catalog.choices import DatasetVersionStatus
from catalog.models import DatasetVersion
from dataflare_portal.core.models import AuditAction
from dataflare_portal.core.services import audit_record, audit_snapshot, object_save
from tasks.choices import RunStatus
from tasks.models import TaskRun
from tasks.services import run_start

from .choices import CatchUp, FireOutcome, OverlapPolicy
from .models import DatasetTrigger, Schedule, ScheduleFire, TriggerFire
from .slots import slots_after, slots_before

logger = logging.getLogger(__name__)

__all__ = [
    "schedule_fire",
    "schedule_pause",
    "schedule_preview",
    "schedule_resume",
    "schedule_save",
    "schedules_tick",
    "trigger_fire",
    "trigger_save",
    "triggers_sweep",
    "version_published",
]


def _user(actor):
    return actor if actor is not None and getattr(actor, "is_authenticated", False) else None


# ---- schedules: edit ------------------------------------------------------------------------------
def schedule_preview(*, schedule: Schedule, count: int = 5, now=None) -> list:
    """The next `count` fire times (UTC instants) after now."""
    now = (now or timezone.now()).replace(microsecond=0)
    return slots_after(schedule, now, count)


def _reset_clock(schedule: Schedule, now) -> None:
    """From now on: slots before now are not missed slots (a new, edited or resumed schedule)."""
    now = now.replace(microsecond=0)
    schedule.last_slot = now
    upcoming = slots_after(schedule, now, 1)
    schedule.next_fire_at = upcoming[0] if upcoming else None


def schedule_save(*, schedule: Schedule, actor, now=None) -> Schedule:
    """Create or edit a schedule (validated, audited); its clock restarts when its timing changed."""
    now = now or timezone.now()
    schedule.full_clean()
    timing = ("kind", "cron", "timezone", "interval_seconds", "anchor_at")
    if schedule._state.adding:
        if schedule.created_by_id is None:
            schedule.created_by = _user(actor)
        _reset_clock(schedule, now)
    else:
        old = Schedule.objects.filter(pk=schedule.pk).first()
        if old is None or any(getattr(old, f) != getattr(schedule, f) for f in timing) or not old.enabled:
            _reset_clock(schedule, now)
    return object_save(actor=actor, instance=schedule)


def _set_enabled(schedule: Schedule, *, enabled: bool, actor, now=None) -> Schedule:
    now = now or timezone.now()
    with transaction.atomic():
        locked = Schedule.objects.select_for_update().get(pk=schedule.pk)
        if locked.enabled == enabled:
            return locked
        before = audit_snapshot(locked)
        locked.enabled = enabled
        if enabled:
            _reset_clock(locked, now)  # a paused stretch is not downtime: nothing to catch up
        locked.save()
        audit_record(
            actor=actor,
            action=AuditAction.UNPAUSE if enabled else AuditAction.PAUSE,
            instance=locked,
            before=before,
            after=audit_snapshot(locked),
            message=(_("Resumed schedule %(s)s.") if enabled else _("Paused schedule %(s)s.")) % {"s": locked},
        )
    return locked


def schedule_pause(*, schedule: Schedule, actor) -> Schedule:
    """Pause a schedule: no slot fires until it is resumed."""
    return _set_enabled(schedule, enabled=False, actor=actor)


def schedule_resume(*, schedule: Schedule, actor, now=None) -> Schedule:
    """Resume a paused schedule from now on (slots during the pause are not caught up)."""
    return _set_enabled(schedule, enabled=True, actor=actor, now=now)


# ---- schedules: fire ------------------------------------------------------------------------------
def _active_run(pipeline_id) -> str | None:
    pk = (
        TaskRun.objects.filter(pipeline_id=pipeline_id, status__in=RunStatus.active())
        .order_by("-created_at")
        .values_list("pk", flat=True)
        .first()
    )
    return str(pk) if pk else None


def _refusal(exc: ValidationError) -> str:
    if hasattr(exc, "error_dict"):
        return "; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items())[:1000]
    return " ".join(exc.messages)[:1000]


def _start(fire: ScheduleFire, schedule: Schedule, now) -> None:
    """Start the fire's run inside the caller's transaction (the doorbell rings on commit)."""
    slot = fire.slot.isoformat()
    try:
        run = run_start(
            pipeline=schedule.pipeline,
            actor=None,
            parameters=schedule.parameters or {},
            idempotency_key=f"schedule:{schedule.pk}:{slot}",
            trigger={"kind": "schedule", "schedule": schedule.pk, "name": schedule.name, "slot": slot},
        )
    except ValidationError as exc:
        fire.outcome = FireOutcome.FAILED
        fire.reason_code, fire.reason_params = "refused", {"error": _refusal(exc)}
        return
    fire.outcome, fire.run, fire.started_at = FireOutcome.STARTED, run, now


def schedule_fire(*, schedule: Schedule, slot, now=None, caught_up: bool = False) -> ScheduleFire | None:
    """Fire one slot by the overlap policy; None when this slot already fired (another tick or beat)."""
    now = now or timezone.now()
    with transaction.atomic():
        # One decision per schedule at a time: the overlap check and the start are not torn by another tick.
        schedule = Schedule.objects.select_for_update().select_related("pipeline__project").get(pk=schedule.pk)
        try:
            with transaction.atomic():
                fire = ScheduleFire.objects.create(schedule=schedule, slot=slot, outcome=FireOutcome.QUEUED)
        except IntegrityError:
            return None
        active = _active_run(schedule.pipeline_id)
        waiting = schedule.fires.filter(outcome=FireOutcome.QUEUED).exclude(pk=fire.pk).exists()
        if caught_up:
            fire.reason_code = "caught_up"
        if schedule.overlap == OverlapPolicy.SKIP and active:
            fire.outcome = FireOutcome.SKIPPED
            fire.reason_code, fire.reason_params = "run_active", {"run": active}
        elif schedule.overlap == OverlapPolicy.QUEUE and (active or waiting):
            fire.outcome = FireOutcome.QUEUED
            fire.reason_code, fire.reason_params = "queued_behind", {"run": active or "-"}
        else:
            _start(fire, schedule, now)
        fire.save()
        Schedule.objects.filter(pk=schedule.pk).update(last_outcome=fire.outcome, last_fired_at=now)
    return fire


def _dequeue(schedule_id: int, now) -> ScheduleFire | None:
    """Start the oldest queued fire of a schedule when no run of its pipeline is going."""
    with transaction.atomic():
        schedule = Schedule.objects.select_for_update().select_related("pipeline__project").get(pk=schedule_id)
        fire = schedule.fires.filter(outcome=FireOutcome.QUEUED).order_by("slot").first()
        if fire is None or _active_run(schedule.pipeline_id):
            return None
        fire.reason_code, fire.reason_params = "", {}
        _start(fire, schedule, now)
        fire.save()
        Schedule.objects.filter(pk=schedule.pk).update(last_outcome=fire.outcome, last_fired_at=now)
    return fire


def _step(schedule: Schedule, now, grace: float, out: dict) -> None:
    """Fire the due slots of one schedule by its catch-up policy, then move its clock on."""
    cap = schedule.catchup_limit if schedule.catchup == CatchUp.ALL else 1
    due = slots_before(schedule, now, schedule.last_slot, cap)  # newest first
    if due:
        newest = due[0]
        if schedule.catchup == CatchUp.NONE:
            chosen = [newest] if (now - newest).total_seconds() <= grace else []
        elif schedule.catchup == CatchUp.LATEST:
            chosen = [newest]
        else:
            chosen = list(reversed(due))
        out["dropped"] += len(due) - len(chosen)
        for slot in chosen:
            late = (now - slot).total_seconds() > grace
            fire = schedule_fire(schedule=schedule, slot=slot, now=now, caught_up=late)
            if fire is not None:
                out["fired"] += 1
                out[fire.outcome] += 1
    upcoming = slots_after(schedule, max(now.replace(microsecond=0), schedule.last_slot or now), 1)
    changes = {"next_fire_at": upcoming[0] if upcoming else None}
    if due:
        changes["last_slot"] = due[0]
    # Never move the clock back: a slower concurrent tick may have handled later slots already.
    qs = Schedule.objects.filter(pk=schedule.pk)
    if due and schedule.last_slot is not None:
        qs = qs.filter(last_slot__lt=due[0])
    qs.update(**changes)


def schedules_tick(*, now=None, limit: int = 200) -> dict:
    """One pass: fire every due slot, start queued fires whose predecessor ended, sweep dataset triggers."""
    now = now or timezone.now()
    grace = float(getattr(settings, "SCHEDULE_MISFIRE_GRACE", 60.0))
    out = {"fired": 0, "dropped": 0, "dequeued": 0, "triggered": 0}
    out.update(dict.fromkeys(FireOutcome.values, 0))
    for schedule in Schedule.objects.filter(enabled=True, next_fire_at__lte=now).order_by("next_fire_at")[:limit]:
        try:
            _step(schedule, now, grace, out)
        except Exception:
            logger.exception("schedule %s could not fire", schedule.pk)
    waiting = (
        ScheduleFire.objects.filter(outcome=FireOutcome.QUEUED, schedule__enabled=True)
        .values_list("schedule_id", flat=True)
        .distinct()
        .order_by()[:limit]
    )
    for schedule_id in list(waiting):
        if _dequeue(schedule_id, now) is not None:
            out["dequeued"] += 1
    out["triggered"] = triggers_sweep(now=now)
    return out


# ---- dataset triggers -------------------------------------------------------------------------------
def trigger_save(*, trigger: DatasetTrigger, actor) -> DatasetTrigger:
    """Create or edit a dataset trigger (validated, audited); versions published before it are not fired."""
    if trigger._state.adding and trigger.created_by_id is None:
        trigger.created_by = _user(actor)
    return object_save(actor=actor, instance=trigger)


def trigger_fire(*, trigger: DatasetTrigger, version: DatasetVersion) -> TriggerFire | None:
    """Start the trigger's pipeline on this published version, once; None when it already fired."""
    with transaction.atomic():
        try:
            with transaction.atomic():
                fire = TriggerFire.objects.create(trigger=trigger, dataset_version=version, outcome=FireOutcome.QUEUED)
        except IntegrityError:
            return None
        try:
            run = run_start(
                pipeline=trigger.pipeline,
                actor=None,
                input_version=version,
                parameters=trigger.parameters or {},
                idempotency_key=f"trigger:{trigger.pk}:{version.pk}",
                trigger={
                    "kind": "dataset",
                    "trigger": trigger.pk,
                    "dataset": {"id": version.dataset_id, "name": version.dataset.name},
                    "version": {"id": version.pk, "number": version.version},
                },
            )
        except ValidationError as exc:
            fire.outcome = FireOutcome.FAILED
            fire.reason_code, fire.reason_params = "refused", {"error": _refusal(exc)}
        else:
            fire.outcome, fire.run = FireOutcome.STARTED, run
        fire.save()
    return fire


def _triggers_for(version: DatasetVersion):
    return DatasetTrigger.objects.filter(
        dataset_id=version.dataset_id, enabled=True, created_at__lte=version.published_at
    ).select_related("pipeline__project")


def version_published(version_id: int) -> int:
    """After a publish commits: fire every enabled trigger on that dataset (the tick's sweep catches a miss)."""
    version = (
        DatasetVersion.objects.select_related("dataset")
        .filter(pk=version_id, status=DatasetVersionStatus.PUBLISHED)
        .first()
    )
    if version is None or version.published_at is None:
        return 0
    fired = 0
    for trigger in _triggers_for(version):
        try:
            if trigger_fire(trigger=trigger, version=version) is not None:
                fired += 1
        except Exception:
            logger.exception("trigger %s could not fire for version %s", trigger.pk, version_id)
    return fired


def triggers_sweep(*, now=None, per_trigger: int = 20, limit: int = 200) -> int:
    """Fire triggers for published versions no fire has seen (a crash between publish and hook loses none)."""
    fired = 0
    horizon = (now or timezone.now()) - timedelta(days=30)
    for trigger in DatasetTrigger.objects.filter(enabled=True).select_related("pipeline__project")[:limit]:
        seen = TriggerFire.objects.filter(trigger=trigger).values("dataset_version_id")
        versions = (
            DatasetVersion.objects.select_related("dataset")
            .filter(
                dataset_id=trigger.dataset_id,
                status=DatasetVersionStatus.PUBLISHED,
                published_at__gte=max(trigger.created_at, horizon),
            )
            .exclude(pk__in=seen)
            .order_by("published_at")[:per_trigger]
        )
        for version in versions:
            try:
                if trigger_fire(trigger=trigger, version=version) is not None:
                    fired += 1
            except Exception:
                logger.exception("trigger %s could not fire for version %s", trigger.pk, version.pk)
    return fired
