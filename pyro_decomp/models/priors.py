"""Structured priors written as Pyro programs (SPEC §3).

Every built-in prior is a small :class:`~pyro.nn.PyroModule`. Calling it samples the latent site
(``"z"`` by default) inside whatever plates the caller has opened, typically the data plate::

    with pyro.plate("data", batch_size):
        z = prior()          # z: [batch, latent]

Each prior also exposes

* :meth:`Prior.distribution` - the torch distribution of one code, ``event_shape == (latent_dim,)``;
* :meth:`Prior.log_prob` and :meth:`Prior.sample` - shortcuts over that distribution;
* :meth:`Prior.annealed` - the annealed prior :math:`f_\\beta = p^\\beta / F_\\beta` where it has a closed form;
* :meth:`Prior.log_normaliser` - :math:`\\log F_\\beta = \\log \\int p(z)^\\beta dz` (paper Theorem 1).

Learned parameters (e.g. the learned anisotropic variances) live inside the module, so
``pyro.infer.SVI`` optimises them together with the decoder.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule, PyroParam

# torch registers no bijection for a mixture's support; its support is the components' support, so
# unconstrained-space samplers (NUTS on p(z|x), pyro.infer.autoguide) can use theirs.
_MixtureConstraint = torch.distributions.constraints.MixtureSameFamilyConstraint
if _MixtureConstraint not in torch.distributions.biject_to._registry:
    torch.distributions.biject_to.register(
        _MixtureConstraint, lambda c: torch.distributions.biject_to(c.base_constraint)
    )
    torch.distributions.transform_to.register(
        _MixtureConstraint, lambda c: torch.distributions.transform_to(c.base_constraint)
    )

__all__ = [
    "AnisotropicGaussianPrior",
    "GaussianMixturePrior",
    "IsotropicGaussianPrior",
    "Prior",
    "SparseMixturePrior",
    "StudentTPrior",
    "gaussian_log_normaliser",
    "mixture_means",
    "pca_variances",
]


def _check_latent_dim(latent_dim: int) -> int:
    if isinstance(latent_dim, bool) or not isinstance(latent_dim, int) or latent_dim < 1:
        raise ValueError(f"latent_dim must be a positive integer, got {latent_dim!r}.")
    return latent_dim


def _positive_float(name: str, value: float) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a positive number, got {value!r}.") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite positive number, got {value!r}.")
    return value


def gaussian_log_normaliser(variance: torch.Tensor, beta: float) -> torch.Tensor:
    """:math:`\\log F_\\beta` for a diagonal Gaussian prior :math:`\\mathcal N(0, \\mathrm{diag}(\\sigma^2))`.

    .. math::

        \\log F_\\beta = \\sum_d \\Big[\\tfrac{1-\\beta}{2}\\log(2\\pi\\sigma_d^2) - \\tfrac12\\log\\beta\\Big]

    which follows from :math:`\\int \\mathcal N(z;0,\\sigma^2)^\\beta dz =
    (2\\pi\\sigma^2)^{(1-\\beta)/2}\\beta^{-1/2}` (paper §4.1). ``variance`` is ``[..., D]``; the
    result sums over the last axis. Undefined (``inf``) for :math:`\\beta \\le 0`.
    """
    if beta <= 0:
        return torch.full(variance.shape[:-1], math.inf, dtype=variance.dtype, device=variance.device)
    per_dim = 0.5 * (1.0 - beta) * torch.log(2 * math.pi * variance) - 0.5 * math.log(beta)
    return per_dim.sum(-1)


def _tensor_key(t: torch.Tensor) -> tuple:
    """Identifies a buffer's storage and contents version (for :meth:`Prior._cached`)."""
    return (t.data_ptr(), t._version, t.dtype, t.device, tuple(t.shape))


