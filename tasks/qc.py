"""QC services: automatic checks, ISO 2859-1 acceptance sampling, review decisions, lot decision, override.

Sampling plans follow ISO 2859-1:1999 (equivalently ANSI/ASQ Z1.4-2003), single sampling, normal
inspection: Table I maps lot size and inspection level to a sample size code letter, Table II-A maps
the code letter and AQL to the sample size n and acceptance number Ac (Re = Ac + 1). See docs/qc.md.

The sample is drawn reproducibly in one pass over the lot: each record gets a key
sha256("<seed>:<run id>:<index>") and the n records with the smallest keys are the sample, so the
same policy seed and run always draw the same records, without holding the lot in memory.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from dataflare_portal.core.models import AuditAction
from dataflare_portal.core.services import ROLE_ADMIN, audit_record, audit_snapshot, user_role
from pipelines.models import QCPolicy
from pipelines.validation import INSPECTION_LEVELS, PREFERRED_AQLS

from .choices import LotDecision, ReviewDecision
from .models import QCLot, ReviewItem, StageRun

# ---- ISO 2859-1 tables ---------------------------------------------------------------------
CODE_LETTERS = "ABCDEFGHJKLMNPQR"
SAMPLE_SIZES = dict(
    zip(CODE_LETTERS, (2, 3, 5, 8, 13, 20, 32, 50, 80, 125, 200, 315, 500, 800, 1250, 2000), strict=True)
)
_LEVEL_COLUMNS = ("S-1", "S-2", "S-3", "S-4", "I", "II", "III")
# Table I: (upper lot size bound, code letters for S-1, S-2, S-3, S-4, I, II, III).
TABLE_I = (
    (8, "AAAAAAB"),
    (15, "AAAAABC"),
    (25, "AABBBCD"),
    (50, "ABBCCDE"),
    (90, "BBCCCEF"),
    (150, "BBCDDFG"),
    (280, "BCDEEGH"),
    (500, "BCDEFHJ"),
    (1200, "CCEFGJK"),
    (3200, "CDEGHKL"),
    (10000, "CDFGJLM"),
    (35000, "CDFHKMN"),
    (150000, "DEGJLNP"),
    (500000, "DEGJMPQ"),
    (None, "DEHKNQR"),
)
# Table II-A is constant along its diagonals: with i the code letter's index and j the AQL's index
# in PREFERRED_AQLS, the cell depends on i + j. Ac by diagonal; 16 is the "↑" band between 0/1 and 1/2,
# below 15 the "↓" band (use the first plan below), above 24 the "↑" band (use the 21/22 plan above).
AC_BY_DIAGONAL = {15: 0, 17: 1, 18: 2, 19: 3, 20: 5, 21: 7, 22: 10, 23: 14, 24: 21}
FIRST_DIAGONAL, LAST_DIAGONAL = 15, 24
MAX_TABLE_SAMPLE = SAMPLE_SIZES["R"]
AUTO_REASON_PREFIX = "auto:"


class QCError(ValueError):
    """A QC action that is not allowed in the lot's current state."""


@dataclass(frozen=True)
class SamplingPlan:
    """A single sampling plan: how many to inspect (n) and how many defects are acceptable (Ac)."""

    lot_size: int
    inspection_level: str
    aql: float
    code_letter: str
    plan_letter: str
    sample_size: int
    acceptance_number: int
    rejection_number: int
    full_inspection: bool
    source: str

    def to_dict(self) -> dict:
        return asdict(self)


def code_letter(lot_size: int, inspection_level: str = "II") -> str:
    """ISO 2859-1 Table I: the sample size code letter of a lot size at an inspection level."""
    if inspection_level not in _LEVEL_COLUMNS:
        raise ValueError(f"unknown inspection level {inspection_level!r}")
    column = _LEVEL_COLUMNS.index(inspection_level)
    size = max(int(lot_size), 2)
    for upper, letters in TABLE_I:
        if upper is None or size <= upper:
            return letters[column]
    raise AssertionError("unreachable: the last row is open-ended")


def _aql_index(aql: float) -> int:
    for index, value in enumerate(PREFERRED_AQLS):
        if abs(float(aql) - value) < 1e-9:
            return index
    raise ValueError(f"AQL {aql} is not an ISO 2859-1 preferred value")


