"""Running the fake provider: ``LLMServer``, and the command line::

    python examples/fake_provider/server.py --rpm 600 --tpm 60000 --period 6

(``--help`` lists the flags; time is compressed: the limits are per ``--period`` seconds).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:
    # Run as a file: import this module from its package instead, with this folder off
    # sys.path (its http.py would shadow the standard library's http).
    sys.path[0] = str(Path(__file__).resolve().parents[1])
    from fake_provider import server

    raise SystemExit(server.main())

import argparse
import asyncio
import contextlib
import math
import random
import threading
import time
from typing import TYPE_CHECKING, Any, Final

from .http import MAX_HEAD, ChatAPI
from .provider import DEFAULT_MAX_TOKENS, Admitted, ChatRequest, Provider, Refused, ServerStats

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

_BACKLOG: Final = 2048


class LLMServer:
    """An OpenAI- and Anthropic-compatible chat server on 127.0.0.1 that enforces request
    and token limits.

    ``rpm``, ``tpm``, ``period``, ``count_usage`` and Anthropic's separate input and
    output limits ``itpm`` and ``otpm`` (none by default) are the ``Provider``'s.
    ``latency`` is a ``(low, high)`` range in seconds, or one number, for admitted
    requests; ``event_delay``
    and ``drop_after`` shape streams, ``usage=False`` leaves usage out of every answer and
    ``headers`` replace or add headers on every answer to a model call (see ``ChatAPI``).
    ``clock`` is the monotonic clock the limits and statistics use; tests can pass a fake
    one. ``epoch`` is the Unix time at the clock's reading when the server is made
    (default: now): Anthropic's reset headers are wall-clock times, ``epoch`` plus the
    clock's advance since.

    The OpenAI SDK takes ``base_url`` (``.../v1``), the Anthropic SDK ``url`` (it adds
    ``/v1/messages`` itself)::

        anthropic.AsyncAnthropic(base_url=server.url, api_key="local")

    Use it as a context manager (or call ``start()`` and ``close()``); the server runs on
    its own event loop in a daemon thread. ``stats()``, ``reset_stats()`` and ``refill()``
    are safe to call from any thread.
    """

    def __init__(
        self,
        *,
        rpm: int,
        tpm: int,
        period: float = 60.0,
        latency: float | tuple[float, float] = (0.05, 0.2),
        seed: int = 0,
        default_max_tokens: int = DEFAULT_MAX_TOKENS,
        port: int = 0,
        clock: Callable[[], float] = time.monotonic,
        count_usage: bool = False,
        event_delay: float = 0.0,
        drop_after: int | None = None,
        usage: bool = True,
        headers: Mapping[str, str] | None = None,
        epoch: float | None = None,
        itpm: int | None = None,
        otpm: int | None = None,
    ) -> None:
        start = clock()
        self._provider = Provider(
            rpm=rpm,
            tpm=tpm,
            period=period,
            now=start,
            count_usage=count_usage,
            itpm=itpm,
            otpm=otpm,
        )
        self._wall_offset = (time.time() if epoch is None else epoch) - start
        low, high = (latency, latency) if isinstance(latency, (int, float)) else latency
        if not (math.isfinite(high) and 0 <= low <= high):
            raise ValueError(f"latency must be 0 <= low <= high, got {latency!r}")
        if default_max_tokens < 1:
            raise ValueError(f"default_max_tokens must be positive, got {default_max_tokens!r}")
        self.rpm, self.tpm, self.period = rpm, tpm, self._provider.period
        self.latency = (float(low), float(high))
        self._clock = clock
        self._lock = threading.Lock()  # the provider is used from the server thread and others
        self._api = ChatAPI(
            self._answer,
            self.latency,
            random.Random(seed),
            default_max_tokens,
            event_delay,
            drop_after,
            self._answer_messages,
            usage,
            dict(headers or {}),
        )
        self._requested_port = port
        self._port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[Any]] = set()

    def start(self) -> LLMServer:
        """Bind a port and start serving; returns once the server accepts connections."""
        if self._loop is not None:
            raise RuntimeError("LLMServer.start() called twice")
        self._loop = loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=loop.run_forever, name="LLMServer", daemon=True)
        self._thread.start()
        opening = asyncio.start_server(
            self._serve, "127.0.0.1", self._requested_port, backlog=_BACKLOG, limit=MAX_HEAD
        )
        try:
            self._server = asyncio.run_coroutine_threadsafe(opening, loop).result()
        except BaseException:
            self.close()
            raise
        self._port = self._server.sockets[0].getsockname()[1]
        return self

    def close(self) -> None:
        """Stop serving, drop open connections and join the server thread. Idempotent."""
        loop, thread, server = self._loop, self._thread, self._server
        if loop is None or thread is None or not thread.is_alive():
            return
        if server is not None:
            asyncio.run_coroutine_threadsafe(self._shutdown(server), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()

    def __enter__(self) -> LLMServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the server is not running; call start() or use `with`")
        return self._port

    @property
    def url(self) -> str:
        """The server's root, e.g. ``http://127.0.0.1:8123``: the Anthropic SDK's base URL."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI base URL, e.g. ``http://127.0.0.1:8123/v1``."""
        return f"{self.url}/v1"

    def stats(self) -> ServerStats:
        with self._lock:
            return self._provider.stats

    def reset_stats(self) -> None:
        with self._lock:
            self._provider.reset_stats()

    def refill(self) -> None:
        """Fill both buckets, as if the server had been idle for a whole period."""
        with self._lock:
            self._provider.refill(self._clock())

    def __repr__(self) -> str:
        where = self.base_url if self._port is not None else "not started"
        return (
            f"<LLMServer {where} rpm={self.rpm} tpm={self.tpm} per {self.period:g}s {self.stats()}>"
        )

    def _answer(self, request: ChatRequest) -> Admitted | Refused:
        with self._lock:
            return self._provider.chat(request, self._clock())

    def _answer_messages(self, request: ChatRequest) -> Admitted | Refused:
        with self._lock:
            now = self._clock()
            return self._provider.messages(request, now, now + self._wall_offset)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._api.serve(reader, writer)
        except asyncio.CancelledError:
            pass  # by close(); ending quietly spares the "Exception in callback" log of 3.11
        finally:
            self._connections.discard(task)

    async def _shutdown(self, server: asyncio.Server) -> None:
        server.close()
        await asyncio.sleep(0)  # let just-accepted connections register themselves
        while self._connections:
            pending = list(self._connections)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await server.wait_closed()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Serve OpenAI- and Anthropic-compatible chat APIs with provider-style "
        "rate limits."
    )
    parser.add_argument("--rpm", type=int, default=600, help="requests per period")
    parser.add_argument("--tpm", type=int, default=60_000, help="tokens per period")
    parser.add_argument("--itpm", type=int, help="input tokens per period (Anthropic's ITPM)")
    parser.add_argument("--otpm", type=int, help="output tokens per period (Anthropic's OTPM)")
    parser.add_argument("--period", type=float, default=60.0, help="period in seconds")
    parser.add_argument(
        "--latency",
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        default=(0.05, 0.2),
        help="simulated latency range in seconds (default 0.05 0.2)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for the latency draw")
    parser.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    with LLMServer(**vars(parser.parse_args(argv))) as server:
        print(
            f"Serving {server.base_url}  ({server.rpm} requests and {server.tpm} tokens "
            f"per {server.period:g} s; Ctrl-C to stop)",
            flush=True,
        )
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)
        print(f"\n{server.stats()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
