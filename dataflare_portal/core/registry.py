"""Extension points the apps fill in their AppConfig.ready(), so the core imports no app.

- readiness checks: `name -> callable() -> (ok: bool, detail: str)`, run by /readyz;
- banner providers: `callable(request) -> list[dict]`, items shown in the banner on every page;
- overview panels: `callable(request) -> dict(template=..., context=...)`, on the admin index.
"""

from collections.abc import Callable
from typing import Any

readiness_checks: dict[str, Callable[[], tuple[bool, str]]] = {}
banner_providers: list[Callable[[Any], list[dict]]] = []
overview_panels: list[tuple[int, Callable[[Any], dict]]] = []
# "app_label.codename" model permissions the operator group gets besides view_* and custom ones
# (e.g. "tasks.change_reviewitem" so operators can review in the admin).
operator_permissions: set[str] = set()
# Extra Prometheus collectors: callables yielding prometheus_client metric families at scrape time.
prometheus_collectors: list[Callable[[], Any]] = []


def register_readiness_check(name: str, check: Callable[[], tuple[bool, str]]) -> None:
    readiness_checks[name] = check


def register_banner_provider(provider: Callable[[Any], list[dict]]) -> None:
    if provider not in banner_providers:
        banner_providers.append(provider)


def register_prometheus_collector(collector: Callable[[], Any]) -> None:
    if collector not in prometheus_collectors:
        prometheus_collectors.append(collector)


def register_operator_permissions(*dotted: str) -> None:
    """Grant these model permissions to the operator group (applied by `manage.py roles_sync`)."""
    operator_permissions.update(dotted)


def register_overview_panel(order: int, panel: Callable[[Any], dict]) -> None:
    if all(p is not panel for _, p in overview_panels):
        overview_panels.append((order, panel))
        overview_panels.sort(key=lambda item: item[0])
