"""The contract's matrix: every public limiter x every backend.

``kind`` is where the state lives (``memory`` or ``redis``), ``api`` the public type
(``TokenBucket``, ``SlidingWindow``, ``Limiter`` of bucket or of window meters);
``make_subject`` builds that combination. Tests that only make sense for a
:class:`~tokenbucket.Limiter` (leases, settle, feedback) take ``limiter_api`` instead.
The Redis fixtures (and the rule that a test needing Redis fails in CI when it is
unreachable) come from ``tests/redis/_fixtures.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests.contract._support import APIS, LIMITER_APIS, Backend, MakeSubject, Subject, build
from tests.redis._fixtures import *  # noqa: F403

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.redis._support import RecordingBackend


@pytest.fixture(params=["memory", "redis"])
def kind(request: pytest.FixtureRequest) -> str:
    """Where the limiter keeps its state."""
    return str(request.param)


@pytest.fixture
def backend(kind: str, backend_factory: Callable[..., RecordingBackend]) -> Backend:
    """``None`` (in memory) or a RedisBackend on this test's prefix."""
    return backend_factory() if kind == "redis" else None


@pytest.fixture
def new_backend(
    kind: str, backend_factory: Callable[..., RecordingBackend]
) -> Callable[[], Backend]:
    """Another client of the same state, as another process would have (``None`` in
    memory, where the other "process" is the same limiter)."""
    return lambda: backend_factory() if kind == "redis" else None


@pytest.fixture(params=APIS)
def api(request: pytest.FixtureRequest) -> str:
    """Which public type is under test."""
    return str(request.param)


@pytest.fixture(params=LIMITER_APIS)
def limiter_api(request: pytest.FixtureRequest) -> str:
    """A Limiter of bucket or of window meters."""
    return str(request.param)


@pytest.fixture
def make_subject(api: str, backend: Backend) -> MakeSubject:
    """Build ``api`` on ``backend``: see :func:`tests.contract._support.build`."""

    def make(
        *, bucket: tuple[float, float], window: tuple[float, float], key: str = "subject"
    ) -> Subject:
        return build(api, backend, bucket=bucket, window=window, key=key)

    return make