def table_plan(letter: str, aql: float) -> tuple[str, int, int]:
    """ISO 2859-1 Table II-A (single, normal): (plan letter after arrows, n, Ac) for a code letter and AQL."""
    i = CODE_LETTERS.index(letter)
    j = _aql_index(aql)
    d = i + j
    if d < FIRST_DIAGONAL:
        i = FIRST_DIAGONAL - j  # ↓: the first plan below
    elif d == FIRST_DIAGONAL + 1:
        i -= 1  # ↑: the 0/1 plan above
    elif d > LAST_DIAGONAL:
        i = LAST_DIAGONAL - j  # ↑: the 21/22 plan above
    plan_letter = CODE_LETTERS[i]
    return plan_letter, SAMPLE_SIZES[plan_letter], AC_BY_DIAGONAL[i + j]


def sampling_plan(
    *,
    lot_size: int,
    aql: float,
    inspection_level: str = "II",
    sample_size: int | None = None,
    acceptance_number: int | None = None,
) -> SamplingPlan:
    """The sampling plan for a lot: from the ISO tables, or the policy's explicit overrides."""
    if inspection_level not in INSPECTION_LEVELS:
        raise ValueError(f"unknown inspection level {inspection_level!r}")
    letter = code_letter(lot_size, inspection_level) if lot_size > 0 else "A"
    plan_letter, n, ac = table_plan(letter, aql)
    source = "ISO 2859-1 Table I + Table II-A (single sampling, normal inspection)"
    if sample_size is not None or acceptance_number is not None:
        source = (
            "policy override"
            + (" (n)" if sample_size is not None else "")
            + (" (Ac)" if acceptance_number is not None else "")
        )
        n = sample_size if sample_size is not None else n
        ac = acceptance_number if acceptance_number is not None else ac
    full = n >= lot_size
    # "If sample size equals or exceeds lot size, carry out 100 per cent inspection."
    n = min(n, lot_size)
    return SamplingPlan(
        lot_size=lot_size,
        inspection_level=inspection_level,
        aql=float(aql),
        code_letter=letter,
        plan_letter=plan_letter,
        sample_size=n,
        acceptance_number=ac,
        rejection_number=ac + 1,
        full_inspection=full,
        source=source,
    )


def policy_plan(policy: QCPolicy, lot_size: int) -> SamplingPlan:
    return sampling_plan(
        lot_size=lot_size,
        aql=policy.aql,
        inspection_level=policy.inspection_level,
        sample_size=policy.sample_size,
        acceptance_number=policy.acceptance_number,
    )


# ---- Automatic checks -------------------------------------------------------------------------
class AutoChecker:
    """Runs a policy's rules (the filter kind's rule format) and the model-judge score threshold."""

    def __init__(self, policy: QCPolicy):
        self.policy = policy
        self.filter_kind = None
        if policy.rules:
            from pipelines.stagekinds import StageContext, registry

            self.filter_kind = registry.get("filter")
            self.ctx = StageContext(config={"rules": policy.rules, "on_fail": "quarantine"})

    def failures(self, records: list[dict]) -> dict[int, tuple[str, str]]:
        """index in `records` -> (code, reason) for each record that fails a check."""
        out: dict[int, tuple[str, str]] = {}
        if self.filter_kind is not None:
            result = self.filter_kind.process(records, self.ctx)
            for q in result.quarantined:
                out[q.index] = (q.code, q.reason)
        field, minimum = self.policy.score_field, self.policy.min_score
        if field and minimum is not None:
            for index, record in enumerate(records):
                if index in out:
                    continue
                value = record.get(field) if isinstance(record, dict) else None
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    out[index] = ("score_missing", _("No numeric model score in %(field)s.") % {"field": field})
                elif value < minimum:
                    out[index] = (
                        "score_below_threshold",
                        _("Model score %(score)s is below %(min)s.") % {"score": value, "min": minimum},
                    )
        return out