class Prior(PyroModule):
    """Base class: a prior over one latent site ``site`` with ``event_shape == (latent_dim,)``."""

    def __init__(self, latent_dim: int, *, site: str = "z") -> None:
        super().__init__()
        self.latent_dim = _check_latent_dim(latent_dim)
        if not isinstance(site, str) or not site:
            raise ValueError(f"site must be a non-empty string naming the latent sample site, got {site!r}.")
        self.site = site
        # a buffer that follows .to(device); distributions are built on its device and dtype
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)

    def distribution(self) -> dist.TorchDistribution:
        """The distribution of one code: ``batch_shape == ()``, ``event_shape == (latent_dim,)``."""
        raise NotImplementedError

    def _cached(self, key: tuple, build) -> dist.TorchDistribution:
        """``build()``, reused while ``key`` (and the global validation flag) is unchanged.

        Priors without learned parameters call this from :meth:`distribution`, which the model and the
        ELBO call every step; ``key`` must identify everything the distribution depends on (use
        :func:`_tensor_key` for buffers: it changes on ``.to()``, ``load_state_dict`` and in-place edits).
        """
        key = (key, torch.distributions.Distribution._validate_args)
        cache = self.__dict__.get("_distribution_cache")
        if cache is not None and cache[0] == key:
            return cache[1]
        d = build()
        self.__dict__["_distribution_cache"] = (key, d)
        return d

    def forward(self) -> torch.Tensor:
        """Sample the latent site inside the caller's plates. Returns ``z: [*plates, latent_dim]``."""
        return pyro.sample(self.site, self.distribution())

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """:math:`\\log p(z)` for ``z: [..., latent_dim]``, returns ``[...]``."""
        if z.shape[-1:] != (self.latent_dim,):
            raise ValueError(f"z must have last dimension latent_dim={self.latent_dim}, got shape {tuple(z.shape)}.")
        return self.distribution().log_prob(z)

    def sample(self, num_samples: int) -> torch.Tensor:
        """Draw ``num_samples`` codes, ``[num_samples, latent_dim]``."""
        return self.distribution().sample((int(num_samples),))

    def annealed(self, beta: float) -> dist.TorchDistribution | None:
        """:math:`f_\\beta \\propto p^\\beta` when it has a closed form, else ``None``."""
        return None

    def log_normaliser(self, beta: float, *, num_samples: int = 4096) -> torch.Tensor:
        """:math:`\\log F_\\beta = \\log \\int p(z)^\\beta dz`.

        The default is an importance-sampling estimate with the prior as proposal,
        :math:`F_\\beta = \\mathbb E_p[p(z)^{\\beta-1}]`; Gaussian priors override it with the closed form.
        """
        if beta <= 0:
            return torch.tensor(math.inf)
        with torch.no_grad():
            z = self.sample(num_samples)
            log_w = (beta - 1.0) * self.log_prob(z)
            return torch.logsumexp(log_w, 0) - math.log(num_samples)


class IsotropicGaussianPrior(Prior):
    """:math:`p(z) = \\mathcal N(0, \\sigma^2 I)`; ``scale`` is :math:`\\sigma` (default 1).

    >>> prior = IsotropicGaussianPrior(3)
    >>> prior.sample(5).shape
    torch.Size([5, 3])
    """

    def __init__(self, latent_dim: int, *, scale: float = 1.0, site: str = "z") -> None:
        super().__init__(latent_dim, site=site)
        self.scale = _positive_float("scale", scale)

    def variance(self) -> torch.Tensor:
        return torch.full((self.latent_dim,), self.scale**2, dtype=self._anchor.dtype, device=self._anchor.device)

    def _build_distribution(self) -> dist.TorchDistribution:
        loc = torch.zeros(self.latent_dim, dtype=self._anchor.dtype, device=self._anchor.device)
        return dist.Normal(loc, self.variance().sqrt()).to_event(1)

    def distribution(self) -> dist.TorchDistribution:
        anchor = self._anchor
        return self._cached((self.latent_dim, self.scale, anchor.dtype, anchor.device), self._build_distribution)

    def annealed(self, beta: float) -> dist.TorchDistribution | None:
        if beta <= 0:
            return None
        loc = torch.zeros(self.latent_dim, dtype=self._anchor.dtype, device=self._anchor.device)
        return dist.Normal(loc, (self.variance() / beta).sqrt()).to_event(1)

    def log_normaliser(self, beta: float, *, num_samples: int = 4096) -> torch.Tensor:
        return gaussian_log_normaliser(self.variance(), beta)


