"""Per-step fast paths: IsotropicGaussianMixture (GaussianMixturePrior's distribution) against torch's
MixtureSameFamily and closed-form moments; cached module registration against pyro.module; the inclusive-KL
kernel's reused scratch buffer."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

from pyro_decomp.divergences import kl as kl_module
from pyro_decomp.guides._registration import registered_child
from pyro_decomp.models.likelihoods import GaussianLikelihood
from pyro_decomp.models.networks import build_networks
from pyro_decomp.models.priors import GaussianMixturePrior, IsotropicGaussianMixture
from pyro_decomp.models.vae import VAE

MEANS = [[1.0, 0.0, 0.5], [-1.0, 0.0, 0.0], [0.0, 2.0, -0.5], [0.0, -1.0, 1.0]]
WEIGHTS = [0.1, 0.2, 0.3, 0.4]
SIGMA = 0.3


def _pair(dtype=torch.float64):
    means = torch.tensor(MEANS, dtype=dtype)
    weights = torch.tensor(WEIGHTS, dtype=dtype)
    ours = IsotropicGaussianMixture(means, weights, SIGMA)
    ref = dist.MixtureSameFamily(
        dist.Categorical(probs=weights), dist.Normal(means, torch.full_like(means, SIGMA)).to_event(1)
    )
    return ours, ref


def test_log_prob_and_gradient_match_mixture_same_family():
    ours, ref = _pair()
    g = torch.Generator().manual_seed(0)
    z = (3 * torch.randn(500, 3, generator=g, dtype=torch.float64)).requires_grad_()
    lp, lr = ours.log_prob(z), ref.log_prob(z)
    assert lp.shape == lr.shape == (500,)
    torch.testing.assert_close(lp, lr, rtol=0, atol=1e-6)
    torch.testing.assert_close(torch.autograd.grad(lp.sum(), z)[0], torch.autograd.grad(lr.sum(), z)[0], rtol=0, atol=1e-6)
    # float32: the same formula, so only rounding differs (values of order 10-100 here)
    o32, r32 = _pair(torch.float32)
    torch.testing.assert_close(o32.log_prob(z.detach().float()), r32.log_prob(z.detach().float()), rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("batch_shape", [(), (4,), (2, 3)])
@pytest.mark.parametrize("sample_shape", [(), (5,), (2, 7)])
def test_same_draws_and_shapes_as_mixture_same_family(batch_shape, sample_shape):
    ours, ref = (d.expand(batch_shape) for d in _pair())
    assert ours.batch_shape == ref.batch_shape and ours.event_shape == ref.event_shape
    torch.manual_seed(11)
    a = ours.sample(sample_shape)
    torch.manual_seed(11)
    b = ref.sample(sample_shape)
    assert torch.equal(a, b)  # the same random stream, consumed in the same order
    torch.testing.assert_close(ours.log_prob(a), ref.log_prob(a), rtol=0, atol=1e-6)
    # a single point broadcasts against the batch shape, as MixtureSameFamily's does
    point = torch.zeros(3, dtype=torch.float64)
    assert ours.log_prob(point).shape == ref.log_prob(point).shape == torch.Size(batch_shape)
    torch.testing.assert_close(ours.mean, ref.mean, rtol=0, atol=1e-12)
    torch.testing.assert_close(ours.variance, ref.variance, rtol=0, atol=1e-12)


def test_sample_moments_and_component_frequencies():
    ours, _ = _pair()
    n = 200_000
    torch.manual_seed(3)
    z = ours.sample((n,))
    means, w = torch.tensor(MEANS, dtype=torch.float64), torch.tensor(WEIGHTS, dtype=torch.float64)
    mean = w @ means
    var = SIGMA**2 + w @ (means - mean) ** 2
    # 5 standard errors of the sample mean and of the sample variance (4th moment from the closed form's size)
    assert torch.all((z.mean(0) - mean).abs() < 5 * (var / n).sqrt())
    fourth = (w @ ((means - mean) ** 4 + 6 * SIGMA**2 * (means - mean) ** 2) + 3 * SIGMA**4) - var**2
    assert torch.all((z.var(0) - var).abs() < 5 * (fourth / n).sqrt())
    # nearest-mean frequencies match the weights within 5 binomial standard errors plus the overlap: the
    # means are >= 1.5 = 5 sigma apart, so a draw crosses a midplane with probability Phi(-2.5) = 0.6 %,
    # and at most 3 neighbours move under 2 % of any component's mass
    near = torch.cdist(z, means).argmin(-1)
    freq = torch.bincount(near, minlength=4).double() / n
    assert torch.all((freq - w).abs() < 5 * (w * (1 - w) / n).sqrt() + 0.02 * w.max())


def test_validation_and_errors():
    means, weights = torch.tensor(MEANS), torch.tensor(WEIGHTS)
    with pytest.raises(ValueError, match="weights"):
        IsotropicGaussianMixture(means, torch.tensor([0.5, -0.1, 0.3, 0.3]), SIGMA, validate_args=True)
    with pytest.raises(ValueError, match="scale"):
        IsotropicGaussianMixture(means, weights, -1.0, validate_args=True)
    with pytest.raises(ValueError, match="means must be a"):
        IsotropicGaussianMixture(means[0], weights, SIGMA)
    with pytest.raises(ValueError, match="weights must be a"):
        IsotropicGaussianMixture(means, weights[:3], SIGMA)
    d = IsotropicGaussianMixture(means, weights, SIGMA, validate_args=True)
    with pytest.raises(ValueError):
        d.log_prob(torch.zeros(5, 2))  # wrong event size
    # weights are normalised like Categorical(probs=...)
    torch.testing.assert_close(IsotropicGaussianMixture(means, 2 * weights, SIGMA).weights, weights)


def test_prior_site_in_a_plate_matches_the_reference_density():
    prior = GaussianMixturePrior(means="axes", weights=[0.1, 0.2, 0.3, 0.4]).double()
    d = prior.distribution()
    assert isinstance(d, IsotropicGaussianMixture) and prior.distribution() is d  # built once, cached
    with poutine.trace() as tr, pyro.plate("data", 6):
        z = prior()
    site = tr.trace.nodes["z"]
    assert site["fn"].batch_shape == (6,) and z.shape == (6, 2)
    ref = dist.MixtureSameFamily(dist.Categorical(probs=prior.weights), prior._components())
    torch.testing.assert_close(site["fn"].log_prob(z), ref.log_prob(z), rtol=0, atol=1e-12)


def _param_sites(fn, *args):
    with poutine.trace(param_only=True) as tr:
        fn(*args)
    return [(name, site["value"].unconstrained()) for name, site in tr.trace.nodes.items()]


def test_registered_child_issues_pyro_modules_param_statements():
    pyro.clear_param_store()
    torch.manual_seed(0)
    enc, dec = build_networks("pinwheel")
    vae = VAE(GaussianMixturePrior(), dec, GaussianLikelihood(), enc)
    x = torch.randn(5, 2)

    def reference_model(x):  # the same statements through pyro.module
        pyro.module("decoder", vae.decoder)
        pyro.module("guide_module.encoder", vae.encoder)

    want = _param_sites(reference_model, x)
    got = _param_sites(vae.model, x) + _param_sites(vae.guide, x)
    assert [n for n, _ in got] == [n for n, _ in want]
    assert all(a is b for (_, a), (_, b) in zip(got, want, strict=True))
    # a replaced parameter tensor is picked up at the next step
    layer = vae.decoder.net[0]
    layer.weight = torch.nn.Parameter(layer.weight.detach().clone())
    pyro.clear_param_store()
    got = dict(_param_sites(vae.model, x))
    assert got["decoder$$$net.0.weight"] is layer.weight
    # a frozen parameter goes through pyro.module itself (which skips it, with its warning in training)
    layer.bias.requires_grad_(False)
    with pytest.warns(UserWarning, match="requires_grad=False"):
        got = dict(_param_sites(vae.model, x))
    assert "decoder$$$net.0.bias" not in got and got["decoder$$$net.0.weight"] is layer.weight
    # outside the module's context nothing is registered, as for PyroModule attribute access
    assert registered_child(vae, "decoder") is vae._modules["decoder"]
    pyro.clear_param_store()


def test_kernel_scratch_reuse_keeps_pending_backward_passes_exact():
    g = torch.Generator().manual_seed(5)
    P, M, B, D = 1, 37, 23, 3
    fn = kl_module._NormalMixtureLogDensity.apply
    inputs = []
    for _ in range(2):
        loc = torch.randn(P, B, D, generator=g, dtype=torch.float64).requires_grad_()
        scale = (0.2 + torch.rand(P, B, D, generator=g, dtype=torch.float64)).requires_grad_()
        z = torch.randn(P, M, D, generator=g, dtype=torch.float64).requires_grad_()
        inputs.append((z, loc, scale))
    # two forward passes before either backward pass: the second reuses the first's scratch buffer
    outs = [fn(*inp) for inp in inputs]
    for (z, loc, scale), out in zip(inputs, outs):
        ref = torch.logsumexp(dist.Normal(loc.unsqueeze(1), scale.unsqueeze(1)).log_prob(z.unsqueeze(2)).sum(-1), -1)
        ref = ref - math.log(B)
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
        for a, b in zip(torch.autograd.grad(out.sum(), (z, loc, scale)), torch.autograd.grad(ref.sum(), (z, loc, scale))):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
