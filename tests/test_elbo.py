"""DecompositionELBO: agreement with Pyro's ELBOs, β-weighting, term sums, and the paper's theorems."""

from __future__ import annotations

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from torch.distributions import constraints
from torch.distributions.transforms import Transform

import pyro_decomp
from pyro_decomp import DecompositionELBO
from pyro_decomp.divergences import MMD, InclusiveKL
from pyro_decomp.models import (
    VAE,
    AnisotropicGaussianPrior,
    GaussianLikelihood,
    GaussianMixturePrior,
    IsotropicGaussianPrior,
    SparseMixturePrior,
    StudentTPrior,
)
from pyro_decomp.models.networks import build_networks
from pyro_decomp.models.structured import HierarchicalScaleGuide, hierarchical_scale_prior


def _pinwheel_vae(prior):
    enc, dec = build_networks("pinwheel", latent_dim=prior.latent_dim)
    return VAE(prior, dec, GaussianLikelihood(), enc)


def _loss_at_seed(elbo, model, guide, x, seed=3, **kw):
    pyro.set_rng_seed(seed)
    return elbo.loss(model, guide, x, **kw)


# ----------------------------------------------------------------------------- agreement with Pyro
@pytest.mark.parametrize(
    "prior, reference",
    [
        (lambda: IsotropicGaussianPrior(2), pyro.infer.TraceMeanField_ELBO),
        (lambda: AnisotropicGaussianPrior(2, variance=[1.5, 0.5], learn=True), pyro.infer.TraceMeanField_ELBO),
        (lambda: GaussianMixturePrior(), pyro.infer.Trace_ELBO),  # no analytic KL: Monte Carlo
        (lambda: StudentTPrior(2, df=3.0), pyro.infer.Trace_ELBO),
    ],
    ids=["isotropic", "anisotropic", "mixture", "student-t"],
)
@pytest.mark.parametrize("num_particles", [1, 4], ids=["P1", "P4"])
def test_beta_one_alpha_zero_equals_pyro_elbo(prior, reference, num_particles):
    vae = _pinwheel_vae(prior())
    x = torch.randn(16, 2)
    ours = _loss_at_seed(DecompositionELBO(num_particles=num_particles), vae.model, vae.guide, x)
    ref = _loss_at_seed(
        reference(num_particles=num_particles, vectorize_particles=True, max_plate_nesting=1), vae.model, vae.guide, x
    )
    assert ours == pytest.approx(ref, rel=1e-5)


def test_dataset_size_scales_like_pyro():
    vae = _pinwheel_vae(IsotropicGaussianPrior(2))
    x = torch.randn(10, 2)
    ours = _loss_at_seed(DecompositionELBO(), vae.model, vae.guide, x, dataset_size=1000)
    ref = _loss_at_seed(pyro.infer.TraceMeanField_ELBO(), vae.model, vae.guide, x, dataset_size=1000)
    small = _loss_at_seed(DecompositionELBO(), vae.model, vae.guide, x)
    assert ours == pytest.approx(ref, rel=1e-5)
    assert ours == pytest.approx(100 * small, rel=1e-5)


# ----------------------------------------------------------------------------- the three entry points
def test_loss_differentiable_loss_and_loss_and_grads_agree():
    vae = _pinwheel_vae(GaussianMixturePrior())
    x = torch.randn(32, 2)
    elbo = DecompositionELBO(beta=2.0, alpha=3.0, divergence=InclusiveKL(), num_particles=3)
    a = _loss_at_seed(elbo, vae.model, vae.guide, x)
    pyro.set_rng_seed(3)
    b = elbo.differentiable_loss(vae.model, vae.guide, x).item()
    pyro.set_rng_seed(3)
    c = elbo.loss_and_grads(vae.model, vae.guide, x)
    assert a == pytest.approx(b, rel=1e-6) and a == pytest.approx(c, rel=1e-6)
    assert elbo.step == 1  # only loss_and_grads advances the schedules
    grads = [p.grad for p in vae.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    # gradients equal those of differentiable_loss at the same seed
    vae.zero_grad()
    pyro.set_rng_seed(3)
    elbo.differentiable_loss(vae.model, vae.guide, x).backward()
    for p, g in zip(vae.parameters(), grads, strict=True):
        assert torch.allclose(p.grad, g, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- β-weighting and terms
def _hand_written_gaussian_pair(latent_dim=3, prior_var=None):
    """A linear-Gaussian model and guide written with plain pyro.sample statements."""
    prior_var = torch.ones(latent_dim) if prior_var is None else prior_var
    W = torch.randn(5, latent_dim)
    enc_loc = torch.randn(5, latent_dim) * 0.3
    enc_scale = torch.rand(latent_dim) * 0.5 + 0.2

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, prior_var.sqrt()).to_event(1))
            pyro.sample("x", dist.Normal(z @ W.T, 0.5).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x @ enc_loc, enc_scale).to_event(1))

    def q(x):
        return dist.Normal(x @ enc_loc, enc_scale).to_event(1)

    return model, guide, q, prior_var


