"""FactorVAE: the thesis' discriminator, its TC estimate, gradient isolation and checkpoints (issue 4)."""

from __future__ import annotations

import io
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from _regulariser_helpers import divergence_enters_as_pyro_elbo_plus_alpha_n_d, svi_steps, tiny_vae
from torch import nn

from pyro_decomp import DecompositionELBO
from pyro_decomp.divergences import AggregateBatch, FactorVAE, FactorVAEDiscriminator, permute_dims


def test_discriminator_matches_thesis_table_5_5():
    disc = FactorVAEDiscriminator(10)
    linears = [m for m in disc.net if isinstance(m, nn.Linear)]
    acts = [m for m in disc.net if isinstance(m, nn.LeakyReLU)]
    # six linear layers: 10 -> 1000, four 1000 -> 1000, 1000 -> 2; LeakyReLU(0.2) after the first five
    assert [(m.in_features, m.out_features) for m in linears] == [(10, 1000)] + [(1000, 1000)] * 4 + [(1000, 2)]
    assert len(acts) == 5 and all(a.negative_slope == 0.2 for a in acts)
    assert isinstance(disc.net[-1], nn.Linear)
    group = FactorVAE(latent_dim=10).optimizer.param_groups[0]
    assert isinstance(FactorVAE(latent_dim=10).optimizer, torch.optim.Adam)
    assert group["lr"] == 1e-4 and tuple(group["betas"]) == (0.5, 0.9)


def test_permute_dims_permutes_each_column():
    z = torch.arange(40.0).reshape(10, 4)
    p = permute_dims(z)
    for d in range(4):
        assert torch.equal(p[:, d].sort().values, z[:, d])
    assert not torch.equal(p, z)


@pytest.fixture
def one_thread():
    # tiny matmuls: intra-op threading only adds overhead (and stalls on a busy 2-core machine)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _correlated(n, cov):
    return dist.MultivariateNormal(torch.zeros(cov.shape[0]), cov).sample((n,))


@pytest.mark.parametrize(
    "cov",
    [
        torch.tensor([[1.0, 0.8], [0.8, 1.0]]),
        torch.tensor([[1.0, 0.6, 0.3], [0.6, 1.0, 0.5], [0.3, 0.5, 1.0]]),
    ],
    ids=["2d-rho0.8", "3d"],
)
def test_trained_discriminator_estimates_gaussian_tc(cov, one_thread):
    # analytic TC of a Gaussian: -1/2 log det(correlation matrix); 0.511 (2-D), 0.367 (3-D)
    tc_exact = -0.5 * torch.logdet(cov).item()
    torch.manual_seed(0)
    tc = FactorVAE(latent_dim=cov.shape[0], hidden_size=64, num_hidden_layers=3, lr=1e-3)
    # 400 steps, each on fresh joint samples against a permuted independent batch (512 + 512)
    for _ in range(400):
        tc.discriminator_step(_correlated(512, cov), _correlated(512, cov))
    est = tc.estimate_tc(_correlated(20000, cov)).item()  # 20000 evaluation samples
    # measured: 0.518 (2-D), 0.353 (3-D)
    assert est == pytest.approx(tc_exact, abs=0.1)
    # on samples of prod_d q(z_d) the same average estimates -KL(prod_d q(z_d) || q(z)) < 0, not TC
    assert tc.estimate_tc(permute_dims(_correlated(20000, cov))).item() < -0.1


def _vae_grads(vae):
    return {n: p.grad.clone() for n, p in vae.named_parameters() if p.grad is not None}


def test_vae_loss_puts_no_gradient_on_discriminator():
    vae = tiny_vae(3)
    tc = FactorVAE(latent_dim=3, hidden_size=32)
    elbo = DecompositionELBO(beta=1.0, alpha=10.0, divergence=tc)
    x = torch.randn(16, 2)
    loss = elbo.differentiable_loss(vae.model, vae.guide, x)
    loss.backward()
    assert all(p.grad is None for p in tc.discriminator.parameters())
    # ...while the TC term does reach the encoder through z
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in vae.encoder.parameters())


