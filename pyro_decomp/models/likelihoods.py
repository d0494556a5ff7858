"""Decoder likelihoods :math:`p(x \\mid z)` as Pyro observation statements.

A likelihood turns the decoder's output into a distribution over one observation and observes the
data at the site ``"x"``::

    likelihood(decoder(z), obs=x)      # inside the data plate

The decoder output is ``[*batch, *obs_shape]`` for one-parameter likelihoods (fixed scale), or
``[*batch, 2, *obs_shape]`` (location and raw scale stacked on axis ``-len(obs_shape)-1``) when the
scale is produced by the decoder (``scale=None``).
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F

__all__ = [
    "BernoulliLikelihood",
    "DataError",
    "GaussianLikelihood",
    "LaplaceLikelihood",
    "Likelihood",
    "as_observations",
]


class DataError(ValueError):
    """Observations a model cannot use (NaN, wrong shape, non-binary data for a Bernoulli likelihood).

    The message stays one line: Pyro re-raises a ``ValueError`` from inside a traced model as the same
    class with the trace's shape table appended, which would bury the message and its fix.
    """

    def __init__(self, message: object = "") -> None:
        super().__init__(str(message).split("\n", 1)[0])


def as_observations(x: object, dtype: torch.dtype) -> torch.Tensor:
    """``x`` as a tensor of the network's floating ``dtype``, converting only where no value changes meaning.

    * floating data (``float64`` from NumPy, ``float16``, ...) is cast to ``dtype``, as PyTorch layers need;
    * ``bool`` and integer data holding only 0 and 1 (binary images; dSprites' own ``uint8`` format) are
      cast exactly;
    * other integer data is ambiguous (8-bit intensities or counts?), so it is a :class:`TypeError` that
      says what to pass.

    :raises TypeError: for a non-tensor, a complex tensor or non-binary integer data.
    """
    if not torch.is_tensor(x):
        raise TypeError(
            f"observations must be a torch.Tensor, got {type(x).__name__}; "
            "convert with torch.as_tensor(x, dtype=torch.float32)."
        )
    if x.dtype == dtype:
        return x
    if x.is_complex():
        raise TypeError(f"observations have complex dtype {x.dtype}; pass real data (e.g. x.real or x.abs()).")
    if x.is_floating_point() or x.dtype == torch.bool:
        return x.to(dtype)
    if x.numel() and not ((x == 0) | (x == 1)).all():
        raise TypeError(
            f"observations have integer dtype {x.dtype} with values up to {int(x.max())}; pass floating-point "
            "data: x.float() / 255 for 8-bit images in [0, 1], or x.float() to keep the values."
        )
    return x.to(dtype)


class Likelihood:
    """Base class. ``event_dim`` is the number of observation dimensions (1 for vectors, 3 for images)."""

    def __init__(self, event_dim: int, *, site: str = "x") -> None:
        if isinstance(event_dim, bool) or not isinstance(event_dim, int) or event_dim < 1:
            raise ValueError(f"event_dim must be a positive integer (1 for vectors, 3 for images), got {event_dim!r}.")
        self.event_dim = event_dim
        self.site = site

    def distribution(self, params: torch.Tensor) -> dist.TorchDistribution:
        raise NotImplementedError

    def check_data(self, x: torch.Tensor) -> None:
        """Raise a clear error for data this likelihood cannot score."""
        if not torch.is_tensor(x):
            raise TypeError(f"observations must be a torch.Tensor, got {type(x).__name__}.")
        if x.dim() < self.event_dim:
            raise DataError(
                f"observations must have at least event_dim={self.event_dim} dimensions, got shape {tuple(x.shape)}."
            )
        if x.is_floating_point() and not torch.isfinite(x).all():
            bad = int((~torch.isfinite(x)).sum())
            raise DataError(
                f"observations contain NaN or infinite values ({bad} of {x.numel()}); clean or impute the data first "
                "(e.g. drop rows with ~torch.isfinite(x).all(-1))."
            )

    def __call__(self, params: torch.Tensor, obs: torch.Tensor | None = None) -> torch.Tensor:
        """Observe ``obs`` (cast to the decoder's dtype, see :func:`as_observations`) at :attr:`site`."""
        if obs is not None and (not torch.is_tensor(obs) or obs.dtype != params.dtype):
            obs = as_observations(obs, params.dtype)
        return pyro.sample(self.site, self.distribution(params), obs=obs)

    def _split(self, params: torch.Tensor, fixed_scale: float | None) -> tuple[torch.Tensor, torch.Tensor]:
        if fixed_scale is not None:
            return params, torch.as_tensor(fixed_scale, dtype=params.dtype, device=params.device)
        axis = params.dim() - self.event_dim - 1
        if axis < 0 or params.shape[axis] != 2:
            raise ValueError(
                "with scale=None the decoder must output location and raw scale stacked as "
                f"[..., 2, *obs_shape]; got shape {tuple(params.shape)} for event_dim={self.event_dim}."
            )
        loc, raw = params.unbind(axis)
        return loc, F.softplus(raw) + 1e-4


class BernoulliLikelihood(Likelihood):
    """:math:`p(x \\mid z) = \\mathrm{Bernoulli}(x; \\sigma(\\mathrm{logits}))`; the data must be binary."""

    def distribution(self, params: torch.Tensor) -> dist.TorchDistribution:
        return dist.Bernoulli(logits=params, validate_args=False).to_event(self.event_dim)

    def check_data(self, x: torch.Tensor) -> None:
        super().check_data(x)
        if ((x != 0) & (x != 1)).any():
            bad = x[(x != 0) & (x != 1)].flatten()[:3].tolist()
            raise DataError(
                f"BernoulliLikelihood needs binary data in {{0, 1}}, found values such as {bad}. "
                "Binarise the data (e.g. x > 0.5) or use GaussianLikelihood / LaplaceLikelihood."
            )


class _LocationScaleLikelihood(Likelihood):
    """A location-scale family with a fixed ``scale``, or one the decoder outputs (``scale=None``)."""

    family: type[dist.TorchDistribution]

    def __init__(self, event_dim: int, *, scale: float | None, site: str = "x") -> None:
        super().__init__(event_dim, site=site)
        if scale is not None and (not math.isfinite(float(scale)) or float(scale) <= 0):
            raise ValueError(f"scale must be a positive number or None (learned by the decoder), got {scale!r}.")
        self.scale = None if scale is None else float(scale)

    def distribution(self, params: torch.Tensor) -> dist.TorchDistribution:
        loc, scale = self._split(params, self.scale)
        return self.family(loc, scale, validate_args=False).to_event(self.event_dim)


class GaussianLikelihood(_LocationScaleLikelihood):
    """:math:`p(x \\mid z) = \\mathcal N(x; \\mu(z), \\sigma^2)`.

    ``scale=None`` (the pinwheel default, paper Table 1b) lets the decoder output the scale as well.
    """

    family = dist.Normal

    def __init__(self, event_dim: int = 1, *, scale: float | None = None, site: str = "x") -> None:
        super().__init__(event_dim, scale=scale, site=site)


class LaplaceLikelihood(_LocationScaleLikelihood):
    """:math:`p(x \\mid z) = \\mathrm{Laplace}(x; \\mu(z), b)`; Fashion-MNIST uses :math:`b = 0.1` (004 §B)."""

    family = dist.Laplace

    def __init__(self, event_dim: int = 3, *, scale: float | None = 0.1, site: str = "x") -> None:
        super().__init__(event_dim, scale=scale, site=site)
