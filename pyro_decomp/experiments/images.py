"""The ``images`` family: VAEs on image data (dSprites / 2D Shapes, Fashion-MNIST, MNIST, CelebA).

What is measured depends on what the data offers, not on its name:

* always: the final loss terms on ``eval.loss_images`` images per split, active units, dimension-wise KL of
  the test encodings against the run's own prior (:func:`dimensionwise_kl_to_prior`), the Hoyer sparsity
  of the mean encodings (004 §5), and latent traversals sorted by dimension-wise KL;
* data with ground-truth factors (``DataBundle.ground_truth``): the FactorVAE and BetaVAE scores and MIG of
  the encoder mean, on images sampled from the whole factor grid;
* data with class labels: the average encoding magnitude per class (004 Fig. 7), as a table and a figure.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch

from ..train import seeded_torch_rng
from .base import Experiment, ExperimentFamily, register_family, write_metrics

__all__ = ["ImageEval", "ImageFamily", "dimensionwise_kl_to_prior"]


@dataclass
class ImageEval:
    """Evaluation of an image VAE (metric sizes as in disentanglement_lib, SPEC §6)."""

    seed: int = 12345
    figures: bool = True
    metric_group_size: int = 64  # BetaVAE / FactorVAE: points per vote
    metric_num_train: int = 10_000  # BetaVAE / FactorVAE: training votes
    metric_num_eval: int = 5_000  # BetaVAE / FactorVAE: evaluation votes
    metric_num_variance: int = 10_000  # FactorVAE: points for the global variances
    metric_num_points: int = 10_000  # MIG: points
    loss_images: int = 2048  # images (per split) for the final loss terms
    traversal_range: float = 3.0  # latent traversals over [-r, r] (SPEC §8)
    traversal_steps: int = 10
    kl_samples: int = 64  # Monte Carlo draws per encoding for the dimension-wise KL of a non-Gaussian prior

    def check(self) -> None:
        if self.metric_group_size < 2:
            raise ValueError("eval.metric_group_size: must be >= 2.")
        sizes = (self.metric_num_train, self.metric_num_eval, self.metric_num_variance, self.metric_num_points,
                 self.loss_images, self.kl_samples)  # fmt: skip
        if min(sizes) < 1:
            raise ValueError("eval: metric_num_train, metric_num_eval, metric_num_variance, metric_num_points, "
                             "loss_images and kl_samples must be >= 1.")  # fmt: skip
        if not self.traversal_range > 0:
            raise ValueError("eval.traversal_range: must be > 0.")
        if self.traversal_steps < 2:
            raise ValueError("eval.traversal_steps: must be >= 2.")


@torch.no_grad()
def dimensionwise_kl_to_prior(
    loc: torch.Tensor, scale: torch.Tensor, prior, *, num_samples: int = 64, seed: int = 0
) -> np.ndarray:
    """Mean over the data of :math:`\\mathrm{KL}(q(z_i \\mid x) \\,\\|\\, p(z_i))` per latent ``i``, against
    the run's own prior's marginals: in closed form when ``prior.variance()`` gives a diagonal Gaussian,
    otherwise by Monte Carlo with ``num_samples`` draws per encoding (seeded), using the prior's
    per-dimension log-density ``prior.marginal_log_prob`` when it has one.
    """
    from ..metrics import dimensionwise_kl
    from ..models.priors import AnisotropicGaussianPrior, IsotropicGaussianPrior

    loc, scale = loc.double(), scale.double()
    if isinstance(prior, IsotropicGaussianPrior | AnisotropicGaussianPrior):
        prior_std = prior.variance().detach().cpu().double().sqrt().numpy()
        return dimensionwise_kl(loc.numpy(), scale.numpy(), prior_std=prior_std)
    dist = prior.distribution()
    base = getattr(dist, "base_dist", dist)  # Independent(...) → per-dimension distribution
    gen = torch.Generator().manual_seed(seed)
    eps = torch.randn((num_samples, *loc.shape), generator=gen, dtype=loc.dtype)
    z = loc + scale * eps
    log_q = torch.distributions.Normal(loc, scale).log_prob(z)
    try:
        log_p = base.log_prob(z.to(torch.get_default_dtype())).double()
        if log_p.shape != z.shape:
            raise ValueError
    except Exception:
        raise ValueError(
            f"dimension-wise KL needs per-dimension prior densities; {type(prior).__name__} does not give them."
        ) from None
    return (log_q - log_p).mean((0, 1)).numpy()


@torch.no_grad()
def _encode_all(vae, x, device, chunk: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    locs, scales = [], []
    for xc in x.split(chunk):
        loc, scale = vae.encode(xc.to(device))
        locs.append(loc.cpu())
        scales.append(scale.cpu())
    return torch.cat(locs), torch.cat(scales)


def _decode_mean(vae, z: torch.Tensor) -> torch.Tensor:
    """The decoder's mean image: sigmoid of the logits (Bernoulli) or the location (Gaussian/Laplace)."""
    out = vae.decoder(z)
    if type(vae.likelihood).__name__ == "BernoulliLikelihood":
        return torch.sigmoid(out)
    if out.dim() > z.dim() + vae.likelihood.event_dim - 1 and out.shape[z.dim() - 1] == 2:
        out = out.select(z.dim() - 1, 0)  # [*, 2, *obs]: location first
    return out.clamp(0, 1)


