"""LimitedTransport, the sync twin, under the real sync ``openai`` SDK (and plain
``httpx``), against the local fake provider over real sockets, from threads: settle,
slots, streams, retries, 429s and header feedback, bad responses."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import httpx
import httpx2
import openai
import pytest
from fake_provider import LLMServer

import tokenbucket as tb

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

pytestmark = pytest.mark.timeout(20)

MESSAGES: list[Any] = [{"role": "user", "content": "Say hello to the sync transport."}]


@pytest.fixture
def server() -> Iterator[LLMServer]:
    with LLMServer(rpm=1000, tpm=1_000_000, latency=0) as running:
        yield running


def client_for(
    server: LLMServer, limits: tb.Limiter | tb.BucketGroup, **options: Any
) -> openai.OpenAI:
    transport = tb.LimitedTransport(limits, **options)
    return openai.OpenAI(
        base_url=server.base_url, api_key="local", http_client=httpx2.Client(transport=transport)
    )


def estimate(max_tokens: int) -> float:
    return tb.estimate_tokens(MESSAGES) + max_tokens


def chat(client: openai.OpenAI, **extra: Any) -> Any:
    return client.chat.completions.create(
        model="gpt-test", messages=MESSAGES, max_tokens=100, **extra
    )


def test_a_completion_settles_from_its_usage(server: LLMServer) -> None:
    limiter = tb.Limiter(requests_per_minute=100, tokens_per_minute=10_000)
    with client_for(server, limiter) as client:
        reply = chat(client)
    assert reply.usage is not None
    assert limiter.statistics().available == {
        "requests": 99.0,
        "tokens": 10_000.0 - reply.usage.total_tokens,
    }
    assert limiter.statistics().in_flight == 0


def test_a_stream_settles_from_its_last_chunk_and_holds_its_slot(server: LLMServer) -> None:
    limiter = tb.Limiter(tokens_per_minute=10_000, max_concurrency=1)
    with client_for(server, limiter) as client:
        stream = chat(client, stream=True, stream_options={"include_usage": True})
        chunks = iter(stream)
        next(chunks)
        assert limiter.statistics().in_flight == 1
        with pytest.raises(tb.AcquireTimeoutError), limiter.acquire_blocking(timeout=0):
            pass  # the stream holds the one slot
        usage = None
        for chunk in chunks:
            usage = chunk.usage or usage
    assert usage is not None
    assert limiter.statistics().in_flight == 0
    assert limiter.statistics().available == {"tokens": 10_000.0 - usage.total_tokens}


def test_closing_a_stream_early_releases_its_slot(server: LLMServer) -> None:
    limiter = tb.Limiter(max_concurrency=1, tokens_per_minute=10_000)
    with client_for(server, limiter) as client:
        stream = chat(client, stream=True)
        next(iter(stream))
        stream.close()
        assert limiter.statistics().in_flight == 0
        assert chat(client).usage is not None  # the slot is free again


def test_a_server_that_drops_a_stream_gives_the_sdk_error_and_leaks_nothing() -> None:
    limiter = tb.Limiter(max_concurrency=1)
    server = LLMServer(rpm=1000, tpm=1_000_000, latency=0, drop_after=2)
    with server, client_for(server, limiter) as client:
        stream = chat(client, stream=True)
        with pytest.raises((openai.APIError, httpx2.TransportError)), stream:
            for _ in stream:
                pass
    assert limiter.statistics().in_flight == 0


def test_sdk_retries_after_a_429_acquire_again() -> None:
    acquisitions: list[Mapping[str, Any]] = []
    lock = threading.Lock()

    def cost(body: Mapping[str, Any]) -> Mapping[str, float]:
        with lock:
            acquisitions.append(body)
        return {}

    limiter = tb.Limiter(requests_per_minute=1000)  # far above the server's limit
    barrier = threading.Barrier(3)

    def call(client: openai.OpenAI) -> Any:
        barrier.wait(5)  # at once, before any response's headers can tell the limiter
        return chat(client)

    # Responses take a while: the three are all sent before the first comes back.
    with LLMServer(rpm=2, tpm=1_000_000, period=0.4, latency=0.2) as server:
        with client_for(server, limiter, cost=cost) as client, ThreadPoolExecutor(3) as pool:
            list(pool.map(call, [client] * 3))
        stats = server.stats()
    assert stats.requests_ok == 3
    assert stats.requests_429 >= 1
    assert len(acquisitions) == 3 + stats.requests_429  # each retry acquired again


def test_a_429_pauses_the_limiter() -> None:
    limiter = tb.Limiter(requests_per_minute=1000)
    barrier = threading.Barrier(2)

    def call(client: openai.OpenAI) -> object:
        barrier.wait(5)  # both sent before the first response's headers come back
        try:
            return chat(client)
        except openai.RateLimitError as error:
            return error

    server = LLMServer(rpm=1, tpm=1_000_000, period=30, latency=0.2)
    with server, client_for(server, limiter) as client, ThreadPoolExecutor(2) as pool:
        replies = list(pool.map(call, [client.with_options(max_retries=0)] * 2))
    assert sum(isinstance(r, openai.RateLimitError) for r in replies) == 1
    paused = limiter.statistics().paused_until
    assert paused is not None
    assert paused > time.monotonic() + 10


def test_rate_limit_headers_reach_the_limiter() -> None:
    limiter = tb.Limiter(tokens_per_minute=100_000)
    server = LLMServer(rpm=1000, tpm=1_000, latency=0)
    with server, client_for(server, limiter) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-test", messages=MESSAGES, max_tokens=100
        )
    remaining = float(raw.headers["x-ratelimit-remaining-tokens"])
    assert remaining < 1_000
    available = limiter.statistics().available["tokens"]
    assert remaining <= available < remaining + 10


def test_a_group_routes_each_call_by_its_model(server: LLMServer) -> None:
    group = tb.BucketGroup(
        {"gpt-test": tb.Limiter(requests_per_minute=10)},
        default={"requests_per_minute": 5},
    )
    with client_for(server, group) as client:
        chat(client)
        client.chat.completions.create(model="other", messages=MESSAGES, max_tokens=10)
    assert group["gpt-test"].statistics().available == {"requests": 9.0}
    assert group["other"].statistics().available == {"requests": 4.0}


def test_listing_models_passes_unlimited(server: LLMServer) -> None:
    limiter = tb.Limiter(requests_per_minute=1)
    with client_for(server, limiter) as client:
        for _ in range(3):
            client.models.list()
    assert limiter.statistics().available == {"requests": 1.0}


def test_a_plain_httpx_client_is_limited_and_settled(server: LLMServer) -> None:
    limiter = tb.Limiter(tokens_per_minute=10_000, max_concurrency=1)
    transport = tb.LimitedTransport(limiter)
    with httpx.Client(base_url=server.base_url, transport=transport) as client:
        body = {"model": "gpt-test", "messages": MESSAGES, "max_tokens": 100}
        response = client.post("/chat/completions", json=body)
        with client.stream("POST", "/chat/completions", json=body | {"stream": True}) as s:
            lines = list(s.iter_lines())
            assert limiter.statistics().in_flight == 0  # read to the end: the lease ended
    assert "data: [DONE]" in lines
    used = response.json()["usage"]["total_tokens"]
    assert limiter.statistics().available == {"tokens": 10_000.0 - used - estimate(100)}


def test_threads_and_an_async_client_share_one_limiter(server: LLMServer) -> None:
    import asyncio

    limiter = tb.Limiter(requests_per_minute=10_000, max_concurrency=4)

    async def async_calls() -> None:
        transport = tb.AsyncLimitedTransport(limiter)
        async with openai.AsyncOpenAI(
            base_url=server.base_url,
            api_key="local",
            http_client=httpx2.AsyncClient(transport=transport),
        ) as client:
            await asyncio.gather(
                *(
                    client.chat.completions.create(
                        model="gpt-test", messages=MESSAGES, max_tokens=10
                    )
                    for _ in range(20)
                )
            )

    start = time.monotonic()
    loop_thread = threading.Thread(target=asyncio.run, args=(async_calls(),))
    loop_thread.start()
    with client_for(server, limiter) as client, ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: chat(client), range(20)))
    loop_thread.join(10)
    assert server.stats().requests_ok == 40
    stats = limiter.statistics()
    assert (stats.in_flight, stats.waiters) == (0, 0)
    # Every call counted once: the server's headers (1,000 a minute) lowered the limiter
    # to what the server had left, which comes back at the server's rate since.
    refill = 1_000 / 60 * (time.monotonic() - start)
    assert stats.available["requests"] <= 1_000 - 40 + refill + 1


def test_bad_arguments_are_named() -> None:
    limiter = tb.Limiter(requests_per_minute=1)
    with pytest.raises(tb.ArgumentTypeError):
        tb.LimitedTransport("limits")  # type: ignore[arg-type]
    with pytest.raises(tb.ArgumentTypeError, match="sync transport"):
        tb.LimitedTransport(limiter, httpx2.AsyncHTTPTransport())  # type: ignore[arg-type]
    with pytest.raises(tb.ArgumentTypeError, match="async transport"):
        tb.AsyncLimitedTransport(limiter, httpx2.HTTPTransport())  # type: ignore[arg-type]
    assert "LimitedTransport" in repr(tb.LimitedTransport(limiter))
