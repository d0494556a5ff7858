"""DIP-VAE-I/II penalties against closed forms (issue 4)."""

from __future__ import annotations

import math

import pyro.distributions as dist
import pytest
import torch
from _regulariser_helpers import svi_steps

from pyro_decomp.divergences import DIPVAE, AggregateBatch, dip_covariance, dip_penalty
from pyro_decomp.schedules import LinearWarmup

# four encoder means with mean 0 and population covariance [[(c²+d²)/2, (c²-d²)/2], [(c²-d²)/2, (c²+d²)/2]]
C_, D_ = 1.0, 0.5
MEANS = torch.tensor([[C_, C_], [-C_, -C_], [D_, -D_], [-D_, D_]])
SD = torch.tensor([0.5, 1.0])
COV_MU = torch.tensor([[0.625, 0.375], [0.375, 0.625]])


def _batch(num_particles=1):
    q = dist.Normal(MEANS.expand(num_particles, -1, -1), SD.expand(num_particles, 4, 2)).to_event(1)
    return AggregateBatch(q, q.sample())


@pytest.mark.parametrize("num_particles", [1, 3], ids=["P1", "P3"])
def test_covariances(num_particles):
    batch = _batch(num_particles)
    assert torch.allclose(dip_covariance(batch, "i"), COV_MU, atol=1e-6)
    # DIP-VAE-II adds E[diag Σ(x)] = diag(0.25, 1.0): Cov_q(z)[z]
    assert torch.allclose(dip_covariance(batch, "ii"), COV_MU + torch.diag(SD**2), atol=1e-6)


@pytest.mark.parametrize(
    "kind, expected",
    [
        # λ_od Σ_{i≠j} C_ij² + λ_d Σ (C_ii - 1)², λ_od = 2, λ_d = 3
        ("i", 2 * (2 * 0.375**2) + 3 * (2 * (0.625 - 1) ** 2)),  # = 1.40625
        ("ii", 2 * (2 * 0.375**2) + 3 * ((0.875 - 1) ** 2 + (1.625 - 1) ** 2)),  # = 1.78125
    ],
    ids=["dip-i", "dip-ii"],
)
def test_penalty_closed_form(kind, expected):
    d = DIPVAE(kind, lambda_od=2.0, lambda_d=3.0)(_batch())
    assert float(d) == pytest.approx(expected, abs=1e-6)


def test_penalty_zero_at_prior():
    # every encoder N(0, I): q(z) = N(0, I), so DIP-II vanishes; DIP-I sees Cov[μ] = 0 and pays λ_d per dimension
    q = dist.Normal(torch.zeros(1, 8, 3), 1.0).to_event(1)
    batch = AggregateBatch(q, q.sample())
    assert float(DIPVAE("ii", lambda_od=5.0, lambda_d=5.0)(batch)) == pytest.approx(0.0, abs=1e-6)
    assert float(DIPVAE("i", lambda_od=5.0, lambda_d=5.0)(batch)) == pytest.approx(15.0, abs=1e-6)


def test_dip_penalty_function():
    cov = torch.tensor([[2.0, -1.0, 0.5], [-1.0, 1.0, 0.0], [0.5, 0.0, 0.0]])
    # off-diagonal: 2 (1 + 0.25) = 2.5; diagonal: 1 + 0 + 1 = 2
    assert float(dip_penalty(cov, 1.0, 1.0)) == pytest.approx(4.5)
    assert float(dip_penalty(cov, 10.0, 0.0)) == pytest.approx(25.0)


def test_weight_schedule_follows_steps():
    dip = DIPVAE("i", lambda_od=LinearWarmup(0.0, 10.0, steps=10), lambda_d=0.0)
    batch = _batch()
    assert float(dip(batch)) == 0.0
    for _ in range(5):
        dip.update(batch)
    assert float(dip(batch)) == pytest.approx(5.0 * 2 * 0.375**2, abs=1e-6)
    state = dip.state_dict()
    fresh = DIPVAE("i", lambda_od=LinearWarmup(0.0, 10.0, steps=10), lambda_d=0.0)
    fresh.load_state_dict(state)
    assert fresh.weight("lambda_od") == 5.0


def test_errors():
    with pytest.raises(ValueError, match="kind must be 'i'"):
        DIPVAE("iii")
    with pytest.raises(ValueError, match="lambda_od must be finite and >= 0"):
        DIPVAE(lambda_od=-1.0)
    q = dist.StudentT(2.0, torch.zeros(1, 4, 2), 1.0).to_event(1)  # infinite variance
    with pytest.raises(ValueError, match="variance is not finite"):
        DIPVAE("ii")(AggregateBatch(q, q.sample()))
    q1 = dist.Normal(torch.zeros(1, 1, 2), 1.0).to_event(1)
    with pytest.raises(ValueError, match="at least 2 datapoints"):
        DIPVAE("i")(AggregateBatch(q1, q1.sample()))


@pytest.mark.parametrize("kind", ["i", "ii"])
def test_svi_step_end_to_end(kind):
    _, elbo, losses = svi_steps(DIPVAE(kind, lambda_od=10.0, lambda_d=10.0))
    assert all(math.isfinite(v) for v in losses)
    t = elbo.last_terms
    # weighted divergence = alpha * n * D with n = dataset_size = 64
    assert float(t["weighted_divergence"]) == pytest.approx(64 * float(t["divergence"]), rel=1e-5)
