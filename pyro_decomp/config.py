"""Typed experiment configuration: YAML files, ``key=value`` overrides, validation (DESIGN: config.py).

An experiment file (``pyro_decomp/experiments/<id>.yaml``) looks like::

    id: fig3-pinwheel
    description: one line on what it reproduces
    family: pinwheel     # the experiment module that builds, evaluates and summarises it
    default_size: paper
    config:
      data: {name: pinwheel, per_arm: 100}          # specs: a registered part and its own parameters
      prior: {name: mixture, n_components: 4, variance: 0.03}
      likelihood: {name: gaussian, scale: null}
      networks: {name: pinwheel, hidden_dim: 100}
      divergence: {type: inclusive_kl}
      model: {latent_dim: 2, beta: 0.0, alpha: 3.0}  # typed sections
      train: {steps: 500, lr: 1.0e-3}
      eval: {grid_size: 160}                         # typed by the family
    sizes:               # named sets of dotted overrides; `--smoke` selects `smoke`
      smoke: {train.steps: 150}
      paper: {}

The parts (``data``, ``prior``, ``likelihood``, ``networks``, ``divergence``) are specs of the registries
in :mod:`pyro_decomp.components`: their parameters are the builder's keyword arguments, so every part of
the library and every parameter is reachable from a config or an override (``prior.name=student_t
prior.df=3``).

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
    "weight_label",
    "ExperimentConfig",
    "ModelConfig",
    "SPEC_SECTIONS",
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


def weight_label(value: Any) -> str:
    """``model.beta`` / ``model.alpha`` for titles: ``0.5`` or ``linear_warmup(0→4, 10000 steps)``."""
    if isinstance(value, Mapping):
        kind = value.get("type", "schedule")
        if "start" in value and "end" in value:
            steps = f", {value['steps']} steps" if "steps" in value else ""
            return f"{kind}({value['start']:g}→{value['end']:g}{steps})"
        return f"{kind}({', '.join(f'{k}={v}' for k, v in value.items() if k != 'type')})"
    return f"{value:g}"


# ---------------------------------------------------------------------------------------------- sections
#: the sections that hold a spec of a registered part (:mod:`pyro_decomp.components`)
SPEC_SECTIONS = ("data", "prior", "likelihood", "networks", "divergence")


@dataclass
class ModelConfig:
    """The latent space and the objective's weights (paper Eq. 7): loss = reconstruction + β KL + α N D.

    ``beta`` and ``alpha`` are numbers or schedule specs (:func:`pyro_decomp.schedules.schedule_from_dict`),
    e.g. ``beta: {type: linear_warmup, start: 0.0, end: 4.0, steps: 10000}`` for an annealed β."""

    latent_dim: int = 2
    beta: float | dict = 1.0
    alpha: float | dict = 0.0
    objective: str = "beta"
    num_particles: int = 1

    _choices = {"objective": ("beta", "entropy")}


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
    # compile the loss with torch.jit.trace (JitDecompositionELBO): same loss and gradients, no per-step Pyro
    # tracing cost (pays on small networks such as the pinwheel's); static models only, not with FactorVAE
    jit: bool = False

    _choices = {"device": ("auto", "cpu", "cuda")}


@dataclass
class ExperimentConfig:
    """A full, resolved run configuration.

    ``family`` names the experiment module (:mod:`pyro_decomp.experiments`) that builds, evaluates and
    summarises the run, and declares the type of ``eval``. ``data``, ``prior``, ``likelihood``,
    ``networks`` and ``divergence`` are :class:`~pyro_decomp.components.Spec` s: a registered part's name
    plus its own parameters (``prior: {name: student_t, df: 3}``).
    """

    id: str = "custom"
    description: str = ""
    size: str = "paper"
    family: str = "pinwheel"
    data: Any = None
    prior: Any = None
    likelihood: Any = None
    networks: Any = None
    divergence: Any = None
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: Any = None

    def experiment_family(self):
        """The :class:`~pyro_decomp.experiments.ExperimentFamily` of this config."""
        from .experiments.base import get_family

        return get_family(self.family)


# ---------------------------------------------------------------------------------------------- validation
def _close(name: str, options: Iterable[str]) -> str:
    options = sorted(options)
    near = difflib.get_close_matches(name, options, n=3, cutoff=0.5)
    hint = f" Did you mean {' or '.join(repr(n) for n in near)}?" if near else ""
    return f"{hint} Valid keys: {', '.join(options)}."


def _type_name(tp: Any) -> str:
    """How an error message names a type: ``a number``, ``an integer``, ``a mapping``, ..."""
    origin = typing.get_origin(tp) or tp
    words = {float: "a number", int: "an integer", bool: "true or false", str: "a string", list: "a list",
             dict: "a mapping (e.g. a schedule spec)", type(None): "null"}  # fmt: skip
    return words.get(origin, getattr(tp, "__name__", str(tp).replace("typing.", "")))


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
    if tp is dict or typing.get_origin(tp) is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}.")
        return dict(value)
    return value


def _section_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


_SECTIONS = {f.name: f.type for f in dataclasses.fields(ExperimentConfig)}
_TOP = ("id", "description", "size", "family")
_TYPED = ("model", "train", "eval")

# keys of the flat configs before the nested specs, and where they live now
_MOVED = {
    "model.divergence": "divergence.type",
    "model.networks": "networks.name",
    "model.hidden_dim": "networks.hidden_dim",
    "model.likelihood": "likelihood.name",
    "model.likelihood_scale": "likelihood.scale",
    "model.num_prior_samples": "divergence.num_prior_samples",
    "model.tc_weight": "divergence.tc_weight",
    "model.mi_weight": "divergence.mi_weight",
    "model.dim_kl_weight": "divergence.dim_kl_weight",
    "model.tc_estimator": "divergence.estimator",
    "model.dip_lambda": "divergence.lambda_od and divergence.lambda_d",
    "model.capacity_gamma": "divergence.gamma",
    "model.capacity_max": "divergence.capacity.end",
    "model.capacity_steps": "divergence.capacity.steps",
}


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


def _need(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {msg}")


def _check_ranges(cfg: ExperimentConfig) -> None:
    need = _need
    t, m = cfg.train, cfg.model
    _check_id(cfg.id)
    need(t.steps >= 0, "train.steps", f"must be >= 0, got {t.steps}.")
    need(t.lr > 0, "train.lr", f"must be > 0, got {t.lr}.")
    need(len(t.adam_betas) == 2 and all(0 <= b < 1 for b in t.adam_betas), "train.adam_betas",
         f"must be two numbers in [0, 1), got {t.adam_betas}.")  # fmt: skip
    need(t.batch_size is None or t.batch_size >= 1, "train.batch_size", "must be >= 1 or null (full batch).")
    need(t.checkpoint_every >= 1, "train.checkpoint_every", f"must be >= 1, got {t.checkpoint_every}.")
    need(t.keep_checkpoints >= 1, "train.keep_checkpoints", f"must be >= 1, got {t.keep_checkpoints}.")
    need(t.log_every >= 1, "train.log_every", f"must be >= 1, got {t.log_every}.")
    seeds = [("train.seed", t.seed)]
    if isinstance(getattr(cfg.eval, "seed", None), int):
        seeds.append(("eval.seed", cfg.eval.seed))
    if isinstance(cfg.data.get("seed"), int):
        seeds.append(("data.seed", cfg.data["seed"]))
    for key, seed in seeds:
        # numpy's global generator (seeded from train.seed) takes 32-bit seeds; torch's takes 64-bit ones
        need(0 <= seed <= _MAX_SEED, key, f"must be an integer in [0, 2**32 - 1] = [0, {_MAX_SEED}], got {seed}.")
    need(t.threads is None or t.threads >= 1, "train.threads", "must be >= 1 or null.")
    for key in ("beta", "alpha"):
        value = getattr(m, key)
        if isinstance(value, Mapping):
            from .schedules import schedule_from_dict

            try:
                sched = schedule_from_dict(dict(value))
            except (TypeError, ValueError) as e:
                raise ConfigError(f"model.{key}: {e}") from None
            lo = min(float(sched(t)) for t in (0, 1, 10, 100, 1_000, 10_000, 100_000, 1_000_000))
            need(lo >= 0, f"model.{key}", f"the schedule must stay >= 0, got {dict(value)}.")
        else:
            need(value >= 0, f"model.{key}", f"must be >= 0, got {value}.")
    alpha_on = isinstance(m.alpha, Mapping) or m.alpha > 0
    need(not (alpha_on and cfg.divergence.name == "none"), "model.alpha",
         "alpha > 0 needs a divergence; set divergence.type to one of "
         f"{', '.join(n for n in _component_names('divergence') if n != 'none')}.")  # fmt: skip
    need(m.latent_dim >= 1, "model.latent_dim", "must be >= 1.")
    need(m.num_particles >= 1, "model.num_particles", "must be >= 1.")
    need(t.batch_size is None or t.batch_size >= 2 or cfg.divergence.name == "none", "train.batch_size",
         "the aggregate-posterior divergence needs batches of at least 2.")  # fmt: skip


def _component_names(kind: str) -> list[str]:
    from .components import COMPONENTS, _load_builtins

    _load_builtins()
    return sorted(COMPONENTS[kind])


def _check_parts(cfg: ExperimentConfig) -> None:
    """The parts must fit together: data and networks of the same kind, a likelihood the data allows, and a
    divergence that builds with these parameters. Nothing is loaded."""
    data, lik, nets = cfg.data.component(), cfg.likelihood.component(), cfg.networks.component()
    event_dim = data.meta.get("event_dim")
    if event_dim is not None and nets.meta.get("event_dim") not in (None, event_dim):
        kinds = {1: "vectors", 3: "images"}
        fits = [n for n in _component_names("networks") if _networks_event_dim(n) == event_dim]
        raise ConfigError(
            f"networks.name: {cfg.networks.name!r} takes {kinds.get(nets.meta.get('event_dim'), '?')}, but data "
            f"{cfg.data.name!r} is {kinds.get(event_dim, '?')}; choose one of {', '.join(fits)}."
        )
    if lik.meta.get("binary_only") and not data.meta.get("binary", False):
        raise ConfigError(
            f"likelihood.name: {cfg.likelihood.name!r} needs binary data, but data {cfg.data.name!r} is not binary; "
            "use gaussian or laplace."
        )
    if data.meta.get("binary") and event_dim == 3 and cfg.likelihood.name != "bernoulli":
        raise ConfigError(
            f"likelihood.name: data {cfg.data.name!r} has binary images: use bernoulli, got {cfg.likelihood.name!r}."
        )
    import torch

    # build the cheap parts once to check their values (a prior that needs the data is checked when built);
    # on a forked RNG, so validating a config never moves the caller's random stream
    with torch.random.fork_rng(devices=[]):
        try:
            cfg.divergence.build(latent_dim=cfg.model.latent_dim)
            if "x_train" not in cfg.prior.component().injected:
                cfg.prior.build(latent_dim=cfg.model.latent_dim)
            cfg.likelihood.build(event_dim=event_dim or 1)
        except ValueError as e:
            raise ConfigError(str(e)) from None


def _networks_event_dim(name: str) -> int | None:
    from .components import component

    return component("networks", name).meta.get("event_dim")


def _typed_section(key: str, cls: type, value: Any) -> Any:
    section = cls()
    if value is None:
        return section
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key}: expected a mapping of options, got {value!r}.")
    hints = _section_types(cls)
    names = [f.name for f in dataclasses.fields(section)]
    choices = getattr(cls, "_choices", {})
    for sub, v in value.items():
        full = f"{key}.{sub}"
        if sub not in names:
            if full in _MOVED:
                raise ConfigError(f"config key {full!r} is now {_MOVED[full]!r} (the parts are nested specs).")
            raise ConfigError(f"unknown config key {full!r}.{_close(full, [f'{key}.{n}' for n in names])}")
        v = _coerce(full, v, hints[sub])
        if sub in choices and v not in choices[sub]:
            raise ConfigError(f"{full}: invalid value {v!r}; choose one of {', '.join(map(str, choices[sub]))}.")
        setattr(section, sub, v)
    return section


def config_from_dict(raw: Mapping[str, Any]) -> ExperimentConfig:
    """Build and validate an :class:`ExperimentConfig` from a nested mapping (unknown keys are errors).

    Sections the mapping leaves out take the experiment family's defaults
    (:attr:`~pyro_decomp.experiments.ExperimentFamily.defaults`).
    """
    from .components import resolve_spec

    if not isinstance(raw, Mapping):
        raise ConfigError(f"a config must be a mapping of sections, got {type(raw).__name__}.")
    for key in raw:
        if key not in _SECTIONS:
            raise ConfigError(f"unknown config key {key!r}.{_close(str(key), _SECTIONS)}")
    cfg = ExperimentConfig()
    for key in _TOP:
        if key in raw and raw[key] is not None:
            setattr(cfg, key, _coerce(key, raw[key], str))
    try:
        family = cfg.experiment_family()
    except ValueError as e:
        raise ConfigError(str(e)) from None
    defaults = family.defaults
    for kind in SPEC_SECTIONS:
        value = raw.get(kind)
        if value is None:
            value = defaults.get(kind)
        if value is None:
            raise ConfigError(f"{kind}: the config needs a {kind} spec (experiment family {cfg.family!r} has no default).")
        try:
            setattr(cfg, kind, resolve_spec(kind, value, coerce=_coerce))
        except ConfigError:
            raise
        except ValueError as e:
            raise ConfigError(str(e)) from None
    model_raw = {**(defaults.get("model") or {}), **dict(raw.get("model") or {})}
    cfg.model = _typed_section("model", ModelConfig, model_raw)
    cfg.train = _typed_section("train", TrainConfig, raw.get("train"))
    cfg.eval = _typed_section("eval", family.eval_config, raw.get("eval"))
    _check_ranges(cfg)
    check = getattr(cfg.eval, "check", None)
    if check is not None:
        try:
            check()
        except ValueError as e:
            raise ConfigError(str(e) if str(e).startswith("eval") else f"eval: {e}") from None
    _check_parts(cfg)
    try:
        family.check_config(cfg)
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return cfg


def config_to_dict(cfg: ExperimentConfig) -> dict[str, Any]:
    """The config as plain nested dicts/lists/scalars (YAML- and ``torch.load(weights_only=True)``-safe)."""
    out: dict[str, Any] = {k: getattr(cfg, k) for k in _TOP}
    for kind in SPEC_SECTIONS:
        spec = getattr(cfg, kind)
        out[kind] = copy.deepcopy(dict(spec)) if spec is not None else None
    for key in _TYPED:
        section = getattr(cfg, key)
        out[key] = dataclasses.asdict(section) if section is not None else None
    return out


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
    """Apply dotted overrides to a nested config mapping (returns a new dict; validation is separate).

    Keys go as deep as the config does: ``model.beta``, ``prior.df``, ``divergence.capacity.end``.
    Changing the part a spec names (``prior.name=student_t``, ``divergence.type=mmd``) drops the old part's
    parameters, so the new part starts from its own defaults plus the other overrides given with it.
    """
    from .components import NAME_KEY

    out = copy.deepcopy(dict(raw))
    items = [(str(k), v) for k, v in overrides.items()]
    # the part a spec names first: switching parts resets that spec, then its parameters apply
    items.sort(key=lambda kv: 0 if kv[0] in {f"{s}.{NAME_KEY[s]}" for s in SPEC_SECTIONS} else 1)
    for key, value in items:
        parts = key.split(".")
        if any(not p for p in parts):
            raise ConfigError(f"unknown config key {key!r}; keys are dotted names like model.beta.")
        if parts[0] not in _SECTIONS:
            raise ConfigError(f"unknown config key {key!r}.{_close(key, _all_keys())}")
        if parts[0] in _TOP:
            if len(parts) != 1:
                raise ConfigError(f"unknown config key {key!r}.{_close(key, _all_keys())}")
            out[parts[0]] = value
            continue
        if key in _MOVED:
            raise ConfigError(f"config key {key!r} is now {_MOVED[key]!r} (the parts are nested specs).")
        if len(parts) == 1:
            if parts[0] in SPEC_SECTIONS and isinstance(value, str | Mapping):
                out[parts[0]] = value if isinstance(value, Mapping) else {NAME_KEY[parts[0]]: value}
                continue
            options = [k for k in _all_keys() if k.startswith(f"{key}.")]
            raise ConfigError(f"{key!r} is a config section; override one of its options: {', '.join(options)}.")
        if parts[0] in _TYPED and len(parts) != 2:
            raise ConfigError(f"unknown config key {key!r}; keys are section.option.{_close(key, _all_keys())}")
        section = out.get(parts[0])
        if isinstance(section, str) and parts[0] in SPEC_SECTIONS:
            section = {NAME_KEY[parts[0]]: section}
        section = copy.deepcopy(dict(section or {}))
        if parts[0] in SPEC_SECTIONS and len(parts) == 2 and parts[1] == NAME_KEY[parts[0]]:
            if section.get(parts[1]) != value:
                section = {}
        node = section
        for i, p in enumerate(parts[1:-1], start=1):
            child = node.get(p)
            if not isinstance(child, Mapping):
                if child is not None:
                    raise ConfigError(f"{'.'.join(parts[: i + 1])} is {child!r}, not a mapping; cannot set {key!r}.")
                child = {}
            node[p] = dict(child)
            node = node[p]
        node[parts[-1]] = value
        out[parts[0]] = section
    return out


def _all_keys() -> list[str]:
    """Every fixed config key (spec parameters depend on the part, so only their names are listed)."""
    from .components import NAME_KEY

    keys = list(_TOP)
    keys += [f"{s}.{NAME_KEY[s]}" for s in SPEC_SECTIONS]
    for name, cls in (("model", ModelConfig), ("train", TrainConfig)):
        keys += [f"{name}.{f.name}" for f in dataclasses.fields(cls)]
    try:
        from .experiments.base import families

        for fam in families().values():
            keys += [f"eval.{f.name}" for f in dataclasses.fields(fam.eval_config)]
    except Exception:  # the registry failed to import: the did-you-mean hint is only a hint
        pass
    return sorted(set(keys))


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


_EXPERIMENT_KEYS = ("id", "description", "reproduces", "family", "default_size", "config", "sizes", "base")


def _merge_config(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``, section by section; a spec that names another part replaces the base's."""
    from .components import NAME_KEY

    out = copy.deepcopy(dict(base))
    for key, value in (over or {}).items():
        old = out.get(key)
        if isinstance(value, Mapping) and isinstance(old, Mapping):
            name_key = NAME_KEY.get(key)
            if name_key and name_key in value and value[name_key] != old.get(name_key):
                out[key] = copy.deepcopy(dict(value))
            else:
                out[key] = {**old, **copy.deepcopy(dict(value))}
        else:
            out[key] = copy.deepcopy(value)
    return out


