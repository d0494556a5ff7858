"""β-TCVAE: MWS/MSS estimators, total correlation and the MI / TC / dimension-wise KL split (issue 4)."""

from __future__ import annotations

import math

import numpy as np
import pyro.distributions as dist
import pytest
import torch
from _regulariser_helpers import divergence_enters_as_pyro_elbo_plus_alpha_n_d, svi_steps
from scipy.stats import norm

from pyro_decomp.divergences import (
    AggregateBatch,
    BetaTCVAE,
    ExclusiveKL,
    TotalCorrelation,
    kl_decomposition,
    log_aggregate_posterior,
    log_importance_weights,
)

# a small "dataset" of Gaussian encoders q(z|x_i), D = 2, chosen to overlap and to correlate the dimensions
LOC = np.array([[-1.0, -0.8], [-0.3, -0.5], [0.4, 0.6], [1.2, 0.9]])
SCALE = np.array([[0.6, 0.5], [0.8, 0.7], [0.5, 0.9], [0.7, 0.6]])


def _grid_terms(loc, scale, h=0.01, lim=7.0, with_mi=True):
    """MI, TC, dimension-wise KL and E[KL(q(z|x) || N(0, I))] by Riemann sums on a dense grid (float64)."""
    g = np.arange(-lim, lim + h / 2, h)
    comp1 = norm.pdf(g[None, :, None], loc[:, None, :], scale[:, None, :])  # [n, G, D] per-dim densities
    n = loc.shape[0]
    marg = comp1.mean(0)  # [G, D]: q(z_d)
    joint = comp1[:, :, 0].T @ comp1[:, :, 1] / n  # [G, G]: q(z) = mean_i q(z_1|x_i) q(z_2|x_i)
    prod = marg[:, None, 0] * marg[None, :, 1]
    cell = h * h
    out = {}
    with np.errstate(divide="ignore", invalid="ignore"):
        if with_mi:
            comps = (np.outer(comp1[i, :, 0], comp1[i, :, 1]) for i in range(n))
            out["mi"] = np.mean([np.nansum(c * np.log(c / joint)) * cell for c in comps])
        out["tc"] = np.nansum(joint * np.log(joint / prod)) * cell
        p1 = norm.pdf(g)
        out["dim_kl"] = sum(np.nansum(marg[:, d] * np.log(marg[:, d] / p1)) * h for d in range(2))
    # closed form: KL(N(m, s^2) || N(0, 1)) = 0.5 (s^2 + m^2 - 1) - log s, summed over dims
    out["kl"] = np.mean(np.sum(0.5 * (scale**2 + loc**2 - 1.0) - np.log(scale), axis=1))
    return out


def test_decomposition_identity_by_quadrature():
    # E_x KL(q(z|x) || p) = MI + TC + dimKL (thesis Eq. 4.4), each term by 2-D quadrature, h = 0.01
    t = _grid_terms(LOC, SCALE)
    assert t["mi"] > 0.05 and t["tc"] > 0.01 and t["dim_kl"] > 0.01  # every term matters here
    assert t["mi"] + t["tc"] + t["dim_kl"] == pytest.approx(t["kl"], abs=1e-6)


def _full_batch(loc, scale, num_particles, dtype=torch.float64):
    mu = torch.as_tensor(loc, dtype=dtype).expand(num_particles, -1, -1)
    sd = torch.as_tensor(scale, dtype=dtype).expand(num_particles, -1, -1)
    q = dist.Normal(mu, sd).to_event(1)
    z = q.sample()
    p = dist.Normal(torch.zeros(2, dtype=dtype), 1.0).to_event(1)
    return AggregateBatch(q, z, log_p_zq=p.log_prob(z), dataset_size=loc.shape[0])


def test_kl_decomposition_matches_quadrature_at_full_batch():
    # B = N = 4: MSS uses the exact mixture, so each term is an unbiased MC estimate of the quadrature value.
    # num_particles = 40000 (160000 samples); measured MC standard errors are < 0.004, prec = 0.02
    torch.manual_seed(1)
    ref = _grid_terms(LOC, SCALE)
    terms = kl_decomposition(_full_batch(LOC, SCALE, 40000), "mss")
    for k in ("mi", "tc", "dim_kl", "kl"):
        assert float(terms[k]) == pytest.approx(ref[k], abs=0.02), k
    # the three terms telescope to the Monte Carlo KL sample by sample
    assert float(terms["mi"] + terms["tc"] + terms["dim_kl"]) == pytest.approx(float(terms["kl"]), abs=1e-9)


