"""pyro_decomp.optim.Adam: one fused torch Adam with pyro.optim.Adam's semantics and state format."""

from __future__ import annotations

import copy

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyro_decomp
from pyro_decomp import DecompositionELBO
from pyro_decomp.models.networks import build_networks


def _vae(seed=0):
    torch.manual_seed(seed)
    enc, dec = build_networks("pinwheel", latent_dim=2)
    return pyro_decomp.VAE(pyro_decomp.GaussianMixturePrior(), dec, pyro_decomp.GaussianLikelihood(), enc)


def _train(vae, optim, x, steps, seed=1):
    pyro.set_rng_seed(seed)
    svi = pyro.infer.SVI(
        vae.model, vae.guide, optim, loss=DecompositionELBO(alpha=2.0, divergence=pyro_decomp.divergences.InclusiveKL())
    )
    for _ in range(steps):
        svi.step(x)
    return svi


def test_same_trajectory_as_pyro_adam():
    x = torch.randn(64, 2)
    a, b = _vae(), _vae()
    _train(a, pyro.optim.Adam({"lr": 1e-2, "betas": (0.9, 0.99)}), x, 15)
    pyro.clear_param_store()
    _train(b, pyro_decomp.optim.Adam({"lr": 1e-2, "betas": (0.9, 0.99)}), x, 15)
    for (n, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        # foreach and per-tensor kernels round differently; after 15 steps the drift is ~1e-6
        assert torch.allclose(p, q, rtol=1e-4, atol=1e-5), n


@pytest.mark.parametrize("direction", ["ours-to-pyro", "pyro-to-ours"])
def test_state_interoperates_with_pyro_adam(direction):
    x = torch.randn(64, 2)
    first, second = (
        (pyro_decomp.optim.Adam, pyro.optim.Adam)
        if direction == "ours-to-pyro"
        else (pyro.optim.Adam, pyro_decomp.optim.Adam)
    )
    # continue for 5 steps with the other optimiser class from a saved state ...
    vae = _vae()
    opt = first({"lr": 1e-2})
    _train(vae, opt, x, 5)
    state = copy.deepcopy(opt.get_state())
    weights = copy.deepcopy(vae.state_dict())
    pyro.clear_param_store()
    resumed = _vae()
    resumed.load_state_dict(weights)
    opt2 = second({"lr": 1e-2})
    opt2.set_state(copy.deepcopy(state))  # torch's load_state_dict keeps the tensors and Adam updates them in place
    _train(resumed, opt2, x, 5, seed=2)
    assert sorted(opt2.get_state()) == sorted(state)  # the same parameter names, in Pyro's format
    # ... which must match 5 more steps with the first class from the same state (same seed)
    pyro.clear_param_store()
    cont = _vae()
    cont.load_state_dict(weights)
    opt3 = first({"lr": 1e-2})
    opt3.set_state(copy.deepcopy(state))
    _train(cont, opt3, x, 5, seed=2)
    for (n, p), q in zip(resumed.named_parameters(), cont.parameters(), strict=True):
        assert torch.allclose(p, q, rtol=1e-4, atol=1e-5), n


def test_parameters_absent_from_a_step_do_not_move():
    def model():
        pyro.sample("z", dist.Normal(0.0, 1.0))

    def guide(use_b):
        a = pyro.param("a", torch.tensor(0.0))
        loc = a + pyro.param("b", torch.tensor(0.0)) if use_b else a
        pyro.sample("z", dist.Normal(loc, 1.0))

    def model_(use_b):
        model()

    svi = pyro.infer.SVI(model_, guide, pyro_decomp.optim.Adam({"lr": 0.1}), loss=pyro.infer.Trace_ELBO())
    svi.step(True)
    b = pyro.param("b").item()
    svi.step(False)  # b is not used: Adam's momentum must not move it
    assert pyro.param("b").item() == b


@pytest.mark.parametrize(
    "args, error, match",
    [
        ({"lr": -1.0}, ValueError, "lr must be a positive number"),
        ({"gamma": 1.0}, ValueError, r"unknown Adam settings \['gamma'\]"),
        (3, TypeError, "optim_args must be a dict"),
    ],
    ids=["lr", "unknown", "type"],
)
def test_bad_arguments(args, error, match):
    with pytest.raises(error, match=match):
        pyro_decomp.optim.Adam(args)
