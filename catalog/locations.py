"""Version location templates: `out/{dataset}/v{version:04d}.jsonl`, filled by the safe renderer only.

Used by a publish stage's `location` and by a dataset location holding `{version}`; the allow-list is
here so validation (stage config, dataset form) and the publisher agree on it.
"""

from __future__ import annotations

from dataflare_portal.core.render import NO_SPEC, ZERO_PAD, SafeTemplate, TemplateSyntaxError, compile_template

__all__ = [
    "LOCATION_PLACEHOLDERS",
    "TemplateSyntaxError",
    "has_version_placeholder",
    "location_template",
    "render_location",
]

# name -> the one format spec shape it accepts (zero-padding for the version number, nothing else).
LOCATION_PLACEHOLDERS = {"dataset": NO_SPEC, "version": ZERO_PAD, "run_id": NO_SPEC}


def location_template(text: str) -> SafeTemplate:
    """Parse a location template; raises TemplateSyntaxError naming the refused placeholder."""
    return compile_template(text, placeholders=LOCATION_PLACEHOLDERS)


def render_location(text: str, *, dataset: str, version: int, run_id) -> str:
    """The location of one version: only {dataset}, {version} and {run_id} are filled, as plain text."""
    return location_template(text).render({"dataset": dataset, "version": int(version), "run_id": str(run_id)})


def has_version_placeholder(location: str) -> bool:
    """Whether a dataset's own location is a template (it names {version}, padded or not)."""
    return "{version" in location
