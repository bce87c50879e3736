# The engine's fixtures: the in-process doorbell, and real Celery workers against a shared database.
from tasks.tests.conftest import _session_tmp, doorbell, shared_db, workers  # noqa: F401
