"""Aggregate-posterior divergences: inclusive KL against quadrature, MMD unbiasedness, kernels."""

from __future__ import annotations

import math

import numpy as np
import pyro.distributions as dist
import pytest
import torch
from scipy import stats

from pyro_decomp.divergences import (
    MMD,
    AggregateBatch,
    IMQKernel,
    InclusiveKL,
    PerDimensionIMQKernel,
    RBFKernel,
    mmd_u_statistic,
    pairwise_log_prob,
)
from pyro_decomp.models import GaussianMixturePrior, IsotropicGaussianPrior


def _batch_mixture(B=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    loc = torch.randn(1, B, 2, generator=g, dtype=torch.float64) * 0.8
    scale = torch.rand(1, B, 2, generator=g, dtype=torch.float64) * 0.4 + 0.3
    return dist.Normal(loc, scale).to_event(1)


def _grid_kl_p_to_mixture(prior, q, lim=6.0, n=801):
    """KL(p ‖ (1/B) Σ_i q_i) by a dense 2-D Riemann sum, written with scipy densities only."""
    t = np.linspace(-lim, lim, n)
    X, Y = np.meshgrid(t, t, indexing="ij")
    pts = np.stack([X.ravel(), Y.ravel()], -1)
    logp = prior.double().log_prob(torch.tensor(pts)).numpy()
    loc, scale = q.base_dist.loc[0].numpy(), q.base_dist.scale[0].numpy()
    qmix = np.mean([stats.multivariate_normal.pdf(pts, loc[i], np.diag(scale[i] ** 2)) for i in range(len(loc))], 0)
    p = np.exp(logp)
    dA = (t[1] - t[0]) ** 2
    return float(np.sum(p * (logp - np.log(qmix))) * dA)


@pytest.mark.parametrize(
    "make_prior",
    [lambda: IsotropicGaussianPrior(2), lambda: GaussianMixturePrior(variance=0.1)],
    ids=["iso", "mixture"],
)
def test_inclusive_kl_mean_matches_numerical_integration(make_prior):
    prior = make_prior().double()
    q = _batch_mixture()
    ref = _grid_kl_p_to_mixture(prior, q)
    torch.manual_seed(0)
    M = 200_000  # prior samples; the per-sample log-ratio has sd ≲ 1, so the standard error is ≲ 0.003
    z_p = prior.sample(M).unsqueeze(0)
    est = InclusiveKL()(AggregateBatch(q, q.sample(), z_p, prior.log_prob(z_p))).item()
    assert est == pytest.approx(ref, abs=0.015)


def test_pairwise_log_prob_axes():
    q = dist.Normal(torch.randn(3, 4, 2), 1.0).to_event(1)  # [P=3, B=4]
    z = torch.randn(3, 5, 2)  # [P, M=5, D]
    out = pairwise_log_prob(q, z)
    assert out.shape == (3, 5, 4)
    ref = dist.Normal(q.base_dist.loc[1, 2], 1.0).log_prob(z[1, 3]).sum()
    assert out[1, 3, 2].item() == pytest.approx(ref.item(), rel=1e-6)


KERNELS = {"imq": IMQKernel(), "imq-single": IMQKernel(c=2.0), "per-dim": PerDimensionIMQKernel(), "rbf": RBFKernel()}


@pytest.mark.parametrize("kernel", KERNELS.values(), ids=KERNELS.keys())
def test_mmd_u_statistic_is_unbiased_and_detects_differences(kernel):
    g = torch.Generator().manual_seed(1)
    R, n, D = 400, 32, 3  # repetitions × sample size
    same = mmd_u_statistic(torch.randn(R, n, D, generator=g), torch.randn(R, n, D, generator=g), kernel)
    shifted = mmd_u_statistic(torch.randn(R, n, D, generator=g), 0.5 + torch.randn(R, n, D, generator=g), kernel)
    se_same = same.std() / math.sqrt(R)
    # E[MMD²_u] = 0 for identical distributions: the mean lies within 3.5 standard errors of 0
    assert abs(same.mean()) < 3.5 * se_same
    assert (same < 0).any()  # an unbiased estimator must be able to go negative
    assert shifted.mean() > 10 * shifted.std() / math.sqrt(R)


def test_mmd_u_statistic_matches_explicit_double_loop():
    x, y = torch.randn(6, 2, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    k = IMQKernel(c=1.3)

    def kv(a, b):
        return 1.3 / (1.3 + ((a - b) ** 2).sum())

    xx = sum(kv(x[i], x[j]) for i in range(6) for j in range(6) if i != j) / 30
    yy = sum(kv(y[i], y[j]) for i in range(5) for j in range(5) if i != j) / 20
    xy = sum(kv(x[i], y[j]) for i in range(6) for j in range(5)) / 30
    assert mmd_u_statistic(x, y, k).item() == pytest.approx((xx + yy - 2 * xy).item(), rel=1e-10)


def test_per_dimension_kernel_matches_definition_and_gradients():
    a = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True)
    sig = (0.2, 0.4, 1.0, 2.0, 4.0, 10.0)  # 004 Eq. 10
    t = (a.unsqueeze(-2) - b.unsqueeze(-3)) ** 2
    ref = sum(s / (s + t) for s in sig).sum(-1)
    k = PerDimensionIMQKernel()
    assert torch.allclose(k(a, b), ref)
    assert torch.autograd.gradcheck(lambda a, b: k(a, b), (a, b))


def test_mmd_divergence_uses_prior_samples():
    q = dist.Normal(torch.zeros(1, 64, 2), 1.0).to_event(1)
    mmd = MMD("rbf")
    torch.manual_seed(0)
    near = mmd(AggregateBatch(q, q.sample(), torch.randn(1, 64, 2))).item()
    far = mmd(AggregateBatch(q, q.sample(), 3 + torch.randn(1, 64, 2))).item()
    assert far > 0.5 and abs(near) < 0.1


@pytest.mark.parametrize(
    "build, error, match",
    [
        (
            lambda: MMD("laplace"),
            ValueError,
            r"Unknown MMD kernel 'laplace'; choose one of \['imq', 'per_dim', 'rbf'\]",
        ),
        (lambda: MMD(3), TypeError, "kernel must be a name or a callable"),
        (lambda: IMQKernel(scales=(1.0, -1.0)), ValueError, "scales must be a positive number"),
        (lambda: InclusiveKL(num_prior_samples=1), ValueError, "num_prior_samples must be an integer >= 2"),
        (lambda: mmd_u_statistic(torch.zeros(1, 2), torch.zeros(3, 2), RBFKernel()), ValueError, "at least 2 samples"),
    ],
    ids=["kernel-name", "kernel-type", "scales", "prior-samples", "u-stat-size"],
)
def test_bad_divergence_arguments(build, error, match):
    with pytest.raises(error, match=match):
        build()


@pytest.mark.parametrize("budget", [None, 7], ids=["default-blocks", "tiny-blocks"])
@pytest.mark.parametrize("P, B, M, D", [(1, 2, 2, 1), (1, 9, 13, 2), (2, 6, 4, 5)])
def test_inclusive_kl_blocked_density_matches_pairwise_log_prob(P, B, M, D, budget, monkeypatch):
    """The blocked diagonal-Normal path equals log-mean-exp of :func:`pairwise_log_prob` (float64), value
    and gradients with respect to the encoder's loc and scale and the prior samples."""
    from pyro_decomp.divergences import kl as kl_module
    from pyro_decomp.divergences.base import log_mean_exp

    if budget is not None:
        monkeypatch.setattr(kl_module, "block_elements", lambda device: budget)
    g = torch.Generator().manual_seed(P * B * M * D)
    loc = torch.randn(P, B, D, generator=g, dtype=torch.float64).requires_grad_()
    scale = (0.1 + torch.rand(P, B, D, generator=g, dtype=torch.float64)).requires_grad_()
    z_p = torch.randn(P, M, D, generator=g, dtype=torch.float64).requires_grad_()
    log_p = torch.randn(P, M, generator=g, dtype=torch.float64)
    q = dist.Normal(loc, scale).to_event(1)
    ours = InclusiveKL()(AggregateBatch(q, q.rsample(), z_p, log_p))
    ref = (log_p - log_mean_exp(pairwise_log_prob(q, z_p), dim=-1)).mean()
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)
    for a, b in zip(torch.autograd.grad(ours, (loc, scale, z_p)), torch.autograd.grad(ref, (loc, scale, z_p))):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    fn = kl_module._NormalMixtureLogDensity.apply
    assert torch.autograd.gradcheck(fn, (z_p, loc, scale))
    # a shared scalar scale (broadcast to [P, B, D]) takes the same path
    s = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    q1 = dist.Normal(loc, s).to_event(1)
    ours = InclusiveKL()(AggregateBatch(q1, q1.rsample(), z_p, log_p))
    ref = (log_p - log_mean_exp(pairwise_log_prob(q1, z_p), dim=-1)).mean()
    torch.testing.assert_close(torch.autograd.grad(ours, s)[0], torch.autograd.grad(ref, s)[0], rtol=0, atol=1e-12)
