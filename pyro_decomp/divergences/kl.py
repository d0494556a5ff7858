"""KL-based aggregate-posterior divergences."""

from __future__ import annotations

import math

import torch
from torch.distributions import Distribution, Independent, Normal

from .base import AggregateBatch, Divergence, log_mean_exp, pairwise_log_prob

__all__ = ["InclusiveKL"]


def _diag_normal_pairwise_log_prob(guide_dist: Distribution, z: torch.Tensor) -> torch.Tensor | None:
    """:func:`pairwise_log_prob` for a diagonal-Normal guide, or ``None`` for any other guide.

    The same quantity as ``Normal.log_prob(...).sum(-1)``, with the per-encoder constants
    :math:`-\\sum_d \\log s_{id} - \\tfrac D2 \\log 2\\pi` added after the sum over dimensions, so that
    only three element-wise passes touch the ``[P, M, B, D]`` tensor (and its backward).
    """
    if not (
        isinstance(guide_dist, Independent)
        and guide_dist.reinterpreted_batch_ndims == 1
        and isinstance(guide_dist.base_dist, Normal)
        and guide_dist.base_dist.loc.dim() == 3
        and z.dim() == 3
    ):
        return None
    loc, scale = guide_dist.base_dist.loc, guide_dist.base_dist.scale  # [P, B, D]
    if scale.shape != loc.shape:
        scale = scale.expand(loc.shape)
    y = (z.unsqueeze(-2) - loc.unsqueeze(-3)) / scale.unsqueeze(-3)  # [P, M, B, D]
    log_norm = scale.log().sum(-1) + 0.5 * loc.shape[-1] * math.log(2 * math.pi)  # [P, B]
    return -0.5 * y.square().sum(-1) - log_norm.unsqueeze(-2)


class InclusiveKL(Divergence):
    """Inclusive KL :math:`\\mathrm{KL}(p(z) \\,\\|\\, q(z))` with the batch's aggregate posterior (paper §B, pinwheel).

    .. math::

        \\hat D = \\frac1M \\sum_{j=1}^M \\Big[\\log p(z_j) - \\log \\frac1B \\sum_{i=1}^B q(z_j \\mid x_i)\\Big],
        \\qquad z_j \\sim p(z)

    The inner mean is a logsumexp over the batch's encoders, so it is stable for tight encoders. The
    paper uses the full dataset as batch (``B = n = 400``). The estimator is unbiased for
    :math:`\\mathrm{KL}(p \\| \\hat q_B)` where :math:`\\hat q_B` is the batch mixture; with ``B < n`` it is
    a biased estimate of the KL to the full aggregate posterior (004 App. C).

    :param num_prior_samples: ``M``; ``None`` uses ``M = B``.

    >>> import torch, pyro.distributions as dist
    >>> q = dist.Normal(torch.zeros(1, 4, 2), 1.0).to_event(1)
    >>> p = dist.Normal(torch.zeros(2), 1.0).to_event(1)
    >>> zp = p.sample((1, 1000))
    >>> d = InclusiveKL()(AggregateBatch(q, q.sample(), zp, p.log_prob(zp)))
    >>> abs(d.item()) < 1e-5     # identical distributions
    True
    """

    needs_prior_samples = True

    def __call__(self, batch: AggregateBatch) -> torch.Tensor:
        if batch.z_p is None or batch.log_p_zp is None:
            raise ValueError("InclusiveKL needs prior samples z_p and their log densities log_p_zp.")
        log_q = _diag_normal_pairwise_log_prob(batch.guide_dist, batch.z_p)
        if log_q is None:
            log_q = pairwise_log_prob(batch.guide_dist, batch.z_p)
        log_q = log_mean_exp(log_q, dim=-1)  # [P, M]
        return (batch.log_p_zp - log_q).mean()
