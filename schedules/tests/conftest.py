"""The engine's fixtures (in-process doorbell, shared database, real workers) for the schedule tests."""

from tasks.tests.conftest import _session_tmp, doorbell, shared_db, workers  # noqa: F401
