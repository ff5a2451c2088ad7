"""rate_limited, chat_cost, estimate_tokens and usage_of, on fake async clients shaped
like the OpenAI and Anthropic SDKs. Async tests run under virtual time."""

from __future__ import annotations

import traceback
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest

import tokenbucket as tb
from tests.conftest import backend_params
from tests.virtual._support import TOL, now

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["trio-mockclock", "asyncio-looptime"])
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    return backend_params(request.param)


# --- fakes shaped like the SDKs' objects ------------------------------------------------


@dataclass
class OpenAIUsage:
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


@dataclass
class OpenAIResult:
    usage: OpenAIUsage | None
    text: str = "ok"


@dataclass
class AnthropicUsage:
    input_tokens: int
    output_tokens: int


@dataclass
class AnthropicResult:
    usage: AnthropicUsage


@dataclass
class FakeResponse:
    status_code: int
    headers: object = field(default_factory=dict)  # what a broken SDK might give


class FakeAPIError(Exception):
    """Like openai.RateLimitError / anthropic.RateLimitError: carries ``.response``."""

    def __init__(self, status_code: int, headers: object = None) -> None:
        super().__init__(f"HTTP {status_code}")
        self.response = FakeResponse(status_code, {} if headers is None else headers)


class UnreadableAPIError(Exception):
    """An error whose ``.response`` fails when read."""

    status_code = 429

    @property
    def response(self) -> FakeResponse:
        raise RuntimeError("the response was already closed")


class ExplodingHeaders(Mapping[str, str]):
    """A headers object that fails when read."""

    def __getitem__(self, name: str) -> str:
        raise RuntimeError("connection reset")

    def __iter__(self) -> Iterator[str]:
        raise RuntimeError("connection reset")

    def __len__(self) -> int:
        return 1


MESSAGES = [
    {"role": "system", "content": "x" * 40},  # 4 + 10
    {"role": "user", "content": [{"type": "text", "text": "y" * 80}]},  # 4 + 20
]
PROMPT = 38  # the estimate of MESSAGES


# --- estimate_tokens and chat_cost ------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "tokens"),
    [
        ("", 0),
        ("abcd", 1),
        ("abcde", 2),
        ("x" * 400, 100),
        (None, 0),
        (42, 0),
        ({"role": "user", "content": "abcdefgh"}, 4 + 2),
        ({"role": "user", "content": None}, 4),
        ({"type": "text", "text": "abcdefgh"}, 2),
        ({"type": "image_url", "image_url": {"url": "https://example.com/x.png"}}, 0),
        ([{"type": "text", "text": "abcd"}, {"type": "image_url", "image_url": {}}], 1),
        ({"role": "user", "content": [{"type": "text", "text": "abcdefgh"}]}, 4 + 2),
        (MESSAGES, PROMPT),
        (("abcd", "abcd"), 2),
    ],
)
def test_estimate_tokens(value: object, tokens: int) -> None:
    assert tb.estimate_tokens(value) == tokens


def test_chat_cost_counts_messages_system_and_max_tokens() -> None:
    cost = tb.chat_cost()
    assert cost(messages=MESSAGES, max_tokens=100) == {
        "tokens": PROMPT + 100,
        "input_tokens": PROMPT,
        "output_tokens": 100,
    }
    # Anthropic's separate system prompt; OpenAI's max_completion_tokens.
    assert cost(messages=MESSAGES, system="z" * 8, max_completion_tokens=10) == {
        "tokens": PROMPT + 2 + 10,
        "input_tokens": PROMPT + 2,
        "output_tokens": 10,
    }
    assert cost(messages=MESSAGES)["output_tokens"] == 1024
    assert tb.chat_cost(default_max_tokens=7)(messages=[])["tokens"] == 7
    custom = tb.chat_cost(lambda value: 1000 if value else 0, default_max_tokens=1)
    assert custom(messages=MESSAGES) == {"tokens": 1001, "input_tokens": 1000, "output_tokens": 1}


