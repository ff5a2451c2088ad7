"""parse_rate_limit_headers as a whole: the shapes of input it takes, its arguments, and
its warnings; and, for any header values at all, that it only ever warns."""

from __future__ import annotations

import dataclasses
import math
import warnings
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

import tokenbucket as tb
from tokenbucket._headers import (
    OPENAI_FIELDS,
    RateLimitHeaderWarning,
    ServerFeedback,
    ServerLimit,
    _fields,
    _read,
    parse_rate_limit_headers,
    read_openai,
)

from ._support import (
    ANTHROPIC_SDK_357,
    ANTHROPIC_SDK_357_DATE,
    ANTHROPIC_TIDYLLM,
    GITHUB_403,
    GROQ_DOCS,
    IETF_TWO_POLICIES,
    NOTHING,
    OPENAI_GUIDE,
    RFC9110_DATE,
    UTC,
    parse,
)

# --- Inputs ---------------------------------------------------------------------------


def test_no_headers() -> None:
    assert parse({}) == NOTHING
    assert parse([]) == NOTHING
    assert parse({"content-type": "application/json", "date": RFC9110_DATE}) == NOTHING


def test_names_are_case_insensitive() -> None:
    expected = parse(OPENAI_GUIDE)
    assert parse({name.upper(): value for name, value in OPENAI_GUIDE.items()}) == expected
    assert parse({name.title(): value for name, value in OPENAI_GUIDE.items()}) == expected
    anthropic = {name.upper(): value for name, value in ANTHROPIC_SDK_357.items()}
    assert parse(anthropic, now=ANTHROPIC_SDK_357_DATE) == parse(
        ANTHROPIC_SDK_357, now=ANTHROPIC_SDK_357_DATE
    )


def test_list_of_pairs() -> None:
    assert parse(list(OPENAI_GUIDE.items())) == parse(OPENAI_GUIDE)
    # As httpx's Headers.raw / multi_items() give them, names in any case.
    pairs = [(name.upper(), value) for name, value in GROQ_DOCS.items()]
    assert parse(pairs) == parse(GROQ_DOCS)


def test_generator_of_pairs() -> None:
    assert parse(pair for pair in OPENAI_GUIDE.items()) == parse(OPENAI_GUIDE)


def test_values_may_have_surrounding_whitespace() -> None:
    headers = {"x-ratelimit-remaining-requests": " 59\t", "x-ratelimit-reset-requests": " 1s"}
    assert parse(headers).limits == (ServerLimit("requests", 59, None, 1.0),)


def test_now_defaults_to_the_current_time() -> None:
    soon = datetime.now(UTC) + timedelta(hours=1)
    headers = {
        "anthropic-ratelimit-requests-remaining": "1",
        "anthropic-ratelimit-requests-reset": soon.isoformat(),
    }
    (limit,) = parse(headers).limits
    assert limit.reset_after is not None
    assert 3590 < limit.reset_after <= 3600


def test_results_are_frozen() -> None:
    feedback = parse(OPENAI_GUIDE)
    with pytest.raises(AttributeError):
        feedback.retry_after = 1.0  # type: ignore[misc]
    with pytest.raises(AttributeError):
        feedback.limits[0].remaining = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "error", "argument"),
    [
        ({"now": datetime(2024, 1, 1)}, tb.InvalidArgumentError, "now"),
        ({"now": "2024-01-01T00:00:00Z"}, tb.ArgumentTypeError, "now"),
        ({"now": 0.0}, tb.ArgumentTypeError, "now"),
        ({"ietf_dimension": ""}, tb.InvalidArgumentError, "ietf_dimension"),
        ({"ietf_dimension": None}, tb.ArgumentTypeError, "ietf_dimension"),
    ],
)
def test_bad_arguments_raise(
    kwargs: dict[str, object], error: type[tb.TokenBucketError], argument: str
) -> None:
    with pytest.raises(error) as info:
        parse_rate_limit_headers({}, **kwargs)  # type: ignore[arg-type]
    assert getattr(info.value, "argument", None) == argument