def pca_variances(data: torch.Tensor, latent_dim: int) -> torch.Tensor:
    """PCA-initialised prior variances (SPEC §3): ``softmax(log s²)·D`` over the D largest singular values.

    ``data: [n, ...]`` is flattened to ``[n, p]`` and centred before the SVD. The result is sorted in
    descending order and sums to ``latent_dim``, which keeps β on the isotropic scale.
    """
    latent_dim = _check_latent_dim(latent_dim)
    if not torch.is_tensor(data):
        data = torch.as_tensor(data)
    if data.dim() < 2 or data.shape[0] < 2:
        raise ValueError(f"data must have shape [n >= 2, ...] to initialise from PCA, got {tuple(data.shape)}.")
    flat = data.reshape(data.shape[0], -1).double()
    if not torch.isfinite(flat).all():
        raise ValueError("data contains NaN or infinite values; clean it before PCA initialisation.")
    flat = flat - flat.mean(0, keepdim=True)
    s = torch.linalg.svdvals(flat)  # descending order
    if s.numel() < latent_dim:
        raise ValueError(
            f"PCA initialisation needs at least latent_dim={latent_dim} singular values, "
            f"but data of shape {tuple(data.shape)} has only {s.numel()}."
        )
    top = s[:latent_dim]
    if top[0] <= 0:
        raise ValueError("data has zero variance; cannot initialise prior variances from PCA.")
    # floor to avoid log(0) for rank-deficient data; softmax keeps the sum equal to D
    log_s2 = torch.log(top.clamp_min(top[0] * 1e-12) ** 2)
    return (torch.softmax(log_s2, 0) * latent_dim).to(torch.get_default_dtype())


class AnisotropicGaussianPrior(Prior):
    """:math:`p(z) = \\mathcal N(0, \\mathrm{diag}(\\sigma^2))` (paper §6, Fig. 2).

    Three forms:

    * fixed: pass ``variance`` (``[latent_dim]``, positive);
    * PCA-initialised: :meth:`from_data` (see :func:`pca_variances`);
    * learned: ``learn=True`` stores a log-variance :class:`~pyro.nn.PyroParam`, initialised from
      ``variance``.

    >>> prior = AnisotropicGaussianPrior(2, variance=torch.tensor([1.5, 0.5]))
    >>> prior.log_prob(torch.zeros(2)).item() == pyro.distributions.Normal(0., torch.tensor([1.5, 0.5]).sqrt()).log_prob(0.).sum().item()
    True
    """

    def __init__(
        self,
        latent_dim: int,
        *,
        variance: torch.Tensor | Sequence[float] | None = None,
        learn: bool = False,
        site: str = "z",
    ) -> None:
        super().__init__(latent_dim, site=site)
        if variance is None:
            variance = torch.ones(latent_dim)
        variance = torch.as_tensor(variance, dtype=torch.get_default_dtype())
        if variance.shape != (latent_dim,):
            raise ValueError(f"variance must have shape [latent_dim]=[{latent_dim}], got {tuple(variance.shape)}.")
        if not torch.isfinite(variance).all() or (variance <= 0).any():
            raise ValueError(f"variance must be finite and positive, got {variance.tolist()}.")
        self.learn = bool(learn)
        if self.learn:
            self.log_variance = PyroParam(variance.log().clone())
        else:
            self.register_buffer("_variance", variance.clone())

    @classmethod
    def from_data(
        cls, data: torch.Tensor, latent_dim: int, *, learn: bool = False, site: str = "z"
    ) -> AnisotropicGaussianPrior:
        """PCA-initialised prior from ``data: [n, ...]`` (SPEC §3)."""
        return cls(latent_dim, variance=pca_variances(data, latent_dim), learn=learn, site=site)

    def variance(self) -> torch.Tensor:
        return self.log_variance.exp() if self.learn else self._variance

    def distribution(self) -> dist.TorchDistribution:
        var = self.variance()
        return dist.Normal(torch.zeros_like(var), var.sqrt()).to_event(1)

    def annealed(self, beta: float) -> dist.TorchDistribution | None:
        if beta <= 0:
            return None
        var = self.variance()
        return dist.Normal(torch.zeros_like(var), (var / beta).sqrt()).to_event(1)

    def log_normaliser(self, beta: float, *, num_samples: int = 4096) -> torch.Tensor:
        return gaussian_log_normaliser(self.variance(), beta)


