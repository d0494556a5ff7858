"""Unsupervised scores: active units, Gaussian total correlation, dimension-wise KL, IWAE log p(x).

None of these needs ground-truth factors; :func:`compute_unsupervised` evaluates the code-based ones
on observations sampled from a ground-truth dataset, and the ``*_from_codes`` style functions work on
any codes.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from pyro_decomp.data.ground_truth import GroundTruthDataset, RandomState
from pyro_decomp.metrics._utils import (
    RepresentationFn,
    check_codes,
    check_dataset,
    check_positive_int,
    discrete_mutual_info,
    histogram_discretize,
    sample_codes_and_factors,
)

__all__ = [
    "ACTIVE_UNIT_THRESHOLD",
    "active_units",
    "gaussian_total_correlation",
    "gaussian_wasserstein_correlation",
    "dimensionwise_kl",
    "iwae_log_likelihood",
    "compute_unsupervised",
]

ACTIVE_UNIT_THRESHOLD = 0.01  # Burda et al. (2016): a unit is active when Cov_x(E_q[z_d | x]) > 0.01


def active_units(means: np.ndarray, *, threshold: float = ACTIVE_UNIT_THRESHOLD) -> dict[str, float]:
    """Number of active units: dimensions whose posterior mean varies over the data.

    .. math:: A_u = \\#\\{d : \\operatorname{Var}_x\\big(\\mathbb{E}_{q(z|x)}[z_d]\\big) > 0.01\\}

    :param means: posterior means ``[num, latent]``.
    :returns: ``{"active_units": count, "active_fraction": count / latent}``; variance uses ``ddof=0``.
    """
    means = check_codes(means, "means")
    if not threshold >= 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    count = int(np.sum(means.var(axis=0) > threshold))
    return {"active_units": float(count), "active_fraction": count / means.shape[1]}


def _covariance(codes: np.ndarray) -> np.ndarray:
    return np.atleast_2d(np.cov(codes, rowvar=False))


def gaussian_total_correlation(codes: np.ndarray) -> float:
    """Total correlation of a Gaussian with the codes' covariance ``Sigma``:

    .. math:: \\mathrm{TC} = \\tfrac12\\Big(\\sum_d \\log \\Sigma_{dd} - \\log\\det\\Sigma\\Big) \\geq 0.

    :param codes: ``[num, latent]``; dimensions with zero variance make it undefined (``ValueError``).
    """
    codes = check_codes(codes)
    cov = _covariance(codes)
    diag = np.diag(cov)
    if np.any(diag <= 0):
        raise ValueError("a code dimension is constant; its Gaussian total correlation is undefined. Drop it first")
    sign, logdet = np.linalg.slogdet(cov)
    if sign <= 0:
        return float("inf")  # singular covariance: perfectly dependent dimensions
    return float(0.5 * (np.sum(np.log(diag)) - logdet))


def gaussian_wasserstein_correlation(codes: np.ndarray) -> float:
    """Squared 2-Wasserstein distance between ``N(0, Sigma)`` and ``N(0, diag Sigma)``:
    ``2 tr(Sigma) - 2 tr((Sigma diag(Sigma))^{1/2})`` (disentanglement_lib's unsupervised score)."""
    codes = check_codes(codes)
    cov = _covariance(codes)
    # Sigma D has the eigenvalues of the symmetric PSD D^1/2 Sigma D^1/2, so the trace of its square
    # root is the sum of their square roots; eigvalsh stays stable for a singular Sigma.
    half = np.sqrt(np.diag(cov))
    eigenvalues = np.linalg.eigvalsh(half[:, None] * cov * half[None, :])
    return float(2.0 * np.trace(cov) - 2.0 * np.sum(np.sqrt(np.clip(eigenvalues, 0.0, None))))


def dimensionwise_kl(
    mean: np.ndarray | torch.Tensor,
    std: np.ndarray | torch.Tensor,
    *,
    prior_std: float | np.ndarray = 1.0,
) -> np.ndarray:
    """Average over data points of ``KL(N(mu_d, s_d^2) || N(0, p^2))`` per dimension, ``[latent]``.

    .. math:: \\mathrm{KL}_d = \\frac1n \\sum_i \\Big[\\log\\frac{p}{s_{id}} + \\frac{s_{id}^2 + \\mu_{id}^2}{2p^2} - \\frac12\\Big]

    :param mean: posterior means ``[num, latent]``.
    :param std: posterior standard deviations ``[num, latent]`` (positive).
    :param prior_std: prior standard deviation ``p`` (scalar or ``[latent]``).
    """
    mean, std = check_codes(mean, "mean"), check_codes(std, "std")
    if mean.shape != std.shape:
        raise ValueError(f"mean and std must have the same shape, got {mean.shape} and {std.shape}")
    if np.any(std <= 0):
        raise ValueError("std must be positive; pass standard deviations, not log-variances")
    prior_std = np.asarray(prior_std, dtype=np.float64)
    if np.any(prior_std <= 0):
        raise ValueError("prior_std must be positive")
    kl = np.log(prior_std / std) + (std**2 + mean**2) / (2.0 * prior_std**2) - 0.5
    return kl.mean(axis=0)


def iwae_log_likelihood(
    log_joint_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    guide_sampler: Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]],
    x: torch.Tensor,
    num_samples: int,
    *,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Importance-weighted (IWAE, Burda et al. 2016) estimate of ``log p(x)`` per data point.

    .. math:: \\log p(x) \\approx \\log \\frac1K \\sum_{k=1}^K \\frac{p(x, z_k)}{q(z_k | x)}, \\quad z_k \\sim q(z | x),

    a lower bound in expectation that tightens as ``K`` grows; ``K = 1`` is the ELBO's estimator.

    :param log_joint_fn: ``(x [B, ...], z [S, B, ...]) -> log p(x, z) [S, B]``.
    :param guide_sampler: ``(x [B, ...], S) -> (z [S, B, ...], log q(z | x) [S, B])``.
    :param x: data ``[B, ...]``.
    :param num_samples: ``K``.
    :param chunk_size: samples drawn per call (all ``K`` at once by default); bounds memory.
    :returns: ``[B]`` tensor of estimates.

    >>> import torch.distributions as dist
    >>> prior, lik = dist.Normal(0.0, 1.0), lambda z: dist.Normal(z, 1.0)
    >>> joint = lambda x, z: prior.log_prob(z) + lik(z).log_prob(x)
    >>> def sampler(x, s):  # the exact posterior N(x/2, 1/2): every weight equals p(x)
    ...     q = dist.Normal(x / 2, 0.5**0.5)
    ...     z = q.sample((s,))
    ...     return z, q.log_prob(z)
    >>> x = torch.tensor([0.3])
    >>> bool(torch.allclose(iwae_log_likelihood(joint, sampler, x, 10), dist.Normal(0.0, 2**0.5).log_prob(x)))
    True
    """
    if not callable(log_joint_fn) or not callable(guide_sampler):
        raise TypeError("log_joint_fn and guide_sampler must be callables; see the docstring for their signatures")
    if not isinstance(x, torch.Tensor) or x.dim() == 0:
        raise TypeError("x must be a torch.Tensor with a leading batch dimension [B, ...]")
    num_samples = check_positive_int(num_samples, "num_samples")
    chunk_size = num_samples if chunk_size is None else check_positive_int(chunk_size, "chunk_size")
    batch = x.shape[0]
    running = None
    with torch.no_grad():
        for start in range(0, num_samples, chunk_size):
            s = min(chunk_size, num_samples - start)
            z, log_q = guide_sampler(x, s)
            log_p = log_joint_fn(x, z)
            if log_q.shape != (s, batch) or log_p.shape != (s, batch):
                raise ValueError(
                    f"guide_sampler's log q and log_joint_fn must both return shape [S, B] = [{s}, {batch}], "
                    f"got {tuple(log_q.shape)} and {tuple(log_p.shape)}; sum over event dimensions first"
                )
            chunk = torch.logsumexp(log_p - log_q, dim=0)
            running = chunk if running is None else torch.logaddexp(running, chunk)
    return running - math.log(num_samples)


def compute_unsupervised(
    dataset: GroundTruthDataset,
    representation_fn: RepresentationFn,
    *,
    random_state: RandomState,
    num_points: int = 10_000,
    num_bins: int = 20,
    batch_size: int = 256,
) -> dict[str, float]:
    """Code-based unsupervised scores on ``num_points`` sampled observations.

    Uses the posterior mean returned by ``representation_fn``; active units, Gaussian total and
    Wasserstein correlation on the active dimensions (a collapsed dimension makes them undefined), and
    ``mutual_info_score``, the mean pairwise mutual information (nats) between distinct discretised
    dimensions (20 bins), as in disentanglement_lib.

    :returns: ``{"active_units", "active_fraction", "gaussian_total_correlation",
        "gaussian_wasserstein_correlation", "mutual_info_score"}``.
    """
    check_dataset(dataset)
    num_points = check_positive_int(num_points, "num_points")
    batch_size = check_positive_int(batch_size, "batch_size")
    codes, _ = sample_codes_and_factors(dataset, representation_fn, num_points, random_state, batch_size)
    return _compute_unsupervised(codes, num_bins=num_bins)


def _compute_unsupervised(codes: np.ndarray, *, num_bins: int = 20) -> dict[str, float]:
    """Unsupervised scores of ``codes [num, latent]``."""
    codes = check_codes(codes)
    scores = active_units(codes)
    varying = codes[:, codes.var(axis=0) > 0]
    if varying.shape[1] >= 1:
        scores["gaussian_total_correlation"] = gaussian_total_correlation(varying)
        scores["gaussian_wasserstein_correlation"] = gaussian_wasserstein_correlation(varying)
    else:
        scores["gaussian_total_correlation"] = 0.0
        scores["gaussian_wasserstein_correlation"] = 0.0
    latent = codes.shape[1]
    if latent > 1:
        discrete = histogram_discretize(codes, num_bins)
        mi = discrete_mutual_info(discrete, discrete)
        np.fill_diagonal(mi, 0.0)
        scores["mutual_info_score"] = float(mi.sum() / (latent**2 - latent))
    else:
        scores["mutual_info_score"] = 0.0
    return scores
