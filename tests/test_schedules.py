"""Schedules for β, α, C and regulariser weights: values and checkpoint round trips (issue 4)."""

from __future__ import annotations

import io

import pytest
import torch

from pyro_decomp import DecompositionELBO
from pyro_decomp.divergences import DIPVAE
from pyro_decomp.schedules import Constant, Cyclical, LinearWarmup, as_schedule, schedule_from_dict


@pytest.mark.parametrize(
    "schedule, expected",
    [
        (Constant(3.0), {0: 3.0, 10: 3.0, 10**6: 3.0}),
        (LinearWarmup(0.0, 4.0, steps=100), {0: 0.0, 25: 1.0, 50: 2.0, 100: 4.0, 500: 4.0}),
        (LinearWarmup(1.0, 0.0, steps=10, delay=5), {0: 1.0, 5: 1.0, 10: 0.5, 15: 0.0}),
        (LinearWarmup(0.0, 2.0, steps=0, delay=3), {2: 0.0, 3: 2.0}),
        # period 10, ramp over the first 5 steps of each cycle, then hold
        (Cyclical(0.0, 1.0, period=10, ramp_fraction=0.5), {0: 0.0, 2: 0.4, 5: 1.0, 9: 1.0, 10: 0.0, 13: 0.6}),
        (Cyclical(0.5, 1.5, period=4, ramp_fraction=1.0, num_cycles=2), {1: 0.75, 4: 0.5, 7: 1.25, 8: 1.5, 99: 1.5}),
    ],
    ids=["constant", "warmup", "warmup-delay-down", "warmup-jump", "cyclical", "cyclical-finite"],
)
def test_values(schedule, expected):
    for step, value in expected.items():
        assert schedule(step) == pytest.approx(value), step


@pytest.mark.parametrize(
    "schedule",
    [Constant(2.5), LinearWarmup(0.0, 25.0, steps=1000, delay=10), Cyclical(0.0, 1.0, period=7, num_cycles=3)],
    ids=["constant", "warmup", "cyclical"],
)
def test_state_round_trip_weights_only(schedule):
    buf = io.BytesIO()
    torch.save(schedule.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    fresh = type(schedule)()
    fresh.load_state_dict(state)
    assert fresh == schedule
    assert [fresh(t) for t in range(0, 2000, 37)] == [schedule(t) for t in range(0, 2000, 37)]
    assert schedule_from_dict(state) == schedule


def test_from_dict_and_errors():
    assert schedule_from_dict(4) == Constant(4.0)
    assert schedule_from_dict({"type": "linear_warmup", "end": 25, "steps": 1e4}) == LinearWarmup(0.0, 25.0, 10000)
    with pytest.raises(ValueError, match="schedule type must be one of"):
        schedule_from_dict({"type": "cosine"})
    with pytest.raises(ValueError, match="unknown keys \\['stop'\\]"):
        schedule_from_dict({"type": "linear_warmup", "stop": 3})
    with pytest.raises(ValueError, match="period must be an integer >= 1"):
        Cyclical(period=0)
    with pytest.raises(ValueError, match="ramp_fraction must be in"):
        Cyclical(ramp_fraction=0.0)
    with pytest.raises(ValueError, match="step must be a non-negative integer"):
        LinearWarmup()(-1)
    with pytest.raises(ValueError, match="cannot load"):
        LinearWarmup().load_state_dict(Cyclical().state_dict())
    with pytest.raises(TypeError, match="must be a number or a schedule"):
        as_schedule("beta", "1")


def test_schedules_in_elbo_checkpoint():
    beta = LinearWarmup(0.0, 1.0, steps=10)
    elbo = DecompositionELBO(beta=beta, alpha=Cyclical(0.0, 2.0, period=4), divergence=DIPVAE("i"))
    elbo.step = 5  # β: 5/10; α: cycle of 4 ramping over 2 steps, 5 mod 4 = 1 → 2 · 1/2
    assert elbo.current_weights() == {"beta": 0.5, "alpha": 1.0}
    buf = io.BytesIO()
    torch.save(elbo.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    fresh = DecompositionELBO(beta=LinearWarmup(), alpha=Cyclical(), divergence=DIPVAE("i"))
    fresh.load_state_dict(state)
    assert fresh.beta == beta and fresh.current_weights() == elbo.current_weights()
