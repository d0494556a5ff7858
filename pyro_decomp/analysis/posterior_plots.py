"""Plots comparing the encoder with the exact posterior and the aggregate posterior with the prior (SPEC §8).

Each function takes its data first, then options; it draws into the given ``ax``/``axes`` (or a new
figure) and returns the axes. Nothing here selects a backend: scripts and :func:`~pyro_decomp.analysis.analyse`
draw on :class:`matplotlib.figure.Figure` objects (Agg canvas), so no display is needed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["plot_aggregate_marginals", "plot_encoder_vs_nuts", "plot_gaps", "prior_marginal_density"]


def _draws(data: Any, obs: int | None, var_name: str, name: str) -> np.ndarray:
    """``[S, D]`` draws from an array or the posterior of an InferenceData (one datapoint, or all when ``obs`` is None)."""
    if hasattr(data, "posterior"):
        post = data.posterior[var_name]
        if obs is not None:
            if obs not in post.coords["obs"].values:
                raise ValueError(f"obs={obs} is not among {name}'s obs coords {post.coords['obs'].values.tolist()}.")
            post = post.sel(obs=obs)
            return post.stack(sample=("chain", "draw")).transpose("sample", "latent").values
        return post.stack(sample=("chain", "draw", "obs")).transpose("sample", "latent").values
    arr = data.detach().cpu().numpy() if torch.is_tensor(data) else np.asarray(data, dtype=float)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be draws of shape [num_draws, latent] or an InferenceData, got {arr.shape}.")
    return arr


def _new_axes(nrows: int, ncols: int, figsize: tuple[float, float] | None):
    import matplotlib.pyplot as plt

    _, axes = plt.subplots(nrows, ncols, figsize=figsize or (2.6 * ncols, 2.6 * nrows), squeeze=False)
    return axes


def plot_encoder_vs_nuts(
    encoder_draws: Any,
    nuts_draws: Any,
    *,
    obs: int | None = None,
    var_name: str = "z",
    max_latents: int = 4,
    axes: np.ndarray | None = None,
    figsize: tuple[float, float] | None = None,
    labels: tuple[str, str] = ("encoder q(z|x)", "NUTS p(z|x)"),
) -> np.ndarray:
    """Pair plot of encoder draws against NUTS draws for one datapoint.

    ``encoder_draws`` / ``nuts_draws``: ``[S, D]`` arrays, or InferenceData (from
    :func:`~pyro_decomp.analysis.to_inference_data` / :func:`~pyro_decomp.analysis.sample_posterior_nuts`)
    together with ``obs`` (an ``obs`` coord). Diagonal: histograms; below: scatter. The first
    ``max_latents`` dimensions are shown. ``axes``: a ``[k, k]`` array of axes. Returns the axes.
    """
    if hasattr(encoder_draws, "posterior") or hasattr(nuts_draws, "posterior"):
        if obs is None:
            raise ValueError("pass obs= (a datapoint's obs coord) when giving InferenceData.")
    q = _draws(encoder_draws, obs, var_name, "encoder_draws")
    p = _draws(nuts_draws, obs, var_name, "nuts_draws")
    if q.shape[1] != p.shape[1]:
        raise ValueError(f"encoder and NUTS draws have different latent sizes ({q.shape[1]} vs {p.shape[1]}).")
    k = min(q.shape[1], int(max_latents))
    if axes is None:
        axes = _new_axes(k, k, figsize)
    axes = np.asarray(axes).reshape(k, k) if np.size(axes) == k * k else None
    if axes is None:
        raise ValueError(f"axes must hold {k}x{k} axes for {k} latent dimensions.")
    for i in range(k):
        for j in range(k):
            ax = axes[i, j]
            if i == j:
                bins = np.histogram_bin_edges(np.concatenate([q[:, i], p[:, i]]), bins=30)
                ax.hist(p[:, i], bins=bins, density=True, alpha=0.5, color="C0", label=labels[1])
                ax.hist(q[:, i], bins=bins, density=True, histtype="step", color="C1", label=labels[0])
            elif i > j:
                ax.scatter(p[:, j], p[:, i], s=3, alpha=0.3, color="C0", label=labels[1])
                ax.scatter(q[:, j], q[:, i], s=3, alpha=0.3, color="C1", label=labels[0])
            else:
                ax.set_visible(False)
            if i == k - 1:
                ax.set_xlabel(f"z{j}")
            if j == 0 and i > 0:
                ax.set_ylabel(f"z{i}")
    axes[0, 0].legend(fontsize="small")
    return axes


def prior_marginal_density(prior: Any, grid: np.ndarray, *, num_samples: int = 20000) -> np.ndarray:
    """Marginal densities ``[G, D]`` of a prior on ``grid: [G]``, per latent dimension.

    Exact for independent priors (``Independent`` of per-dimension distributions: Gaussian, Student-t,
    sparse mixture) and for Gaussian mixtures with diagonal components; otherwise a Gaussian KDE of
    ``num_samples`` prior draws.
    """
    import pyro.distributions as dist

    d = prior.distribution() if hasattr(prior, "distribution") and callable(prior.distribution) else prior
    g = torch.as_tensor(np.asarray(grid, dtype=float), dtype=torch.get_default_dtype())
    with torch.no_grad():
        if isinstance(d, torch.distributions.Independent) and d.reinterpreted_batch_ndims == 1:
            return d.base_dist.log_prob(g[:, None]).exp().cpu().double().numpy()
        from ..models.priors import IsotropicGaussianMixture

        if isinstance(d, torch.distributions.MixtureSameFamily | IsotropicGaussianMixture):
            comp = d.component_distribution
            if isinstance(comp, torch.distributions.Independent) and comp.reinterpreted_batch_ndims == 1:
                # p(z_d) = sum_c pi_c p_c(z_d) for diagonal components: comp batch [C], base batch [C, D]
                log_pc = comp.base_dist.log_prob(g[:, None, None])  # [G, C, D]
                log_pi = d.mixture_distribution.logits.log_softmax(-1)[None, :, None]
                return torch.logsumexp(log_pc + log_pi, 1).exp().cpu().double().numpy()
        if not isinstance(d, dist.Distribution | torch.distributions.Distribution):
            raise TypeError(f"prior must be a pyro_decomp Prior or a torch distribution, got {type(prior).__name__}.")
        samples = d.sample((int(num_samples),)).cpu().double().numpy()
    from scipy.stats import gaussian_kde

    return np.stack([gaussian_kde(samples[:, k])(np.asarray(grid)) for k in range(samples.shape[1])], -1)


def plot_aggregate_marginals(
    codes: Any,
    prior: Any,
    *,
    var_name: str = "z",
    bins: int = 50,
    axes: Sequence[Any] | np.ndarray | None = None,
    figsize: tuple[float, float] | None = None,
) -> np.ndarray:
    """Histogram of each aggregate-posterior marginal :math:`q(z_d) = \\frac1N \\sum_n q(z_d \\mid x_n)` against the prior density.

    ``codes``: draws ``[S, D]`` (e.g. encoder draws pooled over datapoints) or an InferenceData whose
    posterior is pooled over chain, draw and obs. ``prior``: a :class:`~pyro_decomp.models.priors.Prior`
    or a torch distribution with ``event_shape == [D]``. ``axes``: ``D`` axes. Returns the axes.
    """
    z = _draws(codes, None, var_name, "codes")
    dim = z.shape[1]
    if axes is None:
        axes = _new_axes(1, dim, figsize)
    axes = np.asarray(axes).reshape(-1)
    if axes.size != dim:
        raise ValueError(f"axes must hold one axis per latent dimension ({dim}), got {axes.size}.")
    lo, hi = np.quantile(z, [0.001, 0.999])
    lo, hi = min(lo, -3.0), max(hi, 3.0)
    grid = np.linspace(lo, hi, 400)
    density = prior_marginal_density(prior, grid)
    for k, ax in enumerate(axes):
        ax.hist(z[:, k], bins=bins, range=(lo, hi), density=True, alpha=0.6, color="C0", label="aggregate q(z)")
        ax.plot(grid, density[:, k], color="C3", label="prior p(z)")
        ax.set_xlabel(f"z{k}")
    axes[0].legend(fontsize="small")
    return axes


def plot_gaps(report: Mapping[str, Any], *, ax: Any = None, figsize: tuple[float, float] | None = None) -> Any:
    """Stacked bars of the approximation and amortisation gaps per datapoint (from :func:`~pyro_decomp.analysis.amortisation_report`).

    The bar height is the inference gap :math:`\\log p(x) - \\mathcal L_{\\text{amortised}}`. Returns the axes.
    """
    rows = report.get("datapoints") if isinstance(report, Mapping) else None
    if not rows:
        raise ValueError("report must be the dict returned by amortisation_report (with a 'datapoints' list).")
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=figsize or (max(4.0, 0.5 * len(rows)), 3.0))
    pos = np.arange(len(rows))
    approx = np.array([r["approximation_gap"] for r in rows])
    amort = np.array([r["amortisation_gap"] for r in rows])
    ax.bar(pos, approx, color="C0", label="approximation gap")
    ax.bar(pos, amort, bottom=approx, color="C1", label="amortisation gap")
    ax.set_xticks(pos, [str(r["obs"]) for r in rows])
    ax.set_xlabel("datapoint")
    ax.set_ylabel("nats")
    ax.axhline(0.0, color="k", lw=0.5)
    ax.legend(fontsize="small")
    return ax