class StudentTPrior(Prior):
    """Product of Student-t: :math:`p(z) = \\prod_i \\mathrm{StudentT}(z_i; \\nu, 0, 1)` (paper Fig. 2, bottom).

    Lower ``df`` (:math:`\\nu`) means heavier tails; the seeds use :math:`\\nu \\in \\{3, 5, 100\\}`.
    :math:`\\log F_\\beta` is computed per dimension by quadrature, so it is exact up to float error.
    """

    def __init__(self, latent_dim: int, *, df: float = 5.0, site: str = "z") -> None:
        super().__init__(latent_dim, site=site)
        self.df = _positive_float("df", df)

    def distribution(self) -> dist.TorchDistribution:
        kw = dict(dtype=self._anchor.dtype, device=self._anchor.device)
        return dist.StudentT(
            torch.full((self.latent_dim,), self.df, **kw),
            torch.zeros(self.latent_dim, **kw),
            torch.ones(self.latent_dim, **kw),
        ).to_event(1)

    def log_normaliser(self, beta: float, *, num_samples: int = 4096) -> torch.Tensor:
        if beta <= 0 or beta * (self.df + 1.0) <= 1.0:
            # the integral of p^β diverges: p(z)^β ~ |z|^{-β(ν+1)}
            return torch.tensor(math.inf)
        from scipy import integrate, stats

        val, _ = integrate.quad(lambda t: stats.t.pdf(t, self.df) ** beta, -math.inf, math.inf, limit=200)
        return torch.tensor(self.latent_dim * math.log(val), dtype=self._anchor.dtype)


