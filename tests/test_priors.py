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
    Prior,
    SparseMixturePrior,
    StudentTPrior,
    gaussian_log_normaliser,
    importance_log_normaliser,
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


BETAS = (0.01, 0.3, 0.5, 1.0, 1.2, 4.0)  # the pinwheel grid's β values and both sides of β = ½ and 1


def _log_space_quad_2d(log_pdf, beta: float, lo: float, hi: float, points=()) -> float:
    """log ∫∫ exp(β log p) over a box by nested scipy quad; log space, so p's far tails do not underflow."""

    def inner(x: float) -> float:
        integrand = lambda y: math.exp(beta * log_pdf(x, y))  # noqa: E731
        return integrate.quad(integrand, lo, hi, points=points, epsrel=1e-8, limit=100)[0]

    return math.log(integrate.quad(inner, lo, hi, points=points, epsrel=1e-8, limit=100)[0])


def _pinwheel_log_pdf(x: float, y: float, var: float = 0.03) -> float:
    """log of the default GaussianMixturePrior density (4 equal components at the unit-square corners)."""
    e = [-((x - a) ** 2 + (y - b) ** 2) / (2 * var) for a, b in ((0, 0), (1, 0), (0, 1), (1, 1))]
    top = max(e)
    return math.log(0.25 / (2 * math.pi * var)) + top + math.log(sum(math.exp(v - top) for v in e))


@pytest.mark.parametrize("beta", BETAS)
def test_mixture_log_normaliser_matches_2d_quadrature(beta):
    # the pinwheel prior (D=2): deterministic grid against nested scipy quad (relative error ~1e-8)
    prior = GaussianMixturePrior().double()
    half = 12 * math.sqrt(0.03 / beta)  # p^β is below exp(-72) of its peak beyond this
    ref = _log_space_quad_2d(_pinwheel_log_pdf, beta, -half, 1 + half, points=(0.0, 1.0))
    assert prior.log_normaliser(beta).item() == pytest.approx(ref, abs=1e-6)


def test_mixture_log_normaliser_at_small_beta_regression():
    # issue 9: importance sampling from the prior gave 1.67 ± 0.19 at β = 0.01 (infinite variance for
    # β <= ½); the truth (2-D quadrature above) is 3.3489
    assert GaussianMixturePrior().log_normaliser(0.01).item() == pytest.approx(3.3489136, abs=1e-5)
    # the quadrature is deterministic and remembered per β
    prior = GaussianMixturePrior()
    assert prior.log_normaliser(0.3).item() == prior.log_normaliser(0.3).item()


@pytest.mark.parametrize("beta", (0.01, 0.3, 1.2, 4.0))
def test_mixture_log_normaliser_importance_sampling_in_higher_dimension(beta):
    # D=3 mixture with all means on the first axis: p(z) = m(z_1) N(z_2; 0, σ²) N(z_3; 0, σ²), so
    # log F_β = log ∫ m^β (1-D quad) + the Gaussian closed form for the other two dimensions
    var = 0.05
    means = torch.tensor([[-1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.5, 0.0, 0.0]])
    weights = torch.tensor([0.2, 0.3, 0.5])
    prior = GaussianMixturePrior(3, n_components=3, variance=var, means=means, weights=weights).double()

    def log_m(t: float) -> float:
        terms = [math.log(w) + stats.norm.logpdf(t, m, math.sqrt(var)) for w, m in zip(weights.tolist(), (-1, 0, 1.5))]
        top = max(terms)
        return top + math.log(sum(math.exp(v - top) for v in terms))

    half = 12 * math.sqrt(var / beta)
    integrand = lambda t: math.exp(beta * log_m(t))  # noqa: E731
    one_d = math.log(integrate.quad(integrand, -1 - half, 1.5 + half, points=(-1, 0, 1.5), limit=100)[0])
    ref = one_d + gaussian_log_normaliser(torch.full((2,), var, dtype=torch.float64), beta).item()
    pyro.set_rng_seed(0)
    # the weights p^β/q are bounded (see the docstring); 50,000 draws give a relative error well below 1%
    est = prior.log_normaliser(beta, num_samples=50_000).item()
    assert est == pytest.approx(ref, abs=0.01)


