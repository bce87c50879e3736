"""The model stage's per-batch call journal: reuse across attempts, what counts as retry cost, torn lines."""

from __future__ import annotations

from pipelines.stagekinds import StageContext, registry
from pipelines.stagekinds.calljournal import CallJournal
from pipelines.tests.model_fixtures import model_client_private, model_config, model_server  # noqa: F401

kind = registry.get("model_inference")


def records(n: int) -> list[dict]:
    return [{"id": i, "text": f"Record {i}: the quick brown fox jumps over the lazy dog."} for i in range(n)]


def ctx(mc, scratch, attempt: int, **config) -> StageContext:
    return StageContext(config=config, stage_key="infer", model_config=mc, attempt=attempt, scratch=scratch)


def test_a_redo_reuses_every_call_that_came_back_and_sends_nothing_again(
    model_server,  # noqa: F811
    model_client_private,  # noqa: F811
    tmp_path,
):
    mc = model_config(model_server.address, batch_size=4, max_in_flight=2)
    first = kind.process(records(10), ctx(mc, tmp_path, 1))
    calls = model_server.faults.calls
    assert calls == 3
    # Attempt 1 returned but (say) its commit was lost: attempt 2 sends nothing and reports attempt 1's calls,
    # which no one has reported yet, once.
    again = kind.process(records(10), ctx(mc, tmp_path, 2))
    assert model_server.faults.calls == calls
    assert again.records == first.records
    assert sum(u["requests"] for u in again.usage) == 3
    assert sum(u["prompt_tokens"] for u in again.usage) == sum(u["prompt_tokens"] for u in first.usage)
    assert sum(u["retry_tokens"] for u in again.usage) == 0
    # Other request parameters are another call: nothing is reused.
    kind.process(records(10), ctx(mc, tmp_path, 3, parameters={"max_tokens": 7}))
    assert model_server.faults.calls == calls + 3


def test_records_sent_without_an_answer_are_sent_again_as_retry_cost(
    model_server,  # noqa: F811
    model_client_private,  # noqa: F811
    tmp_path,
):
    mc = model_config(model_server.address, batch_size=4, max_in_flight=1)
    data = records(8)
    # Attempt 1 sent the first call and died before the answer (a start line, no done line, a torn tail).
    probe = CallJournal(tmp_path, 1, _fingerprint(mc))
    lost = [probe.key(f"Title {r['id']}. {r['text']}") for r in data[:4]]
    probe.start(lost)
    probe.close()
    with open(tmp_path / "calls.1.jsonl", "ab") as fh:
        fh.write(b'{"t":"done","k":["')
    result = kind.process(data, ctx(mc, tmp_path, 2, prompt_template="Title {id}. {text}"))
    assert model_server.faults.calls == 2 and len(result.records) == 8
    ok = [u for u in result.usage if u["status_code"] == "OK"]
    # The four records sent again, on their own (no journal): what their call costs.
    alone = kind.process(data[:4], StageContext(config={"prompt_template": "Title {id}. {text}"}, model_config=mc))
    retried = sum(u["prompt_tokens"] + u["completion_tokens"] for u in alone.usage)
    assert sum(u["retry_tokens"] for u in ok) == retried > 0
    assert sum(u["prompt_tokens"] + u["completion_tokens"] for u in ok) > retried


def test_a_failed_attempt_reports_its_calls_once_and_later_attempts_do_not_recount_them(tmp_path):
    class Call:
        outputs = [{"y": 1}]
        prompt_tokens, completion_tokens, model_name, model_version, retry, stats = 5, 0, "m", "1", False, None

    one = CallJournal(tmp_path, 1, "f")
    one.start(["a"])
    one.done(["a"], Call, {})
    one.close()  # killed: never reported
    two = CallJournal(tmp_path, 2, "f")
    assert [e.attempt for e in two.unreported] == [1] and two.results["a"] == ({"y": 1}, None)
    two.reported()  # attempt 2 failed and handed attempt 1's calls to the engine with its own
    two.close()
    three = CallJournal(tmp_path, 3, "f")
    assert three.unreported == [] and three.unanswered == set() and "a" in three.results


def _fingerprint(mc) -> str:
    from pipelines.model_configs import model_config_endpoint
    from pipelines.stagekinds.calljournal import call_fingerprint

    return call_fingerprint(model_config_endpoint(mc), {})
