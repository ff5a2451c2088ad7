"""How the transport reads a response's body: as the caller reads it, through a wrapper
that settles and ends the lease at the body's end or close, closing what it wraps at
once when closed early; the response is otherwise the client's own (timings, raw bytes).
Whatever fails between the send and the response's return ends the lease, and a body
the transport cannot read (not JSON, nested too deep) is no error."""

from __future__ import annotations

import gzip
import json
import time
import tracemalloc
import zlib
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import httpx2
import pytest

import tokenbucket as tb
from tokenbucket import _transport

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(20)]

URL = "http://test/v1/chat/completions"
REQUEST = {"model": "m", "messages": [], "max_tokens": 100}
BODY = json.dumps({"usage": {"prompt_tokens": 3, "completion_tokens": 5}}).encode()
EVENTS = [b'data: {"choices":[{"delta":{"content":"Hi"}}],"usage":null}\n\n'] * 3 + [
    b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":5}}\n\n',
    b"data: [DONE]\n\n",
]
DEEP = b'{"usage": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"  # too deep for json.loads


class Pieces:
    """A body sent in pieces, as a connection sends it; ``fail``: raise after the first,
    ``stall``: wait forever after it. Notes when its iterator is closed."""

    def __init__(self, pieces: list[bytes], *, fail: bool = False, stall: bool = False) -> None:
        self.pieces = pieces
        self.fail = fail
        self.stall = stall
        self.finished = False  # its iterator was closed, or ran to its end
        self.closed = False  # the body itself was closed

    async def aclose(self) -> None:
        self.closed = True

    def close(self) -> None:
        self.closed = True

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            for index, piece in enumerate(self.pieces):
                if index and self.fail:
                    raise httpx2.ReadError("the connection broke")
                if index and self.stall:
                    await anyio.sleep_forever()
                yield piece
        finally:
            self.finished = True

    def __iter__(self) -> Iterator[bytes]:
        for index, piece in enumerate(self.pieces):
            if index and self.fail:
                raise httpx2.ReadError("the connection broke")
            yield piece


class Body(Pieces, httpx2.AsyncByteStream, httpx2.SyncByteStream):
    """(A client checks that a body is of its library's stream class.)"""


class OldBody(Pieces, httpx.AsyncByteStream):
    pass


class Serve(httpx2.AsyncBaseTransport, httpx2.BaseTransport, httpx.AsyncBaseTransport):
    """Answers every request with ``pieces`` (in a new body, of the library of the
    request) and ``headers``."""

    def __init__(
        self, pieces: list[bytes], headers: Any, status: int = 200, **options: bool
    ) -> None:
        self.pieces = pieces
        self.headers = headers
        self.status = status
        self.options = options
        self.bodies: list[Pieces] = []

    def handle_request(self, request: Any) -> Any:
        new = isinstance(request, httpx2.Request)
        body = (Body if new else OldBody)(self.pieces, **self.options)
        self.bodies.append(body)
        library: Any = httpx2 if new else httpx
        return library.Response(self.status, headers=self.headers, stream=body)

    async def handle_async_request(self, request: Any) -> Any:
        return self.handle_request(request)


def limiter() -> tb.Limiter:
    return tb.Limiter(max_concurrency=2, tokens_per_minute=10_000)


async def send(limits: tb.Limiter, inner: Serve) -> httpx2.Response:
    client = httpx2.AsyncClient(transport=tb.AsyncLimitedTransport(limits, inner))
    return await client.send(client.build_request("POST", URL, json=REQUEST), stream=True)


async def test_a_stream_closed_early_closes_what_it_wraps_at_once() -> None:
    """The caller stops after the first event and closes the iterator it read with: the
    lease ends, and the inner body's iterator is closed then, not when collected."""
    limits = limiter()
    inner = Serve(EVENTS, {"content-type": "text/event-stream"})
    response = await send(limits, inner)
    assert limits.statistics().in_flight == 1
    chunks = response.aiter_raw()
    assert await chunks.__anext__() == EVENTS[0]
    await chunks.aclose()
    assert inner.bodies[0].finished
    stats = limits.statistics()
    assert (stats.in_flight, stats.available) == (0, {"tokens": 10_000.0 - 100})


async def test_what_it_wraps_is_closed_even_when_ending_the_lease_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Broken(Exception):
        pass

    async def fail(self: object, error: BaseException | None = None) -> None:
        raise Broken

    limits = limiter()
    inner = Serve(EVENTS, {"content-type": "text/event-stream"})
    response = await send(limits, inner)
    chunks = response.aiter_raw()
    await chunks.__anext__()
    monkeypatch.setattr(_transport._Settlement, "end", fail)
    with pytest.raises(Broken):
        await chunks.aclose()
    assert inner.bodies[0].finished


