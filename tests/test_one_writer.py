"""One implementation each: the seeded RNG block, the run's posterior netCDF (the ArviZ converter)."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
import torch

from pyro_decomp.analysis import load_inference_data, to_inference_data
from pyro_decomp.models import VAE, GaussianLikelihood, GaussianMixturePrior
from pyro_decomp.models.networks import PinwheelDecoder, PinwheelEncoder
from pyro_decomp.runner import write_posterior_netcdf
from pyro_decomp.train import seeded_torch_rng


def test_seeded_torch_rng_draws_from_the_seed_and_restores_the_callers_stream():
    torch.manual_seed(5)
    expected = torch.randn(4)
    torch.manual_seed(1)
    seeded = torch.randn(3)
    torch.manual_seed(5)
    with seeded_torch_rng(1):
        inner = torch.randn(3)
    assert torch.equal(inner, seeded)
    assert torch.equal(torch.randn(4), expected)  # the caller's stream continues as if nothing happened
    torch.manual_seed(5)
    with seeded_torch_rng(None):  # no seed: the block runs on the caller's stream
        inner = torch.randn(4)
    assert torch.equal(inner, expected)


@pytest.mark.cuda
def test_seeded_torch_rng_restores_the_cuda_stream_too():
    # torch.manual_seed also reseeds every CUDA generator; the old hand-written CPU-only save/restore left
    # the CUDA stream reseeded after an evaluation
    torch.cuda.manual_seed_all(5)
    expected = torch.randn(4, device="cuda")
    torch.cuda.manual_seed_all(5)
    with seeded_torch_rng(1):
        torch.randn(3)
    assert torch.equal(torch.randn(4, device="cuda"), expected)


def _vae():
    torch.manual_seed(0)
    return VAE(GaussianMixturePrior(), PinwheelDecoder(), GaussianLikelihood(), PinwheelEncoder())


def test_run_netcdf_is_the_arviz_converter_plus_run_data(tmp_path):
    vae = _vae()
    x = torch.randn(6, 2)
    loc, scale = vae.encode(x)
    labels = torch.arange(6) % 3
    old_umask = os.umask(0o022)
    try:
        path = write_posterior_netcdf(
            tmp_path / "posterior.nc", vae, x, draws=7, seed=3,
            constant_data={"z_loc": (("obs", "latent"), loc.detach()), "z_scale": (("obs", "latent"), scale.detach()),
                           "label": (("obs",), labels)},
            attrs={"experiment": "t", "alpha": 1.5, "seed": np.int64(2)},
        )  # fmt: skip
    finally:
        os.umask(old_umask)
    # the mode follows the umask like the run's other files (mkstemp made it 0600, unreadable to the group)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    idata = load_inference_data(path)
    reference = to_inference_data(vae, x, num_draws=7, random_seed=3)
    assert set(reference.groups()) <= set(idata.groups())
    assert idata.posterior["z"].dims == ("chain", "draw", "obs", "latent") and idata.posterior["z"].shape == (1, 7, 6, 2)
    # the same converter at the same seed: the same draws, bit for bit
    np.testing.assert_array_equal(idata.posterior["z"].values, reference.posterior["z"].values)
    np.testing.assert_array_equal(idata.prior["z"].values, reference.prior["z"].values)
    assert idata.constant_data["z_loc"].dims == ("obs", "latent")
    np.testing.assert_allclose(idata.constant_data["z_scale"].values, scale.detach().numpy(), rtol=1e-6)
    np.testing.assert_array_equal(idata.constant_data["label"].values, labels.numpy())
    assert "prior_means" in idata.constant_data  # the prior's parameters, from the converter
    for group in idata.groups():
        attrs = getattr(idata, group).attrs
        assert attrs["experiment"] == "t" and attrs["alpha"] == 1.5 and attrs["seed"] == 2, group
