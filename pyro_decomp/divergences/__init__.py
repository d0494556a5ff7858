"""Aggregate-posterior divergences :math:`D(q(z), p(z))` and related regularisers (SPEC §2).

See :mod:`pyro_decomp.divergences.base` for the contract and the meaning of each axis.
"""

from .base import AggregateBatch, Divergence, pairwise_log_prob
from .kl import InclusiveKL
from .mmd import MMD, IMQKernel, PerDimensionIMQKernel, RBFKernel, mmd_u_statistic

__all__ = [
    "AggregateBatch",
    "Divergence",
    "IMQKernel",
    "InclusiveKL",
    "MMD",
    "PerDimensionIMQKernel",
    "RBFKernel",
    "mmd_u_statistic",
    "pairwise_log_prob",
]
