"""Capacity-annealed β-VAE (Burgess et al. 2018): :math:`\\gamma\\,|\\mathrm{KL}(q(z|x) \\| p(z)) - C(t)|`."""

from __future__ import annotations

from typing import Any

import torch
from torch.distributions import kl_divergence

from ._utils import ScheduledDivergence
from .base import AggregateBatch

__all__ = ["CapacityKL", "per_datapoint_kl"]


def per_datapoint_kl(batch: AggregateBatch) -> torch.Tensor:
    """:math:`\\mathrm{KL}(q(z \\mid x_b) \\| p(z))` per datapoint, ``[P, B]``.

    Analytic when the prior's distribution is reachable (``batch.prior_log_prob`` is a
    :class:`~pyro_decomp.models.priors.Prior`'s ``log_prob``) and :func:`~torch.distributions.kl_divergence`
    knows the pair; otherwise the single-sample Monte Carlo estimate :math:`\\log q(z_b \\mid x_b) - \\log p(z_b)`
    (from ``batch.log_p_zq`` or ``batch.prior_log_prob``), as the ELBO does.
    """
    prior = getattr(batch.prior_log_prob, "__self__", None)
    make_dist = getattr(prior, "distribution", None)
    if callable(make_dist):
        try:
            return kl_divergence(batch.guide_dist, make_dist())
        except NotImplementedError:
            pass
    if batch.log_p_zq is not None:
        log_p = batch.log_p_zq
    elif batch.prior_log_prob is not None:
        log_p = batch.prior_log_prob(batch.z_q)
    else:
        raise ValueError("the per-datapoint KL needs the prior: batch.prior_log_prob or batch.log_p_zq.")
    return batch.guide_dist.log_prob(batch.z_q) - log_p


class CapacityKL(ScheduledDivergence):
    """Capacity-annealed KL (Burgess et al. 2018, "Understanding disentangling in β-VAE", Eq. 8):

    .. math:: \\hat D = \\gamma \\,\\Big|\\frac1{PB}\\sum_{p,b}\\mathrm{KL}(q(z \\mid x_b) \\| p(z)) - C(t)\\Big|

    where :math:`C(t)` rises (typically linearly, :class:`~pyro_decomp.schedules.LinearWarmup`) from 0 to
    :math:`C_{\\max}` nats. The KL is the batch mean of the per-datapoint KL (:func:`per_datapoint_kl`), as in
    Burgess et al.'s implementations.

    Burgess et al.'s objective per datapoint is reconstruction :math:`+\\,\\gamma|\\mathrm{KL} - C|` with no
    other KL term, so configure ``DecompositionELBO(beta=0, alpha=1, divergence=CapacityKL(gamma, C))``: the
    ELBO adds :math:`\\alpha\\, n\\, \\hat D` (``n`` datapoints), and ``beta=0`` drops its own KL. ``beta=1``
    keeps the usual KL in addition. ``gamma`` and ``capacity`` may be numbers or schedules; the step is
    counted by :meth:`update` (once per SVI step) and saved in ``state_dict()``.

    :param gamma: :math:`\\gamma` (Burgess et al. use 1000).
    :param capacity: :math:`C(t)` in nats: a number or a schedule ``step -> float``.

    >>> from pyro_decomp.schedules import LinearWarmup
    >>> cap = CapacityKL(gamma=1000.0, capacity=LinearWarmup(0.0, 25.0, steps=100_000))
    >>> cap.current_weights()
    {'gamma': 1000.0, 'capacity': 0.0}
    """

    needs_prior_log_prob = True

    def __init__(self, gamma: Any = 1000.0, capacity: Any = 0.0) -> None:
        super().__init__()
        self._set_weight("gamma", gamma)
        self._set_weight("capacity", capacity)

    def __call__(self, batch: AggregateBatch) -> torch.Tensor:
        kl = per_datapoint_kl(batch).mean()
        self._last_kl = float(kl.detach())
        return self.weight("gamma") * (kl - self.weight("capacity")).abs()

    def update(self, batch: AggregateBatch) -> dict[str, float]:
        out = {"capacity": self.weight("capacity")}
        if hasattr(self, "_last_kl"):
            out["kl"] = self._last_kl
        super().update(batch)
        return out
