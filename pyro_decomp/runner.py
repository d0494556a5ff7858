"""Experiment runner: build data, model and objective from a config, train, evaluate, write the run dir.

A run directory holds::

    config.yaml                 the resolved config
    checkpoint.pt               the latest checkpoint (plus checkpoints/step_*.pt)
    logs/train.jsonl            every loss term at every logged step; logs/tensorboard/ events
    metrics.json                final loss terms and the q(z)-vs-p(z) measures on the test split
    figures/aggregate_posterior.png
    posterior.nc                ArviZ InferenceData of the test encodings

The evaluation measures do not reuse the training estimator (:func:`evaluate_pinwheel`).
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch

from .config import ConfigError, ExperimentConfig, config_from_dict, config_to_dict, load_yaml, save_config
from .train import (
    CHECKPOINT_NAME,
    CheckpointError,
    Trainer,
    latest_checkpoint,
    load_checkpoint,
    load_module_state,
    nonfinite_parameters,
    resolve_device,
    seeded_torch_rng,
)

__all__ = [
    "Experiment",
    "build_experiment",
    "evaluate_image_experiment",
    "evaluate_pinwheel",
    "evaluate_run",
    "load_run_config",
    "load_run",
    "run_experiment",
    "write_posterior_netcdf",
]


@dataclass
class Experiment:
    """Everything a run needs, built from a config."""

    config: ExperimentConfig
    vae: Any
    elbo: Any
    x_train: Any  # a tensor; for dSprites a PackedImages (training) or LazyImages (a reloaded run)
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    dataset: Any = None  # the ground-truth dataset the disentanglement metrics sample from (dsprites)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    pyro.set_rng_seed(seed)


def _build_prior(cfg: ExperimentConfig):
    from .models import GaussianMixturePrior, IsotropicGaussianPrior, SparseMixturePrior, StudentTPrior

    p, d = cfg.prior, cfg.model.latent_dim
    if p.name == "mixture":
        return GaussianMixturePrior(d, n_components=p.n_components, variance=p.variance, means=p.means)
    if p.name == "isotropic":
        return IsotropicGaussianPrior(d)
    if p.name == "student_t":
        return StudentTPrior(d, df=p.df)
    if p.name == "sparse_mixture":
        return SparseMixturePrior(d, gamma=p.gamma, sigma0=p.sigma0)
    raise ConfigError(f"prior.name: unknown prior {p.name!r}.")


def _build_divergence(cfg: ExperimentConfig):
    """The config's ``model.divergence`` as a :class:`~pyro_decomp.divergences.Divergence` (or ``None``)."""
    from .divergences import MMD, InclusiveKL
    from .divergences.factory import divergence_from_dict

    m = cfg.model
    kw = {"num_prior_samples": m.num_prior_samples}
    specs = {
        "factor_vae": lambda: {"type": "factor_vae", "latent_dim": m.latent_dim},
        "beta_tcvae": lambda: {
            "type": "beta_tcvae",
            "mi_weight": m.mi_weight,
            "tc_weight": m.tc_weight,
            "dim_kl_weight": m.dim_kl_weight,
            "estimator": m.tc_estimator,
        },
        "dip_vae_i": lambda: {"type": "dip_vae", "kind": "i", "lambda_od": m.dip_lambda, "lambda_d": m.dip_lambda},
        "dip_vae_ii": lambda: {"type": "dip_vae", "kind": "ii", "lambda_od": m.dip_lambda, "lambda_d": m.dip_lambda},
        "capacity": lambda: {
            "type": "capacity",
            "gamma": m.capacity_gamma,
            "capacity": {"type": "linear_warmup", "start": 0.0, "end": m.capacity_max, "steps": m.capacity_steps},
        },
    }
    if m.divergence in specs:
        return divergence_from_dict(specs[m.divergence]())
    return {
        "none": lambda: None,
        "inclusive_kl": lambda: InclusiveKL(**kw),
        "mmd_imq": lambda: MMD("imq", **kw),
        "mmd_rbf": lambda: MMD("rbf", **kw),
        "mmd_per_dim": lambda: MMD("per_dim", **kw),
    }[m.divergence]()


