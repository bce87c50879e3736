"""The "model version" dimension names the model too: servers report version "1" for every model."""

import datetime as dt

import pytest

from metrics.models import BatchEvent, TokenUsage
from metrics.services import batch_event_record, model_label, token_usage_record

NOW = dt.datetime(2026, 3, 10, 12, 0, tzinfo=dt.UTC)


def test_it_qualifies_a_bare_version_with_the_model_name():
    assert model_label("annotator", "1") == "annotator:1"
    assert model_label("annotator", "annotator:1") == "annotator:1"
    assert model_label("annotator", "") == ""
    assert model_label("", "1") == "1"


@pytest.mark.django_db
def test_it_keeps_two_models_with_the_same_version_apart():
    common = {"ts": NOW, "project_id": 1, "pipeline_id": 2, "run_id": None, "stage_template": "model_inference"}
    for name in ("annotator", "quality-scorer"):
        token_usage_record(
            **common,
            model_name=name,
            model_version="1",
            status_code="OK",
            requests=1,
            records=4,
            prompt_tokens=10,
            completion_tokens=5,
            latency_ms_sum=3.0,
            latency_ms_max=3.0,
        )
        batch_event_record(
            **common,
            records_in=4,
            records_out=4,
            records_filtered=0,
            records_failed=0,
            duration_ms=5.0,
            model_name=name,
            model_version="1",
        )
    assert set(TokenUsage.objects.values_list("model_version", flat=True)) == {"annotator:1", "quality-scorer:1"}
    assert set(BatchEvent.objects.values_list("model_version", flat=True)) == {"annotator:1", "quality-scorer:1"}
