"""The experiment protocol: one :class:`ExperimentFamily` per kind of experiment, found through a registry.

An experiment is one YAML file (``pyro_decomp/experiments/<id>.yaml``) naming a ``family`` and giving the
config; the family is a module in this package that says

* which typed ``eval`` section its configs have (:attr:`ExperimentFamily.eval_config`) and the default
  parts (:attr:`ExperimentFamily.defaults`);
* how a run is built (:meth:`ExperimentFamily.build`: data, prior, likelihood, networks, divergence, all
  from the config's specs) and evaluated (:meth:`ExperimentFamily.evaluate`, which writes ``metrics.json``,
  the figures and ``posterior.nc``);
* what one run contributes to a sweep's tables (:attr:`ExperimentFamily.summary_columns`,
  :meth:`ExperimentFamily.summary_row`) and which sweep-level figures it draws
  (:meth:`ExperimentFamily.sweep_figures`).

The runner, the sweep and the CLI only call these methods, so adding an experiment is a YAML file, plus a
module when no family fits::

    from pyro_decomp.experiments import ExperimentFamily, register_family

    @register_family
    class MyFamily(ExperimentFamily):
        name = "my-family"
        ...

A config may also name a family by import path, ``family: mypackage.module:MyFamily``.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import json
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

__all__ = [
    "Experiment",
    "ExperimentFamily",
    "families",
    "get_family",
    "register_family",
    "seed_everything",
    "write_metrics",
]


@dataclass
class Experiment:
    """Everything a run needs, built from a config by :meth:`ExperimentFamily.build`."""

    config: Any
    vae: Any
    elbo: Any
    x_train: Any  # a tensor, or an image store (PackedImages, ByteImages, LazyImages)
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    #: the ground-truth data set the disentanglement metrics sample from (``None`` without factors)
    dataset: Any = None
    #: the :class:`~pyro_decomp.data.bundle.DataBundle` the data came from
    data: Any = None


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's, torch's and Pyro's global generators."""
    import pyro

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    pyro.set_rng_seed(seed)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return _jsonable(obj.item())
    if torch.is_tensor(obj):
        return _jsonable(obj.tolist())
    return obj


def write_metrics(run_dir: str | Path, metrics: Mapping[str, Any]) -> Path:
    """Write ``metrics.json`` (the one writer, for every family): non-finite floats become ``null``, and the
    file is replaced atomically so a crash never leaves half of it."""
    run_dir = Path(run_dir)
    text = json.dumps(_jsonable(metrics), indent=2)
    tmp = run_dir / "metrics.json.tmp"
    tmp.write_text(text + "\n")
    tmp.replace(run_dir / "metrics.json")
    return run_dir / "metrics.json"