def _dsprites_data(cfg: ExperimentConfig, *, lazy_train: bool = False):
    """``(dataset, x_train, y_train, x_test, y_test)``: disjoint uniform subsets of the dSprites grid.

    ``data.num_images`` training images and ``data.test_images`` held-out ones, drawn with ``data.seed``;
    ``data.num_images=null`` trains on the whole grid (as the thesis does), and the test images are then a
    subset of it. ``y`` are the ``[n, 5]`` integer factors.

    ``x_train`` is never a float tensor of all the training images (12 GB for the whole grid): it is a
    :class:`~pyro_decomp.data.dsprites.PackedImages` (rendered once, 512 bytes an image, turned into floats
    per minibatch), or with ``lazy_train`` a :class:`~pyro_decomp.data.dsprites.LazyImages` that renders
    only the rows asked for (reloading a run to evaluate it). ``x_test`` is a float tensor.
    """
    from .data.dsprites import DSprites, LazyImages

    d = cfg.data
    dataset = DSprites.from_npz(d.npz) if d.npz else DSprites()
    total = len(dataset)
    n_test = d.test_images
    if n_test >= total:
        raise ConfigError(f"data.test_images: must be < {total} (the dataset's size), got {n_test}.")
    n_train = total if d.num_images is None else d.num_images
    if d.num_images is not None and n_train + n_test > total:
        raise ConfigError(
            f"data.num_images: {n_train} training + {n_test} test images exceed the {total} images of dSprites; "
            "lower data.num_images or data.test_images (or set data.num_images=null)."
        )
    perm = np.random.default_rng(d.seed).permutation(total)
    test_idx = np.sort(perm[:n_test])
    train_idx = np.arange(total) if d.num_images is None else np.sort(perm[n_test : n_test + n_train])

    # rows are file rows for data.npz and flat grid indices for the renderer (DSprites' row order either way)
    y_train = torch.from_numpy(dataset.factors_of_rows(train_idx))
    if lazy_train:
        x_train = LazyImages(lambda rows: dataset.images_of_rows(train_idx[rows]), train_idx.size,
                             dataset.observation_shape)  # fmt: skip
    else:
        x_train = dataset.packed_rows(train_idx)
    x_test, y_test = dataset.images_of_rows(test_idx), torch.from_numpy(dataset.factors_of_rows(test_idx))
    return dataset, x_train, y_train, x_test, y_test


def build_experiment(cfg: ExperimentConfig, *, lazy_data: bool = False) -> Experiment:
    """Seed everything with ``train.seed`` and build data, VAE and :class:`~pyro_decomp.DecompositionELBO`.

    :param lazy_data: dSprites: make training images only when asked for (to evaluate a trained model)
        instead of rendering them all for training.
    """
    from .data.pinwheel import pinwheel_splits
    from .elbo import DecompositionELBO
    from .models import VAE, GaussianLikelihood
    from .models.networks import build_networks

    if cfg.data.name == "dsprites":
        return _build_image_experiment(cfg, lazy_data=lazy_data)
    if cfg.data.name != "pinwheel":
        raise ConfigError(f"data.name: choose pinwheel or dsprites, got {cfg.data.name!r}.")
    d = cfg.data
    splits = pinwheel_splits(
        d.seed,
        per_arm=d.per_arm,
        test_per_arm=d.test_per_arm,
        radial_std=d.radial_std,
        tangential_std=d.tangential_std,
        arms=d.arms,
        rate=d.rate,
    )
    _seed_everything(cfg.train.seed)
    m = cfg.model
    encoder, decoder = build_networks(
        m.networks,
        latent_dim=m.latent_dim,
        hidden_dim=m.hidden_dim,
        out_multiplier=1 if m.likelihood_scale is not None else 2,
    )
    vae = VAE(_build_prior(cfg), decoder, GaussianLikelihood(scale=m.likelihood_scale), encoder)
    divergence = _build_divergence(cfg)
    elbo = DecompositionELBO(
        beta=m.beta,
        alpha=m.alpha,
        divergence=divergence,
        objective=m.objective,
        num_particles=m.num_particles,
    )
    return Experiment(cfg, vae, elbo, splits.x_train, splits.y_train, splits.x_test, splits.y_test)


