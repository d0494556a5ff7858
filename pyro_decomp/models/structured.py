"""Worked structured priors written as plain Pyro programs (SPEC §3, "user-written structured priors").

These show that nothing in :class:`~pyro_decomp.DecompositionELBO` or the divergences special-cases the
built-in priors: a prior is any program that samples the latent site(s) inside the caller's data plate.

:func:`hierarchical_scale_prior` is a two-level program. Per datapoint it draws a global scale
:math:`s`, then the code given that scale:

.. math::

    \\log s \\sim \\mathcal N(\\mu_s, \\sigma_s^2), \\qquad z \\mid s \\sim \\mathcal N(0, s^2 I)

Marginally :math:`z` is a scale mixture of Gaussians: heavier-tailed than a Gaussian, with all
dimensions of one code sharing the scale (so they are dependent but uncorrelated). The guide must
then infer ``"z_log_scale"`` too; :class:`HierarchicalScaleGuide` does so from the same encoder
features. The program has no closed-form marginal, so the divergences get
:math:`\\log p(z) = \\log \\int p(z \\mid s)\\,p(s)\\,ds` by importance sampling over the scale
(:class:`~pyro_decomp.models.marginal.ProgramMarginal`, ``DecompositionELBO(marginal_samples=K)``),
never the conditional :math:`\\log p(z \\mid s)`.
"""

from __future__ import annotations

from collections.abc import Callable

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule

from ..guides import data_plate

__all__ = ["HierarchicalScaleGuide", "hierarchical_scale_prior"]


def hierarchical_scale_prior(
    latent_dim: int, *, log_scale_loc: float = 0.0, log_scale_scale: float = 0.5, site: str = "z"
) -> Callable[[], torch.Tensor]:
    """Return a Pyro program sampling ``site + "_log_scale"`` (``[*plates]``) and ``site`` (``[*plates, D]``).

    >>> prior = hierarchical_scale_prior(3)
    >>> with pyro.plate("data", 5):
    ...     z = prior()
    >>> z.shape
    torch.Size([5, 3])
    """
    if isinstance(latent_dim, bool) or not isinstance(latent_dim, int) or latent_dim < 1:
        raise ValueError(f"latent_dim must be a positive integer, got {latent_dim!r}.")
    if not log_scale_scale > 0:
        raise ValueError(f"log_scale_scale must be positive, got {log_scale_scale!r}.")

    def prior() -> torch.Tensor:
        log_s = pyro.sample(f"{site}_log_scale", dist.Normal(log_scale_loc, log_scale_scale))
        scale = log_s.exp().unsqueeze(-1).expand(log_s.shape + (latent_dim,))
        return pyro.sample(site, dist.Normal(torch.zeros_like(scale), scale).to_event(1))

    prior.site = site  # type: ignore[attr-defined]
    prior.latent_dim = latent_dim  # type: ignore[attr-defined]
    return prior


class HierarchicalScaleGuide(PyroModule):
    """Guide for :func:`hierarchical_scale_prior`: :math:`q(z \\mid x)` from ``encoder`` and a Gaussian
    :math:`q(\\log s \\mid x)` from a linear head on the encoder's mean and scale."""

    def __init__(self, encoder: torch.nn.Module, latent_dim: int, *, site: str = "z") -> None:
        super().__init__()
        self.encoder = encoder
        self.site = site
        self.scale_head = torch.nn.Linear(2 * latent_dim, 2)

    def forward(self, x: torch.Tensor, *, dataset_size: int | None = None) -> torch.Tensor:
        loc, scale = self.encoder(x)
        h = self.scale_head(torch.cat([loc, scale.log()], -1))
        with data_plate(x, dataset_size):
            pyro.sample(
                f"{self.site}_log_scale",
                dist.Normal(h[..., 0], torch.nn.functional.softplus(h[..., 1]) + 1e-4),
            )
            return pyro.sample(self.site, dist.Normal(loc, scale).to_event(1))
