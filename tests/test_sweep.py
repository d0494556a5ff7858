"""Sweeps: grid expansion, local processes, Ray, summary outputs."""

from __future__ import annotations

import csv

import pytest

from pyro_decomp.config import ConfigError
from pyro_decomp.experiments.sweep import load_sweep, run_sweep

TINY_SWEEP = """
id: tiny-grid
base: fig3-pinwheel
grid:
  - title: "alpha = 0"
    fixed: {model.alpha: 0.0}
    vary: {model.beta: [0.5]}
  - title: "beta = 0"
    fixed: {model.beta: 0.0}
    vary: {model.alpha: [2.0]}
seeds: [0]
sizes:
  tiny: {data.per_arm: 15, data.test_per_arm: 10, train.steps: 5, train.checkpoint_every: 5,
         train.tensorboard: false, eval.num_samples: 100, eval.posterior_draws: 3, eval.grid_size: 12}
default_size: tiny
"""


def test_paper_grid_expands_to_the_workshop_values():
    spec = load_sweep("fig3-pinwheel-grid")
    pairs = [(r.config["model"]["alpha"], r.config["model"]["beta"]) for r in spec.runs]
    # workshop Fig. 2: top α=0, β∈{0.01,0.3,0.5,1,1.2}; bottom β=0, α∈{1,2,3,5,8}
    assert pairs == [(0.0, b) for b in (0.01, 0.3, 0.5, 1.0, 1.2)] + [(a, 0.0) for a in (1.0, 2.0, 3.0, 5.0, 8.0)]
    assert [(r.row, r.col) for r in spec.runs][:6] == [(0, 0), (0, 1), (0, 2), (0, 3), (0, 4), (1, 0)]
    assert all(r.config["train"]["steps"] == 500 for r in spec.runs)
    assert all(r.config["train"]["steps"] < 500 for r in load_sweep("fig3-pinwheel-grid", size="smoke").runs)


def test_sweep_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY_SWEEP.replace("vary: {model.alpha: [2.0]}", "vary: {model.alfa: [2.0]}"))
    with pytest.raises(ConfigError, match="Did you mean 'model.alpha'"):
        load_sweep(str(bad))
    with pytest.raises(ValueError, match="executor must be 'local' or 'ray'"):
        run_sweep("fig3-pinwheel-grid", tmp_path, executor="slurm")


def _check_outputs(out, rows):
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert (out / "grid.png").is_file() and (out / "summary.md").is_file()
    with open(out / "summary.csv") as f:
        table = list(csv.DictReader(f))
    assert [(float(r["alpha"]), float(r["beta"])) for r in table] == [(0.0, 0.5), (2.0, 0.0)]
    assert all(float(r["kl_prior_to_aggregate"]) == float(r["kl_prior_to_aggregate"]) for r in table)
    for name in ("alpha0_beta0.5_seed0", "beta0_alpha2_seed0"):
        assert (out / "runs" / name / "posterior.nc").is_file()


def test_local_sweep_and_reuse(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_SWEEP)
    out = tmp_path / "out"
    rows = run_sweep(str(path), out, workers=1, log=lambda m: None)
    _check_outputs(out, rows)
    # a second call reuses the finished runs
    logs = []
    rows = run_sweep(str(path), out, workers=1, log=logs.append)
    assert sum("reused" in line for line in logs) == 2


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_ray_sweep_local_cluster(tmp_path):
    pytest.importorskip("ray")
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_SWEEP)
    out = tmp_path / "out"
    rows = run_sweep(str(path), out, executor="ray", workers=2, log=lambda m: None)
    _check_outputs(out, rows)
