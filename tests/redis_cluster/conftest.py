"""A private Redis Cluster per module (or per test, for one it may damage).

Six ``redis-server`` processes on free ports, without persistence, each in its own
directory: three masters and one replica each (so that a master can fail over), joined
by ``redis-cli --cluster create``. Every wait is bounded; every process is killed at the
end, whatever happened. Like the fault tests, these skip without ``redis-server`` and
``redis-cli`` on a developer machine and fail under ``CI``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from typing import TYPE_CHECKING

import pytest

from redis import Redis
from tests.redis_faults.conftest import RedisServer

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

MASTERS = 3
NODES = MASTERS * 2  # one replica per master
NODE_TIMEOUT_MS = 1000
BUS_OFFSET = 10000  # a node's cluster bus listens this far above its port
START_TIMEOUT = 20.0  # seconds, for the cluster to form


class Cluster:
    """The nodes of a running cluster (by port), and how to look at them."""

    def __init__(self, nodes: dict[int, RedisServer]) -> None:
        self.nodes = nodes

    @property
    def ports(self) -> list[int]:
        return [port for port, node in self.nodes.items() if node.running]

    def admin(self, port: int) -> Redis:
        return Redis(port=port, socket_timeout=2, socket_connect_timeout=2)

    def masters(self) -> list[int]:
        """The ports of the running nodes that say they are masters."""
        found = []
        for port in self.ports:
            with self.admin(port) as client:
                if client.execute_command("ROLE")[0] in (b"master", "master"):
                    found.append(port)
        return found

    def master_of(self, slot: int) -> int:
        """The port of the running master that serves ``slot``."""
        for port in self.masters():
            with self.admin(port) as client:
                for start, end, master, *_ in client.execute_command("CLUSTER SLOTS"):
                    if start <= slot <= end and int(master[1]) == port:
                        return port
        raise LookupError(f"no master serves slot {slot}")

    def all_keys(self) -> list[bytes]:
        """Every key on every master."""
        found: list[bytes] = []
        for port in self.masters():
            with self.admin(port) as client:
                found.extend(client.scan_iter(count=1000))
        return found

    def keyslot(self, key: bytes | str) -> int:
        with self.admin(self.ports[0]) as client:
            slot: int = client.execute_command("CLUSTER KEYSLOT", key)
            return slot

    def wait_ok(self, timeout: float = START_TIMEOUT) -> None:
        """Wait until every running node says ``cluster_state:ok``."""
        deadline = time.monotonic() + timeout
        while not all(self._ok(port) for port in self.ports):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster was not ok within {timeout} s")
            time.sleep(0.05)

    def _ok(self, port: int) -> bool:
        try:
            with self.admin(port) as client:
                info = client.execute_command("CLUSTER INFO")
        except Exception:
            return False
        if isinstance(info, dict):  # redis-py parses the reply
            return str(info.get("cluster_state")) == "ok"
        text = info.decode() if isinstance(info, bytes) else str(info)
        return "cluster_state:ok" in text

    def kill(self) -> None:
        for node in self.nodes.values():
            node.kill()


def _free_port() -> int:
    """A free port whose cluster bus port (10000 above it) is free too."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port + BUS_OFFSET > 65535:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as bus:
            try:
                bus.bind(("127.0.0.1", port + BUS_OFFSET))
            except OSError:
                continue
        return port
    raise RuntimeError("found no free port with a free cluster bus port")


def _need_redis_tools() -> None:
    missing = [tool for tool in ("redis-server", "redis-cli") if shutil.which(tool) is None]
    if missing:
        message = (
            f"the Redis Cluster tests need {' and '.join(missing)} on PATH; install Redis "
            "(apt-get install redis-server redis-tools, brew install redis) to run them"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def start_cluster(directory: Path) -> Cluster:
    """Start the six nodes in ``directory`` and join them; killed if anything fails."""
    nodes: dict[int, RedisServer] = {}
    cluster = Cluster(nodes)
    try:
        for _ in range(NODES):
            port = _free_port()
            home = directory / str(port)
            home.mkdir()
            node = RedisServer(
                port,
                [
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", str(home / f"nodes-{port}.conf"),
                    "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
                    "--dir", str(home),
                    "--logfile", str(home / "redis.log"),
                    # A replica syncs at once (not 5 s later): one that never synced
                    # cannot fail over.
                    "--repl-diskless-sync-delay", "0",
                ],
            )  # fmt: skip
            nodes[port] = node
            node.start()
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *(f"127.0.0.1:{port}" for port in nodes),
                "--cluster-replicas",
                "1",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=START_TIMEOUT,
        )
        cluster.wait_ok()
        _wait_replicas_synced(cluster)
    except BaseException:
        cluster.kill()
        raise
    return cluster


def _wait_replicas_synced(cluster: Cluster, timeout: float = START_TIMEOUT) -> None:
    """Wait until each master has its replica attached and in sync (so that it can
    fail over)."""
    deadline = time.monotonic() + timeout
    while True:
        masters = cluster.masters()
        attached = 0
        for port in masters:
            with cluster.admin(port) as client:
                replica = client.info("replication").get("slave0")
                attached += isinstance(replica, dict) and replica.get("state") == "online"
        if len(masters) == MASTERS and attached == MASTERS:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the replicas did not attach within {timeout} s")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A running cluster shared by the tests of a module (that do not damage it)."""
    _need_redis_tools()
    running = start_cluster(tmp_path_factory.mktemp("cluster"))
    try:
        yield running
    finally:
        running.kill()


@pytest.fixture
def fresh_cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A running cluster for one test, which may kill its nodes."""
    _need_redis_tools()
    running = start_cluster(tmp_path)
    try:
        yield running
    finally:
        running.kill()