def _build_image_experiment(cfg: ExperimentConfig, *, lazy_data: bool = False) -> Experiment:
    """dSprites: image networks, Bernoulli likelihood (``event_dim=3``), minibatches scaled to ``dataset_size``."""
    from .elbo import DecompositionELBO
    from .models import VAE, BernoulliLikelihood
    from .models.networks import build_networks

    dataset, x_train, y_train, x_test, y_test = _dsprites_data(cfg, lazy_train=lazy_data)
    _seed_everything(cfg.train.seed)
    m = cfg.model
    encoder, decoder = build_networks(m.networks, latent_dim=m.latent_dim)
    vae = VAE(_build_prior(cfg), decoder, BernoulliLikelihood(event_dim=3), encoder)
    elbo = DecompositionELBO(
        beta=m.beta,
        alpha=m.alpha,
        divergence=_build_divergence(cfg),
        objective=m.objective,
        num_particles=m.num_particles,
    )
    return Experiment(cfg, vae, elbo, x_train, y_train, x_test, y_test, dataset=dataset)


def load_run_config(run_dir: str | Path) -> ExperimentConfig:
    """The resolved config saved in ``run_dir/config.yaml``."""
    run_dir = Path(run_dir)
    path = run_dir / "config.yaml"
    if not path.is_file():
        if latest_checkpoint(run_dir) is not None:
            raise FileNotFoundError(
                f"{str(run_dir)!r} has a checkpoint but no config.yaml, which is needed to rebuild its model; "
                "put the run's config.yaml back (it was written when the run started)."
            )
        raise FileNotFoundError(f"{str(run_dir)!r} is not a run directory: it has no config.yaml.")
    try:
        return config_from_dict(load_yaml(path))
    except ConfigError as e:
        if str(e).startswith(str(path)):
            raise
        raise ConfigError(f"{path}: {e}") from None


def _make_trainer(exp: Experiment, run_dir: Path, *, progress: bool | None, callbacks=()) -> Trainer:
    t = exp.config.train
    return Trainer(
        exp.vae,
        exp.vae.model,
        exp.vae.guide,
        exp.elbo,
        exp.x_train,
        run_dir=run_dir,
        steps=t.steps,
        lr=t.lr,
        adam_betas=t.adam_betas,
        batch_size=t.batch_size,
        seed=t.seed,
        device=t.device,
        checkpoint_every=t.checkpoint_every,
        keep_checkpoints=t.keep_checkpoints,
        log_every=t.log_every,
        # train.progress=true means "when stderr is a terminal"; an explicit progress=False wins
        progress=None if (t.progress and progress is not False) else False,
        tensorboard=t.tensorboard,
        validate=t.validate,
        config=config_to_dict(exp.config),
        callbacks=callbacks,
    )


