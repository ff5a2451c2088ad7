"""A private ``redis-server`` per test, on a free port, that a test may stop and restart.

The fault tests kill Redis, so they never touch a shared server (such as the one on
6379): each starts its own, without persistence, and removes it afterwards.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One ``redis-server`` subprocess on a fixed port: start, kill, start again."""

    def __init__(self, port: int) -> None:
        self.port = port
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


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A running private Redis; killed when the test ends, whatever happened."""
    if shutil.which("redis-server") is None:
        message = (
            "the Redis fault tests need redis-server on PATH; install Redis "
            "(apt-get install redis-server, brew install redis) to run them"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    server = RedisServer(_free_port())
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def dead_port() -> int:
    """A port where nothing listens."""
    return _free_port()
