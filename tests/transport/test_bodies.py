"""How the transport reads a response's body: a small JSON body at once, before the
response is returned (its lease ends there); any other as the caller reads it, through a
wrapper that ends the lease at its end or close, and closes what it wraps at once."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

import httpx2
import pytest

import tokenbucket as tb
from tokenbucket import _transport

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

pytestmark = pytest.mark.timeout(20)

URL = "http://test/v1/chat/completions"
REQUEST = {"model": "m", "messages": [], "max_tokens": 100}
BODY = json.dumps({"usage": {"prompt_tokens": 3, "completion_tokens": 5}}).encode()
EVENTS = [b'data: {"choices":[{"delta":{"content":"Hi"}}],"usage":null}\n\n'] * 3 + [
    b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":5}}\n\n',
    b"data: [DONE]\n\n",
]


class Body(httpx2.AsyncByteStream, httpx2.SyncByteStream):
    """A body sent in pieces, as a connection sends it; ``fail``: raise after the
    first; ``stall``: wait forever after it. Notes when its iterator is closed."""

    def __init__(self, pieces: list[bytes], *, fail: bool = False, stall: bool = False) -> None:
        self.pieces = pieces
        self.fail = fail
        self.stall = stall
        self.finished = False  # its iterator was closed, or ran to its end

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            for index, piece in enumerate(self.pieces):
                if index and self.fail:
                    raise httpx2.ReadError("the connection broke")
                if index and self.stall:
                    await asyncio.Event().wait()
                yield piece
        finally:
            self.finished = True

    def __iter__(self) -> Iterator[bytes]:
        for index, piece in enumerate(self.pieces):
            if index and self.fail:
                raise httpx2.ReadError("the connection broke")
            yield piece


class Serve(httpx2.AsyncBaseTransport, httpx2.BaseTransport):
    """Answers every request with ``body`` (new each time from ``make``)."""

    def __init__(self, make: Any, headers: dict[str, str]) -> None:
        self.make = make
        self.headers = headers
        self.bodies: list[Body] = []

    def _answer(self) -> httpx2.Response:
        body = self.make()
        self.bodies.append(body)
        return httpx2.Response(200, headers=self.headers, stream=body)

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        return self._answer()

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        return self._answer()


def json_headers(length: int | None) -> dict[str, str]:
    headers = {"content-type": "application/json"}
    if length is not None:
        headers["content-length"] = str(length)
    return headers


def limiter() -> tb.Limiter:
    return tb.Limiter(max_concurrency=2, tokens_per_minute=10_000)


async def send(limits: tb.Limiter, inner: Serve) -> httpx2.Response:
    client = httpx2.AsyncClient(transport=tb.AsyncLimitedTransport(limits, inner))
    return await client.send(client.build_request("POST", URL, json=REQUEST), stream=True)


@pytest.mark.asyncio
async def test_a_small_json_body_is_settled_before_the_response_is_returned() -> None:
    limits = limiter()
    inner = Serve(lambda: Body([BODY[:10], BODY[10:]]), json_headers(len(BODY)))
    response = await send(limits, inner)
    # Its lease ended with the send: settled from the usage, its slot free.
    stats = limits.statistics()
    assert (stats.in_flight, stats.available) == (0, {"tokens": 10_000.0 - 8})
    assert inner.bodies[0].finished
    assert await response.aread() == BODY  # the caller still gets the whole body
    assert response.json()["usage"]["prompt_tokens"] == 3


def test_a_small_json_body_is_settled_before_the_response_is_returned_sync() -> None:
    limits = limiter()
    inner = Serve(lambda: Body([BODY[:10], BODY[10:]]), json_headers(len(BODY)))
    client = httpx2.Client(transport=tb.LimitedTransport(limits, inner))
    response = client.send(client.build_request("POST", URL, json=REQUEST), stream=True)
    stats = limits.statistics()
    assert (stats.in_flight, stats.available) == (0, {"tokens": 10_000.0 - 8})
    assert response.read() == BODY


@pytest.mark.asyncio
@pytest.mark.parametrize("length", [None, 4 * 1024 * 1024 + 1])
async def test_a_json_body_of_no_length_or_a_large_one_is_read_by_the_caller(
    length: int | None,
) -> None:
    limits = limiter()
    inner = Serve(lambda: Body([BODY]), json_headers(length))
    response = await send(limits, inner)
    assert limits.statistics().in_flight == 1  # held until the caller reads the body
    assert not inner.bodies[0].finished
    if length is None:
        assert await response.aread() == BODY
        stats = limits.statistics()
        assert (stats.in_flight, stats.available) == (0, {"tokens": 10_000.0 - 8})
    else:
        await response.aclose()  # (it promised more than it has)
        assert limits.statistics().in_flight == 0


@pytest.mark.asyncio
async def test_a_json_body_that_breaks_while_read_ends_the_lease() -> None:
    limits = limiter()
    inner = Serve(lambda: Body([BODY[:10], BODY[10:]], fail=True), json_headers(len(BODY)))
    with pytest.raises(httpx2.ReadError):
        await send(limits, inner)
    stats = limits.statistics()
    # Nothing settled: the estimate stays taken, and the slot is free.
    assert (stats.in_flight, stats.available) == (0, {"tokens": 10_000.0 - 100})


@pytest.mark.asyncio
async def test_a_call_cancelled_while_its_json_body_is_read_ends_its_lease() -> None:
    limits = limiter()
    inner = Serve(lambda: Body([BODY[:10], BODY[10:]], stall=True), json_headers(len(BODY)))
    call = asyncio.create_task(send(limits, inner))
    for _ in range(100):
        if inner.bodies:
            break
        await asyncio.sleep(0)
    await asyncio.sleep(0.01)
    assert limits.statistics().in_flight == 1
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert limits.statistics().in_flight == 0
    assert inner.bodies[0].finished


@pytest.mark.asyncio
async def test_a_stream_closed_early_closes_what_it_wraps_at_once() -> None:
    """The caller stops after the first event and closes the iterator it read with: the
    lease ends, and the inner body's iterator is closed then, not when collected."""
    limits = limiter()
    inner = Serve(lambda: Body(EVENTS), {"content-type": "text/event-stream"})
    response = await send(limits, inner)
    assert limits.statistics().in_flight == 1
    chunks = response.aiter_raw()
    assert await chunks.__anext__() == EVENTS[0]
    await chunks.aclose()
    assert inner.bodies[0].finished
    stats = limits.statistics()
    assert (stats.in_flight, stats.available) == (0, {"tokens": 10_000.0 - 100})


