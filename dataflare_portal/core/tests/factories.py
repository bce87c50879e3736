"""factory-boy factories for the core models (runtime config overrides, audit entries)."""

import factory

from dataflare_portal.core.models import AuditAction, AuditLogEntry, SystemConfig


class SystemConfigFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = SystemConfig
        django_get_or_create = ("key",)

    key = "dashboard_refresh_seconds"
    value = 30


class AuditLogEntryFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = AuditLogEntry

    actor_name = "operator"
    action = AuditAction.UPDATE
    object_type = "pipelines.pipeline"
    object_id = factory.Sequence(str)
    object_repr = factory.LazyAttribute(lambda o: f"pipeline {o.object_id}")
