"""A loopback TCP proxy in front of a test's ``redis-server``: it can lose replies, slow
round trips down and make connections half-dead.

Each client connection gets its own connection to Redis and two pumps (client to Redis,
Redis to client). :meth:`Proxy.lose_reply` arms it: the next request whose bytes contain
a marker is forwarded to Redis (so the command runs), and when the reply comes back the
proxy drops it and closes both sides, as a network failure on the way back would.
``delay`` holds each request that long before forwarding it (every round trip takes at
least that long). :meth:`Proxy.swallow` turns every connection open at that moment into
one a crashed router or a silent partition leaves behind: still open, but whatever
either side sends is read and dropped; connections made afterwards are forwarded
normally, as a replacement connection would be. :meth:`Proxy.cut` closes every
connection and refuses new ones until :meth:`Proxy.mend`: Redis out of reach, its data
kept.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

__all__ = ["Proxy", "running_proxy"]

_CHUNK = 65536


class _Link:
    """One client connection and its connection to Redis."""

    __slots__ = ("doomed", "swallowed", "writers")

    def __init__(self, client: asyncio.StreamWriter, server: asyncio.StreamWriter) -> None:
        self.writers = (client, server)
        self.doomed = False  # a request was forwarded whose reply is to be lost
        self.swallowed = False  # half-dead: traffic both ways is read and dropped

    def close(self) -> None:
        for writer in self.writers:
            writer.close()


class Proxy:
    """Forward ``127.0.0.1:port`` to the Redis on ``target_port``."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.delay = 0.0  # seconds each request is held before it is forwarded
        self.lost = 0  # replies dropped so far
        self.accepted = 0  # client connections made through the proxy
        self.cut_off = False  # connections are closed and refused
        self._marker = b""
        self._to_lose = 0
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def lose_reply(self, marker: bytes, times: int = 1) -> None:
        """Lose the reply of the next ``times`` requests that contain ``marker``."""
        self._marker = marker
        self._to_lose = times

    def swallow(self) -> None:
        """From now on, drop all traffic of the connections open now (both ways)."""
        for link in self._links:
            link.swallowed = True

    def cut(self) -> None:
        """Close every connection, and refuse new ones until :meth:`mend`."""
        self.cut_off = True
        for link in list(self._links):
            link.close()
        self._links.clear()

    def mend(self) -> None:
        """Forward new connections again."""
        self.cut_off = False

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            link.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.cut_off:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        link = _Link(writer, up_writer)
        self._links.add(link)
        for coro in (self._requests(reader, up_writer, link), self._replies(up_reader, link)):
            task = asyncio.create_task(coro)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _requests(
        self, reader: asyncio.StreamReader, server: asyncio.StreamWriter, link: _Link
    ) -> None:
        try:
            while data := await reader.read(_CHUNK):
                if link.swallowed:
                    continue
                if self.delay:
                    await asyncio.sleep(self.delay)
                if self._to_lose and self._marker in data:
                    self._to_lose -= 1
                    link.doomed = True
                server.write(data)
                await server.drain()
        except OSError:
            pass
        finally:
            self._drop(link)

    async def _replies(self, reader: asyncio.StreamReader, link: _Link) -> None:
        client = link.writers[0]
        try:
            while data := await reader.read(_CHUNK):
                if link.swallowed:
                    continue
                if link.doomed:  # the command ran; its reply never reaches the client
                    self.lost += 1
                    break
                client.write(data)
                await client.drain()
        except OSError:
            pass
        finally:
            self._drop(link)

    def _drop(self, link: _Link) -> None:
        if link.swallowed:  # a half-dead connection stays open until the proxy closes
            return
        link.close()
        self._links.discard(link)


@contextlib.asynccontextmanager
async def running_proxy(target_port: int) -> AsyncIterator[Proxy]:
    proxy = Proxy(target_port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.aclose()
