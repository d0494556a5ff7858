"""Capacity-annealed β-VAE: γ |KL − C(t)| (issue 4)."""

from __future__ import annotations

import math

import pyro.distributions as dist
import pytest
import torch
from _regulariser_helpers import svi_steps

from pyro_decomp.divergences import AggregateBatch, CapacityKL, per_datapoint_kl
from pyro_decomp.models import IsotropicGaussianPrior, StudentTPrior
from pyro_decomp.schedules import LinearWarmup

LOC = torch.tensor([[[0.5, -1.0], [2.0, 0.0], [0.0, 0.3]]])
SCALE = torch.tensor([[[0.5, 1.0], [0.2, 0.7], [1.5, 0.9]]])


def _batch(prior):
    q = dist.Normal(LOC, SCALE).to_event(1)
    z = q.sample()
    return AggregateBatch(q, z, prior_log_prob=prior.log_prob, log_p_zq=prior.log_prob(z))


def test_per_datapoint_kl_analytic():
    # KL(N(m, s²) || N(0, 1)) = ½(s² + m² − 1) − log s, summed over dimensions
    expected = (0.5 * (SCALE**2 + LOC**2 - 1) - SCALE.log()).sum(-1)
    assert torch.allclose(per_datapoint_kl(_batch(IsotropicGaussianPrior(2))), expected, atol=1e-6)


def test_per_datapoint_kl_monte_carlo_fallback():
    # no closed form for Normal || Student-t: the single-sample estimate log q(z|x) − log p(z), whose mean
    # over particles must approach the KL by quadrature (scipy densities, independent of torch)
    from scipy import integrate, stats

    prior = StudentTPrior(2, df=3.0)
    num_particles = 20_000
    q = dist.Normal(LOC.expand(num_particles, 3, 2), SCALE.expand(num_particles, 3, 2)).to_event(1)
    z = q.sample()
    mc = per_datapoint_kl(AggregateBatch(q, z, log_p_zq=prior.log_prob(z))).double()  # [P, B]

    def kl_1d(m, s):
        f = lambda t: stats.norm.pdf(t, m, s) * (stats.norm.logpdf(t, m, s) - stats.t.logpdf(t, 3.0))  # noqa: E731
        return integrate.quad(f, m - 12 * s, m + 12 * s, limit=200)[0]

    for b in range(3):
        ref = sum(kl_1d(float(LOC[0, b, d]), float(SCALE[0, b, d])) for d in range(2))
        # 4.5 standard errors of the 20,000-particle mean
        assert float(mc[:, b].mean()) == pytest.approx(ref, abs=4.5 * float(mc[:, b].std()) / math.sqrt(num_particles))


def test_capacity_schedule_and_value():
    batch = _batch(IsotropicGaussianPrior(2))
    kl = float((0.5 * (SCALE**2 + LOC**2 - 1) - SCALE.log()).sum(-1).mean())  # batch-mean KL ≈ 1.64
    cap = CapacityKL(gamma=10.0, capacity=LinearWarmup(0.0, 4.0, steps=8))
    assert float(cap(batch)) == pytest.approx(10 * kl, rel=1e-6)  # C(0) = 0
    for _ in range(6):
        cap.update(batch)
    assert cap.current_weights()["capacity"] == 3.0
    assert float(cap(batch)) == pytest.approx(10 * abs(kl - 3.0), rel=1e-6)
    state = cap.state_dict()
    fresh = CapacityKL(gamma=10.0, capacity=LinearWarmup(0.0, 4.0, steps=8))
    fresh.load_state_dict(state)
    assert fresh.step == 6 and fresh.current_weights()["capacity"] == 3.0


def test_errors():
    with pytest.raises(ValueError, match="gamma must be finite and >= 0"):
        CapacityKL(gamma=-1.0)
    with pytest.raises(TypeError, match="capacity must be a number or a schedule"):
        CapacityKL(capacity="25")
    q = dist.Normal(torch.zeros(1, 2, 2), 1.0).to_event(1)
    with pytest.raises(ValueError, match="needs the prior"):
        CapacityKL()(AggregateBatch(q, q.sample()))


def test_svi_step_end_to_end():
    # Burgess et al.: beta = 0 (no other KL), alpha = 1; loss = recon + n γ |KL − C(t)|, n = 64
    cap = CapacityKL(gamma=5.0, capacity=LinearWarmup(0.0, 10.0, steps=4))
    _, elbo, losses = svi_steps(cap, beta=0.0, alpha=1.0, steps=3)
    assert all(math.isfinite(v) for v in losses)
    t = elbo.last_terms
    assert float(t["divergence/capacity"]) == 5.0  # C at the step the last loss used (step 2 of 4)
    assert float(t["loss"]) == pytest.approx(float(t["reconstruction"] + t["weighted_divergence"]), rel=1e-5)
    kl_mean = float(t["kl"]) / 64  # the ELBO's KL is summed over the data plate scaled to n = 64
    assert float(t["divergence"]) == pytest.approx(5.0 * abs(kl_mean - 5.0), rel=1e-4)
    assert elbo.state_dict()["divergence"]["step"] == 3