def test_usage_of_reads_openai_and_anthropic_results() -> None:
    assert tb.usage_of(OpenAIResult(OpenAIUsage(30, 12, 42))) == {
        "tokens": 42,
        "input_tokens": 30,
        "output_tokens": 12,
    }
    assert tb.usage_of(AnthropicResult(AnthropicUsage(30, 12))) == {
        "tokens": 42,
        "input_tokens": 30,
        "output_tokens": 12,
    }
    assert tb.usage_of(OpenAIResult(None)) is None
    assert tb.usage_of("no usage here") is None
    # An SDK object's usage is read by its attributes: a dict there has none.
    usage: Any = {"prompt_tokens": 30, "completion_tokens": 12}
    assert tb.usage_of(OpenAIResult(usage)) is None


def test_rate_limited_checks_its_limiter() -> None:
    with pytest.raises(tb.ArgumentTypeError):
        tb.rate_limited(tb.TokenBucket(rate=1, capacity=1))  # type: ignore[arg-type]


# --- the decorator --------------------------------------------------------------------


async def test_acquires_the_cost_and_settles_with_the_openai_usage() -> None:
    limiter = tb.Limiter(requests_per_minute=100, tokens_per_minute=10_000, max_concurrency=4)
    seen: list[dict[str, Any]] = []

    @tb.rate_limited(limiter, cost=tb.chat_cost())
    async def create(**kwargs: Any) -> OpenAIResult:
        snapshot = limiter.statistics()
        seen.append({"in_flight": snapshot.in_flight, **snapshot.available})
        return OpenAIResult(OpenAIUsage(prompt_tokens=30, completion_tokens=12, total_tokens=42))

    result = await create(model="gpt-4o", messages=MESSAGES, max_tokens=500)
    assert result.usage is not None
    assert result.usage.total_tokens == 42
    assert create.__name__ == "create"
    # Inside the call: the estimate was reserved, with a slot.
    assert seen == [{"in_flight": 1, "requests": 99, "tokens": 10_000 - (PROMPT + 500)}]
    # After it: settled to what the response says was used.
    snapshot = limiter.statistics()
    assert snapshot.in_flight == 0
    assert dict(snapshot.available) == {"requests": 99, "tokens": 10_000 - 42}


async def test_settles_with_the_anthropic_usage_per_dimension() -> None:
    limiter = tb.Limiter(
        requests_per_minute=50, input_tokens_per_minute=1_000, output_tokens_per_minute=2_000
    )

    @tb.rate_limited(limiter, cost=tb.chat_cost())
    async def create(**kwargs: Any) -> AnthropicResult:
        available = limiter.statistics().available
        assert available["input_tokens"] == 1_000 - PROMPT
        assert available["output_tokens"] == 2_000 - 300
        return AnthropicResult(AnthropicUsage(input_tokens=50, output_tokens=7))

    await create(model="claude-sonnet", messages=MESSAGES, max_tokens=300)
    assert dict(limiter.statistics().available) == {
        "requests": 49,
        "input_tokens": 950,
        "output_tokens": 1_993,
    }


async def test_no_usage_keeps_the_reservation() -> None:
    limiter = tb.Limiter(tokens_per_minute=1_000)

    @tb.rate_limited(limiter, cost=tb.chat_cost())
    async def create(**kwargs: Any) -> OpenAIResult:
        return OpenAIResult(None)

    await create(messages=MESSAGES, max_tokens=100)
    assert limiter.statistics().available["tokens"] == 1_000 - (PROMPT + 100)

    @tb.rate_limited(limiter, cost=tb.chat_cost(), usage=None)
    async def create_unsettled(**kwargs: Any) -> OpenAIResult:
        return OpenAIResult(OpenAIUsage(1, 1, 2))

    await create_unsettled(messages=[], max_tokens=10)
    assert limiter.statistics().available["tokens"] == 1_000 - (PROMPT + 100) - 10


