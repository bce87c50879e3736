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


def test_table_i_reads_level_ii_unless_told_and_refuses_unknown_levels_and_aqls():
    assert code_letter(1000) == "J" and code_letter(2) == "A"
    with pytest.raises(ValueError, match=r"^unknown inspection level 'ii'$"):
        code_letter(1000, "ii")
    with pytest.raises(ValueError, match=r"^AQL 3\.0 is not an ISO 2859-1 preferred value$"):
        table_plan("J", 3.0)


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
    with pytest.raises(ValueError, match=r"^unknown inspection level 'IV'$"):
        sampling_plan(lot_size=100, aql=1.0, inspection_level="IV")
    # the inspection level picks the code letter (Table I) ...
    assert sampling_plan(lot_size=1000, aql=1.0, inspection_level="S-1").code_letter == "C"
    assert sampling_plan(lot_size=1000, aql=1.0, inspection_level="III").code_letter == "K"
    # ... and an empty lot has letter A at every level, and nothing to inspect
    empty = sampling_plan(lot_size=0, aql=1.0, inspection_level="III")
    assert (empty.code_letter, empty.sample_size, empty.full_inspection) == ("A", 0, True)
    # a lot of one record is read as the smallest row of Table I (2 to 8)
    assert sampling_plan(lot_size=1, aql=1.0, inspection_level="III").code_letter == "B"


def test_a_plan_names_its_source_and_an_override_replaces_only_what_it_gives():
    iso = "ISO 2859-1 Table I + Table II-A (single sampling, normal inspection)"
    table = sampling_plan(lot_size=1000, aql=1.0)  # J: n 80, Ac 2
    assert (table.sample_size, table.acceptance_number, table.rejection_number, table.source) == (80, 2, 3, iso)
    assert sampling_plan(lot_size=1000, aql=1, inspection_level="I").to_dict() == {
        "lot_size": 1000,
        "inspection_level": "I",
        "aql": 1.0,
        "code_letter": "G",
        "plan_letter": "F",  # G at AQL 1.0 is the up arrow to F
        "sample_size": 20,
        "acceptance_number": 0,
        "rejection_number": 1,
        "full_inspection": False,
        "source": iso,
    }
    n_only = sampling_plan(lot_size=1000, aql=1.0, sample_size=10)
    assert (n_only.sample_size, n_only.acceptance_number, n_only.source) == (10, 2, "policy override (n)")
    ac_only = sampling_plan(lot_size=1000, aql=1.0, acceptance_number=0)
    assert (ac_only.sample_size, ac_only.acceptance_number, ac_only.rejection_number, ac_only.source) == (
        80,
        0,
        1,
        "policy override (Ac)",
    )
    both = sampling_plan(lot_size=1000, aql=1.0, sample_size=10, acceptance_number=3)
    assert both.source == "policy override (n) (Ac)"
    assert both.to_dict()["plan_letter"] == "J" and both.to_dict()["source"] == "policy override (n) (Ac)"


def test_a_sample_as_large_as_the_lot_is_full_inspection():
    exact = sampling_plan(lot_size=20, aql=1.0)  # C, AQL 1.0: down to F, n = 20
    assert (exact.sample_size, exact.full_inspection) == (20, True)
    one_more = sampling_plan(lot_size=21, aql=1.0)
    assert (one_more.sample_size, one_more.full_inspection) == (20, False)


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


# ---- What a decision records ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("aql", "lot_size", "allowed"),
    [(6.5, 200, 13), (6.5, 199, 12), (10, 1000, 100), (0.65, 1000, 6), (1.0, 99, 0), (1.0, 100, 1), (25, 4, 1)],
)
def test_a_lot_may_hold_aql_percent_of_its_size_in_check_failures_rounded_down(aql, lot_size, allowed):
    from tasks.qc import lot_allowed_auto_defects

    assert lot_allowed_auto_defects(aql=aql, lot_size=lot_size) == allowed


