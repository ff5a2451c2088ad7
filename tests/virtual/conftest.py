"""Virtual time: trio's MockClock and looptime's asyncio loop, a fresh clock per test."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import backend_params

VIRTUAL_BACKENDS = ["trio-mockclock", "asyncio-looptime"]


@pytest.fixture(params=VIRTUAL_BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    return backend_params(request.param)
