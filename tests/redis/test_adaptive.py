"""An adaptive cap is learned in a process's memory: a limiter with a backend refuses
one (a number is taken as before)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

import tokenbucket as tb

if TYPE_CHECKING:
    from tests.redis._support import RecordingBackend


def test_a_limiter_with_a_backend_refuses_an_adaptive_cap(redis_backend: RecordingBackend) -> None:
    with pytest.raises(tb.InvalidArgumentError, match="adaptive cap"):
        tb.Limiter(max_concurrency=tb.adaptive(), backend=redis_backend, key="a")
    assert tb.Limiter(max_concurrency=4, backend=redis_backend, key="a").max_concurrency == 4
