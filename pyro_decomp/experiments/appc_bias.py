"""The ``appC-bias`` experiment (004 App. C, SPEC §7): minibatch estimators of KL(q(z) || p(z)) and TC vs batch size.

On a fixed encoder and dataset, every estimator is evaluated on many minibatches of each size ``B`` and
compared with a reference computed over the whole dataset (``B = n``, exact mixture). App. C predicts:

* the nested estimators are biased, and the bias shrinks as ``B`` grows (MSS is exact at ``B = n``);
* when ``B ≪ n`` and encodings rarely overlap, the exclusive-KL estimate (MSS) is close to
  :math:`\\mathbb E_{p(x)}\\mathrm{KL}(q(z \\mid x) \\| p(z)) - \\log n`: a β-VAE's KL shifted by a constant;
  MWS (weights :math:`1/(nB)`) sits a further :math:`\\log B` lower.

Entry points: the experiment ``appC-bias`` (family ``appc-bias``: ``pyro-decomp run appC-bias``) and the
function :func:`run_appc_bias` (writes ``appc_bias.json``, ``metrics.json`` and ``figures/appc_bias.png``).

>>> import tempfile
>>> out = run_appc_bias(tempfile.mkdtemp(), size="smoke", figure=False)   # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..divergences import ExclusiveKL, TotalCorrelation, estimator_bias
from .base import ExperimentFamily, register_family, write_metrics

__all__ = ["APPC_SIZES", "AppCBiasFamily", "AppCEval", "fixed_linear_gaussian_encoder", "run_appc_bias"]

#: smoke: well under a minute on 2 CPU cores; paper: a larger dataset and more repeats
APPC_SIZES: dict[str, dict[str, Any]] = {
    "smoke": {
        "num_data": 1000,
        "latent_dim": 2,
        "encoder_scale": 0.05,
        "batch_sizes": [4, 16, 64, 256, 1000],
        "num_repeats": 10,
        "num_reference_repeats": 2,
    },
    "paper": {
        "num_data": 4000,
        "latent_dim": 2,
        "encoder_scale": 0.05,
        "batch_sizes": [4, 16, 64, 256, 1024, 4000],
        "num_repeats": 50,
        "num_reference_repeats": 5,
    },
}


def fixed_linear_gaussian_encoder(
    num_data: int, latent_dim: int, *, data_dim: int = 20, encoder_scale: float = 0.05, seed: int = 0
) -> dict[str, torch.Tensor]:
    """A fixed dataset and encoder: :math:`x_n \\sim \\mathcal N(0, I_{20})`,
    :math:`q(z \\mid x) = \\mathcal N(\\tanh(W x) \\cdot 1.5, \\mathrm{diag}(s(x)^2))` with a fixed random ``W`` and
    :math:`s(x) = \\texttt{encoder\\_scale}\\cdot(0.5 + \\mathrm{sigmoid}(V x))`.

    Returns ``x [n, 20]``, ``loc [n, D]``, ``scale [n, D]`` in float64. The nonlinearity makes :math:`q(z)`
    non-Gaussian and correlated (non-zero TC). With ``D = 2``, ``encoder_scale = 0.05`` and ``n = 1000`` each
    encoding overlaps a few dozen of the ``n`` others but rarely one of a small minibatch: the App. C regime.
    """
    if isinstance(num_data, bool) or not isinstance(num_data, int) or num_data < 2:
        raise ValueError(f"num_data must be an integer >= 2, got {num_data!r}.")
    if isinstance(latent_dim, bool) or not isinstance(latent_dim, int) or latent_dim < 2:
        raise ValueError(f"latent_dim must be an integer >= 2 (TC needs two dimensions), got {latent_dim!r}.")
    if not encoder_scale > 0:
        raise ValueError(f"encoder_scale must be > 0, got {encoder_scale!r}.")
    g = torch.Generator().manual_seed(int(seed))
    x = torch.randn(num_data, data_dim, generator=g, dtype=torch.float64)
    # rows of W share a common direction, so the latent dimensions are correlated
    common = torch.randn(1, data_dim, generator=g, dtype=torch.float64)
    W = (torch.randn(latent_dim, data_dim, generator=g, dtype=torch.float64) + 0.8 * common) / math.sqrt(data_dim)
    V = torch.randn(latent_dim, data_dim, generator=g, dtype=torch.float64) / math.sqrt(data_dim)
    loc = 1.5 * torch.tanh(x @ W.T)
    scale = encoder_scale * (0.5 + torch.sigmoid(x @ V.T))
    return {"x": x, "loc": loc, "scale": scale}


def _mean_kl_to_standard_normal(loc: torch.Tensor, scale: torch.Tensor) -> float:
    # closed form KL(N(m, s²) || N(0, 1)) = ½(s² + m² − 1) − log s, summed over dims, averaged over data
    return float((0.5 * (scale**2 + loc**2 - 1.0) - scale.log()).sum(-1).mean())


def run_appc_bias(
    out_dir: str | Path,
    *,
    size: str = "smoke",
    seed: int = 0,
    num_data: int | None = None,
    latent_dim: int | None = None,
    batch_sizes: list[int] | None = None,
    num_repeats: int | None = None,
    num_reference_repeats: int | None = None,
    encoder_scale: float | None = None,
    loc: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
    figure: bool = True,
) -> dict[str, Any]:
    """Run the ``appC-bias`` experiment and write ``out_dir/appc_bias.json`` (+ ``figures/appc_bias.png``).

    Estimators: exclusive KL :math:`\\mathrm{KL}(q(z) \\| \\mathcal N(0, I))` and total correlation, each by MWS
    and MSS, for every ``B`` in ``batch_sizes``; the reference uses the whole dataset (``B = n``, MSS = exact
    mixture). Also records the App. C prediction for ``B ≪ n``: ``E_x KL(q(z|x) || p) − log n``.

    :param out_dir: run directory (created).
    :param size: ``"smoke"`` or ``"paper"`` (see :data:`APPC_SIZES`); the other arguments override it.
    :param loc: optional encoder means ``[n, D]`` of your own trained encoder on your dataset (with
        ``scale``); replaces the fixed synthetic encoder (:func:`fixed_linear_gaussian_encoder`).
    :param scale: encoder standard deviations ``[n, D]``, with ``loc``.
    :returns: the JSON content as a dict.
    """
    given = {"num_data": num_data, "latent_dim": latent_dim, "batch_sizes": batch_sizes, "num_repeats": num_repeats,
             "num_reference_repeats": num_reference_repeats, "encoder_scale": encoder_scale}  # fmt: skip
    if size not in APPC_SIZES and any(v is None for v in given.values()):
        raise ValueError(f"size must be one of {sorted(APPC_SIZES)}, got {size!r} (or pass every setting).")
    cfg = dict(APPC_SIZES.get(size, {}))
    cfg.update({k: v for k, v in given.items() if v is not None})
    if (loc is None) != (scale is None):
        raise ValueError("pass both loc and scale (a trained encoder's outputs on the dataset) or neither.")
    if loc is not None:
        if not torch.is_tensor(loc) or loc.dim() != 2 or not torch.is_tensor(scale) or scale.shape != loc.shape:
            raise ValueError("loc and scale must be tensors of the same shape [n, D].")
        cfg["num_data"], cfg["latent_dim"], cfg["encoder_scale"] = loc.shape[0], loc.shape[1], None
    n = cfg["num_data"]
    cfg["batch_sizes"] = sorted({min(int(b), n) for b in cfg["batch_sizes"]})
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    if loc is None:
        enc = fixed_linear_gaussian_encoder(n, cfg["latent_dim"], encoder_scale=cfg["encoder_scale"], seed=seed)
        loc, scale = enc["loc"], enc["scale"]
    loc, scale = loc.detach(), scale.detach()
    D = loc.shape[1]
    normal = torch.distributions.Independent(
        torch.distributions.Normal(torch.zeros(D, dtype=loc.dtype), torch.ones(D, dtype=loc.dtype)), 1
    )
    results: dict[str, Any] = {}
    for name, div, needs_prior in (
        ("exclusive_kl/mss", ExclusiveKL("mss"), True),
        ("exclusive_kl/mws", ExclusiveKL("mws"), True),
        ("tc/mss", TotalCorrelation("mss"), False),
        ("tc/mws", TotalCorrelation("mws"), False),
    ):
        results[name] = estimator_bias(
            div,
            loc,
            scale,
            batch_sizes=cfg["batch_sizes"],
            prior_log_prob=normal.log_prob if needs_prior else None,
            num_repeats=cfg["num_repeats"],
            num_reference_repeats=cfg["num_reference_repeats"],
            seed=seed,
        )
        results[name].pop("values")
    kl_x = _mean_kl_to_standard_normal(loc, scale)
    out = {
        "experiment": "appC-bias",
        "size": size,
        "config": {**cfg, "seed": seed, "latent_dim": D},
        "mean_kl_q_zx_p": kl_x,
        "log_n": math.log(n),
        # App. C: E[KL̂_MSS] ≈ E_x KL(q(z|x) || p) − log n when B ≪ n (a β-VAE's KL up to a constant)
        "beta_vae_limit_mss": kl_x - math.log(n),
        "results": results,
        "seconds": None,
    }
    if figure:
        out["figure"] = str(_plot(out, out_dir / "figures" / "appc_bias.png"))
    out["seconds"] = time.perf_counter() - t0
    (out_dir / "appc_bias.json").write_text(json.dumps(out, indent=2))
    return out


def _plot(out: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    n = out["config"]["num_data"]
    for ax, quantity, title in (
        (axes[0], "exclusive_kl", "KL(q(z) || p(z))"),
        (axes[1], "tc", "TC = KL(q(z) || prod_d q(z_d))"),
    ):
        ref = out["results"][f"{quantity}/mss"]
        for est, colour in (("mss", "C0"), ("mws", "C1")):
            r = out["results"][f"{quantity}/{est}"]
            ax.errorbar(r["batch_sizes"], r["mean"], yerr=r["std"], marker="o", color=colour, capsize=3,
                        label=f"{est.upper()} (mean ± sd)")  # fmt: skip
        ax.axhline(ref["reference"], color="k", ls="--", label=f"whole dataset (B = n = {n})")
        if quantity == "exclusive_kl":
            ax.axhline(out["beta_vae_limit_mss"], color="C3", ls=":", label="E KL(q(z|x)||p) − log n (App. C)")
        ax.set_xscale("log")
        ax.set_xlabel("batch size B")
        ax.set_title(title)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("estimate (nats)")
    fig.suptitle(f"004 App. C: minibatch estimator bias, n = {n}, D = {out['config']['latent_dim']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


@dataclass
class AppCEval:
    """The study's settings (the ``eval`` section of an ``appc-bias`` config)."""

    num_data: int = 4000
    latent_dim: int = 2
    encoder_scale: float = 0.05
    batch_sizes: list[int] = field(default_factory=lambda: [4, 16, 64, 256, 1024, 4000])
    num_repeats: int = 50
    num_reference_repeats: int = 5
    seed: int = 0
    figures: bool = True

    def check(self) -> None:
        if self.num_data < 2 or self.latent_dim < 1:
            raise ValueError("eval: num_data must be >= 2 and latent_dim >= 1.")
        if not self.batch_sizes or min(self.batch_sizes) < 2:
            raise ValueError(f"eval.batch_sizes: must be a non-empty list of sizes >= 2, got {self.batch_sizes}.")
        if self.num_repeats < 1 or self.num_reference_repeats < 1:
            raise ValueError("eval: num_repeats and num_reference_repeats must be >= 1.")
        if not self.encoder_scale > 0:
            raise ValueError("eval.encoder_scale: must be > 0.")


