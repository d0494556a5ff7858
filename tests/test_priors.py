"""Priors: densities against scipy, normalisers against quadrature, PCA initialisation, and errors."""

from __future__ import annotations

import math

import numpy as np
import pyro
import pytest
import torch
from scipy import integrate, stats

from pyro_decomp.models.priors import (
    AnisotropicGaussianPrior,
    GaussianMixturePrior,
    IsotropicGaussianPrior,
    SparseMixturePrior,
    StudentTPrior,
    gaussian_log_normaliser,
    mixture_means,
    pca_variances,
)


def _scipy_logpdf(prior, z: np.ndarray) -> np.ndarray:
    """Independent reference densities written with scipy.stats only."""
    if isinstance(prior, IsotropicGaussianPrior):
        return stats.norm.logpdf(z, scale=prior.scale).sum(-1)
    if isinstance(prior, AnisotropicGaussianPrior):
        sd = prior.variance().detach().sqrt().numpy()
        return stats.norm.logpdf(z, scale=sd).sum(-1)
    if isinstance(prior, StudentTPrior):
        return stats.t.logpdf(z, prior.df).sum(-1)
    if isinstance(prior, GaussianMixturePrior):
        dens = sum(
            w * stats.multivariate_normal.pdf(z, mean=m, cov=prior.variance * np.eye(z.shape[-1]))
            for w, m in zip(prior.weights.numpy(), prior.means.numpy(), strict=True)
        )
        return np.log(dens)
    if isinstance(prior, SparseMixturePrior):
        g = prior.gamma
        return np.log((1 - g) * stats.norm.pdf(z) + g * stats.norm.pdf(z, scale=prior.sigma0)).sum(-1)
    raise AssertionError(type(prior))


PRIORS = {
    "isotropic": lambda: IsotropicGaussianPrior(3, scale=1.5),
    "anisotropic": lambda: AnisotropicGaussianPrior(3, variance=torch.tensor([2.0, 0.7, 0.3])),
    "anisotropic-learned": lambda: AnisotropicGaussianPrior(3, variance=torch.tensor([2.0, 0.7, 0.3]), learn=True),
    "student-t": lambda: StudentTPrior(3, df=3.0),
    "mixture-corners": lambda: GaussianMixturePrior(),
    "mixture-axes": lambda: GaussianMixturePrior(means="axes", weights=[0.1, 0.2, 0.3, 0.4]),
    "sparse": lambda: SparseMixturePrior(3, gamma=0.8),
}


@pytest.mark.parametrize("make", PRIORS.values(), ids=PRIORS.keys())
def test_log_prob_matches_scipy(make):
    prior = make()
    z = torch.randn(50, prior.latent_dim, dtype=torch.float64) * 1.5
    ours = prior.double().log_prob(z).detach().numpy()
    # float32-rounded mixture weights are renormalised by Categorical: differences of order 1e-8
    np.testing.assert_allclose(ours, _scipy_logpdf(prior, z.numpy()), rtol=1e-7, atol=1e-6)


@pytest.mark.parametrize("make", PRIORS.values(), ids=PRIORS.keys())
def test_prior_is_a_program_inside_the_data_plate(make):
    prior = make()
    with pyro.plate("data", 7):
        tr = pyro.poutine.trace(prior).get_trace()
    site = tr.nodes["z"]
    assert site["value"].shape == (7, prior.latent_dim)
    assert site["fn"].batch_shape == (7,)
    # samples follow the distribution: compare the sample mean with the exact mean over many draws
    n = 200_000  # sample size; standard error of each coordinate's mean is below 0.01 for these priors
    mean = prior.sample(n).mean(0)
    exact = prior.distribution().mean
    assert torch.allclose(mean, exact.detach(), atol=0.02)


def test_gaussian_log_normaliser_matches_quadrature():
    var = torch.tensor([0.5, 2.0], dtype=torch.float64)
    for beta in (0.3, 1.0, 4.0):
        ref = sum(
            math.log(integrate.quad(lambda t, s=s, b=beta: stats.norm.pdf(t, scale=s) ** b, -np.inf, np.inf)[0])
            for s in var.sqrt().tolist()
        )
        assert gaussian_log_normaliser(var, beta).item() == pytest.approx(ref, abs=1e-8)
    assert gaussian_log_normaliser(var, 1.0).item() == pytest.approx(0.0, abs=1e-12)  # ∫p = 1


