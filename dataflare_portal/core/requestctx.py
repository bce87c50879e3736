"""Context of the current request (its id), readable from services, logs and Celery tasks."""

from contextvars import ContextVar

request_id_var: ContextVar[str] = ContextVar("request_id", default="")
