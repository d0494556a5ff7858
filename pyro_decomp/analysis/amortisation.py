"""The amortisation gap: how far the encoder's :math:`q_\\phi(z \\mid x)` is from what the model allows (SPEC §8).

For each datapoint the report holds (Cremer, Li & Duvenaud 2018, "Inference suboptimality in VAEs"):

.. math::

    \\underbrace{\\log p(x) - \\mathcal L_{\\text{amortised}}}_{\\text{inference gap}}
    = \\underbrace{\\log p(x) - \\mathcal L_{\\text{local}}}_{\\text{approximation gap}}
    + \\underbrace{\\mathcal L_{\\text{local}} - \\mathcal L_{\\text{amortised}}}_{\\text{amortisation gap}}

* :math:`\\mathcal L_{\\text{amortised}} = \\mathbb E_{q_\\phi(z|x)}[\\log p(x,z) - \\log q_\\phi(z|x)]`, Monte Carlo
  with ``num_samples`` draws;
* :math:`\\mathcal L_{\\text{local}}`: the same bound for a diagonal Gaussian :math:`\\mathcal N(m_i, \\mathrm{diag}\\,s_i^2)`
  over *all* the model's latent sites of datapoint :math:`i` (concatenated, e.g. ``(log_scale, z)`` for
  a hierarchical prior; enumerated discrete sites are summed out), optimised *for this datapoint alone*
  by Adam (all datapoints at once, vectorised),
  warm-started from the encoder, with the "sticking the landing" gradient (Roeder et al. 2017: the
  score term of :math:`\\log q` is dropped, so the gradient is exactly zero once :math:`q` equals the
  posterior) and evaluated afterwards on ``num_samples`` fresh draws;
* :math:`\\log p(x)`: the IWAE estimates :math:`\\log \\frac1K \\sum_k p(x,z_k)/q(z_k|x)` with ``num_samples``
  draws from the encoder (``log_px_iwae``) and from the local Gaussian (``log_px_iwae_local``) are both
  reported, and ``log_px`` is one estimator that uses both sample sets: multiple importance sampling
  with the balance heuristic (Veach & Guibas 1995),

  .. math::

      \\hat p(x) = \\frac{1}{2K} \\sum_{z \\in \\{z^{q}_k\\} \\cup \\{z^{\\text{local}}_k\\}}
      \\frac{p(x, z)}{\\tfrac12 q_\\phi(z|x) + \\tfrac12 q_{\\text{local}}(z)},

  unbiased for :math:`p(x)` (so :math:`\\log \\hat p` is a stochastic lower bound, like IWAE) and never
  much worse than the better of the two proposals, since each weight is at most twice that proposal's
  own. Taking the larger of two estimates instead would bias :math:`\\log p(x)` upwards;
* nothing is clamped: a local optimisation that ends *below* the encoder's ELBO (too few steps, too
  large a learning rate) shows as a negative ``amortisation_gap``, and when it is below by more than
  two standard errors of the paired difference (``amortisation_gap_se``, from the common random numbers)
  the datapoint gets ``"local_worse_than_encoder": true`` and the report a line in ``"warnings"``;
* PSIS :math:`\\hat k` of the same importance weights (:func:`arviz.psislw`; below 0.5 the weights are
  reliable, above 0.7 the encoder is a poor proposal for the posterior);
* with NUTS draws of :math:`p(z \\mid x)` (:func:`~pyro_decomp.analysis.arviz.sample_posterior_nuts`):
  the **2-Wasserstein distance between Gaussians fitted (mean and full covariance) to the encoder draws
  and to the NUTS draws**,

  .. math:: W_2^2 = \\lVert m_q - m_p \\rVert^2 + \\mathrm{tr}\\big(S_q + S_p - 2 (S_p^{1/2} S_q S_p^{1/2})^{1/2}\\big),

  the same for the locally optimised Gaussian, and the coverage of the encoder's central credible
  intervals: the fraction of NUTS draws inside the encoder's per-dimension central interval of each
  level (empirical quantiles of the encoder draws), averaged over latent dimensions - a calibrated
  encoder covers about ``level``.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyro.distributions as dist
import torch

from .arviz import (
    CHUNK_VALUES,
    ModelTarget,
    _check_x,
    _guide_log_q,
    _max_plate_nesting,
    _obs_index,
    _positive_int,
    _seeded,
    az,
    frozen_parameters,
    latent_sites,
    log_joint,
    nuts_diagnostics,
    resolve_target,
    sample_guide,
    sample_posterior_nuts,
    save_inference_data,
    to_inference_data,
)

__all__ = [
    "amortisation_report",
    "analyse",
    "analyse_run",
    "fit_local_gaussians",
    "gaussian_w2",
    "save_report",
]

REPORT_FILE = "amortisation.json"


def _log_joint_chunked(target: ModelTarget, x: torch.Tensor, z: torch.Tensor, nesting: int, chunk: int) -> torch.Tensor:
    # at most CHUNK_VALUES observed values per model call: image data (4096 pixels a datapoint) would
    # otherwise run the decoder on chunk x n images at once (GBs of conv activations)
    per_draw = x.numel()
    chunk = max(1, min(chunk, CHUNK_VALUES // max(per_draw, 1)))
    parts = []
    for start in range(0, z.shape[0], chunk):
        log_prior, log_lik = log_joint(target, x, z[start : start + chunk], nesting=nesting)
        parts.append(log_prior + log_lik)
    return torch.cat(parts)


def fit_local_gaussians(
    vae_or_model_guide: Any,
    x: torch.Tensor,
    loc: torch.Tensor,
    scale: torch.Tensor,
    *,
    num_steps: int = 300,
    lr: float = 0.05,
    num_particles: int = 16,
    latent_site: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-datapoint diagonal Gaussians maximising each datapoint's ELBO, the decoder frozen.

    ``loc, scale: [n, D_total]`` are the warm start over all latent sites flattened (see
    :func:`~pyro_decomp.analysis.arviz.latent_sites`; usually the encoder's output); returns the optimised
    ``(loc, scale)``. The objective is :math:`\\sum_i \\mathbb E_{q_i}[\\log p(x_i, z) - \\log q_i(z)]`
    - a sum of independent terms, so one Adam run optimises every datapoint's parameters separately.
    Gradients use the "sticking the landing" estimator (Roeder et al. 2017).
    """
    target = resolve_target(vae_or_model_guide, latent_site=latent_site)
    x = _check_x(x)
    num_steps = _positive_int("num_steps", num_steps)
    num_particles = _positive_int("num_particles", num_particles)
    if loc.shape != scale.shape or loc.dim() != 2 or loc.shape[0] != x.shape[0]:
        raise ValueError(
            f"loc and scale must both be [n, D] with n={x.shape[0]} datapoints, got {tuple(loc.shape)} and "
            f"{tuple(scale.shape)}."
        )
    if not (scale > 0).all():
        raise ValueError("scale must be positive.")
    loc = loc.detach().clone().requires_grad_(True)
    log_scale = scale.detach().log().clone().requires_grad_(True)
    optim = torch.optim.Adam([loc, log_scale], lr=float(lr))
    with frozen_parameters(target):
        nesting = _max_plate_nesting(target.model, x)
        for _ in range(num_steps):
            optim.zero_grad()
            s = log_scale.exp()
            z = loc + s * torch.randn((num_particles,) + tuple(loc.shape), dtype=loc.dtype, device=loc.device)
            # sticking the landing: log q with detached parameters keeps only the path derivative
            log_q = dist.Normal(loc.detach(), s.detach()).log_prob(z).sum(-1)
            log_prior, log_lik = log_joint(target, x, z, nesting=nesting)
            loss = -(log_prior + log_lik - log_q).mean(0).sum()
            loss.backward()
            optim.step()
    return loc.detach(), log_scale.detach().exp()


