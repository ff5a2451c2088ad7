"""RFC 9651 Structured Field Lists of Items, as the IETF RateLimit fields use them."""

from __future__ import annotations

import pytest

from tokenbucket._headers._sf import Item, parse_list

from ._support import IETF_01_DYNAMIC, IETF_PARTITION, IETF_TWO_POLICIES, MALFORMED_SF_LISTS


@pytest.mark.parametrize(
    ("text", "items"),
    [
        (
            IETF_TWO_POLICIES["RateLimit"],
            [("perhr", {"r": 900, "t": 1800}), ("permin", {"r": 10, "t": 20})],
        ),
        (
            IETF_TWO_POLICIES["RateLimit-Policy"],
            [("permin", {"q": 50, "w": 60}), ("perhr", {"q": 1000, "w": 3600})],
        ),
        (IETF_PARTITION["RateLimit"], [("default", {"r": 999, "pk": b"trial121323"})]),
        (IETF_01_DYNAMIC["RateLimit-Limit"], [(10, {}), (100, {"w": 60})]),
        ("", []),
        ("fixedwindow;r=1.5;flag;no=?0", [("fixedwindow", {"r": 1.5, "flag": True, "no": False})]),
        (r'"a \"quoted\" \\ name"; r=-3', [('a "quoted" \\ name', {"r": -3})]),
        ("*;x=tok/en:1", [("*", {"x": "tok/en:1"})]),
    ],
)
def test_lists(text: str, items: list[Item]) -> None:
    assert parse_list(text) == items


@pytest.mark.parametrize(
    "text",
    [*MALFORMED_SF_LISTS, "10;;w=60", "w=60, 10", "1, ", "1 2", "1234567890123.5", "@"],
)
def test_malformed_lists(text: str) -> None:
    assert parse_list(text) is None
