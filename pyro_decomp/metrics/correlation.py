"""Spearman rank correlations between metrics across the runs of a sweep (thesis Fig. 5.19)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import scipy.stats

__all__ = ["spearman_correlation_table", "plot_correlation_heatmap"]


def spearman_correlation_table(
    runs: Sequence[Mapping[str, float]] | Mapping[str, Sequence[float]],
    *,
    metrics: Sequence[str] | None = None,
) -> dict[str, object]:
    """Spearman correlation between every pair of metrics over a set of runs.

    :param runs: one ``{metric: value}`` dict per run, or ``{metric: [value per run]}``.
    :param metrics: the metrics to correlate (default: those present in every run, sorted).
    :returns: ``{"names": [M names], "correlation": [M, M] array, "p_value": [M, M] array,
        "num_runs": int}``. A metric constant across runs has no rank correlation: its row and
        column are NaN (1 on the diagonal). Runs with a NaN in any selected metric are dropped.

    >>> t = spearman_correlation_table([{"a": 1, "b": 2}, {"a": 2, "b": 1}, {"a": 3, "b": 0}])
    >>> t["names"], float(t["correlation"][0, 1])
    (['a', 'b'], -1.0)
    """
    if isinstance(runs, Mapping):
        columns = {str(k): np.asarray(v, dtype=np.float64) for k, v in runs.items()}
        lengths = {v.shape for v in columns.values()}
        if len(lengths) != 1 or len(next(iter(lengths))) != 1:
            raise ValueError("runs as a mapping must give each metric a 1-D sequence of equal length")
        available = sorted(columns)
    else:
        if not isinstance(runs, Sequence) or not all(isinstance(r, Mapping) for r in runs):
            raise TypeError("runs must be a sequence of {metric: value} dicts or a {metric: values} dict")
        available = sorted(set.intersection(*(set(r) for r in runs))) if runs else []
        columns = {name: np.asarray([r[name] for r in runs], dtype=np.float64) for name in available}
    names = list(available if metrics is None else metrics)
    unknown = [m for m in names if m not in columns]
    if unknown:
        raise ValueError(f"metrics {unknown} are not in every run; available: {available}")
    if len(names) < 2:
        raise ValueError(f"need at least two metrics to correlate, got {names}")
    data = np.stack([columns[m] for m in names], axis=1)  # [runs, M]
    data = data[np.all(np.isfinite(data), axis=1)]
    if data.shape[0] < 3:
        raise ValueError(f"need at least 3 runs with finite values for a rank correlation, got {data.shape[0]}")
    m = len(names)
    corr = np.full((m, m), np.nan)
    p_value = np.full((m, m), np.nan)
    varying = np.ptp(data, axis=0) > 0
    np.fill_diagonal(corr, 1.0)
    np.fill_diagonal(p_value, 0.0)
    idx = np.flatnonzero(varying)
    if idx.size >= 2:
        with warnings.catch_warnings():
            # Ties are handled by average ranks; nothing to warn about once constant columns are out.
            warnings.simplefilter("ignore", scipy.stats.ConstantInputWarning)
            result = scipy.stats.spearmanr(data[:, idx])
        c = np.atleast_2d(result.statistic)
        p = np.atleast_2d(result.pvalue)
        if idx.size == 2:  # scipy returns scalars for two columns
            c = np.array([[1.0, c.item()], [c.item(), 1.0]])
            p = np.array([[0.0, p.item()], [p.item(), 0.0]])
        corr[np.ix_(idx, idx)] = c
        p_value[np.ix_(idx, idx)] = p
    return {"names": names, "correlation": corr, "p_value": p_value, "num_runs": int(data.shape[0])}


def plot_correlation_heatmap(table: Mapping[str, object], *, ax=None, annotate: bool = True):
    """Heatmap of :func:`spearman_correlation_table`'s ``correlation``; returns the axes."""
    if ax is None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(4, 3.5))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
    names, corr = list(table["names"]), np.asarray(table["correlation"])
    columns = list(table.get("columns", names))  # a rectangular block: rows `names`, columns `columns`
    image = ax.imshow(corr, vmin=-1.0, vmax=1.0, cmap="RdBu_r")
    ax.set_xticks(range(len(columns)), columns, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    if annotate:
        for i in range(len(names)):
            for j in range(len(columns)):
                if np.isfinite(corr[i, j]):
                    color = "white" if abs(corr[i, j]) > 0.6 else "black"  # readable on the dark cells
                    ax.text(j, i, f"{corr[i, j]:.2f}", ha="center", va="center", fontsize=7, color=color)
    ax.figure.colorbar(image, ax=ax, label="Spearman")
    return ax