def test_discriminator_update_does_not_touch_vae_gradients():
    vae = tiny_vae(3)
    x = torch.randn(16, 2)
    torch.manual_seed(1)
    tc = FactorVAE(latent_dim=3, hidden_size=32, lr=1e-2)
    state = tc.state_dict()

    # run A: loss_and_grads, which also trains the discriminator (after the backward pass)
    elbo = DecompositionELBO(beta=1.0, alpha=10.0, divergence=tc)
    pyro.set_rng_seed(5)
    elbo.loss_and_grads(vae.model, vae.guide, x)
    grads_a = _vae_grads(vae)
    disc_after = [p.detach().clone() for p in tc.discriminator.parameters()]
    vae.zero_grad(set_to_none=True)

    # run B: same seed and same discriminator, the discriminator update skipped
    tc_b = FactorVAE(latent_dim=3, hidden_size=32, lr=1e-2)
    tc_b.load_state_dict(state)
    elbo_b = DecompositionELBO(beta=1.0, alpha=10.0, divergence=tc_b)
    pyro.set_rng_seed(5)
    elbo_b.differentiable_loss(vae.model, vae.guide, x).backward()
    grads_b = _vae_grads(vae)

    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 0
    for name in grads_a:
        assert torch.equal(grads_a[name], grads_b[name]), name
    # the discriminator did train in run A, and its optimiser left no gradients behind
    assert any(not torch.equal(a, b) for a, b in zip(disc_after, tc_b.discriminator.parameters(), strict=True))
    assert all(p.grad is None for p in tc.discriminator.parameters())


def test_state_dict_round_trip_weights_only():
    torch.manual_seed(0)
    _, elbo, _ = svi_steps(FactorVAE(latent_dim=3, hidden_size=32, second_batch="previous"), alpha=5.0, steps=3)
    buf = io.BytesIO()
    torch.save(elbo.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    fresh = FactorVAE(latent_dim=3, hidden_size=32, second_batch="previous")
    fresh.load_state_dict(state["divergence"])
    old = elbo.divergence
    assert fresh.step == old.step == 3
    for a, b in zip(fresh.discriminator.parameters(), old.discriminator.parameters(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(fresh._previous, old._previous)
    # one more identical update from both gives identical discriminators (Adam moments were restored)
    z = torch.randn(1, 16, 3)
    q = dist.Normal(z, 1.0).to_event(1)
    for d in (old, fresh):
        torch.manual_seed(7)
        d.update(AggregateBatch(q, z))
    for a, b in zip(fresh.discriminator.parameters(), old.discriminator.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("mode", ["half", "previous", "same"])
def test_svi_step_end_to_end(mode):
    divergence = FactorVAE(latent_dim=3, hidden_size=32, second_batch=mode)
    vae, elbo, losses = svi_steps(divergence, alpha=10.0)
    assert all(math.isfinite(v) for v in losses)
    t = elbo.last_terms
    assert {"divergence/discriminator_loss", "divergence/discriminator_accuracy", "divergence/tc"} <= set(t)
    divergence_enters_as_pyro_elbo_plus_alpha_n_d(vae, elbo, divergence)


def test_errors():
    with pytest.raises(ValueError, match="second_batch must be one of"):
        FactorVAE(latent_dim=3, second_batch="other")
    with pytest.raises(ValueError, match="latent_dim must be a positive integer"):
        FactorVAE(latent_dim=0)
    tc = FactorVAE(latent_dim=3, hidden_size=8)
    q = dist.Normal(torch.zeros(1, 2, 4), 1.0).to_event(1)
    with pytest.raises(ValueError, match="built for latent_dim=3"):
        tc(AggregateBatch(q, q.sample()))
    q3 = dist.Normal(torch.zeros(1, 2, 3), 1.0).to_event(1)
    with pytest.raises(ValueError, match="at least 4 codes"):
        tc.update(AggregateBatch(q3, q3.sample()))
    with pytest.raises(ValueError, match="lacks"):
        tc.load_state_dict({"step": 0})


def test_trainer_resume_restores_discriminator(tmp_path):
    # an interrupted run (3 steps, checkpoint, resume to 6) ends bit-identical to an uninterrupted one,
    # VAE and discriminator alike: the discriminator and its Adam state travel in the checkpoint
    from pyro_decomp.schedules import LinearWarmup
    from pyro_decomp.train import Trainer

    def make(run_dir, steps):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        vae = tiny_vae(3)
        tc = FactorVAE(latent_dim=3, hidden_size=16, second_batch="previous")
        elbo = DecompositionELBO(beta=LinearWarmup(0.0, 1.0, steps=4), alpha=5.0, divergence=tc)
        data = torch.randn(64, 2, generator=torch.Generator().manual_seed(1))
        trainer = Trainer(vae, vae.model, vae.guide, elbo, data, run_dir=run_dir, steps=steps, batch_size=16,
                          checkpoint_every=3, progress=False, tensorboard=False, device="cpu")  # fmt: skip
        return vae, tc, trainer

    vae_a, tc_a, trainer = make(tmp_path / "a", 6)
    trainer.fit()
    make(tmp_path / "b", 3)[2].fit()
    vae_b, tc_b, trainer = make(tmp_path / "b", 6)
    trainer.fit(resume=True)
    assert tc_a.step == tc_b.step == 6
    for x, y in zip(vae_a.state_dict().values(), vae_b.state_dict().values(), strict=True):
        assert torch.equal(x, y)
    for x, y in zip(tc_a.discriminator.parameters(), tc_b.discriminator.parameters(), strict=True):
        assert torch.equal(x, y)