@pytest.mark.parametrize(
    ("headers", "error"),
    [
        # Not a mapping nor an iterable of pairs.
        ("retry-after: 5", tb.ArgumentTypeError),
        (b"retry-after: 5", tb.ArgumentTypeError),
        (bytearray(b"retry-after: 5"), tb.ArgumentTypeError),
        (5, tb.ArgumentTypeError),
        (None, tb.ArgumentTypeError),
        # Names and values that are not str.
        ({"retry-after": 5}, tb.ArgumentTypeError),
        ({"retry-after": None}, tb.ArgumentTypeError),
        ({5: "5"}, tb.ArgumentTypeError),
        ({b"retry-after": b"5"}, tb.ArgumentTypeError),  # decode them first
        ([(b"retry-after", b"5")], tb.ArgumentTypeError),  # as httpx's Headers.raw
        ([("retry-after", ["5"])], tb.ArgumentTypeError),
        # Items that are not pairs.
        ([5], tb.ArgumentTypeError),
        ([None], tb.ArgumentTypeError),
        (["retry-after: 5"], tb.ArgumentTypeError),
        (["ab"], tb.ArgumentTypeError),  # a str is not a pair, even of two characters
        ([b"ab"], tb.ArgumentTypeError),
        ([{"retry-after": "5"}], tb.ArgumentTypeError),
        ([{"retry-after", "5"}], tb.ArgumentTypeError),  # a set has no order
        ([("retry-after", "5"), 7], tb.ArgumentTypeError),
        # Pairs with the wrong number of items.
        ([()], tb.InvalidArgumentError),
        ([("retry-after",)], tb.InvalidArgumentError),
        ([("retry-after", "5", "7")], tb.InvalidArgumentError),
        ([["retry-after", "5", "7"]], tb.InvalidArgumentError),
    ],
)
def test_headers_that_are_not_headers_raise(headers: object, error: type[Exception]) -> None:
    with pytest.raises(error) as info:
        parse_rate_limit_headers(headers)  # type: ignore[arg-type]
    assert getattr(info.value, "argument", None) == "headers"


def test_pairs_may_be_lists() -> None:
    # As JSON gives them back.
    pairs = [["retry-after", "5"], ("x-ratelimit-remaining-tokens", "1")]
    assert parse(pairs) == ServerFeedback((ServerLimit("tokens", 1, None, None),), 5.0)  # type: ignore[arg-type]


def test_errors_show_a_long_header_shortened() -> None:
    with pytest.raises(tb.ArgumentTypeError) as info:
        parse_rate_limit_headers({"retry-after": b"x" * 10_000})  # type: ignore[arg-type]
    assert len(str(info.value)) < 200


HASHABLE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.text(max_size=8),
    st.binary(max_size=8),
    st.sampled_from(["retry-after", "x-ratelimit-remaining-tokens", "ratelimit"]),
)
LEAVES = st.one_of(
    HASHABLE,
    st.floats(),
    st.sampled_from(["5", "6m0s", '"p";r=1;t=2', RFC9110_DATE]),
    st.from_type(object),
)
# Lists, tuples of every length near 2, dicts with any keys, and whatever is inside.
JUNK = st.recursive(
    LEAVES,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=3).map(tuple),
        st.tuples(HASHABLE, inner),
        st.dictionaries(HASHABLE, inner, max_size=3),
        st.lists(st.tuples(HASHABLE, inner), max_size=3),
        st.lists(st.tuples(HASHABLE, inner), max_size=3).map(iter),
    ),
    max_leaves=12,
)


@given(headers=JUNK)
def test_any_input_gives_feedback_or_a_library_error(headers: object) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RateLimitHeaderWarning)
        try:
            outcome: object = parse_rate_limit_headers(headers)  # type: ignore[arg-type]
        except tb.TokenBucketError as error:
            outcome = error
    if not isinstance(outcome, ServerFeedback):
        assert isinstance(outcome, tb.ArgumentTypeError | tb.InvalidArgumentError)
        assert outcome.argument == "headers"


# --- Warnings -------------------------------------------------------------------------


def test_azure_minus_one_is_ignored_with_a_warning_per_header() -> None:
    # Azure OpenAI's Responses API sent these, pasted in
    # https://github.com/openai/openai-dotnet/issues/838
    headers = {
        "x-ratelimit-limit-tokens": "-1",
        "x-ratelimit-remaining-tokens": "-1",
        "x-ratelimit-reset-tokens": "0",
    }
    with pytest.warns(RateLimitHeaderWarning) as record:
        feedback = parse_rate_limit_headers(headers)
    assert feedback == NOTHING
    messages = sorted(str(warning.message) for warning in record)
    assert len(messages) == 2
    assert "x-ratelimit-limit-tokens: '-1'" in messages[0]
    assert "x-ratelimit-remaining-tokens: '-1'" in messages[1]


def test_long_values_are_shortened_in_the_warning() -> None:
    with pytest.warns(RateLimitHeaderWarning, match=r"'x{80}\.\.\.'") as record:
        parse_rate_limit_headers({"retry-after": "x" * 10_000})
    assert len(str(record[0].message)) < 200


def test_warnings_can_be_made_errors() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", RateLimitHeaderWarning)
        with pytest.raises(RateLimitHeaderWarning):
            parse_rate_limit_headers({"retry-after": "soon"})


# --- Properties -----------------------------------------------------------------------