def _kl_diag_gauss(mu, s2, var):
    """Closed form KL(N(mu, diag s2) || N(0, diag var)) summed over the last axis."""
    return 0.5 * ((s2 + mu**2) / var - 1.0 - torch.log(s2 / var)).sum(-1)


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0, 4.0], ids=lambda b: f"beta{b}")
def test_beta_weights_an_analytic_kl_on_a_hand_written_model(beta):
    model, guide, q, var = _hand_written_gaussian_pair(prior_var=torch.tensor([2.0, 1.0, 0.5]))
    x = torch.randn(8, 5)
    terms = DecompositionELBO(beta=beta).loss_terms(model, guide, x)
    qd = q(x)
    kl_ref = _kl_diag_gauss(qd.mean, qd.variance, var).sum().item()
    assert terms["kl"] == pytest.approx(kl_ref, rel=1e-5)
    assert terms["loss"] == pytest.approx(terms["reconstruction"] + beta * terms["kl"], rel=1e-6)
    assert terms["beta"] == beta and terms["alpha"] == 0.0


def test_terms_sum_to_the_loss_with_a_divergence():
    vae = _pinwheel_vae(GaussianMixturePrior())
    x = torch.randn(40, 2)
    elbo = DecompositionELBO(beta=0.5, alpha=2.0, divergence=InclusiveKL())
    pyro.set_rng_seed(5)
    t = elbo.loss_terms(vae.model, vae.guide, x)
    assert t["weighted_divergence"] == pytest.approx(2.0 * 40 * t["divergence"], rel=1e-5)  # α·n·D (SPEC §2)
    assert t["loss"] == pytest.approx(t["reconstruction"] + 0.5 * t["kl"] + t["weighted_divergence"], rel=1e-5)
    pyro.set_rng_seed(5)
    assert elbo.loss(vae.model, vae.guide, x) == pytest.approx(t["loss"], rel=1e-5)


def test_divergence_weight_uses_the_scaled_dataset_size():
    vae = _pinwheel_vae(IsotropicGaussianPrior(2))
    x = torch.randn(20, 2)
    t = DecompositionELBO(alpha=1.5, divergence=MMD("imq")).loss_terms(vae.model, vae.guide, x, dataset_size=200)
    assert t["weighted_divergence"] == pytest.approx(1.5 * 200 * t["divergence"], rel=1e-5)


def _quadrature_kl(prior, mu, sd):
    """KL(N(mu, diag sd²) ‖ p) by numerical integration with scipy densities (independent of torch)."""
    from scipy import integrate, stats

    def kl_1d(logp, m, s):
        f = lambda t: stats.norm.pdf(t, m, s) * (stats.norm.logpdf(t, m, s) - logp(t))  # noqa: E731
        return integrate.quad(f, m - 12 * s, m + 12 * s, limit=200, points=[0.0])[0]

    if isinstance(prior, GaussianMixturePrior):  # not a product: 2-D grid
        t = np.linspace(-5, 5, 1201)
        X, Y = np.meshgrid(t, t, indexing="ij")
        pts = np.stack([X.ravel(), Y.ravel()], -1)
        logq = stats.norm.logpdf(pts, mu, sd).sum(-1)
        logp = prior.double().log_prob(torch.tensor(pts)).numpy()
        return float(np.sum(np.exp(logq) * (logq - logp)) * (t[1] - t[0]) ** 2)
    if isinstance(prior, StudentTPrior):
        logp_d = [lambda t: stats.t.logpdf(t, prior.df)] * len(mu)
    elif isinstance(prior, SparseMixturePrior):
        g, s0 = prior.gamma, prior.sigma0
        logp_d = [lambda t: np.log((1 - g) * stats.norm.pdf(t) + g * stats.norm.pdf(t, scale=s0))] * len(mu)
    else:
        sds = prior.distribution().base_dist.scale.detach().double().numpy()
        logp_d = [lambda t, v=v: stats.norm.logpdf(t, scale=v) for v in sds]
    return sum(kl_1d(f, m, s) for f, m, s in zip(logp_d, mu, sd, strict=True))