@torch.no_grad()
def traversal_figure(vae, x: torch.Tensor, order, kl, path: Path, *, limit: float = 3.0, steps: int = 10,
                     title: str = "") -> Path:  # fmt: skip
    """Latent traversals of one test image's mean code over ``[-limit, limit]`` in ``steps`` steps, one row per
    dimension in ``order`` (by decreasing dimension-wise KL); the first row shows the image and its
    reconstruction."""
    from ..analysis.plots import _pyplot, save_figure

    plt = _pyplot()
    device = next(vae.parameters()).device
    loc, _ = vae.encode(x[:1].to(device))
    values = torch.linspace(-limit, limit, steps, device=device)
    rows = []
    for d in order:
        z = loc.repeat(steps, 1)
        z[:, int(d)] = values
        rows.append(_decode_mean(vae, z).cpu())
    recon = _decode_mean(vae, loc).cpu()[0]

    def show(ax, img):
        img = img.numpy()
        if img.shape[0] == 1:
            ax.imshow(img[0], cmap="gray", vmin=0, vmax=1)
        else:
            ax.imshow(np.transpose(img, (1, 2, 0)).clip(0, 1))

    fig, axes = plt.subplots(len(rows) + 1, steps, figsize=(steps * 0.9, (len(rows) + 1) * 0.9), squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    show(axes[0][0], x[0].cpu())
    axes[0][0].set_title("input", fontsize=7)
    show(axes[0][1], recon)
    axes[0][1].set_title("recon.", fontsize=7)
    for c in range(2, steps):
        axes[0][c].axis("off")
    for r, (d, imgs) in enumerate(zip(order, rows, strict=True), start=1):
        for c in range(steps):
            show(axes[r][c], imgs[c])
        axes[r][0].set_ylabel(f"z{int(d)}\nKL {kl[int(d)]:.2f}", fontsize=6)
    for c in range(steps):
        axes[-1][c].set_xlabel(f"{float(values[c]):+.1f}", fontsize=6)
    fig.suptitle(title, fontsize=8)
    save_figure(fig, path)
    plt.close(fig)
    return path


def class_magnitudes(loc: np.ndarray, labels: np.ndarray, num_classes: int | None = None) -> np.ndarray:
    """Average absolute mean encoding per class and latent, ``[C, D]`` (004 Fig. 7)."""
    labels = np.asarray(labels).astype(np.int64)
    C = int(num_classes or labels.max() + 1)
    out = np.full((C, loc.shape[1]), np.nan)
    for c in range(C):
        if (labels == c).any():
            out[c] = np.abs(loc[labels == c]).mean(0)
    return out


def _class_figure(mags: np.ndarray, names, path: Path, title: str) -> Path:
    from ..analysis.plots import _pyplot, save_figure

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(4, 0.18 * mags.shape[1] + 2), 0.35 * mags.shape[0] + 1.5))
    im = ax.imshow(mags, aspect="auto", cmap="viridis")
    ax.set_yticks(range(mags.shape[0]), labels=list(names) if names else [str(c) for c in range(mags.shape[0])],
                  fontsize=7)  # fmt: skip
    ax.set_xlabel("latent dimension")
    fig.colorbar(im, ax=ax, label="mean |μ|")
    ax.set_title(title, fontsize=8)
    save_figure(fig, path)
    plt.close(fig)
    return path


