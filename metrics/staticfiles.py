"""A static-files finder exposing plotly's own plotly.min.js as `metrics/vendor/plotly.min.js`.

The plotly wheel ships the exact plotly.js its figure format targets; serving that file (no copy
in the repository, no CDN) keeps the dashboard working offline and in step with the Python package.
"""

from pathlib import Path

import plotly
from django.contrib.staticfiles.finders import BaseFinder
from django.core.files.storage import FileSystemStorage

STATIC_PATH = "metrics/vendor/plotly.min.js"
PACKAGE_DATA = Path(plotly.__file__).resolve().parent / "package_data"


class PlotlyFinder(BaseFinder):
    """Finds the one file; collectstatic copies it like any other static file."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.storage = FileSystemStorage(location=str(PACKAGE_DATA))
        self.storage.prefix = "metrics/vendor"

    def check(self, **kwargs):
        from django.core.checks import Error

        if not (PACKAGE_DATA / "plotly.min.js").is_file():
            return [Error(f"plotly.min.js not found in {PACKAGE_DATA}", id="metrics.E001")]
        return []

    def find(self, path, find_all=False, **kwargs):
        find_all = find_all or kwargs.get("all", False)
        if path == STATIC_PATH:
            found = str(PACKAGE_DATA / "plotly.min.js")
            return [found] if find_all else found
        return [] if find_all else None

    def list(self, ignore_patterns):
        yield "plotly.min.js", self.storage
