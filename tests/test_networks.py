"""Tests for pyro_decomp.models.networks: shapes, batching, scale mapping, parameter counts, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pyro_decomp.models.networks import (
    NETWORKS,
    SCALE_FLOOR,
    BurgessDecoder,
    BurgessEncoder,
    PinwheelDecoder,
    PinwheelEncoder,
    ShapesDecoder,
    ShapesEncoder,
    build_networks,
)

# name -> (obs_shape, default latent_dim, default out_multiplier), from the seed tables.
CASES = {
    "pinwheel": ((2,), 2, 2),  # paper Table 1b
    "shapes": ((1, 64, 64), 10, 1),  # paper Table 1a
    "burgess": ((1, 64, 64), 10, 1),  # thesis Table 5.2
    "celeba": ((3, 64, 64), 50, 1),  # paper Table 1c
    "fashion_mnist": ((1, 32, 32), 50, 1),  # paper v2 Table 1c
}
NAMES = list(CASES)
LEADING = (3, 5)  # [particles, batch]


def _num_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_registry_covers_all_cases():
    assert sorted(NETWORKS) == sorted(CASES)


@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_default_attributes(name):
    obs_shape, latent_dim, out_multiplier = CASES[name]
    encoder, decoder = build_networks(name)
    assert isinstance(encoder, NETWORKS[name][0]) and isinstance(decoder, NETWORKS[name][1])
    assert encoder.latent_dim == decoder.latent_dim == latent_dim
    assert decoder.obs_shape == obs_shape
    assert decoder.out_multiplier == out_multiplier


@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_encoder_output_shape_and_positive_scale(name):
    torch.manual_seed(0)
    obs_shape, latent_dim, _ = CASES[name]
    encoder, _ = build_networks(name)
    loc, scale = encoder(torch.rand(*LEADING, *obs_shape))
    assert loc.shape == scale.shape == (*LEADING, latent_dim)
    assert torch.isfinite(loc).all()
    assert (scale > 0).all()


@pytest.mark.parametrize("out_multiplier", [1, 2], ids=["m1", "m2"])
@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_decoder_output_shape(name, out_multiplier):
    torch.manual_seed(0)
    obs_shape, latent_dim, _ = CASES[name]
    _, decoder = build_networks(name, out_multiplier=out_multiplier)
    out = decoder(torch.randn(*LEADING, latent_dim))
    param_shape = obs_shape if out_multiplier == 1 else (2, *obs_shape)
    assert out.shape == (*LEADING, *param_shape)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_no_leading_dims(name):
    torch.manual_seed(0)
    obs_shape, latent_dim, out_multiplier = CASES[name]
    encoder, decoder = build_networks(name)
    loc, scale = encoder(torch.rand(*obs_shape))
    assert loc.shape == scale.shape == (latent_dim,)
    param_shape = obs_shape if out_multiplier == 1 else (2, *obs_shape)
    assert decoder(loc).shape == param_shape


@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_flattened_leading_dims_match_per_slice_calls(name):
    # eval(): BatchNorm in training mode normalises with batch statistics, which would differ.
    torch.manual_seed(0)
    obs_shape, latent_dim, _ = CASES[name]
    encoder, decoder = (m.eval() for m in build_networks(name))
    x = torch.rand(*LEADING, *obs_shape)
    z = torch.randn(*LEADING, latent_dim)
    with torch.no_grad():
        loc, scale = encoder(x)
        out = decoder(z)
        for i in range(LEADING[0]):
            for j in range(LEADING[1]):
                loc_ij, scale_ij = encoder(x[i, j])
                # float32 with different conv batch sizes: tolerance covers summation-order differences
                torch.testing.assert_close(loc[i, j], loc_ij, rtol=1e-5, atol=1e-5)
                torch.testing.assert_close(scale[i, j], scale_ij, rtol=1e-5, atol=1e-5)
                torch.testing.assert_close(out[i, j], decoder(z[i, j]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_all_parameters_receive_gradients(name):
    torch.manual_seed(0)
    obs_shape, _, _ = CASES[name]
    encoder, decoder = build_networks(name)
    loc, scale = encoder(torch.rand(4, *obs_shape))
    decoder(loc + scale).square().sum().backward()
    for module in (encoder, decoder):
        for pname, p in module.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{type(module).__name__}.{pname}"


def test_burgess_parameter_count_matches_thesis():
    # Thesis Table 5.2 prose: "the model contains 502 005 trainable parameters" (latent_dim = 10).
    # Encoder: convs 1*32*16+32 + 3*(32*32*16+32) = 49_792; FC 512*256+256 = 131_328;
    #          FC 256*256+256 = 65_792; FC 256*20+20 = 5_140                    -> 252_052
    # Decoder: FC 10*256+256 = 2_816; FC 65_792; FC 256*512+512 = 131_584;
    #          upconvs 3*(32*32*16+32) + 32*1*16+1 = 49_761                      -> 249_953
    encoder, decoder = BurgessEncoder(latent_dim=10), BurgessDecoder(latent_dim=10)
    assert _num_params(encoder) == 252_052
    assert _num_params(decoder) == 249_953
    assert _num_params(encoder) + _num_params(decoder) == 502_005


def test_pinwheel_parameter_count():
    # Table 1b: encoder 2*100+100 + 100*4+4 = 704; decoder 2*100+100 + 100*(2*2)+4 = 704.
    assert _num_params(PinwheelEncoder()) == 704
    assert _num_params(PinwheelDecoder()) == 704


def test_shapes_parameter_count():
    # Table 1a encoder: convs 1*32*16+32 = 544, 32*32*16+32 = 16_416, 32*64*16+64 = 32_832,
    # 64*64*16+64 = 65_600; FC 1024*128+128 = 131_200; FC 128*20+20 = 2_580 -> 249_172.
    # Decoder (SPEC §5 upconvs 64, 32, 32, 1): FC 10*128+128 = 1_408; FC 128*1024+1024 = 132_096;
    # upconvs 64*64*16+64 = 65_600, 64*32*16+32 = 32_800, 32*32*16+32 = 16_416, 32*1*16+1 = 513 -> 248_833.
    assert _num_params(ShapesEncoder()) == 249_172
    assert _num_params(ShapesDecoder()) == 248_833
    # the seed table's printed variant (64, 64, 32, 1): 1_408 + 132_096 + 65_600 + 65_600 + 32_800 + 513
    assert _num_params(ShapesDecoder(upconv_channels=(64, 64, 32))) == 298_017


def test_encoder_scale_is_softplus_of_raw_plus_floor():
    # With the last layer's weight zeroed, loc = bias[:L] and scale = softplus(bias[L:]) + 1e-6.
    encoder = PinwheelEncoder(latent_dim=2)
    last = encoder.net[-1]
    raw = torch.tensor([-200.0, 0.3])  # softplus(-200) underflows to 0 in float32: the floor remains
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.cat([torch.tensor([1.5, -2.0]), raw]))
    loc, scale = encoder(torch.randn(7, 2))
    torch.testing.assert_close(loc, torch.tensor([1.5, -2.0]).expand(7, 2))
    torch.testing.assert_close(scale, (F.softplus(raw) + SCALE_FLOOR).expand(7, 2))
    assert SCALE_FLOOR == 1e-6
    assert (scale[:, 0] == SCALE_FLOOR).all() and (scale > 0).all()


def test_decoder_out_multiplier_stacks_mean_then_raw_scale():
    # Pinwheel decoder last layer emits [mean_0, mean_1, raw_0, raw_1]; output[..., 0, :] is the mean.
    decoder = PinwheelDecoder(out_multiplier=2)
    with torch.no_grad():
        decoder.net[-1].weight.zero_()
        decoder.net[-1].bias.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    out = decoder(torch.randn(6, 2))
    torch.testing.assert_close(out[:, 0], torch.tensor([1.0, 2.0]).expand(6, 2))
    torch.testing.assert_close(out[:, 1], torch.tensor([3.0, 4.0]).expand(6, 2))


@pytest.mark.parametrize(
    "name, bad_shape, expected",
    [
        ("pinwheel", (4, 3), r"expected x of shape \[\*batch, 2\], got \[4, 3\]"),
        ("shapes", (4, 64, 64), r"expected x of shape \[\*batch, 1, 64, 64\], got \[4, 64, 64\]"),
        ("burgess", (4, 1, 32, 32), r"expected x of shape \[\*batch, 1, 64, 64\]"),
        ("celeba", (4, 64, 64, 3), r"expected x of shape \[\*batch, 3, 64, 64\]"),
        ("fashion_mnist", (4, 1, 28, 28), r"expected x of shape \[\*batch, 1, 32, 32\]"),
    ],
    ids=NAMES,
)
def test_encoder_rejects_wrong_observation_shape(name, bad_shape, expected):
    encoder, _ = build_networks(name)
    with pytest.raises(ValueError, match=expected):
        encoder(torch.zeros(bad_shape))


@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_decoder_rejects_wrong_latent_dim(name):
    _, latent_dim, _ = CASES[name]
    _, decoder = build_networks(name)
    match = rf"last dimension of z must equal latent_dim={latent_dim}.*got \[3, {latent_dim + 1}\]"
    with pytest.raises(ValueError, match=match):
        decoder(torch.zeros(3, latent_dim + 1))
    with pytest.raises(ValueError, match="last dimension of z"):
        decoder(torch.tensor(0.0))


def test_non_tensor_input_is_a_type_error():
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        PinwheelEncoder()([[0.0, 0.0]])
    with pytest.raises(TypeError, match="z must be a torch.Tensor"):
        PinwheelDecoder()([[0.0, 0.0]])


@pytest.mark.parametrize(
    "factory, match",
    [
        (lambda: ShapesEncoder(latent_dim=0), "latent_dim must be a positive int"),
        (lambda: ShapesDecoder(out_multiplier=3), "out_multiplier must be 1"),
        (lambda: ShapesDecoder(upconv_channels=(64, 32)), "upconv_channels must have 3 entries"),
        (lambda: PinwheelEncoder(hidden_dim=-1), "hidden_dim must be a positive int"),
    ],
    ids=["latent_dim", "out_multiplier", "upconv_channels", "hidden_dim"],
)
def test_constructor_validation(factory, match):
    with pytest.raises(ValueError, match=match):
        factory()


def test_latent_dim_must_be_int():
    with pytest.raises(TypeError, match="latent_dim must be a positive int"):
        BurgessEncoder(latent_dim=10.0)


def test_build_networks_routes_options():
    encoder, decoder = build_networks("pinwheel", latent_dim=3, hidden_dim=7, out_multiplier=1)
    assert encoder.latent_dim == decoder.latent_dim == 3
    assert encoder.net[0].out_features == decoder.net[0].out_features == 7
    assert decoder.out_multiplier == 1
    _, shapes_decoder = build_networks("shapes", upconv_channels=(64, 64, 32))
    assert shapes_decoder(torch.zeros(2, 10)).shape == (2, 1, 64, 64)


def test_build_networks_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown network name 'mnist'.*burgess.*pinwheel"):
        build_networks("mnist")


def test_build_networks_rejects_unknown_option():
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['hiden_dim'\].*valid options"):
        build_networks("pinwheel", hiden_dim=50)