KL_PRIORS = {
    "isotropic": (lambda: IsotropicGaussianPrior(2, scale=1.3), "analytic"),
    "anisotropic": (lambda: AnisotropicGaussianPrior(2, variance=[2.0, 0.4]), "analytic"),
    "student-t": (lambda: StudentTPrior(2, df=4.0), "mc"),
    "mixture": (lambda: GaussianMixturePrior(), "mc"),
    "sparse": (lambda: SparseMixturePrior(2, gamma=0.8), "mc"),
}


@pytest.mark.parametrize("make, path", KL_PRIORS.values(), ids=KL_PRIORS.keys())
def test_kl_of_every_prior_matches_quadrature(make, path):
    prior = make()
    mu, sd = np.array([0.5, -0.3]), np.array([0.4, 0.8])
    loc, scale = torch.tensor(mu[None], dtype=torch.float32), torch.tensor(sd[None], dtype=torch.float32)

    def model():
        with pyro.plate("data", 1):
            prior()

    def guide():
        with pyro.plate("data", 1):
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    ref = _quadrature_kl(prior, mu, sd)
    q = dist.Normal(loc, scale).to_event(1)
    num_particles = 20_000
    z = q.sample((num_particles,))
    log_ratio = q.log_prob(z) - prior.log_prob(z)
    # tolerance: 4.5 standard errors of a 20,000-particle mean, from an independent sample's spread
    tol = 4.5 * log_ratio.std().item() / math.sqrt(num_particles)
    kl = DecompositionELBO(num_particles=num_particles if path == "mc" else 1).loss_terms(model, guide)["kl"]
    if path == "mc":
        assert kl == pytest.approx(ref, abs=tol)
    else:
        assert kl == pytest.approx(ref, abs=1e-4)  # closed form against quadrature: float error only
        assert log_ratio.mean().item() == pytest.approx(kl, abs=tol)  # analytic vs Monte Carlo


# ----------------------------------------------------------------------------- Theorem 1, Corollary 1, Eq. 5
@pytest.mark.parametrize("beta", [0.3, 1.0, 4.0], ids=lambda b: f"beta{b}")
def test_theorem1_identity_is_exact_for_gaussians(beta):
    model, guide, q, var = _hand_written_gaussian_pair(prior_var=torch.tensor([2.0, 1.0, 0.5]))
    x = torch.randn(6, 5)
    pyro.set_rng_seed(0)
    t = DecompositionELBO(beta=beta).loss_terms(model, guide, x)
    qd = q(x)
    # closed forms: f_β = N(0, Σ/β); H = D/2 (1 + log 2π) + ½ log|S|; log F_β from §4.1
    annealed_ref = _kl_diag_gauss(qd.mean, qd.variance, var / beta).sum().item()
    entropy_ref = (0.5 * (1 + math.log(2 * math.pi)) * 3 + 0.5 * qd.variance.log().sum(-1)).sum().item()
    log_F_ref = 6 * (0.5 * (1 - beta) * torch.log(2 * math.pi * var) - 0.5 * math.log(beta)).sum().item()
    assert t["annealed_kl"] == pytest.approx(annealed_ref, rel=1e-5)
    assert t["entropy"] == pytest.approx(entropy_ref, rel=1e-5)
    assert t["log_F_beta"] == pytest.approx(log_F_ref, rel=1e-5, abs=1e-6)
    # Eq. 3: L_β = ELBO(p(x|z) f_β, q) + (β-1) H + log F_β, i.e. for the loss (its negative):
    lhs = t["reconstruction"] + beta * t["kl"]
    rhs = t["reconstruction"] + t["annealed_kl"] - (beta - 1) * t["entropy"] - t["log_F_beta"]
    assert lhs == pytest.approx(rhs, rel=1e-6)


