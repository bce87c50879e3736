from tasks.tests.conftest import doorbell  # noqa: F401  (the engine's in-process doorbell)
