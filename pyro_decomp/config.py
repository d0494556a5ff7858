"""Typed experiment configuration: YAML files, ``key=value`` overrides, validation (DESIGN: config.py).

An experiment file (``pyro_decomp/experiments/<id>.yaml``) looks like::

    id: fig3-pinwheel
    description: one line on what it reproduces
    default_size: paper
    config:              # fields of ExperimentConfig (sections data, prior, model, train, eval)
      model: {beta: 0.0, alpha: 3.0}
    sizes:               # named sets of dotted overrides; `--smoke` selects `smoke`
      smoke: {train.steps: 150}
      paper: {}

A sweep file has ``base: <experiment id or file>`` and a ``grid:`` list instead of ``config:``
(see :mod:`pyro_decomp.runner`). Files are read with :func:`yaml.safe_load` only.

Overrides use dotted keys, ``train.steps=100 model.beta=0.5``; values are parsed as YAML scalars
(``null``, ``true``, numbers, strings). Unknown keys and invalid values raise :class:`ConfigError`
(a :class:`ValueError`) that lists the valid choices.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import re
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "ExperimentConfig",
    "ModelConfig",
    "PriorConfig",
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "experiment_ids",
    "find_experiment",
    "load_experiment",
    "load_yaml",
    "parse_overrides",
    "save_config",
]


class ConfigError(ValueError):
    """An invalid configuration: unknown key, invalid value, or missing file."""


# ---------------------------------------------------------------------------------------------- sections
@dataclass
class DataConfig:
    """Dataset (SPEC §4): ``pinwheel`` (the ``arms``..``rate`` keys) or ``dsprites`` (``num_images``,
    ``test_images``, ``npz``). ``seed`` draws the data (pinwheel points; which dSprites images)."""

    name: str = "pinwheel"
    arms: int = 4
    per_arm: int = 100  # n = arms * per_arm = 400 (paper App. B)
    test_per_arm: int = 100  # an independent draw of the same size
    radial_std: float = 0.1
    tangential_std: float = 0.3
    rate: float = 0.25
    seed: int = 0
    # dsprites: a uniform subset of the 737,280-image grid (null: the whole grid), rendered procedurally
    num_images: int | None = None
    test_images: int = 1000  # held-out images for the reconstruction (in the training set if num_images is null)
    npz: str | None = None  # the official dsprites_ndarray_*.npz instead of the renderer

    _choices = {"name": ("pinwheel", "dsprites")}


@dataclass
class PriorConfig:
    """Prior p(z). Mixture settings are the pinwheel's (paper Eq. 9): C=4, σ²=0.03, corner means."""

    name: str = "mixture"
    n_components: int = 4
    variance: float = 0.03
    means: str = "corners"
    df: float = 5.0  # student_t
    gamma: float = 0.8  # sparse_mixture
    sigma0: float = 0.05  # sparse_mixture

    _choices = {
        "name": ("isotropic", "student_t", "mixture", "sparse_mixture"),
        "means": ("corners", "axes"),
    }


@dataclass
class ModelConfig:
    """Networks, likelihood and the objective's weights (paper Eq. 7)."""

    networks: str = "pinwheel"
    latent_dim: int = 2
    hidden_dim: int = 100
    likelihood: str = "gaussian"
    likelihood_scale: float | None = None  # None: the decoder predicts the scale (paper Table 1b)
    beta: float = 1.0
    alpha: float = 0.0
    divergence: str = "inclusive_kl"
    num_prior_samples: int | None = None  # None: as many as the batch
    objective: str = "beta"
    num_particles: int = 1
    # weights of the disentanglement regularisers (docs/regularisers.md); alpha multiplies the divergence
    tc_weight: float = 6.0  # beta_tcvae: b in a*MI + b*TC + c*dimKL
    mi_weight: float = 1.0  # beta_tcvae: a
    dim_kl_weight: float = 1.0  # beta_tcvae: c
    tc_estimator: str = "mss"  # beta_tcvae: mss or mws (Chen et al.)
    dip_lambda: float = 1.0  # dip_vae_i / dip_vae_ii: lambda_od = lambda_d
    capacity_gamma: float = 1000.0  # capacity: gamma * |KL - C(t)|
    capacity_max: float = 25.0  # capacity: C(t) grows linearly from 0 to capacity_max nats ...
    capacity_steps: int = 100_000  # ... over capacity_steps steps

    _choices = {
        "networks": ("pinwheel", "shapes", "burgess"),
        "likelihood": ("gaussian", "bernoulli"),
        "divergence": (
            "none",
            "inclusive_kl",
            "mmd_imq",
            "mmd_rbf",
            "mmd_per_dim",
            "factor_vae",
            "beta_tcvae",
            "dip_vae_i",
            "dip_vae_ii",
            "capacity",
        ),
        "objective": ("beta", "entropy"),
        "tc_estimator": ("mss", "mws"),
    }


