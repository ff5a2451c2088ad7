"""The transport skips the server-sent events that cannot report usage (OpenAI's chunks
with ``"usage":null``) without parsing them, and still reads every one that can."""

from __future__ import annotations

import importlib
import itertools
import json
import re
from typing import Any

import httpx2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
    b'{"usag\\u0065":' + USAGE + b"}",  # an escaped key, and no "sage" as such
    b'{"choices":[{"delta":{"content":"\\"usage\\":null"}}],"usage":' + USAGE + b"}",
    b'[{"usage":null},{"usage":' + USAGE + b"}]",
    b'{"usage":null,"usage":' + USAGE + b"}",  # a repeated key: the last one counts
    b'{"object":"chat.completion.chunk","choices":[]}',
]


def usage_of(line: bytes) -> dict[str, float]:
    limiter = tb.Limiter(tokens_per_minute=1_000)
    settlement = _Settlement(limiter, limiter.acquire(), 200, "text/event-stream", "")
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


def settled_usage(chunks: list[bytes]) -> dict[str, float]:
    limiter = tb.Limiter(tokens_per_minute=1_000)
    settlement = _Settlement(limiter, limiter.acquire(), 200, "text/event-stream", "")
    for piece in chunks:
        settlement.feed(piece)
    return settlement._usage


def every_event_read(body: bytes) -> dict[str, float]:
    """The usage of a stream read the slow way: every ``data:`` line parsed."""
    limiter = tb.Limiter(tokens_per_minute=1_000)
    settlement = _Settlement(limiter, limiter.acquire(), 200, "text/event-stream", "")
    # Lines end in LF, CR LF or CR alone; a last line without its end is not read.
    for line in re.split(rb"\r\n|\r|\n", body)[:-1]:
        if line.startswith(b"data:"):
            settlement._event_data(line[5:])
    return settlement._usage


@settings(max_examples=300, deadline=None)
@given(
    events=st.lists(st.sampled_from([*LINES, b"[DONE]", b""]), max_size=12),
    cuts=st.lists(st.integers(min_value=0, max_value=4_000), max_size=12),
    separator=st.sampled_from([b"\n\n", b"\n", b"\r\n\r\n", b"\r\n", b"\r\r", b"\r"]),
)
def test_a_stream_cut_anywhere_settles_as_if_every_event_were_read(
    events: list[bytes], cuts: list[int], separator: bytes
) -> None:
    body = b"".join(b"data: " + event + separator for event in events)
    marks = sorted({min(cut, len(body)) for cut in cuts} | {0, len(body)})
    chunks = [body[start:end] for start, end in itertools.pairwise(marks)]
    assert settled_usage(chunks) == every_event_read(body)


@pytest.mark.parametrize("library", ["httpx2", "httpx"])
@pytest.mark.asyncio
async def test_rate_limit_headers_are_read_whatever_the_case_of_their_names(
    library: str,
) -> None:
    lib: Any = importlib.import_module(library)
    headers = [
        ("Content-Type", "application/json"),
        ("X-RateLimit-Limit-Tokens", "10000"),
        ("X-RATELIMIT-REMAINING-TOKENS", "6000"),
        ("x-ratelimit-reset-tokens", "1m0s"),
        ("X-Other", "caf\u00e9".encode()),  # not ASCII: never decoded
        ("Retry-After", "3"),
    ]
    body = json.dumps({"usage": {"prompt_tokens": 3, "completion_tokens": 5}}).encode()

    def answer(request: Any) -> Any:
        return lib.Response(200, headers=headers, content=body)

    limiter = tb.Limiter(tokens_per_minute=10_000)
    transport = tb.AsyncLimitedTransport(limiter, lib.MockTransport(answer))
    async with lib.AsyncClient(transport=transport) as client:
        payload = {"model": "m", "messages": [], "max_tokens": 100}
        response = await client.post("http://test/v1/chat/completions", json=payload)
    assert response.status_code == 200
    stats = limiter.statistics()
    assert 6_000 <= stats.available["tokens"] < 6_010  # lowered to what is left
    assert stats.paused_until is not None  # Retry-After read


@pytest.mark.parametrize("library", ["httpx2", "httpx"])
@pytest.mark.asyncio
async def test_a_rate_limit_field_sent_twice_is_read_joined_as_the_client_joins_it(
    library: str,
) -> None:
    """Two values of one field read as one, ``"6000, 5000"`` (what ``Headers.get``
    gives): not a count, so it warns and lowers nothing; the other fields still count."""
    lib: Any = importlib.import_module(library)
    headers = [
        ("content-type", "application/json"),
        ("x-ratelimit-remaining-tokens", "6000"),
        ("x-ratelimit-limit-requests", "100"),
        ("x-ratelimit-remaining-tokens", "5000"),
        ("x-ratelimit-remaining-requests", "40"),
    ]
    body = json.dumps({"usage": {"prompt_tokens": 3, "completion_tokens": 5}}).encode()

    def answer(request: Any) -> Any:
        return lib.Response(200, headers=headers, content=body)

    limiter = tb.Limiter(requests_per_minute=100, tokens_per_minute=10_000)
    transport = tb.AsyncLimitedTransport(limiter, lib.MockTransport(answer))
    async with lib.AsyncClient(transport=transport) as client:
        payload = {"model": "m", "messages": [], "max_tokens": 100}
        with pytest.warns(tb.RateLimitHeaderWarning, match=r"'6000, 5000'"):
            response = await client.post("http://test/v1/chat/completions", json=payload)
    assert response.status_code == 200
    stats = limiter.statistics()
    assert stats.available["tokens"] == 10_000 - 8  # settled from the JSON body's usage
    assert stats.available["requests"] == 40  # lowered to what the server said is left


@pytest.mark.parametrize("kind", ["application/json", "text/event-stream"])
def test_a_blank_content_encoding_is_none(kind: str) -> None:
    limiter = tb.Limiter(tokens_per_minute=1_000)
    settlement = _Settlement(limiter, limiter.acquire(), 200, kind, " \t")
    assert settlement._decoder is None
    assert settlement._event == (kind == "text/event-stream")
    assert (settlement._buffer is None) == settlement._event  # a JSON body is kept to read
