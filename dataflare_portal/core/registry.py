"""Extension points the apps fill in their AppConfig.ready(), so the core imports no app.

- readiness checks: `name -> callable() -> (ok: bool, detail: str)`, run by /readyz (only what this
  process needs to serve: a failing one makes it unready);
- status checks and periodic duties (below): degraded components and beat's duties;
- banner providers: `callable(request) -> list[dict]`, items shown in the banner on every page;
- overview panels: `callable(request) -> dict(template=..., context=...)`, on the admin index;
- version-published listeners: `callable(version_id)`, called after a publish transaction commits;
- run-event listeners: `callable(event)`, called inside the transaction that records a run event.
"""

from collections.abc import Callable
from dataclasses import dataclass
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


# Periodic duties (reaper, rollups, alert evaluation…): `celery task name -> DutySpec`. Beat schedules
# them (settings.CELERY_BEAT_SCHEDULE); workers run them too while beat is silent (core/duties.py).
@dataclass(frozen=True)
class DutySpec:
    name: str
    run: Callable[[], Any]
    label: Any


duties: dict[str, DutySpec] = {}
# Components that may be degraded without making this process unready: `name -> callable() -> dict`
# with at least {"ok": bool, "detail": str}; shown in /readyz details to signed-in users. They must not
# dial anything a user configured (model endpoints): they report recorded state.
status_checks: dict[str, Callable[[], dict]] = {}


def register_duty(name: str, run: Callable[[], Any], label: Any) -> None:
    duties[name] = DutySpec(name=name, run=run, label=label)


def register_status_check(name: str, check: Callable[[], dict]) -> None:
    status_checks[name] = check


# Called with a DatasetVersion id after the transaction that published it commits (tasks/publish.py), e.g.
# the dataset triggers of the schedules app. A listener's failure is logged, never the publisher's problem.
version_published_listeners: list[Callable[[int], Any]] = []


def register_version_published(listener: Callable[[int], Any]) -> None:
    if listener not in version_published_listeners:
        version_published_listeners.append(listener)


def version_published(version_id: int) -> None:
    """Tell every listener that this version was published (call it from transaction.on_commit)."""
    import logging

    for listener in list(version_published_listeners):
        try:
            listener(version_id)
        except Exception:
            logging.getLogger(__name__).exception("version-published listener %r failed", listener)


# Called with a tasks.RunEvent inside the transaction that records it (tasks/events.py), e.g. the alerts
# app queues one outbox row per subscribed webhook, so the rows commit or roll back with the transition.
run_event_listeners: list[Callable[[Any], Any]] = []


def register_run_event(listener: Callable[[Any], Any]) -> None:
    if listener not in run_event_listeners:
        run_event_listeners.append(listener)
