"""Status enums of runs, stage runs and batches, with named state groups.

Crash, failure and cancel are distinct: a crash is a worker that vanished (lease expired), a
failure is an error the stage raised, a cancel is an operator's decision. Each has its own
retry budget (see docs/engine.md).
"""

from django.db import models
from django.utils.translation import gettext_lazy as _


class RunStatus(models.TextChoices):
    PENDING = "pending", _("Pending")
    RUNNING = "running", _("Running")
    WAITING = "waiting", _("Waiting")
    CANCELLING = "cancelling", _("Cancelling")
    SUCCEEDED = "succeeded", _("Succeeded")
    FAILED = "failed", _("Failed")
    CANCELLED = "cancelled", _("Cancelled")
    CRASHED = "crashed", _("Crashed")

    @classmethod
    def active(cls):
        return (cls.PENDING, cls.RUNNING, cls.WAITING, cls.CANCELLING)

    @classmethod
    def terminal(cls):
        return (cls.SUCCEEDED, cls.FAILED, cls.CANCELLED, cls.CRASHED)

    @classmethod
    def resumable(cls):
        return (cls.FAILED, cls.CRASHED, cls.CANCELLED)


class StageRunStatus(models.TextChoices):
    PENDING = "pending", _("Pending")
    RUNNING = "running", _("Running")
    WAITING = "waiting", _("Waiting")
    SUCCEEDED = "succeeded", _("Succeeded")
    FAILED = "failed", _("Failed")
    CANCELLED = "cancelled", _("Cancelled")
    CRASHED = "crashed", _("Crashed")

    @classmethod
    def active(cls):
        return (cls.PENDING, cls.RUNNING, cls.WAITING)

    @classmethod
    def terminal(cls):
        return (cls.SUCCEEDED, cls.FAILED, cls.CANCELLED, cls.CRASHED)


class BatchStatus(models.TextChoices):
    PENDING = "pending", _("Pending")
    QUEUED = "queued", _("Queued")
    RUNNING = "running", _("Running")
    WAITING = "waiting", _("Waiting")
    SUCCEEDED = "succeeded", _("Succeeded")
    FAILED = "failed", _("Failed")
    CANCELLED = "cancelled", _("Cancelled")
    CRASHED = "crashed", _("Crashed")

    @classmethod
    def claimable(cls):
        return (cls.PENDING, cls.QUEUED, cls.WAITING)

    @classmethod
    def terminal(cls):
        return (cls.SUCCEEDED, cls.FAILED, cls.CANCELLED, cls.CRASHED)


class ReviewDecision(models.TextChoices):
    PENDING = "pending", _("Pending")
    ACCEPTED = "accepted", _("Accepted")
    REJECTED = "rejected", _("Rejected")


class LotDecision(models.TextChoices):
    PENDING = "pending", _("Awaiting review")
    ACCEPTED = "accepted", _("Accepted")
    REJECTED = "rejected", _("Rejected")
    OVERRIDDEN = "overridden", _("Accepted by override")

    @classmethod
    def publishable(cls):
        return (cls.ACCEPTED, cls.OVERRIDDEN)


class RunEventKind(models.TextChoices):
    """Run events for automation (webhooks): each is one state transition the engine made true."""

    STARTED = "run.started", _("Run started")
    SUCCEEDED = "run.succeeded", _("Run succeeded")
    FAILED = "run.failed", _("Run failed")
    WAITING_FOR_REVIEW = "run.waiting_for_review", _("Run waiting for review")
    VERSION_PUBLISHED = "version.published", _("Version published")