def test_student_t_log_normaliser_closed_form_matches_quadrature():
    for df in (3.0, 5.0, 100.0):
        prior = StudentTPrior(2, df=df).double()
        for beta in BETAS:
            a = beta * (df + 1) / 2
            if a <= 0.5:  # p^β ~ |t|^{-2a}: not integrable
                assert prior.log_normaliser(beta).item() == math.inf
                continue
            # t = √ν tan θ turns ∫ (1 + t²/ν)^{-a} dt into √ν ∫ cos^{2a-2} θ dθ, whose endpoint singularity
            # scipy's algebraic weight handles, so the heavy t^{-2a} tails are integrated exactly
            c = stats.t.pdf(0.0, df)
            def ratio(th: float, a: float = a) -> float:
                return (math.cos(th) / (math.pi / 2 - th)) ** (2 * a - 2) if th < math.pi / 2 else 1.0

            half = integrate.quad(ratio, 0, math.pi / 2, weight="alg", wvar=(0, 2 * a - 2))[0]
            ref = 2 * (beta * math.log(c) + 0.5 * math.log(df) + math.log(2 * half))
            assert prior.log_normaliser(beta).item() == pytest.approx(ref, abs=1e-7), (df, beta)
    assert StudentTPrior(2, df=5.0).log_normaliser(0.01).item() == math.inf  # β(ν+1) = 0.06 <= 1


@pytest.mark.parametrize("beta", BETAS + (30.0,))
def test_sparse_log_normaliser_matches_quadrature(beta):
    prior = SparseMixturePrior(3, gamma=0.8, sigma0=0.05).double()
    g, s0 = 0.8, 0.05

    def f(t: float) -> float:  # p(t)^β in log space (the slab's far tails underflow otherwise)
        slab = math.log(1 - g) + stats.norm.logpdf(t)
        spike = math.log(g) + stats.norm.logpdf(t, scale=s0)
        return math.exp(beta * np.logaddexp(slab, spike))

    half = 12 / math.sqrt(beta)
    val = sum(integrate.quad(f, a, b, epsrel=1e-9, limit=200)[0] for a, b in [(-half, -0.5), (-0.5, 0.5), (0.5, half)])
    assert prior.log_normaliser(beta).item() == pytest.approx(3 * math.log(val), abs=1e-6)


_NON_GAUSSIAN = {
    "student-t": lambda: StudentTPrior(2, df=5.0),
    "sparse": lambda: SparseMixturePrior(2, gamma=0.8),
    "mixture": lambda: GaussianMixturePrior(),
}


@pytest.mark.parametrize(
    "name, beta",
    # Student-t(5) at β = 0.01 has no F_β (p^β ~ |t|^{-0.06}); checked in the closed-form test
    [(n, b) for n in _NON_GAUSSIAN for b in (0.01, 0.3, 4.0) if (n, b) != ("student-t", 0.01)],
)
def test_generic_importance_estimate_agrees_with_the_deterministic_values(name, beta):
    # the base Prior estimator (user-written priors get it): proposal ½p + ½ wide Cauchy covers f_β at
    # small β, where sampling from p alone has infinite variance. 50,000 draws per stratum: the
    # estimate's sd over seeds is about 0.013 nats for these priors, so 0.05 is ~4 sd
    prior = _NON_GAUSSIAN[name]().double()
    pyro.set_rng_seed(0)
    est = importance_log_normaliser(prior.distribution(), beta, num_samples=50_000).item()
    assert est == pytest.approx(prior.log_normaliser(beta).item(), abs=0.05)


