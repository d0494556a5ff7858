"""The VAE: a prior program, a decoder likelihood and an amortised guide in one :class:`PyroModule`."""

from __future__ import annotations

import math

import pyro
import torch
from pyro.nn import PyroModule, pyro_method
from pyro.params.param_store import param_with_module_name

from ..guides import AmortizedGaussianGuide, data_plate
from ..guides._registration import named_parameters, registered_child
from .likelihoods import DataError, Likelihood, as_observations
from .priors import Prior

__all__ = ["VAE"]


class VAE(PyroModule):
    """Generative model :math:`p(z)\\,p_\\theta(x \\mid z)` with an amortised guide :math:`q_\\phi(z \\mid x)`.

    ``vae.model(x)`` runs the prior program and observes ``x``; ``vae.guide(x)`` runs the encoder.
    Both open the same ``"data"`` plate, so :class:`~pyro_decomp.DecompositionELBO` and Pyro's own
    ELBOs accept them. The ELBO finds :attr:`prior` through ``vae.model`` and samples the prior
    program directly, so the decoder does not run twice.

    ``guide``: a guide module for a prior program with more latent sites than ``z`` (it must sample every
    one of them, e.g. :class:`~pyro_decomp.models.structured.HierarchicalScaleGuide`); the default is the
    amortised Gaussian guide on ``encoder``.

    ``x`` is ``[batch, *obs_shape]`` on the networks' device. Data of another floating dtype (NumPy's
    ``float64``, ``float16``), ``bool`` data and integer data holding only 0 and 1 (dSprites' ``uint8``
    images) are cast to the networks' dtype; other integer data, NaNs, an empty batch or a shape the
    encoder does not take raise a one-line :class:`TypeError` or
    :class:`~pyro_decomp.models.likelihoods.DataError` (a ``ValueError``) that names the fix.

    >>> import pyro, torch
    >>> from pyro_decomp.models import GaussianMixturePrior, GaussianLikelihood
    >>> from pyro_decomp.models.networks import PinwheelEncoder, PinwheelDecoder
    >>> vae = VAE(GaussianMixturePrior(), PinwheelDecoder(), GaussianLikelihood(), PinwheelEncoder())
    >>> pyro.poutine.trace(vae.model).get_trace(torch.zeros(5, 2)).nodes["z"]["value"].shape
    torch.Size([5, 2])
    """

    def __init__(
        self,
        prior: Prior | PyroModule,
        decoder: torch.nn.Module,
        likelihood: Likelihood,
        encoder: torch.nn.Module,
        *,
        guide: torch.nn.Module | None = None,
        check_data: bool = True,
        name: str = "",
    ) -> None:
        super().__init__(name=name)
        if not callable(prior):
            raise TypeError(f"prior must be a Pyro program (a callable), got {type(prior).__name__}.")
        if not isinstance(likelihood, Likelihood):
            raise TypeError(
                f"likelihood must be a pyro_decomp Likelihood (e.g. BernoulliLikelihood()), got {type(likelihood).__name__}."
            )
        self.prior = prior
        self.decoder = decoder
        self.likelihood = likelihood
        if guide is None:
            guide = AmortizedGaussianGuide(encoder, site=getattr(prior, "site", "z"))
        elif getattr(guide, "encoder", None) is not encoder or not hasattr(guide, "site"):
            raise TypeError("guide must be a module with the same `encoder` and a `site` attribute (e.g. "
                            "HierarchicalScaleGuide(encoder, latent_dim)), called as guide(x, dataset_size=...).")  # fmt: skip
        self.guide_module = guide
        self.check_data = bool(check_data)
        self._checked: tuple[int, tuple[int, ...]] | None = None

    @property
    def encoder(self) -> torch.nn.Module:
        # read _modules directly: inside model/guide, PyroModule attribute access would register the
        # encoder's parameters with Pyro once more (a pyro.module statement, one param site per tensor)
        return self._modules["guide_module"]._modules["encoder"]

    @property
    def latent_site(self) -> str:
        return self.guide_module.site

    def _first_param(self) -> torch.Tensor | None:
        for module in (self._modules["guide_module"], self._modules["decoder"]):
            for _, p in named_parameters(module):
                if p.is_floating_point():
                    return p
        return None

    def _prepare(self, x: torch.Tensor, *, check: bool = True) -> torch.Tensor:
        """``x`` cast to the networks' dtype (:func:`~pyro_decomp.models.likelihoods.as_observations`) and
        checked: shape ``[batch, *obs_shape]`` of the encoder, then the likelihood's own check."""
        x_in = x
        param = self._first_param()
        x = as_observations(x, torch.get_default_dtype() if param is None else param.dtype)
        if param is not None and x.device != param.device:
            raise DataError(
                f"x is on {x.device} but the networks are on {param.device}; move the data once, before "
                f"training: x = x.to({str(param.device)!r})."
            )
        obs_shape = getattr(self.encoder, "obs_shape", None)
        if x.dim() < 1 or x.shape[0] == 0:
            raise DataError(f"x must hold at least one data point on axis 0, got shape {list(x.shape)}.")
        if obs_shape is not None and tuple(x.shape[1:]) != tuple(obs_shape):
            raise DataError(self._shape_message(x, tuple(obs_shape)))
        # the likelihood's check is a full pass over the batch; remember the last batch seen to skip repeats
        key = (id(x_in), tuple(x_in.shape), x_in.dtype)
        if check and self.check_data and self._checked != key:
            self.likelihood.check_data(x)
            self._checked = key
        return x

    def _shape_message(self, x: torch.Tensor, obs_shape: tuple[int, ...]) -> str:
        want = ", ".join(str(s) for s in obs_shape)
        got = list(x.shape)
        if tuple(x.shape) == obs_shape:
            fix = "add the batch axis: x.unsqueeze(0)"
        elif obs_shape[0] == 1 and tuple(x.shape[1:]) == obs_shape[1:]:
            fix = "add the channel axis: x.unsqueeze(1)"
        elif x.dim() >= 1 and x[0].numel() == math.prod(obs_shape):
            fix = f"reshape it: x.reshape(-1, {want})"
        else:
            fix = f"resize or reshape the data to [batch, {want}], or build networks for this shape"
        return f"x has shape {got} but {type(self.encoder).__name__} takes [batch, {want}]; {fix}."

    def _claim_param_store(self) -> None:
        """Make this model the owner of its parameter names in Pyro's global param store.

        The store is keyed by attribute path (``"decoder$$$net.0.weight"``), so two VAEs in one process
        share names. ``pyro.module`` would then hand SVI the other model's stored tensors and this model's
        parameters would silently never train. When the store holds another model's tensors under our
        names, those entries are dropped so that ours are registered; alternating between models then
        trains each of them correctly (``pyro.optim`` keeps one optimiser state per tensor).
        """
        store = pyro.get_param_store()
        prefix = f"{self._pyro_name}." if self._pyro_name else ""
        # read _modules directly: attribute access inside the module context would re-register with Pyro
        encoder = self._modules["guide_module"]._modules["encoder"]
        for path, module in (("decoder", self._modules["decoder"]), ("guide_module.encoder", encoder)):
            named = named_parameters(module)
            if not named:
                continue
            first = named[0]
            stored = store._params.get(param_with_module_name(prefix + path, first[0]))
            if stored is not None and stored is not first[1]:
                break
        else:
            return
        roots = tuple(f"{prefix}{child}{sep}" for child in self._modules for sep in (".", "$$$"))
        for name in [n for n in store.keys() if n.startswith(roots)]:
            del store[name]

    @pyro_method  # activates the module context, so self.decoder registers its parameters with SVI
    def model(self, x: torch.Tensor, *, dataset_size: int | None = None) -> torch.Tensor:
        """:math:`z \\sim p(z)`, :math:`x \\sim p_\\theta(x \\mid z)` for ``x: [batch, *obs_shape]``."""
        self._claim_param_store()
        x = self._prepare(x)
        # registers its parameters (as pyro.module) here, outside the plate's handlers
        decoder = registered_child(self, "decoder")
        with data_plate(x, dataset_size):
            z = self.prior()
            return self.likelihood(decoder(z), obs=x)

    @pyro_method
    def guide(self, x: torch.Tensor, *, dataset_size: int | None = None) -> torch.Tensor:
        """:math:`z \\sim q_\\phi(z \\mid x)`."""
        self._claim_param_store()  # SVI runs the guide first
        return self.guide_module(self._prepare(x), dataset_size=dataset_size)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder mean and scale, each ``[batch, latent]``."""
        return self.encoder(self._prepare(x, check=False))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The likelihood's mean at the encoder mean, ``[batch, *obs_shape]``."""
        loc, _ = self.encoder(self._prepare(x, check=False))
        return self.likelihood.distribution(self.decoder(loc)).mean

    @torch.no_grad()
    def generate(self, num_samples: int) -> torch.Tensor:
        """Draw ``num_samples`` observations' means from the generative model."""
        with pyro.plate("samples", int(num_samples)), pyro.poutine.block():
            z = self.prior()
        return self.likelihood.distribution(self.decoder(z)).mean
