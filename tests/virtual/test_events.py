"""Listeners and the log under virtual time: what each moment of a limiter tells, in
order, with exact waits; a listener that raises breaks nothing."""

from __future__ import annotations

import logging

import anyio
import pytest

import tokenbucket as tb
from tests.virtual._support import TOL, now

pytestmark = pytest.mark.anyio


def recorder(limiter: tb.Limiter | tb.BucketGroup) -> list[tb.LimiterEvent]:
    events: list[tb.LimiterEvent] = []
    limiter.subscribe(events.append)
    return events


async def test_a_grant_at_once_and_one_after_a_wait() -> None:
    limiter = tb.Limiter(requests_per_second=tb.per_second(1, burst=1), name="api")
    events = recorder(limiter)
    async with limiter.acquire():
        pass
    start = now()
    async with limiter.acquire() as lease:
        assert now() - start == pytest.approx(1, abs=TOL)
    assert [e.kind for e in events] == ["grant", "wait", "grant"]
    first, wait, second = events
    assert first == tb.LimiterEvent("grant", "api", {"requests": 1.0})
    assert wait == tb.LimiterEvent("wait", "api", {"requests": 1.0})
    assert second.waited == pytest.approx(1, abs=TOL) == lease.waited
    assert second.binding == "requests 1/second burst 1" == lease.binding


async def test_timeouts_cancellations_and_settlements() -> None:
    limiter = tb.Limiter(tokens_per_second=tb.per_second(10, burst=10), name="t")
    events = recorder(limiter)
    async with limiter.acquire(tokens=10) as lease:
        lease.settle(tokens=4)
    async with limiter.acquire(tokens=10) as lease:  # 6 back, 4 to wait for: 0.4 s
        pass
    with pytest.raises(tb.AcquireTimeoutError):
        async with limiter.acquire(tokens=10, timeout=0.5):
            pass
    with anyio.move_on_after(0.5):
        async with limiter.acquire(tokens=10):
            pass
    kinds = [e.kind for e in events]
    assert kinds == ["grant", "settle", "wait", "grant", "wait", "timeout", "wait", "cancel"]
    settle = events[1]
    assert (settle.amounts, settle.reserved) == ({"tokens": 4.0}, {"tokens": 10.0})
    assert events[3].waited == pytest.approx(0.4, abs=TOL)
    counters = limiter.statistics().counters
    assert (counters.timeouts, counters.cancellations) == (1, 1)


async def test_reports_tell_rejections_pauses_and_corrections(
    caplog: pytest.LogCaptureFixture,
) -> None:
    limiter = tb.Limiter(requests_per_minute=100, name="gpt")
    events = recorder(limiter)
    caplog.set_level(logging.INFO, logger="tokenbucket")
    limiter.feedback({"retry-after": "2"}, status=429)
    limiter.feedback(
        {"x-ratelimit-remaining-requests": "5", "x-ratelimit-reset-requests": "30s"},
        status=200,
    )
    limiter.pause(0.5)
    assert [(e.kind, e.status, e.seconds, e.corrections) for e in events] == [
        ("rejected", 429, None, 0),
        ("pause", None, 2.0, 0),
        ("correction", None, None, 1),
        ("pause", None, 0.5, 0),
    ]
    records = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert records == [
        (logging.WARNING, "limiter 'gpt': the server answered 429; pausing for 2.000 s"),
        (logging.INFO, "limiter 'gpt': a server's rate-limit headers lowered 1 of its rates"),
        (logging.INFO, "limiter 'gpt': paused for 0.500 s"),
    ]


async def test_nothing_at_info_on_the_path_of_grants_and_waits(
    caplog: pytest.LogCaptureFixture,
) -> None:
    limiter = tb.Limiter(requests_per_second=tb.per_second(10, burst=1), name="quiet")
    caplog.set_level(logging.INFO, logger="tokenbucket")
    for _ in range(5):
        async with limiter.acquire() as lease:
            lease.settle(requests=1)
    assert caplog.records == []
    caplog.set_level(logging.DEBUG, logger="tokenbucket")
    async with limiter.acquire():
        pass
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "limiter 'quiet': a request of {'requests': 1.0} waits",
        "limiter 'quiet': granted {'requests': 1.0} after 0.100 s "
        "(bound by requests 10/second burst 1)",
    ]


async def test_a_listener_that_raises_is_logged_and_changes_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    limiter = tb.Limiter(requests_per_second=tb.per_second(2, burst=2))

    def broken(event: tb.LimiterEvent) -> None:
        raise ValueError(f"no {event.kind}")

    limiter.subscribe(broken)
    events = recorder(limiter)
    start = now()
    for _ in range(4):
        async with limiter.acquire():
            pass
    assert now() - start == pytest.approx(1, abs=TOL)  # 2 at once, then one per 0.5 s
    assert [e.kind for e in events].count("grant") == 4
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 6  # 4 grants, 2 waits
    assert (
        errors[0].getMessage()
        == "a listener of an unnamed limiter raised on a 'grant' event; ignored"
    )
    assert errors[0].exc_info is not None


async def test_unsubscribe_stops_the_events() -> None:
    limiter = tb.Limiter(requests_per_second=100)
    events: list[tb.LimiterEvent] = []
    unsubscribe = limiter.subscribe(events.append)
    async with limiter.acquire():
        pass
    unsubscribe()
    unsubscribe()  # twice is harmless
    async with limiter.acquire():
        pass
    assert len(events) == 1
    with pytest.raises(tb.ArgumentTypeError):
        limiter.subscribe("print")  # type: ignore[arg-type]


async def test_a_group_tells_every_member_by_name_made_before_or_after() -> None:
    group = tb.BucketGroup(
        {"gpt-4o": tb.Limiter(requests_per_second=10)},
        default={"requests_per_second": 5},
    )
    events = recorder(group)
    async with group.acquire("gpt-4o"):
        pass
    async with group.acquire("o3"):  # made from the default after subscribing
        pass
    assert [(e.kind, e.limiter) for e in events] == [("grant", "gpt-4o"), ("grant", "o3")]
    assert group["gpt-4o"].name == "gpt-4o"
