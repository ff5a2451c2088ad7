"""AsyncLimitedTransport under the real ``google-genai`` SDK, with a small in-test provider
speaking Gemini's wire format behind ``httpx2.MockTransport``: settle from
``usageMetadata``, ``streamGenerateContent?alt=sse``, routing by the model in the URL,
and 429s whose delay is a ``RetryInfo`` in the body."""

from __future__ import annotations

import asyncio
import gc
import gzip
import http.server
import json
import threading
import warnings
from typing import TYPE_CHECKING, Any

import httpx2
import pytest
from google import genai
from google.genai import errors, types

import tokenbucket as tb
from tokenbucket._transport import retry_info_delay

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator, Mapping

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(10)]

MODEL = "gemini-test"


def chunk(text: str, usage: Mapping[str, int] | None = None) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "candidates": [{"content": {"role": "model", "parts": [{"text": text}]}, "index": 0}],
        "modelVersion": MODEL,
    }
    if usage is not None:
        payload["usageMetadata"] = dict(usage)
    return payload


def usage(prompt: int, output: int) -> dict[str, int]:
    return {
        "promptTokenCount": prompt,
        "candidatesTokenCount": output,
        "totalTokenCount": prompt + output,
    }


async def events() -> AsyncIterator[bytes]:
    """Gemini's SSE stream: each chunk carries the usage so far."""
    for text, output in (("Hello", 1), (" there", 2), ("!", 4)):
        yield f"data: {json.dumps(chunk(text, usage(7, output)))}\r\n\r\n".encode()


def rate_limited(delay: str) -> httpx2.Response:
    """Gemini's 429: no Retry-After header, the delay in a RetryInfo of the body."""
    return httpx2.Response(
        429,
        json={
            "error": {
                "code": 429,
                "message": "Resource has been exhausted (e.g. check quota).",
                "status": "RESOURCE_EXHAUSTED",
                "details": [
                    {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": []},
                    {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay},
                ],
            }
        },
    )


def provider(request: httpx2.Request) -> httpx2.Response:
    if request.url.path.endswith(":streamGenerateContent"):
        assert request.url.params["alt"] == "sse"
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=events())
    assert request.url.path.endswith(":generateContent")
    return httpx2.Response(200, json=chunk("Hello!", usage(7, 3)))


def client_for(
    limits: tb.Limiter | tb.BucketGroup,
    handler: Callable[[httpx2.Request], httpx2.Response] = provider,
    retry: types.HttpRetryOptions | None = None,
    **options: Any,
) -> genai.Client:
    transport = tb.AsyncLimitedTransport(limits, transport=httpx2.MockTransport(handler), **options)
    return genai.Client(
        api_key="local",
        http_options=types.HttpOptions(
            base_url="http://gemini.test",
            httpx_async_client=httpx2.AsyncClient(transport=transport),
            retry_options=retry,
        ),
    )


async def generate(client: genai.Client, model: str = MODEL) -> types.GenerateContentResponse:
    return await client.aio.models.generate_content(
        model=model, contents="Say hello.", config={"max_output_tokens": 100}
    )


async def test_a_response_settles_from_its_usage_metadata() -> None:
    limiter = tb.Limiter(
        requests_per_minute=100, input_tokens_per_minute=1_000, tokens_per_minute=1_000
    )
    reply = await generate(client_for(limiter))
    assert reply.text == "Hello!"
    assert limiter.statistics().available == {
        "requests": 99.0,
        "tokens": 990.0,
        "input_tokens": 993.0,
    }
    assert limiter.statistics().in_flight == 0


async def test_a_stream_settles_from_its_last_usage_metadata() -> None:
    limiter = tb.Limiter(tokens_per_minute=1_000, max_concurrency=1)
    client = client_for(limiter)
    held, text = [], []
    async for piece in await client.aio.models.generate_content_stream(
        model=MODEL, contents="Say hello.", config={"max_output_tokens": 100}
    ):
        text.append(piece.text or "")
        held.append(limiter.statistics().in_flight)
    assert "".join(text) == "Hello there!"
    assert held == [1, 1, 1]
    assert limiter.statistics().in_flight == 0
    assert limiter.statistics().available == {"tokens": 1_000.0 - 11}


async def test_a_group_routes_by_the_model_in_the_url() -> None:
    group = tb.BucketGroup(
        {"gemini-pro": tb.Limiter(tokens_per_minute=1_000)},
        default={"tokens_per_minute": 5_000},
    )
    client = client_for(group)
    await generate(client, "gemini-pro")
    await generate(client, "gemini-flash")
    assert group["gemini-pro"].statistics().available == {"tokens": 990.0}
    assert group["gemini-flash"].statistics().available == {"tokens": 4_990.0}


