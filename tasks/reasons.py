"""Why a run is where it is, stored as a code plus parameters and rendered in the reader's language.

The engine writes `TaskRun.status_code` and `status_params` (and, for readers that only know the text
field, `status_reason` rendered in the default language); pages, the API and commands render
`run_reason(run)` in the language active for the reader. Templates are ours; parameters are data
(stage keys, record ids, error text) and fill named placeholders only.
"""

from __future__ import annotations

from django.utils.translation import gettext_lazy

REASONS = {
    # The publish unit waits for a person: review the sampled records or override as an admin.
    "qc_review": gettext_lazy(
        "Waiting for QC review: stage %(stage)s cannot publish until the lot is accepted (%(state)s); "
        "decide the sampled records in the review queue, or an admin overrides with a reason."
    ),
    # A stage waits for something that resolves by itself (model service breaker open).
    "stage_waiting": gettext_lazy("Waiting: stage %(stage)s retries after %(seconds)s s (%(detail)s)."),
    "batch_crashed": gettext_lazy(
        "Stage %(stages)s crashed: batch %(index)s lost its worker %(n)s times; its input records: %(records)s."
    ),
    # A batch used up its attempts; the run stops (retry or resume reopens it).
    "batch_failed": gettext_lazy("Stage %(stage)s failed on batch %(index)s after %(n)s attempt(s): %(error)s"),
    # Someone cancelled the run (shown while it is cancelling and once it is cancelled).
    "cancelled_by": gettext_lazy("Cancelled by %(who)s."),
}

# The run statuses each code explains: a code left behind by an earlier state is not shown (the text
# field, which every transition sets, is).
REASON_STATUS = {
    "qc_review": ("waiting",),
    "stage_waiting": ("waiting",),
    "batch_crashed": ("crashed",),
    "batch_failed": ("failed",),
    "cancelled_by": ("cancelling", "cancelled"),
}

# Waits that need a person: `run_pipeline --wait` stops waiting on them (exit 3) instead of blocking.
HUMAN_WAITS = ("qc_review",)


def reason_render(code: str, params: dict | None, fallback: str = "") -> str:
    """The text of a stored reason in the active language; the stored text if the code is unknown."""
    template = REASONS.get(code or "")
    if template is None:
        return fallback
    values = {k: v for k, v in (params or {}).items() if isinstance(v, (str, int, float))}
    try:
        return str(template) % values
    except (KeyError, TypeError, ValueError):
        return fallback


def run_reason_code(run) -> str:
    """The run's reason code if it explains the run's current status, else "" (only the text applies)."""
    return run.status_code if run.status in REASON_STATUS.get(run.status_code, ()) else ""


def run_reason(run) -> str:
    """A run's status reason for the current reader."""
    if not run_reason_code(run):
        return run.status_reason
    return reason_render(run.status_code, run.status_params, run.status_reason)


def run_waits_for_a_person(run) -> bool:
    return run.status == "waiting" and run.status_code in HUMAN_WAITS
