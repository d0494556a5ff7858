"""The pinwheel (spiral cluster) data of Johnson et al. (2016), as used for paper Fig. 3 (SPEC §4).

The generator follows Ryan Adams' pinwheel generator, called by the authors as
``pinwheel(radial_std=0.1, tangential_std=0.3, arms=4, per_arm=100, rate=0.25)``:

* arm :math:`k` sits at angle :math:`a_k = 2\\pi k / \\text{arms}`;
* each point starts as :math:`f = (1 + s_t\\,\\varepsilon_1,\\; s_r\\,\\varepsilon_2)` with
  :math:`\\varepsilon \\sim \\mathcal N(0, I)`, :math:`s_t` = ``tangential_std`` and :math:`s_r` = ``radial_std``;
* it is rotated by :math:`\\theta = a_k + \\text{rate}\\cdot\\exp(f_1)`;
* there is no ×10 scaling.

The generator's std names are swapped relative to the geometry (``tangential_std`` scales the radial
coordinate); we keep that so the data match the paper's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["PinwheelSplits", "pinwheel", "pinwheel_splits"]


def _check_int(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def _check_std(name: str, value: object) -> float:
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {value!r}.") from None
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"{name} must be finite and >= 0, got {value!r}.")
    return v


def pinwheel(
    radial_std: float = 0.1,
    tangential_std: float = 0.3,
    arms: int = 4,
    per_arm: int = 100,
    rate: float = 0.25,
    *,
    seed: int | np.random.SeedSequence | None = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``arms * per_arm`` pinwheel points.

    :param radial_std: std of the second coordinate before rotation (Adams' naming, see module docs).
    :param tangential_std: std of the first coordinate before rotation.
    :param arms: number of spiral arms (clusters).
    :param per_arm: points per arm.
    :param rate: how fast the arms curl.
    :param seed: an integer, a :class:`numpy.random.SeedSequence`, or ``None`` for fresh entropy.
    :returns: ``(x, labels)``: ``x: [arms * per_arm, 2]`` float64, ``labels: [arms * per_arm]`` int64 arm
        indices, sorted by arm.

    >>> x, y = pinwheel(seed=0)
    >>> x.shape, y.shape, sorted(set(y.tolist()))
    ((400, 2), (400,), [0, 1, 2, 3])
    """
    radial_std = _check_std("radial_std", radial_std)
    tangential_std = _check_std("tangential_std", tangential_std)
    rate = _check_std("rate", rate)
    arms = _check_int("arms", arms)
    per_arm = _check_int("per_arm", per_arm)
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(arms), per_arm)
    eps = rng.standard_normal((arms * per_arm, 2))
    features = eps * np.array([tangential_std, radial_std])
    features[:, 0] += 1.0
    angles = 2 * np.pi * labels / arms + rate * np.exp(features[:, 0])
    c, s = np.cos(angles), np.sin(angles)
    # row vector f times [[c, s], [-s, c]] = rotation of f by +angle
    x = np.stack([features[:, 0] * c - features[:, 1] * s, features[:, 0] * s + features[:, 1] * c], axis=1)
    return x, labels.astype(np.int64)


@dataclass
class PinwheelSplits:
    """Independent train and test draws: ``x_*: [n, 2]`` float tensors, ``y_*: [n]`` arm labels."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def pinwheel_splits(
    seed: int = 0,
    *,
    per_arm: int = 100,
    test_per_arm: int | None = None,
    radial_std: float = 0.1,
    tangential_std: float = 0.3,
    arms: int = 4,
    rate: float = 0.25,
    dtype: torch.dtype | None = None,
) -> PinwheelSplits:
    """Train and test sets drawn independently from child seeds of ``seed`` (SPEC §4).

    >>> s = pinwheel_splits(0)
    >>> s.x_train.shape, s.x_test.shape, bool((s.x_train != s.x_test).all())
    (torch.Size([400, 2]), torch.Size([400, 2]), True)
    """
    seed = _check_int("seed", seed, minimum=0)
    test_per_arm = per_arm if test_per_arm is None else test_per_arm
    train_seq, test_seq = np.random.SeedSequence(seed).spawn(2)
    kw = dict(radial_std=radial_std, tangential_std=tangential_std, arms=arms, rate=rate)
    x_tr, y_tr = pinwheel(per_arm=per_arm, seed=train_seq, **kw)
    x_te, y_te = pinwheel(per_arm=test_per_arm, seed=test_seq, **kw)
    dtype = dtype or torch.get_default_dtype()
    return PinwheelSplits(
        torch.as_tensor(x_tr, dtype=dtype),
        torch.as_tensor(y_tr),
        torch.as_tensor(x_te, dtype=dtype),
        torch.as_tensor(y_te),
    )
