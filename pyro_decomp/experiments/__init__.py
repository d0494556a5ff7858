"""Experiments: the protocol and registry of experiment families, the families, the sweep runner, and the
shipped experiment files (``*.yaml``, one per seed figure or table, installed with the package).

``pyro-decomp list`` names each experiment; ``pyro-decomp run <id>`` and ``pyro-decomp sweep <id>`` run
them. Families: ``pinwheel`` (:mod:`.pinwheel`), ``images`` (:mod:`.images`), ``appc-bias``
(:mod:`.appc_bias`). Adding an experiment is a YAML file naming a family, plus a module registering a new
family when none fits (:class:`ExperimentFamily`, :func:`register_family`).
"""

from .base import (
    Experiment,
    ExperimentFamily,
    families,
    get_family,
    register_family,
    seed_everything,
    write_metrics,
    write_posterior_netcdf,
)

__all__ = [
    "Experiment",
    "ExperimentFamily",
    "families",
    "get_family",
    "register_family",
    "seed_everything",
    "write_metrics",
    "write_posterior_netcdf",
]
