"""The Lua scripts: their sources, calling them by SHA, and what an outage does.

A script's source is its file under ``lua/`` after the preludes it uses: ``clock.lua``
(``now`` from ARGV[1], or the server's ``TIME``), ``log.lua`` (window logs),
``give.lua`` (giving a reservation back) and ``rates.lua`` (a meter's parameters after
another process's update). Each is
loaded once (``SCRIPT LOAD``) and called by SHA (``EVALSHA``); a server that lost it
(restarted, ``SCRIPT FLUSH``) answers NOSCRIPT and it is loaded again. Redis refusing a
script becomes :class:`BackendError`; Redis out of reach is retried or becomes
:class:`BackendUnavailableError`, as the backend's ``on_error`` says; a Redis the limiter
cannot use as configured (credentials, ACL permissions, database index) becomes
:class:`BackendConfigurationError` at once, whatever the policy.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from importlib import resources
from typing import TYPE_CHECKING, Any, Final

from .._errors import BackendConfigurationError, BackendError, BackendUnavailableError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping, Sequence

    import redis.asyncio as aioredis
    from redis.asyncio.cluster import RedisCluster

    # A client of one Redis, or of a Redis Cluster.
    Client = aioredis.Redis | RedisCluster
    ScriptCall = Callable[[str, Sequence[str], Sequence[Any]], Awaitable[Any]]

__all__ = [
    "PRELUDES",
    "Scripts",
    "errors",
    "is_outage",
    "source",
    "translate",
    "with_policy",
]

log = logging.getLogger("tokenbucket.redis")

# Each script, and the files that go before it (in this order).
PRELUDES: Final[Mapping[str, tuple[str, ...]]] = {
    "reserve": ("clock", "log", "give"),
    "cancel": ("clock", "log", "give"),
    "release": (),
    "adjust": ("clock", "log", "rates"),
    "feedback": ("clock", "log", "rates"),
    "charge": ("clock", "log", "rates"),
    "forget": (),
    "update": ("clock", "log", "rates"),
}


@functools.cache
def _read(name: str) -> str:
    return (resources.files(__package__) / "lua" / f"{name}.lua").read_text(encoding="utf-8")


def source(name: str) -> str:
    """The text sent to Redis for the script ``name``: its preludes, then itself."""
    return "".join(_read(part) for part in (*PRELUDES[name], name))


class Scripts:
    """The scripts on one Redis: loaded on first use, called by SHA, and counted."""

    __slots__ = ("_sha", "client", "prefix", "round_trips")

    def __init__(self, client: Client, prefix: str) -> None:
        self.client = client
        self.prefix = prefix  # for messages
        self.round_trips = 0  # EVALSHA and SCRIPT LOAD calls made
        self._sha: dict[str, str] = {}

    async def call(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """EVALSHA ``name``, loading it on first use and again after NOSCRIPT. Redis's
        errors are raised as redis-py raises them (:func:`translate` names them)."""
        from redis.exceptions import NoScriptError

        sha = self._sha.get(name)
        self.round_trips += 1
        if sha is not None:
            try:
                return await self.client.evalsha(sha, len(keys), *keys, *args)
            except NoScriptError:
                pass
        sha = await self.client.script_load(source(name))
        self._sha[name] = sha
        self.round_trips += 1
        return await self.client.evalsha(sha, len(keys), *keys, *args)


def errors() -> tuple[type[BaseException], ...]:
    """What redis-py raises when Redis (or a Redis Cluster) fails or refuses a call: a
    cluster client's own errors (no node serves a slot, none answers) are not
    ``RedisError``s."""
    from redis.exceptions import RedisClusterException, RedisError

    return (RedisError, RedisClusterException, OSError)


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` means Redis is out of reach for now (worth retrying), rather than
    refusing what the limiter asks (a wrong password or a missing permission). On a
    Redis Cluster, a failover in progress is an outage too: the cluster is down
    (``CLUSTERDOWN``, ``MASTERDOWN``), asks to try again (``TRYAGAIN``), or the client
    finds no node for a slot or none that answers."""
    from redis.exceptions import (
        AuthenticationError,
        AuthorizationError,
        ClusterDownError,
        RedisClusterUnreachableError,
        SlotNotCoveredError,
        TryAgainError,
    )
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    if isinstance(exc, AuthenticationError | AuthorizationError):
        return False  # redis-py makes them ConnectionErrors
    return isinstance(
        exc,
        RedisConnectionError
        | RedisTimeoutError
        | OSError
        | ClusterDownError
        | TryAgainError
        | SlotNotCoveredError
        | RedisClusterUnreachableError,
    )


def translate(exc: BaseException, prefix: str) -> BackendError:
    """The library's error for Redis's (or the connection's) ``exc``; the caller raises
    it ``from exc``. Outages become :class:`BackendUnavailableError`, a Redis that the
    limiter cannot use as configured :class:`BackendConfigurationError`, anything else
    Redis refused :class:`BackendError`."""
    from redis.exceptions import AuthenticationError, AuthorizationError, NoPermissionError

    text = str(exc)
    if isinstance(exc, AuthenticationError | AuthorizationError):
        return BackendConfigurationError(
            f"Redis refused the credentials ({text}): check the password (and the user "
            "name, for an ACL user) in the URL, redis://user:password@host:port/db, or "
            "in the client given to RedisBackend"
        )
    if isinstance(exc, NoPermissionError) or _NOPERM_IN_SCRIPT in text:
        return BackendConfigurationError(
            f"the Redis user lacks a permission the limiter needs ({text}): grant it "
            f'the commands and keys the limiter uses: ACL SETUSER <user> "~{{{prefix}:*" '
            "+evalsha +script|load +blpop +ping +time +@read +@write"
        )
    if _DB_OUT_OF_RANGE in text:
        return BackendConfigurationError(
            f"Redis has no such database ({text}): the database index in the URL "
            "(redis://host:port/<index>) must be below the server's 'databases' setting "
            "(16 by default)"
        )
    if is_outage(exc):
        return BackendUnavailableError(f"Redis is unreachable: {text}")
    if "WRONGTYPE" in text:
        return BackendError(
            f"a key under {prefix!r} holds a value of the wrong type ({text}); "
            "is another program using this prefix?"
        )
    return BackendError(f"Redis refused the limiter's script: {text}")


# Redis's words for a command a script may not run, and for SELECT out of range.
_NOPERM_IN_SCRIPT: Final = "The user executing the script can't"
_DB_OUT_OF_RANGE: Final = "DB index is out of range"


async def with_policy(
    call: ScriptCall,
    name: str,
    keys: Sequence[str],
    args: Sequence[Any],
    *,
    on_error: str,
    max_backoff: float,
    prefix: str,
) -> Any:
    """``call(name, keys, args)`` under the failure policy: while Redis is out of reach,
    retry with exponential backoff (``"wait"``) or raise :class:`BackendUnavailableError`
    (``"raise"``, and ``"local"``: its caller limits locally). Any other error of Redis
    is raised at once as the library's (see :func:`translate`)."""
    failures = errors()
    delay = 0.05
    while True:
        try:
            return await call(name, keys, args)
        except failures as exc:  # noqa: PERF203
            if on_error != "wait" or not is_outage(exc):
                raise translate(exc, prefix) from exc
            log.warning("Redis unreachable (%s); retrying in %.2f s", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_backoff)