async def test_a_stream_that_is_its_own_iterator_is_closed_once() -> None:
    class Own(httpx2.AsyncByteStream):
        closed = 0

        def __init__(self) -> None:
            self.left = list(EVENTS)

        def __aiter__(self) -> Own:
            return self

        async def __anext__(self) -> bytes:
            if not self.left:
                raise StopAsyncIteration
            return self.left.pop(0)

        async def aclose(self) -> None:
            self.closed += 1

    own = Own()

    def answer(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, stream=own)

    limits = limiter()
    transport = tb.AsyncLimitedTransport(limits, httpx2.MockTransport(answer))
    client = httpx2.AsyncClient(transport=transport)
    response = await client.send(client.build_request("POST", URL, json=REQUEST), stream=True)
    chunks = response.aiter_raw()
    await chunks.__anext__()
    await chunks.aclose()  # (httpx2 closes the response then)
    assert own.closed == 1
    assert limits.statistics().in_flight == 0


async def test_a_stream_read_to_its_end_settles_from_its_last_event() -> None:
    limits = limiter()
    inner = Serve(EVENTS, {"content-type": "text/event-stream"})
    response = await send(limits, inner)
    assert b"".join([chunk async for chunk in response.aiter_raw()]) == b"".join(EVENTS)
    stats = limits.statistics()
    assert (stats.in_flight, stats.available) == (0, {"tokens": 10_000.0 - 8})


async def test_a_json_body_is_the_callers_to_read_raw() -> None:
    """The transport leaves a JSON body unread: a streaming caller reads its raw bytes,
    and the lease ends (settled) when it has."""
    limits = limiter()
    headers = {"content-type": "application/json", "content-length": str(len(BODY))}
    response = await send(limits, Serve([BODY[:10], BODY[10:]], headers))
    assert not response.is_stream_consumed
    assert limits.statistics().in_flight == 1
    assert b"".join([chunk async for chunk in response.aiter_raw()]) == BODY
    stats = limits.statistics()
    assert (stats.in_flight, stats.available) == (0, {"tokens": 10_000.0 - 8})


@pytest.mark.parametrize("library", [httpx2, httpx])
async def test_a_limited_response_tells_its_elapsed_time(library: Any) -> None:
    limits = limiter()
    headers = {"content-type": "application/json", "content-length": str(len(BODY))}
    transport = tb.AsyncLimitedTransport(limits, Serve([BODY], headers))
    async with library.AsyncClient(transport=transport) as client:
        response = await client.post(URL, json=REQUEST)
    assert response.elapsed.total_seconds() >= 0
    stats = limits.statistics()
    assert (stats.in_flight, stats.available) == (0, {"tokens": 10_000.0 - 8})


@pytest.mark.parametrize("kind", ["application/json", "text/event-stream"])
@pytest.mark.parametrize("status", [200, 429])
async def test_a_body_nested_too_deep_to_read_is_no_error(kind: str, status: int) -> None:
    limits = limiter()
    body = DEEP if kind == "application/json" else b"data: " + DEEP + b"\n\n"
    response = await send(limits, Serve([body], {"content-type": kind}, status))
    assert await response.aread() == body
    assert response.status_code == status
    stats = limits.statistics()
    assert stats.in_flight == 0
    assert stats.counters.rejections == (status == 429)


async def test_a_429_whose_body_breaks_while_read_is_reported_and_ends_its_lease() -> None:
    """A 429 without Retry-After has its JSON body read at once (for Gemini's delay)."""
    limits = limiter()
    inner = Serve([BODY[:10], BODY[10:]], {"content-type": "application/json"}, 429, fail=True)
    with pytest.raises(httpx2.ReadError):
        await send(limits, inner)
    stats = limits.statistics()
    assert (stats.in_flight, stats.counters.rejections, stats.counters.pauses) == (0, 1, 1)
    assert inner.bodies[0].closed  # (its connection goes back, or away)


async def test_a_call_cancelled_while_a_429s_body_is_read_ends_its_lease() -> None:
    limits = limiter()
    inner = Serve([BODY[:10], BODY[10:]], {"content-type": "application/json"}, 429, stall=True)
    with anyio.move_on_after(0.05) as scope:
        await send(limits, inner)
    assert scope.cancelled_caught
    stats = limits.statistics()
    assert (stats.in_flight, stats.counters.rejections) == (0, 1)
    assert inner.bodies[0].finished
    assert inner.bodies[0].closed


