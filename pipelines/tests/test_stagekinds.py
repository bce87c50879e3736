"""Stage kinds: registry, config validation with JSON paths, and each kind's behaviour."""

import sqlite3
import sys
from importlib.metadata import EntryPoint

import pytest

from pipelines.choices import StageKindGroup
from pipelines.stagekinds import (
    PerRecordStageKind,
    StageConfigError,
    StageContext,
    StageKindRegistry,
    StageResult,
    UnknownStageKind,
    registry,
)
from pipelines.stagekinds.textutil import detect_language, mask_pii, strip_html


def ctx(config, **kw):
    return StageContext(config=config, **kw)


def test_registry_offers_the_builtin_kinds_with_groups():
    assert registry.names()[:7] == ["read", "filter", "clean", "dedup", "model_inference", "qc", "publish"]
    groups = {k.name: k.group for k in registry.kinds()}
    assert groups["dedup"] == groups["qc"] == groups["publish"] == StageKindGroup.GLOBAL
    assert groups["filter"] == groups["clean"] == StageKindGroup.PER_RECORD
    assert registry.get("model_inference").needs_model_config
    with pytest.raises(UnknownStageKind):
        registry.get("nope")


class UpperKind(PerRecordStageKind):
    name = "upper"
    label = "Upper"

    def process(self, records, c):
        return StageResult(records=[{**r, "text": r["text"].upper()} for r in records])


def test_third_party_kinds_load_from_entry_points(monkeypatch):
    ep = EntryPoint(name="upper", value=f"{__name__}:UpperKind", group="dataflare.stage_kinds")
    broken = EntryPoint(name="broken", value="no_such_module:Kind", group="dataflare.stage_kinds")
    module = sys.modules[StageKindRegistry.__module__]  # the package attribute `registry` is the instance
    monkeypatch.setattr(module, "entry_points", lambda group: [ep, broken])
    reg = StageKindRegistry()
    assert "upper" in reg and "broken" not in reg
    assert reg.get("upper").process([{"text": "a"}], ctx({})).records == [{"text": "A"}]


@pytest.mark.parametrize(
    "kind,config,path",
    [
        (
            "filter",
            {"rules": [{"type": "length", "min": 1}, {"type": "regex", "pattern": "(unclosed"}]},
            "$.rules[1].pattern",
        ),
        ("filter", {"rules": [{"type": "regex"}]}, "$.rules[0].pattern"),
        ("filter", {"rules": [{"type": "length", "min": 9, "max": 2}]}, "$.rules[0].min"),
        ("filter", {"rules": [{"type": "language", "allow": ["fr"]}]}, "$.rules[0].allow[0]"),
        ("filter", {"rules": [{"type": "bogus"}]}, "$.rules[0].type"),
        ("filter", {}, "$.rules"),
        ("filter", {"rules": [], "extra": 1}, "$.extra"),
        ("clean", {"steps": [{"op": "mask_pii", "types": ["ssn"]}]}, "$.steps[0].types[0]"),
        ("clean", {"steps": [{"op": "rename", "mapping": {"a": "x", "b": "x"}}]}, "$.steps[0].mapping"),
        ("dedup", {"near_duplicate": {"enabled": True, "num_perm": 64, "bands": 10}}, "$.near_duplicate.bands"),
        ("dedup", {"fields": []}, "$.fields"),
        ("model_inference", {"on_error": "explode"}, "$.on_error"),
        ("publish", {"format": "xml"}, "$.format"),
        ("qc", {"policy": 0}, "$.policy"),
    ],
)
def test_config_errors_carry_the_json_path(kind, config, path):
    with pytest.raises(StageConfigError) as err:
        registry.get(kind).validate_config(config)
    assert err.value.path == path


def test_valid_configs_pass():
    registry.get("filter").validate_config({"rules": [{"type": "regex", "pattern": r"\d+", "mode": "exclude"}]})
    registry.get("clean").validate_config({"steps": [{"op": "strip_html"}, {"op": "rename", "mapping": {"a": "b"}}]})
    registry.get("dedup").validate_config({})
    registry.get("publish").validate_config({"format": "jsonl", "location": "out/{version}.jsonl"})
    registry.get("model_inference").validate_config({"input_field": "text"})


