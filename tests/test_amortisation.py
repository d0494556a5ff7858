"""Amortisation-gap report, local ELBO, PSIS and plots on a linear-Gaussian VAE with an analytic posterior.

z ~ N(0, I_2), x | z ~ N(W z + b, σ² I_3), W with orthogonal columns, so p(z | x) is a diagonal Gaussian and

    log p(x) = log N(x; b, W Wᵀ + σ² I)        (the closed form every estimate is checked against).

The "exact" encoder outputs the analytic posterior; the "poor" one is shifted by +1 and 0.3x too narrow.
"""

from __future__ import annotations

import json
import math

import matplotlib
import numpy as np
import pytest
import torch
from _linear_gaussian import (
    POST_COV,
    AnalyticEncoder,
    analytic_log_px,
    data,
    posterior_mean,
)
from _linear_gaussian import linear_vae as _linear_vae
from matplotlib.figure import Figure

from pyro_decomp.analysis import amortisation_report, analyse, analyse_run, load_inference_data, save_report
from pyro_decomp.analysis.amortisation import fit_local_gaussians, gaussian_w2
from pyro_decomp.analysis.arviz import sample_posterior_nuts, to_inference_data
from pyro_decomp.analysis.posterior_plots import plot_aggregate_marginals, plot_encoder_vs_nuts, plot_gaps
from pyro_decomp.models import VAE, GaussianMixturePrior

matplotlib.use("Agg")


def linear_vae(poor: bool = False) -> VAE:
    return _linear_vae(1.0, 0.3) if poor else _linear_vae()


def column(report: dict, key: str) -> np.ndarray:
    return np.array([float(row[key]) for row in report["datapoints"]])


@pytest.fixture(scope="module")
def nuts_two():
    # 2 datapoints, 2 chains x 200 draws: enough for Gaussian fits (W2) and interval coverage at ±0.1
    x = data(2)
    return x, sample_posterior_nuts(linear_vae(), x, num_samples=200, warmup_steps=100, num_chains=2, random_seed=0)


def test_exact_encoder_has_no_gap():
    x = data(4)
    report = amortisation_report(linear_vae(), x, num_samples=1000, local_steps=20)
    # q = p(z|x): every importance weight equals p(x), so ELBO = IWAE = log p(x) up to float32 error
    exact = analytic_log_px(x)
    np.testing.assert_allclose(column(report, "amortised_elbo"), exact, atol=1e-3)
    np.testing.assert_allclose(column(report, "log_px_iwae"), exact, atol=1e-3)
    # Adam's normalised steps jitter the local Gaussian around the optimum, so its ELBO is a 1000-draw
    # Monte Carlo estimate for a q slightly off p: allow 0.01 nats (observed ~3e-3)
    np.testing.assert_allclose(column(report, "local_elbo"), exact, atol=0.01)
    np.testing.assert_allclose(column(report, "amortisation_gap"), 0.0, atol=0.01)
    np.testing.assert_allclose(column(report, "approximation_gap"), 0.0, atol=0.01)
    assert (column(report, "psis_khat") < 0.5).all()


@pytest.fixture(scope="module")
def poor_report():
    x = data(4)
    return x, amortisation_report(linear_vae(poor=True), x, num_samples=4000, local_steps=300)


def test_poor_encoder_has_a_clear_amortisation_gap(poor_report):
    x, report = poor_report
    exact = analytic_log_px(x)
    # the diagonal family contains p(z|x), so the local optimum closes the gap: local ELBO = log p(x)
    np.testing.assert_allclose(column(report, "local_elbo"), exact, atol=0.02)
    np.testing.assert_allclose(column(report, "log_px"), exact, atol=0.02)
    np.testing.assert_allclose(column(report, "approximation_gap"), 0.0, atol=0.02)
    # KL(q_poor || p) is several nats for a 1-unit shift with 0.3x the posterior scale
    assert (column(report, "amortisation_gap") > 2.0).all()
    assert (column(report, "psis_khat") > 0.7).all()
    gaps = column(report, "inference_gap")
    np.testing.assert_allclose(
        gaps, column(report, "approximation_gap") + column(report, "amortisation_gap"), atol=1e-5
    )
    json.dumps(report, allow_nan=False)


