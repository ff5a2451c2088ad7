"""The fake provider over HTTP (examples/fake_provider): what the wire carries.

The accounting itself (levels, headers, retry times, statistics) is tested at fixed
instants in test_fake_provider.py; these tests check that the server parses requests,
writes responses and runs the provider at its clock. Most freeze the clock
(``FakeClock``); one checks the refill in real time, asserting only that capacity comes
back after waiting longer than needed.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from typing import TYPE_CHECKING, Any

import anthropic
import httpx
import openai
import pytest

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletionMessageParam

from fake_provider import (
    DEFAULT_MAX_TOKENS,
    LLMServer,
    ServerStats,
    estimate_prompt_tokens,
)

GO_DURATION = re.compile(r"^(0s|\d+ms|(\d+h)?(\d+m)?\d+(\.\d+)?s)$")
LIMIT_HEADERS = (
    "x-ratelimit-limit-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-requests",
    "x-ratelimit-reset-tokens",
)


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def chat(
    client: httpx.Client, content: str = "x" * 40, max_tokens: int | None = 100, **extra: Any
) -> httpx.Response:
    body: dict[str, Any] = {"model": "gpt-test", "messages": [{"role": "user", "content": content}]}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    body.update(extra)
    return client.post("/chat/completions", json=body)


def limit_headers(response: httpx.Response) -> dict[str, str]:
    return {name: response.headers[name] for name in LIMIT_HEADERS}


def assert_admitted(statuses: list[int], stats: ServerStats, ok: int, refused: int) -> None:
    assert (statuses.count(200), statuses.count(429)) == (ok, refused)
    assert (stats.requests_ok, stats.requests_429) == (ok, refused)


def test_a_request_gets_a_completion_with_provider_style_usage() -> None:
    messages: list[dict[str, object]] = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": [{"type": "text", "text": "Say hello to the demo."}]},
    ]
    with (
        LLMServer(rpm=10, tpm=10_000, latency=0, clock=FakeClock()) as server,
        httpx.Client(base_url=server.base_url) as client,
    ):
        body = {"model": "gpt-test", "messages": messages, "max_tokens": 100}
        first = client.post("/chat/completions", json=body)
        again = client.post("/chat/completions", json=body)
        default = chat(client, max_tokens=None)
        modern = chat(client, max_tokens=None, max_completion_tokens=10)
        stats = server.stats()

    assert first.status_code == 200
    completion = first.json()
    assert completion["object"] == "chat.completion"
    assert completion["id"].startswith("chatcmpl-")
    assert completion["model"] == "gpt-test"
    choice = completion["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"]
    assert choice["finish_reason"] == "stop"
    usage = completion["usage"]
    prompt = math.ceil((len("You are terse.") + len("Say hello to the demo.")) / 4)
    assert usage["prompt_tokens"] == prompt == estimate_prompt_tokens(messages)
    assert 50 <= usage["completion_tokens"] <= 100
    assert usage["total_tokens"] == prompt + usage["completion_tokens"]
    assert again.json()["usage"] == usage, "usage is a deterministic function of the request"
    assert again.json()["id"] != completion["id"]

    default_usage = default.json()["usage"]
    assert DEFAULT_MAX_TOKENS // 2 <= default_usage["completion_tokens"] <= DEFAULT_MAX_TOKENS
    assert 5 <= modern.json()["usage"]["completion_tokens"] <= 10

    assert stats.requests_ok == 4
    assert stats.requests_429 == 0
    assert stats.tokens_charged == 2 * (prompt + 100) + (10 + DEFAULT_MAX_TOKENS) + (10 + 10)
    used = [r.json()["usage"]["total_tokens"] for r in (first, again, default, modern)]
    assert stats.tokens_used == sum(used)


def test_every_response_carries_well_formed_rate_limit_headers() -> None:
    clock = FakeClock()
    with (
        LLMServer(rpm=10, tpm=1000, period=60, latency=0, clock=clock) as server,
        httpx.Client(base_url=server.base_url) as client,
    ):
        ok = chat(client, max_tokens=100)  # 10 prompt tokens: charge 110
        clock.advance(3.0)  # refills 0.5 requests and 50 tokens
        later = chat(client, max_tokens=100)

    assert limit_headers(ok) == {
        "x-ratelimit-limit-requests": "10",
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-requests": "9",
        "x-ratelimit-remaining-tokens": "890",
        "x-ratelimit-reset-requests": "6s",  # one request at 10 per 60 s
        "x-ratelimit-reset-tokens": "6.6s",  # 110 tokens at 1000 per 60 s
    }
    assert limit_headers(later)["x-ratelimit-remaining-requests"] == "8"  # 9.5 - 1
    assert limit_headers(later)["x-ratelimit-remaining-tokens"] == "830"  # 940 - 110
    assert limit_headers(later)["x-ratelimit-reset-requests"] == "9s"
    assert limit_headers(later)["x-ratelimit-reset-tokens"] == "10.2s"
    for response in (ok, later):
        assert response.headers["x-request-id"].startswith("req_")
        assert response.headers["content-type"] == "application/json"
        for name in LIMIT_HEADERS:
            value = response.headers[name]
            if "reset" in name:
                assert GO_DURATION.match(value), (name, value)
            else:
                assert value.isdigit(), (name, value)


def test_a_429_carries_openai_s_error_body_and_retry_headers() -> None:
    clock = FakeClock()
    with (
        LLMServer(rpm=3, tpm=1000, period=3, latency=0, clock=clock) as server,
        httpx.Client(base_url=server.base_url) as client,
    ):
        too_large = chat(client, max_tokens=5000)
        assert [chat(client).status_code for _ in range(3)] == [200, 200, 200]
        refused = chat(client)
        clock.advance(1.0)  # exactly one request's worth of refill, at the server's clock
        assert chat(client).status_code == 200
        stats = server.stats()

    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["type"] == "requests"
    assert error["code"] == "rate_limit_exceeded"
    assert "Limit 3" in error["message"]
    assert refused.headers["retry-after"] == "1"
    assert refused.headers["retry-after-ms"] == "1000"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert refused.headers["x-ratelimit-reset-requests"] == "3s"
    assert refused.headers["x-ratelimit-remaining-tokens"] == str(1000 - 3 * 110)
    assert too_large.status_code == 429
    assert too_large.json()["error"]["type"] == "tokens"
    assert "too large" in too_large.json()["error"]["message"]
    assert "retry-after" not in too_large.headers, "it will never fit"
    assert (stats.requests_ok, stats.requests_429, stats.tokens_charged) == (4, 2, 4 * 110)


def test_capacity_comes_back_after_a_period_in_real_time() -> None:
    period = 0.25
    with (
        LLMServer(rpm=2, tpm=10_000, period=period, latency=0) as server,
        httpx.Client(base_url=server.base_url) as client,
    ):
        responses: list[httpx.Response] = []
        while len(responses) < 500 and 429 not in (r.status_code for r in responses):
            responses.append(chat(client))
        refused = responses[-1]
        assert refused.status_code == 429
        assert [r.status_code for r in responses[:2]] == [200, 200]
        assert 0 < int(refused.headers["retry-after-ms"]) <= 1000 * period

        time.sleep(period * 1.5)  # longer than a full refill needs
        back = [chat(client) for _ in range(2)]
        assert [r.status_code for r in back] == [200, 200]
        assert back[0].headers["x-ratelimit-remaining-requests"] == "1"


def test_the_openai_sdk_parses_completions_and_raises_rate_limit_error() -> None:
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hello!"}]
    with (
        LLMServer(rpm=2, tpm=10_000, latency=0, clock=FakeClock()) as server,
        openai.OpenAI(base_url=server.base_url, api_key="test", max_retries=0) as client,
    ):
        completion = client.chat.completions.create(
            model="gpt-test", messages=messages, max_tokens=20
        )
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-test", messages=messages, max_tokens=20
        )
        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(model="gpt-test", messages=messages)

    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == estimate_prompt_tokens(messages) == 2
    assert 10 <= completion.usage.completion_tokens <= 20
    assert raw.headers["x-ratelimit-remaining-requests"] == "0"
    assert raw.parse().usage == completion.usage

    error = caught.value
    assert error.status_code == 429
    assert error.code == "rate_limit_exceeded"
    assert error.type == "requests"
    assert int(error.response.headers["retry-after"]) >= 1


def test_concurrent_requests_from_an_httpx_async_client() -> None:
    async def burst(base_url: str, count: int) -> list[int]:
        limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
        async with httpx.AsyncClient(base_url=base_url, limits=limits) as client:

            async def one() -> int:
                return (await chat_async(client)).status_code

            return await asyncio.gather(*(one() for _ in range(count)))

    # The clock is frozen: exactly `rpm` requests are admitted, however they interleave.
    with LLMServer(rpm=40, tpm=10**9, latency=(0.05, 0.1), clock=FakeClock()) as server:
        assert_admitted(asyncio.run(burst(server.base_url, 50)), server.stats(), 40, 10)


async def chat_async(client: httpx.AsyncClient) -> httpx.Response:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    return await client.post("/chat/completions", json=body)


def test_hundreds_of_concurrent_keep_alive_connections() -> None:
    # httpx's own pool gets slow past ~100 connections, so this drives the server with
    # plain keep-alive HTTP/1.1 connections: every one is open while all the others are.
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    request = (
        "POST /v1/chat/completions HTTP/1.1\r\nhost: localhost\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n{body}"
    ).encode()

    async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
        writer.write(request)
        await writer.drain()
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
        length = int(head.split("content-length:")[1].split("\r\n")[0])
        await reader.readexactly(length)
        assert "connection: keep-alive" in head
        return int(head.split(" ")[1])

    async def waves(port: int, count: int) -> list[int]:
        connections = [await asyncio.open_connection("127.0.0.1", port) for _ in range(count)]
        try:
            statuses: list[int] = []
            for _ in range(2):  # the second wave reuses every connection
                statuses += await asyncio.gather(*(exchange(r, w) for r, w in connections))
            return statuses
        finally:
            for _, writer in connections:
                writer.close()
                await writer.wait_closed()

    with LLMServer(rpm=500, tpm=10**9, latency=(0.05, 0.1), clock=FakeClock()) as server:
        assert_admitted(asyncio.run(waves(server.port, 300)), server.stats(), 500, 100)


def test_latency_delays_the_response_but_not_the_charge() -> None:
    clock = FakeClock()
    with (
        LLMServer(rpm=5, tpm=1000, latency=(0.1, 0.1), clock=clock) as server,
        httpx.Client(base_url=server.base_url) as client,
    ):
        started = time.monotonic()
        response = chat(client)
        elapsed = time.monotonic() - started
        stats = server.stats()
    assert response.status_code == 200
    assert elapsed >= 0.1
    assert stats.first_request_at == stats.last_request_at == clock.now


def test_stats_reset_and_refill_reach_the_provider() -> None:
    clock = FakeClock()
    with (
        LLMServer(rpm=1, tpm=1000, period=60, latency=0, clock=clock) as server,
        httpx.Client(base_url=server.base_url) as client,
    ):
        assert server.stats() == ServerStats()
        chat(client)
        clock.advance(1.0)
        chat(client)
        stats = server.stats()
        server.reset_stats()
        after_reset = server.stats()
        server.refill()
        refilled = chat(client)

    assert (stats.requests_ok, stats.requests_429) == (1, 1)
    assert (stats.first_request_at, stats.last_request_at) == (1000.0, 1001.0)
    assert after_reset == ServerStats()
    assert refilled.status_code == 200


def test_health_bad_requests_and_unknown_paths() -> None:
    with (
        LLMServer(rpm=5, tpm=1000, latency=0, clock=FakeClock()) as server,
        httpx.Client(base_url=server.url) as client,
    ):
        health = client.get("/health")
        bad_json = client.post(
            "/v1/chat/completions", content=b"{nope", headers={"content-type": "application/json"}
        )
        no_messages = client.post("/v1/chat/completions", json={"model": "m"})
        bad_max = client.post(
            "/v1/chat/completions",
            json={"model": "m", "messages": [{"content": "x"}], "max_tokens": 0},
        )
        missing = client.get("/v1/files")
        stats = server.stats()
        chunked = client.post(  # an iterator body is sent with transfer-encoding: chunked
            "/v1/chat/completions",
            content=iter([b'{"model": "m", "messages": ', b'[{"content": "abcd"}]}']),
        )

    assert health.status_code == 200
    for response in (bad_json, no_messages, bad_max):
        assert response.status_code == 400
        assert response.json()["error"]["type"] == "invalid_request_error"
    assert no_messages.json()["error"]["param"] == "messages"
    assert bad_max.json()["error"]["param"] == "max_tokens"
    assert missing.status_code == 404
    assert chunked.status_code == 200
    assert chunked.json()["usage"]["prompt_tokens"] == 1
    assert stats == ServerStats(), "invalid requests are neither charged nor counted"


def test_close_drops_idle_keep_alive_connections_and_is_idempotent() -> None:
    server = LLMServer(rpm=5, tpm=1000, latency=0).start()
    with httpx.Client(base_url=server.base_url) as client:
        assert chat(client).status_code == 200  # leaves a keep-alive connection open
        server.close()
        server.close()
        with pytest.raises(httpx.TransportError):
            chat(client)
    with pytest.raises(RuntimeError):
        server.start()


def test_invalid_configuration_is_rejected() -> None:
    with pytest.raises(ValueError, match="rpm"):
        LLMServer(rpm=0, tpm=10)
    with pytest.raises(ValueError, match="tpm"):
        LLMServer(rpm=1, tpm=-1)
    with pytest.raises(ValueError, match="period"):
        LLMServer(rpm=1, tpm=1, period=0)
    with pytest.raises(ValueError, match="latency"):
        LLMServer(rpm=1, tpm=1, latency=(0.2, 0.1))


def test_count_usage_reaches_the_provider() -> None:
    with (
        LLMServer(
            rpm=100, tpm=1000, period=10, latency=0, clock=FakeClock(), count_usage=True
        ) as server,
        httpx.Client(base_url=server.base_url) as client,
    ):
        first = chat(client, max_tokens=390)  # charged 400 on arrival

    used = first.json()["usage"]["total_tokens"]
    assert first.headers["x-ratelimit-remaining-tokens"] == str(1000 - used)


EPOCH = 1_700_000_000.0  # 2023-11-14T22:13:20Z, the Unix time at FakeClock()'s start
ANTHROPIC_HEADERS = tuple(
    f"anthropic-ratelimit-{kind}-{name}"
    for kind in ("requests", "tokens")
    for name in ("limit", "remaining", "reset")
)


def test_the_anthropic_sdk_gets_messages_headers_and_rate_limit_error() -> None:
    clock = FakeClock()
    with (
        LLMServer(rpm=2, tpm=10_000, period=60, latency=0, clock=clock, epoch=EPOCH) as server,
        anthropic.Anthropic(base_url=server.url, api_key="test", max_retries=0) as client,
    ):
        raw = client.messages.with_raw_response.create(
            model="claude-test",
            max_tokens=20,
            system="Be brief.",
            messages=[{"role": "user", "content": [{"type": "text", "text": "Hello there!"}]}],
        )
        clock.advance(3.0)
        plain = client.messages.create(
            model="claude-test", max_tokens=20, messages=[{"role": "user", "content": "Hello!"}]
        )
        with pytest.raises(anthropic.RateLimitError) as caught:
            client.messages.create(
                model="claude-test", max_tokens=20, messages=[{"role": "user", "content": "x"}]
            )
        stats = server.stats()

    reply = raw.parse()
    assert reply.type == "message"
    assert reply.id.startswith("msg_")
    assert reply.role == "assistant"
    assert reply.model == "claude-test"
    assert reply.stop_reason == "end_turn"
    assert reply.content[0].type == "text"
    assert reply.content[0].text
    prompt = math.ceil((len("Be brief.") + len("Hello there!")) / 4)  # the system counts
    assert reply.usage.input_tokens == prompt == 6
    assert 10 <= reply.usage.output_tokens <= 20
    assert {name: raw.headers[name] for name in ANTHROPIC_HEADERS} == {
        "anthropic-ratelimit-requests-limit": "2",
        "anthropic-ratelimit-requests-remaining": "1",
        "anthropic-ratelimit-requests-reset": "2023-11-14T22:13:50Z",  # 1 request at 2 per 60 s
        "anthropic-ratelimit-tokens-limit": "10000",
        "anthropic-ratelimit-tokens-remaining": "9974",  # charged 6 + 20
        "anthropic-ratelimit-tokens-reset": "2023-11-14T22:13:20.156Z",  # 26 at 10,000 per 60 s
    }
    assert not any(name.startswith("x-ratelimit") for name in raw.headers)
    assert raw.headers["request-id"].startswith("req_")
    assert raw.request_id == raw.headers["request-id"]
    assert plain.usage.input_tokens == 2
    assert plain.id != reply.id

    error = caught.value
    assert error.status_code == 429
    assert isinstance(error.body, dict)
    assert error.body["type"] == "error"
    assert error.body["error"]["type"] == "rate_limit_error"
    assert "2 requests per 60s" in str(error)
    assert error.response.headers["retry-after"] == "27"  # 0.1 request left after 3 s
    assert error.response.headers["anthropic-ratelimit-requests-remaining"] == "0"
    assert (stats.requests_ok, stats.requests_429) == (2, 1)


def test_an_anthropic_stream_is_anthropic_s_named_events() -> None:
    messages: list[Any] = [{"role": "user", "content": "x" * 40}]
    body = {"model": "claude-test", "max_tokens": 40, "messages": messages, "stream": True}
    with (
        LLMServer(rpm=10, tpm=10_000, latency=0, clock=FakeClock(), epoch=EPOCH) as server,
        httpx.Client(base_url=server.url) as client,
        anthropic.Anthropic(base_url=server.url, api_key="test", max_retries=0) as sdk,
    ):
        with client.stream("POST", "/v1/messages", json=body) as response:
            lines = [line for line in response.iter_lines() if line]
            headers = response.headers
        with sdk.messages.stream(model="claude-test", max_tokens=40, messages=messages) as stream:
            text = "".join(stream.text_stream)
            final = stream.get_final_message()

    assert headers["content-type"].startswith("text/event-stream")
    assert headers["anthropic-ratelimit-requests-remaining"] == "9"
    names = [line.removeprefix("event: ") for line in lines[::2]]
    data = [json.loads(line.removeprefix("data: ")) for line in lines[1::2]]
    assert [event["type"] for event in data] == names
    words = len([n for n in names if n == "content_block_delta"])
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        *["content_block_delta"] * words,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert data[0]["message"]["usage"] == {"input_tokens": 10, "output_tokens": 1}
    output = data[-2]["usage"]["output_tokens"]
    assert 20 <= output <= 40
    assert data[-2]["delta"]["stop_reason"] == "end_turn"
    assert final.content[0].type == "text"
    assert final.content[0].text == text
    assert text.startswith("Simulated reply #2")
    assert (final.usage.input_tokens, final.usage.output_tokens) == (10, output), "deterministic"


def test_anthropic_bad_requests_get_anthropic_s_400_and_are_not_charged() -> None:
    message = {"role": "user", "content": "x"}
    with (
        LLMServer(rpm=5, tpm=1000, latency=0, clock=FakeClock()) as server,
        httpx.Client(base_url=server.url) as client,
    ):
        no_max = client.post("/v1/messages", json={"model": "m", "messages": [message]})
        zero_max = client.post(
            "/v1/messages", json={"model": "m", "messages": [message], "max_tokens": 0}
        )
        no_messages = client.post("/v1/messages", json={"model": "m", "max_tokens": 5})
        no_model = client.post("/v1/messages", json={"messages": [message], "max_tokens": 5})
        bad_json = client.post(
            "/v1/messages", content=b"{nope", headers={"content-type": "application/json"}
        )
        bad_system = client.post(
            "/v1/messages",
            json={"model": "m", "messages": [message], "max_tokens": 5, "system": 3},
        )
        wrong_method = client.get("/v1/messages")
        stats = server.stats()

    for response in (no_max, zero_max, no_messages, no_model, bad_json, bad_system):
        assert response.status_code == 400
        assert response.json()["type"] == "error"
        assert response.json()["error"]["type"] == "invalid_request_error"
    assert no_max.json()["error"]["message"] == "max_tokens: Field required"
    assert "max_tokens" in zero_max.json()["error"]["message"]
    assert wrong_method.status_code == 405
    assert stats == ServerStats(), "invalid requests are neither charged nor counted"


def test_usage_can_be_left_out_and_headers_replaced() -> None:
    chat_body = {"model": "m", "messages": [{"content": "abcd"}], "max_tokens": 8}
    with (
        LLMServer(
            rpm=5,
            tpm=1000,
            latency=0,
            clock=FakeClock(),
            usage=False,
            headers={"anthropic-ratelimit-tokens-reset": "soon", "x-extra": "1"},
        ) as server,
        httpx.Client(base_url=server.url) as client,
    ):
        message = client.post("/v1/messages", json=chat_body)
        with client.stream("POST", "/v1/messages", json=chat_body | {"stream": True}) as stream:
            events = [line for line in stream.iter_lines() if line.startswith("data: ")]
        completion = client.post("/v1/chat/completions", json=chat_body)
        bad = client.post("/v1/messages", json={"model": "m", "messages": [{"content": "x"}]})
        stats = server.stats()

    assert message.status_code == 200
    assert "usage" not in message.json()
    assert not any("usage" in line for line in events)
    assert completion.json()["usage"] is None
    assert message.headers["anthropic-ratelimit-tokens-reset"] == "soon"
    assert message.headers.get_list("anthropic-ratelimit-tokens-reset") == ["soon"]
    assert message.headers["anthropic-ratelimit-tokens-remaining"] == "991"  # 1 + 8 charged
    assert message.headers["x-extra"] == completion.headers["x-extra"] == "1"
    assert bad.status_code == 400
    assert "x-extra" not in bad.headers, "only answers to model calls the provider accounted"
    assert stats.requests_ok == 3
