"""A local HTTP server with a knee, in a process of its own: a fixed number of workers.

Each ``GET /work`` waits in a FIFO queue for a free worker, which serves it for
``service`` seconds (times a random factor within ``1 +- jitter``): below ``workers``
calls in flight, latency is the service time; above, calls queue and latency grows with
them (in flight = throughput x latency), while the throughput stays at ``workers /
service``. A call that finds ``queue`` calls already waiting is answered ``503`` at once.
``set_workers(n)`` changes the capacity while it runs (calls in service finish; new ones
start only while fewer than ``n`` are served). Standard library only::

    with KneeServer(workers=8, service=0.05, queue=8) as server:
        ...  # GET server.url + "/work"
        server.set_workers(4)
        print(server.stats())
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import random
from collections import deque
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from types import TracebackType

__all__ = ["KneeServer"]


class _Workers:
    """The workers and their FIFO queue, in the server's event loop."""

    def __init__(self, workers: int, service: float, jitter: float, queue: int, seed: int):
        self.workers = workers
        self.service = service
        self.jitter = jitter
        self.bound = queue
        self.busy = 0
        self.waiting: deque[asyncio.Future[None]] = deque()
        self.random = random.Random(seed)
        self.served = self.refused = 0

    async def work(self) -> int:
        """Serve one call: its status."""
        if self.busy >= self.workers or self.waiting:
            if len(self.waiting) >= self.bound:
                self.refused += 1
                return 503
            turn = asyncio.get_running_loop().create_future()
            self.waiting.append(turn)
            try:
                await turn  # (a worker was handed over: busy already counts it)
            except asyncio.CancelledError:
                if turn.done() and not turn.cancelled():
                    self._free()
                else:
                    self.waiting.remove(turn)
                raise
        else:
            self.busy += 1
        try:
            factor = 1.0 + self.random.uniform(-self.jitter, self.jitter)
            await asyncio.sleep(self.service * factor)
            self.served += 1
            return 200
        finally:
            self._free()

    def _free(self) -> None:
        self.busy -= 1
        self.hand_over()

    def hand_over(self) -> None:
        while self.waiting and self.busy < self.workers:
            self.busy += 1
            self.waiting.popleft().set_result(None)


async def _serve(workers: _Workers, port: int, ready: Connection) -> None:
    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                line = head.split(b"\r\n", 1)[0].decode("latin-1")
                _, path, _ = line.split(" ", 2)
                if path.startswith("/workers/"):
                    workers.workers = max(1, int(path.rsplit("/", 1)[1]))
                    workers.hand_over()
                    status, body = 200, b""
                elif path.startswith("/work"):
                    status, body = await workers.work(), b""
                else:  # /stats
                    status = 200
                    body = json.dumps(
                        {
                            "served": workers.served,
                            "refused": workers.refused,
                            "busy": workers.busy,
                            "waiting": len(workers.waiting),
                            "workers": workers.workers,
                        }
                    ).encode()
                reason = "OK" if status == 200 else "Service Unavailable"
                writer.write(
                    f"HTTP/1.1 {status} {reason}\r\nContent-Length: {len(body)}\r\n"
                    f"Content-Type: application/json\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(connection, "127.0.0.1", port, backlog=1024)
    ready.send(server.sockets[0].getsockname()[1])
    async with server:
        await server.serve_forever()


def _main(options: dict[str, Any], port: int, ready: Connection) -> None:
    asyncio.run(_serve(_Workers(**options), port, ready))


class KneeServer:
    """The server, in a child process (so that it does not share the client's CPU)."""

    def __init__(
        self,
        *,
        workers: int = 8,
        service: float = 0.05,
        jitter: float = 0.2,
        queue: int = 8,
        seed: int = 0,
        port: int = 0,
    ) -> None:
        if workers < 1 or queue < 0 or service <= 0 or not 0 <= jitter < 1:
            raise ValueError("need workers >= 1, queue >= 0, service > 0, 0 <= jitter < 1")
        self.options = {
            "workers": workers,
            "service": service,
            "jitter": jitter,
            "queue": queue,
            "seed": seed,
        }
        self._port = port
        self._process: multiprocessing.Process | None = None
        self.url = ""

    def start(self) -> KneeServer:
        """Start the process; returns once it accepts connections."""
        receive, send = multiprocessing.Pipe(duplex=False)
        self._process = multiprocessing.Process(
            target=_main, args=(self.options, self._port, send), daemon=True
        )
        self._process.start()
        if not receive.poll(30):
            self.close()
            raise RuntimeError("the knee server did not start")
        self.url = f"http://127.0.0.1:{receive.recv()}"
        return self

    def set_workers(self, workers: int) -> None:
        """Change the number of workers (the capacity), now."""
        self._get(f"/workers/{workers}")

    def stats(self) -> dict[str, int]:
        """Calls served and refused so far, and the workers' state now."""
        stats: dict[str, int] = json.loads(self._get("/stats"))
        return stats

    def _get(self, path: str) -> bytes:
        import urllib.request

        with urllib.request.urlopen(self.url + path, timeout=10) as answer:
            body: bytes = answer.read()
            return body

    def close(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.join(5)
            self._process = None

    def __enter__(self) -> KneeServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