def test_failed_local_optimisation_is_reported_not_hidden():
    # issue 9: the gap was clamped at >= 0 (the encoder replaced a worse local optimum) and
    # log_px = max(iwae, iwae_local). Exact encoder + a local optimisation that overshoots (lr = 1,
    # 2 steps): the local Gaussian ends far worse than the encoder, and the report must say so.
    x = data(16)
    report = amortisation_report(linear_vae(), x, num_samples=2000, local_steps=2, local_lr=1.0)
    gap, se = column(report, "amortisation_gap"), column(report, "amortisation_gap_se")
    np.testing.assert_allclose(gap, column(report, "local_elbo") - column(report, "amortised_elbo"), atol=1e-5)
    assert (gap < -0.05).all() and (gap < -2 * se).all()  # measured: -0.09 to -0.93 nats, se ~0.02
    assert all(row["local_worse_than_encoder"] for row in report["datapoints"])
    assert len(report["warnings"]) == 1 and "local optimisation ended below the encoder's ELBO" in report["warnings"][0]
    # log_px pools both sample sets (an unbiased estimate of p(x)); with the exact encoder its IWAE is exactly
    # log p(x), so a max over estimators could never fall below the truth - an unbiased estimate of p(x) must,
    # about half the time (Jensen puts its median below)
    exact = analytic_log_px(x)
    np.testing.assert_allclose(column(report, "log_px_iwae"), exact, atol=1e-3)
    err = column(report, "log_px") - exact
    assert np.abs(err).max() < 0.1
    assert (err < -1e-4).sum() >= 3
    np.testing.assert_allclose(np.exp(err).mean(), 1.0, atol=0.02)  # 16 datapoints x 4000 draws
    np.testing.assert_allclose(
        column(report, "inference_gap"), column(report, "approximation_gap") + gap, atol=1e-5
    )
    json.dumps(report, allow_nan=False)


def test_amortisation_gap_equals_closed_form_kl(poor_report):
    # amortisation gap = KL(q_poor || p(z|x)) here, since the local ELBO reaches log p(x)
    x, report = poor_report
    loc_q, scale_q = AnalyticEncoder(1.0, 0.3)(x)
    q = torch.distributions.Normal(loc_q, scale_q)
    p = torch.distributions.Normal(posterior_mean(x), POST_COV.diagonal().sqrt())
    kl = torch.distributions.kl_divergence(q, p).sum(-1).numpy()
    # MC error of the amortised ELBO with 4000 draws: sd(log w)/sqrt(4000) ~ 0.05 nats
    np.testing.assert_allclose(column(report, "amortisation_gap"), kl, atol=0.2)


def test_local_gaussians_converge_to_posterior():
    x = data(3)
    loc, scale = fit_local_gaussians(
        linear_vae(), x, posterior_mean(x) + 1.0, torch.full((3, 2), 0.1), num_steps=200, lr=0.1
    )
    np.testing.assert_allclose(loc.numpy(), posterior_mean(x).numpy(), atol=0.05)
    np.testing.assert_allclose(scale.numpy(), POST_COV.diagonal().sqrt().expand(3, 2).numpy(), rtol=0.1)


def test_gaussian_w2_closed_form():
    # W2(N(0,1), N(1,4)) = sqrt((0-1)^2 + (1-2)^2) = sqrt(2)
    assert gaussian_w2(np.zeros(1), np.eye(1), np.ones(1), 4 * np.eye(1)) == pytest.approx(math.sqrt(2))
    assert gaussian_w2(np.zeros(2), np.eye(2), np.zeros(2), np.eye(2)) == pytest.approx(0.0, abs=1e-7)


def test_nuts_comparisons(nuts_two):
    x, nuts = nuts_two
    exact = amortisation_report(linear_vae(), x, nuts=nuts, num_samples=1000, local_steps=10)
    poor = amortisation_report(linear_vae(poor=True), x, nuts=nuts, num_samples=1000, local_steps=200, local_lr=0.1)
    assert (column(exact, "w2_encoder_nuts") < 0.1).all()
    assert (column(poor, "w2_encoder_nuts") > 1.0).all()  # the shift alone is sqrt(2)
    assert (column(poor, "w2_local_nuts") < 0.1).all()
    for row in exact["datapoints"]:
        assert row["coverage"]["0.5"] == pytest.approx(0.5, abs=0.1)
        assert row["coverage"]["0.9"] == pytest.approx(0.9, abs=0.1)
    assert all(row["coverage"]["0.9"] < 0.3 for row in poor["datapoints"])
    assert exact["nuts"]["divergences"] == 0 and exact["nuts"]["max_r_hat"] < 1.1


