"""Stage kinds used only by tests: slow (to kill a worker mid-run), flaky (to fail), waiting (breaker)."""

from __future__ import annotations

import time
from pathlib import Path

from django.utils.translation import gettext_lazy as _

from pipelines.stagekinds import PerRecordStageKind, StageContext, StageResult, registry


class SlowKind(PerRecordStageKind):
    """Passes records through after sleeping `seconds` per batch."""

    name = "test_slow"
    label = _("Test: slow")
    config_schema = {"type": "object", "properties": {"seconds": {"type": "number"}}}

    def process(self, records: list[dict], ctx: StageContext) -> StageResult:
        time.sleep(float(ctx.config.get("seconds", 0.2)))
        return StageResult(records=records)


class FailKind(PerRecordStageKind):
    """Raises on batches whose index is in `fail_batches` while the flag file `switch` exists."""

    name = "test_fail"
    label = _("Test: fail")
    config_schema = {"type": "object"}

    def process(self, records: list[dict], ctx: StageContext) -> StageResult:
        switch = ctx.config.get("switch")
        if ctx.batch_index in ctx.config.get("fail_batches", []) and (not switch or Path(switch).exists()):
            raise RuntimeError(f"boom on batch {ctx.batch_index}")
        return StageResult(records=records)


class BreakerOpen(Exception):
    """Looks like the model client's breaker error: it carries retry_after."""

    def __init__(self, retry_after: float):
        super().__init__("breaker open")
        self.retry_after = retry_after


class WaitKind(PerRecordStageKind):
    """Raises a retry_after error while the flag file `switch` exists."""

    name = "test_wait"
    label = _("Test: wait")
    config_schema = {"type": "object"}

    def process(self, records: list[dict], ctx: StageContext) -> StageResult:
        if Path(ctx.config["switch"]).exists():
            raise BreakerOpen(float(ctx.config.get("retry_after", 1)))
        return StageResult(records=records)


def register() -> None:
    for kind in (SlowKind, FailKind, WaitKind):
        if kind.name not in registry:
            registry.register(kind)
