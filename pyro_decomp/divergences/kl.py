"""KL-based aggregate-posterior divergences."""

from __future__ import annotations

import torch

from .base import AggregateBatch, Divergence, log_mean_exp, pairwise_log_prob

__all__ = ["InclusiveKL"]


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
        log_q = log_mean_exp(pairwise_log_prob(batch.guide_dist, batch.z_p), dim=-1)  # [P, M]
        return (batch.log_p_zp - log_q).mean()