def run_experiment(
    cfg: ExperimentConfig | Mapping[str, Any],
    run_dir: str | Path,
    *,
    resume: bool | str | Path = False,
    overwrite: bool = False,
    progress: bool | None = None,
    callbacks=(),
    evaluate: bool = True,
) -> dict[str, Any]:
    """Train (or continue) one run and evaluate it. Returns the metrics plus the density grid.

    :param cfg: a resolved config (or its dict form, as sent to sweep workers).
    :param run_dir: the run directory; it must not hold a run unless ``resume`` or ``overwrite``.
    :param resume: ``True`` to continue from ``run_dir``'s latest checkpoint, or a checkpoint file.
    """
    if isinstance(cfg, Mapping):
        cfg = config_from_dict(cfg)
    run_dir = Path(run_dir)
    if overwrite and resume:
        raise ValueError("pass either resume or overwrite, not both.")
    resolve_device(cfg.train.device)  # fail before touching the run directory
    check_run_dir(run_dir)
    has_run = latest_checkpoint(run_dir) is not None
    if has_run and not resume and not overwrite:
        raise FileExistsError(
            f"{str(run_dir)!r} already holds a run; pass --resume {run_dir} to continue it, "
            "--overwrite to start afresh, or choose another --out."
        )
    if resume is True and not has_run:
        raise FileNotFoundError(_no_checkpoint_message(run_dir, "resume"))
    threads = torch.get_num_threads()
    if cfg.train.threads is not None:
        torch.set_num_threads(cfg.train.threads)
    try:
        # everything that can refuse the new config (data files, the checkpoint's shapes, the step count)
        # runs before the first write: a refused --resume or --overwrite leaves the run as it was
        exp = build_experiment(cfg)
        trainer = _make_trainer(exp, run_dir, progress=progress, callbacks=callbacks)
        if resume:
            path = latest_checkpoint(run_dir) if resume is True else Path(resume)
            state = load_checkpoint(path)
            if int(state["step"]) > cfg.train.steps:
                raise ValueError(
                    f"cannot resume: {str(path)!r} is already at step {int(state['step'])}, past "
                    f"train.steps={cfg.train.steps}; nothing to train. Pass train.steps greater than "
                    f"{int(state['step'])} to train further, or re-evaluate with: pyro-decomp eval {run_dir}"
                )
            _refuse_nonfinite(state, path)
            trainer.resume(path, state=state)  # CheckpointError when the model does not fit
        elif overwrite:
            _clear_run(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        result = trainer.fit()
        if not evaluate:
            return {"train": result}
        return evaluate_experiment(exp, run_dir, train_seconds=result["seconds"])
    finally:
        torch.set_num_threads(threads)


# what a run writes (and --overwrite removes); other files in the directory are left alone
_RUN_DIRS = ("checkpoints", "logs", "figures", "analysis")
_RUN_FILES = (CHECKPOINT_NAME, "metrics.json", "posterior.nc", "config.yaml")


def _clear_run(run_dir: Path) -> None:
    for name in _RUN_DIRS:
        shutil.rmtree(run_dir / name, ignore_errors=True)
    for name in _RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)


def check_run_dir(run_dir: str | Path) -> None:
    """A run directory must be a directory (or not exist yet) under directories: one-line errors otherwise."""
    run_dir = Path(run_dir)
    if str(run_dir).strip() == "":
        raise ValueError("the run directory is empty; name a directory, e.g. --out runs/my-run.")
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"{str(run_dir)!r} is a file, not a directory; choose a directory for the run (--out).")
    for parent in run_dir.parents:
        if parent.exists() and not parent.is_dir():
            raise ValueError(f"cannot create the run directory {str(run_dir)!r}: {str(parent)!r} is a file.")


def _refuse_nonfinite(state: Mapping[str, Any], path: Path) -> None:
    """Checkpoints written since the guard before each save are finite; older ones may not be."""
    bad = nonfinite_parameters(state["module"])
    if bad:
        raise CheckpointError(
            f"checkpoint {str(path)!r} holds non-finite parameters ({bad[0]!r}"
            + (f" and {len(bad) - 1} more" if len(bad) > 1 else "")
            + "): the run diverged before it was written. Resume an earlier checkpoint (checkpoints/step_*.pt) "
            "with a lower train.lr, or start the run afresh."
        )


def _no_checkpoint_message(run_dir: Path, action: str) -> str:
    config = run_dir / "config.yaml"
    if not config.is_file():
        return f"cannot {action}: {str(run_dir)!r} is not a run directory: it has no config.yaml and no checkpoint."
    return (
        f"cannot {action}: {str(run_dir)!r} holds no checkpoint (the run stopped before its first one, so "
        f"nothing was lost). Start it again from its saved config: pyro-decomp run {config} --out {run_dir}"
    )


