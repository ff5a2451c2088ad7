"""The transport skips the server-sent events that cannot report usage (OpenAI's chunks
with ``"usage":null``) without parsing them, and still reads every one that can."""

from __future__ import annotations

import json

import httpx2
import pytest

import tokenbucket as tb
from tokenbucket._transport import _may_hold_usage, _Settlement

CHUNK = b'{"object":"chat.completion.chunk","choices":[{"delta":{"content":"Hi"}}],"usage":null}'
LAST = b'{"choices":[],"usage":{"prompt_tokens":3,"total_tokens":8}}'
USAGE = b'{"prompt_tokens":3,"completion_tokens":5}'

LINES = [
    CHUNK,
    LAST,
    b'{"usage":null,"response":{"usage":null}}',
    b'{"type":"message_start","message":{"usage":{"input_tokens":3}}}',
    b'{"usageMetadata":{"promptTokenCount":3,"candidatesTokenCount":5},"usage":null}',
    b'{"usage": null}',  # not compact: parsed, finds nothing
    b'{"us\\u0061ge":' + USAGE + b',"x":{"usage":null}}',  # an escaped key
    b'{"choices":[{"delta":{"content":"\\"usage\\":null"}}],"usage":' + USAGE + b"}",
    b'[{"usage":null},{"usage":' + USAGE + b"}]",
    b'{"usage":null,"usage":' + USAGE + b"}",  # a repeated key: the last one counts
    b'{"object":"chat.completion.chunk","choices":[]}',
]


def usage_of(line: bytes) -> dict[str, float]:
    limiter = tb.Limiter(tokens_per_minute=1_000)
    headers = [("content-type", "text/event-stream")]
    settlement = _Settlement(limiter, limiter.acquire(), 200, headers)
    settlement._read(json.loads(line))
    return settlement._usage


@pytest.mark.parametrize("line", LINES)
def test_a_skipped_event_has_no_usage(line: bytes) -> None:
    data = bytearray(b"data: " + line)
    if not _may_hold_usage(data):
        assert usage_of(line) == {}
    if usage_of(line):
        assert _may_hold_usage(data)


def test_openais_chunks_before_the_last_are_skipped() -> None:
    assert not _may_hold_usage(bytearray(b"data: " + CHUNK))
    assert not _may_hold_usage(bytearray(b"data: [DONE]"))
    assert _may_hold_usage(bytearray(b"data: " + LAST))


@pytest.mark.asyncio
async def test_a_usage_under_an_escaped_key_still_settles() -> None:
    events = [CHUNK, LINES[6], b"[DONE]"]
    body = b"".join(b"data: " + event + b"\n\n" for event in events)

    def answer(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    limiter = tb.Limiter(tokens_per_minute=10_000)
    transport = tb.AsyncLimitedTransport(limiter, httpx2.MockTransport(answer))
    async with httpx2.AsyncClient(transport=transport) as client:
        payload = {"model": "m", "messages": [], "max_tokens": 100, "stream": True}
        response = await client.post("http://test/v1/chat/completions", json=payload)
    assert response.status_code == 200
    assert limiter.statistics().available == {"tokens": 10_000.0 - 8}