@dataclass
class TrainConfig:
    """The SVI loop (:class:`pyro_decomp.train.Trainer`)."""

    steps: int = 500
    batch_size: int | None = None  # None: full batch (paper: B = n = 400)
    lr: float = 1e-3
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    seed: int = 0
    device: str = "auto"
    checkpoint_every: int = 100
    keep_checkpoints: int = 3
    log_every: int = 1
    progress: bool = True
    tensorboard: bool = True
    validate: bool = False  # Pyro's shape/support checks: ~2.5x slower steps on the pinwheel
    threads: int | None = None  # torch.set_num_threads for this run; None keeps torch's default

    _choices = {"device": ("auto", "cpu", "cuda")}


@dataclass
class EvalConfig:
    """Evaluation on the test split (independent of the training estimator)."""

    seed: int = 12345
    num_samples: int = 4000  # samples of q(z) and p(z) for the MMD and the KL estimates
    posterior_draws: int = 100  # draws of z per test point in posterior.nc
    grid_size: int = 160  # density grid resolution per axis
    figures: bool = True
    # dsprites: disentanglement metrics of the mean representation (sizes as in disentanglement_lib)
    metric_group_size: int = 64  # BetaVAE / FactorVAE: points per vote
    metric_num_train: int = 10_000  # BetaVAE / FactorVAE: training votes
    metric_num_eval: int = 5_000  # BetaVAE / FactorVAE: evaluation votes
    metric_num_variance: int = 10_000  # FactorVAE: points for the global variances
    metric_num_points: int = 10_000  # MIG: points
    loss_images: int = 2048  # dsprites: images (per split) for the final loss terms
    traversal_range: float = 3.0  # latent traversals over [-r, r]


@dataclass
class ExperimentConfig:
    """A full, resolved run configuration."""

    id: str = "custom"
    description: str = ""
    size: str = "paper"
    data: DataConfig = field(default_factory=DataConfig)
    prior: PriorConfig = field(default_factory=PriorConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# ---------------------------------------------------------------------------------------------- validation
def _close(name: str, options: Iterable[str]) -> str:
    options = sorted(options)
    near = difflib.get_close_matches(name, options, n=3, cutoff=0.5)
    hint = f" Did you mean {' or '.join(repr(n) for n in near)}?" if near else ""
    return f"{hint} Valid keys: {', '.join(options)}."


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check/convert ``value`` to the annotated type ``tp``; raise ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, value, arg)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}: expected {' or '.join(_type_name(a) for a in args)}, got {value!r}.")
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}.")
        return [_coerce(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}.")
        return value
    if tp is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise ConfigError(f"{key}: expected an integer, got {value!r}.")
        if abs(int(value)) > _MAX_INT:
            # torch sizes and counters are 64-bit: a larger number would fail deep inside torch, unnamed
            raise ConfigError(f"{key}: {int(value)} is too large (at most 2**63 - 1).")
        return int(value)
    if tp is float:
        if isinstance(value, str):
            # YAML 1.1 reads 1e-3 (no dot) as a string; accept what Python reads as a number
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{key}: expected a number, got {value!r}.") from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}.")
        if not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}.")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}.")
        return value
    return value


def _section_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


_SECTIONS = {f.name: f.type for f in dataclasses.fields(ExperimentConfig)}


_MAX_SEED = 2**32 - 1
_MAX_INT = 2**63 - 1
# an id names the default run directory runs/<id>, so it must be one plain path component
_ID_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+=,@-]*$")


def _check_id(value: str) -> None:
    if not _ID_RE.match(value) or ".." in value or len(value) > 200:
        raise ConfigError(
            f"id: {value!r} is not a valid run id; use letters, digits and - _ . (no '/', no '..', not empty), "
            "e.g. id=my-run. It names the run directory runs/<id>."
        )