def _derived_experiment(path: Path, spec: Mapping[str, Any], depth: int = 0) -> dict[str, Any]:
    """A run file with ``base: <experiment>``: the base's config with this file's ``config`` on top; the
    family, description and sizes are the base's unless this file gives its own."""
    if depth > 10:
        raise ConfigError(f"{path}: 'base' experiments nest too deeply (a cycle?).")
    base_name = str(spec["base"])
    if base_name.endswith((".yaml", ".yml")) and not Path(base_name).is_absolute():
        base_name = str(path.parent / base_name)
    base_path = find_experiment(base_name)
    base = load_yaml(base_path)
    if "grid" in base:
        raise ConfigError(f"{path}: base {base_name!r} is a sweep; a run's base must be a run.")
    if "base" in base:
        base = _derived_experiment(base_path, base, depth + 1)
    out = {k: v for k, v in base.items() if k not in ("id", "reproduces", "description")}
    out.update({k: v for k, v in spec.items() if k not in ("base", "config")})
    out["config"] = _merge_config(base.get("config") or {}, spec.get("config") or {})
    return out


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
    if "grid" in spec:
        raise ConfigError(f"{path.stem!r} is a sweep; run it with `pyro-decomp sweep {name}`.")
    if "base" in spec:
        spec = _derived_experiment(path, spec)
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
    if spec.get("family") is not None:
        raw["family"] = str(spec["family"])
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
