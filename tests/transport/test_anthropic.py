"""AsyncLimitedTransport under the real ``anthropic`` SDK.

First with a small in-test provider speaking Anthropic's wire format behind
``httpx2.MockTransport``: settle from ``usage``, split input and output tokens, streams,
429s and the SDK's own retries. Then against the local fake provider's Messages API
(examples/fake_provider) over real sockets: the same, plus slots held by streams,
cancellation, ``anthropic-ratelimit-*`` headers and the bad cases (no usage, malformed
headers, a stream the server drops)."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

import anthropic
import httpx2
import pytest
from fake_provider import LLMServer, estimate_prompt_tokens

import tokenbucket as tb

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator, Mapping

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(10)]

MODEL = "claude-test"
MESSAGES: list[Any] = [{"role": "user", "content": "Say hello to the transport."}]
USAGE = {"input_tokens": 12, "output_tokens": 5}


def message(usage: Mapping[str, int] = USAGE) -> httpx2.Response:
    return httpx2.Response(
        200,
        json={
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": MODEL,
            "content": [{"type": "text", "text": "Hello!"}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": dict(usage),
        },
    )


def event(kind: str, data: Mapping[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n".encode()


async def message_stream() -> AsyncIterator[bytes]:
    """Anthropic's stream: input tokens in message_start, output in message_delta."""
    start: dict[str, Any] = {"id": "msg_1", "type": "message", "role": "assistant"}
    start |= {"model": MODEL, "content": [], "stop_reason": None, "stop_sequence": None}
    start["usage"] = {"input_tokens": 12, "output_tokens": 1}
    yield event("message_start", {"message": start})
    yield event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
    for word in ("Hello", " there", "!"):
        yield event(
            "content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": word}}
        )
    yield event("content_block_stop", {"index": 0})
    yield event(
        "message_delta",
        {
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": 9},
        },
    )
    yield event("message_stop", {})


