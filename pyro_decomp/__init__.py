"""pyro-decomp: decomposed latent representations with variational auto-encoders, on Pyro and PyTorch.

The objective is paper Eq. 7,
:math:`\\mathcal L_{\\alpha,\\beta}(x) = \\mathbb E_q[\\log p(x|z)] - \\beta\\,\\mathrm{KL}(q(z|x)\\|p(z)) - \\alpha\\,D(q(z),p(z))`,
available as :class:`DecompositionELBO`, a drop-in loss for :class:`pyro.infer.SVI`.
"""

import importlib

from . import divergences, guides, models, optim, schedules
from .elbo import DecompositionELBO, JitDecompositionELBO
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

# heavier subpackages (scikit-learn, ArviZ, torchvision) load on first use
_LAZY = ("analysis", "data", "metrics")


def __getattr__(name: str):
    if name in _LAZY:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'pyro_decomp' has no attribute {name!r}")

__all__ = [
    "VAE",
    "AmortizedGaussianGuide",
    "AnisotropicGaussianPrior",
    "BernoulliLikelihood",
    "DecompositionELBO",
    "JitDecompositionELBO",
    "GaussianLikelihood",
    "GaussianMixturePrior",
    "IsotropicGaussianPrior",
    "LaplaceLikelihood",
    "SparseMixturePrior",
    "StudentTPrior",
    "__version__",
    "analysis",
    "data",
    "divergences",
    "guides",
    "metrics",
    "models",
    "optim",
    "schedules",
]