@pytest.mark.parametrize(
    "make",
    [lambda: StudentTPrior(2, df=5.0), lambda: SparseMixturePrior(2, gamma=0.8)],
    ids=["student-t", "sparse"],
)
def test_quadrature_normaliser_matches_importance_sampling(make):
    prior = make().double()
    beta = 2.0  # F_β = E_p[p^{β-1}] has finite variance here
    quad = prior.log_normaliser(beta).item()
    pyro.set_rng_seed(1)
    num_samples = 400_000  # relative error of the IS estimate is about 1%
    is_est = super(type(prior), prior).log_normaliser(beta, num_samples=num_samples).item()
    assert quad == pytest.approx(is_est, abs=0.03)


def test_pca_variances_follow_the_centred_singular_values():
    rng = np.random.default_rng(0)
    data = rng.normal(size=(500, 6)) * np.array([3.0, 0.5, 2.0, 1.0, 0.2, 0.1]) + 10.0
    var = pca_variances(torch.tensor(data), 3).double()
    s = np.linalg.svd(data - data.mean(0), compute_uv=False)[:3]  # descending
    expected = 3 * s**2 / (s**2).sum()
    np.testing.assert_allclose(var.numpy(), expected, rtol=1e-5)
    assert var.sum().item() == pytest.approx(3.0, rel=1e-6)
    assert (var[:-1] >= var[1:]).all()
    prior = AnisotropicGaussianPrior.from_data(torch.tensor(data, dtype=torch.float32), 3, learn=True)
    np.testing.assert_allclose(prior.variance().detach().numpy(), expected, rtol=1e-4)


def test_learned_prior_parameters_are_optimised_by_svi():
    prior = AnisotropicGaussianPrior(2, learn=True)
    names = [n for n, _ in prior.named_parameters()]
    assert names == ["log_variance_unconstrained"] or names == ["log_variance"]


def test_mixture_means_layouts():
    assert mixture_means(2, 4, "corners").tolist() == [[0, 0], [1, 0], [0, 1], [1, 1]]
    assert mixture_means(2, 4, "axes").tolist() == [[1, 0], [-1, 0], [0, 1], [0, -1]]
    prior = GaussianMixturePrior()
    assert prior.assign(torch.tensor([[0.9, 1.1], [0.05, -0.1]])).tolist() == [3, 0]


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: IsotropicGaussianPrior(0), "latent_dim must be a positive integer"),
        (lambda: IsotropicGaussianPrior(2, scale=-1.0), "scale must be a finite positive number"),
        (lambda: AnisotropicGaussianPrior(2, variance=[1.0, -1.0]), "variance must be finite and positive"),
        (lambda: AnisotropicGaussianPrior(2, variance=[1.0]), r"variance must have shape \[latent_dim\]"),
        (lambda: StudentTPrior(2, df=0.0), "df must be a finite positive number"),
        (lambda: GaussianMixturePrior(2, n_components=5), "'corners' layout has only"),
        (lambda: GaussianMixturePrior(2, means="grid"), "Unknown means layout 'grid'"),
        (lambda: GaussianMixturePrior(2, weights=[0.5, 0.5, 0.5, 0.5]), "weights must be non-negative and sum to 1"),
        (lambda: SparseMixturePrior(2, gamma=1.0), r"gamma must lie in \[0, 1\)"),
        (lambda: SparseMixturePrior(2, sigma0=0.0), "sigma0 must be a finite positive number"),
        (lambda: pca_variances(torch.zeros(10, 4), 2), "zero variance"),
        (lambda: pca_variances(torch.randn(10, 2), 3), "needs at least latent_dim=3 singular values"),
        (lambda: IsotropicGaussianPrior(2).log_prob(torch.zeros(3)), "last dimension latent_dim=2"),
    ],
    ids=[
        "latent-dim",
        "scale",
        "variance-sign",
        "variance-shape",
        "df",
        "corners",
        "layout",
        "weights",
        "gamma",
        "sigma0",
        "pca-constant",
        "pca-rank",
        "log-prob-shape",
    ],
)
def test_bad_parameters_raise_clear_errors(build, match):
    with pytest.raises(ValueError, match=match):
        build()
