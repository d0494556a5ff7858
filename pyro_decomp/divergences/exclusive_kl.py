"""Exclusive KL :math:`\\mathrm{KL}(q(z) \\| p(z))` with MWS/MSS entropy, and the App. C bias helper (004 App. C).

.. math:: \\mathrm{KL}(q(z) \\,\\|\\, p(z)) = -H[q(z)] - \\mathbb E_{q(z)}[\\log p(z)]

:math:`\\mathbb E_q[\\log p(z)]` has an unbiased Monte Carlo estimate; the entropy needs :math:`\\log q(z)`, which
is estimated from the minibatch (MWS or MSS, see :mod:`~pyro_decomp.divergences.total_correlation`). That is a
nested estimator, and 004 App. C shows that when :math:`B \\ll N` (encodings of different datapoints
rarely overlap) :math:`\\mathbb E[\\hat H] \\approx \\log N + \\mathbb E_{p(x)} H[q(z \\mid x)]`, so

.. math:: \\mathbb E[\\widehat{\\mathrm{KL}}] \\approx \\mathbb E_{p(x)}\\mathrm{KL}(q(z \\mid x) \\| p(z)) - \\log N

for MSS: the regulariser then acts like a β-VAE's KL, not like a divergence on :math:`q(z)`.
:func:`estimator_bias` measures that bias against a whole-dataset reference.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Any

import pyro.distributions as dist
import torch

from ._utils import ScheduledDivergence, check_dataset_size
from .base import AggregateBatch, Divergence
from .total_correlation import _check_estimator, log_aggregate_posterior

__all__ = ["ExclusiveKL", "estimator_bias"]


class ExclusiveKL(ScheduledDivergence):
    """Exclusive KL :math:`\\mathrm{KL}(q(z) \\| p(z))` of the aggregate posterior (004 App. C):

    .. math:: \\hat D = \\frac1{PB}\\sum_{p,b} \\big[\\log \\hat q(z_b) - \\log p(z_b)\\big], \\qquad z_b \\sim q(z \\mid x_b)

    with :math:`\\log\\hat q` by MWS or MSS (every :math:`\\log(NB)` constant kept). Works with any prior and
    guide (only joint densities are used). Configure it like any divergence:
    ``DecompositionELBO(beta=beta, alpha=alpha, divergence=ExclusiveKL("mss"))``; the ELBO adds
    :math:`\\alpha\\, n\\, \\hat D`. Pass ``dataset_size=N`` to the model/guide (or here): the estimator needs :math:`N`.

    :param estimator: ``"mss"`` (default) or ``"mws"``.
    :param dataset_size: :math:`N`, overriding the ELBO's plate size.

    >>> import torch, pyro.distributions as dist
    >>> q = dist.Normal(torch.randn(1, 16, 2), 1.0).to_event(1)
    >>> z = q.sample()
    >>> p = dist.Normal(torch.zeros(2), 1.0).to_event(1)
    >>> ExclusiveKL(dataset_size=16)(AggregateBatch(q, z, log_p_zq=p.log_prob(z))).shape
    torch.Size([])
    """

    needs_prior_log_prob = True

    def __init__(self, estimator: str = "mss", *, dataset_size: int | None = None) -> None:
        super().__init__()
        self.estimator = _check_estimator(estimator)
        self.dataset_size = check_dataset_size(dataset_size)

    def __call__(self, batch: AggregateBatch) -> torch.Tensor:
        if batch.log_p_zq is not None:
            log_p = batch.log_p_zq
        elif batch.prior_log_prob is not None:
            log_p = batch.prior_log_prob(batch.z_q)
        else:
            raise ValueError("ExclusiveKL needs log p(z) at the guide samples: batch.log_p_zq or prior_log_prob.")
        log_qz = log_aggregate_posterior(batch, self.estimator, self.dataset_size)
        return (log_qz - log_p).mean()


def _check_loc_scale(loc: Any, scale: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if not torch.is_tensor(loc) or not torch.is_tensor(scale):
        raise TypeError("loc and scale must be tensors [N, D] (the encoder's outputs on the whole dataset).")
    if loc.dim() != 2 or loc.shape != scale.shape:
        raise ValueError(f"loc and scale must both have shape [N, D]; got {tuple(loc.shape)} and {tuple(scale.shape)}.")
    if not bool((scale > 0).all()) or not bool(torch.isfinite(loc).all()):
        raise ValueError("scale must be positive and loc finite.")
    return loc.detach(), scale.detach()


def _make_batch(
    loc: torch.Tensor,
    scale: torch.Tensor,
    idx: torch.Tensor,
    N: int,
    prior_log_prob: Callable[[torch.Tensor], torch.Tensor] | None,
    generator: torch.Generator,
) -> AggregateBatch:
    """An AggregateBatch of the datapoints ``idx`` (``P = 1``), with a fresh sample from each encoder."""
    mu, sd = loc[idx].unsqueeze(0), scale[idx].unsqueeze(0)
    # draw on the CPU generator, then move: results do not depend on the device
    z = mu + sd * torch.randn(mu.shape, generator=generator, dtype=mu.dtype).to(mu.device)
    q = dist.Normal(mu, sd, validate_args=False).to_event(1)
    log_p = prior_log_prob(z) if prior_log_prob is not None else None
    return AggregateBatch(guide_dist=q, z_q=z, prior_log_prob=prior_log_prob, log_p_zq=log_p, dataset_size=N)


def estimator_bias(
    divergence: Divergence | Callable[[AggregateBatch], torch.Tensor],
    loc: torch.Tensor,
    scale: torch.Tensor,
    *,
    batch_sizes: Sequence[int],
    prior_log_prob: Callable[[torch.Tensor], torch.Tensor] | None = None,
    num_repeats: int = 20,
    reference: Divergence | Callable[[AggregateBatch], torch.Tensor] | None = None,
    num_reference_repeats: int = 20,
    seed: int = 0,
) -> dict[str, Any]:
    """Bias and spread of a minibatch estimator against a whole-dataset reference (004 App. C).

    For a fixed Gaussian encoder evaluated on the whole dataset (``loc, scale: [N, D]``), draws
    ``num_repeats`` minibatches of each size ``B`` (without replacement), one :math:`z_b \\sim q(z \\mid x_b)`
    each, and evaluates ``divergence`` with ``dataset_size = N``. The reference evaluates ``reference`` on
    the whole dataset (``B = N``), averaged over ``num_reference_repeats`` draws of the samples. By default
    the reference is ``divergence`` with ``estimator="mss"``, which at ``B = N`` uses the exact mixture
    :math:`q(z) = \\frac1N\\sum_n q(z \\mid x_n)`, so the reference only carries outer Monte Carlo noise.

    :param divergence: e.g. ``ExclusiveKL("mss")`` or ``TotalCorrelation("mws")`` (any callable on an
        :class:`AggregateBatch` returning a scalar).
    :param loc: encoder means on the whole dataset, ``[N, D]``.
    :param scale: encoder standard deviations, ``[N, D]``.
    :param batch_sizes: the ``B`` values, each in ``[2, N]``.
    :param prior_log_prob: ``z[..., D] -> log p(z)``; needed by estimators of KL to the prior.
    :returns: dict with ``batch_sizes``, ``mean``, ``std`` (over repeats), ``bias`` (mean − reference),
        ``reference``, ``reference_std``, ``values`` (lists of floats per B), ``dataset_size``.

    >>> import torch
    >>> from pyro_decomp.divergences import TotalCorrelation
    >>> out = estimator_bias(TotalCorrelation("mss"), torch.randn(50, 2), torch.full((50, 2), 0.3),
    ...                      batch_sizes=[5, 50], num_repeats=3, num_reference_repeats=3)
    >>> out["bias"][-1] == out["mean"][-1] - out["reference"]
    True
    """
    if not callable(divergence):
        raise TypeError(f"divergence must be a Divergence or a callable on an AggregateBatch, got {divergence!r}.")
    loc, scale = _check_loc_scale(loc, scale)
    N = loc.shape[0]
    sizes = list(batch_sizes)
    if not sizes or any(isinstance(b, bool) or not isinstance(b, int) or not 2 <= b <= N for b in sizes):
        raise ValueError(f"batch_sizes must be a non-empty list of integers in [2, N={N}], got {batch_sizes!r}.")
    for name, n in (("num_repeats", num_repeats), ("num_reference_repeats", num_reference_repeats)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"{name} must be a positive integer, got {n!r}.")
    if getattr(divergence, "needs_prior_log_prob", False) and prior_log_prob is None:
        raise ValueError(f"{type(divergence).__name__} needs prior_log_prob= (e.g. prior.log_prob).")
    if reference is None:
        reference = copy.deepcopy(divergence)
        if hasattr(reference, "estimator"):
            reference.estimator = "mss"
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    if hasattr(divergence, "dataset_size"):
        # the helper controls N; a fixed dataset_size on the divergence would contradict it
        divergence = copy.copy(divergence)
        divergence.dataset_size = None

    def _evaluate(fn, B: int) -> float:
        idx = torch.randperm(N, generator=gen)[:B].to(loc.device)
        with torch.no_grad():
            return float(fn(_make_batch(loc, scale, idx, N, prior_log_prob, gen)))

    ref_values = [_evaluate(reference, N) for _ in range(num_reference_repeats)]
    ref = sum(ref_values) / len(ref_values)
    ref_std = _std(ref_values)
    out: dict[str, Any] = {
        "dataset_size": N,
        "batch_sizes": sizes,
        "mean": [],
        "std": [],
        "bias": [],
        "values": [],
        "reference": ref,
        "reference_std": ref_std,
    }
    for B in sizes:
        vals = [_evaluate(divergence, B) for _ in range(num_repeats)]
        mean = sum(vals) / len(vals)
        out["values"].append(vals)
        out["mean"].append(mean)
        out["std"].append(_std(vals))
        out["bias"].append(mean - ref)
    return out


def _std(values: Sequence[float]) -> float:
    if len(values) < 2:
        return 0.0
    m = sum(values) / len(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))