def _check_ranges(cfg: ExperimentConfig) -> None:
    def need(cond: bool, key: str, msg: str) -> None:
        if not cond:
            raise ConfigError(f"{key}: {msg}")

    t, m, d, p, e = cfg.train, cfg.model, cfg.data, cfg.prior, cfg.eval
    _check_id(cfg.id)
    need(t.steps >= 0, "train.steps", f"must be >= 0, got {t.steps}.")
    need(t.lr > 0, "train.lr", f"must be > 0, got {t.lr}.")
    need(len(t.adam_betas) == 2 and all(0 <= b < 1 for b in t.adam_betas), "train.adam_betas",
         f"must be two numbers in [0, 1), got {t.adam_betas}.")  # fmt: skip
    need(t.batch_size is None or t.batch_size >= 1, "train.batch_size", "must be >= 1 or null (full batch).")
    need(t.checkpoint_every >= 1, "train.checkpoint_every", f"must be >= 1, got {t.checkpoint_every}.")
    need(t.keep_checkpoints >= 1, "train.keep_checkpoints", f"must be >= 1, got {t.keep_checkpoints}.")
    need(t.log_every >= 1, "train.log_every", f"must be >= 1, got {t.log_every}.")
    for key, seed in (("train.seed", t.seed), ("data.seed", d.seed), ("eval.seed", e.seed)):
        # numpy's global generator (seeded from train.seed) takes 32-bit seeds; torch's takes 64-bit ones
        need(0 <= seed <= _MAX_SEED, key, f"must be an integer in [0, 2**32 - 1] = [0, {_MAX_SEED}], got {seed}.")
    need(t.threads is None or t.threads >= 1, "train.threads", "must be >= 1 or null.")
    need(m.beta >= 0, "model.beta", f"must be >= 0, got {m.beta}.")
    need(m.alpha >= 0, "model.alpha", f"must be >= 0, got {m.alpha}.")
    need(not (m.alpha > 0 and m.divergence == "none"), "model.alpha",
         "alpha > 0 needs a divergence; set model.divergence to one of inclusive_kl, mmd_imq, mmd_rbf, mmd_per_dim, "
         "factor_vae, beta_tcvae, dip_vae_i, dip_vae_ii, capacity.")  # fmt: skip
    need(m.latent_dim >= 1, "model.latent_dim", "must be >= 1.")
    need(m.hidden_dim >= 1, "model.hidden_dim", "must be >= 1.")
    need(m.num_particles >= 1, "model.num_particles", "must be >= 1.")
    need(m.likelihood_scale is None or m.likelihood_scale > 0, "model.likelihood_scale", "must be > 0 or null.")
    need(m.num_prior_samples is None or m.num_prior_samples >= 2, "model.num_prior_samples", "must be >= 2 or null.")
    need(d.arms >= 1 and d.per_arm >= 1 and d.test_per_arm >= 1, "data", "arms, per_arm, test_per_arm must be >= 1.")
    need(min(d.radial_std, d.tangential_std, d.rate) >= 0, "data", "radial_std, tangential_std, rate must be >= 0.")
    need(p.variance > 0, "prior.variance", "must be > 0.")
    need(p.n_components >= 1, "prior.n_components", "must be >= 1.")
    need(e.num_samples >= 2, "eval.num_samples", "must be >= 2.")
    need(e.posterior_draws >= 1, "eval.posterior_draws", "must be >= 1.")
    # upper bounds for the evaluation sizes: they are used only after training, where running out of
    # memory would waste the whole run
    need(8 <= e.grid_size <= 4096, "eval.grid_size", f"must be in [8, 4096], got {e.grid_size}.")
    need(e.posterior_draws <= 100_000, "eval.posterior_draws", f"must be <= 100000, got {e.posterior_draws}.")
    need(t.batch_size is None or t.batch_size >= 2 or m.divergence == "none", "train.batch_size",
         "the aggregate-posterior divergence needs batches of at least 2.")  # fmt: skip
    need(m.dip_lambda >= 0 and m.capacity_gamma >= 0 and m.capacity_max >= 0, "model",
         "dip_lambda, capacity_gamma and capacity_max must be >= 0.")  # fmt: skip
    need(
        min(m.tc_weight, m.mi_weight, m.dim_kl_weight) >= 0,
        "model",
        "tc_weight, mi_weight, dim_kl_weight must be >= 0.",
    )
    need(m.capacity_steps >= 1, "model.capacity_steps", "must be >= 1.")
    need(e.metric_group_size >= 2, "eval.metric_group_size", "must be >= 2.")
    need(min(e.metric_num_train, e.metric_num_eval, e.metric_num_variance, e.metric_num_points, e.loss_images) >= 1,
         "eval", "metric_num_train, metric_num_eval, metric_num_variance, metric_num_points, loss_images must be >= 1.")  # fmt: skip
    need(e.traversal_range > 0, "eval.traversal_range", "must be > 0.")
    image_data = d.name == "dsprites"
    if image_data:
        need(d.num_images is None or d.num_images >= 2, "data.num_images", "must be >= 2 or null (the whole grid).")
        need(d.test_images >= 1, "data.test_images", "must be >= 1.")
        need(m.networks in ("shapes", "burgess"), "model.networks",
             f"data.name=dsprites needs image networks: shapes or burgess, got {m.networks!r}.")  # fmt: skip
        need(m.likelihood == "bernoulli", "model.likelihood",
             f"data.name=dsprites has binary images: use bernoulli, got {m.likelihood!r}.")  # fmt: skip
        need(p.name in ("isotropic", "student_t"), "prior.name",
             f"data.name=dsprites supports the isotropic and student_t priors, got {p.name!r}.")  # fmt: skip
    else:
        need(m.networks == "pinwheel", "model.networks",
             f"data.name={d.name} needs the pinwheel networks, got {m.networks!r}.")  # fmt: skip
        need(m.likelihood == "gaussian", "model.likelihood",
             f"data.name={d.name} needs the gaussian likelihood, got {m.likelihood!r}.")  # fmt: skip
        need(d.npz is None, "data.npz",
             f"is only read for data.name=dsprites; data.name={d.name} is generated, so remove data.npz.")  # fmt: skip