_WEIGHT = {"beta_tcvae": "tc_weight", "dip_vae": "lambda_od", "capacity": "gamma"}


@register_family
class ImageFamily(ExperimentFamily):
    name = "images"
    description = "VAEs on images: disentanglement metrics (with factors), sparsity, per-class codes, traversals"
    eval_config = ImageEval
    defaults = {
        "data": {"name": "dsprites"},
        "prior": {"name": "isotropic"},
        "likelihood": {"name": "bernoulli"},
        "networks": {"name": "burgess"},
        "divergence": {"type": "none"},
        "model": {"latent_dim": 10},
    }
    main_figure = "figures/traversals.png"
    headline = ("factor_vae_score", "beta_vae_score", "mig", "active_units", "hoyer", "test_reconstruction_per_image")
    summary_columns = (
        "name", "row", "divergence", "alpha", "beta", "weight", "seed", "status",
        "factor_vae_score", "beta_vae_score", "mig", "active_units", "hoyer",
        "test_reconstruction_per_image", "test_kl_per_image", "train_seconds",
    )  # fmt: skip
    required_files = ("figures/traversals.png",)

    def evaluate(self, exp: Experiment, run_dir: Path, *, train_seconds: float | None = None) -> dict[str, Any]:
        """Final loss terms, metrics of the mean representation, traversals (see the module docstring).

        ``metrics.json`` holds ``train``/``test`` loss terms on ``eval.loss_images`` images per split (no
        ``dataset_size`` scaling, so ``*_per_point`` divide by that count) and ``measures``.
        """
        from ..metrics import active_units, compute_beta_vae, compute_factor_vae, compute_mig, mean_hoyer

        cfg, vae, e = exp.config, exp.vae, exp.config.eval
        run_dir = Path(run_dir)
        device = next(vae.parameters()).device
        t0 = time.perf_counter()
        vae.eval()
        # a seeded random subset: the training images may be in grid order (data.num_images=null)
        pick = torch.randperm(exp.x_train.shape[0], generator=torch.Generator().manual_seed(e.seed))[: e.loss_images]
        x_tr, x_te = exp.x_train[pick], exp.x_test[: e.loss_images]
        with seeded_torch_rng(e.seed), pyro.validation_enabled(False):
            train_terms = exp.elbo.loss_terms(vae.model, vae.guide, x_tr.to(device))
            test_terms = exp.elbo.loss_terms(vae.model, vae.guide, x_te.to(device))
        loc, scale = _encode_all(vae, exp.x_test, device)
        kl = dimensionwise_kl_to_prior(loc, scale, vae.prior, num_samples=e.kl_samples, seed=e.seed)
        units = active_units(loc.double().numpy())
        per = {k: test_terms[k] / len(x_te) for k in ("reconstruction", "kl") if k in test_terms}
        measures: dict[str, Any] = {
            "active_units": units["active_units"],
            "active_fraction": units["active_fraction"],
            "hoyer": mean_hoyer(loc.double().numpy()) if loc.shape[1] >= 2 else None,
            "mean_encoder_std": float(scale.mean()),
            "test_reconstruction_per_image": per.get("reconstruction"),
            "test_kl_per_image": per.get("kl"),
        }
        metrics: dict[str, Any] = {
            "id": cfg.id,
            "size": cfg.size,
            "family": self.name,
            "data": cfg.data.name,
            "prior": dict(cfg.prior),
            "divergence": cfg.divergence.name,
            "alpha": cfg.model.alpha,
            "beta": cfg.model.beta,
            "seed": cfg.train.seed,
            "steps": cfg.train.steps,
            "num_train_images": int(exp.x_train.shape[0]),
            "train": train_terms,
            "test": test_terms,
            "train_per_point": {k: train_terms[k] / len(x_tr) for k in ("reconstruction", "kl") if k in train_terms},
            "test_per_point": per,
            "measures": measures,
            "dimensionwise_kl": kl.tolist(),
        }
        if exp.data is not None and exp.data.note:
            metrics["note"] = exp.data.note
        if exp.dataset is not None:

            def representation(x):
                return vae.encode(torch.as_tensor(x, dtype=torch.float32).to(device))[0]

            sizes = {"group_size": e.metric_group_size, "num_train": e.metric_num_train,
                     "num_eval": e.metric_num_eval}  # fmt: skip
            factor_vae = compute_factor_vae(exp.dataset, representation, random_state=e.seed,
                                            num_variance_estimate=e.metric_num_variance, **sizes)  # fmt: skip
            beta_vae = compute_beta_vae(exp.dataset, representation, random_state=e.seed + 1, **sizes)
            mig = compute_mig(exp.dataset, representation, random_state=e.seed + 2, num_points=e.metric_num_points)
            measures.update({"factor_vae_score": factor_vae["eval_accuracy"],
                             "beta_vae_score": beta_vae["eval_accuracy"], "mig": mig["mig"]})  # fmt: skip
            metrics["disentanglement"] = {"factor_vae": factor_vae, "beta_vae": beta_vae, "mig": mig}
            metrics["metric_sizes"] = {**sizes, "num_variance_estimate": e.metric_num_variance,
                                       "mig_num_points": e.metric_num_points}  # fmt: skip
        labels = exp.y_test
        class_labels = exp.data is not None and exp.data.class_names is not None and labels.dim() == 1
        if class_labels:
            mags = class_magnitudes(loc.double().numpy(), labels.cpu().numpy(), len(exp.data.class_names))
            metrics["class_magnitudes"] = {"classes": list(exp.data.class_names), "values": mags.tolist()}
        if train_seconds is not None:
            metrics["train_seconds"] = train_seconds
        (run_dir / "figures").mkdir(parents=True, exist_ok=True)
        if e.figures:
            order = np.argsort(-kl, kind="stable")
            traversal_figure(
                vae, exp.x_test, order, kl, run_dir / "figures" / "traversals.png", limit=e.traversal_range,
                steps=e.traversal_steps,
                title=f"{cfg.id} ({cfg.divergence.name}): α={cfg.model.alpha:g}, β={cfg.model.beta:g}; "
                "rows by dimension-wise KL",
            )  # fmt: skip
            if class_labels:
                _class_figure(mags, exp.data.class_names, run_dir / "figures" / "class_magnitudes.png",
                              f"{cfg.id}: average |encoding| per class")  # fmt: skip
        metrics["eval_seconds"] = time.perf_counter() - t0
        write_metrics(run_dir, metrics)
        return {**metrics, "run_dir": str(run_dir)}

    def summary_row(self, config: Mapping[str, Any], result: Mapping[str, Any]) -> dict[str, Any]:
        row = super().summary_row(config, result)
        div = config["divergence"]
        model = config["model"]
        kind = div["type"]
        row.update({"divergence": kind, "alpha": model["alpha"], "beta": model["beta"]})
        if kind == "factor_vae":
            row["weight"] = model["alpha"]
        elif kind in _WEIGHT and isinstance(div.get(_WEIGHT[kind]), int | float):
            row["weight"] = div[_WEIGHT[kind]]
        else:
            row["weight"] = model["beta"]
        return row