def _drawn(run, policy, lot_size):
    """The record indexes the sample will hold, in review order."""
    seed = (qc_stage(run).config or {}).get("sample_seed", policy.seed)
    return sorted(range(lot_size), key=lambda i: _draw_key(seed, run.pk, i))


@pytest.mark.django_db
def test_a_reviewed_decision_counts_check_failures_and_reviewer_rejections_and_records_them(operator_user):
    # 40 records, sample of 5, Ac 1. One drawn record and one record outside the sample fail the score check;
    # a reviewer rejects one more drawn record, with a reason that happens to start like an automatic one.
    policy = QCPolicyFactory(aql=6.5, sample_size=5, acceptance_number=1, score_field="score", min_score=0.5)
    run = make_run(qc_policy=policy)
    order = _drawn(run, policy, 40)
    lot_records = records(40)
    lot_records[order[0]]["score"] = 0.1
    lot_records[order[10]]["score"] = 0.1
    lot = qc_stage_run(stage_run=qc_stage(run), records_iter=iter([lot_records]))
    items = list(lot.items.order_by("sequence"))
    assert [int(i.record_key) for i in items] == order[:5]
    auto, human, *accepted = items
    assert auto.decision == ReviewDecision.REJECTED and auto.reason.startswith("auto:")
    with pytest.raises(QCError) as info:
        qc_lot_decide(lot=lot, actor=operator_user)
    assert str(info.value) == "4 sampled record(s) still await review."
    review_item_decide(item=human, actor=operator_user, decision="rejected", reason="auto: looks machine-made")
    for item in accepted:
        review_item_decide(item=item, actor=operator_user, decision="accepted")
    lot.refresh_from_db()
    # 2 defects in the sample (1 check failure + 1 reviewer rejection) > Ac 1: rejected, whatever the lot rate
    assert lot.decision == LotDecision.REJECTED and lot.decided_at is not None
    assert (lot.auto_defects, lot.review_defects) == (2, 1)
    evidence = lot.evidence
    assert {"plan", "policy", "draw", "sample_indexes"} <= set(evidence)  # what creation recorded is kept
    assert {k: evidence[k] for k in evidence if k not in ("plan", "policy", "draw", "auto_defect_examples")} == {
        "auto_defects_in_lot": 2,
        "sample_indexes": order[:5],
        "auto_rejected_in_sample": 1,
        "rule": "defects in sample <= Ac and check failures in lot <= AQL x lot size",
        "lot_auto_defects": 2,
        "lot_allowed_auto_defects": 2,
        "defects_in_sample": 2,
        "auto_defect_item_ids": [auto.pk],
        "review_defect_item_ids": [human.pk],
        "sample_item_ids": [i.pk for i in items],
        "unreviewed_item_ids": [],
        "decided_by": operator_user.get_username(),
    }
    entry = AuditLogEntry.objects.get(object_type="tasks.qclot", action="review")
    assert entry.actor == operator_user
    assert entry.before["decision"] == "pending" and entry.after["decision"] == "rejected"
    assert entry.message == (
        "Lot rejected: 2 defect(s) in a sample of 5, Ac=1; 2 check failure(s) in the lot of 40, 2 allowed."
    )


@pytest.mark.django_db
def test_one_reviewer_rejection_within_ac_accepts_and_the_evidence_says_so(operator_user):
    policy = QCPolicyFactory(aql=6.5, sample_size=3, acceptance_number=1)
    run = make_run(qc_policy=policy)
    lot = qc_stage_run(stage_run=qc_stage(run), records_iter=iter([records(30)]))
    first, *rest = lot.items.order_by("sequence")
    review_item_decide(item=first, actor=operator_user, decision="rejected", reason="garbled")
    for item in rest:
        review_item_decide(item=item, actor=operator_user, decision="accepted")
    lot.refresh_from_db()
    assert lot.decision == LotDecision.ACCEPTED and lot.review_defects == 1
    assert (lot.evidence["defects_in_sample"], lot.evidence["auto_defect_item_ids"]) == (1, [])
    entry = AuditLogEntry.objects.get(object_type="tasks.qclot", action="review")
    assert entry.message == (
        "Lot accepted: 1 defect(s) in a sample of 3, Ac=1; 0 check failure(s) in the lot of 30, 1 allowed."
    )


