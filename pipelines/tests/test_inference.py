"""The model_inference stage kind against a real reference server: prompts, batching, mapping, faults, usage."""

from __future__ import annotations

import math

import grpc
import pytest

from modelclient import BreakerOpen, TransientModelError
from pipelines.stagekinds import StageConfigError, StageContext, registry
from pipelines.stagekinds.inference import PromptError, prompt_fields, render_prompt
from pipelines.tests.model_fixtures import model_client_private, model_config, model_server  # noqa: F401

kind = registry.get("model_inference")


def records(n: int, start: int = 0) -> list[dict]:
    return [
        {"id": i, "text": f"Record {i}: the quick brown fox jumps over the lazy dog near the river bank."}
        for i in range(start, start + n)
    ]


def ctx(mc, **config) -> StageContext:
    return StageContext(config=config, stage_key="infer", model_config=mc)


def by_code(usage: list[dict]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for row in usage:
        agg = out.setdefault(row["status_code"], {"requests": 0, "records": 0, "prompt_tokens": 0, "samples": []})
        agg["requests"] += row["requests"]
        agg["records"] += row["records"]
        agg["prompt_tokens"] += row["prompt_tokens"]
        agg["samples"] += row["latency_ms_samples"]
    return out


# ---- prompt templates ------------------------------------------------------------------------------
def test_it_renders_plain_fields_and_refuses_unsafe_placeholders():
    assert render_prompt("Summarise ({lang}): {text:.5}", {"text": "hello world", "lang": "en"}) == (
        "Summarise (en): hello"
    )
    assert render_prompt("{meta}", {"meta": {"a": 1}}) == '{"a": 1}'
    assert prompt_fields("{a} {b} {a}") == ["a", "b"]
    for bad in ["{a.__class__}", "{a[0]}", "{0}", "{}", "{a:>999999}", "{a:{b}}", "{a", "{a!x}"]:
        with pytest.raises(PromptError):
            prompt_fields(bad)
    with pytest.raises(PromptError) as info:
        render_prompt("{title}: {text}", {"text": "x"})
    assert info.value.code == "MISSING_FIELD" and "title" in str(info.value)


def test_config_validation_names_the_prompt_template():
    kind.validate_config({"prompt_template": "Q: {text}", "outputs": {"annotation": "ann"}})
    with pytest.raises(StageConfigError) as info:
        kind.validate_config({"prompt_template": "{text.upper}"})
    assert info.value.path == "$.prompt_template"
    with pytest.raises(StageConfigError) as info:
        kind.validate_config({"outputs": {"annotation": ""}})
    assert info.value.path.startswith("$.outputs")


# ---- happy path ------------------------------------------------------------------------------------
def test_it_annotates_records_in_batches_and_reports_usage(model_server, model_client_private):  # noqa: F811
    mc = model_config(model_server.address, batch_size=8, max_in_flight=3)
    data = records(30)
    result = kind.process(data, ctx(mc, prompt_template="Title {id}. {text}"))

    assert [r["id"] for r in result.records] == list(range(30))
    assert not result.quarantined and result.filtered == 0
    first = result.records[0]["model_output"]
    # BYTES JSON outputs arrive as structures; per-record token counts come along.
    assert first["annotation"]["language"] == "en"
    assert first["prompt_tokens"] > 0
    assert data[0] == records(1)[0], "input records are not mutated"

    usage = by_code(result.usage)
    assert set(usage) == {"OK"}
    assert usage["OK"]["requests"] == math.ceil(30 / 8) == model_server.faults.calls
    assert usage["OK"]["records"] == 30
    assert usage["OK"]["prompt_tokens"] == sum(r["model_output"]["prompt_tokens"] for r in result.records)
    assert len(usage["OK"]["samples"]) == 4
    row = result.usage[0]
    assert row["model_name"] == "annotator" and row["model_version"] == "1"
    assert row["latency_ms_max"] == max(row["latency_ms_samples"])


def test_it_maps_named_outputs_and_merges(model_server, model_client_private):  # noqa: F811
    mc = model_config(model_server.address, model_name="token-counter", parameters={})
    mapped = kind.process(records(3), ctx(mc, outputs={"token_count": "tokens"}))
    assert all(isinstance(r["tokens"], int) and r["tokens"] > 10 for r in mapped.records)
    assert "model_output" not in mapped.records[0]
    merged = kind.process(records(2), ctx(mc, output_mode="merge"))
    assert merged.records[0]["token_count"] == mapped.records[0]["tokens"]


def test_a_missing_output_quarantines_with_what_the_model_returned(model_server, model_client_private):  # noqa: F811
    mc = model_config(model_server.address, model_name="token-counter", parameters={})
    result = kind.process(records(2), ctx(mc, outputs={"label": "label"}))
    assert not result.records
    assert [q.code for q in result.quarantined] == ["MISSING_OUTPUT"] * 2
    assert "label" in result.quarantined[0].reason and "token_count" in result.quarantined[0].reason


def test_prompt_template_of_the_model_config_is_used(model_server, model_client_private):  # noqa: F811
    mc = model_config(model_server.address, model_name="token-counter", parameters={"prompt_template": "{lang} {text}"})
    data = [{"text": "one two three", "lang": "en"}]
    assert kind.process(data, ctx(mc, outputs={"token_count": "n"})).records[0]["n"] == 4  # "en one two three"
    # The stage's own template wins over the model config's.
    assert kind.process(data, ctx(mc, prompt_template="{text}", outputs={"token_count": "n"})).records[0]["n"] == 3


# ---- quarantine ------------------------------------------------------------------------------------
def test_records_missing_a_template_field_are_quarantined_with_the_reason(model_server, model_client_private):  # noqa: F811
    mc = model_config(model_server.address, model_name="token-counter", parameters={})
    data = records(4)
    del data[1]["text"]
    data[2]["text"] = None
    result = kind.process(data, ctx(mc, prompt_template="{text}"))
    assert [r["id"] for r in result.records] == [0, 3]
    assert [(q.index, q.code) for q in result.quarantined] == [(1, "MISSING_FIELD"), (2, "MISSING_FIELD")]
    assert "'text'" in result.quarantined[0].reason
    assert result.quarantined[0].record == data[1]


def test_invalid_argument_records_are_quarantined_not_retried(model_server, model_client_private):  # noqa: F811
    model_server.faults.configure(poison_marker="POISON")
    mc = model_config(model_server.address, model_name="token-counter", parameters={}, batch_size=4)
    data = records(8)
    data[5]["text"] = "this one carries POISON inside"
    result = kind.process(data, ctx(mc))

    assert [r["id"] for r in result.records] == [0, 1, 2, 3, 4, 6, 7]
    (q,) = result.quarantined
    assert (q.index, q.code) == (5, "INVALID_ARGUMENT")
    assert "poison" in q.reason.lower()
    usage = by_code(result.usage)
    # Call [4..7] rejected, bisected to [4,5] (rejected) + [6,7], then [4] + [5] (rejected): 3 rejections, each
    # a single attempt; every server call shows up in the usage rows (no hidden retries).
    assert usage["INVALID_ARGUMENT"]["requests"] == 3
    assert usage["INVALID_ARGUMENT"]["records"] == 4 + 2 + 1
    assert usage["OK"]["records"] == 7
    assert sum(u["requests"] for u in usage.values()) == model_server.faults.calls


def test_on_error_fail_raises_instead_of_quarantining(model_server, model_client_private):  # noqa: F811
    model_server.faults.configure(poison_marker="POISON")
    mc = model_config(model_server.address, model_name="token-counter", parameters={})
    data = records(3)
    data[1]["text"] = "POISON"
    with pytest.raises(ValueError, match="INVALID_ARGUMENT"):
        kind.process(data, ctx(mc, on_error="fail"))


# ---- faults ---------------------------------------------------------------------------------------
def test_with_30_percent_unavailable_every_record_is_processed_with_bounded_attempts(
    model_server,  # noqa: F811
    model_client_private,  # noqa: F811
):
    model_server.faults.configure(error_rate=0.3, error_code=grpc.StatusCode.UNAVAILABLE, seed=11)
    # One call at a time: with the server's seeded draws, which call gets which error is then reproducible
    # (in parallel, a call could get unlucky 5 times in a row on some runs and fail the batch).
    mc = model_config(
        model_server.address, model_name="token-counter", parameters={}, batch_size=5, max_attempts=5, max_in_flight=1
    )
    data = records(200)
    result = kind.process(data, ctx(mc))

    assert len(result.records) == 200 and not result.quarantined
    usage = by_code(result.usage)
    calls = math.ceil(200 / 5)
    assert usage["OK"]["requests"] == calls
    assert usage["UNAVAILABLE"]["requests"] == model_server.faults.injected_errors > 0
    attempts = usage["OK"]["requests"] + usage["UNAVAILABLE"]["requests"]
    assert attempts == model_server.faults.calls <= calls * mc.max_attempts


def test_a_hung_server_ends_calls_at_the_deadline_opens_the_breaker_and_waits(
    model_server,  # noqa: F811
    model_client_private,  # noqa: F811
):
    model_server.faults.configure(hang=True)
    mc = model_config(
        model_server.address,
        model_name="token-counter",
        parameters={},
        deadline_ms=200,
        batch_size=2,
        max_in_flight=3,
        breaker_failure_threshold=3,
        breaker_reset_seconds=60,
    )
    with pytest.raises(BreakerOpen) as info:
        kind.process(records(6), ctx(mc))
    exc = info.value
    assert exc.retry_after > 50  # the engine keys the WAITING state on this attribute
    deadlines = by_code(exc.usage)["DEADLINE_EXCEEDED"]
    assert deadlines["requests"] == 3 == model_server.faults.hung_calls
    assert all(ms >= 200 for ms in deadlines["samples"]), "each call ended at (not before) its deadline"

    # While open, the stage waits without touching the server.
    calls = model_server.faults.calls
    with pytest.raises(BreakerOpen):
        kind.process(records(2), ctx(mc))
    assert model_server.faults.calls == calls


def test_a_transient_failure_below_the_breaker_threshold_fails_the_batch(model_server, model_client_private):  # noqa: F811
    model_server.faults.configure(error_rate=1.0, error_code=grpc.StatusCode.INTERNAL)
    mc = model_config(model_server.address, model_name="token-counter", parameters={}, breaker_failure_threshold=5)
    with pytest.raises(TransientModelError) as info:
        kind.process(records(3), ctx(mc))
    assert getattr(info.value, "retry_after", None) is None  # the engine retries it within its attempt budget
    assert by_code(info.value.usage)["INTERNAL"]["requests"] == 1


def test_a_lost_lease_stops_the_batch_between_calls(model_server, model_client_private):  # noqa: F811
    class Lease:
        checks = 0

        def check(self):
            self.checks += 1
            raise RuntimeError("lease lost")

    mc = model_config(model_server.address, model_name="token-counter", parameters={}, batch_size=1, max_in_flight=1)
    c = ctx(mc)
    c.extra["lease"] = Lease()
    with pytest.raises(RuntimeError, match="lease lost"):
        kind.process(records(5), c)
    assert model_server.faults.calls == 0


# ---- token usage reaches tokens_usage ---------------------------------------------------------------
@pytest.mark.django_db
def test_usage_rows_are_recorded_into_tokens_usage(model_server, model_client_private):  # noqa: F811
    from django.utils import timezone

    from metrics.models import TokenUsage
    from metrics.services import token_usage_record_many

    mc = model_config(model_server.address)
    result = kind.process(records(10), ctx(mc))
    base = {"ts": timezone.now(), "project_id": 1, "pipeline_id": 2, "run_id": None, "stage_template": "infer"}
    token_usage_record_many([{**base, **row} for row in result.usage])
    row = TokenUsage.objects.get()
    # The dashboard label qualifies the version with the model name.
    assert (row.model_name, row.model_version, row.status_code) == ("annotator", "annotator:1", "OK")
    assert row.records == 10 and row.requests == 2
    assert row.prompt_tokens == sum(r["model_output"]["prompt_tokens"] for r in result.records) > 0
    assert row.completion_tokens > 0


def test_a_recovering_endpoint_gets_one_probe_then_the_batch_goes_on_in_parallel(model_server, tmp_path):  # noqa: F811
    import modelclient
    from modelclient import SqliteBreakerStore
    from pipelines.model_configs import model_client_configure

    now = [1000.0]
    client = model_client_configure(breaker_store=SqliteBreakerStore(tmp_path / "b.sqlite3", clock=lambda: now[0]))
    try:
        mc = model_config(
            model_server.address,
            model_name="token-counter",
            parameters={},
            batch_size=2,
            max_in_flight=4,
            breaker_failure_threshold=1,
            breaker_reset_seconds=30,
        )
        from pipelines.model_configs import model_config_endpoint

        breaker = client.breaker(model_config_endpoint(mc))
        breaker.record_failure()
        with pytest.raises(BreakerOpen) as info:
            kind.process(records(8), ctx(mc))
        assert info.value.state == "open" and 0.5 <= info.value.retry_after <= 30
        assert model_server.faults.calls == 0

        now[0] += 31  # reset timeout over: the next call is the single half-open probe
        result = kind.process(records(8), ctx(mc))
        assert len(result.records) == 8 and model_server.faults.calls == 4
        assert breaker.snapshot().state == "closed"
    finally:
        modelclient.configure(breaker_store=None)
