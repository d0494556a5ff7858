"""Encoder and decoder networks from the seed architecture tables.

Every encoder maps observations ``x: [*batch, *obs_shape]`` to the parameters of a diagonal Gaussian
posterior ``(loc, scale)``, both ``[*batch, latent_dim]``.  Its last layer emits ``2 * latent_dim``
numbers; the first half is ``loc`` and the second half a raw value mapped to a positive scale by

.. math::

    \\sigma = \\operatorname{softplus}(r) + 10^{-6},

where the floor keeps the scale strictly positive in floating point when ``r`` is very negative.

Every decoder maps latents ``z: [*batch, latent_dim]`` to likelihood parameters.  With
``out_multiplier=1`` (one-parameter likelihoods: Bernoulli logits, or the mean of a Laplace/Gaussian
with fixed scale) the output is ``[*batch, *obs_shape]``.  With ``out_multiplier=2`` the output is
``[*batch, 2, *obs_shape]``: index 0 of the new axis is the mean and index 1 a raw (unconstrained)
scale that the likelihood maps to a positive value.

Leading batch dimensions are arbitrary (none, ``[batch]``, ``[particles, batch]``, ...): they are
flattened into one batch dimension for the network and restored on the output.  Networks that use
``BatchNorm2d`` (CelebA, Fashion-MNIST) compute batch statistics over all flattened leading dimensions in
training mode, so slice-by-slice calls only agree with one batched call in ``eval()`` mode.

Seeds: "paper" is seed 001 (Table 1a/1b/1c, appendix B), "paper v2" is seed 004 (its Table 1c is the
Fashion-MNIST network), "thesis" is seed 003 (Table 5.2).

>>> import torch
>>> encoder, decoder = build_networks("shapes")
>>> loc, scale = encoder(torch.rand(3, 5, 1, 64, 64))
>>> loc.shape, decoder(loc).shape
(torch.Size([3, 5, 10]), torch.Size([3, 5, 1, 64, 64]))
"""

from __future__ import annotations

import inspect
import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "BurgessDecoder",
    "BurgessEncoder",
    "CelebADecoder",
    "CelebAEncoder",
    "FashionMNISTDecoder",
    "FashionMNISTEncoder",
    "NETWORKS",
    "PinwheelDecoder",
    "PinwheelEncoder",
    "ShapesDecoder",
    "ShapesEncoder",
    "build_networks",
]

# Added to softplus(raw) so the encoder scale stays > 0 even when softplus underflows to 0.
SCALE_FLOOR = 1e-6


def _check_positive_int(name: str, value: object) -> int:
    """Return ``value`` if it is a positive ``int``, else raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a positive int, got {type(value).__name__} {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value}")
    return value


def _check_out_multiplier(value: object) -> int:
    """Return ``value`` if it is 1 or 2, else raise."""
    if isinstance(value, bool) or not isinstance(value, int) or value not in (1, 2):
        raise ValueError(
            f"out_multiplier must be 1 (one likelihood parameter, e.g. Bernoulli logits or a mean with "
            f"fixed scale) or 2 (mean and raw scale), got {value!r}"
        )
    return value


def _shape_str(shape: tuple[int, ...] | torch.Size) -> str:
    """Format a shape as ``[a, b, c]``."""
    return "[" + ", ".join(str(s) for s in shape) + "]"


def _flatten_leading(
    tensor: object, event_shape: tuple[int, ...], name: str, owner: str
) -> tuple[torch.Tensor, torch.Size]:
    """Check ``tensor`` is ``[*batch, *event_shape]``; return it as ``[prod(batch), *event_shape]``."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{owner}: {name} must be a torch.Tensor, got {type(tensor).__name__}")
    n_event = len(event_shape)
    if tensor.dim() < n_event or tuple(tensor.shape[tensor.dim() - n_event :]) != event_shape:
        raise ValueError(
            f"{owner}: expected {name} of shape [*batch, {_shape_str(event_shape)[1:-1]}], "
            f"got {_shape_str(tensor.shape)}"
        )
    batch_shape = tensor.shape[: tensor.dim() - n_event]
    return tensor.reshape(math.prod(batch_shape), *event_shape), batch_shape