async def test_a_429_pauses_the_limiter_for_the_retry_info_in_its_body() -> None:
    limiter = tb.Limiter(requests_per_minute=1000, tokens_per_minute=10_000)
    with pytest.raises(errors.ClientError) as caught:
        await generate(client_for(limiter, lambda _: rate_limited("30s")))
    assert caught.value.code == 429
    assert caught.value.status == "RESOURCE_EXHAUSTED"  # the SDK still read the body
    stats = limiter.statistics()
    assert stats.paused_until is not None
    now = asyncio.get_running_loop().time()
    assert now + 25 < stats.paused_until <= now + 30
    assert stats.available["tokens"] == 10_000.0
    assert stats.in_flight == 0


async def test_each_sdk_retry_acquires_again_after_the_retry_delay() -> None:
    acquisitions: list[Mapping[str, Any]] = []

    def cost(body: Mapping[str, Any]) -> Mapping[str, float]:
        acquisitions.append(body)
        return {"requests": 1}

    answers = iter([lambda _: rate_limited("0.2s"), provider])
    limiter = tb.Limiter(requests_per_minute=100)
    retry = types.HttpRetryOptions(attempts=3, initial_delay=0.01, max_delay=0.01, jitter=0)
    client = client_for(limiter, lambda request: next(answers)(request), retry, cost=cost)
    loop = asyncio.get_running_loop()
    start = loop.time()
    reply = await generate(client)
    assert reply.text == "Hello!"
    assert len(acquisitions) == 2
    # the retry waited out the RetryInfo's 0.2 s (not the SDK's 0.01 s, nor the 1 s a 429
    # without a delay pauses for)
    assert 0.2 <= loop.time() - start < 0.9
    assert limiter.statistics().available == {"requests": 98.0}


@pytest.mark.parametrize(
    ("body", "delay"),
    [
        (
            b'{"error": {"details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", '
            b'"retryDelay": "7s"}]}}',
            7.0,
        ),
        (
            b'[{"error": {"details": [{"@type": "google.rpc.RetryInfo", "retryDelay": "0.5s"}]}}]',
            0.5,
        ),
        (
            b'{"error": {"details": [{"@type": "google.rpc.RetryInfo", "retryDelay": "soon"}]}}',
            None,
        ),
        (b'{"error": {"details": [{"@type": "google.rpc.QuotaFailure"}]}}', None),
        (b'{"error": "busy"}', None),
        (b"not json", None),
    ],
)
async def test_only_a_retry_info_gives_a_delay(body: bytes, delay: float | None) -> None:
    assert retry_info_delay(body) == delay


async def test_a_retry_after_header_wins_over_the_body() -> None:
    def handler(_: httpx2.Request) -> httpx2.Response:
        response = rate_limited("30s")
        response.headers["retry-after"] = "2"
        return response

    limiter = tb.Limiter(requests_per_minute=1000)
    with pytest.raises(errors.ClientError):
        await generate(client_for(limiter, handler))
    paused = limiter.statistics().paused_until
    assert paused is not None
    assert paused <= asyncio.get_running_loop().time() + 2


class _Exhausted(http.server.BaseHTTPRequestHandler):
    """A real server's 429: gzip-encoded JSON with a RetryInfo, no Retry-After."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        body = gzip.compress(rate_limited("20s").content)
        self.send_response(429)
        self.send_header("content-type", "application/json; charset=UTF-8")
        self.send_header("content-encoding", "gzip")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def serving(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    """A local HTTP server of ``handler`` in a thread, for as long as the fixture lasts:
    its URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def exhausted_url() -> Iterator[str]:
    yield from serving(_Exhausted)


async def test_the_retry_info_of_a_real_gzip_429_is_read_and_the_sdk_gets_it(
    exhausted_url: str,
) -> None:
    limiter = tb.Limiter(requests_per_minute=1000, max_concurrency=1)
    transport = tb.AsyncLimitedTransport(limiter)  # the default httpx2 transport, real sockets
    client = genai.Client(
        api_key="local",
        http_options=types.HttpOptions(
            base_url=exhausted_url, httpx_async_client=httpx2.AsyncClient(transport=transport)
        ),
    )
    with pytest.raises(errors.ClientError) as caught:
        await generate(client)
    assert caught.value.status == "RESOURCE_EXHAUSTED"
    paused = limiter.statistics().paused_until
    assert paused is not None
    assert paused > asyncio.get_running_loop().time() + 15
    assert limiter.statistics().in_flight == 0


