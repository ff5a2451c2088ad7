"""Errors: fail fast, name the argument, take nothing; the public error tree."""

from __future__ import annotations

import math
from typing import Any

import pytest

import tokenbucket as tb
import tokenbucket._redis
from tests.contract._support import PROBE, Backend, MakeSubject, check, clock

pytestmark = [pytest.mark.timeout(60)]


@pytest.mark.asyncio
async def test_errors_amount_above_the_limit_raises_at_once_and_takes_nothing(
    make_subject: MakeSubject, backend: Backend
) -> None:
    subject = make_subject(bucket=(10, 3), window=(3, 0.5))
    trips = backend.round_trips if backend is not None else 0
    start = clock()
    for amount in (3.5, 4, 1e9):
        with pytest.raises(tb.AmountExceedsLimitError) as caught:
            await subject.acquire(amount)
        assert isinstance(caught.value, ValueError)
        with pytest.raises(tb.AmountExceedsLimitError):
            await subject.acquire(amount, timeout=5)
    assert clock() - start < 0.1
    if backend is not None:
        assert backend.round_trips == trips  # refused before asking Redis
    # Nothing was taken.
    await subject.acquire(3, timeout=PROBE)


@pytest.mark.asyncio
async def test_errors_limiter_amount_above_a_rate_or_unknown_dimension_raises_at_once(
    backend: Backend,
) -> None:
    limiter = tb.Limiter(
        requests_per_second=10,
        tokens_per_minute=1000,
        backend=backend,
        key="imp" if backend is not None else None,
    )
    with pytest.raises(tb.AmountExceedsLimitError) as caught:
        limiter.acquire(tokens=1001)
    assert "tokens" in str(caught.value)
    with pytest.raises(tb.AmountExceedsLimitError):
        limiter.acquire(requests=11, tokens=1)
    with pytest.raises(tb.InvalidArgumentError) as unknown:
        limiter.acquire(apples=1)
    check(unknown.value, tb.InvalidArgumentError, "apples")
    assert "tokens" in str(unknown.value)  # lists what there is
    async with limiter.acquire(tokens=1000, timeout=PROBE):
        pass
    async with limiter.acquire(tokens=0, timeout=math.inf):  # inf: as good as None
        pass


BAD_AMOUNTS: list[tuple[object, type[tb.TokenBucketError]]] = [
    (-1, tb.InvalidArgumentError),
    (math.nan, tb.InvalidArgumentError),
    (math.inf, tb.InvalidArgumentError),
    (True, tb.ArgumentTypeError),
    (None, tb.ArgumentTypeError),
    ("1", tb.ArgumentTypeError),
]
BAD_TIMEOUTS: list[tuple[object, type[tb.TokenBucketError]]] = [
    (-1, tb.InvalidArgumentError),
    (math.nan, tb.InvalidArgumentError),
    (True, tb.ArgumentTypeError),
    ("1", tb.ArgumentTypeError),
]


@pytest.mark.asyncio
async def test_errors_bad_amounts_and_timeouts_name_the_argument_and_take_nothing(
    make_subject: MakeSubject, backend: Backend
) -> None:
    subject = make_subject(bucket=(2, 2), window=(2, 10))  # two units; the next not soon
    argument = "units" if isinstance(subject.limiter, tb.Limiter) else "amount"
    trips = backend.round_trips if backend is not None else 0
    for amount, error in BAD_AMOUNTS:
        with pytest.raises(tb.TokenBucketError) as caught:
            await subject.acquire(amount, timeout=1)  # type: ignore[arg-type]
        check(caught.value, error, argument)
    for timeout, error in BAD_TIMEOUTS:
        for amount in (0, 1):
            with pytest.raises(tb.TokenBucketError) as caught:
                await subject.acquire(amount, timeout=timeout)  # type: ignore[arg-type]
            check(caught.value, error, "timeout")
    if backend is not None:
        assert backend.round_trips == trips  # refused before asking Redis
    # Nothing was taken: the two units are there, and no more.
    await subject.acquire(2, timeout=PROBE)
    with pytest.raises(tb.AcquireTimeoutError):
        await subject.acquire(1, timeout=PROBE)


def test_errors_backend_names_are_public_and_in_the_tree() -> None:
    for name in ("RedisBackend", "BackendError", "BackendUnavailableError"):
        assert name in tb.__all__
    assert tb.RedisBackend is tokenbucket._redis.RedisBackend
    assert issubclass(tb.BackendError, tb.TokenBucketError)
    assert issubclass(tb.BackendUnavailableError, tb.BackendError)
    assert issubclass(tb.BackendUnavailableError, ConnectionError)


BAD_BACKEND_OPTIONS = [
    ("time_source", "wall", tb.InvalidArgumentError),
    ("time_source", 5, tb.ArgumentTypeError),
    ("on_error", "ignore", tb.InvalidArgumentError),
    ("on_error", None, tb.ArgumentTypeError),
    ("prefix", "", tb.InvalidArgumentError),
    ("prefix", 5, tb.ArgumentTypeError),
    ("local_share", 0, tb.InvalidArgumentError),
    ("local_share", 1.5, tb.InvalidArgumentError),
    ("local_share", math.nan, tb.InvalidArgumentError),
    ("local_share", "0.5", tb.ArgumentTypeError),
    ("lease_ttl", 0, tb.InvalidArgumentError),
    ("lease_ttl", -1, tb.InvalidArgumentError),
    ("lease_ttl", math.inf, tb.InvalidArgumentError),
    ("lease_ttl", "1", tb.ArgumentTypeError),
    ("max_backoff", 0, tb.InvalidArgumentError),
    ("max_backoff", -1, tb.InvalidArgumentError),
    ("max_backoff", "1", tb.ArgumentTypeError),
    ("batch_delay", -0.1, tb.InvalidArgumentError),
    ("batch_delay", math.nan, tb.InvalidArgumentError),
    ("batch_delay", math.inf, tb.InvalidArgumentError),
    ("batch_delay", True, tb.ArgumentTypeError),
]


@pytest.mark.parametrize(("option", "value", "error"), BAD_BACKEND_OPTIONS)
def test_errors_redis_backend_options_name_the_argument(
    option: str, value: object, error: type[tb.TokenBucketError]
) -> None:
    options: dict[str, Any] = {option: value}
    with pytest.raises(error) as caught:
        tb.RedisBackend("redis://127.0.0.1:6379/15", **options)
    check(caught.value, error, option)


def test_errors_redis_backend_accepts_the_edges() -> None:
    edges: list[dict[str, Any]] = [
        {"local_share": 1},
        {"batch_delay": 0},
        {"time_source": "client"},
    ]
    for options in edges:
        tb.RedisBackend("redis://127.0.0.1:6379/15", **options)
