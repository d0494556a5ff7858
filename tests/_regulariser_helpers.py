"""Shared pieces for the regulariser tests (issue 4): a tiny VAE and one SVI step."""

from __future__ import annotations

import pyro
import torch

from pyro_decomp import DecompositionELBO
from pyro_decomp.models import VAE, GaussianLikelihood, IsotropicGaussianPrior
from pyro_decomp.models.networks import build_networks


def tiny_vae(latent_dim: int = 3) -> VAE:
    enc, dec = build_networks("pinwheel", latent_dim=latent_dim)
    return VAE(IsotropicGaussianPrior(latent_dim), dec, GaussianLikelihood(), enc)


def svi_steps(divergence, *, beta=1.0, alpha=1.0, latent_dim=3, steps=2, batch=16, dataset_size=64):
    """Run ``steps`` SVI steps of a tiny VAE with ``divergence``; return (vae, elbo, losses)."""
    vae = tiny_vae(latent_dim)
    elbo = DecompositionELBO(beta=beta, alpha=alpha, divergence=divergence)
    svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), loss=elbo)
    x = torch.randn(batch, 2)
    losses = [svi.step(x, dataset_size=dataset_size) for _ in range(steps)]
    return vae, elbo, losses


def divergence_enters_as_pyro_elbo_plus_alpha_n_d(vae, elbo, divergence, *, batch=16, dataset_size=64, seed=11):
    """Check ``loss(β=1, α) = TraceMeanField_ELBO loss + α N D̂`` at one seed, with D̂ evaluated on an
    :class:`AggregateBatch` built here from the encoder and the guide's draw, and the prior N(0, I)."""
    import pyro.distributions as dist
    import pytest

    from pyro_decomp.divergences import AggregateBatch

    torch.manual_seed(seed)
    x = torch.randn(batch, 2)
    alpha = elbo.current_weights()["alpha"]
    pyro.set_rng_seed(seed)
    ours = elbo.loss(vae.model, vae.guide, x, dataset_size=dataset_size)
    pyro.set_rng_seed(seed)
    ref = pyro.infer.TraceMeanField_ELBO().loss(vae.model, vae.guide, x, dataset_size=dataset_size)
    pyro.set_rng_seed(seed)  # the guide runs first in both ELBOs: this is the z they used
    z = pyro.poutine.trace(vae.guide).get_trace(x, dataset_size=dataset_size).nodes["z"]["value"]
    with torch.no_grad():
        loc, scale = vae.encode(x)
        q = dist.Normal(loc.unsqueeze(0), scale.unsqueeze(0)).to_event(1)
        log_p = dist.Normal(0.0, 1.0).expand(z.shape).to_event(1).log_prob(z).unsqueeze(0)
        d_hat = float(divergence(AggregateBatch(q, z.unsqueeze(0), log_p_zq=log_p, dataset_size=dataset_size)))
    assert ours - ref == pytest.approx(alpha * dataset_size * d_hat, rel=1e-4, abs=1e-3)