# ---- Lot creation ----------------------------------------------------------------------------
def _draw_key(seed: int, run_id, index: int) -> int:
    digest = hashlib.sha256(f"{seed}:{run_id}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def _chunks(records_iter: Iterable) -> Iterator[list[dict]]:
    """Accept an iterator of chunks (lists of records) or of single records."""
    pending: list[dict] = []
    for item in records_iter:
        if isinstance(item, list):
            if pending:
                yield pending
                pending = []
            yield item
        else:
            pending.append(item)
            if len(pending) >= 1000:
                yield pending
                pending = []
    if pending:
        yield pending


def _stage_policy(stage_run: StageRun) -> QCPolicy:
    ref = (stage_run.config or {}).get("policy")
    if ref is not None:
        qs = QCPolicy.objects.filter(pk=ref) if isinstance(ref, int) else QCPolicy.objects.filter(name=ref)
        policy = qs.first()
        if policy is None:
            raise QCError(_("QC policy %(ref)s does not exist.") % {"ref": ref})
        return policy
    policy = stage_run.run.pipeline.qc_policy
    if policy is None:
        raise QCError(_("The pipeline has no QC policy."))
    return policy


def qc_stage_run(*, stage_run: StageRun, records_iter: Iterable) -> QCLot:
    """The engine's entry for a qc stage: create the lot for the stage's complete input."""
    return qc_lot_create(stage_run=stage_run, policy=_stage_policy(stage_run), records_iter=records_iter)


def qc_lot_create(*, stage_run: StageRun, policy: QCPolicy, records_iter: Iterable) -> QCLot:
    """Check every record, draw the sample reproducibly, create review items; decide now if no review is needed."""
    existing = QCLot.objects.filter(stage_run=stage_run).first()
    if existing is not None:
        humans = existing.items.exclude(reviewer=None).exists()
        if humans or existing.decision != LotDecision.PENDING:
            # A redelivered or retried qc step keeps the reviewers' work; the draw would be identical anyway.
            return existing
    seed = (stage_run.config or {}).get("sample_seed", policy.seed)
    run_id = stage_run.run_id
    checker = AutoChecker(policy)
    keep = max(MAX_TABLE_SAMPLE, policy.sample_size or 0)
    heap: list[tuple[int, int, dict, tuple | None]] = []  # (-key, index, record, failure): a bounded max-heap
    lot_size = 0
    auto_defects = 0
    examples: list[dict] = []
    for chunk in _chunks(records_iter):
        failures = checker.failures(chunk)
        for offset, record in enumerate(chunk):
            index = lot_size + offset
            failure = failures.get(offset)
            if failure is not None:
                auto_defects += 1
                if len(examples) < 20:
                    examples.append({"index": index, "code": failure[0], "reason": failure[1]})
            entry = (-_draw_key(seed, run_id, index), index, record, failure)
            if len(heap) < keep:
                heapq.heappush(heap, entry)
            elif entry[0] > heap[0][0]:
                heapq.heapreplace(heap, entry)
        lot_size += len(chunk)
    plan = policy_plan(policy, lot_size)
    sample = sorted(heap, key=lambda e: (-e[0], e[1]))[: plan.sample_size]
    now = timezone.now()
    with transaction.atomic():
        if existing is not None:
            existing.delete()
        lot = QCLot(
            stage_run=stage_run,
            policy=policy,
            lot_size=lot_size,
            sample_size=plan.sample_size,
            acceptance_number=plan.acceptance_number,
            auto_defects=auto_defects,
        )
        lot.full_clean()
        lot.save()
        items = []
        for sequence, (_neg, index, record, failure) in enumerate(sample, start=1):
            item = ReviewItem(lot=lot, sequence=sequence, record_key=str(index), record=record)
            if failure is not None:
                item.decision = ReviewDecision.REJECTED
                item.reason = f"{AUTO_REASON_PREFIX}{failure[0]}: {failure[1]}"
                item.decided_at = now
            items.append(item)
        ReviewItem.objects.bulk_create(items, batch_size=500)
        lot.evidence = {
            "plan": plan.to_dict(),
            "policy": {"id": policy.pk, "name": policy.name, "require_review": policy.require_review},
            "draw": {"method": "sha256(seed:run:index), n smallest", "seed": seed, "run_id": str(run_id)},
            "auto_defects_in_lot": auto_defects,
            "auto_defect_examples": examples,
            "sample_indexes": [e[1] for e in sample],
            "auto_rejected_in_sample": sum(1 for e in sample if e[3] is not None),
        }
        lot.save(update_fields=["evidence"])
        audit_record(
            actor=None,
            action=AuditAction.CREATE,
            instance=lot,
            after={"lot_size": lot_size, "plan": plan.to_dict(), "auto_defects": auto_defects},
            message=_("QC lot created: n=%(n)d, Ac=%(ac)d.") % {"n": plan.sample_size, "ac": plan.acceptance_number},
        )
        if (
            not policy.require_review
            or not ReviewItem.objects.filter(lot=lot, decision=ReviewDecision.PENDING).exists()
        ):
            _decide(lot, actor=None, automatic=not policy.require_review)
    return lot


# ---- Review -----------------------------------------------------------------------------------
def review_item_decide(*, item: ReviewItem, actor, decision: str, reason: str = "") -> ReviewItem:
    """Record a reviewer's accept/reject of one sampled record (audited); the last one decides the lot."""
    if decision not in (ReviewDecision.ACCEPTED, ReviewDecision.REJECTED):
        raise ValidationError({"decision": _("Choose accepted or rejected.")})
    reason = (reason or "").strip()
    if decision == ReviewDecision.REJECTED and not reason:
        raise ValidationError({"reason": _("Say why the record is rejected.")})
    with transaction.atomic():
        lot = QCLot.objects.select_for_update().get(pk=item.lot_id)
        if lot.decision != LotDecision.PENDING:
            raise QCError(_("This lot is already decided (%(d)s).") % {"d": lot.get_decision_display()})
        item = ReviewItem.objects.select_for_update().get(pk=item.pk)
        if item.reason.startswith(AUTO_REASON_PREFIX) and item.reviewer_id is None:
            raise QCError(_("This record failed an automatic check; it counts as a defect."))
        before = audit_snapshot(item)
        item.decision = decision
        item.reason = reason
        item.reviewer = actor if getattr(actor, "is_authenticated", False) else None
        item.decided_at = timezone.now()
        item.full_clean()
        item.save()
        audit_record(actor=actor, action=AuditAction.REVIEW, instance=item, before=before, after=audit_snapshot(item))
        if not lot.items.filter(decision=ReviewDecision.PENDING).exists():
            _decide(lot, actor=actor, automatic=False)
    return item


def review_next_item(*, lot: QCLot | None = None, after_sequence: int | None = None) -> ReviewItem | None:
    """The next pending sampled record (optionally of one lot, after a sequence number, wrapping round)."""
    qs = ReviewItem.objects.filter(decision=ReviewDecision.PENDING, lot__decision=LotDecision.PENDING)
    if lot is not None:
        qs = qs.filter(lot=lot)
    qs = qs.select_related("lot", "lot__policy", "lot__stage_run__run").order_by(
        "lot__created_at", "lot_id", "sequence"
    )
    if after_sequence is not None and lot is not None:
        nxt = qs.filter(sequence__gt=after_sequence).first()
        if nxt is not None:
            return nxt
    return qs.first()


# ---- Lot decision -----------------------------------------------------------------------------
def lot_allowed_auto_defects(*, aql: float, lot_size: int) -> int:
    """Check failures a whole lot may hold: AQL (% nonconforming) of the lot size, rounded down."""
    # Integer arithmetic on hundredths of a percent avoids float rounding at exact boundaries (6.5 % of 200 = 13).
    return (round(float(aql) * 100) * int(lot_size)) // 10000


def _decide(lot: QCLot, *, actor, automatic: bool) -> QCLot:
    sample = list(lot.items.values_list("pk", "decision", "reviewer_id", "reason"))
    pending = [pk for pk, decision, _r, _reason in sample if decision == ReviewDecision.PENDING]
    if pending and not automatic:
        raise QCError(_("%(n)d sampled record(s) still await review.") % {"n": len(pending)})
    auto_ids = [
        pk
        for pk, d, r, reason in sample
        if d == ReviewDecision.REJECTED and reason.startswith(AUTO_REASON_PREFIX) and r is None
    ]
    human_ids = [pk for pk, d, r, reason in sample if d == ReviewDecision.REJECTED and pk not in auto_ids]
    defects = len(auto_ids) + len(human_ids)
    # The automatic checks inspected every record, so the lot's own rate of check failures is known
    # exactly; sampling only stands in for what humans cannot read in full. A lot whose checked defect
    # rate exceeds the AQL is rejected whatever the draw happened to pick.
    lot_allowed = lot_allowed_auto_defects(aql=lot.policy.aql, lot_size=lot.lot_size)
    sample_ok = automatic or defects <= lot.acceptance_number
    lot_ok = lot.auto_defects <= lot_allowed
    before = audit_snapshot(lot)
    lot.review_defects = len(human_ids)
    lot.decision = LotDecision.ACCEPTED if sample_ok and lot_ok else LotDecision.REJECTED
    lot.decided_at = timezone.now()
    lot.evidence = {
        **(lot.evidence or {}),
        "rule": "check failures in lot <= AQL x lot size"
        if automatic
        else "defects in sample <= Ac and check failures in lot <= AQL x lot size",
        "lot_auto_defects": lot.auto_defects,
        "lot_allowed_auto_defects": lot_allowed,
        "defects_in_sample": defects,
        "auto_defect_item_ids": auto_ids,
        "review_defect_item_ids": human_ids,
        "sample_item_ids": [pk for pk, *_rest in sample],
        "unreviewed_item_ids": pending,
        "decided_by": "automatic (no review required)"
        if automatic
        else (actor.get_username() if getattr(actor, "is_authenticated", False) else "system"),
    }
    lot.full_clean()
    lot.save()
    audit_record(
        actor=actor,
        action=AuditAction.REVIEW,
        instance=lot,
        before=before,
        after=audit_snapshot(lot),
        message=_(
            "Lot %(d)s: %(x)d defect(s) in a sample of %(n)d, Ac=%(ac)d; "
            "%(f)d check failure(s) in the lot of %(size)d, %(fa)d allowed."
        )
        % {
            "d": lot.decision,
            "x": defects,
            "n": lot.sample_size,
            "ac": lot.acceptance_number,
            "f": lot.auto_defects,
            "size": lot.lot_size,
            "fa": lot_allowed,
        },
    )
    if lot.decision in LotDecision.publishable():
        _wake_publish(lot)
    return lot


def qc_lot_decide(*, lot: QCLot, actor) -> QCLot:
    """Decide a lot by the rule (defects in sample <= Ac → accepted); needs every sampled record reviewed."""
    with transaction.atomic():
        lot = QCLot.objects.select_for_update().get(pk=lot.pk)
        if lot.decision != LotDecision.PENDING:
            return lot
        return _decide(lot, actor=actor, automatic=not lot.policy.require_review)


def can_override(actor) -> bool:
    """Admins may override a QC decision; with AUTH_MODE=none the single operator may."""
    return settings.AUTH_MODE == "none" or user_role(actor) == ROLE_ADMIN


def qc_lot_override(*, lot: QCLot, actor, reason: str) -> QCLot:
    """Accept a lot against the rule, by an admin, with a reason (audited as an override)."""
    if not can_override(actor):
        raise PermissionDenied(_("Only an admin may override a QC decision."))
    reason = (reason or "").strip()
    if not reason:
        raise ValidationError({"override_reason": _("An override needs a reason.")})
    with transaction.atomic():
        lot = QCLot.objects.select_for_update().get(pk=lot.pk)
        if lot.decision in LotDecision.publishable():
            return lot
        before = audit_snapshot(lot)
        previous = lot.decision
        lot.decision = LotDecision.OVERRIDDEN
        lot.override_reason = reason
        lot.override_by = actor if getattr(actor, "is_authenticated", False) else None
        lot.decided_at = timezone.now()
        lot.evidence = {
            **(lot.evidence or {}),
            "override": {
                "previous_decision": previous,
                "by": actor.get_username() if getattr(actor, "is_authenticated", False) else "system",
                "reason": reason,
                "at": lot.decided_at.isoformat(),
            },
        }
        lot.full_clean()
        lot.save()
        audit_record(
            actor=actor,
            action=AuditAction.OVERRIDE,
            instance=lot,
            before=before,
            after=audit_snapshot(lot),
            message=reason,
        )
        _wake_publish(lot)
    return lot


# ---- Engine hooks -----------------------------------------------------------------------------
def _wake_publish(lot: QCLot) -> None:
    """A publish step parked on this lot may go now: the reaper's next pass re-queues it."""
    from .choices import BatchStatus
    from .models import Batch

    Batch.objects.filter(
        stage_run__run_id=lot.stage_run.run_id, stage_run__kind="publish", status=BatchStatus.WAITING
    ).update(not_before=timezone.now())


def run_qc_lot(run_id) -> QCLot | None:
    return QCLot.objects.filter(stage_run__run_id=run_id).select_related("policy").order_by("-created_at").first()


def lot_is_publishable(stage_run: StageRun) -> bool:
    """True when the run has no qc stage, or its lot was accepted (or overridden)."""
    run_id = stage_run.run_id
    has_qc = StageRun.objects.filter(run_id=run_id, kind="qc").exists()
    if not has_qc:
        return True
    lot = run_qc_lot(run_id)
    return lot is not None and lot.decision in LotDecision.publishable()


__all__ = [
    "CODE_LETTERS",
    "QCError",
    "SamplingPlan",
    "can_override",
    "code_letter",
    "lot_is_publishable",
    "qc_lot_create",
    "qc_lot_decide",
    "qc_lot_override",
    "qc_stage_run",
    "review_item_decide",
    "review_next_item",
    "run_qc_lot",
    "sampling_plan",
    "table_plan",
]
