"""Mutual Information Gap (Chen et al., 2018).

.. math::

    \\mathrm{MIG} = \\frac{1}{F} \\sum_{k=1}^{F} \\frac{1}{H(v_k)}
        \\Big( I(z_{j^{(k)}}; v_k) - \\max_{j \\neq j^{(k)}} I(z_j; v_k) \\Big),
    \\qquad j^{(k)} = \\arg\\max_j I(z_j; v_k).

Choices (SPEC §6, thesis §5.2): the representation is whatever ``representation_fn`` returns (use
the posterior mean); each code dimension is discretised into 20 equal-width bins over its range on
10,000 sampled points (disentanglement_lib's rule); mutual information and the factor entropy
``H(v_k)`` are plug-in estimates in nats on the same points. Factors that are constant in the sample
(zero entropy, e.g. dSprites' colour, which :class:`~pyro_decomp.data.DSprites` already leaves out)
are excluded from the average. A single code dimension gives MIG = ``I / H`` of that one dimension
(the second-best information is taken as 0).
"""

from __future__ import annotations

import numpy as np

from pyro_decomp.data.ground_truth import GroundTruthDataset, RandomState
from pyro_decomp.metrics._utils import (
    RepresentationFn,
    check_codes_factors,
    check_dataset,
    check_positive_int,
    discrete_entropy,
    discrete_mutual_info,
    histogram_discretize,
    sample_codes_and_factors,
)

__all__ = ["compute_mig"]


def compute_mig(
    dataset: GroundTruthDataset,
    representation_fn: RepresentationFn,
    *,
    random_state: RandomState,
    num_points: int = 10_000,
    num_bins: int = 20,
    batch_size: int = 256,
) -> dict[str, float]:
    """MIG of ``representation_fn`` on ``num_points`` observations sampled from ``dataset``.

    :param representation_fn: ``observations [batch, ...] -> codes [batch, latent]`` (posterior mean).
    :param random_state: int seed or :class:`numpy.random.Generator`.
    :param num_points: points used for the histograms and the mutual information (10,000 by default).
    :param num_bins: equal-width bins per code dimension (20 by default).
    :param batch_size: observations per call of ``representation_fn``.
    :returns: ``{"mig": ...}`` in ``[0, 1]``.

    >>> from pyro_decomp.data import SyntheticGroundTruth
    >>> data = SyntheticGroundTruth((3, 4))
    >>> identity = lambda x: x[:, :2]  # any function of the observations
    >>> 0.0 <= compute_mig(data, identity, random_state=0, num_points=500)["mig"] <= 1.0
    True
    """
    check_dataset(dataset)
    num_points = check_positive_int(num_points, "num_points")
    batch_size = check_positive_int(batch_size, "batch_size")
    codes, factors = sample_codes_and_factors(dataset, representation_fn, num_points, random_state, batch_size)
    return _compute_mig(codes, factors, num_bins=num_bins)


def _compute_mig(codes: np.ndarray, factors: np.ndarray, *, num_bins: int = 20) -> dict[str, float]:
    """MIG from ``codes [num, latent]`` and integer ``factors [num, F]``."""
    codes, factors = check_codes_factors(codes, factors)
    num_bins = check_positive_int(num_bins, "num_bins")
    mutual_info = discrete_mutual_info(histogram_discretize(codes, num_bins), factors)  # [latent, F]
    entropy = discrete_entropy(factors)  # [F]
    informative = entropy > 0
    if not np.any(informative):
        raise ValueError("every factor is constant in the sample; MIG needs at least one varying factor")
    sorted_mi = np.sort(mutual_info, axis=0)[::-1]  # descending over codes
    second = sorted_mi[1] if sorted_mi.shape[0] > 1 else np.zeros(sorted_mi.shape[1])
    gap = (sorted_mi[0] - second)[informative] / entropy[informative]
    return {"mig": float(np.mean(gap))}
