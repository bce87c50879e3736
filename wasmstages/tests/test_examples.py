"""The example modules do what the built-in Python `clean` transform does, byte for byte.

The transform: normalise whitespace (one line) and mask e-mail addresses, i.e. the `clean` kind with
steps normalize_whitespace(keep_newlines=false) and mask_pii(types=[email]). Each example is built from
source here (the WAT by wasmtime, AssemblyScript by npm's asc, Zig and C by PyPI's ziglang) and compared on
adversarial and random text, then through real runs.
"""

from __future__ import annotations

import random

import orjson
import pytest

from pipelines.stagekinds import StageContext, registry
from tasks.choices import RunStatus
from tasks.services import run_start
from tasks.tests.factories import make_pipeline, make_records, published_bytes
from wasmstages import runtime
from wasmstages.examples import build
from wasmstages.services import wasm_module_upload

PYTHON_STAGE = {
    "text_field": "text",
    "steps": [{"op": "normalize_whitespace", "keep_newlines": False}, {"op": "mask_pii", "types": ["email"]}],
}
CASES = [
    "  Hello,\t\tworld \n\n second line  ",
    "zero\u200bwidth\u200d and\ufeff bom\u2060",
    "controls\x00\x07\x7f gone, \x0b\x0c\x1c\x1f too",
    "wide\u3000space\u00a0nbsp\u2003em\u2028line\u2029para\u202f\u205f\u1680\u0085end",
    "mail me: john.doe+tag@mail.example.com, or JANE_D%x@sub-1.example.co.uk.",
    "x@a.co1 and x@a.b.c and a@b@c.com and @nobody.com and me@ and x@a.com-foo.bar",
    "first@a.bc second@d.efg, near..dots@x..com trailing@dot.com.",
    "中文 文本\u3000含有 邮箱 张三@example.com 和 zhang.san@例子.中国 以及 lisi@qq.com。",
    'quotes "inside" and \\ backslashes / slashes, emoji 😀 and a@b.😀com',
    "",
    "   ",
    "[EMAIL] stays [EMAIL]",
]


def python_transform(records: list[dict]) -> list[dict]:
    return registry.get("clean").process(records, StageContext(config=PYTHON_STAGE)).records


def wat_module() -> bytes:
    return build.build_wat()


_built: dict[str, bytes] = {}


def assemblyscript_module() -> bytes:
    """Built once per test session by npm's assemblyscript (`npm ci` into a cache, then `asc`)."""
    if "assemblyscript" not in _built:
        try:
            _built["assemblyscript"] = build.build_assemblyscript()
        except build.ToolchainMissing as exc:
            pytest.skip(str(exc))
    return _built["assemblyscript"]


def random_records(n: int, seed: int) -> list[dict]:
    """Text built from pieces that stress the transform: every whitespace and invisible class, e-mail shapes."""
    rng = random.Random(seed)
    pieces = [
        " ",
        "  ",
        "\t",
        "\n",
        "\r\n",
        "\x0b",
        "\x1c",
        "\x00",
        "\x7f",
        "\u00a0",
        "\u0085",
        "\u2003",
        "\u200b",
        "\u2028",
        "\u3000",
        "\ufeff",
        "a",
        "Z",
        "0",
        ".",
        "_",
        "%",
        "+",
        "-",
        "@",
        "中文",
        "é",
        "😀",
        '"',
        "\\",
    ]
    local = "abcXYZ019._%+-"
    labels = ["a", "co", "com", "x1", "b2c", "ORG", "-", "xn--p1ai", "é"]
    out = []
    for i in range(n):
        parts = []
        for _ in range(rng.randint(0, 8)):
            if rng.random() < 0.4:
                user = "".join(rng.choice(local) for _ in range(rng.randint(0, 5)))
                dots = rng.choice([".", ".", "..", ""])
                domain = dots.join(rng.choice(labels) for _ in range(rng.randint(1, 4)))
                parts.append(f"{user}@{domain}")
            else:
                parts.append("".join(rng.choice(pieces) for _ in range(rng.randint(0, 6))))
        record = {"id": i, "text": "".join(parts), "meta": {"text": "  not  this one ", "n": [1, 2.5, None]}}
        if i % 97 == 0:
            record = {"id": i, "text": 12}
        elif i % 89 == 0:
            record = {"id": i}
        elif i % 7 == 0:
            record = {"text": record["text"], "id": i}
        out.append(record)
    return out