class _Encoder(nn.Module):
    """Shared flatten / split / softplus logic; subclasses set ``self.net``: ``[N, *obs] -> [N, 2L]``."""

    net: nn.Module

    def __init__(self, obs_shape: tuple[int, ...], latent_dim: int) -> None:
        super().__init__()
        self.obs_shape = tuple(obs_shape)
        self.latent_dim = _check_positive_int("latent_dim", latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode ``x: [*batch, *obs_shape]`` to ``(loc, scale)``, each ``[*batch, latent_dim]``."""
        flat, batch_shape = _flatten_leading(x, self.obs_shape, "x", type(self).__name__)
        params = self.net(flat).reshape(flat.shape[0], 2 * self.latent_dim)
        loc, raw_scale = params.split(self.latent_dim, dim=-1)
        scale = F.softplus(raw_scale) + SCALE_FLOOR
        out_shape = (*batch_shape, self.latent_dim)
        return loc.reshape(out_shape), scale.reshape(out_shape)


class _Decoder(nn.Module):
    """Shared flatten / restore logic; subclasses set ``self.net``: ``[N, L] -> [N, m * prod(obs)]``-sized."""

    net: nn.Module

    def __init__(self, obs_shape: tuple[int, ...], latent_dim: int, out_multiplier: int) -> None:
        super().__init__()
        self.obs_shape = tuple(obs_shape)
        self.latent_dim = _check_positive_int("latent_dim", latent_dim)
        self.out_multiplier = _check_out_multiplier(out_multiplier)

    @property
    def param_shape(self) -> tuple[int, ...]:
        """Per-sample output shape: ``obs_shape``, or ``(2, *obs_shape)`` when ``out_multiplier == 2``."""
        return self.obs_shape if self.out_multiplier == 1 else (2, *self.obs_shape)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Decode ``z: [*batch, latent_dim]`` to ``[*batch, *param_shape]``."""
        if isinstance(z, torch.Tensor) and (z.dim() == 0 or z.shape[-1] != self.latent_dim):
            raise ValueError(
                f"{type(self).__name__}: the last dimension of z must equal latent_dim={self.latent_dim}; "
                f"expected z of shape [*batch, {self.latent_dim}], got {_shape_str(z.shape)}"
            )
        flat, batch_shape = _flatten_leading(z, (self.latent_dim,), "z", type(self).__name__)
        # The last layer emits out_multiplier * C channels; the first C are the mean, the rest raw scales.
        return self.net(flat).reshape(*batch_shape, *self.param_shape)


class _Unflatten(nn.Module):
    """Reshape ``[N, prod(shape)]`` to ``[N, *shape]``."""

    def __init__(self, *shape: int) -> None:
        super().__init__()
        self.shape = shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.shape)


# --------------------------------------------------------------------------------------------------
# Pinwheel (paper Table 1b)
# --------------------------------------------------------------------------------------------------


class PinwheelEncoder(_Encoder):
    """MLP encoder for the pinwheel data (paper Table 1b).

    Layers (shapes per sample): ``x: [2]`` → FC 100 & ReLU → FC ``2 * latent_dim`` → split into
    ``loc`` and ``scale = softplus(raw) + 1e-6``, each ``[latent_dim]``.

    :param latent_dim: latent dimension (paper: 2).
    :param obs_dim: observation dimension (paper: 2).
    :param hidden_dim: hidden width (paper: 100).

    >>> import torch
    >>> loc, scale = PinwheelEncoder()(torch.zeros(400, 2))
    >>> loc.shape
    torch.Size([400, 2])
    """

    def __init__(self, latent_dim: int = 2, obs_dim: int = 2, hidden_dim: int = 100) -> None:
        super().__init__((_check_positive_int("obs_dim", obs_dim),), latent_dim)
        _check_positive_int("hidden_dim", hidden_dim)
        self.net = nn.Sequential(
            nn.Linear(obs_dim, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, 2 * self.latent_dim),
        )