class ExperimentFamily:
    """Base class of the experiment families. Subclasses set the class attributes and override
    :meth:`evaluate`; :meth:`build` is generic over the registered parts."""

    #: the name a config's ``family`` key gives
    name: ClassVar[str] = ""
    #: one line for ``pyro-decomp list``
    description: ClassVar[str] = ""
    #: the dataclass of this family's ``eval`` section (it may define ``check(self)`` raising ValueError)
    eval_config: ClassVar[type] = type("NoEval", (), {})
    #: default specs and ``model`` options for sections a config leaves out
    defaults: ClassVar[dict[str, Any]] = {}
    #: ``False`` for a study that trains nothing (it implements :meth:`run_study`)
    trains: ClassVar[bool] = True
    #: the run's main figure, relative to the run directory (what the CLI points at)
    main_figure: ClassVar[str] = "figures"
    #: ``measures`` keys the CLI prints after a run and the sweep logs per run
    headline: ClassVar[tuple[str, ...]] = ()
    #: the sweep's per-run table: setting columns, then ``seed``, ``status``, then metric columns
    summary_columns: ClassVar[tuple[str, ...]] = ("name", "row", "seed", "status", "train_seconds")
    #: files (relative to the run directory) a finished run must have readable, else a sweep re-evaluates it
    required_files: ClassVar[tuple[str, ...]] = ()

    # ------------------------------------------------------------------------------------------ config
    def check_config(self, cfg: Any) -> None:
        """Cross-section checks beyond the generic ones (raise ``ValueError`` naming the key)."""

    # ------------------------------------------------------------------------------------------ build
    def build(self, cfg: Any, *, lazy_data: bool = False) -> Experiment:
        """Data, then (seeded with ``train.seed``) networks, prior, likelihood and divergence, all from the
        config's specs, and :class:`~pyro_decomp.DecompositionELBO` (:class:`~pyro_decomp.JitDecompositionELBO` with ``train.jit``).

        :param lazy_data: for reloading a trained run: make training data only when asked for.
        """
        from ..config import ConfigError
        from ..elbo import DecompositionELBO, JitDecompositionELBO
        from ..models import VAE

        data = cfg.data.build(lazy=lazy_data)
        seed_everything(cfg.train.seed)
        m = cfg.model
        lik_comp = cfg.likelihood.component()
        outputs = lik_comp.meta.get("decoder_outputs", lambda params: 1)(cfg.likelihood.params)
        encoder, decoder = cfg.networks.build(latent_dim=m.latent_dim, out_multiplier=outputs)
        obs_shape = tuple(getattr(decoder, "obs_shape", ()) or ())
        data_shape = tuple(data.x_train.shape[1:])
        if obs_shape and obs_shape != data_shape:
            raise ConfigError(
                f"networks.name: {cfg.networks.name!r} decodes observations of shape {list(obs_shape)}, but data "
                f"{cfg.data.name!r} has shape {list(data_shape)}; choose networks for this data (or set its "
                "image size)."
            )
        prior = cfg.prior.build(latent_dim=m.latent_dim, x_train=data.x_train)
        likelihood = cfg.likelihood.build(event_dim=data.event_dim)
        # a prior program with latent sites besides z brings a guide that samples them (prior.make_guide)
        make_guide = getattr(prior, "make_guide", None)
        vae = VAE(prior, decoder, likelihood, encoder, guide=make_guide(encoder) if make_guide else None)
        from ..schedules import schedule_from_dict

        def weight(value):  # a number, or a schedule spec (an annealed beta, a warm-up of alpha)
            return schedule_from_dict(dict(value)) if isinstance(value, Mapping) else value

        elbo_class = JitDecompositionELBO if cfg.train.jit else DecompositionELBO
        elbo = elbo_class(
            beta=weight(m.beta),
            alpha=weight(m.alpha),
            divergence=cfg.divergence.build(latent_dim=m.latent_dim),
            objective=m.objective,
            num_particles=m.num_particles,
        )
        return Experiment(cfg, vae, elbo, data.x_train, data.y_train, data.x_test, data.y_test,
                          dataset=data.ground_truth, data=data)  # fmt: skip

    # ------------------------------------------------------------------------------------------ evaluate
    def evaluate(self, exp: Experiment, run_dir: Path, *, train_seconds: float | None = None) -> dict[str, Any]:
        """Evaluate a trained run: write ``metrics.json`` (with a ``measures`` mapping), figures and
        ``posterior.nc`` into ``run_dir``; return the metrics (plus anything the sweep's figures need)."""
        raise NotImplementedError

    def run_study(self, cfg: Any, run_dir: Path) -> dict[str, Any]:
        """For ``trains = False``: compute and write the study's results into ``run_dir``."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------ sweeps
    def summary_row(self, config: Mapping[str, Any], result: Mapping[str, Any]) -> dict[str, Any]:
        """The setting and metric columns of one run (``name``, ``row``, ``seed``, ``status`` are added by
        the sweep). The default reads the metric columns from ``result['measures']``."""
        m = result.get("measures", {}) or {}
        row = {"train_seconds": result.get("train_seconds")}
        for k in self.summary_columns:
            if k not in row and k not in ("name", "row", "seed", "status", "setting"):
                row[k] = m.get(k)
        return row

    def sweep_figures(self, spec: Any, results: Sequence[Mapping[str, Any]], out_dir: Path, log=print) -> list[Path]:
        """Figures drawn over a whole sweep (beyond the sweep's ``curves.png``); returns the paths written."""
        return []

    def figures_ok(self, run_dir: Path, config: Mapping[str, Any]) -> bool:
        """Whether a finished run's files are present and readable (else a sweep re-evaluates it)."""
        wants_figures = bool((config.get("eval") or {}).get("figures", True))
        for rel in self.required_files:
            path = run_dir / rel
            if rel.endswith(".png"):
                if wants_figures and not _png_ok(path):
                    return False
            elif not path.is_file():
                return False
        return True

    def headline_line(self, metrics: Mapping[str, Any]) -> str:
        """One line of the headline measures (for the CLI and the sweep log)."""
        m = metrics.get("measures", {}) or {}
        return "  ".join(f"{k}={m[k]:.4g}" for k in self.headline if isinstance(m.get(k), int | float))


def _png_ok(path: Path) -> bool:
    try:
        from PIL import Image

        with Image.open(path) as image:
            image.verify()  # reads the whole file and checks its chunks; no pixel decoding
        return True
    except Exception:  # PIL raises OSError, SyntaxError, struct.error, ... for a damaged file
        return False


_FAMILIES: dict[str, ExperimentFamily] = {}
_BUILTINS_LOADED = False


def register_family(cls: type[ExperimentFamily]) -> type[ExperimentFamily]:
    """Class decorator: register an :class:`ExperimentFamily` under its ``name``."""
    if not (isinstance(cls, type) and issubclass(cls, ExperimentFamily)) or not cls.name:
        raise TypeError("register_family takes an ExperimentFamily subclass with a non-empty `name`.")
    if not dataclasses.is_dataclass(cls.eval_config):
        raise TypeError(f"{cls.__name__}.eval_config must be a dataclass (the family's typed eval section).")
    _FAMILIES[cls.name] = cls()
    return cls


def _load_builtins() -> None:
    global _BUILTINS_LOADED
    if not _BUILTINS_LOADED:
        _BUILTINS_LOADED = True
        from . import appc_bias, images, pinwheel  # noqa: F401  (each registers its family)


def families() -> dict[str, ExperimentFamily]:
    """The registered families by name."""
    _load_builtins()
    return dict(_FAMILIES)


def get_family(name: str) -> ExperimentFamily:
    """The family ``name``, or one given by import path ``package.module:Class``."""
    _load_builtins()
    if name in _FAMILIES:
        return _FAMILIES[name]
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            cls = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"family: cannot import {name!r} ({type(e).__name__}: {e}).") from None
        if not (isinstance(cls, type) and issubclass(cls, ExperimentFamily)):
            raise ValueError(f"family: {name!r} is not an ExperimentFamily subclass.")
        if cls.name not in _FAMILIES:
            register_family(cls)
        return _FAMILIES[cls.name]
    near = difflib.get_close_matches(name, list(_FAMILIES), n=3, cutoff=0.5)
    hint = f" Did you mean {' or '.join(map(repr, near))}?" if near else ""
    raise ValueError(f"family: unknown experiment family {name!r}.{hint} Registered: {', '.join(sorted(_FAMILIES))} "
                     "(or give an import path, package.module:Class).")  # fmt: skip


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
    from ..analysis.arviz import save_inference_data, to_inference_data

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