def _same(module: bytes, records: list[dict]) -> None:
    expected = python_transform(records)
    got = runtime.run_batch(runtime.compile_module(module), records, label="tidy@1", module_config={"field": "text"})
    assert got.filtered == 0 and got.quarantined == []
    assert len(got.records) == len(expected)
    for record, want, have in zip(records, expected, got.records, strict=True):
        assert orjson.dumps(have) == orjson.dumps(want), record


def zig_module() -> bytes:
    """Built once per test session by PyPI's ziglang (wasm32-freestanding)."""
    if "zig" not in _built:
        try:
            _built["zig"] = build.build_zig()
        except build.ToolchainMissing as exc:
            pytest.skip(str(exc))
    return _built["zig"]


def c_module() -> bytes:
    """Built once per test session by the clang inside PyPI's ziglang (`zig cc`, wasm32-freestanding)."""
    if "c" not in _built:
        try:
            _built["c"] = build.build_c()
        except build.ToolchainMissing as exc:
            pytest.skip(str(exc))
    return _built["c"]


EXAMPLE_BUILDS = {"wat": wat_module, "assemblyscript": assemblyscript_module, "zig": zig_module, "c": c_module}


@pytest.mark.parametrize("example", sorted(EXAMPLE_BUILDS))
def test_the_example_matches_python_on_hand_picked_text(example):
    records = [{"id": i, "text": text} for i, text in enumerate(CASES)]
    _same(EXAMPLE_BUILDS[example](), records)
    masked = python_transform(records)
    assert masked[4]["text"] == "mail me: [EMAIL], or [EMAIL]."  # the cases do exercise the mask


@pytest.mark.parametrize("example", sorted(EXAMPLE_BUILDS))
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_example_matches_python_on_random_text(example, seed):
    records = random_records(3000, seed)
    masks = sum(r.get("text", "").count("[EMAIL]") for r in python_transform(records) if isinstance(r.get("text"), str))
    assert masks > 300
    _same(EXAMPLE_BUILDS[example](), records)


def test_the_field_comes_from_the_module_config():
    records = [{"id": 1, "text": "  a  ", "body": "  b@c.de  "}]
    got = runtime.run_batch(
        runtime.compile_module(wat_module()), records, label="tidy@1", module_config={"field": "body"}
    )
    assert got.records == [{"id": 1, "text": "  a  ", "body": "[EMAIL]"}]


@pytest.mark.django_db
@pytest.mark.parametrize("example", sorted(EXAMPLE_BUILDS))
def test_a_pipeline_with_the_example_publishes_the_same_bytes_as_the_python_stage(doorbell, file_root, example):
    records = make_records(400, unique=True)
    records += random_records(400, seed=9)
    wasm_module_upload(name=f"tidy-{example}", content=EXAMPLE_BUILDS[example](), actor=None)
    runs = {}
    for name, stage in (
        ("python", ("tidy", "clean", PYTHON_STAGE)),
        ("wasm", ("tidy", "wasm", {"module": f"tidy-{example}", "config": {"field": "text"}})),
    ):
        pipeline = make_pipeline(
            file_root, records=records, stages=[stage, ("publish", "publish", {})], batch_size=64, name=name
        )
        runs[name] = run_start(pipeline=pipeline, actor=None)
        doorbell.drain()
        runs[name].refresh_from_db()
        assert runs[name].status == RunStatus.SUCCEEDED, runs[name].status_reason
    python_bytes, wasm_bytes = published_bytes(runs["python"]), published_bytes(runs["wasm"])
    assert python_bytes.count(b"\n") == len(records)
    assert b"[EMAIL]" in python_bytes
    assert wasm_bytes == python_bytes
