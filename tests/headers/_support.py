"""Real-world header samples, tables of values, and parse helpers for the header tests.

Every sample says where it comes from. Where a case needs a form no sample shows (an
offset instead of ``Z``, say), the value is derived from a real one and marked so.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING

import pytest

from tokenbucket._headers import (
    RateLimitHeaderWarning,
    ServerFeedback,
    parse_rate_limit_headers,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

UTC = timezone.utc
NOTHING = ServerFeedback(limits=(), retry_after=None)


def parse(
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
    *,
    now: datetime | None = None,
    ietf_dimension: str = "requests",
) -> ServerFeedback:
    """Parse headers that must be clean: the suite turns any warning into an error."""
    return parse_rate_limit_headers(headers, now=now, ietf_dimension=ietf_dimension)


def parse_with_one_warning(
    headers: Mapping[str, str], name: str, *, now: datetime | None = None
) -> ServerFeedback:
    """Parse headers with exactly one bad header, ``name``, and check its warning."""
    with pytest.warns(RateLimitHeaderWarning) as record:
        feedback = parse_rate_limit_headers(headers, now=now)
    assert len(record) == 1
    message = str(record[0].message)
    value = {key.lower(): value for key, value in headers.items()}[name]
    shown = value if len(value) <= 80 else value[:80] + "..."  # long values are cut
    assert f" {name}: {shown!r} " in message
    assert record[0].filename == __file__  # stacklevel points at the caller
    return feedback


# --- OpenAI ---------------------------------------------------------------------------

# https://platform.openai.com/docs/guides/rate-limits#rate-limits-in-headers
# ("Field / Sample Value" table of the rate-limits guide).
OPENAI_GUIDE = {
    "x-ratelimit-limit-requests": "60",
    "x-ratelimit-limit-tokens": "150000",
    "x-ratelimit-remaining-requests": "59",
    "x-ratelimit-remaining-tokens": "149984",
    "x-ratelimit-reset-requests": "1s",
    "x-ratelimit-reset-tokens": "6m0s",
}

# Real chat-completions response headers pasted in
# https://community.openai.com/t/how-to-get-rate-limit-reset-time-for-response-api/1268905
# including the newer ``*_usage_based`` variants, which are not ours to read.
OPENAI_FORUM = {
    "x-ratelimit-limit-requests": "5000",
    "x-ratelimit-limit-tokens": "160000",
    "x-ratelimit-limit-tokens_usage_based": "160000",
    "x-ratelimit-remaining-requests": "4999",
    "x-ratelimit-remaining-tokens": "159976",
    "x-ratelimit-remaining-tokens_usage_based": "159976",
    "x-ratelimit-reset-requests": "12ms",
    "x-ratelimit-reset-tokens": "9ms",
    "x-ratelimit-reset-tokens_usage_based": "9ms",
}

# Real headers pasted in https://github.com/open-webui/open-webui/issues/3743
OPENAI_OPEN_WEBUI = {
    "x-ratelimit-limit-requests": "500",
    "x-ratelimit-limit-tokens": "30000",
    "x-ratelimit-remaining-requests": "499",
    "x-ratelimit-remaining-tokens": "29996",
    "x-ratelimit-reset-requests": "120ms",
    "x-ratelimit-reset-tokens": "8ms",
}

# Groq sends OpenAI's headers: https://console.groq.com/docs/rate-limits
GROQ_DOCS = {
    "retry-after": "2",
    "x-ratelimit-limit-requests": "14400",
    "x-ratelimit-limit-tokens": "18000",
    "x-ratelimit-remaining-requests": "14370",
    "x-ratelimit-remaining-tokens": "17997",
    "x-ratelimit-reset-requests": "2m59.56s",
    "x-ratelimit-reset-tokens": "7.66s",
}

# --- Anthropic ------------------------------------------------------------------------

# https://docs.anthropic.com/en/api/rate-limits#response-headers lists the headers and
# says resets are RFC 3339. A real 2025 response with all four dimensions, recorded by
# tidyllm's test suite:
# https://rdrr.io/cran/tidyllm/src/tests/testthat/claude/api.anthropic.com/v1/messages-e050b5-POST.R
ANTHROPIC_TIDYLLM = {
    "date": "Thu, 21 Aug 2025 12:41:00 GMT",
    "anthropic-ratelimit-input-tokens-limit": "80000",
    "anthropic-ratelimit-input-tokens-remaining": "80000",
    "anthropic-ratelimit-input-tokens-reset": "2025-08-21T12:40:59Z",
    "anthropic-ratelimit-output-tokens-limit": "16000",
    "anthropic-ratelimit-output-tokens-remaining": "16000",
    "anthropic-ratelimit-output-tokens-reset": "2025-08-21T12:41:00Z",
    "anthropic-ratelimit-requests-limit": "1000",
    "anthropic-ratelimit-requests-remaining": "999",
    "anthropic-ratelimit-requests-reset": "2025-08-21T12:40:59Z",
    "anthropic-ratelimit-tokens-limit": "96000",
    "anthropic-ratelimit-tokens-remaining": "96000",
    "anthropic-ratelimit-tokens-reset": "2025-08-21T12:40:59Z",
    "request-id": "req_011CSLsW7mFqvHHnzrKdKjAE",
}
ANTHROPIC_TIDYLLM_DATE = datetime(2025, 8, 21, 12, 41, 0, tzinfo=UTC)

# A real 2024 response pasted in
# https://github.com/anthropics/anthropic-sdk-typescript/issues/357
ANTHROPIC_SDK_357 = {
    "anthropic-ratelimit-requests-limit": "5",
    "anthropic-ratelimit-requests-remaining": "0",
    "anthropic-ratelimit-requests-reset": "2024-03-26T20:00:00Z",
    "anthropic-ratelimit-tokens-limit": "25000",
    "anthropic-ratelimit-tokens-remaining": "16000",
    "anthropic-ratelimit-tokens-reset": "2024-03-26T20:00:00Z",
    "date": "Tue, 26 Mar 2024 19:59:59 GMT",
    "x-should-retry": "true",
}
ANTHROPIC_SDK_357_DATE = datetime(2024, 3, 26, 19, 59, 59, tzinfo=UTC)

# --- IETF -----------------------------------------------------------------------------

# draft-ietf-httpapi-ratelimit-headers-10, section 4.2 and appendix B.2.1:
# https://datatracker.ietf.org/doc/html/draft-ietf-httpapi-ratelimit-headers-10
IETF_SECTION_4_2 = {"RateLimit": '"default";r=50;t=30'}
IETF_B_2_1 = {
    "RateLimit": '"fixedwindow";r=99;t=50',
    "RateLimit-Policy": '"fixedwindow";q=100;w=60',
}
# Appendix B.1.4, a throttled response with an HTTP-date Retry-After.
IETF_B_1_4 = {
    "Date": "Mon, 05 Aug 2019 09:27:00 GMT",
    "Retry-After": "Mon, 05 Aug 2019 09:27:05 GMT",
    "RateLimit": '"default";r=0;t=5',
}
IETF_B_1_4_DATE = datetime(2019, 8, 5, 9, 27, 0, tzinfo=UTC)
# Section 3.2's two policies, with a RateLimit field for both (derived; the draft shows
# each field on its own).
IETF_TWO_POLICIES = {
    "RateLimit-Policy": '"permin";q=50;w=60,"perhr";q=1000;w=3600',
    "RateLimit": '"perhr";r=900;t=1800, "permin";r=10;t=20',
}
# Section 4.2: a partition key (a Byte Sequence) and no reset.
IETF_PARTITION = {"RateLimit": '"default";r=999;pk=:dHJpYWwxMjEzMjM=:'}

# The older triple, draft-ietf-httpapi-ratelimit-headers-01, section 8.2.2 (mixed case
# "Ratelimit-" as printed there; RateLimit-Limit carries policies after the number):
# https://datatracker.ietf.org/doc/html/draft-ietf-httpapi-ratelimit-headers-01
IETF_01_DYNAMIC = {
    "RateLimit-Limit": "10, 100;w=60",
    "Ratelimit-Remaining": "9",
    "Ratelimit-Reset": "50",
}
# Same draft, section 8.3.2, and 8.3 with a Retry-After.
IETF_01_MULTIPLE_WINDOWS = {
    "RateLimit-Limit": "5000, 1000;w=3600, 5000;w=86400",
    "RateLimit-Remaining": "100",
    "RateLimit-Reset": "36000",
}
IETF_01_RETRY_AFTER = {
    "Retry-After": "20",
    "RateLimit-Limit": "15, 100;w=60",
    "Ratelimit-Remaining": "15",
    "Ratelimit-Reset": "40",
}
# Same draft, section 8.3.1: no remaining, so nothing to report.
IETF_01_NO_REMAINING = {"RateLimit-Limit": "10", "Ratelimit-Reset": "1"}

# GitHub's X-RateLimit-Reset is a Unix time:
# https://developer.github.com/changes/2013-07-02-rate-limit-reset
GITHUB_2013 = {
    "X-RateLimit-Limit": "60",
    "X-RateLimit-Remaining": "42",
    "X-RateLimit-Reset": "1372700873",
}
# A 403 from the GitHub v3 docs (https://developer.github.com/v3/#rate-limiting), as
# quoted in https://codewithsundeep.com/discussion/solution/29708679
GITHUB_403 = {
    "Date": "Tue, 20 Aug 2013 14:50:41 GMT",
    "X-RateLimit-Limit": "60",
    "X-RateLimit-Remaining": "0",
    "X-RateLimit-Reset": "1377013266",
}
GITHUB_403_DATE = datetime(2013, 8, 20, 14, 50, 41, tzinfo=UTC)

# --- Retry-After ----------------------------------------------------------------------

# RFC 9110 section 10.2.3 (https://www.rfc-editor.org/rfc/rfc9110#section-10.2.3):
# "Retry-After: Fri, 31 Dec 1999 23:59:59 GMT" and "Retry-After: 120"; section 5.6.7
# gives the same instant in all three HTTP-date forms.
RFC9110_DATE = "Fri, 31 Dec 1999 23:59:59 GMT"

# --- Values of each form, good and bad ------------------------------------------------

# Go durations (OpenAI's resets) and their seconds.
DURATIONS = [
    ("1s", 1.0),  # OpenAI guide
    ("6m0s", 360.0),  # OpenAI guide
    ("12ms", 0.012),  # OpenAI forum
    ("9ms", 0.009),  # OpenAI forum
    ("120ms", 0.12),  # open-webui#3743
    ("20ms", 0.02),
    ("0s", 0.0),
    ("0", 0.0),  # Go's time.Duration(0).String() is "0s", but ParseDuration takes "0"
    ("59.9s", 59.9),
    ("7.66s", 7.66),  # Groq docs
    ("2m59.56s", 179.56),  # Groq docs
    ("1h2m3.5s", 3723.5),
    ("1.5h", 5400.0),
    ("500us", 0.0005),
    ("500\u00b5s", 0.0005),  # micro sign, as Go prints it
    ("500\u03bcs", 0.0005),  # Greek mu, which Go also accepts
    ("250ns", 2.5e-7),
    (".5s", 0.5),
    ("1.s", 1.0),
]
MALFORMED_DURATIONS = [
    "6m0",
    "6 m",
    "6m 0s",
    "-1s",
    "+1s",
    "1d",
    "1S",
    "s",
    "ms",
    ".s",
    "1.2.3s",
    "inf",
    "NaNs",
    "360",
    "1h-2m",
    "\u0661s",
    "9" * 400 + "h",
]

# RFC 3339 forms of ANTHROPIC_SDK_357's "2024-03-26T20:00:00Z" (one second after its
# Date), and their seconds from that Date.
RFC3339_RESETS = [
    ("2024-03-26T20:00:00Z", 1.0),
    ("2024-03-26T20:00:00z", 1.0),  # RFC 3339 allows lower case
    ("2024-03-26t20:00:00Z", 1.0),
    ("2024-03-26 20:00:00Z", 1.0),  # RFC 3339 section 5.6 allows a space
    ("2024-03-26T20:00:00.5Z", 1.5),
    ("2024-03-26T20:00:00.123456789Z", 1.123456789),
    ("2024-03-26T20:00:00.25+00:00", 1.25),
    ("2024-03-26T21:00:00+01:00", 1.0),
    ("2024-03-26T15:30:00-04:30", 1.0),
    ("2024-03-26T20:00:00-00:00", 1.0),  # "offset unknown", still UTC
    ("2024-03-26T19:59:60Z", 1.0),  # a leap second
    ("2024-03-26T20:00:30Z", 31.0),
    ("2024-03-26T19:00:00Z", 0.0),  # in the past
    ("2023-01-01T00:00:00.999Z", 0.0),
]
MALFORMED_RFC3339 = [
    "2024-03-26T20:00:00",  # no offset
    "2024-03-26 20:00:00",
    "2024-03-26",
    "20:00:00Z",
    "1711483200",  # a Unix time is not RFC 3339
    "2024-03-26T20:00Z",  # no seconds
    "2024-03-26T20:00:00.Z",
    "2024-03-26T20:00:00+0100",  # ISO 8601 basic offset, not RFC 3339
    "2024-03-26T20:00:00+01",
    "20240326T200000Z",  # ISO 8601 basic format, which Python 3.11 accepts
    "2024-W13-2T20:00:00Z",
    "2024-02-30T20:00:00Z",
    "2024-03-26T24:00:00Z",
    "2024-03-26T20:60:00Z",
    "2024-03-26T20:00:61Z",
    "2024-03-26T20:00:00+24:00",
    "2024-03-26T20:00:00+01:60",
    "0000-01-01T00:00:00Z",
    "Tue, 26 Mar 2024 20:00:00 GMT",
    "\u0662024-03-26T20:00:00Z",  # a non-ASCII digit
]

# Not non-negative decimal numbers (remaining, limit, retry-after-ms).
MALFORMED_DECIMALS = [
    "",
    "abc",
    "-1",
    "NaN",
    "nan",
    "inf",
    "Infinity",
    "1e3",
    "0x10",
    "1,000",
    "1_000",
    "+5",
    "5.",
    ".5",
    "\u0661\u0662",
    "9" * 400,
]
MALFORMED_LIMITS = ["", "lots", "-150000", "NaN", "inf"]
MALFORMED_RETRY_AFTER_MS = ["", "soon", "-1", "NaN", "1e3", "1 000"]

# Neither delay-seconds nor an HTTP-date.
MALFORMED_RETRY_AFTER = [
    "",
    "soon",
    "-5",
    "NaN",
    "inf",
    "1e3",
    "Fri, 31 Dec 1999 23:59:59 UTC",  # RFC 9110 dates are always GMT
    "Fri, 31 Dec 1999 23:59:59 +0000",
    "fri, 31 dec 1999 23:59:59 gmt",  # HTTP-date is case-sensitive
    "Fri, 31 Dec 99 23:59:59 GMT",
    "Fri, 31 Feb 1999 23:59:59 GMT",
    "Fri, 31 Dec 1999 24:00:00 GMT",
    "1999-12-31T23:59:59Z",
    "5, 5",  # two Retry-After fields joined
]

# RateLimit fields that are not Structured Field Lists at all.
MALFORMED_SF_LISTS = [
    '"default";r=50;t=30,',  # trailing comma
    '"default;r=50',  # unterminated string
    '("default");r=50',  # an inner list
    '"default";R=50',  # keys are lower case
    '"default";r=1234567890123456',  # too many digits for an Integer
    '"default";r=50;pk=:not base64:',
    "limit=100, remaining=50, reset=5",  # the draft-05 Dictionary format
]
# RateLimit fields that are Lists, but not of policies with a name and a remaining.
MALFORMED_RATELIMIT = [
    "",
    '"default";t=30',  # no r
    '"default";r=-1;t=30',
    '"default";r=?1',  # a boolean is not a number
    '"default";r="50"',  # nor is a string
    "42;r=50",  # the policy name must be a String or a Token
    *MALFORMED_SF_LISTS,
]
MALFORMED_RATELIMIT_RESETS = ["-30", "?1", '"30"', "abc"]
MALFORMED_RATELIMIT_POLICY = [
    '"fixedwindow";w=60',
    '"fixedwindow";q=-100;w=60',
    "100;w=60",
    '"fixedwindow',
]
MALFORMED_RATELIMIT_LIMIT = ["", "many", "-10", "w=60, 10", "10;;w=60"]