def rate_limited(retry_after: str) -> httpx2.Response:
    return httpx2.Response(
        429,
        headers={"retry-after": retry_after},
        json={"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}},
    )


def provider(request: httpx2.Request) -> httpx2.Response:
    assert request.url.path == "/v1/messages"
    if json.loads(request.content).get("stream"):
        return httpx2.Response(
            200, headers={"content-type": "text/event-stream"}, content=message_stream()
        )
    return message()


def client_for(
    limits: tb.Limiter | tb.BucketGroup,
    handler: Callable[[httpx2.Request], httpx2.Response] = provider,
    **options: Any,
) -> anthropic.AsyncAnthropic:
    transport = tb.AsyncLimitedTransport(limits, transport=httpx2.MockTransport(handler), **options)
    return anthropic.AsyncAnthropic(
        api_key="local",
        base_url="http://anthropic.test",
        http_client=httpx2.AsyncClient(transport=transport),
    )


async def create(client: anthropic.AsyncAnthropic, **extra: Any) -> Any:
    return await client.messages.create(model=MODEL, max_tokens=100, messages=MESSAGES, **extra)


async def test_a_message_settles_from_its_usage() -> None:
    limiter = tb.Limiter(requests_per_minute=100, tokens_per_minute=10_000)
    async with client_for(limiter) as client:
        reply = await create(client)
    assert reply.usage.input_tokens == 12
    assert limiter.statistics().available == {"requests": 99.0, "tokens": 10_000.0 - 17}
    assert limiter.statistics().in_flight == 0


async def test_tokens_written_to_the_prompt_cache_count_as_input() -> None:
    # Anthropic's input_tokens leave out the cache writes, which its ITPM counts; cache
    # reads it does not count.
    usage = {
        "input_tokens": 12,
        "output_tokens": 5,
        "cache_creation_input_tokens": 400,
        "cache_read_input_tokens": 900,
    }
    limiter = tb.Limiter(input_tokens_per_minute=10_000, tokens_per_minute=10_000)
    async with client_for(limiter, lambda request: message(usage)) as client:
        await create(client)
    assert limiter.statistics().available == {
        "input_tokens": 10_000.0 - 412,
        "tokens": 10_000.0 - 417,
    }


async def test_input_and_output_tokens_are_settled_apart() -> None:
    limiter = tb.Limiter(input_tokens_per_minute=1_000, output_tokens_per_minute=1_000)
    async with client_for(limiter) as client:
        await create(client)
    assert limiter.statistics().available == {"input_tokens": 988.0, "output_tokens": 995.0}


async def test_a_stream_settles_from_message_start_and_message_delta() -> None:
    limiter = tb.Limiter(
        input_tokens_per_minute=1_000, output_tokens_per_minute=1_000, max_concurrency=1
    )
    client = client_for(limiter)
    async with (
        client,
        client.messages.stream(model=MODEL, max_tokens=100, messages=MESSAGES) as stream,
    ):
        text, held = [], []
        async for piece in stream.text_stream:
            text.append(piece)
            held.append(limiter.statistics().in_flight)
        final = await stream.get_final_message()
    assert "".join(text) == "Hello there!"
    assert held == [1, 1, 1]  # the slot is held while the stream is read
    assert final.usage.output_tokens == 9
    assert limiter.statistics().in_flight == 0
    assert limiter.statistics().available == {"input_tokens": 988.0, "output_tokens": 991.0}


async def test_a_429_with_retry_after_pauses_the_limiter() -> None:
    limiter = tb.Limiter(requests_per_minute=1000, tokens_per_minute=10_000)
    async with client_for(limiter, lambda _: rate_limited("30")) as client:
        with pytest.raises(anthropic.RateLimitError):
            await create(client.with_options(max_retries=0))
    stats = limiter.statistics()
    assert stats.paused_until is not None
    assert stats.paused_until > asyncio.get_running_loop().time() + 20
    assert stats.available["tokens"] == 10_000.0  # refused: its tokens came back
    assert stats.in_flight == 0


async def test_each_sdk_retry_acquires_again() -> None:
    acquisitions: list[Mapping[str, Any]] = []

    def cost(body: Mapping[str, Any]) -> Mapping[str, float]:
        acquisitions.append(body)
        return {"requests": 1}

    answers = iter([rate_limited("0.05"), rate_limited("0.05"), message()])
    limiter = tb.Limiter(requests_per_minute=100)
    async with client_for(limiter, lambda _: next(answers), cost=cost) as client:
        reply = await create(client)  # the SDK's default retries
    assert reply.content[0].text == "Hello!"
    assert len(acquisitions) == 3
    assert limiter.statistics().available == {"requests": 97.0}
    assert limiter.statistics().in_flight == 0


# -- against the fake provider, over sockets ---------------------------------------------

PROMPT = estimate_prompt_tokens(MESSAGES)  # the server's count of MESSAGES' input tokens


@pytest.fixture
def server() -> Iterator[LLMServer]:
    with LLMServer(rpm=1000, tpm=1_000_000, latency=0) as running:
        yield running


def socket_client(
    server: LLMServer, limits: tb.Limiter | tb.BucketGroup, **options: Any
) -> anthropic.AsyncAnthropic:
    """The SDK on the server's Messages API (its root: the SDK adds ``/v1/messages``)."""
    return anthropic.AsyncAnthropic(
        api_key="local",
        base_url=server.url,
        http_client=httpx2.AsyncClient(transport=tb.AsyncLimitedTransport(limits, **options)),
    )


def estimate(max_tokens: int = 100) -> float:
    return tb.estimate_tokens(MESSAGES) + max_tokens


async def until(condition: Callable[[], bool]) -> None:
    """Wait for ``condition`` to hold (bounded by the test's timeout, not a clock)."""
    while not condition():
        await asyncio.sleep(0.01)


async def drain(stream: Any) -> list[Any]:
    async with stream:
        return [event async for event in stream]


async def test_a_served_message_settles_from_its_usage(server: LLMServer) -> None:
    limiter = tb.Limiter(requests_per_minute=100, tokens_per_minute=10_000)
    async with socket_client(server, limiter) as client:
        reply = await create(client)
    used = reply.usage.input_tokens + reply.usage.output_tokens
    assert reply.usage.input_tokens == PROMPT
    assert used != estimate()
    assert limiter.statistics().available == {"requests": 99.0, "tokens": 10_000.0 - used}
    assert limiter.statistics().in_flight == 0


async def test_served_input_and_output_tokens_are_settled_apart(server: LLMServer) -> None:
    limiter = tb.Limiter(input_tokens_per_minute=1_000, output_tokens_per_minute=1_000)
    async with socket_client(server, limiter) as client:
        reply = await create(client)
    assert limiter.statistics().available == {
        "input_tokens": 1_000.0 - reply.usage.input_tokens,
        "output_tokens": 1_000.0 - reply.usage.output_tokens,
    }


async def test_a_served_stream_settles_from_its_events_and_holds_its_slot(
    server: LLMServer,
) -> None:
    limiter = tb.Limiter(tokens_per_minute=10_000, max_concurrency=1)
    client = socket_client(server, limiter)
    async with (
        client,
        client.messages.stream(model=MODEL, max_tokens=100, messages=MESSAGES) as stream,
    ):
        held = [limiter.statistics().in_flight async for _ in stream.text_stream]
        final = await stream.get_final_message()
    assert len(held) > 2
    assert set(held) == {1}
    assert final.usage.input_tokens == PROMPT
    used = final.usage.input_tokens + final.usage.output_tokens
    assert limiter.statistics().available == {"tokens": 10_000.0 - used}
    assert limiter.statistics().in_flight == 0


async def test_a_served_stream_holds_its_slot_until_it_is_closed(server: LLMServer) -> None:
    limiter = tb.Limiter(max_concurrency=1)
    async with socket_client(server, limiter) as client:
        stream = await create(client, stream=True)
        first = await stream.__aiter__().__anext__()
        assert first.type == "message_start"
        second = asyncio.create_task(create(client))
        await until(lambda: limiter.statistics().waiters == 1)
        assert not second.done()
        await stream.close()
        reply = await asyncio.wait_for(second, 5)
    assert reply.content[0].text
    assert limiter.statistics().in_flight == 0


async def test_cancelling_a_served_call_mid_stream_releases_its_slot_and_settles() -> None:
    limiter = tb.Limiter(max_concurrency=1, tokens_per_minute=10_000)
    first_event = asyncio.Event()

    async def consume(client: anthropic.AsyncAnthropic) -> None:
        stream = await create(client, stream=True)
        async for _ in stream:  # no `async with`: the transport must end the lease itself
            first_event.set()

    with LLMServer(rpm=1000, tpm=1_000_000, latency=0, event_delay=5.0) as server:
        async with socket_client(server, limiter) as client:
            task = asyncio.create_task(consume(client))
            await asyncio.wait_for(first_event.wait(), 5)
            assert limiter.statistics().in_flight == 1
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert limiter.statistics().in_flight == 0
            # message_start's ``output_tokens: 1`` is a placeholder until message_delta,
            # which never came: the call keeps its estimate, as a cut OpenAI stream does.
            assert limiter.statistics().available == {"tokens": 10_000.0 - estimate()}


async def test_a_server_that_drops_a_stream_gives_the_sdk_error_and_leaks_nothing() -> None:
    limiter = tb.Limiter(max_concurrency=1, tokens_per_minute=10_000)
    # dropped after message_start, content_block_start, ping and one text delta
    with LLMServer(rpm=1000, tpm=1_000_000, latency=0, drop_after=4) as server:
        async with socket_client(server, limiter) as client:
            stream = await create(client, stream=True)
            with pytest.raises(anthropic.APIConnectionError):
                await drain(stream)
            assert limiter.statistics().in_flight == 0
            # cut before message_delta: the estimate is kept (see the test above)
            assert limiter.statistics().available == {"tokens": 10_000.0 - estimate()}
            # the slot is free: the next call goes through (and is dropped the same way)
            again = await create(client, stream=True)
            with pytest.raises(anthropic.APIConnectionError):
                await drain(again)
    assert limiter.statistics().in_flight == 0
    assert server.stats().requests_ok == 2


class ServerClock:
    """A monotonic clock for the server that moves only when the test says."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_sdk_retries_after_a_served_429_acquire_again() -> None:
    acquisitions: list[Mapping[str, Any]] = []

    def cost(body: Mapping[str, Any]) -> Mapping[str, float]:
        acquisitions.append(body)
        return {}

    async def refill_after_a_refusal() -> None:
        # The SDK retries a second (the retry-after) after the 429; this runs first.
        await until(lambda: server.stats().requests_429 > 0)
        clock.now += 1.0

    clock = ServerClock()  # frozen: of three calls at once, exactly one is refused
    limiter = tb.Limiter(requests_per_minute=1000)  # far above the server's limit
    with LLMServer(rpm=2, tpm=1_000_000, period=0.4, latency=0, clock=clock) as server:
        async with socket_client(server, limiter, cost=cost) as client:
            refill = asyncio.create_task(refill_after_a_refusal())
            replies = await asyncio.gather(*(create(client) for _ in range(3)))
            await refill
        stats = server.stats()
    assert all(reply.content[0].text for reply in replies)
    assert (stats.requests_ok, stats.requests_429) == (3, 1)
    assert len(acquisitions) == 4  # the retry acquired again
    assert limiter.statistics().in_flight == 0


async def test_a_served_429_pauses_the_limiter() -> None:
    limiter = tb.Limiter(requests_per_minute=1000, tokens_per_minute=10_000)
    with LLMServer(rpm=1, tpm=1_000_000, period=30, latency=0) as server:
        async with socket_client(server, limiter) as client:
            client = client.with_options(max_retries=0)
            replies = await asyncio.gather(create(client), create(client), return_exceptions=True)
    refused = [r for r in replies if isinstance(r, anthropic.RateLimitError)]
    assert len(refused) == 1
    assert refused[0].type == "rate_limit_error"
    assert int(refused[0].response.headers["retry-after"]) > 10
    stats = limiter.statistics()
    assert stats.paused_until is not None
    assert stats.paused_until > asyncio.get_running_loop().time() + 10
    assert stats.in_flight == 0


async def test_anthropic_rate_limit_headers_reach_the_limiter() -> None:
    limiter = tb.Limiter(requests_per_minute=1000, tokens_per_minute=100_000)
    with LLMServer(rpm=5, tpm=1_000, latency=0) as server:
        async with socket_client(server, limiter) as client:
            raw = await client.messages.with_raw_response.create(
                model=MODEL, max_tokens=100, messages=MESSAGES
            )
    requests = float(raw.headers["anthropic-ratelimit-requests-remaining"])
    tokens = float(raw.headers["anthropic-ratelimit-tokens-remaining"])
    assert (requests, tokens) == (4, 1_000 - PROMPT - 100)
    usage = (await raw.parse()).usage
    assert usage.input_tokens + usage.output_tokens < estimate()
    # Lowered to what the server said was left (which then comes back at the rate its
    # headers imply: a few tokens in the time the test takes). The settlement gives
    # nothing back: the server's count covers the call already.
    available = limiter.statistics().available
    assert requests <= available["requests"] < requests + 1
    assert tokens <= available["tokens"] < tokens + 10


@pytest.mark.parametrize("stream", [False, True], ids=["message", "stream"])
async def test_a_served_answer_without_usage_keeps_the_estimate(stream: bool) -> None:
    limiter = tb.Limiter(tokens_per_minute=10_000)
    with LLMServer(rpm=1000, tpm=1_000_000, latency=0, usage=False) as server:
        async with socket_client(server, limiter) as client:
            if stream:
                events = await drain(await create(client, stream=True))
                assert events[-1].type == "message_stop"
            else:
                reply = await create(client)
                assert reply.content[0].text
    assert limiter.statistics().available == {"tokens": 10_000.0 - estimate()}
    assert limiter.statistics().in_flight == 0


async def test_malformed_anthropic_headers_warn_and_lose_nothing_else() -> None:
    limiter = tb.Limiter(requests_per_minute=1000, tokens_per_minute=10_000)
    malformed = {"anthropic-ratelimit-tokens-remaining": "lots"}
    with LLMServer(rpm=5, tpm=1_000_000, latency=0, headers=malformed) as server:
        async with socket_client(server, limiter) as client:
            with pytest.warns(tb.RateLimitHeaderWarning, match="anthropic-ratelimit-tokens"):
                reply = await create(client)
    assert reply.content[0].text
    used = reply.usage.input_tokens + reply.usage.output_tokens
    # the requests headers still lowered the limiter; the usage still settled the tokens
    assert limiter.statistics().available == {"requests": 4.0, "tokens": 10_000.0 - used}
    assert limiter.statistics().in_flight == 0


async def test_anthropic_input_and_output_token_headers_reach_the_limiter() -> None:
    limiter = tb.Limiter(input_tokens_per_minute=10_000, output_tokens_per_minute=10_000)
    with LLMServer(rpm=1000, tpm=1_000_000, itpm=1_000, otpm=2_000, latency=0) as server:
        async with socket_client(server, limiter) as client:
            raw = await client.messages.with_raw_response.create(
                model=MODEL, max_tokens=100, messages=MESSAGES
            )
    left_in = float(raw.headers["anthropic-ratelimit-input-tokens-remaining"])
    left_out = float(raw.headers["anthropic-ratelimit-output-tokens-remaining"])
    assert (left_in, left_out) == (1_000 - PROMPT, 2_000 - 100)
    usage = (await raw.parse()).usage
    assert usage.output_tokens < 100
    # Each lowered to what the server said was left, and nothing given back of the
    # estimate: the server's count covers the call already.
    available = limiter.statistics().available
    assert left_in <= available["input_tokens"] < left_in + 10
    assert left_out <= available["output_tokens"] < left_out + 10
