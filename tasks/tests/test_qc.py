"""QC: ISO 2859-1 tables against published values, reproducible draws, review decisions, lot rule, override."""

import pytest
from django.core.exceptions import PermissionDenied, ValidationError

from dataflare_portal.core.models import AuditLogEntry
from pipelines.tests.factories import QCPolicyFactory
from tasks.choices import LotDecision, ReviewDecision
from tasks.qc import (
    QCError,
    _draw_key,
    code_letter,
    lot_is_publishable,
    qc_lot_decide,
    qc_lot_override,
    qc_stage_run,
    review_item_decide,
    sampling_plan,
    table_plan,
)

from .qc_helpers import make_run, qc_stage, records


# ---- tables (no database) -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("lot", "level", "letter"),
    [
        (2, "II", "A"),
        (8, "III", "B"),
        (15, "II", "B"),
        (25, "I", "B"),
        (50, "II", "D"),
        (90, "II", "E"),
        (150, "II", "F"),
        (280, "II", "G"),
        (500, "II", "H"),
        (501, "II", "J"),
        (1200, "II", "J"),
        (3200, "II", "K"),
        (10000, "II", "L"),
        (35000, "II", "M"),
        (150000, "II", "N"),
        (500000, "II", "P"),
        (500001, "II", "Q"),
        (500001, "III", "R"),
        (500001, "I", "N"),
        (1000, "S-1", "C"),
        (1000, "S-4", "F"),
        (100000, "S-3", "G"),
        (3000, "III", "L"),
    ],
)
def test_table_i_code_letters(lot, level, letter):
    assert code_letter(lot, level) == letter


@pytest.mark.parametrize(
    ("letter", "aql", "n", "ac"),
    [
        # Published ANSI/ASQ Z1.4 / ISO 2859-1 Table II-A cells (single sampling, normal inspection).
        ("H", 2.5, 50, 3),
        ("J", 2.5, 80, 5),
        ("J", 1.0, 80, 2),
        ("J", 0.65, 80, 1),
        ("J", 4.0, 80, 7),
        ("J", 6.5, 80, 10),
        ("J", 10, 80, 14),
        ("J", 15, 80, 21),
        ("K", 4.0, 125, 10),
        ("K", 0.65, 125, 2),
        ("L", 0.65, 200, 3),
        ("L", 1.0, 200, 5),
        ("M", 1.0, 315, 7),
        ("N", 1.0, 500, 10),
        ("P", 1.0, 800, 14),
        ("Q", 1.0, 1250, 21),
        ("D", 6.5, 8, 1),
        ("A", 10, 2, 0),
        ("A", 25, 2, 1),
        ("H", 25, 50, 21),
        ("R", 0.010, 2000, 0),
        ("D", 2.5, 8, 0),
        ("C", 4.0, 5, 0),
        ("B", 6.5, 3, 0),
        # arrows: ↓ to the first plan below, ↑ to the plan above
        ("A", 1.0, 20, 0),  # ↓ to F (0/1)
        ("G", 1.0, 20, 0),  # ↑ to F (0/1)
        ("B", 10, 2, 0),  # ↑ to A (0/1)
        ("J", 25, 50, 21),  # ↑ to H (21/22)
        ("Q", 0.010, 2000, 0),  # ↓ to R
    ],
)
def test_table_ii_a_plans(letter, aql, n, ac):
    _plan_letter, got_n, got_ac = table_plan(letter, aql)
    assert (got_n, got_ac) == (n, ac)


def test_sampling_plan_full_inspection_and_overrides():
    small = sampling_plan(lot_size=5, aql=10)
    assert small.sample_size == 2 and small.acceptance_number == 0 and not small.full_inspection
    tiny = sampling_plan(lot_size=3, aql=1.0)  # ↓ to F (n=20) exceeds the lot: 100 % inspection
    assert tiny.sample_size == 3 and tiny.full_inspection and tiny.acceptance_number == 0
    over = sampling_plan(lot_size=1000, aql=1.0, sample_size=10, acceptance_number=3)
    assert (over.sample_size, over.acceptance_number) == (10, 3) and "override" in over.source
    with pytest.raises(ValueError):
        sampling_plan(lot_size=100, aql=3.0)


# ---- lots ------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_draw_is_reproducible_and_sized_by_the_tables():
    policy = QCPolicyFactory(aql=1.0, seed=7)
    run = make_run(qc_policy=policy)
    lot = qc_stage_run(stage_run=qc_stage(run), records_iter=iter([records(300)[:120], records(300)[120:]]))
    assert (lot.lot_size, lot.sample_size, lot.acceptance_number) == (300, 50, 1)  # H (281-500), AQL 1.0: 50, Ac 1
    keys = list(lot.items.values_list("record_key", flat=True))
    lot.delete()
    again = qc_stage_run(stage_run=qc_stage(run), records_iter=iter([records(300)]))
    assert list(again.items.values_list("record_key", flat=True)) == keys
    other_run = make_run(pipeline=run.pipeline)
    other = qc_stage_run(stage_run=qc_stage(other_run), records_iter=iter([records(300)]))
    assert list(other.items.values_list("record_key", flat=True)) != keys
    assert lot_is_publishable(qc_stage(run)) is False


