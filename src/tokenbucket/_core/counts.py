"""What a limiter's state granted and was told since it was made: plain running totals.

A :class:`Counts` is written only where its state is changed, so under the same
serialization (one event loop, or the lock of a shared queue, or one backend store's
loop), and read by ``statistics()``. Per-dimension totals are lists in the order of the
state's dimensions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["FOLD", "Counts"]

FOLD = 256  # pending grants added up at once


class Counts:
    """Running totals of one state (see the module's docstring)."""

    __slots__ = (
        "charged",
        "corrections",
        "grants",
        "paused",
        "pauses",
        "pending",
        "queued",
        "refunded",
        "rejections",
        "settles",
        "units",
        "version",
    )

    def __init__(self, dims: int) -> None:
        self.grants = 0  # requests granted
        self.queued = 0  # of which queued first (the others were granted at once)
        self.units = [0.0] * dims  # what they took, per dimension
        # Grants not in grants and units yet (amounts, by dimension): appending is all a
        # grant does, and fold() adds them up, a batch at a time.
        self.pending: list[tuple[float, ...]] = []
        self.version = 0  # odd while fold() runs (a reader in another thread retries)
        self.settles = 0  # grants settled to their real usage
        self.refunded = [0.0] * dims  # what settling gave back, per dimension
        self.charged = [0.0] * dims  # what settling charged on top (debt), per dimension
        self.rejections = 0  # responses that said 429
        self.pauses = 0  # pauses asked for (Retry-After, a 429, Limiter.pause)
        self.paused = 0.0  # the seconds they asked for, in total
        self.corrections = 0  # a server's report lowered a meter (more than rounding)

    def widen(self, dims: int) -> None:
        """Make room for ``dims`` dimensions (a state took on more)."""
        for totals in (self.units, self.refunded, self.charged):
            totals.extend([0.0] * (dims - len(totals)))

    def grant(self, amounts: tuple[float, ...], queued: bool) -> None:
        """Count a grant of ``amounts`` (one per dimension), which ``queued`` first or was
        made at once: appended to ``pending``, added up a batch at a time. A reader in
        another thread sees a queued grant with its grant or neither (see
        :meth:`snapshot`). (``MultiState`` inlines the grants made at once: they are on
        the path of every acquisition.)"""
        pending = self.pending
        if queued:
            self.version += 1
            pending.append(amounts)
            self.queued += 1
            self.version += 1
        else:
            pending.append(amounts)
        if len(pending) >= FOLD:
            self.fold()

    def fold(self) -> None:
        """Add the pending grants to the totals."""
        pending = self.pending
        if pending:
            self.version += 1
            units = self.units
            for index, total in enumerate(map(sum, zip(*pending, strict=False))):
                units[index] += total
            self.grants += len(pending)
            pending.clear()
            self.version += 1

    def snapshot(self) -> Counts:
        """A copy with every grant added up. Changes nothing, so it may be taken from any
        thread: the totals are then those of an instant or other while it is read."""
        copy = Counts(0)
        while True:  # until no fold or queued grant ran meanwhile (see grant)
            version = self.version
            copy.queued = self.queued
            copy.pending = self.pending.copy()  # (one step: safe against an append)
            copy.grants, copy.units = self.grants, [*self.units]
            if version % 2 == 0 and self.version == version:
                break
        copy.fold()
        copy.settles, copy.refunded, copy.charged = self.settles, [*self.refunded], [*self.charged]
        copy.rejections, copy.pauses, copy.paused = self.rejections, self.pauses, self.paused
        copy.corrections = self.corrections
        return copy

    def settle(self, request: tuple[float, ...], actual: Mapping[int, float]) -> None:
        """Count a settlement of a grant of ``request`` to ``actual`` (by dimension index):
        what it gives back and what it charges on top."""
        self.settles += 1
        for index, value in actual.items():
            change = value - request[index]
            if change > 0:
                self.charged[index] += change
            elif change < 0:
                self.refunded[index] -= change