@pytest.mark.parametrize("estimator", ["mws", "mss"])
def test_importance_weights(estimator):
    B, N = 5, 40
    w = log_importance_weights(B, N, estimator).exp()
    row = w.sum(-1)
    # MSS weights sum to 1 (unbiased for q(z)); MWS weights 1/(N B) sum to 1/N (Chen et al. 2018, §C.1)
    expected = 1.0 if estimator == "mss" else 1.0 / N
    assert torch.allclose(row, torch.full((B,), expected), rtol=1e-6)
    if estimator == "mss":
        assert w[0, 0].item() == pytest.approx(1 / N)
        assert w[0, 1].item() == pytest.approx((N - 1) / (N * (B - 1)))


def test_importance_weights_errors():
    with pytest.raises(ValueError, match="estimator must be 'mws'"):
        log_importance_weights(4, 10, "plain")
    with pytest.raises(ValueError, match="dataset_size .* smaller than the batch size"):
        log_importance_weights(8, 4, "mss")
    with pytest.raises(ValueError, match="dataset_size must be a positive integer"):
        TotalCorrelation(dataset_size=0)


# --------------------------------------------------------------------------- convergence as B -> N
N_DATA = 64


def _synthetic_encoders(seed=0):
    """64 Gaussian encoders whose means are correlated (rho = 0.8): an aggregate posterior with clear TC."""
    rng = np.random.default_rng(seed)
    x = rng.multivariate_normal([0.0, 0.0], [[1.0, 0.8], [0.8, 1.0]], size=N_DATA)
    return x, np.full_like(x, 0.35)


def _subset_batch(loc, scale, B, repeats, gen, dtype=torch.float64):
    """``repeats`` independent minibatches of size B (without replacement) as the particle axis."""
    idx = torch.stack([torch.randperm(N_DATA, generator=gen)[:B] for _ in range(repeats)])  # [R, B]
    mu = torch.as_tensor(loc, dtype=dtype)[idx]
    sd = torch.as_tensor(scale, dtype=dtype)[idx]
    q = dist.Normal(mu, sd).to_event(1)
    z = mu + sd * torch.randn(mu.shape, generator=gen, dtype=dtype)
    return AggregateBatch(q, z, dataset_size=N_DATA)


def test_mss_converges_to_exact_tc_and_mws_limit():
    loc, scale = _synthetic_encoders()
    exact = _grid_terms(loc, scale, h=0.01, lim=6.0, with_mi=False)[
        "tc"
    ]  # TC of the 64-component mixture by quadrature
    assert exact > 0.2
    gen = torch.Generator().manual_seed(0)
    mss, mws = TotalCorrelation("mss"), TotalCorrelation("mws")
    # repeats = 2000 minibatches for B = 4, 16 and 400 for B = 64 (MC standard error there ~0.01), prec = 0.04
    bias = {}
    for B, repeats in ((4, 2000), (16, 2000), (64, 400)):
        batch = _subset_batch(loc, scale, B, repeats, gen)
        bias[B] = float(mss(batch)) - exact
        if B == N_DATA:
            # MWS's weights sum to 1/N: at B = N it is MSS + (D - 1) log N exactly, sample by sample
            assert float(mws(batch)) - float(mss(batch)) == pytest.approx(math.log(N_DATA), abs=1e-9)
    # measured: exact TC 0.357; bias 0.236 (B=4), -0.008 (B=16), 0.001 (B=64)
    assert abs(bias[64]) < 0.04
    assert abs(bias[4]) > 0.1 and abs(bias[16]) < abs(bias[4])


def test_total_correlation_zero_for_factorised_aggregate():
    # every encoder identical: q(z) = q(z|x) = N(0, diag(s^2)) factorises, TC = 0 exactly for MSS at any B
    # (each estimate of log q(z) and of log q(z_d) is then exact)
    q = dist.Normal(torch.zeros(1, 8, 3), torch.tensor([0.5, 1.0, 2.0])).to_event(1)
    batch = AggregateBatch(q, q.sample(), dataset_size=100)
    assert float(TotalCorrelation("mss")(batch)) == pytest.approx(0.0, abs=1e-5)
    # and log q̂(z) = log q(z|x) exactly
    assert torch.allclose(log_aggregate_posterior(batch, "mss"), q.log_prob(batch.z_q), atol=1e-5)