def _restore_run(run_dir: str | Path, *, device: str = "cpu") -> Experiment:
    """Rebuild the experiment of ``run_dir`` from its config.yaml and load its latest checkpoint."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{str(run_dir)!r} is not a run directory: it does not exist or is a file.")
    cfg = load_run_config(run_dir)
    device = resolve_device(device)
    path = latest_checkpoint(run_dir)
    if path is None:
        raise FileNotFoundError(_no_checkpoint_message(run_dir, "evaluate"))
    state = load_checkpoint(path)
    _refuse_nonfinite(state, path)
    exp = build_experiment(cfg, lazy_data=True)  # evaluation renders only the images it evaluates
    load_module_state(exp.vae, state["module"], path)
    exp.vae.to(device)
    if hasattr(exp.elbo, "load_state_dict"):
        exp.elbo.load_state_dict(state["elbo"])
    return exp


def load_run(run_dir: str | Path, *, split: str = "test", device: str = "cpu") -> tuple[Any, torch.Tensor]:
    """The trained VAE of ``run_dir`` and its ``split`` ("test" or "train") data, ``(vae, x)``.

    This is the loader behind ``pyro-decomp analyse``; see :func:`pyro_decomp.analysis.analyse_run`.
    """
    if split not in ("test", "train"):
        raise ValueError(f"split must be 'test' or 'train', got {split!r}.")
    exp = _restore_run(run_dir, device=device)
    x = exp.x_test if split == "test" else exp.x_train
    if not isinstance(x, torch.Tensor):  # dSprites training images: all of them, as floats
        x = x[:]
    return exp.vae, x.to(resolve_device(device))


def evaluate_run(run_dir: str | Path, *, device: str = "cpu") -> dict[str, Any]:
    """Rebuild a run from ``run_dir/config.yaml`` and its latest checkpoint, and re-evaluate it."""
    return evaluate_experiment(_restore_run(run_dir, device=device), run_dir)


# ---------------------------------------------------------------------------------------------- evaluation
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
    prior_cpu = prior.distribution()
    n, D = loc.shape
    # samples of q(z): pick an encoder uniformly, then draw from it
    idx = torch.randint(n, (num_samples,), generator=gen)
    zq = loc[idx] + scale[idx] * torch.randn(num_samples, D, generator=gen, dtype=loc.dtype)
    with seeded_torch_rng(seed + 1):
        zp = prior_cpu.sample((num_samples,)).cpu().double()

    def log_p(z):
        return prior.log_prob(z.to(device=device, dtype=torch.get_default_dtype())).cpu().double()

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


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return _jsonable(obj.item())
    return obj


def write_posterior_netcdf(
    path: str | Path, vae, x: torch.Tensor, *, draws: int, seed: int, constant_data: Mapping[str, tuple] | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> Path:
    """Save the run's ArviZ InferenceData of encodings (SPEC §8) as netCDF, atomically.

    The groups and dims are those of :func:`pyro_decomp.analysis.to_inference_data` (``posterior.z`` on
    ``(chain, draw, obs, latent)`` drawn from q(z|x), ``prior.z``, ``sample_stats``, ``log_likelihood``,
    ``observed_data.x``, the prior's parameters in ``constant_data``), written by
    :func:`pyro_decomp.analysis.save_inference_data`: the one converter and the one writer, shared with
    ``pyro-decomp analyse``. ``constant_data`` adds ``name: (dims, values)`` entries (the encoder means and
    scales, the labels) and ``attrs`` describe the run on every group.
    """
    from .analysis.arviz import save_inference_data, to_inference_data

    idata = to_inference_data(vae, x, num_draws=draws, random_seed=seed)
    extra = {k: (dims, np.asarray(v.detach().cpu() if torch.is_tensor(v) else v)) for k, (dims, v) in
             (constant_data or {}).items()}  # fmt: skip
    if extra:
        if "constant_data" in idata.groups():
            idata.constant_data = idata.constant_data.assign(extra)
        else:
            import xarray as xr

            idata.add_groups(constant_data=xr.Dataset(extra, coords={"obs": idata.posterior["obs"].values}))
    for group in idata.groups():
        getattr(idata, group).attrs.update(_jsonable(dict(attrs or {})))
    return save_inference_data(idata, path)


def evaluate_experiment(exp: Experiment, run_dir: str | Path, *, train_seconds: float | None = None) -> dict[str, Any]:
    """Final loss terms (train and test), the q(z)-p(z) measures, the figure and ``posterior.nc``."""
    if exp.dataset is not None:
        return evaluate_image_experiment(exp, run_dir, train_seconds=train_seconds)
    cfg, vae = exp.config, exp.vae
    run_dir = Path(run_dir)
    device = next(vae.parameters()).device
    t0 = time.perf_counter()
    vae.eval()
    with seeded_torch_rng(cfg.eval.seed), pyro.validation_enabled(False):
        train_terms = exp.elbo.loss_terms(vae.model, vae.guide, exp.x_train.to(device))
        test_terms = exp.elbo.loss_terms(vae.model, vae.guide, exp.x_test.to(device))
    measures = evaluate_pinwheel(
        vae, exp.x_test, exp.y_test, num_samples=cfg.eval.num_samples, seed=cfg.eval.seed, grid_size=cfg.eval.grid_size
    )
    loc, scale = measures.pop("_loc"), measures.pop("_scale")
    density = {k: measures.pop(k) for k in ("density", "prior_density", "extent") if k in measures}
    n = exp.x_train.shape[0]
    metrics = {
        "id": cfg.id,
        "size": cfg.size,
        "alpha": cfg.model.alpha,
        "beta": cfg.model.beta,
        "seed": cfg.train.seed,
        "steps": cfg.train.steps,
        "train": train_terms,
        "test": test_terms,
        "train_per_point": {k: train_terms[k] / n for k in ("reconstruction", "kl") if k in train_terms},
        "measures": measures,
    }
    if train_seconds is not None:
        metrics["train_seconds"] = train_seconds
    (run_dir / "figures").mkdir(parents=True, exist_ok=True)
    if density:
        # the raw grid, so sweeps can redraw panels without re-running (np.load(allow_pickle=False))
        np.savez(run_dir / "figures" / "aggregate_posterior.npz", **{k: np.asarray(v) for k, v in density.items()})
    if cfg.eval.figures and density:
        from .analysis.plots import plot_aggregate_posterior, save_figure

        ax = plot_aggregate_posterior(
            density["density"],
            density["prior_density"],
            density["extent"],
            title=f"{cfg.id}: α={cfg.model.alpha:g}, β={cfg.model.beta:g}",
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
        attrs={"experiment": cfg.id, "alpha": cfg.model.alpha, "beta": cfg.model.beta, "seed": cfg.train.seed},
    )
    metrics["eval_seconds"] = time.perf_counter() - t0
    _write_metrics(run_dir, metrics)
    return {**metrics, **{k: v for k, v in density.items()}, "run_dir": str(run_dir)}


def _write_metrics(run_dir: Path, metrics: Mapping[str, Any]) -> None:
    """Write ``metrics.json`` (the one writer, for pinwheel and dSprites runs): non-finite floats become
    ``null``, and the file is replaced atomically so a crash never leaves half of it."""
    text = json.dumps(_jsonable(metrics), indent=2)
    tmp = run_dir / "metrics.json.tmp"
    tmp.write_text(text + "\n")
    tmp.replace(run_dir / "metrics.json")


@torch.no_grad()
def _encode_all(vae, x: torch.Tensor, device, chunk: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    locs, scales = [], []
    for xc in x.split(chunk):
        loc, scale = vae.encode(xc.to(device))
        locs.append(loc.cpu())
        scales.append(scale.cpu())
    return torch.cat(locs), torch.cat(scales)


@torch.no_grad()
def _traversal_figure(vae, x: torch.Tensor, order: np.ndarray, kl: np.ndarray, path: Path, *, limit: float, title: str):
    """Latent traversals of one test image's mean code over ``[-limit, limit]``, one row per dimension,
    rows sorted by decreasing dimension-wise KL; the first row shows the image and its reconstruction."""
    from .analysis.plots import _pyplot, save_figure

    plt = _pyplot()
    device = next(vae.parameters()).device
    steps = 9
    loc, _ = vae.encode(x[:1].to(device))
    values = torch.linspace(-limit, limit, steps, device=device)
    rows = []
    for d in order:
        z = loc.repeat(steps, 1)
        z[:, int(d)] = values
        rows.append(torch.sigmoid(vae.decoder(z)).reshape(steps, *x.shape[-2:]).cpu().numpy())
    recon = torch.sigmoid(vae.decoder(loc)).reshape(*x.shape[-2:]).cpu().numpy()
    fig, axes = plt.subplots(len(rows) + 1, steps, figsize=(steps * 0.9, (len(rows) + 1) * 0.9), squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0][0].imshow(x[0].reshape(*x.shape[-2:]).cpu().numpy(), cmap="gray", vmin=0, vmax=1)
    axes[0][0].set_title("input", fontsize=7)
    axes[0][1].imshow(recon, cmap="gray", vmin=0, vmax=1)
    axes[0][1].set_title("recon.", fontsize=7)
    for c in range(2, steps):
        axes[0][c].axis("off")
    for r, (d, imgs) in enumerate(zip(order, rows, strict=True), start=1):
        for c in range(steps):
            axes[r][c].imshow(imgs[c], cmap="gray", vmin=0, vmax=1)
        axes[r][0].set_ylabel(f"z{int(d)}\nKL {kl[int(d)]:.2f}", fontsize=6)
    for c in range(steps):
        axes[-1][c].set_xlabel(f"{float(values[c]):+.1f}", fontsize=6)
    fig.suptitle(title, fontsize=8)
    save_figure(fig, path)
    plt.close(fig)


def evaluate_image_experiment(
    exp: Experiment, run_dir: str | Path, *, train_seconds: float | None = None
) -> dict[str, Any]:
    """dSprites evaluation: final loss terms, disentanglement metrics of the mean representation, traversals.

    ``metrics.json`` holds ``train``/``test`` loss terms on ``eval.loss_images`` images per split (no
    ``dataset_size`` scaling, so ``*_per_point`` divide by that count), and ``measures``: the FactorVAE score,
    the BetaVAE score (evaluation accuracies) and MIG, all of the encoder mean, on images sampled from the
    whole factor grid (not only the training subset); the dimension-wise KL and active units of the test
    encodings; the test reconstruction per image (Bernoulli negative log-likelihood in nats).
    ``figures/traversals.png``: latent traversals, rows sorted by dimension-wise KL.
    """
    from .metrics import active_units, compute_beta_vae, compute_factor_vae, compute_mig, dimensionwise_kl

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

    def representation(x):
        return vae.encode(torch.as_tensor(x, dtype=torch.float32).to(device))[0]

    sizes = {"group_size": e.metric_group_size, "num_train": e.metric_num_train, "num_eval": e.metric_num_eval}
    factor_vae = compute_factor_vae(
        exp.dataset, representation, random_state=e.seed, num_variance_estimate=e.metric_num_variance, **sizes
    )
    beta_vae = compute_beta_vae(exp.dataset, representation, random_state=e.seed + 1, **sizes)
    mig = compute_mig(exp.dataset, representation, random_state=e.seed + 2, num_points=e.metric_num_points)
    loc, scale = _encode_all(vae, exp.x_test, device)
    kl = dimensionwise_kl(loc.double().numpy(), scale.double().numpy())
    units = active_units(loc.double().numpy())
    per = {k: test_terms[k] / len(x_te) for k in ("reconstruction", "kl") if k in test_terms}
    measures = {
        "factor_vae_score": factor_vae["eval_accuracy"],
        "beta_vae_score": beta_vae["eval_accuracy"],
        "mig": mig["mig"],
        "active_units": units["active_units"],
        "active_fraction": units["active_fraction"],
        "mean_encoder_std": float(scale.mean()),
        "test_reconstruction_per_image": per.get("reconstruction"),
        "test_kl_per_image": per.get("kl"),
    }
    metrics: dict[str, Any] = {
        "id": cfg.id,
        "size": cfg.size,
        "data": cfg.data.name,
        "divergence": cfg.model.divergence,
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
        "disentanglement": {"factor_vae": factor_vae, "beta_vae": beta_vae, "mig": mig},
        "metric_sizes": {
            **sizes,
            "num_variance_estimate": e.metric_num_variance,
            "mig_num_points": e.metric_num_points,
        },
        "dimensionwise_kl": kl.tolist(),
    }
    if train_seconds is not None:
        metrics["train_seconds"] = train_seconds
    (run_dir / "figures").mkdir(parents=True, exist_ok=True)
    if e.figures:
        order = np.argsort(-kl, kind="stable")
        _traversal_figure(
            vae, exp.x_test, order, kl, run_dir / "figures" / "traversals.png", limit=e.traversal_range,
            title=f"{cfg.id} ({cfg.model.divergence}): α={cfg.model.alpha:g}, β={cfg.model.beta:g}; "
            "rows by dimension-wise KL",
        )  # fmt: skip
    metrics["eval_seconds"] = time.perf_counter() - t0
    _write_metrics(run_dir, metrics)
    return {**metrics, "run_dir": str(run_dir)}
