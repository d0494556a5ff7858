"""Figures: the aggregate posterior q(z) over the prior's contours (paper Fig. 3, workshop Fig. 2).

Plot functions take data first, then options; they accept an ``ax`` and return the axes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["plot_aggregate_posterior", "plot_density_grid", "save_figure"]


def _pyplot():
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg", "module://matplotlib_inline.backend_inline"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_aggregate_posterior(
    density: np.ndarray,
    prior_density: np.ndarray | None,
    extent: Sequence[float],
    *,
    ax=None,
    title: str | None = None,
    levels: int = 3,
    cmap: str = "viridis",
    gamma: float = 0.5,
):
    """Density of q(z) as an image, with the prior's density as contour lines.

    :param density: ``[grid_y, grid_x]`` values of q(z) on a regular grid (row 0 at ``extent[2]``).
    :param prior_density: same grid for p(z), or ``None``.
    :param extent: ``[x_min, x_max, y_min, y_max]``.
    :param gamma: exponent of the colour scale (1 = linear).

    >>> import numpy as np
    >>> ax = plot_aggregate_posterior(np.ones((8, 8)), np.ones((8, 8)), [0, 1, 0, 1])
    >>> ax.get_xlim()
    (0.0, 1.0)
    """
    density = np.asarray(density, dtype=float)
    if density.ndim != 2:
        raise ValueError(f"density must be a 2-D grid [y, x], got shape {density.shape}.")
    if len(extent) != 4:
        raise ValueError(f"extent must be [x_min, x_max, y_min, y_max], got {extent!r}.")
    plt = _pyplot()
    if ax is None:
        _, ax = plt.subplots(figsize=(4, 4))
    from matplotlib.colors import PowerNorm

    # a square-root colour scale: tight encoders (small β) make tall narrow peaks that a linear scale hides
    norm = PowerNorm(gamma=gamma, vmin=0.0, vmax=max(float(density.max()), 1e-300))
    ax.imshow(
        density, origin="lower", extent=tuple(extent), cmap=cmap, norm=norm, aspect="equal", interpolation="bilinear"
    )
    if prior_density is not None:
        prior_density = np.asarray(prior_density, dtype=float)
        xs = np.linspace(extent[0], extent[1], prior_density.shape[1])
        ys = np.linspace(extent[2], extent[3], prior_density.shape[0])
        top = prior_density.max()
        if top > 0:
            lv = top * np.array([0.1, 0.5, 0.9][:levels])
            ax.contour(xs, ys, prior_density, levels=np.unique(lv), colors="white", linewidths=0.7, alpha=0.8)
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def plot_density_grid(panels: Sequence[Sequence[dict | None]], *, suptitle: str | None = None, panel_size: float = 2.4):
    """A grid of :func:`plot_aggregate_posterior` panels, one per run (workshop Fig. 2 layout).

    :param panels: rows of dicts with ``density``, ``prior_density``, ``extent`` and ``title``;
        ``None`` leaves a cell empty.
    :returns: the figure.
    """
    rows = len(panels)
    cols = max((len(r) for r in panels), default=0)
    if rows == 0 or cols == 0:
        raise ValueError("panels must hold at least one row with one panel.")
    plt = _pyplot()
    fig, axes = plt.subplots(rows, cols, figsize=(panel_size * cols, panel_size * rows), squeeze=False)
    for r in range(rows):
        for c in range(cols):
            ax = axes[r][c]
            panel = panels[r][c] if c < len(panels[r]) else None
            if panel is None or panel.get("density") is None:
                ax.axis("off")
                if panel is not None and panel.get("title"):
                    ax.set_title(panel["title"] + "\n(failed)", fontsize=9)
                continue
            plot_aggregate_posterior(
                panel["density"], panel.get("prior_density"), panel["extent"], ax=ax, title=panel.get("title")
            )
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def save_figure(fig, path: str | Path, *, dpi: int = 120) -> Path:
    """Save and close ``fig`` (PNG), creating the parent directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    _pyplot().close(fig)
    return path