def test_beta_tcvae_extra_penalty():
    torch.manual_seed(0)
    batch = _full_batch(LOC, SCALE, 50)
    terms = kl_decomposition(batch, "mss")
    # (a - 1) MI + (b - 1) TC + (c - 1) dimKL
    d = BetaTCVAE(mi_weight=2.0, tc_weight=6.0, dim_kl_weight=0.5)(batch)
    expected = terms["mi"] + 5.0 * terms["tc"] - 0.5 * terms["dim_kl"]
    assert float(d) == pytest.approx(float(expected), rel=1e-9)
    assert float(BetaTCVAE(1.0, 1.0, 1.0)(batch)) == 0.0  # all weights 1: the plain VAE


def test_beta_tcvae_without_prior_density_errors():
    q = dist.Normal(torch.zeros(1, 4, 2), 1.0).to_event(1)
    with pytest.raises(ValueError, match="needs log p"):
        BetaTCVAE()(AggregateBatch(q, q.sample()))


def test_marginals_need_factorised_guide():
    q = dist.MultivariateNormal(torch.zeros(1, 4, 2), torch.eye(2))
    with pytest.raises(ValueError, match="factorised over the latent dimensions"):
        TotalCorrelation()(AggregateBatch(q, q.sample(), dataset_size=10))


@pytest.mark.parametrize("divergence", [TotalCorrelation("mws"), BetaTCVAE(tc_weight=6.0)], ids=["tc", "beta-tcvae"])
def test_svi_step_end_to_end(divergence):
    vae, elbo, losses = svi_steps(divergence)
    assert all(math.isfinite(v) for v in losses)
    assert elbo.step == 2 and divergence.step == 2
    t = elbo.last_terms
    divergence_enters_as_pyro_elbo_plus_alpha_n_d(vae, elbo, divergence)
    if isinstance(divergence, BetaTCVAE):
        assert {"divergence/mi", "divergence/tc", "divergence/dim_kl"} <= set(t)


@pytest.mark.parametrize("estimator", ["mws", "mss"])
def test_estimators_match_hand_computation(estimator):
    # an independent loop in numpy/scipy of Chen et al.'s MWS and 004 Eq. 11b's MSS, B = 3, N = 10, D = 2
    torch.manual_seed(3)
    N, B = 10, 3
    mu = torch.randn(1, B, 2, dtype=torch.float64)
    sd = 0.5 + torch.rand(1, B, 2, dtype=torch.float64)
    q = dist.Normal(mu, sd).to_event(1)
    z = q.sample()
    p = dist.Normal(torch.zeros(2, dtype=torch.float64), 1.0).to_event(1)
    batch = AggregateBatch(q, z, log_p_zq=p.log_prob(z), dataset_size=N)
    m, s, zz = mu[0].numpy(), sd[0].numpy(), z[0].numpy()

    def weight(b, j):
        if estimator == "mws":
            return 1.0 / (N * B)
        return 1.0 / N if b == j else (N - 1) / (N * (B - 1))

    log_qz, log_prod = [], []
    for b in range(B):
        comps = [norm.pdf(zz[b], m[j], s[j]) for j in range(B)]  # each [D]
        log_qz.append(np.log(sum(weight(b, j) * comps[j].prod() for j in range(B))))
        log_prod.append(sum(np.log(sum(weight(b, j) * comps[j][d] for j in range(B))) for d in range(2)))
    log_qz, log_prod = np.array(log_qz), np.array(log_prod)
    log_p = norm.logpdf(zz).sum(-1)
    assert float(TotalCorrelation(estimator)(batch)) == pytest.approx(np.mean(log_qz - log_prod), rel=1e-10)
    assert float(ExclusiveKL(estimator)(batch)) == pytest.approx(np.mean(log_qz - log_p), rel=1e-10)
    terms = kl_decomposition(batch, estimator)
    log_q_cond = np.array([norm.logpdf(zz[b], m[b], s[b]).sum() for b in range(B)])
    assert float(terms["mi"]) == pytest.approx(np.mean(log_q_cond - log_qz), rel=1e-10)
    assert float(terms["dim_kl"]) == pytest.approx(np.mean(log_prod - log_p), rel=1e-10)
