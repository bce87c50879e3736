"""The stage kind registry: built-in kinds plus third-party kinds from the `dataflare.stage_kinds` entry points."""

from __future__ import annotations

import logging
import threading
from importlib.metadata import entry_points

from django.utils.translation import gettext as _

from .base import StageConfigError, StageKind

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "dataflare.stage_kinds"


class UnknownStageKind(StageConfigError, LookupError):
    """No stage kind is registered under this name."""


class StageKindRegistry:
    """Name -> StageKind instance; built-ins load first, entry points may add (never replace) kinds."""

    def __init__(self):
        self._kinds: dict[str, StageKind] = {}
        self._loaded = False
        self._lock = threading.Lock()

    def register(self, kind: StageKind | type[StageKind], *, replace: bool = False) -> StageKind:
        """Add a kind (class or instance); refuses to shadow an existing name unless replace=True."""
        instance = kind() if isinstance(kind, type) else kind
        if not isinstance(instance, StageKind) or not instance.name:
            raise TypeError(f"{kind!r} is not a named StageKind")
        if instance.name in self._kinds and not replace:
            raise ValueError(f"stage kind {instance.name!r} is already registered")
        self._kinds[instance.name] = instance
        return instance

    def _ensure_loaded(self) -> None:
        if self._loaded:
            return
        with self._lock:
            if self._loaded:
                return
            from . import builtin

            for kind in builtin.BUILTIN_KINDS:
                if kind.name not in self._kinds:
                    self.register(kind)
            self._load_entry_points()
            self._loaded = True

    def _load_entry_points(self) -> None:
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            try:
                kind = ep.load()
                if ep.name in self._kinds or getattr(kind, "name", ep.name) in self._kinds:
                    logger.warning("stage kind entry point %s ignored: the name is taken", ep.name)
                    continue
                self.register(kind)
            except Exception:
                # A broken plug-in must not take the portal down; it is simply not offered.
                logger.exception("stage kind entry point %s failed to load", ep.name)

    def get(self, name: str) -> StageKind:
        """The kind registered as `name`, or UnknownStageKind."""
        self._ensure_loaded()
        try:
            return self._kinds[name]
        except KeyError:
            raise UnknownStageKind(_("Unknown stage kind %(kind)r.") % {"kind": name}, "$") from None

    def kinds(self) -> list[StageKind]:
        """All registered kinds, in registration order."""
        self._ensure_loaded()
        return list(self._kinds.values())

    def names(self) -> list[str]:
        self._ensure_loaded()
        return list(self._kinds)

    def choices(self) -> list[tuple[str, str]]:
        """(name, label) pairs for form fields."""
        return [(k.name, str(k.label)) for k in self.kinds()]

    def label_of(self, name: str) -> str:
        """The kind's label in the active language; the name itself for a kind not (or no longer) registered."""
        self._ensure_loaded()
        kind = self._kinds.get(name)
        return str(kind.label) if kind is not None and kind.label else name

    def __contains__(self, name: str) -> bool:
        self._ensure_loaded()
        return name in self._kinds


registry = StageKindRegistry()
