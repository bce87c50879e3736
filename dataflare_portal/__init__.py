"""DataFlare Portal: the operations portal of a data factory."""

from .celery import app as celery_app

__all__ = ["celery_app"]
