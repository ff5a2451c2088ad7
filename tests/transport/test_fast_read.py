"""The usual response's headers are read in one step: what the general reader gives."""

from __future__ import annotations

import warnings

import httpx
import httpx2
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenbucket._headers import OPENAI_FIELDS, _read
from tokenbucket._transport import _fields_read, _openai_read

NAMES = [
    *OPENAI_FIELDS,
    *(name.upper() for name in OPENAI_FIELDS[:2]),
    "X-Ratelimit-Reset-Tokens",
    "content-type",
    "Content-Type",
    "content-encoding",
    "retry-after",
    "retry-after-ms",
    "ratelimit",
    "x-ratelimit-limit",
    "anthropic-ratelimit-tokens-remaining",
    "x-request-id",
    "server",
]
VALUES = [
    "0",
    "1",
    "59",
    "150000",
    "999999999695",
    "9" * 310,
    "1.5",
    " 7",
    "7 ",
    "-1",
    "abc",
    "",
    "1s",
    "6m0s",
    "20ms",
    "59.25s",
    "1m30.5s",
    " 1s",
    "1h",
    "2.5ms",
    "1\u00b5s",
    "application/json",
    "text/event-stream; charset=utf-8",
    "gzip",
]


def general(headers: httpx2.Headers | httpx.Headers) -> tuple[object, str, str]:
    """The general reader's reading (``parse_rate_limit_headers`` reads OpenAI's fields
    in one step too)."""
    fields, kind, coding = _fields_read(headers)
    return _read(fields, None, "requests"), kind, coding


@settings(max_examples=600, deadline=None)
@given(
    pairs=st.lists(st.tuples(st.sampled_from(NAMES), st.sampled_from(VALUES)), max_size=10),
    library=st.sampled_from([httpx2, httpx]),
)
def test_the_one_step_read_is_the_general_one(
    pairs: list[tuple[str, str]], library: object
) -> None:
    headers = library.Headers([(name, value.encode()) for name, value in pairs])  # type: ignore[attr-defined]
    fast = _openai_read(headers)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        expected = general(headers)
    if fast is not None:
        assert not caught  # a value the general reader warns about is never read fast
        assert fast == expected


# Mostly (5 in 6) in their usual forms.
COUNTS = st.one_of(*[st.integers(0, 10**13).map(str)] * 5, st.sampled_from(VALUES))
DURATIONS = st.one_of(
    *[st.sampled_from(["1s", "6m0s", "20ms", "59.25s", "1m30.5s", "0", "8.64s", "1h0m0s"])] * 5,
    st.sampled_from(VALUES),
)
OTHERS = st.sampled_from(["x-request-id", "server", "content-type", "content-encoding"])


@st.composite
def openai_headers(draw: st.DrawFn) -> list[tuple[str, str]]:
    """OpenAI's fields, mostly in their usual forms, some left out, among others."""
    pairs = [
        (name, draw(DURATIONS if "reset" in name else COUNTS))
        for name in OPENAI_FIELDS
        if draw(st.integers(0, 5))  # (1 in 6 left out)
    ]
    others = st.one_of(*[OTHERS] * 3, st.sampled_from(NAMES))
    pairs += draw(st.lists(st.tuples(others, st.sampled_from(VALUES)), max_size=3))
    return draw(st.permutations(pairs))


@settings(max_examples=600, deadline=None)
@given(pairs=openai_headers(), library=st.sampled_from([httpx2, httpx]))
def test_the_one_step_read_of_openais_fields_is_the_general_one(
    pairs: list[tuple[str, str]], library: object
) -> None:
    test_the_one_step_read_is_the_general_one.hypothesis.inner_test(pairs, library)  # type: ignore[attr-defined]


def test_the_usual_response_is_read_in_one_step() -> None:
    """OpenAI's six fields, as its servers send them (and the other headers of a
    response): the one-step read applies, and gives the general reader's result."""
    headers = httpx2.Headers(
        [
            ("content-type", "application/json"),
            ("x-ratelimit-limit-requests", "500"),
            ("x-ratelimit-limit-tokens", "200000"),
            ("x-ratelimit-remaining-requests", "499"),
            ("x-ratelimit-remaining-tokens", "199650"),
            ("x-ratelimit-reset-requests", "120ms"),
            ("x-ratelimit-reset-tokens", "105ms"),
            ("x-request-id", "req_123"),
            ("openai-processing-ms", "412"),
        ]
    )
    fast = _openai_read(headers)
    assert fast is not None
    assert fast == general(headers)
    info, kind, coding = fast
    assert [limit.dimension for limit in info.limits] == ["requests", "tokens"]
    assert (kind, coding) == ("application/json", "")


def test_names_sent_with_capitals_are_read_in_one_step_too() -> None:
    """HTTP/1.1 gives names as the server sent them."""
    headers = httpx2.Headers(
        [
            ("Content-Type", "application/json"),
            ("X-RateLimit-Limit-Requests", "500"),
            ("X-RateLimit-Remaining-Requests", "499"),
            ("X-RateLimit-Reset-Requests", "120ms"),
        ]
    )
    fast = _openai_read(headers)
    assert fast is not None
    assert fast == general(headers)
    assert fast[0].limits[0].remaining == 499.0
