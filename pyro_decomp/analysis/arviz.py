"""ArviZ views of a trained VAE: encodings as InferenceData, and NUTS ground truth for :math:`p(z \\mid x)` (SPEC §8).

Two kinds of InferenceData come out of this module.

* :func:`to_inference_data` - the *amortised* posterior: draws of the latent site from the guide
  :math:`q_\\phi(z \\mid x)`, prior draws, the posterior predictive, the per-datapoint log likelihood
  :math:`\\log p_\\theta(x_i \\mid z_i)` and the observed data.
* :func:`sample_posterior_nuts` - the *exact* posterior :math:`p_\\theta(z \\mid x) \\propto p(z)\\,p_\\theta(x \\mid z)`
  sampled by NUTS with the decoder frozen, with ``sample_stats`` (divergences, ``lp``) for
  :func:`nuts_diagnostics` / :func:`arviz.summary`.

Both put the latent site on dims ``(chain, draw, obs, latent)``; ``obs`` holds the datapoints' indices
in the caller's dataset (``obs_index``), so the two can be compared datapoint by datapoint.

Where the prior's parameters go: **learned (and fixed) prior parameters are stored in the
``constant_data`` group** as ``prior_<name>`` variables (e.g. ``prior_variance`` on dim ``latent`` for
the Gaussian priors, ``prior_means``/``prior_weights`` for the mixture), and the prior's class name is
the ``prior_class`` attribute of the posterior group. They are point estimates of the fitted model, not
random variables, which is what ``constant_data`` is for.

A model is given either as our :class:`~pyro_decomp.models.vae.VAE` or as a ``(model, guide)`` pair of
Pyro programs ``model(x)`` / ``guide(x)`` that open their data plate over axis 0 of ``x`` and annotate
every batch dimension with a plate (so the programs vectorise over an outer particle plate).

**Every latent site** of the prior program is analysed, not just the code ``z``: a hierarchical prior
such as :func:`~pyro_decomp.models.structured.hierarchical_scale_prior` (sites ``z_log_scale`` and
``z`` per datapoint) gets all its sites in the posterior, the prior and the NUTS draws. The primary
site (``latent_site``, default ``"z"``) is on dims ``(obs, latent)``; any other site ``s`` on ``(obs,)``
or ``(obs, s_dim_0, ...)``. Every latent site must lie inside the data plate (one value per
datapoint) and have real support, and the guide must sample each of them. Internally a datapoint's
latent sites are concatenated, in the model's order, into one flat vector (``sample_guide``,
``log_joint``, the local Gaussians of the amortisation report).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.infer import MCMC, NUTS, Predictive
from pyro.infer.autoguide.initialization import init_to_value
from pyro.poutine.util import site_is_subsample

with warnings.catch_warnings():
    # arviz announces its refactor with a FutureWarning at import time; it is not about our use
    warnings.simplefilter("ignore", FutureWarning)
    import arviz as az

__all__ = [
    "ModelTarget",
    "flatten_sites",
    "frozen_parameters",
    "latent_sites",
    "load_inference_data",
    "log_joint",
    "nuts_diagnostics",
    "resolve_target",
    "sample_guide",
    "sample_posterior_nuts",
    "save_inference_data",
    "to_inference_data",
    "unflatten_sites",
]

# Memory bounds of to_inference_data (values, i.e. float32 elements of the observed site): one decoder
# call sees at most CHUNK_VALUES observed values (~16 MB of likelihood parameters; a conv decoder's
# activations are a small multiple of that), and each pixel-level predictive group holds at most
# MAX_PREDICTIVE_VALUES values (32 MB as float64). Tabular data is far below both.
CHUNK_VALUES = 2**22
MAX_PREDICTIVE_VALUES = 2**22

# Predictive's default plate name would clash with nothing of ours, but our own particle plate is
# named so that a user's model can never shadow it.
_PARTICLES = "_pyro_decomp_particles"


@dataclass
class ModelTarget:
    """A model/guide pair in the form the analysis needs (built by :func:`resolve_target`)."""

    model: Callable
    guide: Callable
    latent_site: str
    obs_site: str
    prior: Any = None
    modules: list[torch.nn.Module] = field(default_factory=list)
    encoder: Callable | None = None  # x -> (loc, scale) when the guide is a diagonal Gaussian encoder
    # every latent site of the model -> its shape per datapoint, in the model's order (from latent_sites)
    sites: dict[str, tuple[int, ...]] | None = None
    # discrete sites the model enumerates (infer={"enumerate": "parallel"}): summed out, never sampled
    enumerated: tuple[str, ...] = ()


def latent_sites(target: ModelTarget, x: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """The model's latent sites and their shapes per datapoint, ``{name: event shape}``, in program order.

    Discrete sites marked ``infer={"enumerate": "parallel"}`` are not latent sites here: they are summed
    out of every density (see :func:`log_joint`), as :class:`~pyro.infer.TraceEnum_ELBO` does in training.
    Raises ``ValueError`` for a latent site outside the data plate, one without real support, a missing
    ``latent_site``, or a latent site the guide does not sample.
    """
    if target.sites is not None:
        return target.sites
    n = x.shape[0]
    with torch.no_grad(), poutine.block():
        trace = poutine.trace(target.model).get_trace(x)
        guide_trace = poutine.trace(target.guide).get_trace(x)
    sites: dict[str, tuple[int, ...]] = {}
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site["is_observed"] or site_is_subsample(site):
            continue
        if site.get("infer", {}).get("_do_not_score"):
            continue
        if site.get("infer", {}).get("enumerate") == "parallel":
            # summed out exactly wherever the model's density is needed
            target.enumerated = target.enumerated + (name,)
            continue
        value = site["value"]
        if value.dim() == 0 or value.shape[0] != n:
            raise ValueError(
                f"latent site {name!r} has shape {tuple(value.shape)}; the analysis needs one value per "
                f"datapoint ({n}). Put every latent site inside the data plate."
            )
        support = site["fn"].support
        if not _is_real(support):
            raise ValueError(
                f"latent site {name!r} has support {support}; the analysis needs real-valued latent sites. "
                "Sample an unconstrained value (e.g. a log-scale) and transform it deterministically."
            )
        if name not in guide_trace.nodes:
            raise ValueError(f"the guide does not sample the model's latent site {name!r}; it must sample all of them.")
        sites[name] = tuple(value.shape[1:])
    if target.latent_site not in sites:
        raise ValueError(
            f"the model has no latent site {target.latent_site!r} (its latent sites: {sorted(sites)}); "
            "pass latent_site= naming one of them."
        )
    target.sites = sites
    return sites


def _is_real(support: Any) -> bool:
    """Whether ``support`` is the real line (possibly per event, or a mixture's support thereof)."""
    while hasattr(support, "base_constraint"):  # independent(...), MixtureSameFamilyConstraint(...)
        support = support.base_constraint
    return support is torch.distributions.constraints.real


def _site_size(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape)) if shape else 1


