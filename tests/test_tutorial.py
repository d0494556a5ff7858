"""The structured-priors tutorial (docs/tutorials/structured_priors.py) runs end to end at a tiny size."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pyro
import pytest
import torch

from pyro_decomp.data import pinwheel

_PATH = Path(__file__).resolve().parents[1] / "docs" / "tutorials" / "structured_priors.py"


@pytest.fixture(scope="module")
def tutorial():
    spec = importlib.util.spec_from_file_location("structured_priors", _PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _x() -> torch.Tensor:
    return torch.as_tensor(pinwheel(seed=0)[0], dtype=torch.float32)


def _train(example, x: torch.Tensor) -> dict:
    """Run one tutorial example for 40 steps from seed 0 and check that its loss falls."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    trained = example(x, steps=40)
    losses = trained["losses"]
    # 40 full-batch Adam steps from random networks: the loss falls by far more than its step-to-step noise
    assert all(math.isfinite(v) for v in losses) and np.mean(losses[-5:]) < 0.9 * losses[0]
    return trained


def test_hierarchical_prior_trains_and_is_analysed(tutorial):
    x = _x()
    trained = _train(tutorial.hierarchical_example, x)
    assert trained["terms"]["divergence"] >= 0 and math.isfinite(trained["terms"]["kl"])
    out = tutorial.analyse(trained["model"], trained["guide"], x, nuts_points=1, nuts_samples=20)
    # both latent sites of the hierarchical prior are in every view of the posterior
    assert out["idata"].posterior["log_scale"].dims == ("chain", "draw", "obs")
    assert out["idata"].posterior["z"].shape == (1, 50, 400, 2)
    assert set(out["nuts"].posterior.data_vars) == {"log_scale", "z"}
    assert {"log_scale[0]", "z[0, 0]", "z[0, 1]"} <= set(out["summary"].index)
    row = out["report"]["datapoints"][0]
    assert row["inference_gap"] == pytest.approx(row["approximation_gap"] + row["amortisation_gap"], abs=1e-5)


def test_enumerated_mixture_prior_and_main(tutorial, capsys):
    x = _x()
    trained = _train(tutorial.mixture_example, x)
    out = tutorial.analyse(trained["model"], trained["guide"], x, nuts_points=1, nuts_samples=20)
    assert set(out["idata"].posterior.data_vars) == {"z"}  # the cluster label is summed out, not sampled
    assert set(out["nuts"].posterior.data_vars) == {"z"}
    # and the whole script, as a reader runs it, at a tiny size
    results = tutorial.main(steps=5, nuts_points=1, nuts_samples=10)
    assert set(results) == {"hierarchical", "mixture"}
    printed = capsys.readouterr().out
    assert "== hierarchical prior, 5 steps" in printed and "== mixture prior, 5 steps" in printed
