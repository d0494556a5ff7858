"""Build regularisers from config mappings (a config's ``divergence`` spec reaches them through
:mod:`pyro_decomp.components`; the thesis grids are the sweep ``thesis-grids``)."""

from __future__ import annotations

import itertools
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..schedules import schedule_from_dict
from .base import Divergence

__all__ = ["DIVERGENCE_TYPES", "divergence_from_dict"]

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