async def test_calls_wait_for_the_limiter_in_fifo_order() -> None:
    limiter = tb.Limiter(requests_per_second=2, tokens_per_second=1_000)
    start = now()
    order: list[tuple[int, float]] = []

    @tb.rate_limited(limiter)
    async def ping(index: int) -> None:
        order.append((index, now() - start))

    async def run(index: int) -> None:
        # rate_limited is typed to return an Awaitable, not a coroutine function, so
        # mypy refuses it as a task's function; awaiting it here is the workaround.
        await ping(index)

    async with anyio.create_task_group() as tg:
        for index in range(5):
            tg.start_soon(run, index)
            await anyio.wait_all_tasks_blocked()
    assert [t for _, t in sorted(order)] == pytest.approx([0, 0, 1, 1, 2], abs=TOL)


async def test_picks_the_model_from_a_bucket_group() -> None:
    limits = tb.BucketGroup.from_dict(
        {
            "gpt-4o": {"requests_per_minute": 100, "tokens_per_minute": 10_000},
            "claude": {
                "requests_per_minute": 50,
                "input_tokens_per_minute": 1_000,
                "output_tokens_per_minute": 2_000,
            },
        }
    )

    @tb.rate_limited(limits, cost=tb.chat_cost())
    async def create(**kwargs: Any) -> AnthropicResult:
        return AnthropicResult(AnthropicUsage(input_tokens=50, output_tokens=7))

    await create(model="claude", messages=MESSAGES, max_tokens=300)
    assert dict(limits["claude"].statistics().available) == {
        "requests": 49,
        "input_tokens": 950,
        "output_tokens": 1_993,
    }
    assert dict(limits["gpt-4o"].statistics().available) == {"requests": 100, "tokens": 10_000}
    await create(model="gpt-4o", messages=MESSAGES, max_tokens=300)
    assert dict(limits["gpt-4o"].statistics().available) == {"requests": 99, "tokens": 9_943}

    with pytest.raises(tb.ArgumentTypeError):
        await create(messages=MESSAGES)  # no model: no limiter to pick
    with pytest.raises(KeyError):
        await create(model="gpt-5", messages=MESSAGES)

    @tb.rate_limited(limits, model="claude")
    async def fixed(**kwargs: Any) -> None:
        return None

    await fixed(model="ignored")
    assert limits["claude"].statistics().available["requests"] == 48

    @tb.rate_limited(limits, model=lambda *args, **kwargs: kwargs["engine"])
    async def chosen(**kwargs: Any) -> None:
        return None

    await chosen(engine="gpt-4o")
    assert limits["gpt-4o"].statistics().available["requests"] == 98


async def test_a_429_pauses_the_limiter_and_propagates() -> None:
    limiter = tb.Limiter(requests_per_minute=100, tokens_per_minute=10_000)
    start = now()
    calls: list[float] = []

    @tb.rate_limited(limiter, cost=tb.chat_cost())
    async def create(**kwargs: Any) -> OpenAIResult:
        calls.append(now() - start)
        if len(calls) == 1:
            raise FakeAPIError(429, {"retry-after": "7", "x-ratelimit-remaining-tokens": "9000"})
        return OpenAIResult(OpenAIUsage(1, 1, 2))

    with pytest.raises(FakeAPIError) as info:
        await create(messages=MESSAGES, max_tokens=10)
    assert info.value.response.status_code == 429
    snapshot = limiter.statistics()
    assert snapshot.paused_until == pytest.approx(start + 7, abs=TOL)
    assert snapshot.in_flight == 0
    await create(messages=MESSAGES, max_tokens=10)
    assert calls == [0.0, pytest.approx(7, abs=TOL)]


async def test_a_429_without_retry_after_pauses_one_second() -> None:
    limiter = tb.Limiter(requests_per_minute=100)
    start = now()

    @tb.rate_limited(limiter)
    async def create() -> None:
        raise FakeAPIError(429)

    with pytest.raises(FakeAPIError):
        await create()
    assert limiter.statistics().paused_until == pytest.approx(start + 1, abs=TOL)


async def test_other_errors_propagate_without_a_pause() -> None:
    limiter = tb.Limiter(requests_per_minute=100, max_concurrency=1)

    @tb.rate_limited(limiter)
    async def create(status: int) -> None:
        if status:
            raise FakeAPIError(status, {"retry-after": "30"})
        raise ValueError("not an HTTP error")

    with pytest.raises(FakeAPIError):
        await create(500)
    with pytest.raises(ValueError, match="not an HTTP error"):
        await create(0)
    snapshot = limiter.statistics()
    assert snapshot.paused_until is None
    assert snapshot.in_flight == 0
    assert snapshot.available["requests"] == 98


