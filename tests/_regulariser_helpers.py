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
