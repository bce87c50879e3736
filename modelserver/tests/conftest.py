"""Fixtures: a real reference server on a free loopback port."""

from modelserver.testing import model_server, openai_server  # noqa: F401  (re-exported fixtures)
