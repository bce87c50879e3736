"""The record codec reads and writes exactly what the standard library did, orjson or not."""

import dataclasses
import datetime
import decimal
import json
import math
import uuid

import pytest

from dataflare_portal.core import jsonl

_std = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str).encode


class FloatSub(float):
    pass


class IntSub(int):
    pass


@dataclasses.dataclass
class Point:
    x: int


TRICKY = [
    {"id": 1, "text": "plain"},
    {"text": 'café ✓ 中文 \U0001f600 \u2028 \x00 \x1f " \\ /', "nested": {"a": [1, 2.5, None, True, False]}},
    {"big": 2**70, "neg": -(2**63) - 1},
    {"u64": 2**64 - 1, "i64": -(2**63)},
    {"f": 1e16, "tiny": 5e-324, "neg0": -0.0, "third": 1 / 3},
    {"nan": float("nan")},
    {"inf": [float("inf"), float("-inf")]},
    {1: "int key"},
    {"when": datetime.datetime(2026, 12, 2, 13, 0, tzinfo=datetime.UTC), "day": datetime.date(2026, 1, 2)},
    {"dec": decimal.Decimal("1.50"), "id": uuid.UUID(int=5), "dc": Point(3)},
    {"fsub": FloatSub(1.5), "isub": IntSub(7)},
    {"deep": json.loads("[" * 300 + "]" * 300)},
    {"null": None, "text": "null"},
]


def _same(a, b) -> bool:
    """Equal, counting NaN equal to NaN (json round-trips it)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


@pytest.mark.parametrize("record", TRICKY, ids=range(len(TRICKY)))
def test_it_round_trips_every_record_as_the_standard_library_does(record):
    expected = json.loads(_std(record))
    data = jsonl.dumps_lines([record])
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    assert _same(jsonl.loads_lines(data), [expected])
    # Files written by the standard library before this codec read back the same.
    assert _same(jsonl.loads_lines((_std(record) + "\n").encode()), [expected])


def test_a_chunk_with_one_tricky_record_keeps_its_plain_records_too():
    records = [{"id": i, "text": f"r{i}"} for i in range(50)] + [{"n": float("nan"), "big": 10**30}]
    out = jsonl.loads_lines(jsonl.dumps_lines(records))
    assert out[:50] == records[:50]
    assert math.isnan(out[50]["n"]) and out[50]["big"] == 10**30 and isinstance(out[50]["big"], int)


def test_plain_records_are_encoded_like_the_standard_library_apart_from_float_exponents():
    records = [{"id": i, "text": f"<p>café {i}</p>", "score": i / 7, "tags": ["a", None]} for i in range(100)]
    assert jsonl.dumps_lines(records) == "".join(_std(r) + "\n" for r in records).encode()


def test_loads_reads_one_value_like_json_loads():
    for text in ('{"a": 1}', "NaN", "123456789012345678901234567890", '"\\ud800"', "[1e400]"):
        assert _same(jsonl.loads(text), json.loads(text)), text
        assert _same(jsonl.loads(text.encode()), json.loads(text.encode())), text


def test_bad_json_still_raises_value_error():
    with pytest.raises(ValueError):
        jsonl.loads_lines(b'{"a": 1}\n{"a": \n')
    assert jsonl.loads_lines(b"") == [] and jsonl.loads_lines(b"\n \n") == []
