"""What each family of headers reports, from real-world samples, and what one malformed
value does to it: OpenAI, Anthropic, the IETF fields and triples, and Retry-After."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

import pytest

from tokenbucket._headers import ServerFeedback, ServerLimit

from ._support import (
    ANTHROPIC_SDK_357,
    ANTHROPIC_SDK_357_DATE,
    ANTHROPIC_TIDYLLM,
    ANTHROPIC_TIDYLLM_DATE,
    DURATIONS,
    GITHUB_403,
    GITHUB_403_DATE,
    GITHUB_2013,
    GROQ_DOCS,
    IETF_01_DYNAMIC,
    IETF_01_MULTIPLE_WINDOWS,
    IETF_01_NO_REMAINING,
    IETF_01_RETRY_AFTER,
    IETF_B_1_4,
    IETF_B_1_4_DATE,
    IETF_B_2_1,
    IETF_PARTITION,
    IETF_SECTION_4_2,
    IETF_TWO_POLICIES,
    MALFORMED_DECIMALS,
    MALFORMED_DURATIONS,
    MALFORMED_LIMITS,
    MALFORMED_RATELIMIT,
    MALFORMED_RATELIMIT_LIMIT,
    MALFORMED_RATELIMIT_POLICY,
    MALFORMED_RATELIMIT_RESETS,
    MALFORMED_RETRY_AFTER,
    MALFORMED_RETRY_AFTER_MS,
    MALFORMED_RFC3339,
    NOTHING,
    OPENAI_FORUM,
    OPENAI_GUIDE,
    OPENAI_OPEN_WEBUI,
    RFC3339_RESETS,
    RFC9110_DATE,
    UTC,
    parse,
    parse_with_one_warning,
)

if TYPE_CHECKING:
    from collections.abc import Mapping


def feedback(*limits: ServerLimit, retry_after: float | None = None) -> ServerFeedback:
    return ServerFeedback(limits=limits, retry_after=retry_after)


# Each sample, the time it arrived (None: any time) and all that it reports.
SAMPLES = {
    "openai-guide": (
        OPENAI_GUIDE,
        None,
        feedback(
            ServerLimit("requests", remaining=59, limit=60, reset_after=1.0),
            # 16 tokens back in 6 minutes: what the sample says (a 15-16 token slip
            # in the rounding of remaining is within the 10 % the rate is told to).
            ServerLimit(
                "tokens", remaining=149984, limit=150000, reset_after=360.0, refill_rate=15 / 361
            ),
        ),
    ),
    "openai-forum-ignores-unknown-variants": (
        OPENAI_FORUM,
        None,
        feedback(
            ServerLimit("requests", remaining=4999, limit=5000, reset_after=0.012),
            ServerLimit("tokens", remaining=159976, limit=160000, reset_after=0.009),
        ),
    ),
    "openai-open-webui": (
        OPENAI_OPEN_WEBUI,
        None,
        feedback(
            ServerLimit("requests", remaining=499, limit=500, reset_after=0.12),
            ServerLimit("tokens", remaining=29996, limit=30000, reset_after=0.008),
        ),
    ),
    # Resets at or before the response's own Date header are 0, never negative.
    "anthropic-all-four-dimensions-resets-in-the-past": (
        ANTHROPIC_TIDYLLM,
        ANTHROPIC_TIDYLLM_DATE,
        feedback(
            ServerLimit("requests", remaining=999, limit=1000, reset_after=0.0),
            ServerLimit("tokens", remaining=96000, limit=96000, reset_after=0.0),
            ServerLimit("input_tokens", remaining=80000, limit=80000, reset_after=0.0),
            ServerLimit("output_tokens", remaining=16000, limit=16000, reset_after=0.0),
        ),
    ),
    "anthropic-exhausted-requests": (
        ANTHROPIC_SDK_357,
        ANTHROPIC_SDK_357_DATE,
        feedback(
            ServerLimit("requests", remaining=0, limit=5, reset_after=1.0),
            ServerLimit("tokens", remaining=16000, limit=25000, reset_after=1.0),
        ),
    ),
    "anthropic-now-in-another-time-zone": (
        ANTHROPIC_SDK_357,
        ANTHROPIC_SDK_357_DATE.astimezone(timezone(timedelta(hours=1))),
        feedback(
            ServerLimit("requests", remaining=0, limit=5, reset_after=1.0),
            ServerLimit("tokens", remaining=16000, limit=25000, reset_after=1.0),
        ),
    ),
    "ietf-structured-remaining-and-reset": (
        IETF_SECTION_4_2,
        None,
        feedback(ServerLimit("requests", remaining=50, limit=None, reset_after=30)),
    ),
    "ietf-structured-with-policy": (
        IETF_B_2_1,
        None,
        feedback(ServerLimit("requests", 99, 100, 50)),
    ),
    "ietf-structured-throttled-with-http-date-retry-after": (
        IETF_B_1_4,
        IETF_B_1_4_DATE,
        feedback(ServerLimit("requests", remaining=0, limit=None, reset_after=5), retry_after=5.0),
    ),
    "ietf-structured-reports-the-policy-with-least-left": (
        IETF_TWO_POLICIES,
        None,
        feedback(ServerLimit("requests", 10, 50, 20)),
    ),
    "ietf-structured-partition-key-without-reset": (
        IETF_PARTITION,
        None,
        feedback(ServerLimit("requests", 999, None, None)),
    ),
    "ietf-draft-triple": (IETF_01_DYNAMIC, None, feedback(ServerLimit("requests", 9, 10, 50))),
    "ietf-draft-triple-multiple-windows": (
        IETF_01_MULTIPLE_WINDOWS,
        None,
        feedback(ServerLimit("requests", 100, 5000, 36000)),
    ),
    "ietf-draft-triple-retry-after": (
        IETF_01_RETRY_AFTER,
        None,
        feedback(ServerLimit("requests", 15, 15, 40), retry_after=20.0),
    ),
    "ietf-draft-triple-without-remaining-gives-nothing": (IETF_01_NO_REMAINING, None, NOTHING),
    "x-ratelimit-reset-as-unix-time": (
        GITHUB_2013,
        datetime(2013, 7, 1, 17, 37, 53, tzinfo=UTC),  # 1372700873 - 600
        feedback(ServerLimit("requests", 42, 60, 600.0)),
    ),
    "x-ratelimit-reset-from-the-responses-date": (
        GITHUB_403,
        GITHUB_403_DATE,
        feedback(ServerLimit("requests", 0, 60, 3025.0)),
    ),
    "x-ratelimit-reset-unix-time-in-the-past-is-zero": (
        GITHUB_2013,
        datetime(2030, 1, 1, tzinfo=UTC),
        feedback(ServerLimit("requests", 42, 60, 0.0)),
    ),
}


@pytest.mark.parametrize(("headers", "now", "expected"), SAMPLES.values(), ids=SAMPLES.keys())
def test_samples(headers: dict[str, str], now: datetime | None, expected: ServerFeedback) -> None:
    assert parse(headers, now=now) == expected


def test_groq_sample() -> None:
    feedback = parse(GROQ_DOCS)
    assert feedback.retry_after == 2.0
    requests, tokens = feedback.limits
    assert (requests.dimension, requests.remaining, requests.limit) == ("requests", 14370, 14400)
    assert requests.reset_after == pytest.approx(179.56)
    assert (tokens.dimension, tokens.remaining, tokens.limit) == ("tokens", 17997, 18000)
    assert tokens.reset_after == pytest.approx(7.66)


@pytest.mark.parametrize(("duration", "seconds"), DURATIONS)
def test_openai_resets_are_go_durations(duration: str, seconds: float) -> None:
    headers = {"x-ratelimit-remaining-tokens": "1", "x-ratelimit-reset-tokens": duration}
    (limit,) = parse(headers).limits
    assert limit.reset_after == pytest.approx(seconds, abs=1e-12)


@pytest.mark.parametrize(("reset", "seconds"), RFC3339_RESETS)
def test_anthropic_resets_are_rfc3339(reset: str, seconds: float) -> None:
    headers = {
        "anthropic-ratelimit-tokens-remaining": "16000",
        "anthropic-ratelimit-tokens-reset": reset,
    }
    (limit,) = parse(headers, now=ANTHROPIC_SDK_357_DATE).limits
    assert limit.reset_after == pytest.approx(seconds)


def test_ietf_dimension_is_configurable() -> None:
    result = parse(IETF_B_2_1, ietf_dimension="content-bytes")
    assert result.limits == (ServerLimit("content-bytes", 99, 100, 50),)


def test_ietf_structured_split_over_several_fields() -> None:
    # RFC 9651 section 3.1: a List may be split over several field lines.
    pairs = [
        ("RateLimit", '"perhr";r=900;t=1800'),
        ("RateLimit", '"permin";r=10;t=20'),
        ("RateLimit-Policy", '"permin";q=50;w=60'),
        ("RateLimit-Policy", '"perhr";q=1000;w=3600'),
    ]
    assert parse(pairs).limits == (ServerLimit("requests", 10, 50, 20),)


def test_precedence_between_families() -> None:
    # Provider headers beat the generic ones for the same dimension; structured fields
    # beat the RateLimit-* triple, which beats X-RateLimit-*.
    headers = {**OPENAI_GUIDE, **GITHUB_403, **IETF_B_2_1, **IETF_01_DYNAMIC}
    result = parse(headers, now=GITHUB_403_DATE)
    assert result.limits[0] == ServerLimit("requests", 59, 60, 1.0)
    result = parse({**GITHUB_403, **IETF_B_2_1, **IETF_01_DYNAMIC}, now=GITHUB_403_DATE)
    assert result.limits == (ServerLimit("requests", 99, 100, 50),)
    result = parse({**GITHUB_403, **IETF_01_DYNAMIC}, now=GITHUB_403_DATE)
    assert result.limits == (ServerLimit("requests", 9, 10, 50),)
    result = parse({**GITHUB_403, **IETF_01_DYNAMIC}, ietf_dimension="tokens")
    assert result.limits[0].dimension == "tokens"


# --- Retry-After ----------------------------------------------------------------------

RETRY_AFTER_NOW = datetime(1999, 12, 31, 23, 57, 59, tzinfo=UTC)
HTTP_DATE_NOW = datetime(1994, 11, 6, 8, 48, 37, tzinfo=UTC)


@pytest.mark.parametrize(
    ("headers", "now", "seconds"),
    [
        ({"Retry-After": "120"}, None, 120.0),  # RFC 9110
        ({"Retry-After": "2"}, None, 2.0),  # Groq docs
        ({"Retry-After": "20"}, None, 20.0),  # draft-01 section 8.3
        ({"Retry-After": "0"}, None, 0.0),
        ({"Retry-After": "1.5"}, None, 1.5),  # not RFC 9110, but openai-python honours it
        # The three HTTP-date forms of one instant, RFC 9110 section 5.6.7.
        ({"retry-after": "Sun, 06 Nov 1994 08:49:37 GMT"}, HTTP_DATE_NOW, 60.0),
        ({"retry-after": "Sunday, 06-Nov-94 08:49:37 GMT"}, HTTP_DATE_NOW, 60.0),
        ({"retry-after": "Sun Nov  6 08:49:37 1994"}, HTTP_DATE_NOW, 60.0),
        ({"Retry-After": RFC9110_DATE}, RETRY_AFTER_NOW, 120.0),
        ({"Retry-After": RFC9110_DATE}, None, 0.0),  # in the past
        # openai-python reads "retry-after-ms" as (possibly fractional) milliseconds:
        # https://github.com/openai/openai-python/blob/main/src/openai/_base_client.py
        # (_parse_retry_after_header); OpenAI and Azure OpenAI send it on 429s.
        ({"retry-after-ms": "1500"}, None, 1.5),
        ({"Retry-After-Ms": "20.5"}, None, 0.0205),
        # retry-after-ms wins over Retry-After.
        ({"retry-after": "2", "retry-after-ms": "1500"}, None, 1.5),
        ({"Retry-After": RFC9110_DATE, "retry-after-ms": "250"}, None, 0.25),
    ],
)
def test_retry_after(headers: dict[str, str], now: datetime | None, seconds: float) -> None:
    assert parse(headers, now=now) == feedback(retry_after=seconds)


def test_malformed_retry_after_ms_falls_back_to_retry_after() -> None:
    headers = {"retry-after": "2", "retry-after-ms": "soon"}
    assert parse_with_one_warning(headers, "retry-after-ms").retry_after == 2.0


# --- One malformed value --------------------------------------------------------------

OPENAI_REQUESTS = ServerLimit("requests", 59, 60, 1.0)
ANTHROPIC_REQUESTS = ServerLimit("requests", 0, 5, 1.0)

# The header, its malformed values, the sample it is put in, the sample's time, and
# what is still reported: a malformed remaining drops its dimension; a malformed limit
# or reset keeps it, with None there.
MALFORMED: list[tuple[str, list[str], Mapping[str, str], datetime | None, ServerFeedback]] = [
    (
        "x-ratelimit-remaining-tokens",
        MALFORMED_DECIMALS,
        OPENAI_GUIDE,
        None,
        feedback(OPENAI_REQUESTS),
    ),
    (
        "x-ratelimit-limit-tokens",
        MALFORMED_LIMITS,
        OPENAI_GUIDE,
        None,
        feedback(OPENAI_REQUESTS, ServerLimit("tokens", 149984, None, 360.0)),
    ),
    (
        "x-ratelimit-reset-tokens",
        MALFORMED_DURATIONS,
        OPENAI_GUIDE,
        None,
        feedback(OPENAI_REQUESTS, ServerLimit("tokens", 149984, 150000, None)),
    ),
    (
        "anthropic-ratelimit-tokens-reset",
        MALFORMED_RFC3339,
        ANTHROPIC_SDK_357,
        ANTHROPIC_SDK_357_DATE,
        feedback(ANTHROPIC_REQUESTS, ServerLimit("tokens", 16000, 25000, None)),
    ),
    # Rachio sends an RFC 3339 time here, which the de-facto convention does not allow:
    # https://rachio.discoursehosting.net/t/api-rate-limiting-enhancements/10944
    (
        "x-ratelimit-reset",
        ["2018-03-13T00:00:00Z"],
        {"x-ratelimit-limit": "1700", "x-ratelimit-remaining": "4"},
        None,
        feedback(ServerLimit("requests", 4, 1700, None)),
    ),
    ("retry-after", MALFORMED_RETRY_AFTER, {}, None, NOTHING),
    ("retry-after-ms", MALFORMED_RETRY_AFTER_MS, {}, None, NOTHING),
    ("ratelimit", MALFORMED_RATELIMIT, {}, None, NOTHING),
    (
        "ratelimit",
        [f'"default";r=50;t={reset}' for reset in MALFORMED_RATELIMIT_RESETS],
        {},
        None,
        feedback(ServerLimit("requests", 50, None, None)),
    ),
    (
        "ratelimit-policy",
        MALFORMED_RATELIMIT_POLICY,
        IETF_B_2_1,
        None,
        feedback(ServerLimit("requests", 99, None, 50)),
    ),
    (
        "ratelimit-limit",
        MALFORMED_RATELIMIT_LIMIT,
        IETF_01_DYNAMIC,
        None,
        feedback(ServerLimit("requests", 9, None, 50)),
    ),
]


MALFORMED_CASES = [
    pytest.param(name, value, sample, now, expected, id=f"{name}={value[:40]!r}")
    for name, values, sample, now, expected in MALFORMED
    for value in values
]


@pytest.mark.parametrize(("name", "value", "sample", "now", "expected"), MALFORMED_CASES)
def test_one_malformed_value_is_dropped_with_one_warning(
    name: str,
    value: str,
    sample: Mapping[str, str],
    now: datetime | None,
    expected: ServerFeedback,
) -> None:
    # The sample's own spelling of the header is replaced, whatever its case.
    headers = {key: text for key, text in sample.items() if key.lower() != name}
    assert parse_with_one_warning({**headers, name: value}, name, now=now) == expected


@pytest.mark.parametrize(
    ("headers", "rate"),
    [
        # A bucket of 100 per second, 60 taken: back to full in 0.6 s.
        (
            {
                "x-ratelimit-limit-requests": "100",
                "x-ratelimit-remaining-requests": "40",
                "x-ratelimit-reset-requests": "600ms",
            },
            59 / 0.601,
        ),
        # Too little taken to tell the rate within 10 %: 1 of 60, back in 1 s.
        (
            {
                "x-ratelimit-limit-requests": "60",
                "x-ratelimit-remaining-requests": "59",
                "x-ratelimit-reset-requests": "1s",
            },
            None,
        ),
        # A reset written in whole seconds that is a few seconds long: too coarse.
        (
            {
                "x-ratelimit-limit-tokens": "1000",
                "x-ratelimit-remaining-tokens": "0",
                "x-ratelimit-reset-tokens": "3s",
            },
            None,
        ),
        # The same in milliseconds is fine.
        (
            {
                "x-ratelimit-limit-tokens": "1000",
                "x-ratelimit-remaining-tokens": "0",
                "x-ratelimit-reset-tokens": "3.000s",
            },
            999 / 3.001,
        ),
        # Anthropic: an RFC 3339 time with a fraction of a second.
        (
            {
                "anthropic-ratelimit-requests-limit": "50",
                "anthropic-ratelimit-requests-remaining": "10",
                "anthropic-ratelimit-requests-reset": "2026-01-01T00:00:48.00Z",
            },
            39 / 48.01,
        ),
        # Without a limit there is nothing to tell the rate from.
        ({"x-ratelimit-remaining-requests": "40", "x-ratelimit-reset-requests": "600ms"}, None),
        # The IETF fields reset all at once: no refill rate.
        ({"ratelimit-limit": "100", "ratelimit-remaining": "0", "ratelimit-reset": "30"}, None),
    ],
)
def test_a_reset_until_full_gives_the_lowest_refill_rate_the_rounding_allows(
    headers: Mapping[str, str], rate: float | None
) -> None:
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    (limit,) = parse(headers, now=now).limits
    if rate is None:
        assert limit.refill_rate is None
    else:
        assert limit.refill_rate == pytest.approx(rate, rel=1e-9)
