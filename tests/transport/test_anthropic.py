"""AsyncLimitedTransport under the real ``anthropic`` SDK, with a small in-test provider
speaking Anthropic's wire format behind ``httpx2.MockTransport``: settle from ``usage``,
split input and output tokens, streams, 429s and the SDK's own retries."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

import anthropic
import httpx2
import pytest

import tokenbucket as tb

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Mapping

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