ODD_LENGTH = [(b"content-type", b"application/json"), (b"content-length", "\u00b2".encode())]


async def test_a_429_of_an_odd_length_is_read_and_ends_its_lease() -> None:
    """A length in digits that are not ASCII ("²" is a digit to ``str.isdigit``) is no
    length: the body is read, and nothing raises between the send and its return."""
    limits = limiter()
    inner = Serve([BODY], ODD_LENGTH, status=429)
    response = await send(limits, inner)
    assert response.status_code == 429
    assert inner.bodies[0].finished  # read at once
    assert limits.statistics().in_flight == 0


def test_a_429_whose_body_breaks_while_read_is_reported_and_ends_its_lease_sync() -> None:
    limits = limiter()
    inner = Serve([BODY[:10], BODY[10:]], {"content-type": "application/json"}, 429, fail=True)
    client = httpx2.Client(transport=tb.LimitedTransport(limits, inner))
    with pytest.raises(httpx2.ReadError):
        client.send(client.build_request("POST", URL, json=REQUEST), stream=True)
    stats = limits.statistics()
    assert (stats.in_flight, stats.counters.rejections, stats.counters.pauses) == (0, 1, 1)
    assert inner.bodies[0].closed


def test_a_429_of_an_odd_length_is_read_and_ends_its_lease_sync() -> None:
    limits = limiter()
    client = httpx2.Client(transport=tb.LimitedTransport(limits, Serve([BODY], ODD_LENGTH, 429)))
    response = client.send(client.build_request("POST", URL, json=REQUEST), stream=True)
    assert response.status_code == 429
    assert limits.statistics().in_flight == 0


async def test_whatever_fails_before_the_response_returns_ends_the_lease() -> None:
    """(Here a listener's own BaseException, which the limiter lets through.)"""

    class Stop(BaseException):
        pass

    def stop(event: tb.LimiterEvent) -> None:
        if event.kind == "rejected":
            raise Stop

    limits = limiter()
    limits.subscribe(stop)
    with pytest.raises(Stop):
        await send(limits, Serve([BODY], {"content-type": "text/plain"}, 429))
    assert limits.statistics().in_flight == 0


RETRY_INFO = json.dumps(
    {
        "error": {
            "code": 429,
            "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7s"}],
        }
    }
).encode()


@pytest.mark.parametrize("encoding", ["", "gzip", "deflate"])
@pytest.mark.parametrize("library", [httpx2, httpx])
async def test_a_429_read_for_its_delay_is_the_callers_to_read_raw(
    library: Any, encoding: str
) -> None:
    """A 429 without Retry-After has its body read at once (for Gemini's RetryInfo): the
    limiter pauses for its delay and the lease ends, and the caller still gets the
    response unread, its raw bytes as sent, and (with httpx) its elapsed time."""
    sent = {"": RETRY_INFO, "gzip": gzip.compress(RETRY_INFO), "deflate": zlib.compress(RETRY_INFO)}
    body = sent[encoding]
    headers = {"content-type": "application/json", "content-length": str(len(body))}
    if encoding:
        headers["content-encoding"] = encoding
    for stream in (True, False):
        limits = limiter()
        inner = Serve([body[:5], body[5:]], headers, status=429)
        transport = tb.AsyncLimitedTransport(limits, inner)
        async with library.AsyncClient(transport=transport) as client:
            request = client.build_request("POST", URL, json=REQUEST)
            response = await client.send(request, stream=stream)
            stats = limits.statistics()
            assert (stats.in_flight, stats.counters.rejections) == (0, 1)
            assert inner.bodies[0].finished
            assert inner.bodies[0].closed
            paused = stats.paused_until
            assert paused is not None
            assert paused - anyio.current_time() > 6  # (its RetryInfo's 7 s, not 1 s)
            if stream:
                assert not response.is_stream_consumed
                assert b"".join([chunk async for chunk in response.aiter_raw()]) == body
            else:
                assert response.json() == json.loads(RETRY_INFO)
        assert response.elapsed.total_seconds() >= 0


def test_a_429_read_for_its_delay_is_the_callers_to_read_raw_sync() -> None:
    body = gzip.compress(RETRY_INFO)
    headers = {"content-type": "application/json", "content-encoding": "gzip"}
    limits = limiter()
    inner = Serve([body[:5], body[5:]], headers, status=429)
    with httpx2.Client(transport=tb.LimitedTransport(limits, inner)) as client:
        response = client.send(client.build_request("POST", URL, json=REQUEST), stream=True)
        stats = limits.statistics()
        assert (stats.in_flight, stats.counters.rejections, stats.counters.pauses) == (0, 1, 1)
        assert stats.paused_until is not None
        assert stats.paused_until - time.monotonic() > 6  # (its RetryInfo's 7 s, not 1 s)
        assert inner.bodies[0].closed
        assert b"".join(response.iter_raw()) == body
        response.close()
    assert response.elapsed.total_seconds() >= 0


