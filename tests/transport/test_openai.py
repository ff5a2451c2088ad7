"""AsyncLimitedTransport under the real ``openai`` SDK, against the local fake provider
(examples/fake_provider) over real sockets: settle, slots, streams, retries, feedback."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import httpx
import httpx2
import openai
import pytest
from fake_provider import LLMServer

import tokenbucket as tb

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(10)]

MESSAGES: list[Any] = [{"role": "user", "content": "Say hello to the transport."}]


@pytest.fixture
def server() -> Iterator[LLMServer]:
    with LLMServer(rpm=1000, tpm=1_000_000, latency=0) as running:
        yield running


def client_for(
    server: LLMServer, limits: tb.Limiter | tb.BucketGroup, **options: Any
) -> openai.AsyncOpenAI:
    transport = tb.AsyncLimitedTransport(limits, **options)
    return openai.AsyncOpenAI(
        base_url=server.base_url,
        api_key="local",
        http_client=httpx2.AsyncClient(transport=transport),
    )


def estimate(max_tokens: int) -> float:
    return tb.estimate_tokens(MESSAGES) + max_tokens


async def chat(client: openai.AsyncOpenAI, **extra: Any) -> Any:
    return await client.chat.completions.create(
        model="gpt-test", messages=MESSAGES, max_tokens=100, **extra
    )


async def test_a_completion_settles_from_its_usage(server: LLMServer) -> None:
    limiter = tb.Limiter(requests_per_minute=100, tokens_per_minute=10_000)
    async with client_for(server, limiter) as client:
        reply = await chat(client)
    assert reply.usage is not None
    assert reply.usage.total_tokens != estimate(100)
    assert limiter.statistics().available == {
        "requests": 99.0,
        "tokens": 10_000.0 - reply.usage.total_tokens,
    }
    assert limiter.statistics().in_flight == 0


async def test_input_and_output_tokens_are_reserved_and_settled_apart(server: LLMServer) -> None:
    limiter = tb.Limiter(input_tokens_per_minute=1_000, output_tokens_per_minute=1_000)
    async with client_for(server, limiter) as client:
        reply = await chat(client)
    assert limiter.statistics().available == {
        "input_tokens": 1_000.0 - reply.usage.prompt_tokens,
        "output_tokens": 1_000.0 - reply.usage.completion_tokens,
    }


async def test_a_stream_settles_from_its_last_chunk(server: LLMServer) -> None:
    limiter = tb.Limiter(tokens_per_minute=10_000)
    async with client_for(server, limiter) as client:
        stream = await chat(client, stream=True, stream_options={"include_usage": True})
        usage = None
        async with stream:
            async for chunk in stream:
                usage = chunk.usage or usage
    assert usage is not None
    assert limiter.statistics().available == {"tokens": 10_000.0 - usage.total_tokens}


async def test_a_stream_without_usage_keeps_the_estimate(server: LLMServer) -> None:
    limiter = tb.Limiter(tokens_per_minute=10_000)
    async with client_for(server, limiter) as client:
        stream = await chat(client, stream=True)
        async with stream:
            pieces = [chunk async for chunk in stream]
    assert len(pieces) > 2
    assert limiter.statistics().available == {"tokens": 10_000.0 - estimate(100)}


async def test_a_stream_holds_its_slot_until_it_is_closed(server: LLMServer) -> None:
    limiter = tb.Limiter(max_concurrency=1)
    async with client_for(server, limiter) as client:
        stream = await chat(client, stream=True)
        iterator = stream.__aiter__()
        await iterator.__anext__()
        second = asyncio.create_task(chat(client))
        await asyncio.sleep(0.05)
        assert not second.done()
        assert limiter.statistics().waiters == 1
        await stream.close()
        reply = await asyncio.wait_for(second, 5)
    assert reply.choices[0].message.content
    assert limiter.statistics().in_flight == 0


async def test_cancelling_a_call_mid_stream_releases_its_slot() -> None:
    limiter = tb.Limiter(max_concurrency=1, tokens_per_minute=10_000)
    first_chunk = asyncio.Event()

    async def consume(client: openai.AsyncOpenAI) -> None:
        stream = await chat(client, stream=True)
        async for _ in stream:  # no `async with`: the transport must end the lease itself
            first_chunk.set()

    with LLMServer(rpm=1000, tpm=1_000_000, latency=0, event_delay=5.0) as server:
        async with client_for(server, limiter) as client:
            task = asyncio.create_task(consume(client))
            await asyncio.wait_for(first_chunk.wait(), 5)
            assert limiter.statistics().in_flight == 1
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert limiter.statistics().in_flight == 0
            assert limiter.statistics().available == {"tokens": 10_000.0 - estimate(100)}


async def test_a_server_that_drops_a_stream_gives_the_sdk_error_and_leaks_nothing() -> None:
    limiter = tb.Limiter(max_concurrency=1)
    with LLMServer(rpm=1000, tpm=1_000_000, latency=0, drop_after=2) as server:
        async with client_for(server, limiter) as client:
            stream = await chat(client, stream=True)
            with pytest.raises((openai.APIError, httpx2.TransportError)):
                await drain(stream)
    assert limiter.statistics().in_flight == 0


async def drain(stream: Any) -> None:
    async with stream:
        async for _ in stream:
            pass


async def test_sdk_retries_after_a_429_acquire_again() -> None:
    acquisitions: list[Mapping[str, Any]] = []

    def cost(body: Mapping[str, Any]) -> Mapping[str, float]:
        acquisitions.append(body)
        return {}

    limiter = tb.Limiter(requests_per_minute=1000)  # far above the server's limit
    with LLMServer(rpm=2, tpm=1_000_000, period=0.4, latency=0) as server:
        async with client_for(server, limiter, cost=cost) as client:
            # at once, before any response's headers can tell the limiter the real limit
            await asyncio.gather(*(chat(client) for _ in range(3)))
        stats = server.stats()
    assert stats.requests_ok == 3
    assert stats.requests_429 >= 1
    assert len(acquisitions) == 3 + stats.requests_429  # each retry acquired again


async def test_a_429_pauses_the_limiter() -> None:
    limiter = tb.Limiter(requests_per_minute=1000)
    with LLMServer(rpm=1, tpm=1_000_000, period=30, latency=0) as server:
        async with client_for(server, limiter) as client:
            client = client.with_options(max_retries=0)
            replies = await asyncio.gather(chat(client), chat(client), return_exceptions=True)
    assert sum(isinstance(r, openai.RateLimitError) for r in replies) == 1
    paused = limiter.statistics().paused_until
    assert paused is not None
    assert paused > asyncio.get_running_loop().time() + 10


async def test_rate_limit_headers_reach_the_limiter() -> None:
    limiter = tb.Limiter(tokens_per_minute=100_000)
    with LLMServer(rpm=1000, tpm=1_000, latency=0) as server:
        async with client_for(server, limiter) as client:
            raw = await client.chat.completions.with_raw_response.create(
                model="gpt-test", messages=MESSAGES, max_tokens=100
            )
    remaining = float(raw.headers["x-ratelimit-remaining-tokens"])
    assert remaining < 1_000
    usage = raw.parse().usage
    assert usage is not None
    # Lowered to what the server said was left (which then comes back at the rate its
    # headers imply: a few tokens in the time the test takes). The settlement gives
    # nothing back: the server's count covers the call already.
    assert usage.total_tokens < estimate(100)
    available = limiter.statistics().available["tokens"]
    assert remaining <= available < remaining + 10


async def test_a_group_routes_each_call_by_its_model(server: LLMServer) -> None:
    group = tb.BucketGroup(
        {"gpt-test": tb.Limiter(tokens_per_minute=10_000)},
        default={"tokens_per_minute": 5_000},
    )
    async with client_for(server, group) as client:
        reply = await chat(client)
        other = await client.chat.completions.create(
            model="gpt-other", messages=MESSAGES, max_tokens=50
        )
    assert reply.usage is not None
    assert other.usage is not None
    assert group["gpt-test"].statistics().available == {
        "tokens": 10_000.0 - reply.usage.total_tokens
    }
    assert group["gpt-other"].statistics().available == {
        "tokens": 5_000.0 - other.usage.total_tokens
    }


async def test_listing_models_passes_unlimited(server: LLMServer) -> None:
    limiter = tb.Limiter(requests_per_minute=1, max_concurrency=1)
    async with client_for(server, limiter, timeout=0.1) as client:
        for _ in range(3):
            page = await client.models.list()
            assert [model.id for model in page.data] == ["gpt-test"]
    assert limiter.statistics().available == {"requests": 1.0}


async def test_a_body_that_is_not_json_costs_one_request(server: LLMServer) -> None:
    limiter = tb.Limiter(requests_per_minute=10, tokens_per_minute=1_000)
    transport = tb.AsyncLimitedTransport(limiter)
    async with httpx.AsyncClient(base_url=server.base_url, transport=transport) as client:
        response = await client.post(
            "/chat/completions", content=b"{nope", headers={"content-type": "application/json"}
        )
    assert response.status_code == 400
    assert limiter.statistics().available == {"requests": 9.0, "tokens": 1_000.0}


async def test_a_plain_httpx_client_is_limited_and_settled(server: LLMServer) -> None:
    limiter = tb.Limiter(tokens_per_minute=10_000, max_concurrency=1)
    transport = tb.AsyncLimitedTransport(limiter)
    async with httpx.AsyncClient(base_url=server.base_url, transport=transport) as client:
        body = {"model": "gpt-test", "messages": MESSAGES, "max_tokens": 100}
        response = await client.post("/chat/completions", json=body)
        async with client.stream("POST", "/chat/completions", json=body | {"stream": True}) as s:
            lines = [line async for line in s.aiter_lines()]
            assert limiter.statistics().in_flight == 0  # read to the end: the lease ended
    assert lines[-2:] == ["data: [DONE]", ""] or lines[-1] == "data: [DONE]"
    used = response.json()["usage"]["total_tokens"]
    assert limiter.statistics().available == {"tokens": 10_000.0 - used - estimate(100)}
