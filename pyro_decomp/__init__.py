"""pyro-decomp: decomposed latent representations with variational auto-encoders, on Pyro and PyTorch.

The objective is paper Eq. 7,
:math:`\\mathcal L_{\\alpha,\\beta}(x) = \\mathbb E_q[\\log p(x|z)] - \\beta\\,\\mathrm{KL}(q(z|x)\\|p(z)) - \\alpha\\,D(q(z),p(z))`,
available as :class:`DecompositionELBO`, a drop-in loss for :class:`pyro.infer.SVI`.
"""

from . import divergences, guides, models
from .elbo import DecompositionELBO
from .guides import AmortizedGaussianGuide
from .models import (
    VAE,
    AnisotropicGaussianPrior,
    BernoulliLikelihood,
    GaussianLikelihood,
    GaussianMixturePrior,
    IsotropicGaussianPrior,
    LaplaceLikelihood,
    SparseMixturePrior,
    StudentTPrior,
)

__version__ = "0.1.0"

__all__ = [
    "VAE",
    "AmortizedGaussianGuide",
    "AnisotropicGaussianPrior",
    "BernoulliLikelihood",
    "DecompositionELBO",
    "GaussianLikelihood",
    "GaussianMixturePrior",
    "IsotropicGaussianPrior",
    "LaplaceLikelihood",
    "SparseMixturePrior",
    "StudentTPrior",
    "__version__",
    "divergences",
    "guides",
    "models",
]
