"""Shared test set-up: every test starts from a fixed seed, an empty param store and Pyro validation on."""

from __future__ import annotations

import os

import matplotlib
import pyro
import pytest
import torch

matplotlib.use("Agg")
# keep the suite deterministic and light on a 2-core CI machine
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _pyro_state():
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    pyro.enable_validation(True)
    yield
    pyro.clear_param_store()


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