def _sse(payload: Mapping[str, Any]) -> bytes:
    return f"data: {json.dumps(payload)}\r\n\r\n".encode()


def prompt_estimate() -> float:
    """What the transport estimates for the input of :func:`generate`'s prompt."""
    return tb.estimate_tokens([{"text": "Say hello."}])


class _Stalled:
    """A Gemini SSE provider whose streams send one event (with its usage so far), then
    stall until the test lets them finish."""

    def __init__(self) -> None:
        self.finish = asyncio.Event()

    async def _events(self) -> AsyncIterator[bytes]:
        yield _sse(chunk("Hel", usage(7, 1)))
        await self.finish.wait()
        yield _sse(chunk("lo", usage(7, 2)))

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        if request.url.path.endswith(":streamGenerateContent"):
            return httpx2.Response(
                200, headers={"content-type": "text/event-stream"}, content=self._events()
            )
        return provider(request)


def stream(client: genai.Client) -> Any:
    return client.aio.models.generate_content_stream(
        model=MODEL, contents="Say hello.", config={"max_output_tokens": 100}
    )


async def let_run() -> None:
    """Let every ready task run as far as it can without the test's help."""
    for _ in range(20):
        await asyncio.sleep(0)


async def test_a_stream_holds_its_slot_until_it_is_read_to_its_end() -> None:
    limiter = tb.Limiter(max_concurrency=1, tokens_per_minute=1_000)
    server = _Stalled()
    client = client_for(limiter, server)
    pieces = await stream(client)
    assert (await pieces.__anext__()).text == "Hel"
    second = asyncio.create_task(generate(client))
    await let_run()
    assert not second.done()
    assert limiter.statistics().waiters == 1
    assert limiter.statistics().in_flight == 1
    server.finish.set()
    assert [piece.text async for piece in pieces] == ["lo"]
    reply = await asyncio.wait_for(second, 5)
    assert reply.text == "Hello!"
    stats = limiter.statistics()
    assert (stats.in_flight, stats.waiters) == (0, 0)
    # the stream settled from its last usage (7 + 2), the call from its own (7 + 3)
    assert stats.available == {"tokens": 1_000.0 - 9 - 10}


async def test_a_stream_closed_early_frees_its_slot_once_the_sdk_closes_its_body() -> None:
    limiter = tb.Limiter(max_concurrency=1, tokens_per_minute=1_000)
    client = client_for(limiter, _Stalled())
    pieces = await stream(client)
    assert (await pieces.__anext__()).text == "Hel"
    second = asyncio.create_task(generate(client))
    await pieces.aclose()
    # google-genai closes the HTTP response in a `finally` of a generator that its
    # HttpResponse refers to (and that refers to it): only the garbage collector finalizes
    # it, a few loop turns later as each of the SDK's generators around it is finalized.
    # Until then the body is open, and the slot taken.
    del pieces
    for _ in range(100):
        if second.done():
            break
        gc.collect()
        await asyncio.sleep(0)
    reply = await asyncio.wait_for(second, 5)
    assert reply.text == "Hello!"
    stats = limiter.statistics()
    assert (stats.in_flight, stats.waiters) == (0, 0)
    # the closed stream settled from the usage it had seen (7 + 1)
    assert stats.available == {"tokens": 1_000.0 - 8 - 10}


async def test_cancelling_a_call_mid_stream_releases_its_slot_and_settles() -> None:
    limiter = tb.Limiter(max_concurrency=1, tokens_per_minute=1_000)
    server = _Stalled()
    client = client_for(limiter, server)
    texts: list[str | None] = []
    received = asyncio.Event()

    async def consume() -> None:
        async for piece in await stream(client):  # then waits for the stalled second event
            texts.append(piece.text)
            received.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(received.wait(), 5)
    assert texts == ["Hel"]
    assert limiter.statistics().in_flight == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    stats = limiter.statistics()
    assert (stats.in_flight, stats.waiters) == (0, 0)
    # settled from the usage seen before the cancel (7 + 1), not the estimate of 103
    assert stats.available == {"tokens": 1_000.0 - 8}
    # the slot is really free: the next call is served
    assert (await asyncio.wait_for(generate(client), 5)).text == "Hello!"
    assert limiter.statistics().available == {"tokens": 1_000.0 - 8 - 10}
    assert limiter.statistics().in_flight == 0


