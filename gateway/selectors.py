"""Gateway reads for other apps (the dashboard names keys through metrics.selectors.register_gateway_key_namer)."""

from __future__ import annotations

from .models import GatewayKey


def gateway_key_names(ids: list[int] | None) -> dict[int, str]:
    """ "project / key name" by key id; None lists every key (the dashboard filter's choices, at most 500)."""
    rows = GatewayKey.objects.select_related("project").order_by("project__name", "name")
    rows = rows.filter(pk__in=ids) if ids is not None else rows[:500]
    return {k.pk: f"{k.project.name} / {k.name}" for k in rows}
