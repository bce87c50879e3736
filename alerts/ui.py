"""The alert banner on every page and the overview panel: cheap reads, cached a few seconds."""

from __future__ import annotations

from django.core.cache import cache
from django.urls import reverse
from django.utils.translation import gettext as _
from django.utils.translation import ngettext

from . import selectors
from .services import BANNER_CACHE_KEY
from .titles import title_display

BANNER_TTL_S = 5
BANNER_CRITICAL_SHOWN = 5


def banner_items(request) -> list[dict]:
    """Firing critical alerts (each linked), then one line counting firing warnings; critical first."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return []
    data = cache.get(BANNER_CACHE_KEY)
    if data is None:
        critical, warnings = selectors.banner_alerts(limit=BANNER_CRITICAL_SHOWN)
        # Codes and parameters are cached, not text: each reader gets the titles in their language.
        data = {
            "critical": [(a["id"], a["title_code"], a["title_params"], a["title"]) for a in critical],
            "warnings": warnings,
        }
        cache.set(BANNER_CACHE_KEY, data, BANNER_TTL_S)
    inbox = reverse("alerts:inbox")
    items = [
        {"level": "critical", "title": title_display(code, params, text), "url": reverse("alerts:detail", args=[pk])}
        for pk, code, params, text in data["critical"][:BANNER_CRITICAL_SHOWN]
    ]
    if len(data["critical"]) > BANNER_CRITICAL_SHOWN:
        items.append(
            {
                "level": "critical",
                "title": _("More critical alerts are firing: open the inbox."),
                "url": f"{inbox}?status=firing&severity=critical",
            }
        )
    if data["warnings"]:
        n = data["warnings"]
        items.append(
            {
                "level": "warning",
                "title": ngettext("%(n)d warning alert is firing.", "%(n)d warning alerts are firing.", n) % {"n": n},
                "url": f"{inbox}?status=firing&severity=warning",
            }
        )
    return items


def overview_panel(request) -> dict:
    """Alert counts by severity and the newest open alerts, for the operations overview."""
    from .choices import AlertStatus
    from .models import Alert

    alerts = list(
        Alert.objects.filter(status__in=AlertStatus.open()).order_by("severity", "-fired_at")[:5]
    )  # 'critical' < 'warning' alphabetically: critical first
    return {
        "template": "alerts/overview_panel.html",
        "context": {
            "title": _("Alerts"),
            "panel_id": "df-panel-alerts",
            "counts": selectors.open_alert_counts(),
            "alerts": alerts,
            "more_url": reverse("alerts:inbox"),
            "more_label": _("Open the inbox"),
        },
    }