def catalogue(request: httpx2.Request) -> httpx2.Response:
    """Gemini's calls that are not model calls, and a model call that is not JSON."""
    path = request.url.path
    if request.method == "GET" and path.endswith("/models"):
        return httpx2.Response(
            200, json={"models": [{"name": f"models/{MODEL}", "displayName": "Test"}]}
        )
    if request.method == "GET" and path.endswith("/files"):
        return httpx2.Response(
            200, json={"files": [{"name": "files/abc", "mimeType": "text/plain"}]}
        )
    if path.endswith(":countTokens"):
        return httpx2.Response(200, json={"totalTokens": 3})
    try:
        json.loads(request.content)
    except ValueError:
        return httpx2.Response(
            400,
            json={"error": {"code": 400, "message": "Invalid JSON", "status": "INVALID_ARGUMENT"}},
        )
    return provider(request)


async def test_listing_models_and_files_and_counting_tokens_pass_unlimited() -> None:
    limiter = tb.Limiter(requests_per_minute=1, tokens_per_minute=10, max_concurrency=1)
    # every call through a limited path would wait (a minute for its request, forever for
    # its tokens) and time out after 0.1 s
    client = client_for(limiter, catalogue, timeout=0.1)
    for _ in range(3):
        models = [model.name async for model in await client.aio.models.list()]
        assert models == [f"models/{MODEL}"]
        files = [file.name async for file in await client.aio.files.list()]
        assert files == ["files/abc"]
        counted = await client.aio.models.count_tokens(model=MODEL, contents="Say hello." * 50)
        assert counted.total_tokens == 3
    stats = limiter.statistics()
    assert stats.available == {"requests": 1.0, "tokens": 10.0}
    assert stats.in_flight == 0


async def test_a_model_call_whose_body_is_not_json_costs_one_request_of_its_model() -> None:
    group = tb.BucketGroup(
        {"gemini-pro": tb.Limiter(requests_per_minute=10, tokens_per_minute=1_000)},
        default={"requests_per_minute": 10, "tokens_per_minute": 1_000},
    )
    transport = tb.AsyncLimitedTransport(group, transport=httpx2.MockTransport(catalogue))
    # the SDK only sends JSON: the same transport, through a plain client
    async with httpx2.AsyncClient(base_url="http://gemini.test", transport=transport) as client:
        response = await client.post(
            "/v1beta/models/gemini-pro:generateContent",
            content=b"{nope",
            headers={"content-type": "application/json"},
        )
    assert response.status_code == 400
    assert response.json()["error"]["status"] == "INVALID_ARGUMENT"
    stats = group["gemini-pro"].statistics()
    assert stats.available == {"requests": 9.0, "tokens": 1_000.0}
    assert stats.in_flight == 0


async def plain_events() -> AsyncIterator[bytes]:
    """Gemini's SSE stream from a server that reports no usage."""
    for text in ("Hello", " there", "!"):
        yield _sse(chunk(text))


def without_usage(request: httpx2.Request) -> httpx2.Response:
    if request.url.path.endswith(":streamGenerateContent"):
        return httpx2.Response(
            200, headers={"content-type": "text/event-stream"}, content=plain_events()
        )
    return httpx2.Response(200, json=chunk("Hello!"))


@pytest.mark.parametrize("streamed", [False, True], ids=["json", "sse"])
async def test_a_response_without_usage_metadata_keeps_the_estimate(streamed: bool) -> None:
    limiter = tb.Limiter(
        tokens_per_minute=1_000, input_tokens_per_minute=1_000, output_tokens_per_minute=1_000
    )
    client = client_for(limiter, without_usage)
    if streamed:
        text = "".join([piece.text or "" async for piece in await stream(client)])
        assert text == "Hello there!"
    else:
        reply = await generate(client)
        assert reply.text == "Hello!"
        assert reply.usage_metadata is None
    stats = limiter.statistics()
    assert stats.in_flight == 0
    assert stats.available == {
        "tokens": 1_000.0 - prompt_estimate() - 100,
        "input_tokens": 1_000.0 - prompt_estimate(),
        "output_tokens": 1_000.0 - 100,  # the config's max_output_tokens
    }


MALFORMED = {"x-ratelimit-remaining-tokens": "lots", "x-ratelimit-remaining-requests": "5"}


def with_malformed_headers(request: httpx2.Request) -> httpx2.Response:
    response = provider(request)
    response.headers.update(MALFORMED)
    return response


async def call(client: genai.Client, streamed: bool) -> str:
    if streamed:
        return "".join([piece.text or "" async for piece in await stream(client)])
    return (await generate(client)).text or ""


