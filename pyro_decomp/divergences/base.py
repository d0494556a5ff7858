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
from torch.distributions import Distribution

__all__ = ["AggregateBatch", "Divergence", "pairwise_log_prob"]


@dataclass
class AggregateBatch:
    """Everything a divergence may use for one minibatch.

    :ivar guide_dist: :math:`q(z \\mid x_b)`, ``batch_shape == [P, B]``, ``event_shape == [D]``.
    :ivar z_q: samples :math:`z_b \\sim q(z \\mid x_b)`, ``[P, B, D]``.
    :ivar z_p: prior samples :math:`z_j \\sim p(z)`, ``[P, M, D]`` (``None`` if not requested).
    :ivar log_p_zp: :math:`\\log p(z_j)`, ``[P, M]`` (``None`` if not requested).
    :ivar prior_log_prob: callable ``z[..., D] -> [...]`` giving :math:`\\log p(z)`, or ``None`` when the
        prior's marginal density is not available (hand-written programs with several sites).
    :ivar log_p_zq: :math:`\\log p(z_b)` at the guide samples, ``[P, B]`` (when ``needs_prior_log_prob``).
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
