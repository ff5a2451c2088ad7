"""``plan_feedback``'s plan is made of whole tuples of its ``NamedTuple`` types (it makes
them without their Python constructors)."""

from __future__ import annotations

import tokenbucket as tb
from tokenbucket._feedback import Clamp, FeedbackPlan, plan_feedback
from tokenbucket._headers import read_openai


def test_a_plan_is_what_its_constructors_make() -> None:
    limiter = tb.Limiter(requests_per_minute=100, tokens_per_minute=1_000)
    info = read_openai(["40", "100", "6s", "900", "1000", "1m0s"])
    assert info is not None
    plan = plan_feedback(info, 429, limiter._multi.meters)
    assert type(plan) is FeedbackPlan
    assert len(plan) == len(FeedbackPlan._fields)
    assert (plan.pause, plan.rejected) == (1.0, True)
    assert [clamp.meter for clamp in plan.clamps] == [0, 1]
    for clamp in plan.clamps:
        assert type(clamp) is Clamp
        assert len(clamp) == len(Clamp._fields)
    rebuilt = FeedbackPlan(plan.pause, tuple(Clamp(*clamp) for clamp in plan.clamps), True)
    assert plan == rebuilt