async def test_a_cost_above_the_limit_fails_fast_without_calling() -> None:
    limiter = tb.Limiter(tokens_per_minute=1_000)
    called: list[bool] = []

    @tb.rate_limited(limiter, cost=tb.chat_cost())
    async def create(**kwargs: Any) -> None:
        called.append(True)

    with pytest.raises(tb.AmountExceedsLimitError):
        await create(messages=MESSAGES, max_tokens=5_000)
    assert called == []
    assert limiter.statistics().available["tokens"] == 1_000


async def test_timeout_is_passed_on() -> None:
    limiter = tb.Limiter(requests_per_minute=1)

    @tb.rate_limited(limiter, timeout=5)
    async def create() -> None:
        return None

    start = now()
    await create()
    with pytest.raises(tb.AcquireTimeoutError):
        await create()
    assert now() - start == pytest.approx(5, abs=TOL)


# --- the caller's exception always wins -----------------------------------------------


async def raise_through_decorator(
    limiter: tb.Limiter, original: Exception, *, match: str
) -> list[warnings.WarningMessage]:
    """Raise ``original`` from a decorated call; check that it comes out unchanged (the
    same object, raised where it was, with nothing chained) with one warning matching
    ``match``, which points at the call."""

    @tb.rate_limited(limiter)
    async def create() -> None:
        raise original

    with (
        pytest.warns(tb.RateLimitHeaderWarning, match=match) as record,
        pytest.raises(type(original)) as info,
    ):
        await create()
    assert info.value is original
    assert original.__cause__ is None
    assert original.__context__ is None
    frames = [frame.name for frame in traceback.extract_tb(original.__traceback__)]
    assert frames[-2:] == ["wrapper", "create"]
    assert len(record) == 1
    return list(record)


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(5, id="not-headers"),
        pytest.param("retry-after: 7", id="a-str"),
        pytest.param(b"retry-after: 7", id="bytes"),
        pytest.param({b"retry-after": b"7"}, id="bytes-names"),
        pytest.param({"retry-after": 7}, id="int-value"),
        pytest.param([("retry-after",)], id="one-item-pair"),
        pytest.param([("retry-after", "7", "s")], id="three-item-pair"),
        pytest.param(["retry-after: 7"], id="str-pair"),
        pytest.param([None], id="none-pair"),
        pytest.param(ExplodingHeaders(), id="headers-that-raise"),
    ],
)
async def test_a_429_with_unreadable_headers_warns_and_propagates_unchanged(
    headers: object,
) -> None:
    limiter = tb.Limiter(requests_per_minute=100)
    start = now()
    original = FakeAPIError(429, headers)
    (warning,) = await raise_through_decorator(
        limiter, original, match="ignored the rate-limit headers of FakeAPIError"
    )
    assert warning.filename == __file__  # the warning points at the call
    # Still a 429: the limiter pauses as for one without Retry-After.
    snapshot = limiter.statistics()
    assert snapshot.paused_until == pytest.approx(start + 1, abs=TOL)
    assert snapshot.in_flight == 0


async def test_a_429_with_a_malformed_header_value_warns_and_propagates_unchanged() -> None:
    limiter = tb.Limiter(requests_per_minute=100)
    start = now()
    headers = {"retry-after": "soon", "x-ratelimit-remaining-requests": "3"}
    await raise_through_decorator(limiter, FakeAPIError(429, headers), match="retry-after: 'soon'")
    snapshot = limiter.statistics()
    assert snapshot.paused_until == pytest.approx(start + 1, abs=TOL)
    assert snapshot.available["requests"] == 3  # the readable header still counts