def config_from_dict(raw: Mapping[str, Any]) -> ExperimentConfig:
    """Build and validate an :class:`ExperimentConfig` from a nested mapping (unknown keys are errors)."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"a config must be a mapping of sections, got {type(raw).__name__}.")
    cfg = ExperimentConfig()
    for key, value in raw.items():
        if key not in _SECTIONS:
            raise ConfigError(f"unknown config key {key!r}.{_close(str(key), _SECTIONS)}")
        if key in ("id", "description", "size"):
            setattr(cfg, key, _coerce(key, value, str))
            continue
        if value is None:
            continue
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping of options, got {value!r}.")
        section = getattr(cfg, key)
        hints = _section_types(type(section))
        names = [f.name for f in dataclasses.fields(section)]
        choices = getattr(type(section), "_choices", {})
        for sub, v in value.items():
            full = f"{key}.{sub}"
            if sub not in names:
                raise ConfigError(f"unknown config key {full!r}.{_close(full, [f'{key}.{n}' for n in names])}")
            v = _coerce(full, v, hints[sub])
            if sub in choices and v not in choices[sub]:
                raise ConfigError(f"{full}: invalid value {v!r}; choose one of {', '.join(map(str, choices[sub]))}.")
            setattr(section, sub, v)
    _check_ranges(cfg)
    return cfg


def config_to_dict(cfg: ExperimentConfig) -> dict[str, Any]:
    """The config as plain nested dicts/lists/scalars (YAML- and ``torch.load(weights_only=True)``-safe)."""
    return dataclasses.asdict(cfg)


# ---------------------------------------------------------------------------------------------- overrides
def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """``["train.steps=100", "model.beta=0.5"]`` → ``{"train.steps": 100, "model.beta": 0.5}``.

    Values are parsed as YAML scalars, so ``null``, ``true`` and ``[0.9, 0.99]`` work.
    """
    out: dict[str, Any] = {}
    for item in items:
        if not isinstance(item, str) or "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. train.steps=100).")
        key, _, text = item.partition("=")
        key = key.strip()
        if not key:
            raise ConfigError(f"override {item!r} has an empty key; use e.g. model.beta=0.5.")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text
        out[key] = value
    return out


def apply_overrides(raw: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Apply dotted overrides to a nested config mapping (returns a new dict; validation is separate)."""
    out = copy.deepcopy(dict(raw))
    for key, value in overrides.items():
        parts = str(key).split(".")
        if parts[0] not in _SECTIONS:
            raise ConfigError(f"unknown config key {key!r}.{_close(str(key), _all_keys())}")
        if parts[0] in ("id", "description", "size"):
            if len(parts) != 1:
                raise ConfigError(f"unknown config key {key!r}.{_close(str(key), _all_keys())}")
            out[parts[0]] = value
            continue
        if len(parts) == 1:
            options = [k for k in _all_keys() if k.startswith(f"{key}.")]
            raise ConfigError(f"{key!r} is a config section; override one of its options: {', '.join(options)}.")
        if len(parts) != 2:
            raise ConfigError(f"unknown config key {key!r}; keys are section.option.{_close(str(key), _all_keys())}")
        section = dict(out.get(parts[0]) or {})
        section[parts[1]] = value
        out[parts[0]] = section
    return out


def _all_keys() -> list[str]:
    keys = ["id", "description", "size"]
    for name, tp in _SECTIONS.items():
        if dataclasses.is_dataclass(tp) or (isinstance(tp, str) and name not in keys):
            section = getattr(ExperimentConfig(), name)
            keys += [f"{name}.{f.name}" for f in dataclasses.fields(section)]
    return keys


