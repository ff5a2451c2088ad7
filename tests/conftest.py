"""Shared fixtures.

``anyio_backend`` (used by ``@pytest.mark.anyio`` tests) runs each async test on asyncio,
asyncio with uvloop, and trio, in real time. ``tests/virtual`` and ``tests/properties``
override it with virtual clocks.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

# examples/ is not a package: put it on sys.path, as running a script in it does (the
# tests of the fake provider, the demonstration and the transport import from it).
EXAMPLES = str(Path(__file__).resolve().parents[1] / "examples")
if EXAMPLES not in sys.path:
    sys.path.insert(0, EXAMPLES)

REAL_BACKENDS = ["asyncio", "uvloop", "trio"]


def backend_params(name: str) -> tuple[str, dict[str, Any]]:
    """anyio backend settings for a named backend, real or virtual time."""
    if name == "asyncio":
        return ("asyncio", {})
    if name == "uvloop":
        import uvloop

        return ("asyncio", {"loop_factory": uvloop.new_event_loop})
    if name == "trio":
        return ("trio", {})
    if name == "trio-mockclock":
        from trio.testing import MockClock

        return ("trio", {"clock": MockClock(autojump_threshold=0)})
    if name == "asyncio-looptime":
        import looptime

        return ("asyncio", {"loop_factory": looptime.new_event_loop})
    raise ValueError(name)  # pragma: no cover


if sys.platform == "win32":  # pragma: no cover - uvloop does not exist there
    REAL_BACKENDS.remove("uvloop")


@pytest.fixture(params=REAL_BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    return backend_params(request.param)
