"""The Celery app. Messages carry ids only; the database is the truth (see docs/architecture.md)."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dataflare_portal.settings")

app = Celery("dataflare_portal")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


def tune_embedded_transport() -> None:
    """Poll the serverless SQLite transport often: its default of 1 s would dominate batch latency.

    kombu passes the SQLAlchemy transport's options to create_engine, so the polling interval is
    set on the transport class instead.
    """
    from django.conf import settings

    if settings.CELERY_BROKER_URL.startswith("sqla+"):
        from kombu.transport import sqlalchemy

        sqlalchemy.Transport.polling_interval = settings.CELERY_BROKER_POLLING_INTERVAL