def flatten_sites(
    values: Mapping[str, torch.Tensor], sites: Mapping[str, tuple[int, ...]], num: int, n: int
) -> torch.Tensor:
    """Concatenate per-site values ``{name: [num, n, *shape]}`` into ``[num, n, D_total]`` in site order."""
    return torch.cat([values[name].reshape(num, n, _site_size(shape)) for name, shape in sites.items()], -1)


def unflatten_sites(flat: torch.Tensor, sites: Mapping[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """Split ``[num, n, D_total]`` back into ``{name: [num, n, *shape]}`` (inverse of :func:`flatten_sites`)."""
    out, start = {}, 0
    for name, shape in sites.items():
        size = _site_size(shape)
        out[name] = flat[..., start : start + size].reshape(flat.shape[:-1] + shape)
        start += size
    if start != flat.shape[-1]:
        raise ValueError(
            f"z has {flat.shape[-1]} values per datapoint but the latent sites {dict(sites)} need {start}."
        )
    return out


def resolve_target(
    vae_or_model_guide: Any, *, latent_site: str | None = None, obs_site: str | None = None
) -> ModelTarget:
    """Normalise a :class:`~pyro_decomp.models.vae.VAE` or a ``(model, guide)`` pair to a :class:`ModelTarget`."""
    from ..models.vae import VAE

    if isinstance(vae_or_model_guide, ModelTarget):
        return vae_or_model_guide
    if isinstance(vae_or_model_guide, VAE):
        vae = vae_or_model_guide
        site = vae.latent_site if latent_site is None else latent_site
        if site != vae.latent_site:
            raise ValueError(f"latent_site={site!r} does not match the VAE's latent site {vae.latent_site!r}.")
        return ModelTarget(
            model=vae.model,
            guide=vae.guide,
            latent_site=site,
            obs_site=vae.likelihood.site if obs_site is None else obs_site,
            prior=vae.prior,
            modules=[vae],
            encoder=vae.encode,
        )
    if isinstance(vae_or_model_guide, (tuple, list)) and len(vae_or_model_guide) == 2:
        model, guide = vae_or_model_guide
        if not callable(model) or not callable(guide):
            raise TypeError("a (model, guide) pair must hold two callables (Pyro programs taking x).")
        modules = [
            owner
            for fn in (model, guide)
            for owner in (fn, getattr(fn, "__self__", None))
            if isinstance(owner, torch.nn.Module)
        ]
        return ModelTarget(
            model=model,
            guide=guide,
            latent_site="z" if latent_site is None else latent_site,
            obs_site="x" if obs_site is None else obs_site,
            prior=getattr(getattr(model, "__self__", model), "prior", None),
            modules=modules,
        )
    raise TypeError(
        "expected a pyro_decomp VAE or a (model, guide) pair of Pyro programs, "
        f"got {type(vae_or_model_guide).__name__}."
    )


def _check_x(x: Any, name: str = "x") -> torch.Tensor:
    if not torch.is_tensor(x):
        raise TypeError(f"{name} must be a torch.Tensor with the datapoints on axis 0, got {type(x).__name__}.")
    if x.dim() < 1 or x.shape[0] < 1:
        raise ValueError(f"{name} must hold at least one datapoint on axis 0, got shape {tuple(x.shape)}.")
    return x.detach()


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


def _obs_index(obs_index: Sequence[int] | None, n: int) -> np.ndarray:
    if obs_index is None:
        return np.arange(n)
    idx = np.asarray(obs_index)
    if idx.shape != (n,) or not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"obs_index must be {n} integers (one per datapoint in x), got {obs_index!r}.")
    if len(np.unique(idx)) != n:
        raise ValueError("obs_index must not repeat a datapoint index.")
    return idx


def _seeded(seed: int | None, device: torch.device) -> contextlib.AbstractContextManager[None]:
    """Fix torch's RNG for the block when ``seed`` is given, leaving the caller's stream untouched
    (every device's: :func:`pyro_decomp.train.seeded_torch_rng`)."""
    from ..train import seeded_torch_rng

    return seeded_torch_rng(seed)


@contextlib.contextmanager
def frozen_parameters(target: ModelTarget) -> Iterator[None]:
    """Freeze the trained model for analysis; restore everything afterwards.

    Sets ``requires_grad=False`` on the target's module and param-store parameters (NUTS and the local
    ELBO differentiate :math:`\\log p(x, z)` with respect to ``z`` only) and puts the modules in eval
    mode (dropout and batch norm act as in inference; this also keeps ``pyro.module`` from warning about
    frozen parameters).
    """
    tensors: dict[int, torch.Tensor] = {}
    modes: dict[int, tuple[torch.nn.Module, bool]] = {}
    for module in target.modules:
        for p in module.parameters():
            tensors[id(p)] = p
        for sub in module.modules():
            modes[id(sub)] = (sub, sub.training)
    for p in pyro.get_param_store().values():
        if p.is_leaf:
            tensors[id(p)] = p
    flags = {k: t.requires_grad for k, t in tensors.items()}
    try:
        for t in tensors.values():
            t.requires_grad_(False)
        for sub, _ in modes.values():
            sub.training = False
        with warnings.catch_warnings():
            # a hand-written model's pyro.module(...) of a module we cannot see (not an attribute of the
            # model or guide) warns that its frozen weights are not registered: freezing them is the point
            warnings.filterwarnings("ignore", message=".*not registered in the param store because requires_grad=False")
            yield
    finally:
        for k, t in tensors.items():
            t.requires_grad_(flags[k])
        for sub, training in modes.values():
            sub.training = training


def _max_plate_nesting(fn: Callable, x: torch.Tensor) -> int:
    with torch.no_grad(), poutine.block():
        trace = poutine.trace(fn).get_trace(x)
    dims = [
        -frame.dim
        for site in trace.nodes.values()
        if site["type"] == "sample" and not site_is_subsample(site)
        for frame in site["cond_indep_stack"]
        if frame.vectorized and frame.dim is not None
    ]
    return max(dims, default=0)


def _vectorised_trace(fn: Callable, x: torch.Tensor, num: int, nesting: int, data: Mapping | None = None):
    """One trace of ``fn(x)`` under an outer plate of ``num`` particles, optionally conditioned on ``data``."""
    with pyro.plate(_PARTICLES, num, dim=-nesting - 1):
        program = poutine.condition(fn, data=dict(data)) if data else fn
        return poutine.trace(program).get_trace(x)


def _site_log_prob(site: dict, num: int, n: int) -> torch.Tensor:
    lp = site["fn"].log_prob(site["value"])
    if lp.dim() == 0 or lp.shape[0] != num:
        lp = lp.expand((num,) + lp.shape[1:]) if lp.dim() else lp.expand(num)
    # whatever plates lie between the particle and data plates are summed; the data plate stays last
    lp = lp.reshape(num, -1)
    if lp.shape[1] != n:
        raise ValueError(
            f"site {site['name']!r} has log-probability shape {tuple(lp.shape)} after flattening; the analysis "
            f"needs one value per datapoint ({n}). Put every latent site inside the data plate."
        )
    return lp


def log_joint(
    target: ModelTarget, x: torch.Tensor, z: torch.Tensor, *, nesting: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """:math:`\\log p(z_i)` and :math:`\\log p_\\theta(x_i \\mid z_i)`, each ``[S, n]``.

    ``z: [S, n, D_total]`` holds every latent site of the model, flattened in site order (see
    :func:`latent_sites`; with a single site this is just that site, ``[S, n, D]``). ``log p(z_i)`` sums
    the log densities of all latent sites (e.g. :math:`\\log p(\\log s) + \\log p(z \\mid s)` for a
    hierarchical prior). Differentiable in ``z``.
    """
    num, n = z.shape[0], x.shape[0]
    sites = latent_sites(target, x)
    nesting = _max_plate_nesting(target.model, x) if nesting is None else nesting
    if target.enumerated:
        return _log_joint_enumerated(target, x, z, sites, nesting)
    trace = _vectorised_trace(target.model, x, num, nesting, unflatten_sites(z, sites))
    log_prior = z.new_zeros(num, n)
    log_lik = z.new_zeros(num, n)
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site) or site.get("infer", {}).get("_do_not_score"):
            continue
        if name in sites:
            log_prior = log_prior + _site_log_prob(site, num, n)
        elif not site["is_observed"]:
            raise ValueError(f"the model sampled a latent site {name!r} that its first run did not; it must be fixed.")
        else:
            log_lik = log_lik + _site_log_prob(site, num, n)
    return log_prior, log_lik


def _log_joint_enumerated(target, x, z, sites, nesting) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`log_joint` for a model with enumerated discrete sites, which are summed out exactly:
    :math:`\\log p(z) = \\log \\sum_c p(c)\\,p(z \\mid c)` and
    :math:`\\log p(x \\mid z) = \\log p(x, z) - \\log p(z)`."""
    num, n = z.shape[0], x.shape[0]
    with pyro.plate(_PARTICLES, num, dim=-nesting - 1):
        conditioned = poutine.condition(target.model, data=unflatten_sites(z, sites))
        program = poutine.enum(conditioned, first_available_dim=-nesting - 2)
        trace = poutine.trace(program).get_trace(x)
    prior_terms, all_terms = [], []
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site) or site.get("infer", {}).get("_do_not_score"):
            continue
        lp = site["fn"].log_prob(site["value"])
        all_terms.append(lp)
        if name in sites or name in target.enumerated:
            prior_terms.append(lp)

    def contract(terms: list[torch.Tensor]) -> torch.Tensor:
        # one datapoint's factors all share its enumeration dims (left of the particle dim): add, then sum out
        total = sum(terms)
        total = total.reshape(total.shape[: total.dim() - nesting - 1] + (num, -1))
        if total.shape[-1] != n:
            raise ValueError(
                f"the model's log-density has shape {tuple(total.shape)}; the analysis needs one value per datapoint "
                f"({n}). Put every site inside the data plate."
            )
        return total.reshape(-1, num, n).logsumexp(0)

    log_prior = contract(prior_terms)
    return log_prior, contract(all_terms) - log_prior


def sample_guide(
    target: ModelTarget, x: torch.Tensor, num_samples: int, *, nesting: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``num_samples`` draws from :math:`q(z \\mid x)` of all latent sites, flattened, and their :math:`\\log q`.

    Returns ``z: [S, n, D_total]`` (see :func:`log_joint`) and ``log_q: [S, n]``.
    """
    sites = latent_sites(target, x)
    nesting = _max_plate_nesting(target.guide, x) if nesting is None else nesting
    with torch.no_grad():
        trace = _vectorised_trace(target.guide, x, num_samples, nesting)
    n = x.shape[0]
    z = flatten_sites({name: trace.nodes[name]["value"] for name in sites}, sites, num_samples, n)
    with torch.no_grad():
        log_q = sum(_site_log_prob(trace.nodes[name], num_samples, n) for name in sites)
    return z, log_q


def _chunks(total: int, size: int) -> Iterator[int]:
    while total > 0:
        yield min(size, total)
        total -= size


def _obs_dims(obs_shape: tuple[int, ...]) -> list[str]:
    if len(obs_shape) == 1:
        return ["feature"]
    return [f"x_dim_{k}" for k in range(len(obs_shape))]


def _prior_constants(prior: Any, latent_dim: int) -> tuple[dict[str, np.ndarray], dict[str, list[str]], dict]:
    """``constant_data`` entries for the prior's parameters and buffers, with dims; plus attrs."""
    values: dict[str, np.ndarray] = {}
    dims: dict[str, list[str]] = {}
    attrs: dict[str, Any] = {}
    if prior is None:
        return values, dims, attrs
    attrs["prior_class"] = type(prior).__name__
    if isinstance(prior, torch.nn.Module):
        for name, tensor in prior.state_dict().items():
            key = name.removesuffix("_unconstrained")
            if key != name:
                # PyroParam: report the constrained value the model actually uses
                tensor = getattr(prior, key)
            values["prior_" + key.replace(".", "_")] = tensor.detach().cpu().double().numpy()
    variance = getattr(prior, "variance", None)
    if callable(variance):
        with torch.no_grad():
            values["prior_variance"] = variance().detach().cpu().double().numpy()
    for key in ("scale", "df", "gamma", "sigma0", "variance"):
        value = getattr(prior, key, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            values["prior_" + key] = np.asarray(float(value))
    for key, arr in values.items():
        if arr.ndim >= 1 and arr.shape[-1] == latent_dim:
            dims[key] = [f"{key}_dim_{k}" for k in range(arr.ndim - 1)] + ["latent"]
    return values, dims, attrs


def to_inference_data(
    vae_or_model_guide: Any,
    x: torch.Tensor,
    *,
    num_draws: int = 100,
    num_chains: int = 1,
    num_prior_draws: int | None = None,
    latent_site: str | None = None,
    obs_site: str | None = None,
    obs_index: Sequence[int] | None = None,
    constant_data: Mapping[str, Any] | None = None,
    chunk_size: int = 256,
    chunk_values: int = CHUNK_VALUES,
    max_predictive_values: int = MAX_PREDICTIVE_VALUES,
    random_seed: int | None = None,
) -> az.InferenceData:
    """The amortised posterior of a trained model on data ``x`` as :class:`arviz.InferenceData`.

    Groups and dims (``S = num_chains * num_draws`` guide draws, ``n = len(x)``):

    * ``posterior``: the latent site, ``(chain, draw, obs, latent)``, draws from :math:`q(z \\mid x)`
      via :class:`pyro.infer.Predictive` on the guide;
    * ``sample_stats``: ``log_q`` :math:`\\log q(z \\mid x)` and ``log_joint`` :math:`\\log p(x, z)`,
      ``(chain, draw, obs)`` - their difference is the log importance weight used for PSIS;
    * ``prior`` / ``prior_predictive``: the latent site and ``x`` drawn from the model, ``(chain, draw, obs, ...)``;
    * ``posterior_predictive``: ``x`` drawn from :math:`p_\\theta(x \\mid z)` at the posterior draws;
    * ``log_likelihood``: ``x`` = :math:`\\log p_\\theta(x_i \\mid z)` per datapoint, ``(chain, draw, obs)``;
    * ``observed_data``: ``x`` on ``(obs, *obs dims)``;
    * ``constant_data``: the prior's parameters (``prior_<name>``; see the module docstring) and any
      ``constant_data`` passed in.

    Coords: ``obs`` = ``obs_index`` (default ``0..n-1``), ``latent`` = ``0..D-1``.

    Memory is bounded for image data (thousands of values per datapoint), where the pixel-level
    groups would otherwise grow as draws x datapoints x pixels (~13 MB per 64x64 image at 200 draws):

    * the model and guide run on at most ``chunk_size`` draws x a block of datapoints holding at most
      ``chunk_values`` observed values (draws x datapoints x values per datapoint) at a time, all under
      ``torch.no_grad()``; tabular data (a few values per datapoint) stays one block, as before;
    * ``prior_predictive`` and ``posterior_predictive`` keep the first ``k`` draws of each chain, ``k``
      the most draws whose ``chains x k x n x values per datapoint`` fit in ``max_predictive_values``
      (all draws when they fit; the group is left out when not even one draw per chain fits). The group's
      ``draw`` dim then differs from the posterior's; the ``predictive_draws`` /
      ``prior_predictive_draws`` attrs say how many were kept. Draws are i.i.d. across ``draw``, so the
      first ``k`` are an unbiased subsample.
    * ``log_likelihood`` is always complete: per datapoint, summed over its pixels, ``(chain, draw,
      obs)`` - exactly what PSIS-LOO (:func:`arviz.loo`) needs, and a fixed 8 bytes per draw and datapoint.

    >>> import torch
    >>> from pyro_decomp.models import VAE, IsotropicGaussianPrior, GaussianLikelihood
    >>> from pyro_decomp.models.networks import PinwheelEncoder, PinwheelDecoder
    >>> vae = VAE(IsotropicGaussianPrior(2), PinwheelDecoder(), GaussianLikelihood(), PinwheelEncoder())
    >>> idata = to_inference_data(vae, torch.randn(5, 2), num_draws=10)
    >>> idata.posterior["z"].dims
    ('chain', 'draw', 'obs', 'latent')
    """
    target = resolve_target(vae_or_model_guide, latent_site=latent_site, obs_site=obs_site)
    x = _check_x(x)
    num_draws = _positive_int("num_draws", num_draws)
    num_chains = _positive_int("num_chains", num_chains)
    num_prior_draws = num_draws if num_prior_draws is None else _positive_int("num_prior_draws", num_prior_draws)
    chunk_size = _positive_int("chunk_size", chunk_size)
    chunk_values = _positive_int("chunk_values", chunk_values)
    if isinstance(max_predictive_values, bool) or not isinstance(max_predictive_values, int) or max_predictive_values < 0:
        raise ValueError(f"max_predictive_values must be a non-negative integer, got {max_predictive_values!r}.")
    n, obs_shape = x.shape[0], tuple(x.shape[1:])
    index = _obs_index(obs_index, n)
    total = num_chains * num_draws
    obs_size = _site_size(obs_shape)
    # datapoints per block: one block unless chunk_size draws of all of them exceed chunk_values values
    block = max(1, min(n, chunk_values // (chunk_size * obs_size)))
    chunk_size = max(1, min(chunk_size, chunk_values // (block * obs_size)))
    # draws per chain kept in the pixel-level predictive groups
    kept = min(num_draws, max_predictive_values // (num_chains * n * obs_size))
    kept_prior = min(num_prior_draws, max_predictive_values // (num_chains * n * obs_size))

    sites = latent_sites(target, x)
    zs, log_qs, xs_pred, log_liks, log_priors = [], [], [], [], []
    prior_zs, prior_xs = [], []
    with _seeded(random_seed, x.device), torch.no_grad(), frozen_parameters(target):
        for lo in range(0, n, block):
            xb = x[lo : lo + block]
            nb = xb.shape[0]
            zs_b, log_qs_b, xs_b, log_liks_b, log_priors_b = [], [], [], [], []
            start = 0
            for size in _chunks(total, chunk_size):
                draws = Predictive(target.guide, num_samples=size, return_sites=tuple(sites), parallel=True)(xb)
                z = flatten_sites(draws, sites, size, nb)
                _, log_q = _guide_log_q(target, xb, z)
                predictive = Predictive(target.model, posterior_samples=unflatten_sites(z, sites), parallel=True)
                trace = predictive.get_vectorized_trace(xb)
                obs_node = trace.nodes[target.obs_site]
                # the model observes x, so Predictive's value at the site is x itself: draw from the likelihood
                x_pred = obs_node["fn"].sample().reshape(size, nb, *obs_shape)
                keep = _kept_rows(start, size, num_draws, kept, x.device)
                if keep is not None:
                    xs_b.append(x_pred[keep])
                log_liks_b.append(obs_node["fn"].log_prob(xb).reshape(size, nb))
                if target.enumerated:
                    log_priors_b.append(log_joint(target, xb, z)[0])  # sums out enumerated sites
                else:
                    # the model trace above already holds the prior at z: no second decoder pass
                    log_priors_b.append(sum(_site_log_prob(trace.nodes[name], size, nb) for name in sites))
                zs_b.append(z)
                log_qs_b.append(log_q)
                start += size
                del draws, trace, obs_node, predictive, x_pred
            zs.append(torch.cat(zs_b))
            log_qs.append(torch.cat(log_qs_b))
            log_liks.append(torch.cat(log_liks_b))
            log_priors.append(torch.cat(log_priors_b))
            if xs_b:
                xs_pred.append(torch.cat(xs_b))
            prior_zs_b, prior_xs_b = [], []
            start = 0
            for size in _chunks(num_chains * num_prior_draws, chunk_size):
                trace = Predictive(target.model, num_samples=size, parallel=True).get_vectorized_trace(xb)
                prior_zs_b.append(flatten_sites({k: trace.nodes[k]["value"] for k in sites}, sites, size, nb))
                x_prior = trace.nodes[target.obs_site]["fn"].sample().reshape(size, nb, *obs_shape)
                keep = _kept_rows(start, size, num_prior_draws, kept_prior, x.device)
                if keep is not None:
                    prior_xs_b.append(x_prior[keep])
                start += size
                del trace, x_prior
            prior_zs.append(torch.cat(prior_zs_b))
            if prior_xs_b:
                prior_xs.append(torch.cat(prior_xs_b))
    # blocks of datapoints are joined along the obs axis (axis 1 of [draws, obs, ...])
    zs, log_qs, log_liks, log_priors, prior_zs = (
        [torch.cat(parts, 1)] for parts in (zs, log_qs, log_liks, log_priors, prior_zs)
    )
    xs_pred = [torch.cat(xs_pred, 1)] if xs_pred else []
    prior_xs = [torch.cat(prior_xs, 1)] if prior_xs else []

    def stack(parts: list[torch.Tensor], draws: int) -> np.ndarray:
        arr = torch.cat(parts).detach().cpu().double().numpy()
        return arr.reshape(num_chains, draws, *arr.shape[1:])

    def per_site(parts: list[torch.Tensor], draws: int) -> dict[str, np.ndarray]:
        flat = torch.cat(parts)
        return {
            name: value.detach().cpu().double().numpy().reshape(num_chains, draws, n, *sites[name])
            for name, value in unflatten_sites(flat, sites).items()
        }

    posterior = per_site(zs, num_draws)
    site, obs = target.latent_site, target.obs_site
    latent_dim = _site_size(sites[site])
    x_dims = _obs_dims(obs_shape)
    coords = {"obs": index, "latent": np.arange(latent_dim)}
    dims = {**_site_dims(sites, site), obs: ["obs", *x_dims], "log_q": ["obs"], "log_joint": ["obs"]}
    consts, const_dims, attrs = _prior_constants(target.prior, latent_dim)
    for key, value in (constant_data or {}).items():
        consts[str(key)] = np.asarray(value.detach().cpu() if torch.is_tensor(value) else value)
    dims.update(const_dims)
    log_lik = stack(log_liks, num_draws)
    idata = az.from_dict(
        posterior=posterior,
        sample_stats={"log_q": stack(log_qs, num_draws), "log_joint": stack(log_priors, num_draws) + log_lik},
        prior=per_site(prior_zs, num_prior_draws),
        prior_predictive={obs: stack(prior_xs, kept_prior)} if kept_prior else None,
        posterior_predictive={obs: stack(xs_pred, kept)} if kept else None,
        log_likelihood={obs: log_lik},
        observed_data={obs: x.cpu().double().numpy()},
        constant_data=consts or None,
        coords=coords,
        dims=dims,
    )
    # from_dict puts attrs on some groups only; every group gets them so any one file part is self-describing
    for group in idata.groups():
        getattr(idata, group).attrs.update(
            {
                "inference": "amortised guide q(z|x)",
                "latent_site": site,
                "latent_sites": ",".join(sites),
                "obs_site": obs,
                "predictive_draws": int(kept),
                "prior_predictive_draws": int(kept_prior),
                **attrs,
            }
        )
    return idata


def _kept_rows(start: int, size: int, num_draws: int, kept: int, device: torch.device) -> torch.Tensor | slice | None:
    """Rows of a chunk of flat draws ``start .. start+size`` (chain-major, ``num_draws`` per chain) whose
    draw index within the chain is below ``kept``; ``None`` when there are none, ``slice(None)`` for all."""
    if kept == 0:
        return None
    rows = torch.arange(start, start + size, device=device)
    keep = (rows % num_draws < kept).nonzero().reshape(-1)
    if keep.numel() == 0:
        return None
    return slice(None) if keep.numel() == size else keep


def _site_dims(sites: Mapping[str, tuple[int, ...]], primary: str) -> dict[str, list[str]]:
    """ArviZ dims of each latent site: the primary one on ``(obs, latent)``, others on ``(obs, <name>_dim_k...)``."""
    dims = {}
    for name, shape in sites.items():
        if name == primary and len(shape) == 1:
            dims[name] = ["obs", "latent"]
        else:
            dims[name] = ["obs"] + [f"{name}_dim_{k}" for k in range(len(shape))]
    return dims


def _guide_log_q(target: ModelTarget, x: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:math:`\\log q(z \\mid x)` of given flat draws ``z: [S, n, D_total]`` by replaying the guide, ``[S, n]``."""
    num, n = z.shape[0], x.shape[0]
    sites = latent_sites(target, x)
    nesting = _max_plate_nesting(target.guide, x)
    trace = _vectorised_trace(target.guide, x, num, nesting, unflatten_sites(z, sites))
    return z, sum(_site_log_prob(trace.nodes[name], num, n) for name in sites)


def sample_posterior_nuts(
    vae_or_model_guide: Any,
    x: torch.Tensor,
    *,
    num_samples: int = 500,
    warmup_steps: int = 300,
    num_chains: int = 2,
    obs_index: Sequence[int] | None = None,
    latent_site: str | None = None,
    obs_site: str | None = None,
    init: str = "encoder",
    target_accept_prob: float = 0.8,
    max_tree_depth: int = 10,
    random_seed: int | None = None,
) -> az.InferenceData:
    """NUTS draws from the exact posterior :math:`p_\\theta(z \\mid x) \\propto p(z)\\,p_\\theta(x \\mid z)`, decoder frozen.

    The model is conditioned on the chosen datapoints ``x: [n, *obs_shape]`` (take a handful: NUTS
    samples all ``n * D`` coordinates jointly, and they are independent given the decoder). All
    parameters of the model are set ``requires_grad=False`` during sampling and restored afterwards.
    Chains run one after another (robust on CPU; no multiprocessing), chain ``c`` seeded with
    ``random_seed + c`` and started at a draw from the encoder (``init="encoder"``) or the prior
    (``init="prior"``), then stacked.

    Returns InferenceData with ``posterior`` (latent site on ``(chain, draw, obs, latent)``),
    ``sample_stats`` (``diverging`` ``(chain, draw)`` and ``lp`` = :math:`\\log p(x, z)` summed over the
    datapoints) and ``observed_data``. See :func:`nuts_diagnostics` for R-hat, ESS and divergences.
    """
    target = resolve_target(vae_or_model_guide, latent_site=latent_site, obs_site=obs_site)
    x = _check_x(x)
    num_samples = _positive_int("num_samples", num_samples)
    num_chains = _positive_int("num_chains", num_chains)
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise ValueError(f"warmup_steps must be a non-negative integer, got {warmup_steps!r}.")
    if init not in ("encoder", "prior"):
        raise ValueError(f"init must be 'encoder' or 'prior', got {init!r}.")
    if not 0.0 < float(target_accept_prob) < 1.0:
        raise ValueError(f"target_accept_prob must lie in (0, 1), got {target_accept_prob!r}.")
    n = x.shape[0]
    index = _obs_index(obs_index, n)
    site = target.latent_site
    sites = latent_sites(target, x)

    chains, diverging, lps = [], [], []
    with frozen_parameters(target):
        for chain in range(num_chains):
            seed = None if random_seed is None else int(random_seed) + chain
            with _seeded(seed, x.device):
                with torch.no_grad():
                    if init == "encoder":
                        z0 = sample_guide(target, x, 1)[0]
                    else:
                        draws = Predictive(target.model, num_samples=1, return_sites=tuple(sites), parallel=True)(x)
                        z0 = flatten_sites(draws, sites, 1, n)
                # every latent site starts at the same joint draw
                values = {name: value[0] for name, value in unflatten_sites(z0, sites).items()}
                kernel = NUTS(
                    target.model,
                    target_accept_prob=float(target_accept_prob),
                    max_tree_depth=int(max_tree_depth),
                    init_strategy=init_to_value(values=values),
                    jit_compile=False,
                    # enumerated discrete sites are summed out by Pyro's HMC, which needs the plate depth
                    max_plate_nesting=_max_plate_nesting(target.model, x) if target.enumerated else None,
                )
                mcmc = MCMC(kernel, num_samples=num_samples, warmup_steps=warmup_steps, disable_progbar=True)
                mcmc.run(x)
            samples = mcmc.get_samples()
            z = flatten_sites(samples, sites, num_samples, n)
            flags = np.zeros(num_samples, dtype=bool)
            idx = [i for i in mcmc.diagnostics().get("divergences", {}).get("chain 0", []) if 0 <= i < num_samples]
            flags[idx] = True
            with torch.no_grad():
                log_prior, log_lik = log_joint(target, x, z)
            chains.append(z.detach())
            diverging.append(flags)
            lps.append((log_prior + log_lik).sum(-1).cpu().double().numpy())

    posterior = {
        name: torch.stack([unflatten_sites(c, sites)[name] for c in chains]).cpu().double().numpy()
        for name in sites
    }
    return az.from_dict(
        posterior=posterior,
        sample_stats={"diverging": np.stack(diverging), "lp": np.stack(lps)},
        observed_data={target.obs_site: x.cpu().double().numpy()},
        coords={"obs": index, "latent": np.arange(_site_size(sites[site]))},
        dims={**_site_dims(sites, site), target.obs_site: ["obs", *_obs_dims(tuple(x.shape[1:]))]},
        attrs={
            "inference": "NUTS on p(z|x), decoder frozen",
            "latent_site": site,
            "latent_sites": ",".join(sites),
            "obs_site": target.obs_site,
            "num_warmup": warmup_steps,
            "target_accept_prob": float(target_accept_prob),
        },
    )


def nuts_diagnostics(idata: az.InferenceData, *, var_name: str | None = None) -> dict[str, Any]:
    """R-hat, bulk ESS and divergences of a NUTS InferenceData.

    Returns ``{"summary": az.summary(...) DataFrame (mean, sd, hdi, ess_bulk, ess_tail, r_hat),
    "max_r_hat": float, "min_ess_bulk": float, "divergences": int}``.
    """
    if not isinstance(idata, az.InferenceData) or "posterior" not in idata.groups():
        raise TypeError("idata must be an arviz.InferenceData with a posterior group (from sample_posterior_nuts).")
    # every latent site of the posterior unless one is named
    var_names = [var_name] if var_name else list(idata.posterior.data_vars)
    summary = az.summary(idata, var_names=var_names)
    divergences = 0
    if "sample_stats" in idata.groups() and "diverging" in idata.sample_stats:
        divergences = int(idata.sample_stats["diverging"].values.sum())
    return {
        "summary": summary,
        "max_r_hat": float(summary["r_hat"].max()),
        "min_ess_bulk": float(summary["ess_bulk"].min()),
        "divergences": divergences,
    }


def save_inference_data(idata: az.InferenceData, path: str | os.PathLike) -> Path:
    """Write ``idata`` to netCDF at ``path`` atomically (temporary file, then rename). Returns the path."""
    if not isinstance(idata, az.InferenceData):
        raise TypeError(f"idata must be an arviz.InferenceData, got {type(idata).__name__}.")
    path = Path(path)
    if path.suffix != ".nc":
        raise ValueError(f"path must end in .nc (netCDF), got {str(path)!r}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    # a per-process name beside the target rather than mkstemp, whose 0600 mode would make the netCDF
    # unreadable to the group (the run's other files follow the umask)
    tmp = str(path.with_name(f".{path.stem}.{os.getpid()}.tmp.nc"))
    try:
        idata.to_netcdf(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_inference_data(path: str | os.PathLike) -> az.InferenceData:
    """Read an InferenceData written by :func:`save_inference_data`.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for one that is not a readable
    ArviZ netCDF file (truncated, corrupt, or another format).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no InferenceData file at {str(path)!r}; run the analysis first to create it.")
    try:
        # arviz reads eagerly by default, so a corrupt file fails here rather than on first access
        idata = az.from_netcdf(path)
    except Exception as err:  # netCDF4/h5py raise OSError, KeyError, ValueError... for bad files
        raise ValueError(
            f"{str(path)!r} is not a readable ArviZ netCDF file ({type(err).__name__}: {err}); "
            "it may be truncated or corrupt - re-run the analysis to regenerate it."
        ) from err
    if not idata.groups():
        raise ValueError(f"{str(path)!r} holds no InferenceData groups; re-run the analysis to regenerate it.")
    return idata
