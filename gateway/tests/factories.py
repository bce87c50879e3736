"""Gateway rows for tests that need some (the permission matrix)."""

from __future__ import annotations

from django.utils import timezone

from catalog.models import Project
from gateway import services
from gateway.models import GatewayRequest


def seed_gateway():
    """One key of the first project and one logged request of it; returns (key, secret text)."""
    project = Project.objects.order_by("pk").first()
    key, text = services.key_create(actor=None, project=project, name="policy-check")
    GatewayRequest.objects.create(
        ts=timezone.now(), key=key, project_id=project.pk, endpoint="chat", model="demo", http_status=200
    )
    return key, text
