"""Pinwheel data (SPEC §4): Adams' generator semantics, seeding, independent splits."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pyro_decomp.data.pinwheel import pinwheel, pinwheel_splits


def test_noise_free_points_sit_on_the_rotated_arms():
    # with both stds 0, f = (1, 0) and the point is (cos θ, sin θ), θ = 2πk/arms + rate·exp(1)
    arms, rate = 4, 0.25
    x, y = pinwheel(radial_std=0.0, tangential_std=0.0, arms=arms, per_arm=3, rate=rate, seed=0)
    theta = 2 * np.pi * y / arms + rate * math.e
    np.testing.assert_allclose(x, np.stack([np.cos(theta), np.sin(theta)], 1), atol=1e-12)
    assert (y == np.repeat(np.arange(arms), 3)).all()


def test_point_is_the_rotated_feature_pair():
    # the generator draws eps ~ N(0, I) [n, 2]; f = (1 + t·eps1, r·eps2), rotated by 2πk/arms + rate·exp(f1)
    seed, t, r, rate = 3, 0.3, 0.1, 0.25
    x, y = pinwheel(radial_std=r, tangential_std=t, arms=4, per_arm=50, rate=rate, seed=seed)
    eps = np.random.default_rng(seed).standard_normal((200, 2))
    f1, f2 = 1 + t * eps[:, 0], r * eps[:, 1]
    np.testing.assert_allclose(np.hypot(x[:, 0], x[:, 1]), np.hypot(f1, f2), rtol=1e-12)
    angle = np.arctan2(x[:, 1], x[:, 0]) - np.arctan2(f2, f1)
    expected = 2 * np.pi * y / 4 + rate * np.exp(f1)
    np.testing.assert_allclose(np.angle(np.exp(1j * (angle - expected))), 0.0, atol=1e-10)


def test_swapped_std_names_are_kept():
    # Adams' naming: tangential_std scales the radius; radial_std the (nearly tangential) offset
    x, _ = pinwheel(radial_std=0.0, tangential_std=0.3, per_arm=2000, seed=1)
    radius = np.hypot(x[:, 0], x[:, 1])
    assert radius.std() == pytest.approx(0.3, rel=0.05)  # 8000 draws: relative s.e. of an sd ≈ 0.8%
    x, _ = pinwheel(radial_std=0.1, tangential_std=0.0, per_arm=2000, seed=1)
    assert np.hypot(x[:, 0], x[:, 1]).std() < 0.01  # radius = sqrt(1 + (0.1 ε)²) ≈ 1 + 0.005 ε²


def test_no_times_ten_scaling():
    x, _ = pinwheel(seed=0)
    assert np.abs(x).max() < 3.0


def test_seeded_and_splits_independent():
    a, b = pinwheel_splits(0), pinwheel_splits(0)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.x_test, b.x_test)
    assert a.x_train.shape == (400, 2) and a.y_test.shape == (400,)
    assert not torch.equal(a.x_train, pinwheel_splits(1).x_train)
    # the test draw is not a copy or a shift of the train draw
    assert (a.x_train - a.x_test).abs().min() > 0
    assert a.x_train.dtype == torch.get_default_dtype() and a.y_train.dtype == torch.int64


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(arms=0), "arms must be an integer >= 1"),
        (dict(per_arm=2.5), "per_arm must be an integer"),
        (dict(radial_std=-1.0), "radial_std must be finite and >= 0"),
    ],
    ids=["arms", "per_arm", "std"],
)
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        pinwheel(**kwargs)