def test_theorem1_log_F_of_a_hand_written_student_t_site_uses_importance_sampling():
    # a plain pyro.sample statement (no Prior object, so no closed form or quadrature of its own):
    # log F_β = log ∫ p(z)^β dz is estimated by importance sampling and checked against scipy quadrature
    from scipy import integrate, stats

    df, beta, n = 5.0, 2.0, 4
    model_t = lambda x: _student_t_program(x, df)  # noqa: E731
    guide = lambda x: _gaussian_guide_program(x)  # noqa: E731
    x = torch.randn(n, 2)
    elbo = DecompositionELBO(beta=beta, num_particles=1, log_F_beta_samples=400_000)
    pyro.set_rng_seed(0)
    t = elbo.loss_terms(model_t, guide, x)
    log_F_1d = math.log(integrate.quad(lambda z: stats.t.pdf(z, df) ** beta, -np.inf, np.inf)[0])
    # 100,000 draws per datapoint: the importance estimate's error is ~0.5% of each term
    assert t["log_F_beta"] == pytest.approx(n * 2 * log_F_1d, abs=0.05)
    lhs = t["reconstruction"] + beta * t["kl"]
    rhs = t["reconstruction"] + t["annealed_kl"] - (beta - 1) * t["entropy"] - t["log_F_beta"]
    assert lhs == pytest.approx(rhs, rel=1e-5)


def _student_t_program(x, df):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.StudentT(df, torch.zeros(2), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)


def _gaussian_guide_program(x):
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(0.5 * x, 0.8).to_event(1))


def test_beta_zero_reports_the_improper_annealed_prior_as_nan():
    model, guide, _, _ = _hand_written_gaussian_pair()
    t = DecompositionELBO(beta=0.0).loss_terms(model, guide, torch.randn(4, 5))
    assert math.isnan(t["annealed_kl"]) and math.isnan(t["log_F_beta"])
    assert t["loss"] == pytest.approx(t["reconstruction"], rel=1e-6)


def _scaled_pair(beta, rescale, prior_var):
    """Model/guide whose networks are rescaled by √β as in Corollary 1 (when ``rescale``)."""
    torch.manual_seed(11)
    W = torch.randn(4, 2)
    A = torch.randn(4, 2) * 0.3
    s = torch.tensor([0.3, 0.6])
    c = math.sqrt(beta) if rescale else 1.0

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, prior_var.sqrt()).to_event(1))
            pyro.sample("x", dist.Normal(torch.tanh((z / c) @ W.T), 0.3).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(c * (x @ A), c * s).to_event(1))

    return model, guide, (c * s) ** 2


@pytest.mark.parametrize("beta", [0.5, 3.0], ids=lambda b: f"beta{b}")
def test_corollary1_rescaled_networks(beta):
    prior_var = torch.tensor([1.0, 1.0])
    D, n = 2, 7
    x = torch.randn(n, 4)
    model, guide, _ = _scaled_pair(beta, False, prior_var)
    model_r, guide_r, S_r = _scaled_pair(beta, True, prior_var)
    pyro.set_rng_seed(2)
    loss_beta = DecompositionELBO(beta=beta).loss(model, guide, x)  # −Σ L_β(θ, φ)
    pyro.set_rng_seed(2)  # same ε: z' = √β z, so the reconstructions coincide sample by sample
    loss_vae_r = DecompositionELBO(beta=1.0).loss(model_r, guide_r, x)  # −Σ L(θ', φ')
    log_F = gaussian_log_F = pyro_decomp.models.priors.gaussian_log_normaliser(prior_var, beta).item()
    c = D * (beta - 1) / 2 * (1 + math.log(2 * math.pi / beta)) + log_F
    log_det_S_r = S_r.log().sum().item()
    # Eq. 4: L_β(θ,φ) = L(θ',φ') + (β−1)/2 log|S_φ'| + c, per datapoint
    assert -loss_beta == pytest.approx(-loss_vae_r + n * ((beta - 1) / 2 * log_det_S_r + c), rel=1e-5)
    # Eq. 5 is exactly that right-hand side up to c: the "entropy" objective on the rescaled networks
    pyro.set_rng_seed(2)
    loss_H_r = DecompositionELBO(beta=beta, objective="entropy").loss(model_r, guide_r, x)
    assert -loss_beta == pytest.approx(-loss_H_r + n * c, rel=1e-5)
    del gaussian_log_F


