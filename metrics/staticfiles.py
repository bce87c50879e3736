"""The dashboard's plotly.js: a committed partial bundle and the zh-CN locale (static/metrics/vendor/).

plotly.py's figure format targets one plotly.js version; the committed bundle must be that version.
The system check below compares the bundle's header with the one of the plotly.js the installed
`plotly` package ships, so an upgrade of either side cannot drift silently.
"""

import re
from pathlib import Path

import plotly
from django.conf import settings
from django.core.checks import Error, register

STATIC_PATH = "metrics/vendor/plotly-basic.min.js"
LOCALE_PATHS = {"zh-hans": ("metrics/vendor/plotly-locale-zh-cn.js", "zh-CN")}
# The trace types the bundle holds (plotly's "basic" partial bundle) and the only ones charts.py may use.
BUNDLE_TRACES = frozenset({"scatter", "bar", "pie"})
PACKAGE_BUNDLE = Path(plotly.__file__).resolve().parent / "package_data" / "plotly.min.js"
_VERSION = re.compile(rb"plotly\.js (?:\([^)]*\) )?v(\d+\.\d+\.\d+)")


def bundle_version(path: Path) -> str | None:
    """The plotly.js version in a bundle's header comment."""
    try:
        with open(path, "rb") as fh:
            match = _VERSION.search(fh.read(400))
    except OSError:
        return None
    return match.group(1).decode() if match else None


def plotly_locale(language: str | None) -> tuple[str, str] | None:
    """(static path, plotly locale name) of the plotly.js locale for a portal language, if any."""
    return LOCALE_PATHS.get((language or "").lower())


@register()
def check_plotly_bundle(app_configs=None, **kwargs):
    ours = bundle_version(Path(settings.BASE_DIR) / "static" / STATIC_PATH)
    theirs = bundle_version(PACKAGE_BUNDLE)
    if ours is None:
        return [Error(f"{STATIC_PATH} is missing or has no version header", id="metrics.E001")]
    if theirs is not None and ours != theirs:
        return [
            Error(
                f"{STATIC_PATH} is plotly.js {ours} but the plotly package targets {theirs}",
                hint="Update static/metrics/vendor/ (see its README.md).",
                id="metrics.E001",
            )
        ]
    return []
