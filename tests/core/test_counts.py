"""Counts: a snapshot (from any thread) never changes the totals it reads, and never
counts a batch of grants twice (see tests/properties/test_counts.py for the batching)."""

from __future__ import annotations

import threading

from tokenbucket._core import Counts
from tokenbucket._core.counts import FOLD


def test_a_snapshot_from_another_thread_never_counts_a_fold_twice() -> None:
    counts = Counts(1)
    total = 50 * FOLD
    seen: list[int] = []
    done = threading.Event()

    def reader() -> None:
        while not done.is_set():
            seen.append(counts.snapshot().grants)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for _ in range(total):
            counts.pending.append((1.0,))
            if len(counts.pending) >= FOLD:
                counts.fold()
    finally:
        done.set()
        thread.join(10)
    assert seen == sorted(seen)  # never more, then less
    assert all(value <= total for value in seen)
    assert counts.snapshot().grants == total
    assert counts.snapshot().units == [float(total)]
