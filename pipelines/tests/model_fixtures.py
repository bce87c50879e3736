"""Fixtures for model-service tests: a real reference server and a model client with a private breaker store."""

from __future__ import annotations

import pytest

from modelserver.testing import model_server  # noqa: F401  (re-exported fixture)


@pytest.fixture
def model_client_private(tmp_path):
    """This process's model client over a fresh SQLite breaker store (state never leaks between tests)."""
    import modelclient
    from modelclient import SqliteBreakerStore
    from pipelines.model_configs import model_client_configure

    client = model_client_configure(breaker_store=SqliteBreakerStore(tmp_path / "breaker.sqlite3"))
    yield client
    modelclient.configure(breaker_store=None)


def model_config(address: str, **overrides):
    """An unsaved ModelConfig for the reference server (fast deadlines and backoff for tests)."""
    from pipelines.models import ModelConfig

    values = {
        "name": "annotator-test",
        "endpoint": address,
        "model_name": "annotator",
        "model_version": "",
        "parameters": {"max_tokens": 32},
        "deadline_ms": 5_000,
        "max_attempts": 4,
        "backoff_base_ms": 5,
        "backoff_max_ms": 50,
        "max_in_flight": 4,
        "batch_size": 8,
        "breaker_failure_threshold": 3,
        "breaker_reset_seconds": 30,
    }
    values.update(overrides)
    return ModelConfig(**values)