KNOWN_NAMES = [
    *OPENAI_GUIDE,
    *(name for name in ANTHROPIC_TIDYLLM if name.startswith("anthropic-")),
    "ratelimit",
    "ratelimit-policy",
    "ratelimit-limit",
    "ratelimit-remaining",
    "ratelimit-reset",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "retry-after",
    "retry-after-ms",
]
SAMPLE_VALUES = sorted(
    {
        value
        for sample in (OPENAI_GUIDE, GROQ_DOCS, ANTHROPIC_SDK_357, IETF_TWO_POLICIES, GITHUB_403)
        for value in sample.values()
    }
)
# Characters that build almost-valid values, so the parsers are probed past their
# first check.
NEAR_MISS = st.text(alphabet=' \t0123456789.-+:;,="?*TtZzmsunh\u00b5\u03bc:GMTFriDec/', max_size=40)
VALUES = st.one_of(st.text(), NEAR_MISS, st.sampled_from(SAMPLE_VALUES))
NAMES = st.one_of(
    st.sampled_from(KNOWN_NAMES), st.sampled_from(KNOWN_NAMES).map(str.upper), st.text()
)
# Whole minutes, as RFC 3339 offsets are.
OFFSETS = st.integers(min_value=-(24 * 60 - 1), max_value=24 * 60 - 1).map(
    lambda minutes: timedelta(minutes=minutes)
)
NOWS = st.builds(
    lambda moment, offset: moment.replace(tzinfo=timezone(offset)),
    st.datetimes(),
    OFFSETS,
)


@given(headers=st.lists(st.tuples(NAMES, VALUES), max_size=12), now=NOWS)
def test_any_header_values_only_ever_warn(headers: list[tuple[str, str]], now: datetime) -> None:
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        feedback = parse_rate_limit_headers(headers, now=now)
    assert all(issubclass(warning.category, RateLimitHeaderWarning) for warning in record)
    names = {name.lower() for name, _ in headers}
    assert len(record) <= len(names)  # at most one warning per header
    for warning in record:
        assert any(f" {name}: " in str(warning.message) for name in names)
    dimensions = [limit.dimension for limit in feedback.limits]
    assert len(dimensions) == len(set(dimensions))
    for limit in feedback.limits:
        assert math.isfinite(limit.remaining)
        assert limit.remaining >= 0
        assert limit.limit is None or (math.isfinite(limit.limit) and limit.limit >= 0)
        assert limit.reset_after is None or (
            math.isfinite(limit.reset_after) and limit.reset_after >= 0
        )
    assert feedback.retry_after is None or (
        math.isfinite(feedback.retry_after) and feedback.retry_after >= 0
    )


OPENAI_VALUES = st.one_of(
    st.integers(0, 10**13).map(str),
    st.sampled_from(["1s", "6m0s", "20ms", "59.25s", "1m30.5s", "0", "8.64s", "1h0m0s"]),
    VALUES,
)


@given(
    headers=st.lists(
        st.tuples(
            st.one_of(
                *[st.sampled_from(OPENAI_FIELDS)] * 4,
                st.sampled_from(OPENAI_FIELDS).map(str.upper),
                NAMES,
            ),
            OPENAI_VALUES,
        ),
        max_size=8,
    )
)
def test_openais_fields_alone_read_as_the_general_reader_reads_them(
    headers: list[tuple[str, str]],
) -> None:
    """OpenAI's fields alone, in their usual forms, are read in one step (see
    read_openai): what the general reader gives, with the same warnings (none)."""
    with warnings.catch_warnings(record=True) as ours:
        warnings.simplefilter("always")
        feedback = parse_rate_limit_headers(headers)
    with warnings.catch_warnings(record=True) as theirs:
        warnings.simplefilter("always")
        general = _read(_fields(headers), None, "requests")
    assert feedback == general
    assert [str(w.message) for w in ours] == [str(w.message) for w in theirs]
    assert all(w.filename == __file__ for w in ours)  # (they name the caller's line)


def test_the_usual_openai_headers_are_read_in_one_step() -> None:
    headers = {
        "x-ratelimit-limit-requests": "500",
        "x-ratelimit-remaining-requests": "499",
        "x-ratelimit-reset-requests": "120ms",
        "x-ratelimit-limit-tokens": "200000",
        "x-ratelimit-remaining-tokens": "199650",
        "x-ratelimit-reset-tokens": "105ms",
        "x-request-id": "req_123",
    }
    fields = _fields(headers)
    fast = read_openai([fields.get(name) for name in OPENAI_FIELDS])
    assert fast is not None
    assert parse_rate_limit_headers(headers) == fast == _read(fields, None, "requests")


def test_the_one_step_reads_objects_are_those_of_the_constructors() -> None:
    """(read_openai makes its ServerLimit and ServerFeedback without their __init__.)"""
    made = read_openai(["40", "100", "6s", "900", "1000", "1m0s"])
    assert made is not None
    built = ServerFeedback(
        limits=(
            ServerLimit("requests", 40.0, 100.0, 6.0, made.limits[0].refill_rate),
            ServerLimit("tokens", 900.0, 1000.0, 60.0, made.limits[1].refill_rate),
        ),
        retry_after=None,
    )
    assert made == built
    assert hash(made) == hash(built)
    assert repr(made) == repr(built)
    assert vars(made.limits[0]) == vars(built.limits[0])
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.limits[0].remaining = 1.0  # type: ignore[misc]
    assert dataclasses.replace(made, retry_after=2.0).retry_after == 2.0