# ----------------------------------------------------------------------------- Theorem 2 (rotations)
class _Rotation(Transform):
    """y = R x for an orthogonal R (|det| = 1), acting on the last axis."""

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True

    def __init__(self, R):
        super().__init__(cache_size=0)
        self.R = R

    def _call(self, x):
        return x @ self.R.T

    def _inverse(self, y):
        return y @ self.R

    def log_abs_det_jacobian(self, x, y):
        return torch.zeros(x.shape[:-1])


def _rotated_pair(prior, R):
    """θ†(R), φ†(R) of Theorem 2: q† = R_# q (mean Rμ, covariance R S Rᵀ), p†(x|z) = p(x|Rᵀz)."""
    torch.manual_seed(4)
    W = torch.randn(3, 2)
    A = torch.randn(3, 2) * 0.5
    s = torch.tensor([0.3, 0.8])

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = prior()
            pyro.sample("x", dist.Normal(torch.sin((z @ R) @ W.T), 0.4).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            base = dist.Normal(x @ A, s).to_event(1)
            pyro.sample("z", dist.TransformedDistribution(base, [_Rotation(R)]))

    return model, guide


@pytest.mark.parametrize(
    "prior, invariant",
    [
        (lambda: IsotropicGaussianPrior(2, scale=1.3), True),
        (lambda: AnisotropicGaussianPrior(2, variance=[2.0, 0.3]), False),
        (lambda: StudentTPrior(2, df=3.0), False),
        (lambda: SparseMixturePrior(2, gamma=0.8), False),
    ],
    ids=["isotropic", "anisotropic", "student-t", "sparse"],
)
def test_theorem2_rotation_invariance_only_for_isotropic_priors(prior, invariant):
    angle = 0.7
    R = torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    x = torch.randn(50, 3)
    p = prior()
    losses = []
    for rot in (torch.eye(2), R):
        model, guide = _rotated_pair(p, rot)
        pyro.set_rng_seed(9)  # same ε: z† = R z exactly, so differences come from the objective alone
        losses.append(DecompositionELBO(beta=4.0).loss(model, guide, x))
    if invariant:
        assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    else:
        assert abs(losses[1] - losses[0]) > 1e-2 * abs(losses[0]) or abs(losses[1] - losses[0]) > 1.0


# ----------------------------------------------------------------------------- SVI recovers a posterior
def test_svi_recovers_the_analytic_posterior_of_a_linear_gaussian_model():
    w, sigma = 2.0, 0.5
    post_var = 1.0 / (1.0 + w**2 / sigma**2)  # z ~ N(0,1), x = w z + σ ε
    torch.manual_seed(0)
    x = (w * torch.randn(256) + sigma * torch.randn(256)).unsqueeze(-1)

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([1]).to_event(1))
            pyro.sample("x", dist.Normal(w * z, sigma).to_event(1), obs=x)

    def guide(x):
        a = pyro.param("a", torch.tensor(0.0))
        b = pyro.param("b", torch.tensor(0.0))
        log_s = pyro.param("log_s", torch.tensor(0.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(a * x + b, log_s.exp()).to_event(1))

    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), loss=DecompositionELBO(num_particles=8))
    for _ in range(400):
        svi.step(x)
    a, b, s = pyro.param("a").item(), pyro.param("b").item(), pyro.param("log_s").exp().item()
    # optimum: a = post_var · w / σ², b = 0, s = √post_var; SGD noise with 8 particles leaves ~1% error
    assert a == pytest.approx(post_var * w / sigma**2, abs=0.02)
    assert b == pytest.approx(0.0, abs=0.02)
    assert s == pytest.approx(math.sqrt(post_var), abs=0.01)


