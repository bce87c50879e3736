"""JSON Lines encode and decode for records: orjson when it is exact, the standard library when it is not.

Records cross every stage boundary, workspace file and JSONL source or sink in this encoding (UTF-8, no
ASCII escaping, compact separators, one record per line). orjson does the work about ten times faster
than `json` when encoding and twice when decoding, but a few inputs it would change rather than refuse,
so each chunk is checked and handed to the standard library when orjson cannot reproduce it exactly:

- encode: a non-finite float (orjson writes `null`; `json` writes `NaN`/`Infinity` as it always did here)
  is found by a walk of the records, done only when the encoded chunk contains `null` at all; integers
  beyond 64 bits, non-string keys, nesting deeper than orjson allows and subclasses of int/float that are
  not plain numbers to orjson (numpy floats) raise in orjson and go to `json`; dates, times and dataclasses
  are passed to `default=str` exactly as `json` did.
- decode: NaN/Infinity literals, lone surrogate escapes and numbers outside a double's range make orjson
  raise, so `json` reads them; an integer of 19 digits or more (one orjson may read as a float) is looked
  for in the bytes first and sends the chunk to `json`.

So `loads_lines(dumps_lines(records))` gives what the standard library would, and files written before
this module (by `json`) read back the same. Byte for byte the output differs from `json`'s only in how a
float's exponent is written (`1e16` against `1e+16`): the same number either way.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable

import orjson

__all__ = ["dumps_lines", "loads", "loads_lines", "split_lines"]

_std_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str).encode
_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
_DIGITS = bytes.maketrans(b"123456789", b"000000000")
_LONG_NUMBER = b"0" * 19


def _default(value):
    # json writes int and float subclasses as numbers; orjson would hand some of them (numpy floats) here.
    if isinstance(value, (int, float)):
        raise TypeError("numeric subclass")
    return str(value)


def _nonfinite(value) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_nonfinite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_nonfinite(v) for v in value)
    return False


def _std_lines(records: list) -> bytes:
    return "".join([_std_encode(r) + "\n" for r in records]).encode()


def dumps_lines(records: Iterable) -> bytes:
    """The records as JSONL bytes, one record per line, each line ending with a newline."""
    records = records if isinstance(records, list) else list(records)
    if not records:
        return b""
    dumps = orjson.dumps
    try:
        data = b"\n".join([dumps(r, default=_default, option=_OPTIONS) for r in records]) + b"\n"
    except (TypeError, orjson.JSONEncodeError):
        return _std_lines(records)
    if b"null" in data and any(_nonfinite(r) for r in records):
        return _std_lines(records)
    return data


def _exact_for_orjson(data: bytes) -> bool:
    return _LONG_NUMBER not in data.translate(_DIGITS)


def loads(data: bytes | str):
    """One JSON value, exactly as `json.loads` reads it."""
    if _exact_for_orjson(data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data):
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    return json.loads(data)


def split_lines(data: bytes) -> list[bytes]:
    return [line for line in data.split(b"\n") if line.strip()]


def loads_lines(data: bytes | list[bytes]) -> list:
    """The values of JSONL bytes (or of a list of non-blank lines), decoded in one call."""
    lines = split_lines(data) if isinstance(data, (bytes, bytearray)) else data
    if not lines:
        return []
    joined = b"[" + b",".join(lines) + b"]"
    if _exact_for_orjson(joined):
        try:
            return orjson.loads(joined)
        except orjson.JSONDecodeError:
            pass
    return json.loads(joined)
