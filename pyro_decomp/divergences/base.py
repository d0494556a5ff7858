"""The divergence contract: :math:`D(q(z), p(z))` estimated from one minibatch (SPEC §2, DESIGN.md).

Axes, everywhere in :mod:`pyro_decomp.divergences`:

* ``P`` - Monte Carlo particles (1 unless the ELBO vectorises several);
* ``B`` - the minibatch, i.e. the encoders :math:`q(z \\mid x_b)` that make up the aggregate posterior;
* ``M`` - fresh prior samples :math:`z_j \\sim p(z)`;
* ``D`` - latent dimensions.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from pyro.distributions import Delta as _Delta
from torch.distributions import Distribution

__all__ = ["AggregateBatch", "Divergence", "build_aggregate_batch", "pairwise_log_prob"]


@dataclass
class AggregateBatch:
    """Everything a divergence may use for one minibatch.

    :ivar guide_dist: :math:`q(z \\mid x_b)`, ``batch_shape == [P, B]``, ``event_shape == [D]``.
    :ivar z_q: samples :math:`z_b \\sim q(z \\mid x_b)`, ``[P, B, D]``.
    :ivar z_p: prior samples :math:`z_j \\sim p(z)`, ``[P, M, D]`` (``None`` if not requested).
    :ivar log_p_zp: :math:`\\log p(z_j)`, ``[P, M]`` (``None`` if not requested).
    :ivar prior_log_prob: callable ``z[..., D] -> [...]`` giving the marginal :math:`\\log p(z)`, or ``None``
        when it is only known at the batch's own points (a model that exposes no prior program).
    :ivar log_p_zq: marginal :math:`\\log p(z_b)` at the guide samples, ``[P, B]`` (when ``needs_prior_log_prob``).

    Every prior density here is the *marginal* of the site, never :math:`p(z \\mid \\text{parents})`
    (:func:`build_aggregate_batch`, :mod:`pyro_decomp.models.marginal`).
    :ivar dataset_size: :math:`N`, the size of the dataset the batch was drawn from (``None`` = ``B``).
    """

    guide_dist: Distribution
    z_q: torch.Tensor
    z_p: torch.Tensor | None = None
    log_p_zp: torch.Tensor | None = None
    prior_log_prob: Callable[[torch.Tensor], torch.Tensor] | None = None
    log_p_zq: torch.Tensor | None = None
    dataset_size: int | None = None

    @property
    def batch_size(self) -> int:
        return self.z_q.shape[-2]

    @property
    def num_data(self) -> int:
        return self.batch_size if self.dataset_size is None else int(self.dataset_size)


def pairwise_log_prob(guide_dist: Distribution, z: torch.Tensor) -> torch.Tensor:
    """:math:`\\log q(z_j \\mid x_i)` for every pair: ``guide_dist`` ``[P, B]``, ``z: [P, M, D]`` → ``[P, M, B]``."""
    # move M in front so that [M, P, 1, D] broadcasts against the batch shape [P, B]
    return guide_dist.log_prob(z.movedim(-2, 0).unsqueeze(-2)).movedim(0, -2)


def log_mean_exp(x: torch.Tensor, dim: int) -> torch.Tensor:
    """:math:`\\log \\frac1n \\sum \\exp x` along ``dim``, stable."""
    return torch.logsumexp(x, dim) - math.log(x.shape[dim])


class Divergence:
    """Base class of the aggregate-posterior regularisers :math:`D(q(z), p(z))`.

    Subclasses implement :meth:`__call__` and set two flags:

    * ``needs_prior_samples`` - the ELBO draws ``M`` fresh prior samples (``num_prior_samples``,
      default ``B``) and their log densities;
    * ``needs_prior_log_prob`` - the estimator evaluates :math:`\\log p` at guide samples.

    A divergence with trainable state of its own (the FactorVAE discriminator) also implements
    :meth:`state_dict` / :meth:`load_state_dict` and :meth:`update`, called once per SVI step on
    detached codes.
    """

    needs_prior_samples: bool = False
    needs_prior_log_prob: bool = False

    def __init__(self, *, num_prior_samples: int | None = None) -> None:
        if num_prior_samples is not None and (
            isinstance(num_prior_samples, bool) or not isinstance(num_prior_samples, int) or num_prior_samples < 2
        ):
            raise ValueError(
                f"num_prior_samples must be an integer >= 2 or None (= batch size), got {num_prior_samples!r}."
            )
        self.num_prior_samples = num_prior_samples

    def __call__(self, batch: AggregateBatch) -> torch.Tensor:
        """Return the scalar estimate of :math:`D`, averaged over particles."""
        raise NotImplementedError

    def update(self, batch: AggregateBatch) -> dict[str, float]:
        """Train any auxiliary parameters on detached codes (no-op by default)."""
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        return None

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


def build_aggregate_batch(divergence: Divergence, guide_site: dict, prior_density, *, dataset_size: float) -> AggregateBatch:
    """The :class:`AggregateBatch` of one (possibly vectorised) guide trace for ``divergence``.

    :param guide_site: the guide trace's site of the latent the divergence acts on: ``fn`` is
        :math:`q(z \\mid x_b)` with ``batch_shape`` ``[B]`` or ``[P, B]`` and ``event_shape`` ``[D]``.
    :param prior_density: the site's marginal prior (:mod:`pyro_decomp.models.marginal`): it gives
        ``sample_with_log_prob((P, M))``, ``log_prob_at(z_q)`` and ``log_prob`` (or ``None``).
    :param dataset_size: :math:`N`, the scaled size of the data plate.
    """
    name = guide_site["name"]
    fn, z_q = guide_site["fn"], guide_site["value"]
    if isinstance(fn, _Delta):
        raise ValueError(
            f"the divergence needs the density q(z|x) of latent site {name!r}, but the guide samples it from a "
            "Delta (Pyro's autoguides sample auxiliary latents and place each site with a point mass). Write "
            "the guide's site as a distribution with a density, e.g. dist.Normal(loc, scale).to_event(1)."
        )
    if len(fn.batch_shape) == 1:
        fn = fn.expand(torch.Size([1]) + fn.batch_shape)
        z_q = z_q.unsqueeze(0)
    if len(fn.batch_shape) != 2:
        raise ValueError(
            f"the divergence needs latent site {name!r} inside exactly one data plate "
            f"(batch_shape [particles, batch]); got batch_shape {tuple(fn.batch_shape)}."
        )
    if len(fn.event_shape) != 1:
        raise ValueError(
            f"the divergence needs a vector latent (event_shape [D]); site {name!r} has "
            f"event_shape {tuple(fn.event_shape)}. Use .to_event(1) on a flat latent."
        )
    batch = AggregateBatch(guide_dist=fn, z_q=z_q, dataset_size=int(round(dataset_size)))
    batch.prior_log_prob = prior_density.log_prob
    if divergence.needs_prior_log_prob:
        batch.log_p_zq = prior_density.log_prob_at(z_q)
    if divergence.needs_prior_samples:
        P, B = z_q.shape[:2]
        batch.z_p, batch.log_p_zp = prior_density.sample_with_log_prob((P, divergence.num_prior_samples or B))
    return batch