async def test_a_header_warning_made_an_error_does_not_replace_the_exception() -> None:
    limiter = tb.Limiter(requests_per_minute=100)
    start = now()
    original = FakeAPIError(429, {"retry-after": "soon"})

    @tb.rate_limited(limiter)
    async def create() -> None:
        raise original

    with warnings.catch_warnings():
        warnings.simplefilter("error", tb.RateLimitHeaderWarning)
        with pytest.raises(FakeAPIError) as info:
            await create()
    assert info.value is original
    assert original.__context__ is None
    assert limiter.statistics().paused_until == pytest.approx(start + 1, abs=TOL)


async def test_a_response_that_raises_when_read_warns_and_propagates_unchanged() -> None:
    limiter = tb.Limiter(requests_per_minute=100)
    await raise_through_decorator(
        limiter,
        UnreadableAPIError("HTTP 429"),
        match="response of UnreadableAPIError: RuntimeError: the response was already closed",
    )
    snapshot = limiter.statistics()
    assert snapshot.paused_until is None  # nothing could be read, so nothing is assumed
    assert snapshot.in_flight == 0


async def test_a_limiter_that_fails_to_take_the_report_warns_and_propagates_unchanged(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken_feedback(*args: object, **kwargs: object) -> None:
        raise tb.LeaseError("the backend is gone")

    monkeypatch.setattr(tb.Limiter, "feedback", broken_feedback)
    limiter = tb.Limiter(requests_per_minute=100)
    original = FakeAPIError(429, {"retry-after": "7"})
    await raise_through_decorator(limiter, original, match="LeaseError: the backend is gone")


# --- retries= ---------------------------------------------------------------------------


async def test_retries_reacquire_after_each_429_s_pause() -> None:
    limiter = tb.Limiter(requests_per_minute=100, tokens_per_minute=10_000)
    start = now()
    calls: list[float] = []

    @tb.rate_limited(limiter, cost=tb.chat_cost(), retries=3)
    async def create(**kwargs: Any) -> OpenAIResult:
        calls.append(now() - start)
        if len(calls) <= 2:
            raise FakeAPIError(429, {"retry-after": "5"})
        return OpenAIResult(OpenAIUsage(1, 1, 2))

    result = await create(messages=MESSAGES, max_tokens=10)
    assert result.usage == OpenAIUsage(1, 1, 2)
    assert calls == [0.0, pytest.approx(5, abs=TOL), pytest.approx(10, abs=TOL)]
    snapshot = limiter.statistics()
    assert snapshot.in_flight == 0
    assert snapshot.available["requests"] == 97.0  # one request taken per attempt


async def test_retries_give_up_with_the_last_429() -> None:
    limiter = tb.Limiter(requests_per_minute=100)
    start = now()
    errors: list[FakeAPIError] = []

    @tb.rate_limited(limiter, retries=2)
    async def create() -> None:
        errors.append(FakeAPIError(429, {"retry-after": "1"}))
        raise errors[-1]

    with pytest.raises(FakeAPIError) as info:
        await create()
    assert len(errors) == 3
    assert info.value is errors[-1]
    assert now() - start == pytest.approx(2, abs=TOL)
    assert limiter.statistics().in_flight == 0


async def test_retries_leave_other_errors_alone() -> None:
    limiter = tb.Limiter(requests_per_minute=100)
    calls: list[int] = []

    @tb.rate_limited(limiter, retries=5)
    async def create() -> None:
        calls.append(1)
        raise FakeAPIError(500)

    with pytest.raises(FakeAPIError):
        await create()
    assert calls == [1]


async def test_no_retries_by_default() -> None:
    limiter = tb.Limiter(requests_per_minute=100)
    calls: list[int] = []

    @tb.rate_limited(limiter)
    async def create() -> None:
        calls.append(1)
        raise FakeAPIError(429, {"retry-after": "1"})

    with pytest.raises(FakeAPIError):
        await create()
    assert calls == [1]


@pytest.mark.parametrize(
    ("retries", "error"),
    [(-1, tb.InvalidArgumentError), (1.5, tb.ArgumentTypeError), (True, tb.ArgumentTypeError)],
)
def test_retries_is_checked(retries: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        tb.rate_limited(tb.Limiter(requests_per_minute=1), retries=retries)
