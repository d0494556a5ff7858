"""The generic run lifecycle: validate, build (with the config's experiment family), train, evaluate.

Nothing here knows about a particular data set or experiment: building and evaluating belong to the
experiment families (:mod:`pyro_decomp.experiments`). A run directory holds::

    config.yaml                 the resolved config
    checkpoint.pt               the latest checkpoint (plus checkpoints/step_*.pt)
    logs/train.jsonl            every loss term at every logged step; logs/tensorboard/ events
    metrics.json                final loss terms and the family's measures (``measures``)
    figures/*.png               the family's figures (``ExperimentFamily.main_figure`` first)
    posterior.nc                ArviZ InferenceData of the test encodings (families that write one)
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .config import ConfigError, ExperimentConfig, config_from_dict, config_to_dict, load_yaml, save_config
from .experiments.base import Experiment, write_posterior_netcdf
from .train import (
    CHECKPOINT_NAME,
    CheckpointError,
    Trainer,
    latest_checkpoint,
    load_checkpoint,
    load_module_state,
    nonfinite_parameters,
    resolve_device,
)

__all__ = [
    "Experiment",
    "build_experiment",
    "check_run_dir",
    "evaluate_experiment",
    "evaluate_run",
    "load_run",
    "load_run_config",
    "run_experiment",
    "write_posterior_netcdf",
]


def build_experiment(cfg: ExperimentConfig, *, lazy_data: bool = False) -> Experiment:
    """Build data, VAE and objective with the config's experiment family (:meth:`ExperimentFamily.build`).

    :param lazy_data: make training data only when asked for (to evaluate a trained model) instead of
        preparing all of it for training.
    """
    family = cfg.experiment_family()
    if not family.trains:
        raise ValueError(f"experiment family {family.name!r} trains no model; run it with run_experiment.")
    return family.build(cfg, lazy_data=lazy_data)


def evaluate_experiment(exp: Experiment, run_dir: str | Path, *, train_seconds: float | None = None) -> dict[str, Any]:
    """Evaluate a trained experiment with its family (metrics.json, figures, posterior.nc)."""
    return exp.config.experiment_family().evaluate(exp, Path(run_dir), train_seconds=train_seconds)


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
    family = cfg.experiment_family()
    if not family.trains:  # a study: nothing to train, resume or checkpoint
        if resume:
            raise ValueError(f"{cfg.id!r} trains no model, so there is nothing to resume; run it again.")
        check_run_dir(run_dir)
        if (run_dir / "metrics.json").is_file() and not overwrite:
            raise FileExistsError(f"{str(run_dir)!r} already holds results; pass --overwrite or choose another --out.")
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        return family.run_study(cfg, run_dir)
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
    exp.vae.eval()  # analysis uses inference mode (BatchNorm's running statistics)
    x = exp.x_test if split == "test" else exp.x_train
    if not isinstance(x, torch.Tensor):  # dSprites training images: all of them, as floats
        x = x[:]
    return exp.vae, x.to(resolve_device(device))


def evaluate_run(run_dir: str | Path, *, device: str = "cpu") -> dict[str, Any]:
    """Rebuild a run from ``run_dir/config.yaml`` and its latest checkpoint, and re-evaluate it (a study
    that trains nothing is computed again)."""
    cfg = load_run_config(run_dir)
    family = cfg.experiment_family()
    if not family.trains:
        return family.run_study(cfg, Path(run_dir))
    return evaluate_experiment(_restore_run(run_dir, device=device), run_dir)
