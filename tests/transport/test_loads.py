"""The transport reads JSON (request bodies, response bodies, events) with ``_loads``:
for any bytes, the value ``json.loads`` gives, or the error it raises (documents nested
to within a few levels of the recursion limit aside, before Python 3.12)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenbucket._transport import _loads

VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()  # NaN and the infinities too: json.dumps writes them, json.loads reads them
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
SPACE = st.text(alphabet=" \t\n\r\x0b\x0c\xa0", max_size=3)  # JSON's whitespace, and others'
ENCODINGS = st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-16-be", "utf-32-le"])


def outcome(read: object, data: bytes | bytearray) -> tuple[str, str]:
    """What reading ``data`` gives: the value's repr (NaN equals itself there), or the
    error's type."""
    try:
        value = read(data)  # type: ignore[operator]
    except (ValueError, RecursionError) as error:
        return "raises", type(error).__name__
    return "reads", repr(value)


def same(data: bytes) -> None:
    assert outcome(_loads, data) == outcome(json.loads, data)
    assert outcome(_loads, bytearray(data)) == outcome(json.loads, data)


@settings(max_examples=400, deadline=None)
@given(VALUES, SPACE, SPACE, st.booleans(), ENCODINGS)
def test_a_document_reads_as_json_loads_reads_it(
    value: object, before: str, after: str, ascii_only: bool, encoding: str
) -> None:
    text = before + json.dumps(value, ensure_ascii=ascii_only) + after
    same(text.encode(encoding, "surrogatepass"))


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=40))
def test_any_bytes_read_or_fail_as_json_loads_does(data: bytes) -> None:
    same(data)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b" ",
        b'{"a": 1} x',  # extra data
        b'{"a": 1}{"b": 2}',
        b'{"a": 1',  # cut short
        b'"\xed\xa0\x80"',  # an encoded surrogate: json.loads reads it
        b'"\\ud800"',
        b"\xef\xbb\xbf{}",  # a byte-order mark
        b"NaN",
        b"[" * 100_000 + b"]" * 100_000,  # nested too deep: RecursionError
        b'{"usage": {"prompt_tokens": 3}}\n\n',
    ],
)
def test_edge_cases_read_or_fail_as_json_loads_does(data: bytes) -> None:
    same(data)