def test_filter_applies_rules_and_names_reasons():
    config = {
        "on_fail": "quarantine",
        "rules": [
            {"type": "required", "fields": ["text"]},
            {"type": "length", "min": 3, "max": 40},
            {"type": "regex", "pattern": "spam", "mode": "exclude", "ignore_case": True},
            {"type": "language", "allow": ["zh", "en"]},
            {"type": "range", "field": "score", "min": 0, "max": 1},
        ],
    }
    records = [
        {"text": "hello world", "score": 0.5},
        {"text": "", "score": 0.5},
        {"text": "hi", "score": 0.5},
        {"text": "SPAM offer", "score": 0.5},
        {"text": "Привет, как дела?", "score": 0.5},
        {"text": "今天天气很好，我们去公园", "score": 0.9},
        {"text": "hello again", "score": 7},
        {"text": "hello again", "score": "n/a"},
    ]
    result = registry.get("filter").process(records, ctx(config))
    assert [r["text"] for r in result.records] == ["hello world", "今天天气很好，我们去公园"]
    assert [(q.index, q.code) for q in result.quarantined] == [
        (1, "required"), (2, "too_short"), (3, "regex_excluded"), (4, "language"), (6, "out_of_range"),
        (7, "not_a_number"),
    ]  # fmt: skip
    dropped = registry.get("filter").process(records, ctx({**config, "on_fail": "drop"}))
    assert dropped.filtered == 6 and dropped.quarantined == []


def test_language_detection_by_script():
    assert detect_language("The quick brown fox") == "en"
    assert detect_language("我们使用 Python 和 Django 开发数据平台") == "zh"
    assert detect_language("これは日本語の文章です") == "other"
    assert detect_language("12345 !!!") == "other"


def test_clean_steps_in_order():
    config = {
        "steps": [
            {"op": "strip_html"},
            {"op": "normalize_unicode"},
            {"op": "mask_pii", "count_field": "pii"},
            {"op": "normalize_whitespace"},
            {"op": "rename", "mapping": {"text": "content"}},
            {"op": "drop", "fields": ["junk"]},
        ]
    }
    record = {
        "text": "<div>Ｈｅｌｌｏ&nbsp;<b>world</b><script>alert(1)</script><style>p{}</style></div>"
        "<p>mail me: a.b@example.com  or 138 1234 5678, ID 11010519491231002X, host 192.168.0.1</p>",
        "junk": 1,
        "keep": True,
    }
    out = registry.get("clean").process([record], ctx(config)).records[0]
    assert out == {
        "content": "Hello world\n\nmail me: [EMAIL] or [PHONE], ID [ID_CARD], host [IP]",
        "keep": True,
        "pii": 4,
    }
    assert record["junk"] == 1 and record["text"].startswith("<div>")  # input untouched


def test_pii_masks_international_phones_and_ipv6_but_not_times():
    text, n = mask_pii("call +1 415-555-0132 or +86 13912345678; at 12:30:45 from 2001:db8::1")
    assert text == "call [PHONE] or [PHONE]; at 12:30:45 from [IP]" and n == 3


def test_strip_html_leaves_plain_text_alone():
    assert strip_html("a < b and c > d") == "a < b and c > d"
    assert strip_html("x &amp; y") == "x & y"


def test_dedup_exact_over_many_chunks_keeps_first_and_cleans_up(tmp_path):
    chunks = [[{"id": c * 100 + i, "text": f"Text  {(c * 100 + i) % 150}"} for i in range(100)] for c in range(30)]
    ws = tmp_path / "ws"
    results = list(registry.get("dedup").run_global(iter(chunks), ctx({}, workspace=ws, stage_key="d")))
    kept = [r["id"] for res in results for r in res.records]
    assert len(kept) == 150
    assert kept == list(range(150))
    assert sum(res.filtered for res in results) == 3000 - 150
    assert list(ws.iterdir()) == []


def test_dedup_normalises_configured_fields_only(tmp_path):
    chunk = [{"a": "X  y", "b": 1}, {"a": "x y", "b": 1}, {"a": "x y", "b": 2}]
    res = list(registry.get("dedup").run_global(iter([chunk]), ctx({"fields": ["a", "b"]}, workspace=tmp_path)))
    assert [r["b"] for r in res[0].records] == [1, 2]


