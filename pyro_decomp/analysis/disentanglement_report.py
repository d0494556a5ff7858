"""The thesis' Table 5.6 evaluation of a trained image VAE on dSprites (thesis 003, §5.3-§5.6; SPEC §6-§8).

Everything here is a library function the experiment runner can call; nothing reads a config.

Scores (:func:`image_metric_suite`)
    BetaVAE, FactorVAE, MIG, DCI, SAP and downstream accuracy with sample efficiency, of one
    representation function, each metric with its own seed drawn from ``random_state`` and every sample
    size passed in (the defaults are the thesis'). :func:`metric_table` / :func:`format_metric_table`
    turn a sweep's rows into Table 5.6 (best regularisation strength per model and metric, mean ± sd
    over seeds).

Robustness (:func:`robustness_report`, thesis §5.6 "Domain adaption", Figs. 5.17-5.18)
    The thesis feeds pixel-flip noise (p = 0.001, 0.01, 0.05), a triangle (a shape outside the training
    grid) and colour-inverted images to the encoder and looks at the latent traversals: the model
    "encodes the unseen input into an uninformative region of the latent space" and the triangle, the
    inverted and the noisy images "all generate similar reconstructed images". The report quantifies
    exactly that, per condition, on the same factor vectors: the dimension-wise KL of the encodings to
    the prior (information carried), how far the codes move from the clean images' codes, how well the
    decoder reconstructs the input and the clean image, how much the reconstructions differ from each
    other, and (optionally) the disentanglement scores on the perturbed data. The inputs come from
    :func:`perturbation_inputs`, which the traversal figure :func:`plot_robustness_traversals` reuses.

Agreement between metrics (:func:`spearman_between_metrics`, Figs. 5.13, 5.16, 5.19b)
    Spearman rank correlations across a sweep's runs, square or rectangular, and a heatmap.

Dimension-wise KL against the run's own prior (:func:`dimensionwise_kl_to_prior`)
    ``KL(q(z_i|x) || p(z_i))`` averaged over data, with ``p(z_i)`` the marginal of the model's prior
    (closed form for a Normal marginal, seeded Monte Carlo otherwise, e.g. Student-t). It orders the
    rows of the traversals and the columns of the histograms (thesis Figs. 5.5, 5.12).

Figures (SPEC §8)
    :func:`plot_traversals` (10 steps over [-3, 3], rows in a given order), :func:`plot_aggregate_posterior_histograms`
    (q(z_i) from encoder samples against the prior's marginal, Fig. 5.12) and :func:`plot_mu_sigma_kdes`
    (KDEs of the encoder's mean and standard deviation for active and passive latents, Fig. 5.6).
    Figures are :class:`matplotlib.figure.Figure` objects on an Agg canvas (no display needed); save them
    with :func:`pyro_decomp.analysis.plots.save_figure`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from pyro_decomp.data.dsprites import DSPRITES_OOD_SHAPES, flip_pixels, invert_colours
from pyro_decomp.data.ground_truth import GroundTruthDataset, RandomState, as_generator
from pyro_decomp.metrics import (
    compute_beta_vae,
    compute_dci,
    compute_downstream,
    compute_factor_vae,
    compute_mig,
    compute_sap,
    spearman_correlation_table,
)
from pyro_decomp.metrics._utils import check_dataset, check_positive_int
from pyro_decomp.metrics.correlation import plot_correlation_heatmap
from pyro_decomp.metrics.unsupervised import ACTIVE_UNIT_THRESHOLD

__all__ = [
    "METRIC_NAMES",
    "FlippedPixels",
    "InvertedColours",
    "OutOfDistributionShape",
    "aggregate_posterior_samples",
    "dimensionwise_kl_to_prior",
    "encode_images",
    "evaluate_disentanglement",
    "format_metric_table",
    "image_metric_suite",
    "kl_order",
    "latent_traversal",
    "mean_representation",
    "metric_table",
    "perturbation_inputs",
    "plot_aggregate_posterior_histograms",
    "plot_mu_sigma_kdes",
    "plot_robustness_traversals",
    "plot_spearman_heatmap",
    "plot_traversals",
    "robustness_report",
    "spearman_between_metrics",
]

#: The metrics :func:`image_metric_suite` can compute, in the order their seeds are drawn.
METRIC_NAMES: tuple[str, ...] = ("beta_vae", "factor_vae", "mig", "dci", "sap", "downstream")


# ------------------------------------------------------------------------------------------------ helpers
def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _as_float64(array: object, name: str) -> torch.Tensor:
    """``array`` as a 2-D finite float64 CPU tensor ``[num, latent]``."""
    if isinstance(array, torch.Tensor):
        t = array.detach().cpu().to(torch.float64)
    else:
        try:
            t = torch.as_tensor(np.asarray(array, dtype=np.float64))
        except (TypeError, ValueError):
            raise TypeError(f"{name} must be a tensor or array of shape [num, latent], got {type(array).__name__}") from None
    if t.dim() != 2 or t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{name} must have shape [num, latent] with both > 0, got {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or inf")
    return t


def _check_loc_scale(loc: object, scale: object) -> tuple[torch.Tensor, torch.Tensor]:
    loc, scale = _as_float64(loc, "loc"), _as_float64(scale, "scale")
    if loc.shape != scale.shape:
        raise ValueError(f"loc and scale must have the same shape [num, latent], got {tuple(loc.shape)} and {tuple(scale.shape)}")
    if (scale <= 0).any():
        raise ValueError("scale must be positive (the encoder's standard deviations, not log-variances)")
    return loc, scale


def _check_vae(vae: object) -> None:
    for attr in ("encode", "decoder", "likelihood"):
        if not hasattr(vae, attr):
            raise TypeError(
                f"vae must be a pyro_decomp.models.VAE (with encode, decoder and likelihood); "
                f"{type(vae).__name__} lacks {attr!r}"
            )


def _vae_device(vae: Any) -> torch.device:
    param = next(iter(vae.parameters()), None) if hasattr(vae, "parameters") else None
    return param.device if param is not None else torch.device("cpu")


def kl_order(kl: np.ndarray | Sequence[float]) -> np.ndarray:
    """Latent indices by decreasing dimension-wise KL (ties keep index order): the most informative first.

    >>> kl_order([0.1, 2.0, 0.5]).tolist()
    [1, 2, 0]
    """
    kl = np.asarray(kl, dtype=np.float64)
    if kl.ndim != 1 or kl.size == 0:
        raise ValueError(f"kl must be a non-empty 1-D array (one value per latent), got shape {kl.shape}")
    return np.argsort(-kl, kind="stable")


def _check_order(order: object, latent_dim: int) -> np.ndarray:
    order = np.asarray(order)
    if order.ndim != 1 or order.size == 0 or not np.issubdtype(order.dtype, np.integer):
        raise ValueError(f"order must be a non-empty 1-D array of latent indices (e.g. kl_order(kl)), got {order!r}")
    if order.min() < 0 or order.max() >= latent_dim:
        raise ValueError(f"order holds indices outside 0..{latent_dim - 1}")
    return order.astype(np.int64)


# ------------------------------------------------------------------------------------------------ encoding
def mean_representation(vae: Any, *, device: torch.device | str | None = None) -> Callable[[Any], torch.Tensor]:
    """The representation the thesis' metrics use: ``x -> encoder mean`` on the VAE's device, as float32.

    :returns: ``representation_fn(observations [batch, ...]) -> codes [batch, latent]`` (CPU tensor).
    """
    _check_vae(vae)
    device = torch.device(device) if device is not None else _vae_device(vae)

    def representation(x: Any) -> torch.Tensor:
        with torch.no_grad():
            return vae.encode(torch.as_tensor(x, dtype=torch.float32).to(device))[0].cpu()

    return representation


@torch.no_grad()
def encode_images(vae: Any, images: torch.Tensor, *, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Encoder mean and standard deviation of ``images [n, ...]``, each ``[n, latent]`` float64 on the CPU."""
    _check_vae(vae)
    if not isinstance(images, torch.Tensor) or images.dim() < 2 or images.shape[0] == 0:
        raise TypeError("images must be a torch.Tensor [n, ...] with n > 0")
    batch_size = check_positive_int(batch_size, "batch_size")
    device = _vae_device(vae)
    locs, scales = [], []
    for chunk in images.split(batch_size):
        loc, scale = vae.encode(chunk.to(device=device, dtype=torch.float32))
        locs.append(loc.cpu().double())
        scales.append(scale.cpu().double())
    return torch.cat(locs), torch.cat(scales)