# ----------------------------------------------------------------------------- arbitrary programs
class _RecordingInclusiveKL(InclusiveKL):
    """InclusiveKL that keeps the batch it was given, and asks for log p at the guide's draws too."""

    needs_prior_log_prob = True

    def __call__(self, batch):
        self.batch = batch
        return super().__call__(batch)


def _hierarchical_marginal_by_quadrature(z, loc=0.0, sd=0.5):
    """log ∫ N(log s; loc, sd²) Π_d N(z_d; 0, s²) d log s for each row of z (scipy, independent of torch)."""
    from scipy import integrate, stats

    def density(row):
        f = lambda u: stats.norm.pdf(u, loc, sd) * np.prod(stats.norm.pdf(row, 0.0, np.exp(u)))  # noqa: E731
        return integrate.quad(f, loc - 10 * sd, loc + 10 * sd, limit=200)[0]

    return np.log([density(row) for row in z.reshape(-1, z.shape[-1]).double().numpy()])


def test_hand_written_hierarchical_prior_gives_the_divergence_its_marginal():
    prior = hierarchical_scale_prior(2)
    enc, dec = build_networks("pinwheel", latent_dim=2)
    vae = VAE(prior, dec, GaussianLikelihood(), enc)
    guide = HierarchicalScaleGuide(vae.encoder, 2)
    x = torch.randn(30, 2)
    # β=1, α=0 equals Pyro's mean-field ELBO on the two-site program
    a = _loss_at_seed(DecompositionELBO(), vae.model, guide, x)
    b = _loss_at_seed(pyro.infer.TraceMeanField_ELBO(), vae.model, guide, x)
    assert a == pytest.approx(b, rel=1e-5)
    # the divergence sees log p(z) = ∫ p(z | s) p(s) ds, not log p(z | s): at the prior draws and at q's draws
    recorder = _RecordingInclusiveKL()
    elbo = DecompositionELBO(alpha=1.0, divergence=recorder, marginal_samples=4000)
    terms = elbo.loss_terms(vae.model, guide, x)
    batch = recorder.batch
    for z, log_p in ((batch.z_p, batch.log_p_zp), (batch.z_q, batch.log_p_zq)):
        ref = _hierarchical_marginal_by_quadrature(z.detach())
        # 4000 importance samples from p(log s) per point: within 0.03 nats (seed 0)
        assert np.allclose(log_p.detach().reshape(-1).numpy(), ref, atol=0.03)
    ref_d = float((batch.log_p_zp.detach() - _batch_log_q_mixture(batch)).mean())
    assert terms["divergence"] == pytest.approx(ref_d, rel=1e-5)


def _batch_log_q_mixture(batch):
    """log (1/B) Σ_i q(z_j | x_i) at the prior draws, written out for a diagonal-Normal guide."""
    loc, scale = batch.guide_dist.base_dist.loc.detach(), batch.guide_dist.base_dist.scale.detach()
    lp = dist.Normal(loc.unsqueeze(1), scale.unsqueeze(1)).log_prob(batch.z_p.unsqueeze(2)).sum(-1)  # [P, M, B]
    return torch.logsumexp(lp, -1) - math.log(lp.shape[-1])


def test_model_without_a_prior_attribute_samples_prior_draws_from_the_model():
    model, guide, _, _ = _hand_written_gaussian_pair()
    x = torch.randn(64, 5)
    t = DecompositionELBO(alpha=1.0, divergence=InclusiveKL()).loss_terms(model, guide, x)
    assert math.isfinite(t["divergence"]) and t["divergence"] > 0


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(beta=-1.0), ValueError, "beta must be finite and >= 0"),
        (dict(alpha=float("nan"), divergence=InclusiveKL()), ValueError, "alpha must be finite and >= 0"),
        (dict(alpha=1.0), ValueError, "alpha > 0 needs a divergence"),
        (dict(divergence="mmd"), TypeError, "divergence must be a pyro_decomp.divergences.Divergence"),
        (dict(objective="tc"), ValueError, r"objective must be one of \('beta', 'entropy'\)"),
        (dict(num_particles=0), ValueError, "num_particles must be a positive integer"),
        (dict(beta="big"), TypeError, "beta must be a number"),
        (dict(gamma=3.0), TypeError, r"unexpected keyword arguments \['gamma'\]"),
    ],
    ids=[
        "beta",
        "alpha-nan",
        "alpha-without-divergence",
        "divergence-type",
        "objective",
        "particles",
        "beta-type",
        "kwarg",
    ],
)
def test_bad_elbo_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        DecompositionELBO(**kwargs)


