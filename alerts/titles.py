"""Alert titles stored as a code and parameters and rendered in the reader's language.

Evaluation runs in a worker (English); operators read the inbox and the red banner in their own
language. So an alert keeps `title_code` + `title_params` (rendered here at read time) beside
`title`, the English sentence for notifications, search and alerts written before codes existed
(the fallback).
"""

from __future__ import annotations

from typing import Any

from django.utils import translation
from django.utils.translation import gettext, gettext_lazy, pgettext

TITLES: dict[str, Any] = {  # lazy: translated when rendered
    "metric": gettext_lazy("%(rule)s: %(value)s on %(scope)s"),
    "rollups_behind": gettext_lazy("Rollups are %(value)s behind the raw events"),
    "run_ended": gettext_lazy("Run %(run)s of %(pipeline)s %(status)s: %(reason)s"),
    "run_stuck": gettext_lazy("Run %(run)s of %(pipeline)s has made no progress for %(minutes)s"),
    "breaker": gettext_lazy("Model service %(key)s: circuit breaker %(state)s"),
}


def format_value(value: float | None, unit: str) -> str:
    """A measured value with its unit, in the active language."""
    if value is None:
        return "—"
    if unit == "fraction":
        return f"{value:.1%}"
    if unit == "ms":
        return gettext("%(n)s ms") % {"n": f"{value:.0f}"}
    if unit == "minutes":
        return gettext("%(n)s min") % {"n": f"{value:.0f}"}
    return f"{value:g}"


def _scope(scope: dict) -> str:
    parts = []
    if scope.get("pipeline"):
        parts.append(gettext("pipeline %(name)s") % {"name": scope["pipeline"]})
    elif scope.get("project"):
        parts.append(gettext("project %(name)s") % {"name": scope["project"]})
    if scope.get("stage"):
        parts.append(gettext("stage %(name)s") % {"name": scope["stage"]})
    if scope.get("model"):
        parts.append(gettext("model %(name)s") % {"name": scope["model"]})
    return ", ".join(parts) or gettext("all projects")


def _breaker_state(state: str) -> str:
    labels = {
        "open": pgettext("circuit breaker", "open"),
        "half_open": pgettext("circuit breaker", "half-open"),
        "closed": pgettext("circuit breaker", "closed"),
    }
    return labels.get(state, state)


def _run_reason(reason: dict | None) -> str:
    if not reason:
        return gettext("no reason recorded")
    from tasks.reasons import reason_render

    text = reason_render(reason.get("code", ""), reason.get("params"), reason.get("text", ""))
    return text.splitlines()[0][:120] if text else gettext("no reason recorded")


def _run_status(status: str) -> str:
    from tasks.choices import RunStatus

    try:
        return str(RunStatus(status).label).lower()
    except ValueError:
        return status


def _render(code: str, p: dict[str, Any]) -> str:
    template = str(TITLES[code])
    if code == "metric":
        values = {"rule": p["rule"], "value": format_value(p["value"], p["unit"]), "scope": _scope(p["scope"])}
    elif code == "rollups_behind":
        values = {"value": format_value(p["value"], "minutes")}
    elif code == "run_ended":
        values = {
            "run": p["run"],
            "pipeline": p["pipeline"],
            "status": _run_status(p["status"]),
            "reason": _run_reason(p.get("reason")),
        }
    elif code == "run_stuck":
        values = {"run": p["run"], "pipeline": p["pipeline"], "minutes": format_value(p["minutes"], "minutes")}
    else:  # breaker
        values = {"key": p["key"], "state": _breaker_state(p["state"])}
    return template % values


def title(code: str, **params: Any) -> dict[str, Any]:
    """The fields an observation stores: the code, its parameters and the English sentence."""
    if code not in TITLES:
        raise KeyError(f"unknown alert title code {code!r}")
    with translation.override("en"):
        text = _render(code, params)
    return {"title": text[:300], "title_code": code, "title_params": params}


def title_display(code: str, params: dict | None, fallback: str) -> str:
    """The title in the active language; the stored sentence when there is no (known) code."""
    if code in TITLES:
        try:
            return _render(code, params or {})[:300]
        except (KeyError, TypeError, ValueError):
            pass
    return fallback