@pytest.mark.django_db
def test_no_review_policy_decides_at_once_from_automatic_checks():
    good = QCPolicyFactory(name="auto", require_review=False, score_field="score", min_score=0.5, aql=6.5)
    run = make_run(qc_policy=good)
    lot = qc_stage_run(stage_run=qc_stage(run), records_iter=iter([records(50)]))
    assert lot.decision == LotDecision.ACCEPTED and lot.auto_defects == 0
    assert lot_is_publishable(qc_stage(run))
    run2 = make_run(pipeline=run.pipeline)
    lot2 = qc_stage_run(stage_run=qc_stage(run2), records_iter=iter([records(50, bad_every=2)]))
    # The checks saw every record: 25 failures in 50 is far over 6.5 %, whichever 8 records were drawn.
    assert lot2.auto_defects == 25 and lot2.decision == LotDecision.REJECTED
    assert (lot2.evidence["lot_auto_defects"], lot2.evidence["lot_allowed_auto_defects"]) == (25, 3)


@pytest.mark.django_db
def test_no_review_lot_at_the_aql_boundary_is_accepted_and_one_more_failure_rejects():
    policy = QCPolicyFactory(name="edge", require_review=False, score_field="score", min_score=0.5, aql=6.5)
    at_limit = qc_stage_run(
        stage_run=qc_stage(make_run(qc_policy=policy)), records_iter=iter([records(200, bad_every=16)])
    )
    assert (at_limit.auto_defects, at_limit.evidence["lot_allowed_auto_defects"]) == (13, 13)  # 6.5 % of 200
    assert at_limit.decision == LotDecision.ACCEPTED
    over = qc_stage_run(stage_run=qc_stage(make_run(qc_policy=policy)), records_iter=iter([records(200, bad_every=15)]))
    assert over.auto_defects == 14 and over.decision == LotDecision.REJECTED


@pytest.mark.django_db
def test_a_clean_looking_sample_does_not_accept_a_lot_the_checks_found_bad(operator_user):
    # Sample of 2 drawn from a lot where 10 of 40 records fail the score check (25 % > AQL 6.5 %), and the
    # two drawn records are both good: the sample alone would accept. The draw depends on the run id, so the
    # bad records are placed around it (on a random run id "every 4th" put a bad record in the sample 1 time in 17).
    policy = QCPolicyFactory(aql=6.5, sample_size=2, acceptance_number=1, score_field="score", min_score=0.5)
    run = make_run(qc_policy=policy)
    stage_run = qc_stage(run)
    seed = (stage_run.config or {}).get("sample_seed", policy.seed)
    drawn = set(sorted(range(40), key=lambda i: _draw_key(seed, run.pk, i))[:2])
    lot_records = records(40)
    for i in [i for i in range(40) if i not in drawn][:10]:
        lot_records[i]["score"] = 0.1
    lot = qc_stage_run(stage_run=stage_run, records_iter=iter([lot_records]))
    assert lot.evidence["sample_indexes"] and set(lot.evidence["sample_indexes"]) == drawn
    assert lot.evidence["auto_rejected_in_sample"] == 0
    for item in lot.items.filter(decision=ReviewDecision.PENDING):
        review_item_decide(item=item, actor=operator_user, decision="accepted")
    lot.refresh_from_db()
    assert lot.evidence["defects_in_sample"] <= lot.acceptance_number
    assert lot.auto_defects == 10 and lot.decision == LotDecision.REJECTED


@pytest.mark.django_db
def test_reviewers_decide_and_the_last_decision_applies_the_rule(operator_user):
    policy = QCPolicyFactory(aql=6.5, sample_size=5, acceptance_number=1)
    run = make_run(qc_policy=policy)
    lot = qc_stage_run(stage_run=qc_stage(run), records_iter=iter([records(40)]))
    items = list(lot.items.order_by("sequence"))
    assert len(items) == 5 and all(i.decision == ReviewDecision.PENDING for i in items)
    with pytest.raises(ValidationError):
        review_item_decide(item=items[0], actor=operator_user, decision="rejected", reason="  ")
    with pytest.raises(QCError):
        qc_lot_decide(lot=lot, actor=operator_user)
    review_item_decide(item=items[0], actor=operator_user, decision="rejected", reason="garbled text")
    for item in items[1:]:
        review_item_decide(item=item, actor=operator_user, decision="accepted")
    lot.refresh_from_db()
    assert lot.decision == LotDecision.ACCEPTED and lot.review_defects == 1
    assert lot.evidence["review_defect_item_ids"] == [items[0].pk]
    assert AuditLogEntry.objects.filter(object_type="tasks.reviewitem", action="review").count() == 5
    assert AuditLogEntry.objects.filter(object_type="tasks.qclot", action="review").count() == 1
    items[0].refresh_from_db()
    assert items[0].reviewer == operator_user and items[0].reason == "garbled text"
    with pytest.raises(QCError):
        review_item_decide(item=items[1], actor=operator_user, decision="rejected", reason="changed my mind")


@pytest.mark.django_db
def test_only_an_admin_overrides_with_a_reason(operator_user, admin_user, local_auth):
    policy = QCPolicyFactory(aql=6.5, sample_size=3, acceptance_number=0)
    run = make_run(qc_policy=policy)
    lot = qc_stage_run(stage_run=qc_stage(run), records_iter=iter([records(30)]))
    for item in lot.items.all():
        review_item_decide(item=item, actor=operator_user, decision="rejected", reason="bad")
    lot.refresh_from_db()
    assert lot.decision == LotDecision.REJECTED
    with pytest.raises(PermissionDenied):
        qc_lot_override(lot=lot, actor=operator_user, reason="ship it")
    with pytest.raises(ValidationError):
        qc_lot_override(lot=lot, actor=admin_user, reason="")
    lot = qc_lot_override(lot=lot, actor=admin_user, reason="customer accepted the risk")
    assert lot.decision == LotDecision.OVERRIDDEN and lot.override_by == admin_user
    entry = AuditLogEntry.objects.get(action="override", object_id=str(lot.pk))
    assert entry.message == "customer accepted the risk" and entry.before["decision"] == "rejected"
    assert lot_is_publishable(qc_stage(run))