@torch.no_grad()
def _reconstruct_means(vae: Any, loc: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Likelihood means at the codes ``loc [n, latent]`` (``sigmoid(logits)`` for Bernoulli), CPU float64."""
    device = _vae_device(vae)
    out = []
    for chunk in loc.split(batch_size):
        params = vae.decoder(chunk.to(device=device, dtype=torch.float32))
        out.append(vae.likelihood.distribution(params).mean.cpu().double())
    return torch.cat(out)


@torch.no_grad()
def _decode_stats(
    vae: Any, loc: torch.Tensor, inputs: torch.Tensor, clean: torch.Tensor, batch_size: int
) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """One decoder pass at ``loc [n, latent]``: the reconstruction means ``[n, ...]`` and ``-log p(x | z = loc)``
    per image (nats, ``[n]``) of ``inputs`` and of ``clean``."""
    device = _vae_device(vae)
    means, nll_in, nll_clean = [], [], []
    for z, x, c in zip(loc.split(batch_size), inputs.split(batch_size), clean.split(batch_size), strict=True):
        params = vae.decoder(z.to(device=device, dtype=torch.float32))
        d = vae.likelihood.distribution(params)
        means.append(d.mean.cpu().double())
        nll_in.append(-d.log_prob(x.to(device=device, dtype=params.dtype)).reshape(len(z), -1).sum(-1).cpu().double())
        nll_clean.append(-d.log_prob(c.to(device=device, dtype=params.dtype)).reshape(len(z), -1).sum(-1).cpu().double())
    return torch.cat(means), torch.cat(nll_in).numpy(), torch.cat(nll_clean).numpy()


# ------------------------------------------------------------------------------------------------ metric suite
def image_metric_suite(
    dataset: GroundTruthDataset,
    representation_fn: Callable[[Any], Any],
    *,
    random_state: RandomState,
    metrics: Sequence[str] = METRIC_NAMES,
    group_size: int = 64,
    num_train: int = 10_000,
    num_eval: int = 5_000,
    num_variance_estimate: int = 10_000,
    num_points: int = 10_000,
    num_test: int = 5_000,
    downstream_train_sizes: Sequence[int] = (10, 100, 1_000, 10_000),
    efficiency_sizes: tuple[int, int] = (100, 10_000),
    sap_continuous_factors: bool = False,
    batch_size: int = 256,
) -> dict[str, Any]:
    """All the thesis' ground-truth scores of one representation (Tables 5.3/5.6, §5.6 downstream task).

    Each metric is the library's ``compute_*`` (their docstrings state the choices) with its own seed: the
    seeds of all :data:`METRIC_NAMES` are drawn from ``random_state`` in a fixed order, so a metric's
    value does not depend on which other metrics are asked for.

    :param dataset: ground-truth dataset, e.g. :class:`pyro_decomp.data.DSprites` or a perturbed wrapper
        (:class:`FlippedPixels`, :class:`InvertedColours`, :class:`OutOfDistributionShape`).
    :param representation_fn: ``observations [batch, ...] -> codes [batch, latent]``; the thesis uses the
        encoder mean (:func:`mean_representation`).
    :param random_state: int seed or :class:`numpy.random.Generator`.
    :param metrics: subset of :data:`METRIC_NAMES` to compute.
    :param group_size: ``L`` of the BetaVAE and FactorVAE scores (64).
    :param num_train: training votes (BetaVAE, FactorVAE) and training points (DCI, SAP) (10,000).
    :param num_eval: evaluation votes of BetaVAE and FactorVAE (5,000).
    :param num_variance_estimate: points for FactorVAE's global standard deviations (10,000).
    :param num_points: MIG's points (10,000; 20 bins).
    :param num_test: test points of DCI, SAP and the downstream task (5,000).
    :param downstream_train_sizes: downstream training-set sizes (10, 100, 1,000, 10,000).
    :param efficiency_sizes: ``(small, large)``: sample efficiency = accuracy@small / accuracy@large,
        (100, 10,000) in the thesis (§5.6: "the mean accuracy based on 100 samples divided by the mean
        accuracy based on 10 000 samples").
    :param sap_continuous_factors: SAP by linear-SVM accuracy (False, dSprites' factors are classes) or R².
    :param batch_size: observations per call of ``representation_fn``.
    :returns: a flat dict of the requested scores -- ``beta_vae``, ``factor_vae`` (evaluation accuracies),
        ``mig``, ``dci_disentanglement``, ``dci_completeness``, ``dci_informativeness`` (test accuracy),
        ``sap``, ``downstream_accuracy_<n>`` for each ``n`` and ``sample_efficiency`` -- plus ``details``
        (each metric's full ``compute_*`` dict) and ``sizes`` (the sizes used). All values are JSON-able.
    """
    check_dataset(dataset)
    if isinstance(metrics, str) or not isinstance(metrics, Sequence):
        raise TypeError(f"metrics must be a sequence of names from {METRIC_NAMES}, got {metrics!r}")
    unknown = [m for m in metrics if m not in METRIC_NAMES]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; choose from {list(METRIC_NAMES)}")
    group_size = check_positive_int(group_size, "group_size")
    for name, value in (
        ("num_train", num_train), ("num_eval", num_eval), ("num_variance_estimate", num_variance_estimate),
        ("num_points", num_points), ("num_test", num_test), ("batch_size", batch_size),
    ):  # fmt: skip
        check_positive_int(value, name)
    seeds = dict(zip(METRIC_NAMES, as_generator(random_state).integers(2**31 - 1, size=len(METRIC_NAMES)).tolist()))
    votes = {"group_size": group_size, "num_train": num_train, "num_eval": num_eval, "batch_size": batch_size}
    split = {"num_train": num_train, "num_test": num_test, "batch_size": batch_size}
    scores: dict[str, Any] = {}
    details: dict[str, dict[str, float]] = {}
    if "beta_vae" in metrics:
        details["beta_vae"] = compute_beta_vae(dataset, representation_fn, random_state=seeds["beta_vae"], **votes)
        scores["beta_vae"] = details["beta_vae"]["eval_accuracy"]
    if "factor_vae" in metrics:
        details["factor_vae"] = compute_factor_vae(
            dataset, representation_fn, random_state=seeds["factor_vae"], num_variance_estimate=num_variance_estimate, **votes
        )
        scores["factor_vae"] = details["factor_vae"]["eval_accuracy"]
    if "mig" in metrics:
        details["mig"] = compute_mig(
            dataset, representation_fn, random_state=seeds["mig"], num_points=num_points, batch_size=batch_size
        )
        scores["mig"] = details["mig"]["mig"]
    if "dci" in metrics:
        details["dci"] = compute_dci(dataset, representation_fn, random_state=seeds["dci"], **split)
        scores["dci_disentanglement"] = details["dci"]["disentanglement"]
        scores["dci_completeness"] = details["dci"]["completeness"]
        scores["dci_informativeness"] = details["dci"]["informativeness_test"]
    if "sap" in metrics:
        details["sap"] = compute_sap(
            dataset, representation_fn, random_state=seeds["sap"], continuous_factors=sap_continuous_factors, **split
        )
        scores["sap"] = details["sap"]["sap"]
    if "downstream" in metrics:
        details["downstream"] = compute_downstream(
            dataset,
            representation_fn,
            random_state=seeds["downstream"],
            train_sizes=list(downstream_train_sizes),
            num_test=num_test,
            efficiency_sizes=tuple(efficiency_sizes),
            batch_size=batch_size,
        )
        for key, value in details["downstream"].items():
            if key.startswith("accuracy_"):
                scores[f"downstream_{key}"] = value
        scores["sample_efficiency"] = details["downstream"]["sample_efficiency"]
    scores["details"] = details
    scores["sizes"] = {
        "group_size": group_size, "num_train": num_train, "num_eval": num_eval,
        "num_variance_estimate": num_variance_estimate, "num_points": num_points, "num_test": num_test,
        "downstream_train_sizes": [int(n) for n in downstream_train_sizes],
        "efficiency_sizes": [int(n) for n in efficiency_sizes],
    }  # fmt: skip
    return scores


# ------------------------------------------------------------------------------------------------ Table 5.6
def _lookup(row: Mapping[str, Any], key: str) -> Any:
    """``row[key]``, or a dotted path into nested dicts (``"measures.mig"``); ``KeyError`` when absent."""
    if key in row:
        return row[key]
    value: Any = row
    for part in key.split("."):
        if not isinstance(value, Mapping) or part not in value:
            raise KeyError(key)
        value = value[part]
    return value


def metric_table(
    rows: Sequence[Mapping[str, Any]],
    metrics: Sequence[str],
    *,
    model_key: str = "model",
    param_key: str = "param",
    lower_is_better: Sequence[str] = (),
) -> dict[str, Any]:
    """Thesis Table 5.6 from a sweep: per model and metric, the regularisation strength with the best
    mean over seeds (the highest; the lowest for a metric in ``lower_is_better``, such as a reconstruction
    loss), with that mean and the standard deviation over seeds (``ddof=1``; NaN for one run).

    :param rows: one mapping per run (seed), holding ``model_key``, ``param_key`` and the metrics; keys may
        be dotted paths into nested dicts (``"measures.mig"``). Runs with a non-finite value of a metric are
        left out of that metric.
    :param metrics: the metric keys (columns).
    :param lower_is_better: metrics (among ``metrics``) where a smaller mean is better.
    :returns: ``{"models": [...], "metrics": [...], "cells": {model: {metric: {"best_param", "mean", "std",
        "num_runs"}}}, "best_model": {metric: model with the best such mean}}``.

    >>> rows = [{"model": "a", "param": p, "s": p + e} for p in (1, 3) for e in (0.0, 0.2)]
    >>> metric_table(rows, ["s"])["cells"]["a"]["s"]["best_param"]
    3
    """
    if isinstance(rows, Mapping) or not isinstance(rows, Sequence) or not rows:
        raise ValueError("rows must be a non-empty sequence of per-run mappings")
    if isinstance(metrics, str) or not metrics:
        raise ValueError("metrics must be a non-empty sequence of metric keys")
    if isinstance(lower_is_better, str):
        lower_is_better = (lower_is_better,)
    unknown = sorted(set(lower_is_better) - set(metrics))
    if unknown:
        raise ValueError(f"lower_is_better names {unknown[0]!r}, which is not among metrics {list(metrics)}")
    sign = {m: -1.0 if m in lower_is_better else 1.0 for m in metrics}
    groups: dict[Any, dict[Any, list[Mapping[str, Any]]]] = {}
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise TypeError(f"rows[{i}] must be a mapping, got {type(row).__name__}")
        try:
            model, param = _lookup(row, model_key), _lookup(row, param_key)
        except KeyError as e:
            raise ValueError(f"rows[{i}] lacks {e.args[0]!r}; pass model_key/param_key naming its model and strength") from None
        groups.setdefault(model, {}).setdefault(param, []).append(row)
    cells: dict[Any, dict[str, dict[str, Any]]] = {}
    for model, by_param in groups.items():
        cells[model] = {}
        for metric in metrics:
            best = None
            for param, runs in by_param.items():
                values = []
                for run in runs:
                    try:
                        values.append(float(_lookup(run, metric)))
                    except KeyError:
                        raise ValueError(f"a run of model {model!r} ({param_key}={param!r}) lacks metric {metric!r}") from None
                values = np.asarray([v for v in values if math.isfinite(v)])
                if values.size == 0:
                    continue
                mean = float(values.mean())
                if best is None or sign[metric] * mean > sign[metric] * best["mean"]:
                    std = float(values.std(ddof=1)) if values.size > 1 else float("nan")
                    best = {"best_param": param, "mean": mean, "std": std, "num_runs": int(values.size)}
            cells[model][metric] = best or {"best_param": None, "mean": float("nan"), "std": float("nan"), "num_runs": 0}
    best_model = {}
    for metric in metrics:
        finite = {m: c[metric]["mean"] for m, c in cells.items() if math.isfinite(c[metric]["mean"])}
        best_model[metric] = max(finite, key=lambda m: sign[metric] * finite[m]) if finite else None
    return {"models": list(groups), "metrics": list(metrics), "cells": cells, "best_model": best_model}


def format_metric_table(table: Mapping[str, Any], *, digits: int = 3, labels: Mapping[str, str] | None = None) -> str:
    """Markdown of :func:`metric_table`: ``mean ± sd (best param)``, the best model per metric in bold; a cell
    from a single run has no sd and reads ``mean (best param)``."""
    labels = dict(labels or {})
    metrics = list(table["metrics"])
    lines = ["| model | " + " | ".join(labels.get(m, m) for m in metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for model in table["models"]:
        cells = []
        for metric in metrics:
            c = table["cells"][model][metric]
            sd = f" ± {c['std']:.{digits}f}" if math.isfinite(c["std"]) else ""
            text = f"{c['mean']:.{digits}f}{sd} ({c['best_param']})"
            cells.append(f"**{text}**" if table["best_model"].get(metric) == model else text)
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ Spearman
def spearman_between_metrics(
    rows: Sequence[Mapping[str, Any]] | Mapping[str, Sequence[float]],
    metrics: Sequence[str] | None = None,
    *,
    against: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Spearman rank correlations between metrics across a sweep's runs (thesis Figs. 5.13, 5.16, 5.19b).

    Computed with :func:`scipy.stats.spearmanr` (average ranks for ties) through
    :func:`pyro_decomp.metrics.spearman_correlation_table`. Runs with a non-finite value in any selected
    metric are dropped; a metric constant across runs has NaN correlations.

    :param rows: one mapping per run (keys may be dotted paths into nested dicts, e.g. ``"measures.mig"``),
        or ``{metric: [value per run]}``.
    :param metrics: the metrics (rows of the matrix); default all keys present in every run.
    :param against: when given, the columns (e.g. unsupervised metrics: ``["elbo", "reconstruction", "kl"]``)
        and the result is the rectangular ``[len(metrics), len(against)]`` block (Fig. 5.16); otherwise the
        square matrix of ``metrics`` against themselves (Fig. 5.13).
    :returns: ``{"names": row names, "columns": column names, "correlation": [R, C] array,
        "p_value": [R, C] array, "num_runs": int}``.

    >>> t = spearman_between_metrics([{"a": 1, "b": 3}, {"a": 2, "b": 2}, {"a": 3, "b": 1}], ["a", "b"])
    >>> t["correlation"].tolist()
    [[1.0, -1.0], [-1.0, 1.0]]
    """
    if metrics is not None and (isinstance(metrics, str) or not isinstance(metrics, Sequence)):
        raise TypeError(f"metrics must be a sequence of metric names, got {metrics!r}")
    if against is not None and (isinstance(against, str) or not isinstance(against, Sequence) or not against):
        raise TypeError(f"against must be a non-empty sequence of metric names, got {against!r}")
    if metrics is None and against is not None:
        raise ValueError("pass metrics (the rows) together with against (the columns)")
    if not isinstance(rows, Mapping):
        if isinstance(rows, str) or not isinstance(rows, Sequence):
            raise TypeError("rows must be a sequence of per-run mappings or a {metric: values} mapping")
        if metrics is not None:
            wanted = list(dict.fromkeys([*metrics, *(against or [])]))
            flat = []
            for i, row in enumerate(rows):
                if not isinstance(row, Mapping):
                    raise TypeError(f"rows[{i}] must be a mapping, got {type(row).__name__}")
                try:
                    flat.append({k: float(_lookup(row, k)) for k in wanted})
                except KeyError as e:
                    raise ValueError(f"rows[{i}] lacks metric {e.args[0]!r}") from None
            rows = flat
    names = None if metrics is None else list(dict.fromkeys([*metrics, *(against or [])]))
    table = spearman_correlation_table(rows, metrics=names)
    names = table["names"]
    row_names = list(metrics) if metrics is not None else names
    col_names = list(against) if against is not None else row_names
    ri = [names.index(n) for n in row_names]
    ci = [names.index(n) for n in col_names]
    return {
        "names": row_names,
        "columns": col_names,
        "correlation": table["correlation"][np.ix_(ri, ci)],
        "p_value": table["p_value"][np.ix_(ri, ci)],
        "num_runs": table["num_runs"],
    }


def plot_spearman_heatmap(table: Mapping[str, Any], *, ax=None, annotate: bool = True, title: str | None = None):
    """Heatmap (red-blue, ``[-1, 1]``) of :func:`spearman_between_metrics`, square or rectangular; returns the axes."""
    corr = np.asarray(table["correlation"], dtype=float)
    names, columns = list(table["names"]), list(table.get("columns", table["names"]))
    if corr.shape != (len(names), len(columns)):
        raise ValueError(f"correlation has shape {corr.shape} but the table names {len(names)} x {len(columns)}")
    if ax is None:  # sized to the matrix, so that the two-decimal labels of a dozen metrics do not overlap
        ax = _figure(3.0 + 0.6 * len(columns), 2.0 + 0.45 * len(names)).add_subplot(1, 1, 1)
    ax = plot_correlation_heatmap({"names": names, "columns": columns, "correlation": corr}, ax=ax, annotate=annotate)
    if title:
        ax.set_title(title, fontsize=9)
    return ax


# ------------------------------------------------------------------------------------------------ KL to the prior
def _prior_distribution(prior: Any) -> torch.distributions.Distribution:
    """The prior's distribution of one code, in float64 on the CPU (a copy; the model is not touched)."""
    if isinstance(prior, torch.nn.Module):
        if not callable(getattr(prior, "distribution", None)):
            raise TypeError(f"prior must be a pyro_decomp Prior (with .distribution()), got {type(prior).__name__}")
        prior = copy.deepcopy(prior).to(device="cpu", dtype=torch.float64)
        return prior.distribution()
    if isinstance(prior, torch.distributions.Distribution):
        return prior
    raise TypeError(
        f"prior must be a pyro_decomp Prior (e.g. vae.prior) or a torch distribution with event_shape [latent], "
        f"got {type(prior).__name__}"
    )


def _marginals(d: torch.distributions.Distribution, latent: int):
    """``("normal", loc [D], scale [D])`` when every marginal is Normal, else ``("log_prob", fn)`` with
    ``fn(z [..., D]) -> log p_i(z_i) [..., D]``."""
    if tuple(d.event_shape) != (latent,):
        raise ValueError(f"the prior's event_shape is {tuple(d.event_shape)} but the codes have {latent} latents")
    if isinstance(d, torch.distributions.Independent) and d.reinterpreted_batch_ndims == 1:
        base = d.base_dist
        if isinstance(base, torch.distributions.Normal):
            return ("normal", base.loc.double().expand(latent), base.scale.double().expand(latent))

        def log_marginal(z: torch.Tensor) -> torch.Tensor:
            return base.log_prob(z.to(base.mean.dtype)).double()

        return ("log_prob", log_marginal)
    # torch's MixtureSameFamily, or a mixture offering the same views (models.priors.IsotropicGaussianMixture)
    if hasattr(d, "mixture_distribution") and hasattr(d, "component_distribution"):
        comp = d.component_distribution
        if isinstance(comp, torch.distributions.Independent) and comp.reinterpreted_batch_ndims == 1:
            base = comp.base_dist  # batch [C, D]
            log_pi = d.mixture_distribution.logits.log_softmax(-1).double()  # [C]

            def log_marginal(z: torch.Tensor) -> torch.Tensor:
                lp = base.log_prob(z.unsqueeze(-2).to(base.mean.dtype)).double()  # [..., C, D]
                return torch.logsumexp(lp + log_pi[:, None], dim=-2)

            return ("log_prob", log_marginal)
    raise TypeError(
        f"dimension-wise KL needs the prior's per-dimension marginals: an Independent distribution over the "
        f"latents or a mixture with diagonal components; got {type(d).__name__}"
    )


@torch.no_grad()  # a learned prior's parameters (anisotropic, learn=True) require grad; this is evaluation
def dimensionwise_kl_to_prior(
    loc: torch.Tensor | np.ndarray,
    scale: torch.Tensor | np.ndarray,
    prior: Any,
    *,
    num_samples: int = 1_000,
    random_state: RandomState = 0,
    chunk_size: int | None = None,
) -> dict[str, Any]:
    """Dimension-wise KL of the encoder against the run's own prior marginals, averaged over data points:

    .. math:: \\mathrm{KL}_i = \\frac1n \\sum_{j=1}^n \\mathrm{KL}\\big(\\mathcal N(\\mu_{ji}, \\sigma_{ji}^2) \\,\\|\\, p(z_i)\\big).

    * Normal marginal ``p(z_i) = N(m_i, s_i^2)`` (isotropic, anisotropic priors): the closed form
      ``log(s/σ) + (σ² + (μ - m)²) / (2 s²) - 1/2``.
    * Any other marginal (Student-t, sparse mixture, Gaussian mixture with diagonal components):
      ``KL = -H[q] - E_q[log p(z_i)]`` with the Gaussian entropy ``H[q] = ½ log(2πeσ²)`` exact and the
      cross-entropy by Monte Carlo: ``num_samples`` standard-normal draws ``ε`` (antithetic pairs ``±ε``,
      seeded by ``random_state``) shared by all data points, ``z = μ + σ ε``, with ``log N(z; 0, 1)`` (exact
      expectation under ``q``) as a control variate, its coefficient fitted by regression over the draws.
      The standard error is the spread of the adjusted per-pair estimates over the pairs, so it accounts
      for the shared draws.

    :param loc: encoder means ``[n, latent]``.
    :param scale: encoder standard deviations ``[n, latent]`` (positive).
    :param prior: the model's prior (``vae.prior``, a :class:`~pyro_decomp.models.Prior`) or a torch
        distribution with ``event_shape == [latent]``.
    :param num_samples: Monte Carlo draws (even; 1,000 by default); unused for a Normal marginal.
    :param random_state: int seed or numpy Generator for the Monte Carlo draws.
    :param chunk_size: data points per vectorised step (default: about 4M values per step).
    :returns: ``{"kl": [latent] array, "standard_error": [latent] array (zeros for the closed form),
        "method": "closed_form" | "monte_carlo", "num_samples": int (0 for the closed form)}``.

    >>> from pyro_decomp.models import IsotropicGaussianPrior
    >>> out = dimensionwise_kl_to_prior(torch.zeros(2, 1), torch.ones(2, 1), IsotropicGaussianPrior(1))
    >>> out["method"], float(out["kl"][0])
    ('closed_form', 0.0)
    """
    loc, scale = _check_loc_scale(loc, scale)
    n, latent = loc.shape
    marg = _marginals(_prior_distribution(prior), latent)
    if marg[0] == "normal":
        m, s = marg[1], marg[2]
        kl = torch.log(s / scale) + (scale**2 + (loc - m) ** 2) / (2.0 * s**2) - 0.5
        return {"kl": kl.mean(0).numpy(), "standard_error": np.zeros(latent), "method": "closed_form", "num_samples": 0}
    num_samples = check_positive_int(num_samples, "num_samples")
    if num_samples < 4 or num_samples % 2:
        raise ValueError(f"num_samples must be an even number >= 4 (antithetic pairs), got {num_samples}")
    log_marginal = marg[1]
    rng = as_generator(random_state)
    generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
    half = num_samples // 2
    eps_half = torch.randn(half, latent, generator=generator, dtype=torch.float64)
    eps = torch.cat([eps_half, -eps_half])  # [S, D], row s and s + S/2 are a pair
    if chunk_size is None:
        chunk_size = max(1, 2**22 // (num_samples * latent))
    chunk_size = check_positive_int(chunk_size, "chunk_size")
    total = torch.zeros(num_samples, latent, dtype=torch.float64)  # sum over points of log p(z_s)
    total_ref = torch.zeros(num_samples, latent, dtype=torch.float64)  # sum over points of log N(z_s; 0, 1)
    with torch.no_grad():
        for mu, sd in zip(loc.split(chunk_size), scale.split(chunk_size), strict=True):
            z = mu[None] + sd[None] * eps[:, None, :]  # [S, n_chunk, D]
            lp = log_marginal(z)
            if not torch.isfinite(lp).all():
                raise ValueError("the prior's marginal log-density is not finite at some encoder samples")
            total += lp.sum(1)
            total_ref += (-0.5 * z**2).sum(1)
    # per-draw averages over the points, paired antithetically: [S/2, D]
    pairs = 0.5 * (total[:half] + total[half:]) / n
    ref = 0.5 * (total_ref[:half] + total_ref[half:]) / n - 0.5 * math.log(2.0 * math.pi)
    # control variate: log N(z; 0, 1), whose expectation under q is exact; its coefficient is the
    # regression slope of the pairs on it (an O(1/S) bias, far below the standard error)
    ref_mean = (-0.5 * math.log(2.0 * math.pi) - 0.5 * (loc**2 + scale**2)).mean(0)
    centred = ref - ref.mean(0)
    var_ref = (centred**2).sum(0)
    slope = torch.where(var_ref > 0, ((pairs - pairs.mean(0)) * centred).sum(0) / var_ref.clamp_min(1e-300), 0.0)
    adjusted = pairs - slope * (ref - ref_mean)  # [S/2, D], each with mean E_q[log p(z_i)]
    cross_entropy = -adjusted.mean(0)
    entropy = (0.5 * torch.log(2.0 * math.pi * math.e * scale**2)).mean(0)
    kl = cross_entropy - entropy
    se = adjusted.std(0, unbiased=True) / math.sqrt(half)
    return {"kl": kl.numpy(), "standard_error": se.numpy(), "method": "monte_carlo", "num_samples": num_samples}


# ------------------------------------------------------------------------------------------------ perturbed data
class _Wrapped(GroundTruthDataset):
    def __init__(self, dataset: GroundTruthDataset) -> None:
        self.dataset = check_dataset(dataset)

    @property
    def factor_sizes(self) -> tuple[int, ...]:
        return tuple(self.dataset.factor_sizes)

    @property
    def factor_names(self) -> tuple[str, ...]:
        return tuple(self.dataset.factor_names)

    @property
    def observation_shape(self) -> tuple[int, ...]:
        return tuple(self.dataset.observation_shape)


class FlippedPixels(_Wrapped):
    """``dataset`` with pixel-flip noise: each pixel of each observation flips (0 <-> 1) with ``probability``,
    drawn from the ``random_state`` the metric passes (:func:`pyro_decomp.data.flip_pixels`)."""

    def __init__(self, dataset: GroundTruthDataset, probability: float) -> None:
        super().__init__(dataset)
        try:
            probability = float(probability)
        except (TypeError, ValueError):
            raise TypeError(f"probability must be a number in [0, 1], got {probability!r}") from None
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"probability must lie in [0, 1], got {probability}")
        self.probability = probability

    def sample_observations_from_factors(self, factors: np.ndarray, random_state: RandomState = None) -> torch.Tensor:
        rng = as_generator(0 if random_state is None else random_state)
        images = torch.as_tensor(self.dataset.sample_observations_from_factors(factors, rng))
        return flip_pixels(images, self.probability, rng)


class InvertedColours(_Wrapped):
    """``dataset`` with colour-inverted observations, ``1 - x`` (white background, black shape)."""

    def sample_observations_from_factors(self, factors: np.ndarray, random_state: RandomState = None) -> torch.Tensor:
        return invert_colours(torch.as_tensor(self.dataset.sample_observations_from_factors(factors, random_state)))


class OutOfDistributionShape(_Wrapped):
    """dSprites with every image drawn as a shape outside the training grid (default the triangle), same
    64x64 binary format, scale, orientation and position semantics (the procedural renderer,
    :meth:`pyro_decomp.data.DSprites.render_factors` with ``shape_override``). The shape factor is dropped:
    the factors are ``(scale, orientation, pos_x, pos_y)``. Images are always rendered, also when
    ``dataset`` serves the official file's images (the file has no triangle)."""

    def __init__(self, dataset: GroundTruthDataset, shape: str = "triangle") -> None:
        super().__init__(dataset)
        if not callable(getattr(dataset, "render_factors", None)) or tuple(dataset.factor_names)[:1] != ("shape",):
            raise TypeError(
                f"OutOfDistributionShape needs a dSprites dataset (pyro_decomp.data.DSprites), got {type(dataset).__name__}"
            )
        if shape not in DSPRITES_OOD_SHAPES:
            raise ValueError(f"shape must be one of {DSPRITES_OOD_SHAPES}, got {shape!r}")
        self.shape = shape

    @property
    def factor_sizes(self) -> tuple[int, ...]:
        return tuple(self.dataset.factor_sizes)[1:]

    @property
    def factor_names(self) -> tuple[str, ...]:
        return tuple(self.dataset.factor_names)[1:]

    def full_factors(self, factors: np.ndarray) -> np.ndarray:
        """``[num, 4]`` factors with a shape column of 0 put back in front (``[num, 5]``)."""
        factors = self.validate_factors(factors)
        return np.concatenate([np.zeros((len(factors), 1), dtype=np.int64), factors], axis=1)

    def sample_observations_from_factors(self, factors: np.ndarray, random_state: RandomState = None) -> torch.Tensor:
        return self.dataset.render_factors(self.full_factors(factors), shape_override=self.shape)


def _flip_name(p: float) -> str:
    return f"flip_{p:g}"


def perturbation_inputs(
    dataset: GroundTruthDataset,
    factors: np.ndarray,
    *,
    random_state: RandomState,
    flip_probabilities: Sequence[float] = (0.001, 0.01, 0.05),
    triangle: bool = True,
    inverted: bool = True,
) -> dict[str, torch.Tensor]:
    """The thesis' robustness inputs for the same factor vectors (Figs. 5.17-5.18).

    :param dataset: dSprites (:class:`pyro_decomp.data.DSprites`); any ground-truth dataset of binary images
        works when ``triangle=False``.
    :param factors: ``[n, 5]`` integer factors (e.g. ``dataset.sample_factors(n, rng)``).
    :param random_state: seed of the pixel-flip noise (one stream, conditions in order).
    :param flip_probabilities: pixel-flip probabilities (0.001, 0.01, 0.05 in the thesis).
    :param triangle: add the triangle (shape ignored, the other factors kept).
    :param inverted: add the colour-inverted clean images.
    :returns: ``{"clean": [n, 1, 64, 64], "flip_<p>": ..., "triangle": ..., "inverted": ...}`` (insertion order).
    """
    check_dataset(dataset)
    factors = dataset.validate_factors(factors) if hasattr(dataset, "validate_factors") else np.asarray(factors)
    if isinstance(flip_probabilities, (str, bytes)) or not isinstance(flip_probabilities, Sequence):
        raise TypeError(f"flip_probabilities must be a sequence of numbers in [0, 1], got {flip_probabilities!r}")
    rng = as_generator(random_state)
    clean = torch.as_tensor(dataset.sample_observations_from_factors(factors, rng)).float()
    inputs = {"clean": clean}
    for p in flip_probabilities:
        if not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"flip_probabilities must lie in [0, 1], got {p}")
        inputs[_flip_name(float(p))] = flip_pixels(clean, float(p), rng)
    if triangle:
        ood = OutOfDistributionShape(dataset)
        inputs["triangle"] = ood.sample_observations_from_factors(factors[:, 1:]).float()
    if inverted:
        inputs["inverted"] = invert_colours(clean)
    return inputs


def _condition_dataset(dataset: GroundTruthDataset, name: str, probability: float | None) -> GroundTruthDataset:
    if name == "clean":
        return dataset
    if name == "triangle":
        return OutOfDistributionShape(dataset)
    if name == "inverted":
        return InvertedColours(dataset)
    return FlippedPixels(dataset, probability)


def robustness_report(
    vae: Any,
    dataset: GroundTruthDataset,
    *,
    random_state: RandomState,
    num_images: int = 1_000,
    flip_probabilities: Sequence[float] = (0.001, 0.01, 0.05),
    triangle: bool = True,
    inverted: bool = True,
    metrics: Sequence[str] = ("beta_vae", "factor_vae", "mig"),
    metric_sizes: Mapping[str, Any] | None = None,
    kl_num_samples: int = 1_000,
    batch_size: int = 256,
) -> dict[str, Any]:
    """How the encodings, reconstructions and scores change under pixel-flip noise, an out-of-distribution
    shape (triangle) and colour inversion (thesis §5.6, Figs. 5.17-5.18).

    ``num_images`` factor vectors are drawn once; every condition encodes the same vectors
    (:func:`perturbation_inputs`), so its codes pair with the clean codes. Per condition:

    * ``kl_to_prior`` (``[latent]``) and ``kl_to_prior_total``: :func:`dimensionwise_kl_to_prior` of the
      encodings against ``vae.prior``. Small values mean the input lands in an uninformative region, the
      thesis' explanation of the near-identical traversals.
    * ``active_units``: latents whose encoder mean varies over the inputs (variance > 0.01).
    * ``mean_abs_mu``, ``mean_encoder_std``: average ``|μ|`` and ``σ``.
    * ``code_shift``: mean ``||μ(x') - μ(x)||₂`` between each perturbed input and its clean image;
      ``relative_code_shift`` divides it by the mean distance between the clean codes of two different
      images (about 1: the perturbation moves a code as far as an unrelated image's code).
    * ``reconstruction_nll_input`` / ``reconstruction_nll_clean``: ``-log p(x | z = μ(x'))`` per image (nats)
      of the perturbed input and of the clean image (does the model reconstruct, or denoise?).
    * ``reconstruction_change``: mean absolute pixel difference between the reconstruction of ``x'`` and
      that of the clean ``x``;
      ``reconstruction_spread``: per-pixel variance of the reconstructions across images, averaged over pixels
      (near 0: "all generate similar reconstructed images").
    * ``metrics``: :func:`image_metric_suite` on the perturbed dataset (:class:`FlippedPixels`,
      :class:`OutOfDistributionShape` -- whose factors leave out the shape --, :class:`InvertedColours`),
      with ``metric_sizes`` passed through; left out when ``metrics`` is empty.

    :param vae: a trained :class:`pyro_decomp.models.VAE` (``encode``, ``decoder``, ``likelihood``, ``prior``).
    :param dataset: :class:`pyro_decomp.data.DSprites` (``triangle=True`` needs its renderer).
    :param random_state: int seed or numpy Generator; the factors, the noise and the metrics' seeds derive from it.
    :param metric_sizes: keyword arguments of :func:`image_metric_suite` (sizes, ``batch_size``).
    :returns: ``{"conditions": [names], "num_images": n, "flip_probabilities": [...], "per_condition":
        {name: {...the keys above...}}}``; JSON-able (lists and floats).
    """
    _check_vae(vae)
    check_dataset(dataset)
    num_images = check_positive_int(num_images, "num_images")
    if num_images < 2:
        raise ValueError("num_images must be at least 2 (code distances between different images)")
    batch_size = check_positive_int(batch_size, "batch_size")
    if isinstance(metrics, str) or not isinstance(metrics, Sequence):
        raise TypeError(f"metrics must be a sequence of names from {METRIC_NAMES} (or empty), got {metrics!r}")
    metric_sizes = dict(metric_sizes or {})
    for key in ("random_state", "metrics"):
        if key in metric_sizes:
            raise ValueError(f"metric_sizes must not hold {key!r}; pass it to robustness_report itself")
    prior = getattr(vae, "prior", None)
    if prior is None:
        raise TypeError("vae must have a prior (vae.prior) for the dimension-wise KL")
    rng = as_generator(random_state)
    factors = dataset.sample_factors(num_images, rng)
    inputs = perturbation_inputs(
        dataset, factors, random_state=rng, flip_probabilities=flip_probabilities, triangle=triangle, inverted=inverted
    )
    probabilities = {_flip_name(float(p)): float(p) for p in flip_probabilities}
    kl_seed = int(rng.integers(2**31 - 1))
    metric_seed = int(rng.integers(2**31 - 1))
    representation = mean_representation(vae)
    clean = inputs["clean"]
    clean_loc, clean_scale = encode_images(vae, clean, batch_size=batch_size)
    clean_stats = _decode_stats(vae, clean_loc, clean, clean, batch_size)
    clean_recon = clean_stats[0]
    # mean distance between the clean codes of different images: pair image j with image j + 1 (cyclic)
    baseline = float((clean_loc - clean_loc.roll(1, 0)).norm(dim=1).mean())
    per_condition: dict[str, dict[str, Any]] = {}
    for name, x in inputs.items():
        if name == "clean":
            loc, scale = clean_loc, clean_scale
            recon, nll_input, nll_clean = clean_stats
        else:
            loc, scale = encode_images(vae, x, batch_size=batch_size)
            recon, nll_input, nll_clean = _decode_stats(vae, loc, x, clean, batch_size)
        kl = dimensionwise_kl_to_prior(loc, scale, prior, num_samples=kl_num_samples, random_state=kl_seed)
        shift = float((loc - clean_loc).norm(dim=1).mean())
        entry: dict[str, Any] = {
            "kl_to_prior": kl["kl"].tolist(),
            "kl_to_prior_total": float(kl["kl"].sum()),
            "kl_method": kl["method"],
            "active_units": int((loc.var(0, unbiased=False) > ACTIVE_UNIT_THRESHOLD).sum()),
            "mean_abs_mu": float(loc.abs().mean()),
            "mean_encoder_std": float(scale.mean()),
            "code_shift": shift,
            "relative_code_shift": shift / baseline if baseline > 0 else float("nan"),
            "reconstruction_nll_input": float(nll_input.mean()),
            "reconstruction_nll_clean": float(nll_clean.mean()),
            "reconstruction_change": float((recon - clean_recon).abs().mean()),
            "reconstruction_spread": float(recon.reshape(len(recon), -1).var(0, unbiased=False).mean()),
        }
        if metrics:
            data = _condition_dataset(dataset, name, probabilities.get(name))
            entry["metrics"] = image_metric_suite(
                data, representation, random_state=metric_seed, metrics=list(metrics), **metric_sizes
            )
        per_condition[name] = entry
    return {
        "conditions": list(inputs),
        "num_images": num_images,
        "flip_probabilities": [float(p) for p in flip_probabilities],
        "per_condition": per_condition,
    }


# ------------------------------------------------------------------------------------------------ figures
@torch.no_grad()
def latent_traversal(
    vae: Any, image: torch.Tensor, order: Sequence[int] | np.ndarray, *, limit: float = 3.0, steps: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """Decoded traversals of one image's mean code (thesis §5.3): latent ``order[r]`` set to each of ``steps``
    equally spaced values in ``[-limit, limit]``, the others kept at the encoder mean.

    :param image: one observation, ``[1, *obs_shape]`` or ``[*obs_shape]``.
    :returns: ``(values [steps], images [len(order), steps, *obs_shape])``; images are the likelihood's
        mean (``sigmoid(logits)`` for Bernoulli).
    """
    _check_vae(vae)
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"image must be a torch.Tensor, got {type(image).__name__}")
    steps = check_positive_int(steps, "steps")
    if not (isinstance(limit, (int, float)) and math.isfinite(limit) and limit > 0):
        raise ValueError(f"limit must be a positive number (3 in the thesis), got {limit!r}")
    obs_shape = getattr(vae.encoder, "obs_shape", None) if hasattr(vae, "encoder") else None
    if obs_shape is not None and tuple(image.shape) == tuple(obs_shape):
        image = image.unsqueeze(0)
    if image.dim() < 2 or image.shape[0] != 1:
        raise ValueError(f"image must be one observation [1, ...] or [*obs_shape], got shape {tuple(image.shape)}")
    device = _vae_device(vae)
    loc, _ = vae.encode(image.to(device=device, dtype=torch.float32))
    order = _check_order(order, loc.shape[1])
    values = torch.linspace(-float(limit), float(limit), steps, device=device, dtype=loc.dtype)
    z = loc.repeat(len(order), steps, 1)  # [R, steps, D]
    z[torch.arange(len(order)), :, torch.as_tensor(order, device=device)] = values
    params = vae.decoder(z.reshape(len(order) * steps, -1))
    mean = vae.likelihood.distribution(params).mean
    return values.cpu().numpy(), mean.reshape(len(order), steps, *mean.shape[1:]).cpu().numpy()


def _show(ax, img: np.ndarray) -> None:
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[0] == 1:
        img = img[0]
    elif img.ndim == 3 and img.shape[0] == 3:
        img = img.transpose(1, 2, 0)
    ax.imshow(np.clip(img, 0, 1), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def plot_traversals(
    vae: Any,
    image: torch.Tensor,
    order: Sequence[int] | np.ndarray,
    *,
    kl: np.ndarray | Sequence[float] | None = None,
    limit: float = 3.0,
    steps: int = 10,
    title: str | None = None,
):
    """Latent traversal figure (thesis Figs. 5.5, 5.8, 5.10): a header row with the input and its reconstruction,
    then one row per latent in ``order`` (pass ``kl_order(kl)`` for rows by decreasing dimension-wise KL
    against the own prior), ``steps`` columns over ``[-limit, limit]`` (10 over [-3, 3] by default).

    :param kl: optional per-latent KL, printed in each row's label.
    :returns: the :class:`matplotlib.figure.Figure`.
    """
    values, rows = latent_traversal(vae, image, order, limit=limit, steps=steps)
    order = np.asarray(order)
    image = image if image.dim() > len(rows.shape) - 2 else image.unsqueeze(0)
    device = _vae_device(vae)
    with torch.no_grad():
        recon = _reconstruct_means(vae, vae.encode(image.to(device=device, dtype=torch.float32))[0].cpu(), 1)[0]
    fig = _figure(0.9 * steps, 0.9 * (len(order) + 1))
    axes = fig.subplots(len(order) + 1, steps, squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    _show(axes[0][0], image[0].cpu().numpy())
    axes[0][0].set_title("input", fontsize=7)
    if steps > 1:
        _show(axes[0][1], recon.numpy())
        axes[0][1].set_title("recon.", fontsize=7)
    for c in range(2, steps):
        axes[0][c].axis("off")
    for r, d in enumerate(order, start=1):
        for c in range(steps):
            _show(axes[r][c], rows[r - 1, c])
        label = f"z{int(d)}" + (f"\nKL {float(np.asarray(kl)[int(d)]):.2f}" if kl is not None else "")
        axes[r][0].set_ylabel(label, fontsize=6)
    for c in range(steps):
        axes[-1][c].set_xlabel(f"{float(values[c]):+.1f}", fontsize=6)
    if title:
        fig.suptitle(title, fontsize=8)
    return fig


def plot_robustness_traversals(
    vae: Any,
    inputs: Mapping[str, torch.Tensor],
    order: Sequence[int] | np.ndarray,
    *,
    index: int = 0,
    num_latents: int | None = 5,
    limit: float = 3.0,
    steps: int = 10,
) -> dict[str, Any]:
    """One traversal figure per condition of :func:`perturbation_inputs` (thesis Figs. 5.17-5.18), all of the
    image ``index`` and the same latents (the first ``num_latents`` of ``order``; all when ``None``).

    :returns: ``{condition: Figure}``.
    """
    if not isinstance(inputs, Mapping) or not inputs:
        raise ValueError("inputs must be the non-empty {condition: images} dict of perturbation_inputs")
    order = np.asarray(order)
    if num_latents is not None:
        order = order[: check_positive_int(num_latents, "num_latents")]
    figures = {}
    for name, images in inputs.items():
        if not 0 <= index < len(images):
            raise ValueError(f"index must lie in [0, {len(images)}), got {index}")
        figures[name] = plot_traversals(vae, images[index : index + 1], order, limit=limit, steps=steps, title=name)
    return figures


def aggregate_posterior_samples(
    loc: torch.Tensor | np.ndarray, scale: torch.Tensor | np.ndarray, *, num_samples: int = 10_000, random_state: RandomState = 0
) -> np.ndarray:
    """Draws of the aggregate posterior ``q(z) = (1/n) Σ_j q(z|x_j)`` (thesis Fig. 5.12): pick a data point
    uniformly (with replacement), then draw ``z = μ_j + σ_j ε``. Returns ``[num_samples, latent]``."""
    loc, scale = _check_loc_scale(loc, scale)
    num_samples = check_positive_int(num_samples, "num_samples")
    rng = as_generator(random_state)
    pick = rng.integers(loc.shape[0], size=num_samples)
    eps = rng.standard_normal((num_samples, loc.shape[1]))
    return loc.numpy()[pick] + scale.numpy()[pick] * eps


def plot_aggregate_posterior_histograms(
    loc: torch.Tensor | np.ndarray,
    scale: torch.Tensor | np.ndarray,
    prior: Any,
    *,
    order: Sequence[int] | np.ndarray | None = None,
    kl: np.ndarray | Sequence[float] | None = None,
    num_samples: int = 10_000,
    random_state: RandomState = 0,
    bins: int = 50,
    title: str | None = None,
):
    """Histograms of each marginal ``q(z_i)`` of the aggregate posterior (``num_samples`` encoder draws,
    :func:`aggregate_posterior_samples`) against the density of the prior's marginal ``p(z_i)`` (thesis
    Fig. 5.12), one panel per latent, ordered by ``order`` (default: decreasing dimension-wise KL against
    ``prior``, :func:`dimensionwise_kl_to_prior`).

    :param prior: ``vae.prior`` (or a torch distribution with ``event_shape [latent]``).
    :returns: the :class:`matplotlib.figure.Figure`.
    """
    from pyro_decomp.analysis.posterior_plots import prior_marginal_density

    loc, scale = _check_loc_scale(loc, scale)
    latent = loc.shape[1]
    if kl is None and order is None:
        kl = dimensionwise_kl_to_prior(loc, scale, prior, random_state=random_state)["kl"]
    order = kl_order(kl) if order is None else _check_order(order, latent)
    bins = check_positive_int(bins, "bins")
    z = aggregate_posterior_samples(loc, scale, num_samples=num_samples, random_state=random_state)
    lo, hi = np.quantile(z, [0.001, 0.999])
    lo, hi = min(float(lo), -3.0), max(float(hi), 3.0)
    grid = np.linspace(lo, hi, 400)
    density = prior_marginal_density(_prior_distribution(prior), grid)  # [G, D]
    ncols = min(len(order), 5)
    nrows = math.ceil(len(order) / ncols)
    fig = _figure(2.2 * ncols, 2.0 * nrows)
    axes = np.asarray(fig.subplots(nrows, ncols, squeeze=False)).reshape(-1)
    for k, ax in enumerate(axes):
        if k >= len(order):
            ax.axis("off")
            continue
        d = int(order[k])
        ax.hist(z[:, d], bins=bins, range=(lo, hi), density=True, alpha=0.6, color="C0", label="q(z_i)")
        ax.plot(grid, density[:, d], color="C3", label="p(z_i)")
        label = f"z{d}" + (f" (KL {float(np.asarray(kl)[d]):.2f})" if kl is not None else "")
        ax.set_title(label, fontsize=8)
        ax.tick_params(labelsize=6)
    axes[0].legend(fontsize=6)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def plot_mu_sigma_kdes(
    loc: torch.Tensor | np.ndarray,
    scale: torch.Tensor | np.ndarray,
    *,
    order: Sequence[int] | np.ndarray | None = None,
    threshold: float = ACTIVE_UNIT_THRESHOLD,
    title: str | None = None,
) -> tuple[Any, np.ndarray]:
    """Kernel density estimates of the encoder mean ``μ(x)`` and standard deviation ``σ(x)`` per latent, for the
    active and the passive latents (thesis Fig. 5.6): a 2x2 figure (``μ`` active, ``μ`` passive, ``σ`` active,
    ``σ`` passive). A latent is active when ``Var_x μ_i(x) > threshold`` (0.01, as
    :func:`pyro_decomp.metrics.active_units`). Curves are labelled by latent index; ``order`` (e.g. by
    dimension-wise KL) sets the legend order. A latent whose values are (numerically) constant is drawn
    as a vertical line at its value.

    :returns: ``(figure, active [latent] bool array)``.
    """
    from scipy.stats import gaussian_kde

    loc, scale = _check_loc_scale(loc, scale)
    if not threshold >= 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    mu, sigma = loc.numpy(), scale.numpy()
    latent = mu.shape[1]
    order = np.arange(latent) if order is None else _check_order(order, latent)
    active = mu.var(axis=0) > threshold
    fig = _figure(8.0, 5.5)
    axes = fig.subplots(2, 2, squeeze=False)
    panels = [
        (axes[0][0], mu, True, "μ, active"),
        (axes[0][1], mu, False, "μ, passive"),
        (axes[1][0], sigma, True, "σ, active"),
        (axes[1][1], sigma, False, "σ, passive"),
    ]
    for ax, values, want, label in panels:
        dims = [int(d) for d in order if bool(active[d]) == want]
        for i, d in enumerate(dims):
            x = values[:, d]
            color = f"C{i % 10}"
            if np.ptp(x) <= 1e-12 * max(1.0, float(np.abs(x).max())) or x.size < 2:
                ax.axvline(float(x.mean()), color=color, label=f"z{d}")
                continue
            grid = np.linspace(x.min() - 0.1 * np.ptp(x), x.max() + 0.1 * np.ptp(x), 200)
            try:
                ax.plot(grid, gaussian_kde(x)(grid), color=color, label=f"z{d}")
            except np.linalg.LinAlgError:  # degenerate sample
                ax.axvline(float(x.mean()), color=color, label=f"z{d}")
        ax.set_title(f"{label} ({len(dims)})", fontsize=9)
        ax.tick_params(labelsize=7)
        if dims:
            ax.legend(fontsize=6)
        else:
            ax.text(0.5, 0.5, "none", ha="center", va="center", transform=ax.transAxes, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig, active


# ------------------------------------------------------------------------------------------------ one call
def evaluate_disentanglement(
    vae: Any,
    dataset: GroundTruthDataset,
    images: torch.Tensor,
    *,
    random_state: RandomState,
    figures_dir: Any = None,
    metric_sizes: Mapping[str, Any] | None = None,
    robustness: Mapping[str, Any] | None = None,
    kl_num_samples: int = 1_000,
    traversal_limit: float = 3.0,
    traversal_steps: int = 10,
    histogram_samples: int = 10_000,
    batch_size: int = 256,
) -> dict[str, Any]:
    """The whole Table 5.6 evaluation of one trained image VAE, for a runner to call once per run.

    1. Encodes ``images`` (test images) and computes the dimension-wise KL against ``vae.prior``
       (:func:`dimensionwise_kl_to_prior`), its order and the active units (``Var μ > 0.01``).
    2. :func:`image_metric_suite` of the encoder mean on ``dataset`` (``metric_sizes`` passed through).
    3. :func:`robustness_report` (``robustness`` passed through as keyword arguments, e.g.
       ``{"num_images": 1000, "metric_sizes": {...}}``; pass ``None`` to skip it).
    4. With ``figures_dir``: ``traversals.png`` (first test image, rows by KL), ``aggregate_posterior.png``,
       ``mu_sigma_kde.png`` and ``robustness_traversals_<condition>.png`` (each PNG through
       :func:`pyro_decomp.analysis.plots.save_figure`).

    :returns: ``{"scores": suite dict, "dimensionwise_kl": [latent], "kl_order": [latent], "kl_method": str,
        "active_units": int, "active": [latent] bools, "robustness": report or None, "figures": [paths]}``;
        JSON-able.
    """
    from pathlib import Path

    from pyro_decomp.analysis.plots import save_figure

    _check_vae(vae)
    if not isinstance(images, torch.Tensor) or images.dim() < 2 or images.shape[0] < 2:
        raise TypeError("images must be a torch.Tensor of at least 2 test images [n, ...]")
    rng = as_generator(random_state)
    seeds = rng.integers(2**31 - 1, size=4).tolist()
    loc, scale = encode_images(vae, images, batch_size=batch_size)
    kl = dimensionwise_kl_to_prior(loc, scale, vae.prior, num_samples=kl_num_samples, random_state=seeds[0])
    order = kl_order(kl["kl"])
    active = (loc.var(0, unbiased=False) > ACTIVE_UNIT_THRESHOLD).numpy()
    scores = image_metric_suite(
        dataset, mean_representation(vae), random_state=seeds[1], batch_size=batch_size, **dict(metric_sizes or {})
    )
    report = None
    if robustness is not None:
        options = {"kl_num_samples": kl_num_samples, "batch_size": batch_size, **dict(robustness)}
        report = robustness_report(vae, dataset, random_state=seeds[2], **options)
    paths: list[str] = []
    if figures_dir is not None:
        out = Path(figures_dir)
        figs = {
            "traversals": plot_traversals(
                vae, images[:1], order, kl=kl["kl"], limit=traversal_limit, steps=traversal_steps,
                title="latent traversals, rows by dimension-wise KL to the prior",
            ),
            "aggregate_posterior": plot_aggregate_posterior_histograms(
                loc, scale, vae.prior, order=order, kl=kl["kl"], num_samples=histogram_samples, random_state=seeds[3]
            ),
            "mu_sigma_kde": plot_mu_sigma_kdes(loc, scale, order=order)[0],
        }  # fmt: skip
        if report is not None:
            factors = dataset.sample_factors(1, seeds[3])
            inputs = perturbation_inputs(
                dataset, factors, random_state=seeds[3],
                flip_probabilities=robustness.get("flip_probabilities", (0.001, 0.01, 0.05)),
                triangle=robustness.get("triangle", True), inverted=robustness.get("inverted", True),
            )  # fmt: skip
            for name, fig in plot_robustness_traversals(
                vae, inputs, order, num_latents=None, limit=traversal_limit, steps=traversal_steps
            ).items():
                figs[f"robustness_traversals_{name}"] = fig
        for name, fig in figs.items():
            paths.append(str(save_figure(fig, out / f"{name}.png")))
    return {
        "scores": scores,
        "dimensionwise_kl": kl["kl"].tolist(),
        "dimensionwise_kl_standard_error": kl["standard_error"].tolist(),
        "kl_method": kl["method"],
        "kl_order": order.tolist(),
        "active_units": int(active.sum()),
        "active": active.tolist(),
        "robustness": report,
        "figures": paths,
    }
