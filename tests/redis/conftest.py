"""The Redis fixtures and the skip-or-fail rule (see ``tests/redis/_fixtures.py``)."""

from tests.redis._fixtures import *  # noqa: F403