def test_dedup_state_is_on_disk_not_in_memory(tmp_path):
    def chunks():
        yield [{"text": str(i)} for i in range(10)]
        # Mid-stream, the hashes seen so far are rows of the SQLite file in the workspace.
        files = list(tmp_path.glob("dedup-*.sqlite3"))
        assert len(files) == 1
        db = sqlite3.connect(files[0])
        assert db.execute("SELECT count(*) FROM seen").fetchone()[0] >= 0
        db.close()
        yield [{"text": str(i)} for i in range(5, 15)]

    res = list(registry.get("dedup").run_global(chunks(), ctx({}, workspace=tmp_path)))
    assert [len(r.records) for r in res] == [10, 5]


def test_dedup_near_duplicates_with_minhash(tmp_path):
    base = "the operator registers data sources and composes pipelines from stages every single day"
    chunk = [{"text": base}, {"text": base + "!"}, {"text": "a completely unrelated sentence about cats and weather"}]
    config = {"near_duplicate": {"enabled": True, "threshold": 0.7}}
    res = list(registry.get("dedup").run_global(iter([chunk]), ctx(config, workspace=tmp_path)))
    assert [r["text"] for r in res[0].records] == [chunk[0]["text"], chunk[2]["text"]]


def test_read_projects_and_markers_pass_through():
    assert registry.get("read").process([{"a": 1, "b": 2}], ctx({"fields": ["a"]})).records == [{"a": 1}]
    chunks = [[{"a": 1}], [{"a": 2}]]
    for name in ("qc", "publish"):
        assert [r.records for r in registry.get(name).run_global(iter(chunks), ctx({}))] == chunks


def test_per_record_kinds_refuse_run_as_global_and_vice_versa():
    with pytest.raises(NotImplementedError):
        registry.get("dedup").process([], ctx({}))


# ---- User regexes run in RE2 (issue 11) ----------------------------------------------------------
REDOS_CHILD = """
import django, json, sys
django.setup()
from pipelines.stagekinds import StageContext, registry
config = {"rules": [{"type": "regex", "pattern": "^(a+)+$"}]}
result = registry.get("filter").process([{"text": "a" * 34 + "!"}, {"text": "aaaa"}], StageContext(config=config))
print(json.dumps([r["text"] for r in result.records]))
"""


def test_a_catastrophic_pattern_runs_in_linear_time():
    """^(a+)+$ on 'a'*34 + '!' takes ~2^34 backtracking steps in Python's re; RE2 answers at once.

    It runs in a child process with a generous bound, so the old engine fails this test instead of hanging
    the suite; the bound is a hang guard, not a performance measurement.
    """
    import os
    import subprocess

    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "dataflare_portal.settings"}
    result = subprocess.run(
        [sys.executable, "-c", REDOS_CHILD], capture_output=True, text=True, timeout=90, env=env, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == '["aaaa"]'


@pytest.mark.parametrize("pattern", [r"(a)\1", "(?=x)y", "(?<!x)y", "(a{1000}){1000}", "x" * 2001])
def test_patterns_the_linear_engine_cannot_run_are_refused_with_the_path(pattern):
    config = {"rules": [{"type": "length", "min": 1}, {"type": "regex", "pattern": pattern}]}
    with pytest.raises(StageConfigError) as info:
        registry.get("filter").validate_config(config)
    assert info.value.path == "$.rules[1].pattern"


def test_regex_rules_keep_their_meaning_in_re2():
    config = {
        "rules": [
            {"type": "regex", "pattern": "^(MIT|Apache-2\\.0)$", "field": "license"},
            {"type": "regex", "pattern": "<[a-z][^>]*>", "mode": "exclude", "ignore_case": True},
        ]
    }
    records = [
        {"license": "MIT", "text": "plain"},
        {"license": "GPL", "text": "plain"},
        {"license": "Apache-2.0", "text": "has <B>bold</B>"},
        {"license": "MIT", "text": "odd \ud800 text"},  # not UTF-8-encodable: matched, not a crash
    ]
    result = registry.get("filter").process(records, ctx(config))
    assert [r["license"] for r in result.records] == ["MIT", "MIT"]
