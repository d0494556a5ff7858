"""JitDecompositionELBO: the compiled loss is the eager DecompositionELBO's, value and gradient, step by step.

Every comparison starts both ELBOs from the same random state: the compiled graph replays the same random
ops in the same order, so values agree to float32 rounding (tolerances below are relative, 1e-5, on losses
of order 10^3 and on gradients)."""

from __future__ import annotations

import copy

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyro_decomp
from pyro_decomp import DecompositionELBO, JitDecompositionELBO
from pyro_decomp.divergences import MMD, FactorVAE, InclusiveKL
from pyro_decomp.models.likelihoods import GaussianLikelihood
from pyro_decomp.models.networks import build_networks
from pyro_decomp.models.priors import GaussianMixturePrior, IsotropicGaussianPrior, SparseMixturePrior, StudentTPrior
from pyro_decomp.models.vae import VAE
from pyro_decomp.schedules import LinearWarmup

RTOL = 1e-5


def _vae(prior=None, seed=0):
    torch.manual_seed(seed)
    encoder, decoder = build_networks("pinwheel")
    return VAE(prior or GaussianMixturePrior(2, n_components=4), decoder, GaussianLikelihood(scale=None), encoder)


def _data(n=64, seed=1):
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed))


def _loss_and_grads(elbo, vae, x, seed):
    pyro.set_rng_seed(seed)
    for p in vae.parameters():
        p.grad = None
    loss = elbo.differentiable_loss(vae.model, vae.guide, x)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in vae.parameters()]


def _assert_same(a, b):
    (la, ga), (lb, gb) = a, b
    torch.testing.assert_close(la, lb, rtol=RTOL, atol=1e-4)
    for x, y in zip(ga, gb):
        torch.testing.assert_close(x, y, rtol=RTOL, atol=1e-5 * float(y.abs().max()))


@pytest.mark.parametrize(
    "prior, divergence, beta, alpha",
    [
        (None, InclusiveKL(num_prior_samples=100), 1.0, 3.0),  # the pinwheel workload: mixture prior, MC KL
        (IsotropicGaussianPrior(2), MMD("imq"), 4.0, 10.0),  # analytic KL + MMD
        (StudentTPrior(2, df=3.0), None, 0.5, 0.0),  # no divergence, MC KL with a non-Gaussian prior
        (SparseMixturePrior(2, gamma=0.8), MMD("per_dim"), 1.0, 100.0),  # 004's sparse prior + Eq. 10's MMD
    ],
    ids=["mixture-inclusive-kl", "gaussian-mmd", "student-t", "sparse-per-dim-mmd"],
)
def test_compiled_loss_and_gradients_equal_eager(prior, divergence, beta, alpha):
    pyro.clear_param_store()
    vae = _vae(prior)
    x = _data()
    jit = JitDecompositionELBO(beta=beta, alpha=alpha, divergence=divergence)
    eager = DecompositionELBO(beta=beta, alpha=alpha, divergence=copy.deepcopy(divergence))
    for seed in (3, 4, 5):  # the first call compiles; later calls run the graph
        _assert_same(_loss_and_grads(jit, vae, x, seed), _loss_and_grads(eager, vae, x, seed))
    assert len(jit._compiled) == 1


def test_svi_trajectory_equals_eager_and_a_schedule_does_not_recompile():
    """30 SVI steps with α warming up 0 → 3: the same parameters as the eager ELBO's, and the compile
    (which runs the program several times) leaves the random stream where the eager run leaves it."""
    x = _data(128)
    finals = []
    for cls in (DecompositionELBO, JitDecompositionELBO):
        pyro.clear_param_store()
        vae = _vae()
        alpha = LinearWarmup(start=0.0, end=3.0, steps=10, delay=5)
        elbo = cls(beta=1.0, alpha=alpha, divergence=InclusiveKL(num_prior_samples=50))
        svi = pyro.infer.SVI(vae.model, vae.guide, pyro_decomp.optim.Adam({"lr": 1e-2}), loss=elbo)
        pyro.set_rng_seed(0)
        losses = [svi.step(x) for _ in range(30)]
        finals.append((losses, [p.detach().clone() for p in vae.parameters()], elbo))
    (l_e, p_e, _), (l_j, p_j, jit) = finals
    torch.testing.assert_close(torch.tensor(l_j), torch.tensor(l_e), rtol=1e-4, atol=1e-3)
    for a, b in zip(p_j, p_e):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert jit.step == 30
    # one graph while α = 0 (the divergence carries no gradient) and one for α > 0, not one per step
    assert len(jit._compiled) == 2
    assert set(jit.last_terms) >= {"loss", "reconstruction", "kl", "divergence", "weighted_divergence"}
    assert float(jit.last_terms["weighted_divergence"]) != 0.0


def test_a_new_batch_shape_compiles_once_more_and_stays_exact():
    pyro.clear_param_store()
    vae = _vae()
    jit = JitDecompositionELBO(beta=1.0, alpha=3.0, divergence=InclusiveKL(num_prior_samples=40))
    eager = DecompositionELBO(beta=1.0, alpha=3.0, divergence=InclusiveKL(num_prior_samples=40))
    for n in (64, 17, 64, 17):  # the short last minibatch of an epoch
        x = _data(n)
        _assert_same(_loss_and_grads(jit, vae, x, n), _loss_and_grads(eager, vae, x, n))
    assert len(jit._compiled) == 2


