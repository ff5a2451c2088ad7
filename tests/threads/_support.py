"""What the thread tests share: a limiter whose state logs each grant it makes."""

from __future__ import annotations

import math
import os
import threading
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    import tokenbucket as tb


class Grants(Protocol):
    """A log of grants: each begins with its instant and its amount."""

    @property
    def grants(self) -> Sequence[tuple[Any, ...]]: ...


class Log:
    """Every grant the state made: (instant on its clock, amount, thread name), in the
    order it made them, and the grants given back."""

    def __init__(self) -> None:
        self.grants: list[tuple[float, float, str]] = []
        self.refunds: list[float] = []
        self.closed = False  # while True, the state grants nothing and times nothing

    @property
    def amounts(self) -> list[float]:
        return [amount for _, amount, _ in self.grants]

    def total(self) -> float:
        return sum(self.amounts) - sum(self.refunds)


class _Recording:
    """A state that logs what the real one grants (it is only called under the lock in
    shared mode, so the log's order is the order of the grants)."""

    def __init__(self, state: Any, log: Log) -> None:
        self._state = state
        self._log = log

    def try_take(self, amount: float, now: float) -> bool:
        if self._log.closed:
            return False
        granted = bool(self._state.try_take(amount, now))
        if granted:
            self._log.grants.append((now, amount, threading.current_thread().name))
        return granted

    def ready_at(self, amount: float, now: float) -> float:
        return math.inf if self._log.closed else float(self._state.ready_at(amount, now))

    def refund(self, amount: float, ticket: object, now: float) -> object:
        restored = self._state.refund(amount, ticket, now)
        self._log.refunds.append(float(restored or 0.0))
        return restored

    def __getattr__(self, name: str) -> Any:
        return getattr(self._state, name)


def recorded(limiter: tb.TokenBucket | tb.SlidingWindow) -> Log:
    """Log the grants of a limiter not used yet."""
    log = Log()
    state = _Recording(limiter._state, log)
    limiter._state = state  # type: ignore[assignment]
    limiter._take = state.try_take
    limiter._waiters.state = state
    return log


def bucket_conforms(log: Grants, rate: float, capacity: float) -> None:
    """G1 over the grants' own instants: over every interval [t_i, t_j], what was granted
    is at most ``capacity + rate * (t_j - t_i)``."""
    grants = sorted(log.grants)
    for i in range(len(grants)):
        total = 0.0
        for j in range(i, len(grants)):
            total += grants[j][1]
            room = capacity + rate * (grants[j][0] - grants[i][0])
            assert total <= room + 1e-9 * capacity, (i, j, total, room)


def window_conforms(log: Grants, limit: float, window: float) -> None:
    """G1 for a window: within any ``window`` seconds, at most ``limit``."""
    grants = sorted(log.grants)
    for i in range(len(grants)):
        total = 0.0
        for j in range(i, len(grants)):
            if grants[j][0] - grants[i][0] >= window:
                break
            total += grants[j][1]
            assert total <= limit + 1e-9 * limit, (i, j, total)


def in_child(work: Callable[[], object]) -> int:
    """Run ``work`` in a child process made by ``fork()``: 0 if it returned, 1 if it
    raised."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: only this thread came along
        code = 1
        try:
            work()
            code = 0
        finally:
            os.write(write, bytes([code]))
            os._exit(code)
    os.close(write)
    result = os.read(read, 1)
    os.close(read)
    os.waitpid(pid, 0)
    return result[0] if result else 1
