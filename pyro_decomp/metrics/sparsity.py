"""Hoyer sparsity of the codes (Hurley & Rickard, 2009), paper §6 and Appendix (Eq. for Hoyer).

.. math::

    \\mathrm{Hoyer}(z) = \\frac{\\sqrt{d} - \\|z\\|_1 / \\|z\\|_2}{\\sqrt{d} - 1} \\in [0, 1],
    \\qquad \\mathrm{Sparsity} = \\frac{1}{n} \\sum_{i=1}^{n} \\mathrm{Hoyer}(\\bar z_i),
    \\qquad \\bar z_{id} = z_{id} / \\sigma_d,

0 for a dense vector with equal magnitudes, 1 for a one-hot vector. ``sigma_d`` is the standard
deviation of dimension ``d`` over the data (paper 004, appendix: "normalise each dimension to have
a standard deviation of 1 under its aggregate distribution"), so that a collapsed dimension does not
make a code look sparse.

Choices: the representation is whatever ``representation_fn`` returns (use the posterior mean);
a dimension with zero standard deviation is left unscaled (dividing by zero is undefined); an
all-zero code vector has no Hoyer value and is left out of the average.
"""

from __future__ import annotations

import math

import numpy as np

from pyro_decomp.data.ground_truth import GroundTruthDataset, RandomState
from pyro_decomp.metrics._utils import (
    RepresentationFn,
    check_codes,
    check_dataset,
    check_positive_int,
    sample_codes_and_factors,
)

__all__ = ["compute_hoyer", "hoyer", "mean_hoyer"]


def hoyer(z: np.ndarray) -> np.ndarray:
    """Hoyer sparsity of each row of ``z [num, d]`` (no normalisation), ``NaN`` for a zero row.

    >>> hoyer(np.array([[0.0, 3.0, 0.0, 0.0], [1.0, -1.0, 1.0, -1.0]])).tolist()
    [1.0, 0.0]
    """
    z = check_codes(z, "z")
    d = z.shape[1]
    if d < 2:
        raise ValueError(f"Hoyer sparsity needs at least 2 dimensions, got z with shape {z.shape}")
    l1 = np.abs(z).sum(axis=1)
    l2 = np.sqrt(np.square(z).sum(axis=1))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(l2 > 0, l1 / l2, np.nan)
    return (math.sqrt(d) - ratio) / (math.sqrt(d) - 1.0)


def mean_hoyer(codes: np.ndarray, *, normalise: bool = True) -> float:
    """Mean Hoyer sparsity of ``codes [num, latent]``, each dimension divided by its std first.

    This is the codes-only entry point, for data without ground-truth factors (e.g. Fashion-MNIST).
    """
    return _compute_hoyer(codes, normalise=normalise)["hoyer"]


def compute_hoyer(
    dataset: GroundTruthDataset,
    representation_fn: RepresentationFn,
    *,
    random_state: RandomState,
    num_points: int = 10_000,
    normalise: bool = True,
    batch_size: int = 256,
) -> dict[str, float]:
    """Normalised Hoyer sparsity of ``representation_fn`` on ``num_points`` sampled observations.

    :returns: ``{"hoyer": ...}`` in ``[0, 1]``.
    """
    check_dataset(dataset)
    num_points = check_positive_int(num_points, "num_points")
    batch_size = check_positive_int(batch_size, "batch_size")
    codes, _ = sample_codes_and_factors(dataset, representation_fn, num_points, random_state, batch_size)
    return _compute_hoyer(codes, normalise=normalise)


def _compute_hoyer(codes: np.ndarray, factors: np.ndarray | None = None, *, normalise: bool = True) -> dict[str, float]:
    """Mean Hoyer of ``codes [num, latent]`` (``factors`` is unused: sparsity needs no ground truth)."""
    codes = check_codes(codes)
    if normalise:
        std = codes.std(axis=0)
        codes = codes / np.where(std > 0, std, 1.0)
    values = hoyer(codes)
    values = values[np.isfinite(values)]
    if values.size == 0:
        raise ValueError("every code vector is zero; Hoyer sparsity is undefined")
    return {"hoyer": float(np.mean(values))}