def test_base_prior_uses_the_covering_estimator():
    # a user-written Prior subclass with only distribution(): Laplace(0, b) per dimension, for which
    # ∫ p^β = (2b)^{1-β} / β in closed form
    class LaplacePrior(Prior):
        def distribution(self):
            return pyro.distributions.Laplace(torch.zeros(2), torch.full((2,), 0.5)).to_event(1)

    pyro.set_rng_seed(0)
    for beta in (0.01, 0.5, 3.0):
        exact = 2 * ((1 - beta) * math.log(2 * 0.5) - math.log(beta))
        # 50,000 draws per stratum (the default 4096 would give ~4x the error)
        assert LaplacePrior(2).log_normaliser(beta, num_samples=50_000).item() == pytest.approx(exact, abs=0.05)
    assert LaplacePrior(2).log_normaliser(0.0).item() == math.inf
    with pytest.raises(ValueError, match="num_samples must be an integer >= 2"):
        LaplacePrior(2).log_normaliser(0.5, num_samples=0)


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


def test_learned_prior_variances_move_to_the_data_pca_variances():
    # x = z + ε with z ~ N(0, diag(3, 0.3)), ε ~ N(0, 0.1² I), a fixed identity decoder and a linear encoder.
    # The learned prior N(0, diag σ²) then has maximum-likelihood variances = the data's PCA variances
    # (eigenvalues of its covariance) minus the noise variance 0.01. Started at σ² = (1, 1).
    from torch import nn

    import pyro_decomp
    from pyro_decomp.models import VAE, GaussianLikelihood

    class LinearEncoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(2, 2)
            self.log_scale = nn.Parameter(torch.full((2,), -1.0))

        def forward(self, x):
            return self.linear(x), self.log_scale.exp().expand(x.shape[0], 2)

    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    x = torch.randn(500, 2) * torch.tensor([3.0, 0.3]).sqrt() + 0.1 * torch.randn(500, 2)
    pca = np.sort(np.linalg.eigvalsh(np.cov(x.numpy().T)))[::-1] - 0.01
    prior = AnisotropicGaussianPrior(2, learn=True)
    vae = VAE(prior, nn.Identity(), GaussianLikelihood(1, scale=0.1), LinearEncoder())
    elbo = pyro_decomp.DecompositionELBO(beta=1.0)
    svi = pyro.infer.SVI(vae.model, vae.guide, pyro_decomp.optim.Adam({"lr": 0.05}), loss=elbo)
    start = prior.variance().detach().numpy().copy()
    for _ in range(100):  # full batch; the variances settle within ~100 steps at this learning rate
        svi.step(x)
    learned = np.sort(prior.variance().detach().numpy())[::-1]
    # from (1, 1) to within 15% of (≈2.9, ≈0.3): the distance to the target shrinks by far more than half
    np.testing.assert_allclose(learned, pca, rtol=0.15)
    assert np.abs(learned - pca).sum() < 0.2 * np.abs(start - pca).sum()


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


@pytest.mark.parametrize("beta", [0.3, 1.0, 2.0], ids=lambda b: f"beta={b}")
def test_importance_log_normaliser_on_a_constrained_support_matches_quadrature(beta):
    """A Gamma site (e.g. a precision parent in a hierarchical prior) is sampled in log space, never off support.

    Reference: log ∫_0^∞ Gamma(s; a, b)^β ds by scipy quadrature. num_samples = 20000 per element; the
    estimator's sd here is below 0.005, so prec = 0.02.
    """
    torch.manual_seed(0)
    conc, rate = torch.tensor([2.0, 3.0, 0.7]), torch.tensor([1.0, 2.0, 1.5])
    est = importance_log_normaliser(torch.distributions.Gamma(conc, rate), beta, num_samples=20_000)
    ref = [
        math.log(integrate.quad(lambda s: stats.gamma.pdf(s, a, scale=1 / b) ** beta, 0, np.inf, limit=200)[0])
        for a, b in zip(conc.tolist(), rate.tolist())
    ]
    assert est.tolist() == pytest.approx(ref, abs=0.02)
