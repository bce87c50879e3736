"""The reference server's OpenAI-compatible face, driven by the official `openai` client over loopback."""

from __future__ import annotations

import json

import grpc
import httpx
import openai
import pytest

from modelserver.text import count_tokens


@pytest.fixture
def api(openai_server) -> openai.OpenAI:
    client = openai.OpenAI(base_url=openai_server.http.base_url, api_key="unused", max_retries=0, timeout=5)
    yield client
    client.close()


def test_models_lists_the_built_in_models_and_the_embedder(api) -> None:
    assert {m.id for m in api.models.list()} == {"quality-scorer", "token-counter", "annotator", "text-embedder"}


def test_chat_answer_is_the_models_outputs_as_json_with_honest_usage(api, openai_server) -> None:
    text = "The new software release improves computer performance."
    answer = api.chat.completions.create(
        model="token-counter",
        messages=[{"role": "system", "content": "Count."}, {"role": "user", "content": text}],
        response_format={"type": "json_object"},
    )
    content = answer.choices[0].message.content
    assert json.loads(content) == {"token_count": count_tokens(text)}
    assert answer.usage.prompt_tokens == count_tokens("Count.") + count_tokens(text)
    assert answer.usage.completion_tokens == count_tokens(content)
    assert openai_server.http.usage.prompt_tokens == answer.usage.prompt_tokens


def test_streamed_chat_reassembles_to_the_plain_answer_and_reports_usage(api) -> None:
    messages = [{"role": "user", "content": "Markets rallied as the central bank held rates steady."}]
    plain = api.chat.completions.create(model="annotator", messages=messages)
    chunks = list(
        api.chat.completions.create(
            model="annotator", messages=messages, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert len([c for c in chunks if c.choices]) > 3
    assert chunks[-1].usage.total_tokens == plain.usage.total_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"


def test_completions_take_a_list_of_prompts(api) -> None:
    answer = api.completions.create(model="quality-scorer", prompt=["short", "a longer text with several words"])
    assert [c.index for c in answer.choices] == [0, 1]
    assert all(0 <= json.loads(c.text)["score"] <= 1 for c in answer.choices)


def test_embeddings_have_the_asked_dimensions(api) -> None:
    answer = api.embeddings.create(model="text-embedder", input=["a b", "b c"], dimensions=32)
    assert [len(d.embedding) for d in answer.data] == [32, 32]
    assert answer.usage.prompt_tokens == 4


def test_bad_requests_are_4xx_naming_the_problem(api) -> None:
    with pytest.raises(openai.NotFoundError, match="unknown model"):
        api.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError, match="poison marker"):
        api.completions.create(model="token-counter", prompt=["fine", "has BAD"], extra_body={"poison_marker": "BAD"})
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        api.chat.completions.create(model="annotator", messages=[{"role": "user", "content": "x"}], max_tokens=0)


def test_fault_knobs_apply_to_the_http_face(openai_server) -> None:
    url = openai_server.http.base_url + "/chat/completions"
    body = {"model": "token-counter", "messages": [{"role": "user", "content": "x"}]}
    openai_server.faults.configure(error_rate=1.0, retry_after_s=3)
    answer = httpx.post(url, json=body)
    assert (answer.status_code, answer.headers["retry-after"]) == (503, "3")
    openai_server.faults.configure(error_code=grpc.StatusCode.RESOURCE_EXHAUSTED, retry_after_s=None)
    answer = httpx.post(url, json=body)
    assert answer.status_code == 429 and "retry-after" not in answer.headers
    openai_server.faults.configure(error_rate=0.0, hang=True)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url, json=body, timeout=0.3)
    assert openai_server.faults.hung_calls == 1
    # /models is ModelMetadata, which faults leave alone unless asked.
    assert httpx.get(openai_server.http.base_url + "/models").status_code == 200
