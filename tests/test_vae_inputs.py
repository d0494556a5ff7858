"""Data of any common dtype or shape through the Python API: converted where lossless, else one clear error."""

from __future__ import annotations

import numpy as np
import pyro
import pytest
import torch

import pyro_decomp
from pyro_decomp.models import BernoulliLikelihood, GaussianLikelihood, IsotropicGaussianPrior
from pyro_decomp.models.likelihoods import DataError, as_observations
from pyro_decomp.models.networks import build_networks


def _pinwheel_vae():
    torch.manual_seed(0)
    encoder, decoder = build_networks("pinwheel", latent_dim=2)
    return pyro_decomp.VAE(pyro_decomp.GaussianMixturePrior(), decoder, GaussianLikelihood(), encoder)


def _image_vae():
    torch.manual_seed(0)
    encoder, decoder = build_networks("burgess", latent_dim=3)
    return pyro_decomp.VAE(IsotropicGaussianPrior(3), decoder, BernoulliLikelihood(event_dim=3), encoder)


def _loss(vae, x):
    torch.manual_seed(1)  # the same latent draws for every call
    return pyro_decomp.DecompositionELBO(beta=1.0).loss_terms(vae.model, vae.guide, x)["loss"]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16, torch.uint8, torch.bool, torch.int64])
def test_pinwheel_data_of_any_lossless_dtype_gives_the_float32_loss(dtype):
    vae = _pinwheel_vae()
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
    if dtype in (torch.uint8, torch.bool, torch.int64):
        x = (x > 0).to(dtype)  # binary integers convert exactly
    else:
        x = x.to(dtype)
    # the loss on x equals the loss on x cast to float32 by hand (the cast is the conversion)
    assert _loss(vae, x) == _loss(vae, x.to(torch.float32))
    loc, _ = vae.encode(x)
    assert loc.dtype == torch.float32 and vae.reconstruct(x).dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.uint8, torch.bool])
def test_binary_image_data_in_dsprites_format(dtype):
    vae = _image_vae()
    x = (torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(0)) < 0.1).to(dtype)
    assert _loss(vae, x) == _loss(vae, x.float())


def test_a_float64_network_takes_float32_data():
    vae = _pinwheel_vae().double()
    x = torch.randn(8, 2)
    assert vae.encode(x)[0].dtype == torch.float64
    assert _loss(vae, x) == _loss(vae, x.double())


@pytest.mark.parametrize(
    "x, error, match",
    [
        (torch.full((2, 1, 64, 64), 255, dtype=torch.uint8), TypeError, r"integer dtype torch.uint8 with values up to 255; .*x.float\(\) / 255"),
        (torch.zeros(2, 1, 64, 64, dtype=torch.complex64), TypeError, "complex dtype"),
        (np.zeros((2, 1, 64, 64), dtype=np.float32), TypeError, r"must be a torch.Tensor, got ndarray; convert with torch.as_tensor"),
        (torch.zeros(2, 64, 64), DataError, r"x has shape \[2, 64, 64\] but BurgessEncoder takes \[batch, 1, 64, 64\]; add the channel axis: x.unsqueeze\(1\)"),
        (torch.zeros(1, 64, 64), DataError, r"add the batch axis: x.unsqueeze\(0\)"),
        (torch.zeros(2, 1, 32, 32), DataError, r"takes \[batch, 1, 64, 64\]; resize or reshape the data"),
        (torch.zeros(2, 4096), DataError, r"reshape it: x.reshape\(-1, 1, 64, 64\)"),
        (torch.zeros(0, 1, 64, 64), DataError, r"at least one data point on axis 0, got shape \[0, 1, 64, 64\]"),
        (torch.full((2, 1, 64, 64), float("nan")), DataError, r"NaN or infinite values \(8192 of 8192\)"),
        (torch.full((2, 1, 64, 64), 0.5), DataError, r"needs binary data in \{0, 1\}"),
    ],
    ids=["uint8-255", "complex", "numpy", "no-channel", "one-image", "wrong-size", "flat", "empty", "nan", "non-binary"],
)  # fmt: skip
def test_bad_image_data_is_one_line(x, error, match):
    vae = _image_vae()
    with pytest.raises(error, match=match) as info:
        _loss(vae, x)
    # Pyro appends the trace's shape table to a ValueError raised inside a model; ours stay one line
    assert "\n" not in str(info.value) and "Trace Shapes" not in str(info.value)


def test_pinwheel_shape_errors_name_the_fix():
    vae = _pinwheel_vae()
    with pytest.raises(DataError, match=r"x has shape \[2\] but PinwheelEncoder takes \[batch, 2\]; add the batch axis"):
        _loss(vae, torch.zeros(2))
    with pytest.raises(DataError, match=r"x has shape \[8, 3\] but PinwheelEncoder takes \[batch, 2\]"):
        vae.encode(torch.zeros(8, 3))
    with pytest.raises(DataError, match="NaN or infinite values"):
        pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), loss=pyro_decomp.DecompositionELBO()).step(
            torch.tensor([[0.0, float("nan")]])
        )


def test_likelihood_observes_integer_and_bool_data_as_floats():
    logits = torch.randn(3, 4)
    x = torch.tensor([[0, 1, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0]], dtype=torch.uint8)
    tr = pyro.poutine.trace(lambda: BernoulliLikelihood(1)(logits, obs=x)).get_trace()
    expected = BernoulliLikelihood(1).distribution(logits).log_prob(x.float())
    torch.testing.assert_close(tr.nodes["x"]["fn"].log_prob(tr.nodes["x"]["value"]), expected)
    assert as_observations(x.bool(), torch.float32).dtype == torch.float32
    assert as_observations(x, torch.float64).dtype == torch.float64
    with pytest.raises(TypeError, match="values up to 7"):
        as_observations(torch.tensor([0, 7]), torch.float32)


def test_data_on_another_device_is_named():
    vae = _pinwheel_vae()
    with pytest.raises(DataError, match=r"x is on meta but the networks are on cpu; move the data once.*x.to\('cpu'\)"):
        vae.encode(torch.zeros(4, 2, device="meta"))
