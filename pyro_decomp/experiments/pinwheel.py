"""The ``pinwheel`` family (001 Fig. 3, workshop Fig. 2): a 2-D latent space, measures of how well the
test aggregate posterior q(z) matches a structured prior, density figures, and the sweep's ``grid.png``."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch

from ..config import weight_label
from ..train import seeded_torch_rng
from .base import Experiment, ExperimentFamily, register_family, write_metrics, write_posterior_netcdf

__all__ = ["PinwheelEval", "PinwheelFamily", "evaluate_pinwheel"]


@dataclass
class PinwheelEval:
    """Evaluation on the test split (independent of the training estimator)."""

    seed: int = 12345
    num_samples: int = 4000  # samples of q(z) and p(z) for the MMD and the KL estimates
    posterior_draws: int = 100  # draws of z per test point in posterior.nc
    grid_size: int = 160  # density grid resolution per axis
    figures: bool = True

    def check(self) -> None:
        if self.num_samples < 2:
            raise ValueError("eval.num_samples: must be >= 2.")
        if not 1 <= self.posterior_draws <= 100_000:
            raise ValueError(f"eval.posterior_draws: must be in [1, 100000], got {self.posterior_draws}.")
        # upper bound: used only after training, where running out of memory would waste the run
        if not 8 <= self.grid_size <= 4096:
            raise ValueError(f"eval.grid_size: must be in [8, 4096], got {self.grid_size}.")


def _mixture_log_density(z: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """:math:`\\log \\frac1n\\sum_i \\mathcal N(z; \\mu_i, \\mathrm{diag}\\,\\sigma_i^2)` for ``z: [m, D]``."""
    out = []
    log_n = math.log(loc.shape[0])
    for zc in z.split(chunk):
        lp = torch.distributions.Normal(loc, scale).log_prob(zc.unsqueeze(1)).sum(-1)  # [m, n]
        out.append(torch.logsumexp(lp, -1) - log_n)
    return torch.cat(out)


def _mmd_rbf(x: torch.Tensor, y: torch.Tensor, bandwidths=(0.05, 0.1, 0.2, 0.5, 1.0)) -> float:
    """Unbiased MMD² with a sum of RBF kernels, computed here (not via the training divergence)."""

    def ksum(a, b, same):
        d2 = torch.cdist(a, b).square()
        k = sum(torch.exp(-d2 / (2 * h * h)) for h in bandwidths)
        total = k.sum()
        if same:
            total = total - k.diagonal().sum()
            return total / (a.shape[0] * (a.shape[0] - 1))
        return total / (a.shape[0] * b.shape[0])

    return float(ksum(x, x, True) + ksum(y, y, True) - 2 * ksum(x, y, False))


@torch.no_grad()
def evaluate_pinwheel(
    vae, x_test: torch.Tensor, y_test: torch.Tensor, *, num_samples: int = 4000, seed: int = 0, grid_size: int = 160
) -> dict[str, Any]:
    """Measures of how well the test aggregate posterior :math:`q(z) = \\frac1n\\sum_i q(z|x_i)` matches p(z).

    None of them uses the training estimator. With ``loc_i, scale_i`` the encoder outputs on the test set:

    * ``mmd_rbf``: unbiased MMD² (sum of RBF kernels, bandwidths 0.05-1, the scale of the prior's
      components) between ``num_samples`` draws of q(z) and of p(z);
    * ``kl_prior_to_aggregate`` = KL(p ‖ q) and ``kl_aggregate_to_prior`` = KL(q ‖ p): plain Monte Carlo
      with ``num_samples`` draws and the exact mixture density of q (all n test encoders);
    * ``occupancy_evenness``: entropy of the histogram of the most probable prior component of each
      encoder mean, divided by log C (1 = the clusters are filled evenly);
    * ``nmi``, ``ari``: between that component and the pinwheel arm (SPEC §6 clustering quality);
    * ``mean_log_prior``: mean of log p(μ_i) over test encoder means;
    * ``overlap``: :math:`1 - \\mathbb E_i \\mathbb E_{z\\sim q(z|x_i)}[q(z|x_i) / \\sum_j q(z|x_j)]`, the
      probability that a draw from one encoder is better explained by another one (0: disjoint encodings;
      → 1 − 1/n when all encoders coincide); this is the paper's "overlap";
    * ``mean_encoder_std``: mean of σ_i over points and dimensions.

    Also returns ``density`` (``[grid, grid]`` q(z) on a grid), ``prior_density`` and ``extent``.
    """
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    gen = torch.Generator().manual_seed(seed)
    device = next(vae.parameters()).device
    x = x_test.to(device)
    loc, scale = vae.encode(x)
    loc, scale = loc.cpu().double(), scale.cpu().double()
    prior = vae.prior
    if hasattr(prior, "distribution"):  # a Prior module: closed-form density
        prior_log_prob, draw_prior = prior.log_prob, lambda m: prior.distribution().sample((m,))
    else:  # any prior program: the marginal of its latent site (models/marginal.py)
        from ..models.marginal import ProgramMarginal

        marginal = ProgramMarginal(prior, getattr(prior, "site", "z"), num_samples=256)
        prior_log_prob, draw_prior = marginal.log_prob, lambda m: marginal.sample((m,))
    n, D = loc.shape
    # samples of q(z): pick an encoder uniformly, then draw from it
    idx = torch.randint(n, (num_samples,), generator=gen)
    zq = loc[idx] + scale[idx] * torch.randn(num_samples, D, generator=gen, dtype=loc.dtype)
    with seeded_torch_rng(seed + 1):
        zp = draw_prior(num_samples).cpu().double()

    def log_p(z):
        return prior_log_prob(z.to(device=device, dtype=torch.get_default_dtype())).cpu().double()

    kl_pq = float((log_p(zp) - _mixture_log_density(zp, loc, scale)).mean())
    kl_qp = float((_mixture_log_density(zq, loc, scale) - log_p(zq)).mean())
    mmd = _mmd_rbf(zq.float(), zp.float())

    metrics: dict[str, Any] = {
        "mmd_rbf": mmd,
        "kl_prior_to_aggregate": kl_pq,
        "kl_aggregate_to_prior": kl_qp,
        "mean_log_prior": float(log_p(loc).mean()),
        "mean_encoder_std": float(scale.mean()),
    }
    # overlap: self-responsibility of each encoder for its own draws (4 draws per point)
    draws = 4
    z = loc.unsqueeze(0) + scale.unsqueeze(0) * torch.randn(draws, n, D, generator=gen, dtype=loc.dtype)
    lp = torch.distributions.Normal(loc, scale).log_prob(z.unsqueeze(2)).sum(-1)  # [draws, n(z), n(enc)]
    self_resp = (lp.diagonal(dim1=1, dim2=2) - torch.logsumexp(lp, -1)).exp()
    metrics["overlap"] = float(1 - self_resp.mean())
    if hasattr(prior, "assign") and hasattr(prior, "n_components"):
        comp = prior.assign(loc.to(device=device, dtype=torch.get_default_dtype())).cpu().numpy()
        C = prior.n_components
        counts = np.bincount(comp, minlength=C)
        probs = counts / counts.sum()
        nz = probs[probs > 0]
        metrics["occupancy"] = counts.tolist()
        metrics["occupancy_evenness"] = float(-(nz * np.log(nz)).sum() / math.log(C)) if C > 1 else 1.0
        labels = y_test.cpu().numpy()
        metrics["nmi"] = float(normalized_mutual_info_score(labels, comp))
        metrics["ari"] = float(adjusted_rand_score(labels, comp))
    # density grid: square, covering the prior's bulk and 98% of the encoder means
    pz = zp.numpy()
    lo = np.minimum(np.quantile(pz, 0.001, axis=0), np.quantile(loc.numpy(), 0.01, axis=0))
    hi = np.maximum(np.quantile(pz, 0.999, axis=0), np.quantile(loc.numpy(), 0.99, axis=0))
    if D == 2:
        centre, half = (lo + hi) / 2, float((hi - lo).max() / 2 * 1.1)
        xs = np.linspace(centre[0] - half, centre[0] + half, grid_size)
        ys = np.linspace(centre[1] - half, centre[1] + half, grid_size)
        gx, gy = np.meshgrid(xs, ys)
        grid = torch.from_numpy(np.stack([gx.ravel(), gy.ravel()], 1))
        metrics["density"] = _mixture_log_density(grid, loc, scale).exp().reshape(grid_size, grid_size).numpy()
        metrics["prior_density"] = log_p(grid).exp().reshape(grid_size, grid_size).numpy()
        metrics["extent"] = [float(xs[0]), float(xs[-1]), float(ys[0]), float(ys[-1])]
    metrics["_loc"], metrics["_scale"] = loc.float(), scale.float()
    return metrics


def load_density(path: Path) -> dict[str, np.ndarray] | None:
    """The density grid a pinwheel run saved for the sweep figure, or ``None`` when unreadable."""
    keys = ("density", "prior_density", "extent")
    try:
        with np.load(path, allow_pickle=False) as data:
            panel = {k: np.asarray(data[k]) for k in keys}
    except Exception:  # BadZipFile, a non-npz file, a missing key, an object array, ...
        return None
    ok = panel["density"].ndim == 2 and panel["extent"].shape == (4,) and np.isfinite(panel["extent"]).all()
    return panel if ok else None


@register_family
class PinwheelFamily(ExperimentFamily):
    name = "pinwheel"
    description = "2-D latents on vector data: q(z)-vs-p(z) measures, density figures, the sweep's density grid"
    eval_config = PinwheelEval
    defaults = {
        "data": {"name": "pinwheel"},
        "prior": {"name": "mixture"},
        "likelihood": {"name": "gaussian"},
        "networks": {"name": "pinwheel"},
        "divergence": {"type": "inclusive_kl"},
        "model": {"latent_dim": 2},
    }
    main_figure = "figures/aggregate_posterior.png"
    headline = ("kl_prior_to_aggregate", "kl_aggregate_to_prior", "mmd_rbf", "occupancy_evenness", "nmi", "ari",
                "overlap")  # fmt: skip
    summary_columns = (
        "name", "row", "alpha", "beta", "seed", "status",
        "kl_prior_to_aggregate", "kl_aggregate_to_prior", "mmd_rbf", "occupancy_evenness", "nmi", "ari",
        "overlap", "mean_encoder_std", "mean_log_prior", "test_reconstruction_per_point", "train_seconds",
    )  # fmt: skip
    required_files = ("figures/aggregate_posterior.png",)

    def evaluate(self, exp: Experiment, run_dir: Path, *, train_seconds: float | None = None) -> dict[str, Any]:
        """Final loss terms (train and test), the q(z)-p(z) measures, the figure and ``posterior.nc``."""
        cfg, vae = exp.config, exp.vae
        run_dir = Path(run_dir)
        device = next(vae.parameters()).device
        t0 = time.perf_counter()
        vae.eval()
        with seeded_torch_rng(cfg.eval.seed), pyro.validation_enabled(False):
            train_terms = exp.elbo.loss_terms(vae.model, vae.guide, exp.x_train.to(device))
            test_terms = exp.elbo.loss_terms(vae.model, vae.guide, exp.x_test.to(device))
        measures = evaluate_pinwheel(
            vae, exp.x_test, exp.y_test, num_samples=cfg.eval.num_samples, seed=cfg.eval.seed,
            grid_size=cfg.eval.grid_size,
        )  # fmt: skip
        loc, scale = measures.pop("_loc"), measures.pop("_scale")
        density = {k: measures.pop(k) for k in ("density", "prior_density", "extent") if k in measures}
        n = exp.x_train.shape[0]
        metrics = {
            "id": cfg.id,
            "size": cfg.size,
            "family": self.name,
            "alpha": cfg.model.alpha,
            "beta": cfg.model.beta,
            "seed": cfg.train.seed,
            "steps": cfg.train.steps,
            "train": train_terms,
            "test": test_terms,
            "train_per_point": {k: train_terms[k] / n for k in ("reconstruction", "kl") if k in train_terms},
            "test_per_point": {k: test_terms[k] / exp.x_test.shape[0] for k in ("reconstruction", "kl")
                               if k in test_terms},  # fmt: skip
            "measures": measures,
        }
        if train_seconds is not None:
            metrics["train_seconds"] = train_seconds
        (run_dir / "figures").mkdir(parents=True, exist_ok=True)
        if density:
            # the raw grid, so sweeps can redraw panels without re-running (np.load(allow_pickle=False))
            np.savez(run_dir / "figures" / "aggregate_posterior.npz", **{k: np.asarray(v) for k, v in density.items()})
        if cfg.eval.figures and density:
            from ..analysis.plots import plot_aggregate_posterior, save_figure

            ax = plot_aggregate_posterior(
                density["density"],
                density["prior_density"],
                density["extent"],
                title=f"{cfg.id}: α={weight_label(cfg.model.alpha)}, β={weight_label(cfg.model.beta)}",
            )
            save_figure(ax.figure, run_dir / "figures" / "aggregate_posterior.png")
        write_posterior_netcdf(
            run_dir / "posterior.nc",
            vae,
            exp.x_test.to(device),
            draws=cfg.eval.posterior_draws,
            seed=cfg.eval.seed,
            constant_data={"z_loc": (("obs", "latent"), loc), "z_scale": (("obs", "latent"), scale),
                           "label": (("obs",), exp.y_test)},  # fmt: skip
            # netCDF attributes are numbers or strings: a schedule is written as its label
            attrs={"experiment": cfg.id, "seed": cfg.train.seed,
                   **{k: v if isinstance(v, int | float) else weight_label(v)
                      for k, v in (("alpha", cfg.model.alpha), ("beta", cfg.model.beta))}},  # fmt: skip
        )
        metrics["eval_seconds"] = time.perf_counter() - t0
        write_metrics(run_dir, metrics)
        return {**metrics, **density, "run_dir": str(run_dir)}

    def summary_row(self, config: Mapping[str, Any], result: Mapping[str, Any]) -> dict[str, Any]:
        row = super().summary_row(config, result)
        row["alpha"], row["beta"] = config["model"]["alpha"], config["model"]["beta"]
        per = result.get("test_per_point") or {}
        test = result.get("test") or {}
        if per.get("reconstruction") is None and test.get("reconstruction") is not None:
            d = config["data"]
            per = {"reconstruction": test["reconstruction"] / (d.get("arms", 1) * d.get("test_per_arm", 1))}
        row["test_reconstruction_per_point"] = per.get("reconstruction")
        return row

    def figures_ok(self, run_dir: Path, config: Mapping[str, Any]) -> bool:
        if load_density(run_dir / "figures" / "aggregate_posterior.npz") is None:
            return False
        return super().figures_ok(run_dir, config)

    def sweep_figures(self, spec: Any, results: Sequence[Mapping[str, Any]], out_dir: Path, log=print) -> list[Path]:
        """``grid.png``: one density panel per setting (first seed), one row per grid block."""
        from ..analysis.plots import plot_density_grid, save_figure

        path = Path(out_dir) / "grid.png"
        first_seed = spec.runs[0].seed if spec.runs else 0
        ncols = max((r.col for r in spec.runs), default=-1) + 1
        panels: list[list[dict | None]] = [[None] * ncols for _ in spec.rows]
        for run, res in zip(spec.runs, results, strict=True):
            if run.seed != first_seed:
                continue
            npz = Path(res.get("run_dir", "")) / "figures" / "aggregate_posterior.npz"
            panel: dict[str, Any] = {"title": run.title}
            if res.get("status") != "failed":
                density = load_density(npz)
                if density is None:
                    log(f"[sweep] {run.name}: {npz} is missing or unreadable; its grid.png panel is left empty")
                else:
                    panel.update(density)
            panels[run.row][run.col] = panel
        fig = plot_density_grid(panels, suptitle=f"{spec.id}: density of q(z) over p(z) contours")
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")  # atomic: a crash keeps the old grid whole
        try:
            save_figure(fig, tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return [path]