class PinwheelDecoder(_Decoder):
    """MLP decoder for the pinwheel data (paper Table 1b).

    Layers (shapes per sample): ``z: [latent_dim]`` → FC 100 & ReLU → FC ``out_multiplier * 2``.
    The table's final "FC. 2x2" is the mean and scale of a Gaussian likelihood over ``x: [2]``, hence
    ``out_multiplier=2`` by default and output ``[*batch, 2, 2]`` (``[..., 0, :]`` mean,
    ``[..., 1, :]`` raw scale).

    :param latent_dim: latent dimension (paper: 2).
    :param obs_dim: observation dimension (paper: 2).
    :param hidden_dim: hidden width (paper: 100).
    :param out_multiplier: 2 for mean and raw scale (paper), 1 for the mean only.

    >>> import torch
    >>> PinwheelDecoder()(torch.zeros(10, 400, 2)).shape
    torch.Size([10, 400, 2, 2])
    """

    def __init__(
        self, latent_dim: int = 2, obs_dim: int = 2, hidden_dim: int = 100, out_multiplier: int = 2
    ) -> None:
        super().__init__((_check_positive_int("obs_dim", obs_dim),), latent_dim, out_multiplier)
        _check_positive_int("hidden_dim", hidden_dim)
        self.net = nn.Sequential(
            nn.Linear(self.latent_dim, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, self.out_multiplier * obs_dim),
        )


# --------------------------------------------------------------------------------------------------
# 2D shapes (paper Table 1a)
# --------------------------------------------------------------------------------------------------


