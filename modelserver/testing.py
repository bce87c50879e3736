"""Test helpers: start a real reference server in-process on a free loopback port."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from .faults import FaultSettings
from .server import ServerHandle, serve

__all__ = ["model_server", "running_server"]


@contextmanager
def running_server(faults: FaultSettings | None = None, **kwargs: Any) -> Iterator[ServerHandle]:
    """Serve on 127.0.0.1:<free port> for the duration of the block."""
    handle = serve("127.0.0.1", 0, faults=faults, **kwargs)
    try:
        yield handle
    finally:
        handle.stop(grace=0.5)


@pytest.fixture
def model_server() -> Iterator[ServerHandle]:
    """A fresh reference server per test (fault knobs on `.faults`, address on `.address`)."""
    with running_server() as handle:
        yield handle
