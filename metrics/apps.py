from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


def today_kpis_panel(request) -> dict:
    """Overview panel: today's KPIs from the same selectors as the dashboard."""
    from django.urls import reverse

    from . import selectors
    from .filtersets import metrics_query
    from .views import _card

    query = metrics_query({"range": "today"})
    cards = [_card(card) for card in selectors.kpi_cards(selectors.kpis(query))]
    return {
        "template": "metrics/_overview_panel.html",
        "context": {
            "cards": cards,
            "freshness": selectors.freshness(now=query.now),
            "dashboard_url": reverse("metrics:dashboard"),
        },
    }


class MetricsConfig(AppConfig):
    name = "metrics"
    verbose_name = _("Metrics")

    def ready(self):
        from dataflare_portal.core.registry import register_overview_panel

        from . import staticfiles  # noqa: F401  (registers the plotly bundle check)

        register_overview_panel(20, today_kpis_panel)
        from dataflare_portal.core.registry import register_duty

        from .tasks import prune_duty, rollup_duty

        # Beat runs them on schedule; workers run them too while beat is silent (core/duties.py).
        register_duty("metrics.rollup", rollup_duty, _("metrics rollup"))
        register_duty("metrics.prune", prune_duty, _("metrics retention"))
