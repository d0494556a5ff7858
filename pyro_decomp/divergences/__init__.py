"""Aggregate-posterior divergences :math:`D(q(z), p(z))` and related regularisers (SPEC §2).

See :mod:`pyro_decomp.divergences.base` for the contract and the meaning of each axis.
"""

from .base import AggregateBatch, Divergence, pairwise_log_prob
from .capacity import CapacityKL, per_datapoint_kl
from .dip import DIPVAE, dip_covariance, dip_penalty
from .exclusive_kl import ExclusiveKL, estimator_bias
from .factor_vae import FactorVAE, FactorVAEDiscriminator, permute_dims
from .factory import divergence_from_dict
from .kl import InclusiveKL
from .mmd import MMD, IMQKernel, PerDimensionIMQKernel, RBFKernel, mmd_u_statistic
from .total_correlation import (
    BetaTCVAE,
    TotalCorrelation,
    kl_decomposition,
    log_aggregate_posterior,
    log_importance_weights,
    log_marginal_posteriors,
)

__all__ = [
    "AggregateBatch",
    "BetaTCVAE",
    "CapacityKL",
    "DIPVAE",
    "Divergence",
    "ExclusiveKL",
    "FactorVAE",
    "FactorVAEDiscriminator",
    "IMQKernel",
    "InclusiveKL",
    "MMD",
    "PerDimensionIMQKernel",
    "RBFKernel",
    "TotalCorrelation",
    "dip_covariance",
    "dip_penalty",
    "divergence_from_dict",
    "estimator_bias",
    "kl_decomposition",
    "log_aggregate_posterior",
    "log_importance_weights",
    "log_marginal_posteriors",
    "mmd_u_statistic",
    "pairwise_log_prob",
    "per_datapoint_kl",
    "permute_dims",
]
