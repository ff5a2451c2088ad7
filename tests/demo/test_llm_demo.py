"""The demonstration end to end: the real openai SDK, the local server, a BucketGroup."""

from __future__ import annotations

import asyncio

from llm_demo import demonstrate, table


def test_the_limited_run_gets_no_429_and_keeps_the_server_busy() -> None:
    # 40 requests and 12,000 tokens per half second; 300 requests take about 4 s.
    rpm, tpm, period = 40, 12_000, 0.5
    # A half-second period leaves little room for the jitter between a grant and its
    # arrival at the server on a busy machine: keep a 10% margin.
    (outcome,) = asyncio.run(
        demonstrate(count=300, rpm=rpm, tpm=tpm, period=period, naive=False, margin=0.9)
    )
    print(table([outcome]))
    assert outcome.succeeded == 300
    assert outcome.failed == 0
    assert outcome.stats.requests_429 == 0
    assert outcome.stats.requests_ok == 300
    # What the server would have allowed over the run (a full bucket plus its refill):
    # the binding dimension must have been used for most of it. The bound is loose
    # because this runs in real time on shared machines; the demonstration reports the
    # real figure.
    allowed = tpm + tpm * outcome.stats.duration / period
    requests_allowed = rpm + rpm * outcome.stats.duration / period
    busiest = max(outcome.stats.tokens_used / allowed, outcome.stats.requests_ok / requests_allowed)
    assert busiest >= 0.7, table([outcome])


def test_the_naive_run_meets_429s() -> None:
    rpm, tpm, period = 40, 12_000, 0.5
    naive, limited = asyncio.run(
        demonstrate(count=200, rpm=rpm, tpm=tpm, period=period, margin=0.9)
    )
    assert naive.label == "naive"
    assert naive.stats.requests_429 > 0
    assert limited.stats.requests_429 == 0
    assert limited.succeeded == 200
