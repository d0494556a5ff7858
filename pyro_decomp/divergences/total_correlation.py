"""Total correlation and the β-TCVAE decomposition of the KL (Chen et al., 2018; thesis 003 §4.3, Eq. 4.4).

The aggregate posterior :math:`q(z) = \\frac1N \\sum_{n=1}^N q(z \\mid x_n)` needs the whole dataset. From a
minibatch :math:`\\{x_1, \\dots, x_B\\}` of a dataset of size :math:`N`, with :math:`z_b \\sim q(z \\mid x_b)`,
two estimators of :math:`\\log q(z_b)` are offered (the same weights give :math:`\\log q(z_{b,d})`):

* **MWS**, minibatch-weighted sampling (Chen et al. 2018, §C.1; thesis p. 40):

  .. math:: \\log \\hat q(z_b) = \\log \\frac{1}{N B} \\sum_{j=1}^B q(z_b \\mid x_j)

* **MSS**, minibatch-stratified sampling (004 Eq. 11b; Esmaeili et al. 2019), unbiased for :math:`q(z_b)`:

  .. math:: \\hat q(z_b) = \\frac{q(z_b \\mid x_b)}{N} + \\frac{N-1}{N(B-1)} \\sum_{j \\ne b} q(z_b \\mid x_j)

Every :math:`\\log(NB)` constant is kept. Dropping them (as many implementations do, because they do not
change the gradient) shifts the TC estimate by :math:`-(D-1)\\log(NB)`, which is why the thesis saw
negative TC. Both are nested estimators and are biased (004 App. C, see :mod:`~pyro_decomp.divergences.exclusive_kl`):

* MSS is exact when ``B == N`` (the batch is the dataset) and its bias shrinks as :math:`B \\to N`.
* MWS is not consistent: its weights sum to :math:`1/N`, not 1. At ``B == N`` it gives
  :math:`\\log q(z) - \\log N`, hence a TC of :math:`\\mathrm{TC} + (D-1)\\log N`. It is kept because it is the
  estimator of Chen et al. (their default) and of the thesis; prefer MSS.

Axes as in :mod:`pyro_decomp.divergences.base`: ``P`` particles, ``B`` batch, ``D`` latent dimensions. The
per-dimension densities need a factorised guide (``Normal(loc, scale).to_event(1)``).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ._utils import ScheduledDivergence, check_dataset_size, per_dimension_pairwise_log_prob
from .base import AggregateBatch, pairwise_log_prob

__all__ = [
    "BetaTCVAE",
    "TotalCorrelation",
    "kl_decomposition",
    "log_aggregate_posterior",
    "log_importance_weights",
    "log_marginal_posteriors",
]

ESTIMATORS = ("mws", "mss")


def _check_estimator(estimator: Any) -> str:
    if estimator not in ESTIMATORS:
        raise ValueError(
            f"estimator must be 'mws' (minibatch-weighted sampling) or 'mss' (minibatch-stratified "
            f"sampling), got {estimator!r}."
        )
    return estimator


def log_importance_weights(
    batch_size: int, dataset_size: int, estimator: str = "mss", *, dtype=None, device=None
) -> torch.Tensor:
    """Log-weights :math:`\\log w_{bj}` with :math:`\\hat q(z_b) = \\sum_j w_{bj}\\, q(z_b \\mid x_j)`, ``[B, B]``.

    MWS: :math:`w_{bj} = 1/(NB)`. MSS: :math:`w_{bb} = 1/N`, :math:`w_{bj} = (N-1)/(N(B-1))` for :math:`j \\ne b`.

    >>> log_importance_weights(3, 3, "mss").exp()   # B == N: the exact mixture weights 1/N
    tensor([[0.3333, 0.3333, 0.3333],
            [0.3333, 0.3333, 0.3333],
            [0.3333, 0.3333, 0.3333]])
    """
    estimator = _check_estimator(estimator)
    B, N = int(batch_size), int(dataset_size)
    if B < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}.")
    if N < B:
        raise ValueError(
            f"dataset_size ({N}) is smaller than the batch size ({B}); pass the size of the dataset the batch "
            "was drawn from (DecompositionELBO takes it from the model's dataset_size=)."
        )
    dtype = dtype or torch.get_default_dtype()
    if estimator == "mws":
        return torch.full((B, B), -math.log(N * B), dtype=dtype, device=device)
    if B == 1:
        if N > 1:
            raise ValueError("the MSS estimator needs a batch of at least 2 datapoints (or B == N == 1).")
        return torch.zeros((1, 1), dtype=dtype, device=device)
    w = torch.full((B, B), math.log(N - 1) - math.log(N) - math.log(B - 1), dtype=dtype, device=device)
    w.fill_diagonal_(-math.log(N))
    return w


def _dataset_size(batch: AggregateBatch, override: int | None) -> int:
    return override if override is not None else batch.num_data


def log_aggregate_posterior(
    batch: AggregateBatch, estimator: str = "mss", dataset_size: int | None = None
) -> torch.Tensor:
    """:math:`\\log \\hat q(z_b)` at the batch's own samples ``z_q``, ``[P, B]`` (MWS or MSS).

    Only needs the joint density :math:`q(z \\mid x)`, so any guide works.

    :param dataset_size: :math:`N`; default ``batch.dataset_size`` (the ELBO's scaled plate size).
    """
    lp = pairwise_log_prob(batch.guide_dist, batch.z_q)  # [P, B(sample), B(component)]
    N = _dataset_size(batch, check_dataset_size(dataset_size))
    logw = log_importance_weights(batch.batch_size, N, estimator, dtype=lp.dtype, device=lp.device)
    return torch.logsumexp(lp + logw, dim=-1)


def log_marginal_posteriors(
    batch: AggregateBatch, estimator: str = "mss", dataset_size: int | None = None
) -> torch.Tensor:
    """:math:`\\log \\hat q(z_{b,d})` for every dimension, ``[P, B, D]`` (needs a factorised guide)."""
    lp = per_dimension_pairwise_log_prob(batch.guide_dist, batch.z_q, "the marginal estimator")  # [P,B,B,D]
    N = _dataset_size(batch, check_dataset_size(dataset_size))
    logw = log_importance_weights(batch.batch_size, N, estimator, dtype=lp.dtype, device=lp.device)
    return torch.logsumexp(lp + logw.unsqueeze(-1), dim=-2)


def kl_decomposition(
    batch: AggregateBatch, estimator: str = "mss", dataset_size: int | None = None
) -> dict[str, torch.Tensor]:
    """The β-TCVAE split of the average KL (thesis Eq. 4.4), each a scalar averaged over ``P`` and ``B``:

    .. math::

        \\mathbb E_{p(x)}\\mathrm{KL}(q(z \\mid x) \\| p(z))
        = \\underbrace{\\mathbb E_{q(z,x)}\\Big[\\log \\frac{q(z \\mid x)}{q(z)}\\Big]}_{\\texttt{mi}}
        + \\underbrace{\\mathbb E_{q(z)}\\Big[\\log \\frac{q(z)}{\\prod_d q(z_d)}\\Big]}_{\\texttt{tc}}
        + \\underbrace{\\mathbb E_{q(z)}\\Big[\\log \\frac{\\prod_d q(z_d)}{p(z)}\\Big]}_{\\texttt{dim\\_kl}}

    ``dim_kl`` equals :math:`\\sum_d \\mathrm{KL}(q(z_d) \\| p(z_d))` for a factorised prior; for any other
    prior it is the remaining term, so the three always add up to ``kl`` (the Monte Carlo estimate
    :math:`\\log q(z_b \\mid x_b) - \\log p(z_b)`), sample by sample.

    Needs ``batch.log_p_zq`` (or ``batch.prior_log_prob``).

    :returns: dict with ``mi``, ``tc``, ``dim_kl``, ``kl``, ``log_qz`` (mean :math:`\\log\\hat q(z)`).
    """
    if batch.log_p_zq is not None:
        log_p = batch.log_p_zq
    elif batch.prior_log_prob is not None:
        log_p = batch.prior_log_prob(batch.z_q)
    else:
        raise ValueError(
            "kl_decomposition needs log p(z) at the guide samples: batch.log_p_zq or batch.prior_log_prob."
        )
    log_q_cond = batch.guide_dist.log_prob(batch.z_q)  # [P, B]
    log_qz = log_aggregate_posterior(batch, estimator, dataset_size)
    log_prod = log_marginal_posteriors(batch, estimator, dataset_size).sum(-1)
    return {
        "mi": (log_q_cond - log_qz).mean(),
        "tc": (log_qz - log_prod).mean(),
        "dim_kl": (log_prod - log_p).mean(),
        "kl": (log_q_cond - log_p).mean(),
        "log_qz": log_qz.mean(),
    }


class TotalCorrelation(ScheduledDivergence):
    """Total correlation :math:`\\mathrm{TC} = \\mathrm{KL}(q(z) \\,\\|\\, \\prod_d q(z_d))` by MWS or MSS.

    .. math::

        \\widehat{\\mathrm{TC}} = \\frac{1}{PB} \\sum_{p,b} \\Big[\\log \\hat q(z_b) - \\sum_{d=1}^D \\log \\hat q(z_{b,d})\\Big]

    With :class:`~pyro_decomp.DecompositionELBO` the loss gains :math:`\\alpha\\, n\\, \\widehat{\\mathrm{TC}}`
    (``n`` = number of datapoints the loss is scaled to), so

    * FactorVAE's objective, ELBO :math:`-\\,\\lambda\\,\\mathrm{TC}` (thesis §4.3), with this estimator instead of
      a discriminator: ``DecompositionELBO(beta=1, alpha=lam, divergence=TotalCorrelation())``;
    * β-TCVAE with weights (1, β, 1): ``DecompositionELBO(beta=1, alpha=beta - 1, divergence=TotalCorrelation())``
      (the ELBO's KL already holds one TC), or use :class:`BetaTCVAE`.

    Pass ``dataset_size=N`` to the model and guide (``vae.model(x, dataset_size=N)``), so that the ELBO knows
    :math:`N`; or set it here.

    :param estimator: ``"mss"`` (default; consistent) or ``"mws"`` (Chen et al.'s default; see module notes).
    :param dataset_size: :math:`N`, overriding the ELBO's plate size.

    >>> import torch, pyro.distributions as dist
    >>> q = dist.Normal(torch.randn(1, 8, 3), 0.5).to_event(1)
    >>> tc = TotalCorrelation("mss", dataset_size=8)(AggregateBatch(q, q.sample()))
    >>> tc.shape
    torch.Size([])
    """

    def __init__(self, estimator: str = "mss", *, dataset_size: int | None = None) -> None:
        super().__init__()
        self.estimator = _check_estimator(estimator)
        self.dataset_size = check_dataset_size(dataset_size)

    def __call__(self, batch: AggregateBatch) -> torch.Tensor:
        log_qz = log_aggregate_posterior(batch, self.estimator, self.dataset_size)
        log_prod = log_marginal_posteriors(batch, self.estimator, self.dataset_size).sum(-1)
        return (log_qz - log_prod).mean()


class BetaTCVAE(ScheduledDivergence):
    """The β-TCVAE regulariser (Chen et al. 2018, Eq. 4; thesis Eq. 4.4) as *extra* penalties on top of the KL.

    β-TCVAE replaces the ELBO's KL by :math:`a\\,\\mathrm{MI} + b\\,\\mathrm{TC} + c\\,\\mathrm{dimKL}`. Because
    :math:`\\mathbb E\\,\\mathrm{KL}(q(z|x) \\| p) = \\mathrm{MI} + \\mathrm{TC} + \\mathrm{dimKL}`, this divergence returns

    .. math:: \\hat D = (a-1)\\,\\widehat{\\mathrm{MI}} + (b-1)\\,\\widehat{\\mathrm{TC}} + (c-1)\\,\\widehat{\\mathrm{dimKL}}

    so that, configured as ``DecompositionELBO(beta=1, alpha=1, divergence=BetaTCVAE(tc_weight=b))``, the loss
    is ``reconstruction + KL + n * D̂``, i.e. :math:`n` times the β-TCVAE objective per datapoint (the ELBO
    multiplies the divergence by :math:`\\alpha\\, n`; keep ``alpha=1`` and ``beta=1``). The KL is analytic and the
    three terms are MWS/MSS estimates, so the identity holds in expectation up to the estimator's bias.
    Thesis Table 5.4 uses ``mi_weight = dim_kl_weight = 1`` and ``tc_weight`` :math:`\\in \\{1, 3, 6, 10\\}`.
    Any prior works; ``dim_kl`` is then :math:`\\mathbb E_q[\\log\\prod_d q(z_d) - \\log p(z)]`.

    Weights may be schedules (see :mod:`pyro_decomp.schedules`); the last estimates are returned by
    :meth:`update`, so ``elbo.last_terms`` holds ``divergence/mi``, ``divergence/tc``, ``divergence/dim_kl``.

    :param mi_weight: :math:`a` (Chen et al.'s α), default 1.
    :param tc_weight: :math:`b` (β), default 6.
    :param dim_kl_weight: :math:`c` (γ), default 1.
    :param estimator: ``"mss"`` or ``"mws"``.
    :param dataset_size: :math:`N`, overriding the ELBO's plate size.

    >>> import pyro_decomp
    >>> elbo = pyro_decomp.DecompositionELBO(beta=1.0, alpha=1.0, divergence=BetaTCVAE(tc_weight=6.0))
    """

    needs_prior_log_prob = True

    def __init__(
        self,
        mi_weight: Any = 1.0,
        tc_weight: Any = 6.0,
        dim_kl_weight: Any = 1.0,
        *,
        estimator: str = "mss",
        dataset_size: int | None = None,
    ) -> None:
        super().__init__()
        self.estimator = _check_estimator(estimator)
        self.dataset_size = check_dataset_size(dataset_size)
        self._set_weight("mi_weight", mi_weight)
        self._set_weight("tc_weight", tc_weight)
        self._set_weight("dim_kl_weight", dim_kl_weight)
        self._last: dict[str, float] = {}

    def __call__(self, batch: AggregateBatch) -> torch.Tensor:
        terms = kl_decomposition(batch, self.estimator, self.dataset_size)
        w = self.current_weights()
        self._last = {k: float(terms[k].detach()) for k in ("mi", "tc", "dim_kl")}
        return (
            (w["mi_weight"] - 1.0) * terms["mi"]
            + (w["tc_weight"] - 1.0) * terms["tc"]
            + (w["dim_kl_weight"] - 1.0) * terms["dim_kl"]
        )

    def update(self, batch: AggregateBatch) -> dict[str, float]:
        super().update(batch)
        return dict(self._last)