def mixture_means(latent_dim: int, n_components: int, layout: str = "corners") -> torch.Tensor:
    """Component means ``[n_components, latent_dim]`` for :class:`GaussianMixturePrior`.

    * ``"corners"`` (paper text, the default): distinct corners of the unit hypercube,
      :math:`\\mu_c^d \\in \\{0, 1\\}`, in binary order; for D=2, C=4: (0,0), (1,0), (0,1), (1,1).
    * ``"axes"`` (the authors' code): :math:`\\pm e_d`; for D=2, C=4: (1,0), (-1,0), (0,1), (0,-1).
    """
    latent_dim = _check_latent_dim(latent_dim)
    if layout == "corners":
        if n_components > 2**latent_dim:
            raise ValueError(
                f"'corners' layout has only 2**latent_dim={2**latent_dim} corners for "
                f"n_components={n_components}; use layout='axes' or pass means explicitly."
            )
        idx = torch.arange(n_components)
        bits = (idx.unsqueeze(-1) >> torch.arange(latent_dim)) & 1
        return bits.to(torch.get_default_dtype())
    if layout == "axes":
        if n_components > 2 * latent_dim:
            raise ValueError(
                f"'axes' layout has only 2*latent_dim={2 * latent_dim} points for n_components={n_components}; "
                "use layout='corners' or pass means explicitly."
            )
        means = torch.zeros(n_components, latent_dim)
        for c in range(n_components):
            means[c, c // 2] = 1.0 if c % 2 == 0 else -1.0
        return means
    raise ValueError(f"Unknown means layout {layout!r}; choose 'corners' or 'axes', or pass a tensor.")


class GaussianMixturePrior(Prior):
    """:math:`p(z) = \\sum_c \\pi_c \\mathcal N(z; \\mu_c, \\sigma^2 I)` (paper Eq. 9, pinwheel Fig. 3).

    Defaults are the pinwheel settings: D=2, C=4, :math:`\\sigma^2 = 0.03`, :math:`\\pi_c = 1/4`, means at
    the unit-square corners (the paper text). ``means="axes"`` gives the authors' code's (±1, 0), (0, ±1);
    a ``[C, D]`` tensor sets them directly.

    >>> prior = GaussianMixturePrior()
    >>> prior.component_log_prob(torch.zeros(1, 2)).argmax(-1).item()
    0
    """

    def __init__(
        self,
        latent_dim: int = 2,
        *,
        n_components: int = 4,
        variance: float = 0.03,
        means: str | torch.Tensor = "corners",
        weights: torch.Tensor | Sequence[float] | None = None,
        site: str = "z",
    ) -> None:
        super().__init__(latent_dim, site=site)
        if isinstance(n_components, bool) or not isinstance(n_components, int) or n_components < 1:
            raise ValueError(f"n_components must be a positive integer, got {n_components!r}.")
        self.variance = _positive_float("variance", variance)
        if isinstance(means, str):
            means_t = mixture_means(latent_dim, n_components, means)
        else:
            means_t = torch.as_tensor(means, dtype=torch.get_default_dtype())
            if means_t.shape != (n_components, latent_dim):
                raise ValueError(
                    f"means must have shape [n_components, latent_dim]=[{n_components}, {latent_dim}], "
                    f"got {tuple(means_t.shape)}."
                )
        if weights is None:
            weights_t = torch.full((n_components,), 1.0 / n_components)
        else:
            weights_t = torch.as_tensor(weights, dtype=torch.get_default_dtype())
            if weights_t.shape != (n_components,):
                raise ValueError(f"weights must have shape [{n_components}], got {tuple(weights_t.shape)}.")
            if (weights_t < 0).any() or not torch.isclose(weights_t.sum(), torch.tensor(1.0), atol=1e-5):
                raise ValueError(f"weights must be non-negative and sum to 1, got {weights_t.tolist()}.")
        self.n_components = n_components
        self.register_buffer("means", means_t)
        self.register_buffer("weights", weights_t)

    def _components(self) -> dist.TorchDistribution:
        scale = torch.full_like(self.means, math.sqrt(self.variance))
        return dist.Normal(self.means, scale).to_event(1)

    def _build_distribution(self) -> dist.TorchDistribution:
        return dist.MixtureSameFamily(dist.Categorical(probs=self.weights), self._components())

    def distribution(self) -> dist.TorchDistribution:
        return self._cached(
            (_tensor_key(self.means), _tensor_key(self.weights), self.variance), self._build_distribution
        )

    def component_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """:math:`\\log \\pi_c + \\log \\mathcal N(z; \\mu_c, \\sigma^2 I)` for ``z: [..., D]``, returns ``[..., C]``."""
        return self._components().log_prob(z.unsqueeze(-2)) + self.weights.log()

    def assign(self, z: torch.Tensor) -> torch.Tensor:
        """The most probable component of each code, ``[...]`` (used for clustering metrics)."""
        return self.component_log_prob(z).argmax(-1)


class SparseMixturePrior(Prior):
    """Spike-and-slab style sparse prior (paper §6, Fig. 4):

    .. math:: p(z) = \\prod_i \\big[(1-\\gamma)\\,\\mathcal N(z_i; 0, 1) + \\gamma\\,\\mathcal N(z_i; 0, \\sigma_0^2)\\big]

    ``gamma`` is the weight of the narrow spike, ``sigma0`` its standard deviation (default 0.05).
    The seeds use :math:`\\gamma \\in \\{0, 0.8, 0.9\\}`.
    """

    def __init__(self, latent_dim: int, *, gamma: float = 0.8, sigma0: float = 0.05, site: str = "z") -> None:
        super().__init__(latent_dim, site=site)
        try:
            gamma = float(gamma)
        except (TypeError, ValueError):
            raise TypeError(f"gamma must be a number in [0, 1), got {gamma!r}.") from None
        if not 0.0 <= gamma < 1.0:
            raise ValueError(f"gamma must lie in [0, 1) (the spike weight), got {gamma!r}.")
        self.gamma = gamma
        self.sigma0 = _positive_float("sigma0", sigma0)

    def distribution(self) -> dist.TorchDistribution:
        kw = dict(dtype=self._anchor.dtype, device=self._anchor.device)
        probs = torch.tensor([1.0 - self.gamma, self.gamma], **kw).expand(self.latent_dim, 2)
        scales = torch.tensor([1.0, self.sigma0], **kw).expand(self.latent_dim, 2)
        per_dim = dist.MixtureSameFamily(dist.Categorical(probs=probs), dist.Normal(torch.zeros_like(scales), scales))
        return per_dim.to_event(1)

    def log_normaliser(self, beta: float, *, num_samples: int = 4096) -> torch.Tensor:
        if beta <= 0:
            return torch.tensor(math.inf)
        from scipy import integrate, stats

        g, s0 = self.gamma, self.sigma0

        def pdf(t: float) -> float:
            return ((1 - g) * stats.norm.pdf(t) + g * stats.norm.pdf(t, scale=s0)) ** beta

        # split at the spike so quad resolves it
        val = sum(integrate.quad(pdf, a, b, limit=200)[0] for a, b in [(-math.inf, -1), (-1, 1), (1, math.inf)])
        return torch.tensor(self.latent_dim * math.log(val), dtype=self._anchor.dtype)
