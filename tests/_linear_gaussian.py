"""A linear-Gaussian VAE whose posterior is analytic, shared by the ArviZ and amortisation tests.

z ~ N(0, I_2), x | z ~ N(W z + b, σ² I_3) with W = Q diag(1.5, 0.8), Q orthonormal columns, σ = 0.5.
Then p(z | x) = N(Σ Wᵀ(x − b)/σ², Σ) with Σ = (I + WᵀW/σ²)⁻¹ = diag(1/(1 + 1.5²/σ²), 1/(1 + 0.8²/σ²))
= diag(0.1, 0.2809), which is diagonal, so a diagonal-Gaussian encoder can be exact, and

    log p(x) = log N(x; b, W Wᵀ + σ² I).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from pyro_decomp.models import VAE, GaussianLikelihood, IsotropicGaussianPrior

SIGMA = 0.5
_Q, _ = torch.linalg.qr(torch.tensor([[1.0, 0.3], [0.2, -1.0], [0.5, 0.4]]))
W = _Q * torch.tensor([1.5, 0.8])  # orthogonal columns: WᵀW = diag(2.25, 0.64)
B = torch.tensor([0.3, -0.2, 0.1])
POST_COV = torch.linalg.inv(torch.eye(2) + W.T @ W / SIGMA**2)  # diag(0.1, 0.2809)


def posterior_mean(x: torch.Tensor) -> torch.Tensor:
    return (x - B) @ W @ POST_COV.T / SIGMA**2


def analytic_log_px(x: torch.Tensor) -> np.ndarray:
    marginal = torch.distributions.MultivariateNormal(B, W @ W.T + SIGMA**2 * torch.eye(3))
    return marginal.log_prob(x).numpy()


class LinearDecoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(2, 3)
        with torch.no_grad():
            self.linear.weight.copy_(W)
            self.linear.bias.copy_(B)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.linear(z)


class AnalyticEncoder(nn.Module):
    """The exact posterior (shift=0, shrink=1), or a deliberately shifted / overconfident one."""

    def __init__(self, shift: float = 0.0, shrink: float = 1.0) -> None:
        super().__init__()
        self.shift, self.shrink = shift, shrink

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc = posterior_mean(x) + self.shift
        return loc, (POST_COV.diagonal().sqrt() * self.shrink).expand_as(loc)


def linear_vae(shift: float = 0.0, shrink: float = 1.0, prior=None) -> VAE:
    prior = IsotropicGaussianPrior(2) if prior is None else prior
    return VAE(prior, LinearDecoder(), GaussianLikelihood(1, scale=SIGMA), AnalyticEncoder(shift, shrink))


def data(n: int = 4, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, generator=gen) @ W.T + B + SIGMA * torch.randn(n, 3, generator=gen)