@pytest.mark.asyncio
async def test_a_stream_read_to_its_end_settles_from_its_last_event() -> None:
    limits = limiter()
    inner = Serve(lambda: Body(EVENTS), {"content-type": "text/event-stream"})
    response = await send(limits, inner)
    assert b"".join([chunk async for chunk in response.aiter_raw()]) == b"".join(EVENTS)
    stats = limits.statistics()
    assert (stats.in_flight, stats.available) == (0, {"tokens": 10_000.0 - 8})


def test_the_body_is_read_at_once_only_when_small_and_json() -> None:
    def now(status: int, headers: dict[str, str]) -> bool:
        return _transport._heard(httpx2.Response(status, headers=headers))[-1]

    assert now(200, {"content-type": "application/json", "content-length": "10"})
    assert now(400, {"content-type": "application/problem+json", "content-length": " 7 "})
    assert not now(200, {"content-type": "application/json"})  # no length given
    assert not now(200, {"content-type": "application/json", "content-length": "x"})
    assert not now(200, {"content-type": "text/event-stream", "content-length": "10"})
    assert not now(200, {"content-length": "10"})
    # A 429 of no length given: read for its delay, unless it has a Retry-After.
    assert now(429, {"content-type": "application/json"})
    assert not now(429, {"content-type": "application/json", "retry-after": "1"})
    assert not now(429, {"content-type": "application/json", "Retry-After-Ms": "10"})
    large = {"content-type": "application/json", "content-length": str(4 * 1024 * 1024 + 1)}
    assert not now(429, large)