def test_divergence_on_a_site_the_guide_does_not_sample():
    vae = _pinwheel_vae(IsotropicGaussianPrior(2))
    elbo = DecompositionELBO(alpha=1.0, divergence=InclusiveKL(), latent_site="w")
    with pytest.raises(
        ValueError, match=r"latent site 'w', which the guide does not sample; pass latent_site= one of \['z'\]"
    ):
        elbo.loss(vae.model, vae.guide, torch.randn(4, 2))


def test_bad_data_gets_a_clear_error():
    from pyro_decomp.models import BernoulliLikelihood

    enc, dec = build_networks("pinwheel", latent_dim=2)
    vae = VAE(IsotropicGaussianPrior(2), dec, GaussianLikelihood(), enc)
    with pytest.raises(ValueError, match="observations contain NaN"):
        DecompositionELBO().loss(vae.model, vae.guide, torch.tensor([[0.0, float("nan")]]))
    vae_b = VAE(IsotropicGaussianPrior(2), torch.nn.Linear(2, 2), BernoulliLikelihood(1), enc)
    with pytest.raises(ValueError, match=r"BernoulliLikelihood needs binary data in \{0, 1\}.*Binarise"):
        DecompositionELBO().loss(vae_b.model, vae_b.guide, torch.tensor([[0.0, 0.5]]))


def test_svi_updates_every_vae_parameter():
    # regression: without the PyroModule context the decoder never reached the param store
    vae = _pinwheel_vae(AnisotropicGaussianPrior(2, learn=True))
    before = {n: p.detach().clone() for n, p in vae.named_parameters()}
    svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), loss=DecompositionELBO(beta=2.0))
    svi.step(torch.randn(16, 2))
    changed = {n for n, p in vae.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed == set(before), f"untouched: {sorted(set(before) - changed)}"
    assert any("decoder" in n for n in changed) and any("prior" in n for n in changed)


def test_two_models_with_the_same_parameter_names_both_train():
    # regression: Pyro's param store is keyed by attribute path, so a second VAE used to silently not train
    x = torch.randn(16, 2)
    first = _pinwheel_vae(AnisotropicGaussianPrior(2, learn=True))
    second = _pinwheel_vae(AnisotropicGaussianPrior(2, learn=True))
    svis = [
        pyro.infer.SVI(m.model, m.guide, pyro.optim.Adam({"lr": 1e-2}), loss=DecompositionELBO())
        for m in (first, second)
    ]
    for svi, model in [(svis[0], first), (svis[1], second), (svis[0], first)]:
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        svi.step(x)
        unchanged = [n for n, p in model.named_parameters() if torch.equal(p.detach(), before[n])]
        assert unchanged == []
    # the models keep their own values: nothing was copied from one into the other
    assert not torch.equal(first.prior.variance(), second.prior.variance())


def test_entropy_objective_terms_add_up_to_eq5():
    model, guide, q, _ = _hand_written_gaussian_pair()
    x = torch.randn(5, 5)
    beta = 3.0
    t = DecompositionELBO(beta=beta, objective="entropy").loss_terms(model, guide, x)
    # Eq. 5: −L_{H,β} = −ELBO − (β−1)/2 log|S|, with ½ log|S| summed over the 5 datapoints in closed form
    half_log_det = 0.5 * q(x).variance.log().sum().item()
    assert t["entropy_regulariser"] == pytest.approx(half_log_det, rel=1e-5)
    assert t["loss"] == pytest.approx(t["reconstruction"] + t["kl"] - (beta - 1) * half_log_det, rel=1e-5)
