"""A loopback TCP proxy in front of a test's Redis that can make its connections half-dead.

``swallow()`` turns every connection open at that moment into one a crashed router or a
silent network partition leaves behind: still open, but whatever either side sends is
read and dropped, so a client waits for a reply that never comes. Connections made
afterwards are forwarded normally, as a replacement connection would be.
"""

from __future__ import annotations

import asyncio
import contextlib

__all__ = ["SwallowingProxy"]


class _Link:
    """One client connection and its connection to Redis."""

    __slots__ = ("swallowed", "writers")

    def __init__(self) -> None:
        self.swallowed = False
        self.writers: list[asyncio.StreamWriter] = []


class SwallowingProxy:
    """Forward ``127.0.0.1:<port>`` to Redis on ``target_port``; see the module."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._links: list[_Link] = []
        self._pumps: set[asyncio.Task[None]] = set()
        self.accepted = 0  # client connections made through the proxy

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def swallow(self) -> None:
        """From now on, drop all traffic of the connections open now (both ways)."""
        for link in self._links:
            link.swallowed = True

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in self._links:
            for writer in link.writers:
                writer.close()
        for pump in list(self._pumps):
            pump.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.accepted += 1
        link = _Link()
        try:
            redis_r, redis_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_w.close()
            return
        link.writers = [client_w, redis_w]
        self._links.append(link)
        for reader, writer in ((client_r, redis_w), (redis_r, client_w)):
            pump = asyncio.get_running_loop().create_task(self._pump(link, reader, writer))
            self._pumps.add(pump)
            pump.add_done_callback(self._pumps.discard)

    async def _pump(
        self, link: _Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                if not link.swallowed:
                    writer.write(data)
                    await writer.drain()
        if not link.swallowed:  # a swallowed link stays open until the proxy closes
            for other in link.writers:
                other.close()
