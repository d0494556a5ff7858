"""Generative side: priors as Pyro programs, likelihoods, decoders and the VAE model."""

from .likelihoods import BernoulliLikelihood, GaussianLikelihood, LaplaceLikelihood, Likelihood
from .priors import (
    AnisotropicGaussianPrior,
    GaussianMixturePrior,
    IsotropicGaussianPrior,
    Prior,
    SparseMixturePrior,
    StudentTPrior,
)
from .structured import HierarchicalScaleGuide, hierarchical_scale_prior
from .vae import VAE

__all__ = [
    "AnisotropicGaussianPrior",
    "BernoulliLikelihood",
    "GaussianLikelihood",
    "GaussianMixturePrior",
    "HierarchicalScaleGuide",
    "IsotropicGaussianPrior",
    "LaplaceLikelihood",
    "Likelihood",
    "Prior",
    "SparseMixturePrior",
    "StudentTPrior",
    "VAE",
    "hierarchical_scale_prior",
]
