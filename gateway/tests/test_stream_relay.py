"""The streaming relay against a scripted upstream (gateway/tests/upstream.py) whose network pieces the test chooses:
a piece's events go out together, yet the usage chunk stays hidden unless asked for, the stream's end waits for the
metering commit, and a stream broken, erroring, abandoned by its client or silent is recorded as such."""

from __future__ import annotations

import json
import os
import signal

import httpx
import openai
import pytest

from catalog.tests.factories import ProjectFactory
from conftest import wait_until
from gateway import services
from gateway.models import GatewayRequest
from gateway.tests import upstream as up
from gateway.tests.upstream import DONE, ScriptedUpstream, content, usage
from metrics.models import TokenUsage
from pipelines.models import ModelConfig

pytestmark = pytest.mark.django_db(transaction=True)
MESSAGES = [{"role": "user", "content": "Say hello."}]


def _config(upstream: ScriptedUpstream, name: str = "llm", deadline_ms: int = 10_000) -> ModelConfig:
    return ModelConfig.objects.create(
        name=name,
        protocol="openai",
        openai_api="chat",
        endpoint=upstream.base_url,
        model_name="scripted",
        deadline_ms=deadline_ms,
        max_attempts=1,
    )


def _stream_lines(portal, text: str, body: dict, *, stop_at_first: bool = False) -> list[str]:
    """The `data:` lines of a streamed chat call (all of them, or only the first when `stop_at_first`)."""
    lines = []
    with httpx.stream(
        "POST",
        f"{portal.base_url}/chat/completions",
        json={"messages": MESSAGES, "stream": True, **body},
        headers={"Authorization": f"Bearer {text}"},
        timeout=30,
    ) as answer:
        assert answer.status_code == 200
        for line in answer.iter_lines():
            if line.startswith("data: "):
                lines.append(line)
                if stop_at_first:
                    break
    return lines


def _rows(key) -> list[tuple]:
    return list(
        GatewayRequest.objects.filter(key=key)
        .order_by("id")
        .values_list("http_status", "status_code", "prompt_tokens", "completion_tokens", "error")
    )


def test_content_usage_and_done_in_one_piece_the_usage_stays_hidden_and_the_end_waits_for_the_meter(portal):
    """The whole answer in one network piece: the relay sends the content at once but the end only after the commit
    (SIGKILL as soon as [DONE] arrived: both calls' rows are there), and the usage chunk only to who asked."""
    one_piece = content("", role=True) + content("Hello ") + content("world") + usage(7, 3) + DONE
    with ScriptedUpstream([one_piece, "end"]) as upstream:
        _config(upstream)
        key, text = services.key_create(actor=None, project=ProjectFactory(), name="k")
        api = openai.OpenAI(base_url=portal.base_url, api_key=text, max_retries=0, timeout=30)
        quiet = list(api.chat.completions.create(model="llm", messages=MESSAGES, stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in quiet) == "Hello world"
        assert all(c.usage is None and c.choices for c in quiet)

        lines = []
        with httpx.stream(
            "POST",
            f"{portal.base_url}/chat/completions",
            json={"model": "llm", "messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}},
            headers={"Authorization": f"Bearer {text}"},
            timeout=30,
        ) as answer:
            for line in answer.iter_lines():
                if line.startswith("data: "):
                    lines.append(line)
                    if line == "data: [DONE]":
                        os.killpg(portal.proc.pid, signal.SIGKILL)
                        break
        portal.proc.wait(timeout=15)
    assert lines[-1] == "data: [DONE]"
    assert json.loads(lines[-2][len("data: ") :])["usage"]["completion_tokens"] == 3
    assert len(lines) == 5
    # The upstream is always asked for usage, so the quiet stream is metered too.
    assert all(r["stream_options"] == {"include_usage": True} for r in upstream.requests)
    assert _rows(key) == [(200, "OK", 7, 3, ""), (200, "OK", 7, 3, "")]
    metered = TokenUsage.objects.filter(gateway_key_id=key.pk)
    assert list(metered.values_list("model_name", "prompt_tokens", "completion_tokens")) == [(up.MODEL, 7, 3)] * 2


def test_events_split_across_pieces_arrive_whole(portal):
    """A piece ending mid-event, and a blank line (an event's end) split between two pieces."""
    first, second, third = content("", role=True) + content("Hel"), content("lo wor"), content("ld")
    script = [
        first[:-25],
        ("pause", 0.05),
        first[-25:] + second[:-1],  # ends after the first "\n" of second's blank line
        ("pause", 0.05),
        b"\n" + third + usage(5, 3)[:30],
        ("pause", 0.05),
        usage(5, 3)[30:] + DONE,
        "end",
    ]
    with ScriptedUpstream(script) as upstream:
        _config(upstream)
        key, text = services.key_create(actor=None, project=ProjectFactory(), name="k")
        api = openai.OpenAI(base_url=portal.base_url, api_key=text, max_retries=0, timeout=30)
        chunks = list(
            api.chat.completions.create(
                model="llm", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
            )
        )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello world"
    assert chunks[-1].usage.completion_tokens == 3 and not chunks[-1].choices
    wait_until(lambda: _rows(key) == [(200, "OK", 5, 3, "")])


def test_a_stream_broken_or_erroring_midway_is_recorded_with_its_error(portal):
    broken = [content("", role=True) + content("partial"), ("pause", 0.05), "close"]
    crashed = [content("", role=True) + content("x") + up.event({"error": {"message": "model crashed"}}) + DONE, "end"]
    with ScriptedUpstream(broken) as one, ScriptedUpstream(crashed) as other:
        _config(one, "broken")
        _config(other, "crashed")
        key, text = services.key_create(actor=None, project=ProjectFactory(), name="k")
        cut = _stream_lines(portal, text, {"model": "broken"})
        failed = _stream_lines(portal, text, {"model": "crashed"})
    assert "partial" in cut[-1] and "data: [DONE]" not in cut  # what came is relayed; no end is made up
    assert "model crashed" in failed[-2] and failed[-1] == "data: [DONE]"
    rows = wait_until(lambda: len(_rows(key)) == 2 and _rows(key))
    assert [r[:2] for r in rows] == [(200, "UNAVAILABLE"), (200, "UPSTREAM_ERROR")]
    assert rows[0][4].startswith("stream broken") and rows[1][4] == "model crashed"


def test_a_client_going_away_is_recorded_cancelled_and_the_upstream_connection_dropped(portal):
    with ScriptedUpstream([content("", role=True) + content("first"), "hang"]) as upstream:
        _config(upstream)
        key, text = services.key_create(actor=None, project=ProjectFactory(), name="k")
        lines = _stream_lines(portal, text, {"model": "llm"}, stop_at_first=True)
        assert lines and upstream.gone.wait(30)
    rows = wait_until(lambda: _rows(key))
    assert [r[:2] for r in rows] == [(200, "CANCELLED")]


def test_a_silent_upstream_ends_the_stream_at_its_deadline(portal):
    with ScriptedUpstream([content("", role=True) + content("first"), "hang"]) as upstream:
        _config(upstream, deadline_ms=300)
        key, text = services.key_create(actor=None, project=ProjectFactory(), name="k")
        lines = _stream_lines(portal, text, {"model": "llm"})
    assert "first" in lines[-1] and "data: [DONE]" not in lines
    rows = wait_until(lambda: _rows(key))
    assert [r[:2] for r in rows] == [(200, "DEADLINE_EXCEEDED")]
    assert "no event within 0.3s" in rows[0][4]