class ShapesEncoder(_Encoder):
    """Convolutional encoder for 2D shapes / dSprites, 64×64×1 (paper Table 1a).

    All convolutions are 4×4, stride 2, padding 1 (the table omits the padding; 1 is the value that
    halves the resolution exactly, 64 → 32 → 16 → 8 → 4):

    ========================================  ===================
    layer                                     output per sample
    ========================================  ===================
    input                                     ``[1, 64, 64]``
    4×4 conv 32, stride 2 & ReLU              ``[32, 32, 32]``
    4×4 conv 32, stride 2 & ReLU              ``[32, 16, 16]``
    4×4 conv 64, stride 2 & ReLU              ``[64, 8, 8]``
    4×4 conv 64, stride 2 & ReLU              ``[64, 4, 4]``
    flatten, FC 128 & ReLU                    ``[128]``
    FC 2 × latent_dim                         ``[2 * latent_dim]``
    ========================================  ===================

    The table prints "FC. 128" without an activation; a ReLU is used, as between every other hidden
    layer of the table (two stacked affine maps without a non-linearity would collapse into one).

    :param latent_dim: latent dimension (paper: 10).
    """

    def __init__(self, latent_dim: int = 10) -> None:
        super().__init__((1, 64, 64), latent_dim)
        self.net = nn.Sequential(
            nn.Conv2d(1, 32, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 32, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(64, 64, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(64 * 4 * 4, 128),
            nn.ReLU(),
            nn.Linear(128, 2 * self.latent_dim),
        )


class ShapesDecoder(_Decoder):
    """Transposed-convolutional decoder for 2D shapes / dSprites, 64×64×1 (paper Table 1a).

    Outputs Bernoulli logits (no final sigmoid).  All transposed convolutions are 4×4, stride 2,
    padding 1 (4 → 8 → 16 → 32 → 64):

    ==========================================  ===================================
    layer                                       output per sample
    ==========================================  ===================================
    input                                       ``[latent_dim]``
    FC 128 & ReLU                               ``[128]``
    FC 4·4·64 & ReLU, reshape                   ``[64, 4, 4]``
    4×4 upconv ``upconv_channels[0]`` & ReLU    ``[64, 8, 8]``
    4×4 upconv ``upconv_channels[1]`` & ReLU    ``[32, 16, 16]``
    4×4 upconv ``upconv_channels[2]`` & ReLU    ``[32, 32, 32]``
    4×4 upconv ``out_multiplier``               ``[out_multiplier, 64, 64]``
    ==========================================  ===================================

    The default ``upconv_channels=(64, 32, 32)`` follows SPEC §5 ("upconv 64,32,32,1"), which records
    the project's decision; Table 1a as printed in both seed versions (001 and 004) reads 64, 64, 32:
    pass ``upconv_channels=(64, 64, 32)`` for that variant.

    :param latent_dim: latent dimension (paper: 10).
    :param out_multiplier: 1 for Bernoulli logits (paper), 2 for mean and raw scale.
    :param upconv_channels: output channels of the three hidden transposed convolutions.
    """

    def __init__(
        self,
        latent_dim: int = 10,
        out_multiplier: int = 1,
        upconv_channels: tuple[int, int, int] = (64, 32, 32),
    ) -> None:
        super().__init__((1, 64, 64), latent_dim, out_multiplier)
        channels = tuple(upconv_channels)
        if len(channels) != 3:
            raise ValueError(f"upconv_channels must have 3 entries, got {upconv_channels!r}")
        for i, c in enumerate(channels):
            _check_positive_int(f"upconv_channels[{i}]", c)
        c1, c2, c3 = channels
        self.net = nn.Sequential(
            nn.Linear(self.latent_dim, 128),
            nn.ReLU(),
            nn.Linear(128, 4 * 4 * 64),
            nn.ReLU(),
            _Unflatten(64, 4, 4),
            nn.ConvTranspose2d(64, c1, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(c1, c2, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(c2, c3, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(c3, self.out_multiplier, 4, stride=2, padding=1),
        )


# --------------------------------------------------------------------------------------------------
# Burgess ConvVAE (thesis Table 5.2)
# --------------------------------------------------------------------------------------------------

# Hidden widths derived below (see BurgessEncoder docstring): 32 conv channels, 256 hidden units.
_BURGESS_CHANNELS = 32
_BURGESS_HIDDEN = 256
_BURGESS_FLAT = _BURGESS_CHANNELS * 4 * 4  # 512: 32 channels at 4×4 after four stride-2 convs


class BurgessEncoder(_Encoder):
    """Burgess et al. (2018) convolutional encoder, 64×64×1 (thesis Table 5.2).

    ====================================  ===================
    layer                                 output per sample
    ====================================  ===================
    input                                 ``[1, 64, 64]``
    4×4 conv 32, stride 2, pad 1 & ReLU   ``[32, 32, 32]``
    4×4 conv 32, stride 2, pad 1 & ReLU   ``[32, 16, 16]``
    4×4 conv 32, stride 2, pad 1 & ReLU   ``[32, 8, 8]``
    4×4 conv 32, stride 2, pad 1 & ReLU   ``[32, 4, 4]``
    flatten                               ``[512]``
    FC 512 → 256 & ReLU                   ``[256]``
    FC 256 → 256 & ReLU                   ``[256]``
    FC 256 → 2 × latent_dim (linear)      ``[2 * latent_dim]``
    ====================================  ===================

    **How the table was read.**  The extracted Table 5.2 lists the encoder's fully connected layers as
    "512 ReLU, 256 ReLU, 20 ReLU" and the decoder's as "10 ReLU, 256 ReLU, 512 ReLU", and the thesis
    states the encoder+decoder have **502,005** trainable parameters.  Reading the numbers as output
    widths (512→512→256→20 and 10→10→256→512) gives 633,187 parameters, so that reading is wrong.
    The numbers are the *sizes* along the chain, with the repeated hidden width printed once:
    512 is the flattened conv output 32·4·4, 256 the hidden width (used twice), 20 = 2 × 10 the
    output; in the decoder 10 is the latent input and 512 the width reshaped to ``[32, 4, 4]``.
    This is the Burgess et al. (2018) architecture, and the count is exact (latent_dim = 10):

    * encoder convs: 1·32·16+32 = 544, plus 3 × (32·32·16+32) = 3 × 16,416 → 49,792;
      FC 512·256+256 = 131,328; FC 256·256+256 = 65,792; FC 256·20+20 = 5,140 → **252,052**;
    * decoder FC 10·256+256 = 2,816; FC 65,792; FC 256·512+512 = 131,584; upconvs
      3 × 16,416 + (32·1·16+1) = 49,761 → **249,953**;
    * total 252,052 + 249,953 = **502,005**.

    The table drops the ReLU after the fourth conv and puts one after the last FC layer; the prose
    ("each step used ReLU") and SPEC §5 ("the last encoder layer is linear") fix both: ReLU after
    every conv, none after the output layer.  Activations do not change the count.

    :param latent_dim: latent dimension (thesis: 10).
    """

    def __init__(self, latent_dim: int = 10) -> None:
        super().__init__((1, 64, 64), latent_dim)
        c, h = _BURGESS_CHANNELS, _BURGESS_HIDDEN
        self.net = nn.Sequential(
            nn.Conv2d(1, c, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(c, c, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(c, c, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(c, c, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(_BURGESS_FLAT, h),
            nn.ReLU(),
            nn.Linear(h, h),
            nn.ReLU(),
            nn.Linear(h, 2 * self.latent_dim),
        )


class BurgessDecoder(_Decoder):
    """Burgess et al. (2018) transposed-convolutional decoder, 64×64×1 (thesis Table 5.2).

    Outputs Bernoulli logits: the table's final sigmoid is left to the likelihood, which is
    numerically safer.  See :class:`BurgessEncoder` for how the table was read and the parameter
    count (502,005 for encoder + decoder with ``latent_dim=10`` and ``out_multiplier=1``).

    ===========================================  ===================================
    layer                                        output per sample
    ===========================================  ===================================
    input                                        ``[latent_dim]``
    FC latent_dim → 256 & ReLU                   ``[256]``
    FC 256 → 256 & ReLU                          ``[256]``
    FC 256 → 512 & ReLU, reshape                 ``[32, 4, 4]``
    4×4 upconv 32, stride 2, pad 1 & ReLU        ``[32, 8, 8]``
    4×4 upconv 32, stride 2, pad 1 & ReLU        ``[32, 16, 16]``
    4×4 upconv 32, stride 2, pad 1 & ReLU        ``[32, 32, 32]``
    4×4 upconv out_multiplier, stride 2, pad 1   ``[out_multiplier, 64, 64]``
    ===========================================  ===================================

    :param latent_dim: latent dimension (thesis: 10).
    :param out_multiplier: 1 for Bernoulli logits (thesis), 2 for mean and raw scale.
    """

    def __init__(self, latent_dim: int = 10, out_multiplier: int = 1) -> None:
        super().__init__((1, 64, 64), latent_dim, out_multiplier)
        c, h = _BURGESS_CHANNELS, _BURGESS_HIDDEN
        self.net = nn.Sequential(
            nn.Linear(self.latent_dim, h),
            nn.ReLU(),
            nn.Linear(h, h),
            nn.ReLU(),
            nn.Linear(h, _BURGESS_FLAT),
            nn.ReLU(),
            _Unflatten(c, 4, 4),
            nn.ConvTranspose2d(c, c, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(c, c, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(c, c, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(c, self.out_multiplier, 4, stride=2, padding=1),
        )


# --------------------------------------------------------------------------------------------------
# DCGAN-style networks: CelebA (paper Table 1c) and Fashion-MNIST (paper v2 Table 1c)
# --------------------------------------------------------------------------------------------------


def _dcgan_down(c_in: int, c_out: int) -> list[nn.Module]:
    """4×4 stride-2 conv halving the resolution, BatchNorm2d, LeakyReLU(0.2)."""
    # No conv bias: BatchNorm's shift makes it redundant (as in DCGAN).
    return [
        nn.Conv2d(c_in, c_out, 4, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.LeakyReLU(0.2),
    ]


def _dcgan_up(c_in: int, c_out: int, stride: int, padding: int) -> list[nn.Module]:
    """4×4 transposed conv, BatchNorm2d, ReLU."""
    return [
        nn.ConvTranspose2d(c_in, c_out, 4, stride=stride, padding=padding, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
    ]


class CelebAEncoder(_Encoder):
    """DCGAN encoder for CelebA, 64×64×3 (paper Table 1c).

    ===================================================  ======================
    layer                                                output per sample
    ===================================================  ======================
    input                                                ``[3, 64, 64]``
    4×4 conv 32, stride 2, pad 1 & BatchNorm & LReLU     ``[32, 32, 32]``
    4×4 conv 64, stride 2, pad 1 & BatchNorm & LReLU     ``[64, 16, 16]``
    4×4 conv 128, stride 2, pad 1 & BatchNorm & LReLU    ``[128, 8, 8]``
    4×4 conv 256, stride 2, pad 1 & BatchNorm & LReLU    ``[256, 4, 4]``
    4×4 conv 2 × latent_dim, stride 1, pad 0             ``[2 * latent_dim, 1, 1]``
    ===================================================  ======================

    LReLU is LeakyReLU(0.2).  The table's two parallel heads "4x4 conv. 50, 4x4 conv. 50" (mean and
    scale) are one conv with ``2 * latent_dim`` output channels: the same function and parameter count.
    The table gives no padding; pad 1 halves the resolution exactly and the last 4×4 conv on the 4×4
    map (pad 0) yields 1×1.  Convs followed by BatchNorm have no bias (BatchNorm's shift subsumes it).

    :param latent_dim: latent dimension (paper: 50).
    """

    def __init__(self, latent_dim: int = 50) -> None:
        super().__init__((3, 64, 64), latent_dim)
        self.net = nn.Sequential(
            *_dcgan_down(3, 32),
            *_dcgan_down(32, 64),
            *_dcgan_down(64, 128),
            *_dcgan_down(128, 256),
            nn.Conv2d(256, 2 * self.latent_dim, 4, stride=1, padding=0),
            nn.Flatten(),
        )


class CelebADecoder(_Decoder):
    """DCGAN decoder for CelebA, 64×64×3 (paper Table 1c).

    Outputs pixel means ``[*batch, 3, 64, 64]`` (or ``[*batch, 2, 3, 64, 64]`` with
    ``out_multiplier=2``); no output activation.

    ======================================================  ==============================
    layer                                                   output per sample
    ======================================================  ==============================
    input, reshape                                          ``[latent_dim, 1, 1]``
    4×4 upconv 256, stride 1, pad 0 & BatchNorm & ReLU      ``[256, 4, 4]``
    4×4 upconv 128, stride 2, pad 1 & BatchNorm & ReLU      ``[128, 8, 8]``
    4×4 upconv 64, stride 2, pad 1 & BatchNorm & ReLU       ``[64, 16, 16]``
    4×4 upconv 32, stride 2, pad 1 & BatchNorm & ReLU       ``[32, 32, 32]``
    4×4 upconv 3 · out_multiplier, stride 2, pad 1          ``[3 * out_multiplier, 64, 64]``
    ======================================================  ==============================

    Paddings are not printed in Table 1c of seed 001; they are the ones seed 004 prints for the
    same design and the only ones that reach 64×64.

    :param latent_dim: latent dimension (paper: 50).
    :param out_multiplier: 1 for means (paper), 2 for mean and raw scale.
    """

    def __init__(self, latent_dim: int = 50, out_multiplier: int = 1) -> None:
        super().__init__((3, 64, 64), latent_dim, out_multiplier)
        self.net = nn.Sequential(
            _Unflatten(self.latent_dim, 1, 1),
            *_dcgan_up(self.latent_dim, 256, stride=1, padding=0),
            *_dcgan_up(256, 128, stride=2, padding=1),
            *_dcgan_up(128, 64, stride=2, padding=1),
            *_dcgan_up(64, 32, stride=2, padding=1),
            nn.ConvTranspose2d(32, 3 * self.out_multiplier, 4, stride=2, padding=1),
        )


class FashionMNISTEncoder(_Encoder):
    """DCGAN-style encoder for Fashion-MNIST padded to 32×32×1 (paper v2, seed 004 Table 1c).

    ===================================================  ======================
    layer                                                output per sample
    ===================================================  ======================
    input                                                ``[1, 32, 32]``
    4×4 conv 32, stride 2, pad 1 & BatchNorm & LReLU     ``[32, 16, 16]``
    4×4 conv 64, stride 2, pad 1 & BatchNorm & LReLU     ``[64, 8, 8]``
    4×4 conv 128, stride 2, pad 1 & BatchNorm & LReLU    ``[128, 4, 4]``
    4×4 conv 2 × latent_dim, stride 1, pad 0             ``[2 * latent_dim, 1, 1]``
    ===================================================  ======================

    LReLU is LeakyReLU(0.2); the two 50-channel heads of the table are one conv with
    ``2 * latent_dim`` channels, as in :class:`CelebAEncoder`.

    :param latent_dim: latent dimension (paper: 50).
    """

    def __init__(self, latent_dim: int = 50) -> None:
        super().__init__((1, 32, 32), latent_dim)
        self.net = nn.Sequential(
            *_dcgan_down(1, 32),
            *_dcgan_down(32, 64),
            *_dcgan_down(64, 128),
            nn.Conv2d(128, 2 * self.latent_dim, 4, stride=1, padding=0),
            nn.Flatten(),
        )


class FashionMNISTDecoder(_Decoder):
    """DCGAN-style decoder for Fashion-MNIST, 32×32×1 (paper v2, seed 004 Table 1c).

    Outputs the means ``[*batch, 1, 32, 32]`` of a Laplace likelihood whose fixed scale (0.1, seed 004
    appendix B) lives in the likelihood, not here; no output activation.

    =====================================================  ==============================
    layer                                                  output per sample
    =====================================================  ==============================
    input, reshape                                         ``[latent_dim, 1, 1]``
    4×4 upconv 128, stride 1, pad 0 & BatchNorm & ReLU     ``[128, 4, 4]``
    4×4 upconv 64, stride 2, pad 1 & BatchNorm & ReLU      ``[64, 8, 8]``
    4×4 upconv 32, stride 2, pad 1 & BatchNorm & ReLU      ``[32, 16, 16]``
    4×4 upconv out_multiplier, stride 2, pad 1             ``[out_multiplier, 32, 32]``
    =====================================================  ==============================

    :param latent_dim: latent dimension (paper: 50).
    :param out_multiplier: 1 for Laplace means (paper), 2 for mean and raw scale.
    """

    def __init__(self, latent_dim: int = 50, out_multiplier: int = 1) -> None:
        super().__init__((1, 32, 32), latent_dim, out_multiplier)
        self.net = nn.Sequential(
            _Unflatten(self.latent_dim, 1, 1),
            *_dcgan_up(self.latent_dim, 128, stride=1, padding=0),
            *_dcgan_up(128, 64, stride=2, padding=1),
            *_dcgan_up(64, 32, stride=2, padding=1),
            nn.ConvTranspose2d(32, self.out_multiplier, 4, stride=2, padding=1),
        )


# --------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------

NETWORKS: dict[str, tuple[type[nn.Module], type[nn.Module]]] = {
    "pinwheel": (PinwheelEncoder, PinwheelDecoder),
    "shapes": (ShapesEncoder, ShapesDecoder),
    "burgess": (BurgessEncoder, BurgessDecoder),
    "celeba": (CelebAEncoder, CelebADecoder),
    "fashion_mnist": (FashionMNISTEncoder, FashionMNISTDecoder),
}


def _init_params(cls: type[nn.Module]) -> set[str]:
    """Names of the keyword arguments ``cls.__init__`` accepts."""
    return {n for n in inspect.signature(cls.__init__).parameters if n != "self"}


def build_networks(name: str, latent_dim: int | None = None, **kw: object) -> tuple[nn.Module, nn.Module]:
    """Build the ``(encoder, decoder)`` pair registered under ``name`` in :data:`NETWORKS`.

    Each keyword in ``kw`` goes to every constructor that accepts it (e.g. ``out_multiplier`` to the
    decoder, ``hidden_dim`` to both pinwheel networks); a keyword neither accepts is an error.

    :param name: one of ``"pinwheel"``, ``"shapes"``, ``"burgess"``, ``"celeba"``, ``"fashion_mnist"``.
    :param latent_dim: latent dimension; ``None`` keeps each pair's seed default.
    :returns: ``(encoder, decoder)``.
    :raises ValueError: unknown ``name`` or unknown keyword.

    >>> encoder, decoder = build_networks("pinwheel", latent_dim=3, out_multiplier=1)
    >>> encoder.latent_dim, decoder.latent_dim, decoder.obs_shape, decoder.out_multiplier
    (3, 3, (2,), 1)
    """
    if name not in NETWORKS:
        raise ValueError(f"unknown network name {name!r}; valid names are {sorted(NETWORKS)}")
    encoder_cls, decoder_cls = NETWORKS[name]
    encoder_keys, decoder_keys = _init_params(encoder_cls), _init_params(decoder_cls)
    unknown = sorted(set(kw) - encoder_keys - decoder_keys)
    if unknown:
        valid = sorted((encoder_keys | decoder_keys) - {"latent_dim"})
        raise ValueError(f"unknown option(s) {unknown} for networks {name!r}; valid options are {valid}")
    common = {} if latent_dim is None else {"latent_dim": latent_dim}
    encoder = encoder_cls(**common, **{k: v for k, v in kw.items() if k in encoder_keys})
    decoder = decoder_cls(**common, **{k: v for k, v in kw.items() if k in decoder_keys})
    return encoder, decoder
