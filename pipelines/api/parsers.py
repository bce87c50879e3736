"""Pipelines use the portal-wide bounded JSON parser (kept importable here for existing imports)."""

from dataflare_portal.core.api.parsers import BoundedJSONParser

__all__ = ["BoundedJSONParser"]
