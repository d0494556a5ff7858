"""Build regularisers from config mappings, and expand the thesis grids (``experiments/thesis-grids.yaml``)."""

from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..schedules import schedule_from_dict
from .base import Divergence

__all__ = ["DIVERGENCE_TYPES", "divergence_from_dict", "load_thesis_grids"]

# weight arguments that may be given as schedule specs ({type: linear_warmup, ...})
_SCHEDULABLE = {"mi_weight", "tc_weight", "dim_kl_weight", "lambda_od", "lambda_d", "gamma", "capacity"}


def _types() -> dict[str, Any]:
    from . import DIPVAE, MMD, BetaTCVAE, CapacityKL, ExclusiveKL, FactorVAE, InclusiveKL, TotalCorrelation

    return {
        "none": None,
        "inclusive_kl": InclusiveKL,
        "mmd": MMD,
        "exclusive_kl": ExclusiveKL,
        "total_correlation": TotalCorrelation,
        "beta_tcvae": BetaTCVAE,
        "factor_vae": FactorVAE,
        "dip_vae": DIPVAE,
        "capacity": CapacityKL,
    }


DIVERGENCE_TYPES = ("none", "inclusive_kl", "mmd", "exclusive_kl", "total_correlation", "beta_tcvae",
                    "factor_vae", "dip_vae", "capacity")  # fmt: skip


def divergence_from_dict(spec: dict[str, Any] | None) -> Divergence | None:
    """``{"type": "factor_vae", "latent_dim": 10}`` → ``FactorVAE(latent_dim=10)``; ``{"type": "none"}`` → ``None``.

    The other keys are the constructor's keyword arguments; weights may be schedule specs
    (:func:`~pyro_decomp.schedules.schedule_from_dict`). Unknown types and arguments raise ``ValueError``.

    >>> div = divergence_from_dict({"type": "dip_vae", "kind": "ii", "lambda_od": 10, "lambda_d": 10})
    >>> type(div).__name__, div.current_weights()
    ('DIPVAE', {'lambda_od': 10.0, 'lambda_d': 10.0})
    """
    if spec is None:
        return None
    if not isinstance(spec, dict) or "type" not in spec:
        raise ValueError(f"a divergence spec must be a mapping with a 'type' key, got {spec!r}.")
    types = _types()
    kind = spec["type"]
    if kind not in types:
        raise ValueError(f"divergence type must be one of {list(DIVERGENCE_TYPES)}, got {kind!r}.")
    cls = types[kind]
    kwargs = {k: v for k, v in spec.items() if k != "type"}
    if cls is None:
        if kwargs:
            raise ValueError(f"divergence type 'none' takes no arguments, got {sorted(kwargs)}.")
        return None
    for k, v in list(kwargs.items()):
        if k in _SCHEDULABLE and isinstance(v, dict):
            kwargs[k] = schedule_from_dict(v)
        elif k == "betas" and isinstance(v, list):
            kwargs[k] = tuple(v)
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ValueError(f"invalid arguments for divergence {kind!r}: {e}") from None


def _set_path(entry: dict[str, Any], path: str, value: Any) -> None:
    parts = path.split(".")
    target = entry
    for p in parts[:-1]:
        if not isinstance(target.get(p), dict):
            raise ValueError(f"grid param {path!r}: {p!r} is not a mapping in the entry.")
        target = target[p]
    if parts[-1] not in target:
        raise ValueError(f"grid param {path!r} does not name an existing key of the entry.")
    target[parts[-1]] = value


def load_thesis_grids(path: str | Path | None = None, *, build: bool = False) -> list[dict[str, Any]]:
    """Expand ``thesis-grids.yaml`` into one dict per run: ``name``, ``family``, ``beta``, ``alpha``,
    ``divergence`` (the spec, or the built object when ``build=True``).

    >>> runs = load_thesis_grids()
    >>> len(runs), runs[0]["name"], runs[-1]["divergence"]["lambda_d"]
    (17, 'beta_vae-1', 30)
    """
    if path is None:
        path = Path(str(resources.files("pyro_decomp") / "experiments" / "thesis-grids.yaml"))
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"grid file {str(path)!r} does not exist.")
    spec = yaml.safe_load(path.read_text())
    if not isinstance(spec, dict) or not isinstance(spec.get("grid"), list):
        raise ValueError(f"{path}: expected a mapping with a 'grid' list.")
    runs: list[dict[str, Any]] = []
    for family in spec["grid"]:
        unknown = set(family) - {"family", "beta", "alpha", "divergence", "param", "values"}
        if unknown:
            raise ValueError(f"{path}: unknown keys {sorted(unknown)} in grid entry {family.get('family')!r}.")
        params = family["param"] if isinstance(family["param"], list) else [family["param"]]
        for value in family["values"]:
            entry = {k: copy.deepcopy(family[k]) for k in ("beta", "alpha", "divergence")}
            for p in params:
                _set_path(entry, p, value)
            entry = {"name": f"{family['family']}-{value}", "family": family["family"], **entry}
            divergence_from_dict(entry["divergence"])  # validate every run up front
            if build:
                entry["divergence"] = divergence_from_dict(entry["divergence"])
            runs.append(entry)
    return runs