class Once(Body):
    """A body that can be read once, as a connection's."""

    async def __aiter__(self) -> AsyncIterator[bytes]:
        assert not self.finished, "read twice"
        async for piece in super().__aiter__():
            yield piece


class Reads(Serve):
    """Reads each response's body before returning it (as a caching transport does)."""

    async def handle_async_request(self, request: Any) -> Any:
        body = Once(self.pieces)
        self.bodies.append(body)
        response = httpx2.Response(self.status, headers=self.headers, stream=body)
        await response.aread()
        return response


async def test_a_429_its_inner_transport_read_is_read_as_it_is() -> None:
    limits = limiter()
    inner = Reads([RETRY_INFO[:5], RETRY_INFO[5:]], {"content-type": "application/json"}, 429)
    response = await send(limits, inner)
    assert response.status_code == 429
    assert response.json() == json.loads(RETRY_INFO)
    stats = limits.statistics()
    assert (stats.in_flight, stats.counters.rejections) == (0, 1)
    assert stats.paused_until is not None
    assert stats.paused_until - anyio.current_time() > 6


async def test_a_429_of_a_response_class_of_its_own_is_read_for_its_delay() -> None:
    class Mine(httpx2.Response):
        pass

    class Serves(Serve):
        async def handle_async_request(self, request: Any) -> Any:
            body = Body(self.pieces)
            self.bodies.append(body)
            return Mine(self.status, headers=self.headers, stream=body)

    limits = limiter()
    inner = Serves([RETRY_INFO], {"content-type": "application/json"}, 429)
    response = await send(limits, inner)
    assert isinstance(response, Mine)
    assert await response.aread() == RETRY_INFO
    stats = limits.statistics()
    assert stats.paused_until is not None
    assert stats.paused_until - anyio.current_time() > 6


@pytest.mark.parametrize(
    ("body", "encoding", "decoded"),
    [
        (RETRY_INFO, "", RETRY_INFO),
        (RETRY_INFO, " Identity ", RETRY_INFO),
        (gzip.compress(RETRY_INFO), "GZIP", RETRY_INFO),
        (gzip.compress(RETRY_INFO), "x-gzip", RETRY_INFO),
        (zlib.compress(RETRY_INFO), "deflate", RETRY_INFO),
        (zlib.compress(RETRY_INFO)[2:-4], "deflate", RETRY_INFO),  # (no zlib wrapper)
        (RETRY_INFO, "br", None),  # (an encoding not read here)
        (RETRY_INFO, "gzip", None),  # (broken)
        (gzip.compress(b" " * (_transport._MAX_BODY + 1)), "gzip", None),  # (too large)
        (b" " * (_transport._MAX_BODY + 1), "", None),  # (too large as sent)
    ],
    ids=[
        *("plain", "identity", "gzip", "x-gzip", "deflate", "raw-deflate", "br", "broken"),
        *("large", "large-plain"),
    ],
)
def test_a_429s_body_is_decoded_for_its_delay(
    body: bytes, encoding: str, decoded: bytes | None
) -> None:
    assert _transport._decoded(body, encoding) == decoded


def raw_deflate(data: bytes) -> bytes:
    return zlib.compress(data)[2:-4]  # (deflate without its zlib wrapper)


ENCODED: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.compress,
    "deflate": zlib.compress,
    "raw-deflate": raw_deflate,
}


@pytest.mark.parametrize("piece", [1, 2, 5, 1_000])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("encoding", list(ENCODED))
async def test_a_compressed_body_settles_from_its_usage(
    encoding: str, stream: bool, piece: int
) -> None:
    """A body in gzip or deflate (with its zlib wrapper or without, as servers send it)
    settles from its usage, in whatever pieces it arrives (the client's own decoder may
    not: httpx2 reads raw deflate only when its first piece has two bytes or more)."""
    plain = b"".join(EVENTS) if stream else BODY
    body = ENCODED[encoding](plain)
    headers = {
        "content-type": "text/event-stream" if stream else "application/json",
        "content-encoding": "deflate" if encoding == "raw-deflate" else encoding,
    }
    limits = limiter()
    inner = Serve([body[i : i + piece] for i in range(0, len(body), piece)], headers)
    response = await send(limits, inner)
    assert b"".join([chunk async for chunk in response.aiter_raw()]) == body
    await response.aclose()
    stats = limits.statistics()
    assert stats.in_flight == 0
    assert stats.available["tokens"] == 10_000 - 8  # settled: 3 + 5 tokens, not 100


