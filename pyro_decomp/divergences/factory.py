"""Build regularisers from config mappings, and expand the thesis grids (``experiments/thesis-grids.yaml``)."""

from __future__ import annotations

import itertools
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


def _model_keys_to_run(assignment: dict[str, Any], latent_dim: int) -> dict[str, Any]:
    """Dotted ``model.*`` and ``divergence.*`` keys of a sweep run → ``beta``, ``alpha`` and a divergence spec
    (``a+b`` keys tie several keys to one value)."""
    untied: dict[str, Any] = {}
    for key, value in assignment.items():
        for part in str(key).split("+"):
            untied[part.strip()] = value
    m = {k.split(".", 1)[1]: v for k, v in untied.items() if k.startswith("model.")}
    spec: dict[str, Any] = {k.split(".", 1)[1]: v for k, v in untied.items() if k.startswith("divergence.")}
    spec.setdefault("type", "none")
    if spec["type"] == "factor_vae":
        spec.setdefault("latent_dim", int(m.get("latent_dim", latent_dim)))
    return {"beta": float(m.get("beta", 1.0)), "alpha": float(m.get("alpha", 0.0)), "divergence": spec}


def load_thesis_grids(
    path: str | Path | None = None, *, size: str = "paper", build: bool = False
) -> list[dict[str, Any]]:
    """Expand ``thesis-grids.yaml`` (sweep format: blocks of ``fixed`` and ``vary`` dotted keys) into one dict
    per run (seeds not expanded): ``name``, ``family``, ``beta``, ``alpha``, ``divergence`` (a spec for
    :func:`divergence_from_dict`, or the built object when ``build=True``) and ``overrides`` (the dotted keys,
    including the size's training settings).

    >>> runs = load_thesis_grids()
    >>> len(runs), runs[0]["name"], runs[-1]["divergence"]["lambda_d"]
    (17, 'beta-VAE model.beta=1.0', 30.0)
    """
    if path is None:
        path = Path(str(resources.files("pyro_decomp") / "experiments" / "thesis-grids.yaml"))
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"grid file {str(path)!r} does not exist.")
    spec = yaml.safe_load(path.read_text())
    if not isinstance(spec, dict) or not isinstance(spec.get("grid"), list):
        raise ValueError(f"{path}: expected a mapping with a 'grid' list.")
    sizes = spec.get("sizes") or {}
    if size not in sizes:
        raise ValueError(f"size must be one of {sorted(sizes)}, got {size!r}.")
    size_over = dict(sizes[size] or {})
    size_over.pop("seeds", None)  # a size's seed list (sweep format), not a config key
    runs: list[dict[str, Any]] = []
    for block in spec["grid"]:
        if not isinstance(block, dict) or set(block) - {"title", "fixed", "vary"}:
            raise ValueError(f"{path}: each grid block must be a mapping with keys title, fixed, vary.")
        fixed, vary = dict(block.get("fixed") or {}), dict(block.get("vary") or {})
        keys = list(vary)
        for values in itertools.product(*(vary[k] for k in keys)):
            assignment = {**size_over, **fixed, **dict(zip(keys, values, strict=True))}
            run = _model_keys_to_run(assignment, int(assignment.get("model.latent_dim", 10)))
            label = " ".join(f"{k}={v}" for k, v in zip(keys, values, strict=True))
            divergence_from_dict(run["divergence"])  # validate every run up front
            if build:
                run["divergence"] = divergence_from_dict(run["divergence"])
            runs.append({"name": f"{block.get('title', '')} {label}".strip(), "family": block.get("title", ""),
                         **run, "overrides": assignment})  # fmt: skip
    return runs