def test_loss_terms_and_state_dict_are_the_eager_ones():
    pyro.clear_param_store()
    vae = _vae()
    x = _data()
    jit = JitDecompositionELBO(beta=2.0, alpha=1.0, divergence=InclusiveKL(num_prior_samples=40))
    eager = DecompositionELBO(beta=2.0, alpha=1.0, divergence=InclusiveKL(num_prior_samples=40))
    pyro.set_rng_seed(9)
    a = jit.loss_terms(vae.model, vae.guide, x)
    pyro.set_rng_seed(9)
    b = eager.loss_terms(vae.model, vae.guide, x)
    assert a == pytest.approx(b, rel=1e-6)
    jit.differentiable_loss(vae.model, vae.guide, x)
    assert jit.step == 0  # differentiable_loss changes no state
    assert jit.state_dict() == eager.state_dict()


def test_refuses_what_it_cannot_compile():
    with pytest.raises(ValueError, match="Divergence.update"):
        JitDecompositionELBO(beta=1.0, alpha=10.0, divergence=FactorVAE(latent_dim=2))

    pyro.clear_param_store()
    vae = _vae()
    jit = JitDecompositionELBO()
    with pytest.raises(ValueError, match=r"\*args"):
        jit.differentiable_loss(lambda x=None: vae.model(x), lambda x=None: vae.guide(x), x=_data())

    def model():
        c = pyro.sample("c", dist.Categorical(torch.ones(3) / 3), infer={"enumerate": "parallel"})
        pyro.sample("y", dist.Normal(c.float(), 1.0), obs=torch.tensor(0.5))

    with pytest.raises(ValueError, match="enumerated"):
        JitDecompositionELBO(max_plate_nesting=0).differentiable_loss(model, lambda: None)


def test_the_compile_check_catches_python_state_baked_into_the_graph():
    """A model whose likelihood depends on a Python counter traces to a graph with one frozen value: the
    check (compiled vs eager from the same random state) must refuse it rather than train something else."""
    calls = {"n": 0}

    def model(x):
        calls["n"] += 1
        loc = pyro.param("loc", torch.zeros(2))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(loc, 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z, float(calls["n"])).to_event(1), obs=x)

    def guide(x):
        m = pyro.param("m", torch.zeros(2))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(m, 1.0).to_event(1))

    pyro.clear_param_store()
    elbo = JitDecompositionELBO()
    for _ in range(2):  # a graph that failed the check is not kept: the next call checks again
        with pytest.raises(RuntimeError, match="does not trace to a static graph"):
            elbo.differentiable_loss(model, guide, _data())
    assert not elbo._compiled


def test_train_jit_config_builds_the_compiled_elbo():
    from pyro_decomp.config import load_experiment

    cfg = load_experiment("fig3-pinwheel", size="smoke", overrides={"train.jit": True})
    exp = cfg.experiment_family().build(cfg)
    assert isinstance(exp.elbo, JitDecompositionELBO)
    cfg = load_experiment("fig3-pinwheel", size="smoke")
    assert type(cfg.experiment_family().build(cfg).elbo) is DecompositionELBO


def test_score_function_sites_compile_to_the_same_unbiased_surrogate():
    """A non-reparameterised (Bernoulli) latent takes Trace_ELBO's plate-aware score-function path, with the
    β-weighted cost credited; the compiled surrogate gives the eager gradient at the same random state."""

    def model(x):
        w = pyro.param("w", torch.tensor([0.3, -0.2]))
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Bernoulli(torch.full((x.shape[0],), 0.4)))
            pyro.sample("x", dist.Normal(c.unsqueeze(-1) * w, 1.0).to_event(1), obs=x)

    def guide(x):
        logits = pyro.param("logits", torch.zeros(x.shape[0]))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("c", dist.Bernoulli(logits=logits))

    x = _data(32)
    out = []
    for cls in (JitDecompositionELBO, DecompositionELBO):
        pyro.clear_param_store()
        elbo = cls(beta=2.0)
        for seed in (1, 2):
            pyro.set_rng_seed(seed)
            loss = elbo.differentiable_loss(model, guide, x)
            params = [pyro.param("w").unconstrained(), pyro.param("logits").unconstrained()]
            grads = torch.autograd.grad(loss, params)
        out.append((loss.detach(), grads))
    (lj, gj), (le, ge) = out
    torch.testing.assert_close(lj, le, rtol=RTOL, atol=1e-4)
    for a, b in zip(gj, ge):
        assert b.abs().max() > 0
        torch.testing.assert_close(a, b, rtol=RTOL, atol=1e-6)


def test_vectorised_particles_compile_to_the_same_loss():
    pyro.clear_param_store()
    vae = _vae()
    x = _data()
    kw = dict(beta=1.0, alpha=2.0, num_particles=4)
    jit = JitDecompositionELBO(divergence=InclusiveKL(num_prior_samples=30), **kw)
    eager = DecompositionELBO(divergence=InclusiveKL(num_prior_samples=30), **kw)
    for seed in (1, 2):
        _assert_same(_loss_and_grads(jit, vae, x, seed), _loss_and_grads(eager, vae, x, seed))
