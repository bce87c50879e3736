"""Factories of the alerts tests: scopes, runs, rollup rows and channels (seeded, stable)."""

import datetime as dt

import factory
import factory.random
from django.utils import timezone

from alerts.models import Alert, AlertEvent, AlertRule, Notification, NotificationChannel, RunWebhook
from catalog.models import Project
from dataflare_portal.core.secrets import encrypt_secret
from metrics.models import MetricsSummary
from pipelines.models import Pipeline
from tasks.models import Task, TaskRun

factory.random.reseed_random("dataflare-alerts")


class ProjectFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Project

    name = factory.Sequence(lambda n: f"alerts-project-{n}")
    slug = factory.Sequence(lambda n: f"alerts-project-{n}")


class PipelineFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Pipeline

    project = factory.SubFactory(ProjectFactory)
    name = factory.Sequence(lambda n: f"ingest-{n}")


class TaskRunFactory(factory.django.DjangoModelFactory):
    """A run of a pipeline; `status` and `finished_at` as the test needs."""

    class Meta:
        model = TaskRun

    pipeline = factory.SubFactory(PipelineFactory)
    project = factory.LazyAttribute(lambda o: o.pipeline.project)
    task = factory.LazyAttribute(lambda o: Task.objects.create(project=o.project, pipeline=o.pipeline, name="t"))
    status = "running"

    class Params:
        failed = factory.Trait(
            status="failed",
            status_reason="stage clean: batch 3 failed 3 times: ValueError: bad record",
            finished_at=factory.LazyFunction(timezone.now),
        )


class EmailChannelFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = NotificationChannel

    name = factory.Sequence(lambda n: f"oncall-{n}")
    kind = "email"
    target = factory.Sequence(lambda n: f"oncall{n}@example.com")


class RuleFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = AlertRule
        skip_postgeneration_save = True

    name = factory.Sequence(lambda n: f"rule-{n}")
    kind = "failure_rate"
    warning_threshold = 0.05
    critical_threshold = 0.2
    window_minutes = 15

    @factory.post_generation
    def channels(self, create, extracted, **kwargs):
        if create and extracted:
            self.channels.set(extracted)


def summary(*, bucket: dt.datetime, project_id: int, pipeline_id: int = 0, granularity: str = "minute", **values):
    """One rollup row (what metrics.rollup would write) for a bucket and scope."""
    return MetricsSummary.objects.create(
        granularity=granularity,
        bucket=bucket,
        project_id=project_id,
        pipeline_id=pipeline_id,
        updated_at=timezone.now(),
        **values,
    )


class WebhookChannelFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = NotificationChannel

    name = factory.Sequence(lambda n: f"webhook-{n}")
    kind = "webhook"
    target = "http://127.0.0.1:9/hook"


class RunWebhookFactory(factory.django.DjangoModelFactory):
    """A project's subscription to its run events, with an encrypted signing secret."""

    class Meta:
        model = RunWebhook

    project = factory.SubFactory(ProjectFactory)
    name = factory.Sequence(lambda n: f"run-hook-{n}")
    target = "http://127.0.0.1:9/runs"
    secret_ciphertext = factory.LazyFunction(lambda: encrypt_secret("run-hook-signing-secret"))


class AlertFactory(factory.django.DjangoModelFactory):
    """An open alert of a rule; firing critical unless a trait says otherwise."""

    class Meta:
        model = Alert

    rule = factory.SubFactory(RuleFactory)
    severity = "critical"
    title = factory.LazyAttribute(lambda o: f"{o.rule.name} is over its threshold")
    fired_at = factory.LazyFunction(timezone.now)
    last_evaluated_at = factory.LazyFunction(timezone.now)

    class Params:
        warning = factory.Trait(severity="warning")
        resolved = factory.Trait(status="resolved", resolved_at=factory.LazyFunction(timezone.now))


class AlertEventFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = AlertEvent

    alert = factory.SubFactory(AlertFactory)
    kind = "fired"
    severity = factory.SelfAttribute("alert.severity")


class NotificationFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Notification

    alert = factory.SubFactory(AlertFactory)
    channel = factory.SubFactory(WebhookChannelFactory)
    event = "fired"
    payload = factory.LazyAttribute(lambda o: {"alert": o.alert.pk, "event": o.event})
    next_attempt_at = factory.LazyFunction(timezone.now)