def gaussian_w2(loc_a: np.ndarray, cov_a: np.ndarray, loc_b: np.ndarray, cov_b: np.ndarray) -> float:
    """2-Wasserstein distance between :math:`\\mathcal N(m_a, S_a)` and :math:`\\mathcal N(m_b, S_b)` (closed form)."""

    def sqrtm(mat: np.ndarray) -> np.ndarray:
        vals, vecs = np.linalg.eigh((mat + mat.T) / 2)
        return (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T

    root_b = sqrtm(cov_b)
    cross = sqrtm(root_b @ cov_a @ root_b)
    sq = float(np.sum((loc_a - loc_b) ** 2) + np.trace(cov_a + cov_b - 2 * cross))
    return math.sqrt(max(sq, 0.0))


def _fit(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of ``samples: [S, D]``."""
    return samples.mean(0), np.atleast_2d(np.cov(samples, rowvar=False))


def _psis_khat(log_w: np.ndarray) -> np.ndarray:
    """PSIS k-hat per row of ``log_w: [n, K]``."""
    khat = np.empty(log_w.shape[0])
    for i, row in enumerate(log_w):
        if np.ptp(row) < 1e-9 * max(1.0, abs(row.mean())):
            # constant weights (q equals the posterior): no tail at all, the best possible proposal
            khat[i] = -math.inf
            continue
        with warnings.catch_warnings():
            # the generalised-Pareto fit takes logs of tiny tail spacings; the estimate itself is fine
            warnings.simplefilter("ignore", RuntimeWarning)
            _, k = az.psislw(row[None, :], reff=1.0)
        khat[i] = float(np.asarray(k).reshape(-1)[0])
    return khat


def _json_float(value: float) -> float | str:
    value = float(value)
    return value if math.isfinite(value) else ("inf" if value > 0 else "-inf" if value < 0 else "nan")


def amortisation_report(
    vae_or_model_guide: Any,
    x: torch.Tensor,
    *,
    nuts: az.InferenceData | None = None,
    num_samples: int = 2000,
    local_steps: int = 300,
    local_lr: float = 0.05,
    local_particles: int = 16,
    credible_levels: Sequence[float] = (0.5, 0.9),
    obs_index: Sequence[int] | None = None,
    latent_site: str | None = None,
    chunk_size: int = 500,
    random_seed: int | None = 0,
) -> dict[str, Any]:
    """Amortised ELBO, local ELBO, IWAE :math:`\\log p(x)`, the gaps, PSIS :math:`\\hat k` and NUTS comparisons.

    ``x: [n, *obs_shape]`` are the datapoints to analyse; ``nuts`` (optional) is the result of
    :func:`~pyro_decomp.analysis.arviz.sample_posterior_nuts` on the same ``x`` in the same order.
    See the module docstring for the estimators. Returns a JSON-ready dict::

        {"datapoints": [{"obs", "amortised_elbo", "local_elbo", "log_px", "log_px_iwae",
                         "log_px_iwae_local", "approximation_gap", "amortisation_gap",
                         "amortisation_gap_se", "inference_gap", "psis_khat", "local_worse_than_encoder",
                         # with nuts=
                         "w2_encoder_nuts", "w2_local_nuts", "coverage": {"0.5": .., "0.9": ..}}, ...],
         "mean": {the numeric keys averaged over datapoints}, "warnings": [str, ...],
         "nuts": {"max_r_hat", "min_ess_bulk", "divergences"}, "settings": {...}}

    Every number is what was measured: the gaps are plain differences (no clamping), and ``warnings``
    says when the local optimisation ended significantly below the encoder.

    >>> import torch
    >>> from pyro_decomp.models import VAE, IsotropicGaussianPrior, GaussianLikelihood
    >>> from pyro_decomp.models.networks import PinwheelEncoder, PinwheelDecoder
    >>> vae = VAE(IsotropicGaussianPrior(2), PinwheelDecoder(), GaussianLikelihood(), PinwheelEncoder())
    >>> report = amortisation_report(vae, torch.randn(3, 2), num_samples=100, local_steps=5)
    >>> sorted(report["mean"])[:3]
    ['amortisation_gap', 'amortised_elbo', 'approximation_gap']
    """
    target = resolve_target(vae_or_model_guide, latent_site=latent_site)
    x = _check_x(x)
    num_samples = _positive_int("num_samples", num_samples)
    chunk_size = _positive_int("chunk_size", chunk_size)
    levels = [float(level) for level in credible_levels]
    if any(not 0.0 < level < 1.0 for level in levels):
        raise ValueError(f"credible_levels must lie in (0, 1), got {list(credible_levels)!r}.")
    n = x.shape[0]
    index = _obs_index(obs_index, n)
    sites = latent_sites(target, x)
    nuts_z = None
    if nuts is not None:
        posterior = getattr(nuts, "posterior", {}) if isinstance(nuts, az.InferenceData) else {}
        missing = [name for name in sites if name not in posterior]
        if missing:
            raise TypeError(
                f"nuts must be the InferenceData from sample_posterior_nuts with posterior variables "
                f"{list(sites)}; missing {missing}."
            )
        post = nuts.posterior[target.latent_site]
        if post.sizes.get("obs") != n:
            raise ValueError(f"nuts holds {post.sizes.get('obs')} datapoints but x holds {n}; run NUTS on the same x.")
        # every latent site, flattened in site order: [obs, chain*draw, D_total]
        parts = []
        for name in sites:
            var = nuts.posterior[name].stack(sample=("chain", "draw"))
            values = var.transpose("obs", "sample", ...).values
            parts.append(values.reshape(values.shape[0], values.shape[1], -1))
        nuts_z = np.concatenate(parts, -1)

    with _seeded(random_seed, x.device), frozen_parameters(target):
        nesting = _max_plate_nesting(target.model, x)
        # amortised ELBO and IWAE from the same encoder draws. With a Gaussian encoder the draws are
        # loc + scale * eps, and the local Gaussian is evaluated on the same eps (common random numbers),
        # so the amortisation gap carries no Monte Carlo noise from two independent sample sets.
        use_encoder = target.encoder is not None and list(sites) == [target.latent_site]
        if use_encoder:
            with torch.no_grad():
                loc0, scale0 = target.encoder(x)
                loc0, scale0 = loc0.reshape(n, -1), scale0.reshape(n, -1)
                eps = torch.randn((num_samples,) + tuple(loc0.shape), dtype=loc0.dtype, device=loc0.device)
                z_q = loc0 + scale0 * eps
                log_q = dist.Normal(loc0, scale0).log_prob(z_q).sum(-1)
        else:
            z_q, log_q = sample_guide(target, x, num_samples)
            # warm start for a generic guide: a diagonal Gaussian matching the moments of its draws
            loc0, scale0 = z_q.mean(0), z_q.std(0).clamp_min(1e-6)
            eps = torch.randn_like(z_q)
        with torch.no_grad():
            log_w = _log_joint_chunked(target, x, z_q, nesting, chunk_size) - log_q
        amortised = log_w.mean(0)
        iwae = torch.logsumexp(log_w, 0) - math.log(num_samples)

        loc, scale = fit_local_gaussians(
            target, x, loc0, scale0, num_steps=local_steps, lr=local_lr, num_particles=local_particles
        )
        with torch.no_grad():
            z_loc = loc + scale * eps
            local_q = dist.Normal(loc, scale)
            log_q_local = local_q.log_prob(z_loc).sum(-1)
            log_joint_local = _log_joint_chunked(target, x, z_loc, nesting, chunk_size)
            log_w_local = log_joint_local - log_q_local
            local = log_w_local.mean(0)
            iwae_local = torch.logsumexp(log_w_local, 0) - math.log(num_samples)
            # the amortisation gap's standard error: draws are paired through the shared eps
            gap_se = (log_w_local - log_w).std(0) / math.sqrt(num_samples)
            # log p(x) by multiple importance sampling over both sample sets (balance heuristic): each
            # draw is weighted against the equal mixture of the two proposals
            if use_encoder:
                log_q_enc_at_local = dist.Normal(loc0, scale0).log_prob(z_loc).sum(-1)
            else:
                log_q_enc_at_local = _guide_log_q(target, x, z_loc)[1]
            log_mix_at_q = torch.logaddexp(log_q, local_q.log_prob(z_q).sum(-1)) - math.log(2.0)
            log_mix_at_local = torch.logaddexp(log_q_enc_at_local, log_q_local) - math.log(2.0)
            log_w_mix = torch.cat([log_w + log_q - log_mix_at_q, log_joint_local - log_mix_at_local])
            log_px = torch.logsumexp(log_w_mix, 0) - math.log(2 * num_samples)
        local_worse = (local - amortised) < -2.0 * gap_se

    khat = _psis_khat(log_w.T.cpu().double().numpy())
    z_q_np = z_q.transpose(0, 1).cpu().double().numpy()  # [n, S, D]
    z_loc_np = z_loc.transpose(0, 1).cpu().double().numpy()
    rows = []
    for i in range(n):
        row: dict[str, Any] = {
            "obs": int(index[i]),
            "amortised_elbo": float(amortised[i]),
            "local_elbo": float(local[i]),
            "log_px": float(log_px[i]),
            "log_px_iwae": float(iwae[i]),
            "log_px_iwae_local": float(iwae_local[i]),
            "approximation_gap": float(log_px[i] - local[i]),
            "amortisation_gap": float(local[i] - amortised[i]),
            "amortisation_gap_se": float(gap_se[i]),
            "inference_gap": float(log_px[i] - amortised[i]),
            "psis_khat": _json_float(khat[i]),
            "local_worse_than_encoder": bool(local_worse[i]),
        }
        if nuts_z is not None:
            target_fit = _fit(nuts_z[i])
            row["w2_encoder_nuts"] = gaussian_w2(*_fit(z_q_np[i]), *target_fit)
            row["w2_local_nuts"] = gaussian_w2(*_fit(z_loc_np[i]), *target_fit)
            coverage = {}
            for level in levels:
                lo, hi = np.quantile(z_q_np[i], [(1 - level) / 2, (1 + level) / 2], axis=0)
                inside = (nuts_z[i] >= lo) & (nuts_z[i] <= hi)
                coverage[f"{level:g}"] = float(inside.mean())
            row["coverage"] = coverage
        rows.append(row)

    scalar_keys = [k for k, v in rows[0].items() if k != "obs" and isinstance(v, float) and not isinstance(v, bool)]
    mean = {k: float(np.mean([r[k] for r in rows])) for k in scalar_keys}
    mean["psis_khat"] = _json_float(np.mean(khat)) if np.isfinite(khat).all() else _json_float(np.max(khat))
    mean["psis_khat_max"] = _json_float(np.max(khat))
    if nuts_z is not None:
        mean["coverage"] = {f"{lv:g}": float(np.mean([r["coverage"][f"{lv:g}"] for r in rows])) for lv in levels}
    report: dict[str, Any] = {
        "datapoints": rows,
        "mean": mean,
        "warnings": [],
        "settings": {
            "num_samples": num_samples,
            "local_steps": int(local_steps),
            "local_lr": float(local_lr),
            "local_particles": int(local_particles),
            "credible_levels": levels,
            "log_px": "multiple importance sampling (balance heuristic) over the num_samples encoder draws and "
            "the num_samples local-Gaussian draws; log_px_iwae and log_px_iwae_local are each proposal's IWAE",
            "distance": "2-Wasserstein between Gaussians fitted (mean, full covariance) to the draws",
            "psis": "arviz.psislw of log p(x,z) - log q(z|x), reff=1; -inf means constant weights",
        },
    }
    worse = [r for r in rows if r["local_worse_than_encoder"]]
    if worse:
        report["warnings"].append(
            f"local optimisation ended below the encoder's ELBO (by more than 2 standard errors) for "
            f"{len(worse)} of {n} datapoints (obs {[r['obs'] for r in worse]}); their amortisation gaps are "
            "negative and the approximation gaps overstated. Raise local_steps or lower local_lr."
        )
    if nuts is not None:
        diag = nuts_diagnostics(nuts)
        report["nuts"] = {k: diag[k] for k in ("max_r_hat", "min_ess_bulk", "divergences")}
    return report


def save_report(report: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``report`` as indented JSON at ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".json", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(report, fh, indent=2, allow_nan=False)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def analyse(
    vae_or_model_guide: Any,
    x: torch.Tensor,
    out_dir: str | os.PathLike,
    *,
    nuts: int = 4,
    num_draws: int = 100,
    num_chains: int = 2,
    nuts_samples: int = 500,
    nuts_warmup: int = 300,
    gap_datapoints: int = 8,
    num_samples: int = 2000,
    local_steps: int = 300,
    latent_site: str | None = None,
    random_seed: int = 0,
) -> dict[str, Path]:
    """Write ``posterior.nc``, ``posterior_nuts.nc``, ``amortisation.json`` and ``figures/*.png`` to ``out_dir``.

    * ``posterior.nc``: :func:`~pyro_decomp.analysis.to_inference_data` on all of ``x`` (``num_chains``
      x ``num_draws`` encoder draws per datapoint; for image data it runs in bounded chunks and its
      pixel-level predictive groups keep only as many draws as fit in 2^22 values, see there);
    * ``posterior_nuts.nc``: :func:`~pyro_decomp.analysis.sample_posterior_nuts` on the first ``nuts``
      datapoints (``nuts=0`` skips NUTS);
    * ``amortisation.json``: :func:`amortisation_report` on those datapoints (on the first
      ``gap_datapoints`` when ``nuts=0``), with the NUTS comparisons;
    * ``figures/posterior_pair_obs<i>.png`` (first NUTS datapoint), ``figures/aggregate_posterior.png``,
      ``figures/amortisation_gaps.png``.

    Returns ``{name: path}`` of what was written.

    >>> import tempfile, torch
    >>> from pyro_decomp.models import VAE, IsotropicGaussianPrior, GaussianLikelihood
    >>> from pyro_decomp.models.networks import PinwheelEncoder, PinwheelDecoder
    >>> vae = VAE(IsotropicGaussianPrior(2), PinwheelDecoder(), GaussianLikelihood(), PinwheelEncoder())
    >>> paths = analyse(vae, torch.randn(6, 2), tempfile.mkdtemp(), nuts=0, num_draws=5, local_steps=2)
    >>> sorted(paths)
    ['aggregate_posterior', 'amortisation', 'amortisation_gaps', 'posterior']
    """
    from matplotlib.figure import Figure

    from .posterior_plots import plot_aggregate_marginals, plot_encoder_vs_nuts, plot_gaps

    target = resolve_target(vae_or_model_guide, latent_site=latent_site)
    x = _check_x(x)
    if isinstance(nuts, bool) or not isinstance(nuts, int) or nuts < 0:
        raise ValueError(f"nuts must be a non-negative number of datapoints, got {nuts!r}.")
    out = Path(out_dir)
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}

    idata = to_inference_data(target, x, num_draws=num_draws, num_chains=num_chains, random_seed=random_seed)
    paths["posterior"] = save_inference_data(idata, out / "posterior.nc")

    chosen = min(nuts if nuts > 0 else _positive_int("gap_datapoints", gap_datapoints), x.shape[0])
    x_sel, index = x[:chosen], list(range(chosen))
    nuts_idata = None
    if nuts > 0:
        nuts_idata = sample_posterior_nuts(
            target,
            x_sel,
            num_samples=nuts_samples,
            warmup_steps=nuts_warmup,
            num_chains=max(2, num_chains),
            obs_index=index,
            random_seed=random_seed,
        )
        paths["posterior_nuts"] = save_inference_data(nuts_idata, out / "posterior_nuts.nc")
    report = amortisation_report(
        target,
        x_sel,
        nuts=nuts_idata,
        num_samples=num_samples,
        local_steps=local_steps,
        obs_index=index,
        random_seed=random_seed,
    )
    paths["amortisation"] = save_report(report, out / REPORT_FILE)

    def save(fig: Figure, name: str) -> None:
        fig.tight_layout()
        path = figures / f"{name}.png"
        fig.savefig(path, dpi=100)
        paths[name] = path

    site = target.latent_site
    if nuts_idata is not None:
        dim = min(int(idata.posterior.sizes["latent"]), 4)
        fig = Figure(figsize=(2.6 * dim, 2.6 * dim))
        axes = np.array(fig.subplots(dim, dim, squeeze=False))
        plot_encoder_vs_nuts(idata, nuts_idata, obs=index[0], var_name=site, max_latents=dim, axes=axes)
        save(fig, f"posterior_pair_obs{index[0]}")
    if target.prior is not None:
        dim = int(idata.posterior.sizes["latent"])
        fig = Figure(figsize=(2.6 * dim, 2.6))
        axes = np.array(fig.subplots(1, dim, squeeze=False))
        plot_aggregate_marginals(idata, target.prior, var_name=site, axes=axes)
        save(fig, "aggregate_posterior")
    fig = Figure(figsize=(max(4.0, 0.5 * chosen), 3.0))
    plot_gaps(report, ax=fig.subplots())
    save(fig, "amortisation_gaps")
    return paths


def analyse_run(
    run_dir: str | os.PathLike,
    *,
    nuts_datapoints: int = 4,
    out_dir: str | os.PathLike | None = None,
    load: Any = None,
    **kwargs: Any,
) -> dict[str, Path]:
    """:func:`analyse` for a trainer run directory; outputs go to ``out_dir`` (default: ``run_dir``).

    ``load(run_dir) -> (vae, x)`` rebuilds the trained model and the data to analyse. The default is
    :func:`pyro_decomp.runner.load_run`: the run's config and latest checkpoint, and its test split.
    ``kwargs`` go to :func:`analyse`. This is the body of ``pyro-decomp analyse <run-dir> [--nuts N]``.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {str(run_dir)!r} does not exist; train a run first.")
    if load is None:
        from ..runner import load_run as load  # the runner imports the analysis; import it lazily
    vae, x = load(run_dir)
    return analyse(vae, x, run_dir if out_dir is None else out_dir, nuts=nuts_datapoints, **kwargs)
