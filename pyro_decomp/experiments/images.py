"""The ``images`` family: VAEs on image data (dSprites / 2D Shapes, Fashion-MNIST, MNIST, CelebA).

What is measured depends on what the data offers, not on its name:

* always: the final loss terms on ``eval.loss_images`` images per split, active units, dimension-wise KL of
  the test encodings against the run's own prior
  (:func:`~pyro_decomp.analysis.disentanglement_report.dimensionwise_kl_to_prior`), the Hoyer sparsity
  of the mean encodings (004 §5), and latent traversals sorted by dimension-wise KL;
* data with ground-truth factors (``DataBundle.ground_truth``): the FactorVAE and BetaVAE scores and MIG of
  the encoder mean, on images sampled from the whole factor grid; with ``eval.full_suite`` the whole thesis
  Table 5.6 evaluation (:func:`~pyro_decomp.analysis.evaluate_disentanglement`: also DCI, SAP, downstream
  accuracy and sample efficiency, histograms of q(z_i) against the prior, KDEs of μ and σ, and with
  ``eval.robustness`` pixel-flip noise, an out-of-distribution triangle and inversion);
* data with class labels: the average encoding magnitude per class (004 Fig. 7), as a table and a figure.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch

from ..config import weight_label
from ..train import seeded_torch_rng
from .base import Experiment, ExperimentFamily, register_family, write_metrics

__all__ = ["ImageEval", "ImageFamily", "aggregate_mmd", "class_magnitudes"]


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
    kl_samples: int = 1000  # Monte Carlo draws for the dimension-wise KL of a non-Gaussian prior
    # the whole thesis Table 5.6 evaluation (data with factors): DCI, SAP, downstream accuracy and sample
    # efficiency as well, histograms of q(z_i) against the prior, KDEs of mu and sigma
    full_suite: bool = False
    metric_num_test: int = 5_000  # DCI / SAP / downstream: test points
    downstream_train_sizes: list[int] = field(default_factory=lambda: [10, 100, 1000, 10000])
    efficiency_sizes: list[int] = field(default_factory=lambda: [100, 10000])  # sample efficiency: acc(a)/acc(b)
    # robustness (thesis §5.6, with full_suite): pixel-flip noise, an out-of-distribution triangle, inversion
    robustness: bool = False
    robustness_images: int = 1000
    flip_probabilities: list[float] = field(default_factory=lambda: [0.001, 0.01, 0.05])
    # per-class average encoding magnitude (004 Fig. 7) by a ground-truth factor (e.g. shape), for data
    # without class labels; data with class labels (Fashion-MNIST) always gets it
    class_factor: str | None = None
    note: str = ""  # shown in metrics.json and figure titles, e.g. that a data set stands in for another

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
        if len(self.efficiency_sizes) != 2 or not set(self.efficiency_sizes) <= set(self.downstream_train_sizes):
            raise ValueError("eval.efficiency_sizes: must be two of eval.downstream_train_sizes, got "
                             f"{self.efficiency_sizes} and {self.downstream_train_sizes}.")  # fmt: skip
        if not all(0 <= p <= 1 for p in self.flip_probabilities):
            raise ValueError(f"eval.flip_probabilities: must be in [0, 1], got {self.flip_probabilities}.")
        if self.robustness and not self.full_suite:
            raise ValueError("eval.robustness: needs eval.full_suite=true (it reruns the metric suite per condition).")


@torch.no_grad()
def aggregate_mmd(loc: torch.Tensor, scale: torch.Tensor, prior, kernel, *, seed: int = 0) -> float:
    """Unbiased MMD² between one draw of q(z | x) per test encoding and as many draws of the prior (the
    evaluation of 001 Fig. 4 right / 004 Fig. 3): independent of the training estimator's batches."""
    from ..divergences import mmd_u_statistic

    gen = torch.Generator().manual_seed(seed)
    loc, scale = loc.double(), scale.double()
    zq = loc + scale * torch.randn(loc.shape, generator=gen, dtype=loc.dtype)
    with seeded_torch_rng(seed + 1):
        if hasattr(prior, "distribution"):
            zp = prior.distribution().sample((loc.shape[0],))
        else:
            from ..models.marginal import ProgramMarginal

            zp = ProgramMarginal(prior, getattr(prior, "site", "z")).sample((loc.shape[0],))
    return float(mmd_u_statistic(zq, zp.cpu().double(), kernel))


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
    headline = ("factor_vae_score", "beta_vae_score", "mig", "active_units", "hoyer", "mmd",
                "test_reconstruction_per_image")  # fmt: skip
    summary_columns = (
        "name", "row", "divergence", "alpha", "beta", "weight", "seed", "status",
        "factor_vae_score", "beta_vae_score", "mig", "dci_disentanglement", "sap", "sample_efficiency",
        "active_units", "hoyer", "mmd", "test_reconstruction_per_image", "test_kl_per_image", "train_seconds",
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
        from ..analysis.disentanglement_report import dimensionwise_kl_to_prior, encode_images

        loc, scale = encode_images(vae, exp.x_test, batch_size=512)
        kl_report = dimensionwise_kl_to_prior(loc, scale, vae.prior, num_samples=e.kl_samples, random_state=e.seed)
        kl = np.asarray(kl_report["kl"], dtype=np.float64)
        units = active_units(loc.numpy())
        per = {k: test_terms[k] / len(x_te) for k in ("reconstruction", "kl") if k in test_terms}
        from ..divergences.mmd import IMQKernel, PerDimensionIMQKernel

        mmd_kernel = PerDimensionIMQKernel() if cfg.divergence.get("kernel") != "imq" else IMQKernel()
        measures: dict[str, Any] = {
            # 004 Eq. 10's dimension-wise kernel, or the IMQ kernel when the run trains with it (001 CelebA)
            "mmd": aggregate_mmd(loc, scale, vae.prior, mmd_kernel, seed=e.seed),
            "active_units": units["active_units"],
            "active_fraction": units["active_fraction"],
            "hoyer": mean_hoyer(loc.numpy()) if loc.shape[1] >= 2 else None,
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
            "dimensionwise_kl_method": kl_report["method"],
        }
        if e.note:
            metrics["note"] = e.note
        if exp.data is not None and exp.data.note:
            metrics["note"] = exp.data.note
        (run_dir / "figures").mkdir(parents=True, exist_ok=True)
        if exp.dataset is not None and e.full_suite:
            metrics.update(self._full_suite(exp, run_dir, device, measures))
        elif exp.dataset is not None:

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
        labels, names = self._class_labels(exp)
        class_labels = labels is not None
        if class_labels:
            mags = class_magnitudes(loc.numpy(), labels, len(names))
            metrics["class_magnitudes"] = {"classes": list(names), "values": mags.tolist()}
        if train_seconds is not None:
            metrics["train_seconds"] = train_seconds
        (run_dir / "figures").mkdir(parents=True, exist_ok=True)
        if e.figures and not (exp.dataset is not None and e.full_suite):  # the suite draws its own traversals
            from ..analysis.disentanglement_report import kl_order, plot_traversals
            from ..analysis.plots import save_figure

            fig = plot_traversals(
                vae, exp.x_test[:1], kl_order(kl), kl=kl, limit=e.traversal_range, steps=e.traversal_steps,
                title=f"{cfg.id} ({cfg.divergence.name}): α={weight_label(cfg.model.alpha)}, "
                f"β={weight_label(cfg.model.beta)}; rows by dimension-wise KL{'; ' + e.note if e.note else ''}",
            )  # fmt: skip
            save_figure(fig, run_dir / "figures" / "traversals.png")
        if e.figures and class_labels:
            _class_figure(mags, names, run_dir / "figures" / "class_magnitudes.png",
                          f"{cfg.id}: average |encoding| per class{' (' + e.note + ')' if e.note else ''}")  # fmt: skip
        metrics["eval_seconds"] = time.perf_counter() - t0
        write_metrics(run_dir, metrics)
        return {**metrics, "run_dir": str(run_dir)}

    @staticmethod
    def _class_labels(exp: Experiment):
        """``(labels [n_test], class names)`` for the per-class figure, or ``(None, None)``."""
        e, data = exp.config.eval, exp.data
        y = exp.y_test
        if data is not None and data.class_names is not None and y.dim() == 1:
            return y.cpu().numpy(), list(data.class_names)
        if e.class_factor is not None and exp.dataset is not None:
            names = list(exp.dataset.factor_names)
            if e.class_factor not in names:
                raise ValueError(f"eval.class_factor: {e.class_factor!r} is not a factor of the data; choose one of "
                                 f"{', '.join(names)}.")  # fmt: skip
            k = names.index(e.class_factor)
            size = exp.dataset.factor_sizes[k]
            labels = y[:, k].cpu().numpy()
            value_names = (getattr(exp.dataset, "factor_value_names", None) or {}).get(e.class_factor)
            return labels, list(value_names or [f"{e.class_factor} {v}" for v in range(size)])
        return None, None

    def _full_suite(self, exp: Experiment, run_dir: Path, device, measures: dict[str, Any]) -> dict[str, Any]:
        """The thesis Table 5.6 evaluation of a run on data with factors; fills ``measures`` in place."""
        from ..analysis.disentanglement_report import evaluate_disentanglement

        e = exp.config.eval
        sizes = {"group_size": e.metric_group_size, "num_train": e.metric_num_train, "num_eval": e.metric_num_eval,
                 "num_variance_estimate": e.metric_num_variance, "num_points": e.metric_num_points,
                 "num_test": e.metric_num_test, "downstream_train_sizes": tuple(e.downstream_train_sizes),
                 "efficiency_sizes": tuple(e.efficiency_sizes)}  # fmt: skip
        robustness = None
        if e.robustness:
            robustness = {"num_images": e.robustness_images, "flip_probabilities": tuple(e.flip_probabilities),
                          "metric_sizes": sizes}  # fmt: skip
        report = evaluate_disentanglement(
            exp.vae, exp.dataset, exp.x_test[:].to(device), random_state=e.seed,
            figures_dir=run_dir / "figures" if e.figures else None, metric_sizes=sizes, robustness=robustness,
            kl_num_samples=e.kl_samples, traversal_limit=e.traversal_range, traversal_steps=e.traversal_steps,
        )  # fmt: skip
        scores = report["scores"]
        measures["factor_vae_score"] = scores.get("factor_vae")
        measures["beta_vae_score"] = scores.get("beta_vae")
        for key, value in scores.items():
            if isinstance(value, int | float) and key not in ("factor_vae", "beta_vae"):
                measures[key] = value
        return {"table_5_6": report, "metric_sizes": sizes}

    #: metrics compared across a sweep (Table 5.6 and the Spearman matrix), when the runs have them
    sweep_metrics = ("beta_vae_score", "factor_vae_score", "mig", "dci_disentanglement", "dci_completeness",
                     "dci_informativeness", "sap", "sample_efficiency", "hoyer", "active_units",
                     "test_reconstruction_per_image")  # fmt: skip
    #: of those, the ones where lower is better (a loss), for the best strength in table.md
    sweep_lower_is_better = ("test_reconstruction_per_image",)

    def sweep_figures(self, spec: Any, results, out_dir: Path, log=print) -> list[Path]:
        """``table.md`` (thesis Table 5.6: per grid block and metric, the best strength's mean ± sd over
        seeds) and ``spearman.png`` / ``spearman.json`` (rank correlations between the metrics across runs,
        thesis Fig. 5.13), from the runs that finished."""
        import json as _json

        from ..analysis.disentanglement_report import (
            format_metric_table, metric_table, plot_spearman_heatmap, spearman_between_metrics,
        )  # fmt: skip
        from ..analysis.plots import save_figure

        rows = []
        for run, res in zip(spec.runs, results, strict=True):
            if res.get("status") == "failed":
                continue
            m = res.get("measures", {}) or {}
            keys = spec.vary[run.row] if run.row < len(spec.vary) else []
            param = run.assignment.get(keys[0], run.setting) if keys else run.setting
            rows.append({"model": spec.rows[run.row], "param": param,
                         **{k: m.get(k) for k in self.sweep_metrics}})  # fmt: skip
        metrics = [k for k in self.sweep_metrics
                   if sum(isinstance(r.get(k), int | float) and np.isfinite(r[k]) for r in rows) >= 2]  # fmt: skip
        written: list[Path] = []
        if not rows or not metrics:
            return written
        out_dir = Path(out_dir)
        lower = [m for m in metrics if m in self.sweep_lower_is_better]
        table = metric_table(rows, metrics, lower_is_better=lower)
        path = out_dir / "table.md"
        path.write_text(f"# {spec.id}: best strength per model (mean ± sd over seeds)\n\n"
                        f"Each cell: the best strength's mean ± sd over its seeds (no sd from one seed) and, in "
                        f"brackets, that strength; best is the highest, the lowest for {', '.join(lower) or '-'}. "
                        f"Bold: the best model.\n\n{format_metric_table(table)}\n")  # fmt: skip
        written.append(path)
        if len(rows) >= 3 and len(metrics) >= 2:
            corr = spearman_between_metrics(rows, metrics)
            ax = plot_spearman_heatmap(corr, title=f"{spec.id}: Spearman correlation across {corr['num_runs']} runs")
            written.append(save_figure(ax.figure, out_dir / "spearman.png"))
            (out_dir / "spearman.json").write_text(_json.dumps(
                {"names": corr["names"], "correlation": np.asarray(corr["correlation"]).tolist(),
                 "num_runs": corr["num_runs"]}, indent=2, default=float))  # fmt: skip
            written.append(out_dir / "spearman.json")
        return written

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
