"""factory-boy factories for the core models (runtime config overrides, audit entries)."""

import datetime as dt

import factory
from django.contrib.auth import get_user_model
from django.utils import timezone

from dataflare_portal.core.models import AuditAction, AuditLogEntry, Duty, OidcIdentity, SystemConfig


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


class DutyFactory(factory.django.DjangoModelFactory):
    """A periodic duty that last ran a minute ago, with no lease held."""

    class Meta:
        model = Duty
        django_get_or_create = ("name",)

    name = factory.Sequence(lambda n: f"duty-{n}")
    last_started_at = factory.LazyFunction(lambda: timezone.now() - dt.timedelta(minutes=1))
    last_finished_at = factory.LazyFunction(timezone.now)
    last_by = "worker@test:1"


class OidcIdentityFactory(factory.django.DjangoModelFactory):
    """A provider identity (issuer, subject) linked to a new local user, last signed in as a viewer."""

    class Meta:
        model = OidcIdentity

    issuer = "http://127.0.0.1:9/realms/test"
    subject = factory.Sequence(lambda n: f"subject-{n}")
    user = factory.LazyFunction(
        lambda: get_user_model().objects.create_user(username=f"oidc-{timezone.now().timestamp()}")
    )
    role = "viewer"