def test_report_validates(nuts_two):
    x, nuts = nuts_two
    with pytest.raises(ValueError, match="nuts holds 2 datapoints but x holds 3"):
        amortisation_report(linear_vae(), data(3), nuts=nuts, num_samples=10, local_steps=1)
    with pytest.raises(ValueError, match="credible_levels must lie in"):
        amortisation_report(linear_vae(), x, credible_levels=(1.5,), num_samples=10, local_steps=1)


def test_plots_return_axes(nuts_two):
    x, nuts = nuts_two
    idata = to_inference_data(linear_vae(), x, num_draws=50)
    fig = Figure()
    axes = np.array(fig.subplots(2, 2))
    assert plot_encoder_vs_nuts(idata, nuts, obs=0, axes=axes).shape == (2, 2)
    fig = Figure()
    assert plot_aggregate_marginals(idata, GaussianMixturePrior(), axes=fig.subplots(1, 2)).shape == (2,)
    report = amortisation_report(linear_vae(), x, num_samples=50, local_steps=1)
    ax = Figure().subplots()
    assert plot_gaps(report, ax=ax) is ax
    with pytest.raises(ValueError, match="pass obs="):
        plot_encoder_vs_nuts(idata, nuts)


def test_analyse_writes_outputs(tmp_path):
    vae, x = linear_vae(), data(5)
    kw = dict(nuts_samples=60, nuts_warmup=40, num_draws=20, num_samples=200, local_steps=10)
    paths = analyse_run(tmp_path, nuts_datapoints=1, load=lambda run_dir: (vae, x), **kw)
    assert (tmp_path / "posterior.nc").is_file() and (tmp_path / "posterior_nuts.nc").is_file()
    for name in ("posterior_pair_obs0", "aggregate_posterior", "amortisation_gaps"):
        assert paths[name].is_file() and paths[name].stat().st_size > 0
    report = json.loads((tmp_path / "amortisation.json").read_text())
    assert [row["obs"] for row in report["datapoints"]] == [0]
    assert load_inference_data(tmp_path / "posterior.nc").posterior["z"].shape == (2, 20, 5, 2)
    save_report(report, tmp_path / "copy.json")
    with pytest.raises(ValueError, match="nuts must be a non-negative"):
        analyse(vae, x, tmp_path, nuts=-1)
    with pytest.raises(FileNotFoundError, match="does not exist; train a run first"):
        analyse_run(tmp_path / "missing")


def test_analyse_run_default_loader_on_a_trained_run(tmp_path):
    # issue 9: without load= analyse_run imported a loader from the wrong module and always raised.
    # A tiny trained pinwheel run (80 points, 5 steps, no evaluation), then the default loader.
    from pyro_decomp.config import load_experiment
    from pyro_decomp.runner import load_run, run_experiment

    overrides = {"data.per_arm": 20, "data.test_per_arm": 3, "train.steps": 5, "train.progress": False}
    cfg = load_experiment("fig3-pinwheel", size="smoke", overrides=overrides)
    run = tmp_path / "run"
    run_experiment(cfg, run, evaluate=False)
    kw = dict(num_draws=4, num_samples=50, local_steps=2)
    paths = analyse_run(run, nuts_datapoints=0, out_dir=tmp_path / "analysis", **kw)
    vae, x = load_run(run)  # the same model and test split, rebuilt independently of analyse_run
    report = json.loads(paths["amortisation"].read_text())
    assert len(report["datapoints"]) == min(8, x.shape[0]) == 8  # gap_datapoints=8 of the 12 test points
    idata = load_inference_data(paths["posterior"])
    assert idata.posterior["z"].shape == (2, 4, x.shape[0], 2)
    np.testing.assert_allclose(idata.observed_data["x"].values, x.double().numpy())
    # analyse seeds its draws (random_seed=0), so the independently loaded checkpoint reproduces them exactly
    again = to_inference_data(vae, x, num_draws=4, num_chains=2, random_seed=0)
    np.testing.assert_allclose(idata.posterior["z"].values, again.posterior["z"].values, rtol=1e-6)