def test_deflate_is_told_apart_by_its_first_two_bytes() -> None:
    whole = zlib.compress(BODY)
    for body in (whole, whole[2:-4]):  # (with its zlib wrapper, and without)
        decoder = _transport._Deflate()
        assert decoder.decompress(body[:1]) == b""  # (one byte cannot tell)
        assert decoder.decompress(body[1:]) + decoder.flush() == BODY
    assert _transport._Deflate().flush() == b""
    # Raw deflate that opens as a zlib header would but for a window over 32 KiB, or a
    # preset dictionary: a stored block (of 0x1c, 0x20 bytes) with unused bits set.
    for first, length in ((0x88, 0x1C), (0x78, 0x20)):
        assert (first << 8 | length) % 31 == 0
        data = bytes(range(length))
        sizes = length.to_bytes(2, "little") + (~length & 0xFFFF).to_bytes(2, "little")
        body = bytes([first]) + sizes + data + b"\x01\x00\x00\xff\xff"  # (and an end)
        decoder = _transport._Deflate()
        assert decoder.decompress(body) + decoder.flush() == data


def test_a_body_in_one_chunk_is_kept_as_it_came() -> None:
    """(Not copied: also when a piece that decodes to nothing, a gzip trailer, follows.)"""
    body = gzip.compress(BODY)
    limits = limiter()
    settlement = _transport._Settlement(limits, limits.acquire(), 200, "application/json", "gzip")
    settlement.feed(body[:-4])
    kept = settlement._buffer
    assert type(kept) is bytes
    assert kept == BODY
    settlement.feed(body[-4:])
    assert settlement._buffer is kept
    plain = _transport._Settlement(limits, limits.acquire(), 200, "application/json", "")
    plain.feed(BODY[:5])
    plain.feed(BODY[5:])  # (a second chunk: from now on, a buffer of its own that grows)
    assert type(plain._buffer) is bytearray
    assert plain._buffer == BODY


@pytest.mark.parametrize("encoding", list(ENCODED))
def test_a_body_too_large_once_decoded_is_never_decoded_whole(encoding: str) -> None:
    """A body that decodes to more than the most kept (a 429's, read whole for its
    delay, or a JSON body) is decoded no further than that."""
    bomb = ENCODED[encoding](b"\0" * (64 << 20))
    limits = limiter()
    settlement = _transport._Settlement(
        limits, limits.acquire(), 200, "application/json", encoding.removeprefix("raw-")
    )
    tracemalloc.start()
    try:
        settlement.feed(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert settlement._buffer is None  # (too large: not read)
    assert peak < 2 * _transport._MAX_BODY + (1 << 20)


async def test_a_429_too_large_once_decoded_is_never_decoded_whole() -> None:
    """(Read for its delay, at most 4 MiB of it decoded: it pauses as a 429 without one
    does, its tokens come back, and the caller gets its bytes as sent.)"""
    body = gzip.compress(b"\0" * (64 << 20))
    headers = {"content-type": "application/json", "content-encoding": "gzip"}
    limits = limiter()
    inner = Serve([body], headers, status=429)
    tracemalloc.start()
    try:
        response = await send(limits, inner)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 * _transport._MAX_BODY + (1 << 20)
    stats = limits.statistics()
    assert (stats.in_flight, stats.counters.rejections) == (0, 1)
    assert stats.available["tokens"] == 10_000
    assert stats.counters.paused_seconds == 1.0  # (as a 429 without a delay)
    assert b"".join([chunk async for chunk in response.aiter_raw()]) == body
    await response.aclose()


async def test_a_429_consumed_unread_by_its_inner_transport_fails_as_it_did() -> None:
    """(A broken inner transport: the client's library's own error, the lease ended.)"""

    class Consumes(Serve):
        async def handle_async_request(self, request: Any) -> Any:
            body = Body(self.pieces)
            self.bodies.append(body)
            response = httpx2.Response(self.status, headers=self.headers, stream=body)
            async for _ in response.aiter_raw():  # (read raw, and not kept)
                pass
            return response

    limits = limiter()
    inner = Consumes([RETRY_INFO], {"content-type": "application/json"}, 429)
    with pytest.raises(httpx2.StreamConsumed):
        await send(limits, inner)
    stats = limits.statistics()
    assert (stats.in_flight, stats.counters.rejections) == (0, 1)