@pytest.mark.parametrize("streamed", [False, True], ids=["json", "sse"])
async def test_malformed_rate_limit_headers_warn_and_lose_nothing(streamed: bool) -> None:
    limiter = tb.Limiter(requests_per_minute=100, tokens_per_minute=1_000)
    client = client_for(limiter, with_malformed_headers)
    with pytest.warns(tb.RateLimitHeaderWarning, match="x-ratelimit-remaining-tokens") as caught:
        text = await call(client, streamed)
    assert text == ("Hello there!" if streamed else "Hello!")
    assert len(caught) == 1
    stats = limiter.statistics()
    assert stats.in_flight == 0
    # the well-formed header still lowered requests to what the server said was left;
    # the tokens were settled from the usage (7 + 4 streamed, 7 + 3 not)
    assert stats.available == {"requests": 5.0, "tokens": 1_000.0 - (11 if streamed else 10)}


async def test_malformed_rate_limit_headers_never_fail_a_call_even_as_errors() -> None:
    limiter = tb.Limiter(requests_per_minute=100, tokens_per_minute=1_000)
    client = client_for(limiter, with_malformed_headers)
    with warnings.catch_warnings():
        warnings.simplefilter("error", tb.RateLimitHeaderWarning)
        assert await call(client, streamed=False) == "Hello!"
        assert await call(client, streamed=True) == "Hello there!"
    assert limiter.statistics().in_flight == 0
    assert limiter.statistics().available["tokens"] == 1_000.0 - 10 - 11


class _Dropping(http.server.BaseHTTPRequestHandler):
    """A real server that promises a long SSE body, sends one event and hangs up."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("content-length", "100000")
        self.end_headers()
        self.wfile.write(_sse(chunk("Hel", usage(7, 1))))
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def dropping_url() -> Iterator[str]:
    yield from serving(_Dropping)


def real_client(url: str, transport: Any = None) -> genai.Client:
    return genai.Client(
        api_key="local",
        http_options=types.HttpOptions(
            base_url=url, httpx_async_client=httpx2.AsyncClient(transport=transport)
        ),
    )


async def test_a_server_that_drops_a_stream_gives_the_sdk_error_and_leaks_nothing(
    dropping_url: str,
) -> None:
    texts: list[str | None] = []

    async def consume(client: genai.Client) -> None:
        async for piece in await stream(client):
            texts.append(piece.text)  # noqa: PERF401 (kept when the stream fails)

    # what google-genai raises without the transport: it does not wrap an error of the
    # body's transfer, the caller gets httpx2's
    with pytest.raises(httpx2.TransportError) as unlimited:
        await consume(real_client(dropping_url))
    assert type(unlimited.value) is httpx2.RemoteProtocolError
    texts.clear()

    limiter = tb.Limiter(max_concurrency=1, tokens_per_minute=1_000)
    # the default httpx2 transport, real sockets
    client = real_client(dropping_url, tb.AsyncLimitedTransport(limiter))
    with pytest.raises(httpx2.RemoteProtocolError):
        await consume(client)
    assert texts == ["Hel"]
    stats = limiter.statistics()
    assert (stats.in_flight, stats.waiters) == (0, 0)
    assert stats.available == {"tokens": 1_000.0 - 8}  # the usage seen before the drop


QUOTA_FAILURE = {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": []}
BAD_RETRY_INFO = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "later"}


@pytest.mark.parametrize(
    "details",
    [
        pytest.param([QUOTA_FAILURE], id="no-retry-info"),
        pytest.param([QUOTA_FAILURE, BAD_RETRY_INFO], id="malformed-retry-delay"),
        pytest.param(None, id="not-json"),
    ],
)
async def test_a_429_without_a_delay_pauses_the_limiter_for_one_second(
    details: list[dict[str, Any]] | None,
) -> None:
    def exhausted(_: httpx2.Request) -> httpx2.Response:
        if details is None:
            return httpx2.Response(429, text="Too Many Requests")
        error = {"code": 429, "status": "RESOURCE_EXHAUSTED", "details": details}
        return httpx2.Response(429, json={"error": error})

    limiter = tb.Limiter(requests_per_minute=1000, tokens_per_minute=10_000)
    loop = asyncio.get_running_loop()
    before = loop.time()
    with pytest.raises(errors.ClientError) as caught:
        await generate(client_for(limiter, exhausted))
    after = loop.time()
    assert caught.value.code == 429
    if details is not None:
        assert caught.value.status == "RESOURCE_EXHAUSTED"  # the SDK still read the body
    stats = limiter.statistics()
    assert stats.paused_until is not None
    assert before + 1 <= stats.paused_until <= after + 1
    assert stats.available == {"requests": 999.0, "tokens": 10_000.0}  # tokens given back
    assert stats.in_flight == 0