# ---------------------------------------------------------------------------------------------- files
def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with :func:`yaml.safe_load`; clear errors for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist.")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({_yaml_problem(e)}).") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (not UTF-8); expected a YAML mapping.") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a YAML file.") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a YAML mapping at the top level, got {type(data).__name__}.")
    return data


def _yaml_problem(e: yaml.YAMLError) -> str:
    """PyYAML's multi-line message as one line: what is wrong and where (1-based line and column)."""
    problem = getattr(e, "problem", None) or getattr(e, "context", None) or str(e).splitlines()[0]
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return " ".join(f"{problem}{where}".split())


def _experiments_dir() -> Path:
    return Path(str(resources.files("pyro_decomp") / "experiments"))


def experiment_ids() -> list[str]:
    """The ids of the experiments shipped in ``pyro_decomp/experiments/``."""
    return sorted(p.stem for p in _experiments_dir().glob("*.yaml"))


def find_experiment(name: str | Path) -> Path:
    """Resolve an experiment id (``fig3-pinwheel``) or a path to a ``.yaml`` file."""
    text = str(name)
    if text.endswith((".yaml", ".yml")) or Path(text).is_file():
        path = Path(text)
        if not path.is_file():
            raise FileNotFoundError(f"experiment file {text!r} does not exist.")
        return path
    path = _experiments_dir() / f"{text}.yaml"
    if not path.is_file():
        ids = experiment_ids()
        near = difflib.get_close_matches(text, ids, n=3, cutoff=0.4)
        hint = f" Did you mean {' or '.join(map(repr, near))}?" if near else ""
        raise ConfigError(
            f"unknown experiment {text!r}.{hint} Known experiments: {', '.join(ids)} "
            "(see `pyro-decomp list`), or pass a path to a .yaml file."
        )
    return path


def _size_overrides(spec: Mapping[str, Any], path: Path, size: str | None) -> tuple[str, dict[str, Any]]:
    sizes = spec.get("sizes") or {}
    if not isinstance(sizes, Mapping):
        raise ConfigError(f"{path}: 'sizes' must map size names to override mappings.")
    size = size or spec.get("default_size") or ("paper" if "paper" in sizes else None)
    if size is None:
        return "default", {}
    if size not in sizes:
        raise ConfigError(f"{path}: unknown size {size!r}; choose one of {', '.join(sorted(sizes)) or '(none)'}.")
    over = sizes[size] or {}
    if not isinstance(over, Mapping):
        raise ConfigError(f"{path}: size {size!r} must be a mapping of dotted overrides.")
    return size, dict(over)


_EXPERIMENT_KEYS = ("id", "description", "reproduces", "default_size", "config", "sizes")


def load_experiment(
    name: str | Path, *, size: str | None = None, overrides: Mapping[str, Any] | None = None
) -> ExperimentConfig:
    """Load an experiment by id or path, apply its size and then the user's overrides, validate.

    >>> cfg = load_experiment("fig3-pinwheel", size="smoke", overrides={"model.alpha": 2.0})
    >>> cfg.model.alpha, cfg.size
    (2.0, 'smoke')
    """
    path = find_experiment(name)
    spec = load_yaml(path)
    if "grid" in spec or "base" in spec:
        raise ConfigError(f"{path.stem!r} is a sweep; run it with `pyro-decomp sweep {name}`.")
    if "config" not in spec and "size" in spec and set(spec) <= set(_SECTIONS):
        # a run's resolved config.yaml: run it again as it was, plus the user's overrides
        if size is not None and size != spec.get("size"):
            raise ConfigError(
                f"{path} is a run's resolved config (size {spec.get('size')!r}); --smoke/--size do not apply to "
                "it. Override single keys instead (e.g. train.steps=100)."
            )
        try:
            return config_from_dict(apply_overrides(spec, dict(overrides or {})))
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
    unknown = set(spec) - set(_EXPERIMENT_KEYS)
    if unknown:
        bad = sorted(unknown)[0]
        raise ConfigError(f"{path}: unknown top-level key {bad!r}.{_close(bad, _EXPERIMENT_KEYS)}")
    size_name, size_over = _size_overrides(spec, path, size)
    raw = dict(spec.get("config") or {})
    raw["id"] = str(spec.get("id", path.stem))
    raw["description"] = str(spec.get("description", ""))
    raw = apply_overrides(raw, size_over)
    raw["size"] = size_name
    raw = apply_overrides(raw, dict(overrides or {}))
    return config_from_dict(raw)


def save_config(cfg: ExperimentConfig, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    import os

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    os.replace(tmp, path)