@register_family
class AppCBiasFamily(ExperimentFamily):
    """A study that trains nothing: minibatch estimator bias on a fixed encoder (004 App. C)."""

    name = "appc-bias"
    description = "minibatch estimators of KL(q(z)||p(z)) and TC against a whole-dataset reference, by batch size"
    eval_config = AppCEval
    trains = False
    defaults = {"data": {"name": "pinwheel"}, "prior": {"name": "isotropic"}, "likelihood": {"name": "gaussian"},
                "networks": {"name": "pinwheel"}, "divergence": {"type": "exclusive_kl"}}  # fmt: skip
    main_figure = "figures/appc_bias.png"
    headline = ("mss_bias_smallest_batch", "mss_bias_largest_batch", "mean_kl_q_zx_p")
    summary_columns = ("name", "row", "seed", "status", "mss_bias_smallest_batch", "mss_bias_largest_batch",
                       "mws_bias_smallest_batch", "mean_kl_q_zx_p")  # fmt: skip
    required_files = ("figures/appc_bias.png",)

    def check_config(self, cfg: Any) -> None:
        from ..config import ModelConfig

        if cfg.model != ModelConfig():
            raise ValueError(f"{cfg.id}: the appc-bias study trains no model, so model.* settings do not apply; "
                             "set its eval.* settings (num_data, batch_sizes, num_repeats, ...) instead.")  # fmt: skip

    def run_study(self, cfg: Any, run_dir: Path) -> dict[str, Any]:
        e = cfg.eval
        out = run_appc_bias(
            run_dir, size=cfg.size, seed=e.seed, num_data=e.num_data, latent_dim=e.latent_dim,
            batch_sizes=list(e.batch_sizes), num_repeats=e.num_repeats,
            num_reference_repeats=e.num_reference_repeats, encoder_scale=e.encoder_scale, figure=e.figures,
        )  # fmt: skip
        kl_mss, kl_mws = out["results"]["exclusive_kl/mss"], out["results"]["exclusive_kl/mws"]
        measures = {
            "mss_bias_smallest_batch": kl_mss["bias"][0],
            "mss_bias_largest_batch": kl_mss["bias"][-1],
            "mws_bias_smallest_batch": kl_mws["bias"][0],
            "mean_kl_q_zx_p": out["mean_kl_q_zx_p"],
        }
        metrics = {"id": cfg.id, "size": cfg.size, "family": self.name, "seed": e.seed, "measures": measures,
                   "seconds": out["seconds"]}  # fmt: skip
        write_metrics(run_dir, metrics)
        return {**metrics, "run_dir": str(run_dir)}
