"""Inference side: amortised encoder guides :math:`q_\\phi(z \\mid x)`."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule

from ._registration import registered_child

__all__ = ["AmortizedGaussianGuide"]


class AmortizedGaussianGuide(PyroModule):
    """Amortised diagonal-Gaussian guide :math:`q_\\phi(z \\mid x) = \\mathcal N(\\mu_\\phi(x), \\mathrm{diag}\\, s_\\phi(x)^2)`.

    ``encoder(x)`` must return ``(loc, scale)``, both ``[batch, latent_dim]``. The guide samples the
    latent site inside a data plate named ``"data"``; pass the same ``dataset_size`` as to the model so
    that plate subsampling scales the loss to the dataset.

    >>> from pyro_decomp.models.networks import PinwheelEncoder
    >>> guide = AmortizedGaussianGuide(PinwheelEncoder())
    >>> guide.distribution(torch.zeros(4, 2)).batch_shape
    torch.Size([4])
    """

    def __init__(self, encoder: torch.nn.Module, *, site: str = "z") -> None:
        super().__init__()
        if not isinstance(encoder, torch.nn.Module):
            raise TypeError(
                f"encoder must be a torch.nn.Module returning (loc, scale), got {type(encoder).__name__}."
            )
        self.encoder = encoder
        self.site = site

    def distribution(self, x: torch.Tensor) -> dist.TorchDistribution:
        """:math:`q(z \\mid x)` for a batch ``x``: ``batch_shape == [batch]``, ``event_shape == [latent]``."""
        loc, scale = registered_child(self, "encoder")(x)  # = self.encoder(x), with cheaper registration
        return dist.Normal(loc, scale, validate_args=False).to_event(1)

    def forward(self, x: torch.Tensor, *, dataset_size: int | None = None) -> torch.Tensor:
        # the encoder runs (and its parameters register with Pyro) outside the plate: a param site needs
        # no plate, and each message through the plate's handlers is a fixed cost per step
        fn = self.distribution(x)
        with data_plate(x, dataset_size):
            return pyro.sample(self.site, fn)


def data_plate(x: torch.Tensor, dataset_size: int | None = None) -> pyro.plate:
    """The shared ``"data"`` plate over axis 0 of ``x``, scaled to ``dataset_size`` when given."""
    if not torch.is_tensor(x) or x.dim() < 1:
        raise ValueError("data must be a tensor with the batch on axis 0.")
    batch = x.shape[0]
    # the indices are given explicitly (the same values a full plate would draw), and so is the device:
    # the plate then neither calls its sampler nor probes the default device with a new tensor each step
    indices = torch.arange(batch, device=x.device)
    if dataset_size is None or dataset_size == batch:
        return pyro.plate("data", batch, subsample=indices, device=x.device)
    if int(dataset_size) < batch:
        raise ValueError(f"dataset_size={dataset_size} is smaller than the batch size {batch}.")
    # an explicit subsample avoids drawing a random permutation of the whole dataset each step
    return pyro.plate("data", int(dataset_size), subsample=indices, device=x.device)
