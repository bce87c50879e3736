"""Why a run or stage is where it is, stored as a code and parameters and rendered in the reader's language.

A worker writes a reason once, in whatever language it runs in; operators read it later in theirs.
So a reason is stored three ways: `status_reason_code` and `status_reason_params` (rendered at read
time by `reason_display`) and `status_reason`, the English sentence, for logs, the API and rows
written before codes existed (which `reason_display` falls back to).
"""

from __future__ import annotations

from typing import Any

from django.utils import translation
from django.utils.translation import gettext_lazy

# code -> English message with %(name)s placeholders (marked for makemessages, translated at read time).
REASONS: dict[str, Any] = {  # lazy: translated when rendered
    "cancelled_by": gettext_lazy("Cancelled by %(who)s."),
    "batch_failed": gettext_lazy("Stage %(stage)s failed on batch %(index)s after %(n)s attempt(s): %(error)s"),
    "batch_crashed": gettext_lazy("Stage %(stage)s crashed: batch %(index)s lost its worker %(n)s times."),
    "stage_waiting": gettext_lazy("Waiting: %(error)s"),
}

# What clears a reason (a run that resumes or succeeds).
NO_REASON: dict[str, Any] = {"status_reason": "", "status_reason_code": "", "status_reason_params": {}}


def _render(code: str, params: dict[str, Any]) -> str:
    return str(REASONS[code]) % params


def reason(code: str, **params: Any) -> dict[str, Any]:
    """The field values a reason writes: code, parameters and the English sentence."""
    if code not in REASONS:
        raise KeyError(f"unknown status reason code {code!r}")
    with translation.override("en"):
        text = _render(code, params)
    return {"status_reason": text, "status_reason_code": code, "status_reason_params": params}


def reason_display(code: str, params: dict | None, fallback: str) -> str:
    """The reason in the active language; the stored sentence when there is no (known) code."""
    if code in REASONS:
        try:
            return _render(code, params or {})
        except (KeyError, TypeError, ValueError):
            pass  # parameters from an older code version: the stored sentence is still right
    return fallback
