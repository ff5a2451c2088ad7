"""A private ``redis-server`` per test, on a free port, that a test may stop and restart.

The fault tests kill Redis, so they never touch a shared server (such as the one on
6379): each starts its own, without persistence, and removes it afterwards.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
from typing import TYPE_CHECKING, Any

import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from tokenbucket._redis import RedisBackend

from ._proxy import Proxy, running_proxy

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator, Sequence

    MakeBackend = Callable[..., RedisBackend]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
            sock.sendall(b"PING\r\n")
            # A server with a password answers, though it refuses the PING.
            return sock.recv(16).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


class RedisServer:
    """One ``redis-server`` subprocess on a fixed port: start, kill, start again."""

    def __init__(self, port: int, args: Sequence[str] = ()) -> None:
        self.port = port
        self.args = tuple(args)  # more options (such as ``--requirepass``)
        self.url = f"redis://127.0.0.1:{port}/0"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the server (state empty) and wait until it answers PING."""
        assert not self.running
        self._process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                *self.args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 5.0
        while not _answers(self.port):
            if self._process.poll() is not None:
                raise RuntimeError(f"redis-server on port {self.port} exited at start")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"redis-server on port {self.port} did not answer")
            time.sleep(0.01)

    def kill(self) -> None:
        """Kill the server at once (SIGKILL: no shutdown, state lost) and reap it."""
        if self._process is not None:
            if self._process.poll() is None:
                self._process.kill()
            self._process.wait(timeout=5.0)
            self._process = None


def _need_redis_server() -> None:
    if shutil.which("redis-server") is None:
        message = (
            "the Redis fault tests need redis-server on PATH; install Redis "
            "(apt-get install redis-server, brew install redis) to run them"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A running private Redis; killed when the test ends, whatever happened."""
    _need_redis_server()
    server = RedisServer(_free_port())
    server.start()
    try:
        yield server
    finally:
        server.kill()


PASSWORD = "secret"  # the default user's password on ``secured_server``
USER_PASSWORD = "pw"  # every ACL user's password there

# ACL users of ``secured_server`` and their rules (besides ``on``, a password and ``~*``).
ACL_USERS = {
    "full": ("+@all",),
    "noscripts": ("+@all", "-evalsha", "-eval", "-script"),  # may not load or run scripts
    "noevalsha": ("+@all", "-evalsha"),  # may load scripts but not run them
    "nowrites": ("+@all", "-@write"),  # runs scripts, but they may not write
}


@pytest.fixture
def secured_server() -> Iterator[RedisServer]:
    """A private Redis that wants ``PASSWORD`` for the default user and has the users of
    ``ACL_USERS`` (password ``USER_PASSWORD``)."""
    from redis import Redis

    _need_redis_server()
    server = RedisServer(_free_port(), ["--requirepass", PASSWORD])
    server.start()
    try:
        admin = Redis(port=server.port, password=PASSWORD)
        try:
            for user, rules in ACL_USERS.items():
                admin.acl_setuser(
                    user,
                    enabled=True,
                    passwords=[f"+{USER_PASSWORD}"],
                    keys=["*"],
                    commands=list(rules),
                )
        finally:
            admin.close()
        yield server
    finally:
        server.kill()


@pytest.fixture
def dead_port() -> int:
    """A port where nothing listens."""
    return _free_port()


async def close(backend: RedisBackend) -> None:
    """Close a backend, whatever state its test left Redis in."""
    try:
        await asyncio.wait_for(backend.aclose(), 5.0)
    except TimeoutError:  # pragma: no cover - only if closing hangs
        await backend.client.aclose()


@pytest_asyncio.fixture
async def make_backend(
    redis_server: RedisServer, request: pytest.FixtureRequest
) -> AsyncIterator[MakeBackend]:
    """Backends on the test's server (key prefix: the test module's ``PREFIX``); all
    closed at the end, the server restarted first if the test left it dead, so closing
    cannot wait on an outage."""
    made: list[RedisBackend] = []
    prefix = getattr(request.module, "PREFIX", "faults")

    def make(client: aioredis.Redis | str | None = None, **options: Any) -> RedisBackend:
        backend = RedisBackend(client or redis_server.url, prefix=prefix, **options)
        made.append(backend)
        return backend

    yield make
    if not redis_server.running:
        await asyncio.to_thread(redis_server.start)
    for backend in made:
        await close(backend)


@pytest_asyncio.fixture
async def admin(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """A plain client on the test's server, to look at and damage the limiter's keys."""
    client = aioredis.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


@pytest_asyncio.fixture
async def proxy(redis_server: RedisServer) -> AsyncIterator[Proxy]:
    """A loopback proxy in front of the test's server (see ``_proxy``)."""
    async with running_proxy(redis_server.port) as running:
        yield running
