"""The safe renderer: named placeholders from an allow-list, and nothing str.format would also do."""

import uuid

import pytest
from django.conf import settings

from dataflare_portal.core.render import NO_SPEC, TRUNCATE, ZERO_PAD, TemplateSyntaxError, compile_template

LOCATION = {"dataset": NO_SPEC, "version": ZERO_PAD, "run_id": NO_SPEC}
# Each walks from a uuid.UUID (a run id) to django.conf.settings under str.format.
LEAKS = [
    "{run_id.__init__.__globals__[sys].modules[django.conf].settings.SECRET_KEY}",
    "{run_id.__class__.__init__.__globals__[sys].modules[django.conf].settings.SECRETS_ENCRYPTION_KEYS}",
    "out/{run_id.hex}.jsonl",
    "{version.__class__}",
    "{dataset[0]}",
]


def test_it_fills_allowed_placeholders_and_literal_braces():
    run_id = uuid.uuid4()
    template = compile_template("out/{dataset}/v{version:04d}-{run_id}{{x}}.jsonl", placeholders=LOCATION)
    assert template.names == ["dataset", "version", "run_id"]
    assert template.render({"dataset": "d", "version": 7, "run_id": str(run_id)}) == f"out/d/v0007-{run_id}{{x}}.jsonl"
    assert compile_template("{text:.3}!", placeholders=None, open_spec=TRUNCATE).render({"text": "hello"}) == "hel!"
    assert compile_template("{标题}", placeholders=None).render({"标题": "ok"}) == "ok"


@pytest.mark.parametrize("text", LEAKS)
def test_it_refuses_what_str_format_would_use_to_reach_settings(text):
    run_id = uuid.uuid4()
    # The old code path (str.format) really does reach the settings: this is the bug, kept as evidence.
    if "SECRET_KEY" in text:
        assert settings.SECRET_KEY in text.format(run_id=run_id)
    with pytest.raises(TemplateSyntaxError) as info:
        compile_template(text, placeholders=LOCATION)
    assert info.value.code == "attribute_access"
    # An open namespace (record fields) refuses them just the same.
    with pytest.raises(TemplateSyntaxError):
        compile_template(text, placeholders=None, open_spec=TRUNCATE)


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("{secret}", "unknown_placeholder"),
        ("{SECRET_KEY}", "unknown_placeholder"),
        ("{}", "positional_placeholder"),
        ("{0}", "positional_placeholder"),
        ("{dataset!r}", "conversion_not_allowed"),
        ("{dataset!s:>10}", "conversion_not_allowed"),
        ("{dataset:>99999999}", "spec_not_allowed"),
        ("{dataset:.3}", "spec_not_allowed"),
        ("{version:>99999999}", "spec_not_allowed"),
        ("{version:099d}", "spec_not_allowed"),
        ("{version:00d}", "spec_not_allowed"),
        ("{version:{dataset}}", "nested_placeholder"),
        ("{dataset", "malformed"),
        ("dataset}", "malformed"),
        ("x\ud800y", "surrogate"),
    ],
)
def test_it_refuses_unknown_and_unsafe_placeholders(text, code):
    with pytest.raises(TemplateSyntaxError) as info:
        compile_template(text, placeholders=LOCATION)
    assert info.value.code == code
    assert info.value.message


def test_an_open_namespace_allows_only_truncation():
    for bad in ["{text:>999999}", "{text:010d}", "{text:,}", "{text!a}"]:
        with pytest.raises(TemplateSyntaxError):
            compile_template(bad, placeholders=None, open_spec=TRUNCATE)


def test_values_are_looked_up_as_keys_and_never_traversed():
    class Hostile:
        def __format__(self, spec):  # str.format would call this; the renderer only calls to_text
            raise AssertionError("format called")

        def __str__(self):
            return "plain"

    assert compile_template("{dataset}", placeholders=LOCATION).render({"dataset": Hostile()}) == "plain"
    with pytest.raises(TemplateSyntaxError):
        compile_template("{version:04d}", placeholders=LOCATION).render({"version": "7"})
    assert compile_template("{version:03d}", placeholders=LOCATION).render({"version": -4}) == "-04"