@pytest.mark.django_db
def test_an_automatic_decision_names_its_rule_and_leaves_the_unreviewed_sample_out_of_the_defects():
    policy = QCPolicyFactory(
        require_review=False, aql=6.5, sample_size=5, acceptance_number=0, score_field="score", min_score=0.5
    )
    run = make_run(qc_policy=policy)
    order = _drawn(run, policy, 40)
    lot_records = records(40)
    lot_records[order[1]]["score"] = 0.1  # one check failure in the sample, within 6.5 % of 40 (2 allowed)
    lot = qc_stage_run(stage_run=qc_stage(run), records_iter=iter([lot_records]))
    items = list(lot.items.order_by("sequence"))
    # automatic: the sample's Ac does not apply (the checks saw every record), the lot rate does
    assert lot.decision == LotDecision.ACCEPTED and lot.decided_at is not None and lot.review_defects == 0
    evidence = lot.evidence
    assert evidence["rule"] == "check failures in lot <= AQL x lot size"
    assert evidence["decided_by"] == "automatic (no review required)"
    assert evidence["auto_defect_item_ids"] == [items[1].pk]
    assert evidence["review_defect_item_ids"] == []
    assert evidence["unreviewed_item_ids"] == [i.pk for i in items if i.pk != items[1].pk]
    assert (evidence["defects_in_sample"], evidence["lot_auto_defects"], evidence["lot_allowed_auto_defects"]) == (
        1,
        1,
        2,
    )
    assert "plan" in evidence and evidence["sample_indexes"] == order[:5]
    entry = AuditLogEntry.objects.get(object_type="tasks.qclot", action="review")
    assert entry.actor is None and entry.before["decision"] == "pending"
    assert entry.message == (
        "Lot accepted: 1 defect(s) in a sample of 5, Ac=0; 1 check failure(s) in the lot of 40, 2 allowed."
    )


@pytest.mark.django_db
def test_a_sample_that_failed_the_checks_entirely_is_decided_at_once_by_the_system():
    # Review is required, but every drawn record already failed an automatic check: nothing is left to
    # review, so the lot is decided when it is created, with no reviewer.
    policy = QCPolicyFactory(aql=6.5, sample_size=2, acceptance_number=0, score_field="score", min_score=0.5)
    lot = qc_stage_run(stage_run=qc_stage(make_run(qc_policy=policy)), records_iter=iter([records(20, bad_every=1)]))
    assert lot.decision == LotDecision.REJECTED and lot.review_defects == 0
    assert lot.evidence["decided_by"] == "system"
    assert lot.evidence["rule"] == "defects in sample <= Ac and check failures in lot <= AQL x lot size"
    assert lot.evidence["defects_in_sample"] == 2 and lot.evidence["unreviewed_item_ids"] == []


@pytest.mark.django_db
@pytest.mark.parametrize(("bad_every", "woken"), [(0, True), (1, False)], ids=["accepted", "rejected"])
def test_an_accepted_lot_wakes_the_publish_step_waiting_for_it(bad_every, woken):
    import datetime as dt

    from django.utils import timezone

    from tasks.choices import BatchStatus
    from tasks.models import Batch

    from .factories import BatchFactory

    policy = QCPolicyFactory(require_review=False, aql=6.5, score_field="score", min_score=0.5)
    run = make_run(qc_policy=policy)
    later = timezone.now() + dt.timedelta(hours=1)
    waiting = BatchFactory(stage_run=run.stage_runs.get(kind="publish"), status=BatchStatus.WAITING, not_before=later)
    qc_stage_run(stage_run=qc_stage(run), records_iter=iter([records(20, bad_every=bad_every)]))
    not_before = Batch.objects.get(pk=waiting.pk).not_before
    assert (not_before < later) is woken
