"""Sweeps: grid expansion, local processes, Ray, summary outputs."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import yaml

from pyro_decomp.config import ConfigError
from pyro_decomp.experiments import get_family
from pyro_decomp.experiments.sweep import aggregate_over_seeds, load_sweep, run_sweep

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


def _read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def _check_outputs(out, rows):
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert (out / "grid.png").is_file() and (out / "summary.md").is_file()
    table = _read_csv(out / "summary_runs.csv")
    assert [(float(r["alpha"]), float(r["beta"])) for r in table] == [(0.0, 0.5), (2.0, 0.0)]
    assert all(float(r["kl_prior_to_aggregate"]) == float(r["kl_prior_to_aggregate"]) for r in table)
    # one seed: the per-setting table holds each run's value as the mean, with a blank sd and interval
    agg = _read_csv(out / "summary.csv")
    assert [r["setting"] for r in agg] == ["alpha0_beta0.5", "beta0_alpha2"]
    for a, r in zip(agg, table, strict=True):
        assert a["kl_prior_to_aggregate_n"] == "1"
        assert float(a["kl_prior_to_aggregate_mean"]) == float(r["kl_prior_to_aggregate"])
        assert a["kl_prior_to_aggregate_sd"] == a["kl_prior_to_aggregate_ci_low"] == ""
    md = (out / "summary.md").read_text()
    assert "One seed per setting: the sd and the interval need two or more seeds" in md and "±" not in md.split("\n|")[1]
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
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


# ---- restarting an interrupted or damaged sweep ---------------------------------------------------

RESUMABLE = TINY_SWEEP.replace("train.steps: 5, train.checkpoint_every: 5", "train.steps: 6, train.checkpoint_every: 3")
RUNS = ("alpha0_beta0.5_seed0", "beta0_alpha2_seed0")


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory):
    """One finished two-run sweep (6 steps, checkpoints at 3 and 6), copied fresh into each test."""
    base = tmp_path_factory.mktemp("finished")
    path = base / "tiny.yaml"
    path.write_text(RESUMABLE)
    run_sweep(str(path), base / "out", workers=1, log=lambda m: None)
    return base


@pytest.fixture
def sweep_copy(finished_sweep, tmp_path):
    shutil.copytree(finished_sweep, tmp_path, dirs_exist_ok=True)
    return tmp_path / "tiny.yaml", tmp_path / "out"


def _measures(out, name):
    return json.loads((out / "runs" / name / "metrics.json").read_text())["measures"]


def test_rerun_after_a_kill_between_step_file_and_checkpoint(sweep_copy):
    path, out = sweep_copy
    run = out / "runs" / RUNS[0]
    before = _measures(out, RUNS[0])
    # the state of a run killed right after its first checkpoints/step_*.pt, before checkpoint.pt
    for name in ("checkpoint.pt", "metrics.json", "posterior.nc"):
        (run / name).unlink()
    shutil.rmtree(run / "figures")
    (run / "checkpoints" / "step_00000006.pt").unlink()
    # the Trainer also keeps its step-0 checkpoint; the newest one left is step 3
    assert sorted(p.name for p in (run / "checkpoints").iterdir())[-1] == "step_00000003.pt"
    logs = []
    rows = run_sweep(str(path), out, workers=1, log=logs.append)
    assert [r["status"] for r in rows] == ["ok", "reused"]  # was FileExistsError on every rerun
    assert any("resuming: 1 of 2 runs finished" in line for line in logs)
    assert any("continued from checkpoints/step_00000003.pt" in line for line in logs)
    # resuming on the CPU is bit-identical to the uninterrupted run, so the measures are the same
    assert _measures(out, RUNS[0]) == before


def test_corrupt_figure_file_is_redrawn_and_outputs_refreshed(sweep_copy):
    path, out = sweep_copy
    npz = out / "runs" / RUNS[1] / "figures" / "aggregate_posterior.npz"
    npz.write_bytes(b"not an npz")
    (out / "sweep.json").write_text("stale")
    (out / "grid.png").write_bytes(b"stale")
    logs = []
    rows = run_sweep(str(path), out, workers=1, log=logs.append)  # was a ValueError from np.load
    assert [r["status"] for r in rows] == ["reused", "ok"]
    assert any("figures missing or unreadable; re-evaluated" in line for line in logs)
    with np.load(npz, allow_pickle=False) as data:
        assert data["density"].ndim == 2
    assert json.loads((out / "sweep.json").read_text())["runs"] == list(RUNS)
    assert (out / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_grid_figure_skips_an_unreadable_panel(sweep_copy, tmp_path):
    path, out = sweep_copy
    spec = load_sweep(str(path))
    results = [{"status": "ok", "run_dir": str(out / "runs" / name)} for name in RUNS]
    (out / "runs" / RUNS[0] / "figures" / "aggregate_posterior.npz").write_bytes(b"\x00" * 10)
    logs = []
    written = get_family("pinwheel").sweep_figures(spec, results, tmp_path, logs.append)
    assert written == [tmp_path / "grid.png"] and (tmp_path / "grid.png").is_file()
    assert logs == [f"[sweep] {RUNS[0]}: {out / 'runs' / RUNS[0] / 'figures' / 'aggregate_posterior.npz'} "
                    "is missing or unreadable; its grid.png panel is left empty"]  # fmt: skip


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", ""], ids=["truncated", "not-an-object", "empty"])
def test_corrupt_metrics_json_is_re_evaluated(sweep_copy, content):
    path, out = sweep_copy
    before = _measures(out, RUNS[1])
    (out / "runs" / RUNS[1] / "metrics.json").write_text(content)
    logs = []
    rows = run_sweep(str(path), out, workers=1, log=logs.append)  # was FAILED on every rerun
    assert [r["status"] for r in rows] == ["reused", "ok"]
    assert any("metrics.json unreadable; re-evaluated from the checkpoint" in line for line in logs)
    assert _measures(out, RUNS[1]) == before  # the evaluation is seeded (eval.seed)
    rows = run_sweep(str(path), out, workers=1, log=lambda m: None)
    assert [r["status"] for r in rows] == ["reused", "reused"]


def test_corrupt_checkpoint_falls_back_to_an_earlier_one(sweep_copy):
    path, out = sweep_copy
    run = out / "runs" / RUNS[0]
    (run / "metrics.json").unlink()
    (run / "checkpoint.pt").write_bytes(b"truncated")
    (run / "checkpoints" / "step_00000006.pt").write_bytes(b"truncated")
    logs = []
    rows = run_sweep(str(path), out, workers=1, log=logs.append)
    assert rows[0]["status"] == "ok"
    assert any("continued from checkpoints/step_00000003.pt" in line for line in logs)


def test_interrupted_sweep_says_how_to_resume(tmp_path, monkeypatch, capsys):
    import pyro_decomp.runner as runner
    from pyro_decomp.cli import main

    path = tmp_path / "tiny.yaml"
    path.write_text(RESUMABLE)
    out = tmp_path / "out"
    real = runner.run_experiment
    calls = []

    def interrupted_second_run(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "run_experiment", interrupted_second_run)
    assert main(["sweep", str(path), "--out", str(out), "--workers", "1"]) == 130
    captured = capsys.readouterr()
    assert "run the same sweep command again to resume it" in captured.out
    assert "--resume" not in captured.err  # `sweep` has no such flag
    assert "pyro-decomp: interrupted (the latest checkpoint was kept; run the same command again" in captured.err
    monkeypatch.setattr(runner, "run_experiment", real)
    assert main(["sweep", str(path), "--out", str(out), "--workers", "1"]) == 0
    captured = capsys.readouterr()
    assert "resuming: 1 of 2 runs finished earlier" in captured.out
    assert f"{RUNS[0]}: reused" in captured.out and f"{RUNS[1]}: ok" in captured.out


def test_pool_worker_skips_queued_runs_after_ctrl_c(tmp_path, monkeypatch):
    import pyro_decomp.experiments.sweep as sweep
    import pyro_decomp.runner as runner

    path = tmp_path / "tiny.yaml"
    path.write_text(RESUMABLE)
    config = load_sweep(str(path)).runs[0].config
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(args[1])
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "run_experiment", interrupted)
    monkeypatch.setattr(sweep, "_INTERRUPTED", False)
    # in this process (workers=1) an interrupt leaves no trace: the next sweep runs normally
    with pytest.raises(KeyboardInterrupt):
        sweep._sweep_worker(config, str(tmp_path / "a"), 1)
    assert sweep._INTERRUPTED is False
    # in a pool worker, the runs it had already taken from the queue return at once, untrained
    with pytest.raises(KeyboardInterrupt):
        sweep._sweep_worker(config, str(tmp_path / "a"), 1, True)
    result = sweep._sweep_worker(config, str(tmp_path / "b"), 1, True)
    assert result["status"] == "failed" and result["error"] == "interrupted before it started"
    assert len(calls) == 2 and not (tmp_path / "b").exists()


@pytest.mark.parametrize("drop_metrics", [False, True], ids=["finished", "unfinished"])
def test_corrupt_config_yaml_is_recovered_from_the_checkpoint(sweep_copy, drop_metrics):
    path, out = sweep_copy
    run = out / "runs" / RUNS[1]
    (run / "config.yaml").write_text("model: [unclosed")
    if drop_metrics:
        (run / "metrics.json").unlink()
    logs = []
    rows = run_sweep(str(path), out, workers=1, log=logs.append)
    # the checkpoint's stored config matches the sweep's, so the run is kept, not trained afresh
    assert [r["status"] for r in rows] == ["reused", "ok" if drop_metrics else "reused"]
    assert not any("started afresh" in line for line in logs)
    assert load_sweep(str(path)).runs[1].config["model"]["alpha"] == yaml.safe_load((run / "config.yaml").read_text())[
        "model"
    ]["alpha"]


def test_failed_run_is_one_log_line_with_the_traceback_saved(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(RESUMABLE)
    out = tmp_path / "out"
    logs = []
    # a huge learning rate makes every run diverge
    rows = run_sweep(str(path), out, workers=1, overrides={"train.lr": 1e30}, log=logs.append)
    failed = [line for line in logs if "FAILED" in line]
    assert [r["status"] for r in rows] == ["failed", "failed"] and len(failed) == 2
    assert all("\n" not in line and "sweep_error.txt" in line for line in failed)
    assert "Traceback" in (out / "runs" / RUNS[0] / "sweep_error.txt").read_text()
    rows = run_sweep(str(path), out, workers=1, log=lambda m: None)  # fixed: the stale file goes
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert not (out / "runs" / RUNS[0] / "sweep_error.txt").exists()


def test_rerun_with_other_overrides_says_runs_start_afresh(sweep_copy):
    path, out = sweep_copy
    logs = []
    rows = run_sweep(str(path), out, workers=1, overrides={"train.lr": 2e-3}, log=logs.append)
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert "[sweep] resuming: 0 of 2 runs finished earlier, 0 continue from their checkpoints, 2 hold another config " \
        "and start afresh" in logs  # fmt: skip
    assert f"[sweep] {RUNS[0]}: the run directory held another config; started afresh" in logs


def test_damaged_metrics_without_a_checkpoint_is_trained_afresh(sweep_copy):
    path, out = sweep_copy
    run = out / "runs" / RUNS[1]
    before = _measures(out, RUNS[1])
    (run / "metrics.json").write_text("{")
    (run / "checkpoint.pt").unlink()
    shutil.rmtree(run / "checkpoints")
    logs = []
    rows = run_sweep(str(path), out, workers=1, log=logs.append)
    assert [r["status"] for r in rows] == ["reused", "ok"]
    assert f"[sweep] {RUNS[1]}: metrics.json unreadable; no checkpoint to re-evaluate, trained afresh" in logs
    assert _measures(out, RUNS[1]) == before  # training is seeded (train.seed) and deterministic on the CPU


# ---- aggregation over seeds (mean ± sd and a t-interval per setting) -----------------------------


def test_aggregate_over_seeds_matches_an_independent_computation():
    rng = np.random.default_rng(0)
    rows, values = [], {}
    for setting, n_seeds in (("a", 3), ("b", 5), ("c", 2)):
        v = rng.normal(size=n_seeds)
        values[setting] = v
        rows += [{"setting": setting, "alpha": 1.0, "seed": s, "status": "ok", "m": float(x), "k": 2 * float(x)}
                 for s, x in enumerate(v)]  # fmt: skip
    # left out: a failed run, a missing value and a non-finite one
    rows.append({"setting": "a", "alpha": 1.0, "seed": 9, "status": "failed", "m": 100.0, "k": 100.0})
    rows.append({"setting": "b", "alpha": 1.0, "seed": 9, "status": "ok", "m": None, "k": float("nan")})
    agg = aggregate_over_seeds(rows, ["m", "k"], keep=["alpha"])
    assert [a["setting"] for a in agg] == ["a", "b", "c"]
    assert [(a["runs"], a["ok"]) for a in agg] == [(4, 3), (6, 6), (2, 2)]
    # two-sided 95% Student-t quantiles t_{0.975, n-1} from a printed table, for n = 3, 5, 2
    t975 = {"a": 4.302653, "b": 2.776445, "c": 12.706205}
    for a in agg:
        v = values[a["setting"]]
        n, mean = v.size, v.sum() / v.size
        sd = np.sqrt(((v - mean) ** 2).sum() / (n - 1))
        assert a["alpha"] == 1.0 and a["m_n"] == n and a["k_n"] == n
        np.testing.assert_allclose([a["m_mean"], a["m_sd"]], [mean, sd], rtol=1e-12)
        half = t975[a["setting"]] * sd / np.sqrt(n)
        np.testing.assert_allclose([a["m_ci_low"], a["m_ci_high"]], [mean - half, mean + half], rtol=1e-6)
        np.testing.assert_allclose([a["k_mean"], a["k_sd"]], [2 * mean, 2 * sd], rtol=1e-12)


def test_aggregate_with_one_seed_or_none_left_is_nan():
    rows = [{"setting": "a", "seed": 0, "status": "ok", "m": 0.5},
            {"setting": "b", "seed": 0, "status": "failed", "m": None}]  # fmt: skip
    a, b = aggregate_over_seeds(rows, ["m"])
    assert a["m_n"] == 1 and a["m_mean"] == 0.5
    assert np.isnan([a["m_sd"], a["m_ci_low"], a["m_ci_high"]]).all()
    assert b["m_n"] == 0 and np.isnan([b["m_mean"], b["m_sd"]]).all()
    with pytest.raises(ValueError, match=r"level must be in \(0, 1\)"):
        aggregate_over_seeds(rows, ["m"], level=95)


TWO_SEEDS = (
    TINY_SWEEP.replace("seeds: [0]", "seeds: [0, 1]")
    .replace("vary: {model.beta: [0.5]}", "vary: {model.beta: [0.5, 1.0]}")
    .replace("train.steps: 5, train.checkpoint_every: 5", "train.steps: 2, train.checkpoint_every: 2")
)


def test_two_seed_sweep_writes_mean_sd_interval_and_curves(tmp_path):
    path = tmp_path / "two.yaml"
    path.write_text(TWO_SEEDS)
    out = tmp_path / "out"
    rows = run_sweep(str(path), out, workers=1, log=lambda m: None)
    assert [r["name"] for r in rows] == ["alpha0_beta0.5_seed0", "alpha0_beta0.5_seed1", "alpha0_beta1_seed0",
                                         "alpha0_beta1_seed1", "beta0_alpha2_seed0", "beta0_alpha2_seed1"]  # fmt: skip
    per_run = _read_csv(out / "summary_runs.csv")
    agg = _read_csv(out / "summary.csv")
    assert [a["setting"] for a in agg] == ["alpha0_beta0.5", "alpha0_beta1", "beta0_alpha2"]
    assert [(a["row"], float(a["alpha"]), float(a["beta"]), a["runs"], a["ok"]) for a in agg] == [
        ("0", 0.0, 0.5, "2", "2"), ("0", 0.0, 1.0, "2", "2"), ("1", 2.0, 0.0, "2", "2")]  # fmt: skip
    for a, pair in zip(agg, (per_run[0:2], per_run[2:4], per_run[4:6]), strict=True):
        v = np.array([float(r["kl_prior_to_aggregate"]) for r in pair])
        assert v[0] != v[1]  # the seeds differ, so the sd is positive
        mean, sd = v.mean(), abs(v[0] - v[1]) / np.sqrt(2)  # ddof=1 sd of two values
        half = 12.706205 * sd / np.sqrt(2)  # t_{0.975, 1}
        got = [float(a[f"kl_prior_to_aggregate_{s}"]) for s in ("mean", "sd", "ci_low", "ci_high")]
        np.testing.assert_allclose(got, [mean, sd, mean - half, mean + half], rtol=1e-6, atol=1e-6)  # t to 6 decimals
    md = (out / "summary.md").read_text()
    assert f"| alpha0_beta0.5 | 0 | 0 | 0.5 | 2/2 | {float(agg[0]['kl_prior_to_aggregate_mean']):.4g} ± " in md
    assert "## 95% confidence interval of the mean over seeds" in md and "One seed per setting" not in md
    assert json.loads((out / "sweep.json").read_text())["seeds"] == [0, 1]
    from PIL import Image

    with Image.open(out / "curves.png") as image:
        assert image.format == "PNG" and image.size[0] > 500


def test_thesis_table_sweep_aggregates_ten_seeds_per_beta(tmp_path):
    """thesis-5.3 (Table 5.3: mean ± sd over 10 seeds per β) through the dSprites summary path, on synthetic
    metric values (no training): one row per β, each metric's mean and sd as numpy computes them."""
    from pyro_decomp.experiments.sweep import _curves_figure, _row, _write_tables

    IMAGE_SUMMARY_COLUMNS = get_family("images").summary_columns

    spec = load_sweep("thesis-5.3")
    assert len(spec.runs) == 40 and sorted({r.seed for r in spec.runs}) == list(range(10))
    rng = np.random.default_rng(1)
    scores = {}
    results = []
    for run in spec.runs:
        score = float(rng.uniform())
        scores.setdefault(run.config["model"]["beta"], []).append(score)
        results.append({"status": "ok", "measures": {"factor_vae_score": score, "mig": None}, "train_seconds": 1.0})
    rows = [_row(run, res) for run, res in zip(spec.runs, results, strict=True)]
    agg = _write_tables(rows, tmp_path, IMAGE_SUMMARY_COLUMNS, title=spec.id)
    assert [a["beta"] for a in agg] == [1.0, 3.0, 10.0, 30.0] and all(a["runs"] == 10 for a in agg)
    for a in agg:
        v = np.array(scores[a["beta"]])
        np.testing.assert_allclose([a["factor_vae_score_mean"], a["factor_vae_score_sd"]], [v.mean(), v.std(ddof=1)])
        assert a["mig_n"] == 0 and np.isnan(a["mig_mean"])
    md = (tmp_path / "summary.md").read_text()
    first = agg[0]
    assert f"| {first['factor_vae_score_mean']:.4g} ± {first['factor_vae_score_sd']:.2g} |" in md
    assert len(_read_csv(tmp_path / "summary_runs.csv")) == 40
    _curves_figure(spec, agg, ["factor_vae_score", "mig", "train_seconds"], tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "x, expected",
    [
        ([0.0, 10.0, 100.0, 1000.0], ("symlog", {"linthresh": 10.0})),  # fig4: alpha = 0 among the swept values
        ([1.0, 3.0, 10.0, 30.0, 5.0, 100.0], ("log", {})),  # thesis-grids' blocks
        ([1.0, 2.0, 4.0, 8.0], ("linear", {})),  # fig2: a factor of 8
        ([0.0, 0.3, 0.5, 1.0, 1.2], ("linear", {})),  # positives span a factor of 4
        ([0.0, 0.0], ("linear", {})),
        ([-1.0, 10.0, 100.0], ("linear", {})),
    ],
)
def test_curves_x_axis_spreads_decades_and_keeps_zero(x, expected):
    from pyro_decomp.experiments.sweep import _x_scale

    assert _x_scale(np.array(x)) == expected
