"""Exclusive KL(q(z) || p(z)) by MWS/MSS and the App. C bias helper (issue 4)."""

from __future__ import annotations

import math

import numpy as np
import pyro.distributions as dist
import pytest
import torch
from _regulariser_helpers import divergence_enters_as_pyro_elbo_plus_alpha_n_d, svi_steps
from scipy.stats import norm

from pyro_decomp.divergences import AggregateBatch, ExclusiveKL, TotalCorrelation, estimator_bias

LOC = np.array([[-1.0, -0.8], [-0.3, -0.5], [0.4, 0.6], [1.2, 0.9]])
SCALE = np.array([[0.6, 0.5], [0.8, 0.7], [0.5, 0.9], [0.7, 0.6]])
STD_NORMAL = dist.Normal(torch.zeros(2, dtype=torch.float64), 1.0).to_event(1)


def _quadrature_kl(loc, scale, h=0.01, lim=7.0):
    """KL(q(z) || N(0, I)) for the mixture q(z) = mean_i N(loc_i, diag scale_i²), by a Riemann sum."""
    g = np.arange(-lim, lim + h / 2, h)
    c = norm.pdf(g[None, :, None], loc[:, None, :], scale[:, None, :])
    q = c[:, :, 0].T @ c[:, :, 1] / loc.shape[0]
    p = np.outer(norm.pdf(g), norm.pdf(g))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.nansum(q * np.log(q / p)) * h * h


def test_full_batch_mss_matches_quadrature():
    # B = N = 4: MSS is the exact mixture; 40000 particles, MC standard error < 0.005, prec = 0.02
    torch.manual_seed(0)
    P = 40000
    q = dist.Normal(torch.as_tensor(LOC).expand(P, -1, -1), torch.as_tensor(SCALE).expand(P, -1, -1)).to_event(1)
    z = q.sample()
    batch = AggregateBatch(q, z, log_p_zq=STD_NORMAL.log_prob(z), dataset_size=4)
    assert float(ExclusiveKL("mss")(batch)) == pytest.approx(_quadrature_kl(LOC, SCALE), abs=0.02)
    # MWS at B = N is log q(z) − log N: shifted by exactly −log 4
    assert float(ExclusiveKL("mws")(batch)) - float(ExclusiveKL("mss")(batch)) == pytest.approx(-math.log(4), abs=1e-9)


def _separated_encoders(n=2000, d=4, sd=0.01, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.full((n, d), sd, dtype=torch.float64)


def test_app_c_beta_vae_limit():
    # 004 App. C: with non-overlapping encoders and B << N, E[KL̂_MSS] ≈ E_x KL(q(z|x) || p) − log N,
    # and MWS (weights 1/(NB)) ≈ E_x KL − log N − log B. N = 2000, D = 4, encoder sd 0.01, B = 16, 20 repeats.
    loc, scale = _separated_encoders()
    N, B = loc.shape[0], 16
    kl_x = float((0.5 * (scale**2 + loc**2 - 1) - scale.log()).sum(-1).mean())  # closed form, ≈ 16.3
    prior = dist.Normal(torch.zeros(4, dtype=torch.float64), 1.0).to_event(1).log_prob
    for est, shift in (("mss", math.log(N)), ("mws", math.log(N) + math.log(B))):
        out = estimator_bias(
            ExclusiveKL(est), loc, scale, batch_sizes=[B], prior_log_prob=prior, num_repeats=20, num_reference_repeats=1
        )
        # prec = 0.1: the residual is the overlap term (T2 of Eq. 11b, negligible here) and MC noise of log p
        assert out["mean"][0] == pytest.approx(kl_x - shift, abs=0.1), est


def test_estimator_bias_shrinks_with_batch_size():
    # moderately overlapping encoders, N = 200, D = 2: the MSS bias of TC and of the exclusive KL falls with B
    g = torch.Generator().manual_seed(1)
    loc = torch.randn(200, 2, generator=g, dtype=torch.float64)
    scale = torch.full((200, 2), 0.15, dtype=torch.float64)
    prior = STD_NORMAL.log_prob
    out = estimator_bias(
        ExclusiveKL("mss"),
        loc,
        scale,
        batch_sizes=[4, 32, 200],
        prior_log_prob=prior,
        num_repeats=30,
        num_reference_repeats=10,
        seed=0,
    )
    assert set(out) >= {"batch_sizes", "mean", "std", "bias", "reference", "reference_std", "values"}
    assert len(out["values"][0]) == 30
    b = [abs(v) for v in out["bias"]]
    # the nested estimator underestimates KL at small B (App. C); at B = N the MSS estimate is exact in expectation
    assert out["bias"][0] < -1.0
    assert b[0] > b[1] > b[2] and b[2] < 0.1
    tc = estimator_bias(
        TotalCorrelation("mss"), loc, scale, batch_sizes=[4, 200], num_repeats=30, num_reference_repeats=10
    )
    assert abs(tc["bias"][1]) < abs(tc["bias"][0])


def test_estimator_bias_errors():
    loc, scale = torch.zeros(10, 2), torch.ones(10, 2)
    with pytest.raises(ValueError, match="batch_sizes must be a non-empty list of integers in \\[2, N=10\\]"):
        estimator_bias(TotalCorrelation(), loc, scale, batch_sizes=[20])
    with pytest.raises(ValueError, match="needs prior_log_prob"):
        estimator_bias(ExclusiveKL(), loc, scale, batch_sizes=[4])
    with pytest.raises(ValueError, match="shape \\[N, D\\]"):
        estimator_bias(TotalCorrelation(), loc, scale[:, :1], batch_sizes=[4])


@pytest.mark.parametrize("estimator", ["mws", "mss"])
def test_svi_step_end_to_end(estimator):
    divergence = ExclusiveKL(estimator)
    vae, elbo, losses = svi_steps(divergence, alpha=2.0)
    assert all(math.isfinite(v) for v in losses)
    divergence_enters_as_pyro_elbo_plus_alpha_n_d(vae, elbo, divergence)


def test_run_appc_bias_smoke(tmp_path):
    import json

    from pyro_decomp.experiments.appc_bias import run_appc_bias

    # a reduced smoke size: n = 300, B in {4, 300}, 5 repeats
    out = run_appc_bias(tmp_path, num_data=300, batch_sizes=[4, 300], num_repeats=5, num_reference_repeats=2)
    assert (tmp_path / "figures" / "appc_bias.png").is_file()
    saved = json.loads((tmp_path / "appc_bias.json").read_text())
    assert set(saved["results"]) == {"exclusive_kl/mss", "exclusive_kl/mws", "tc/mss", "tc/mws"}
    kl = out["results"]["exclusive_kl/mss"]
    # App. C: at B << n the MSS estimate falls below the whole-dataset value; at B = n it matches it
    assert kl["bias"][0] < -0.3 and abs(kl["bias"][1]) < 0.1


def test_thesis_grid_presets():
    from pyro_decomp.components import Spec
    from pyro_decomp.divergences import DIPVAE, BetaTCVAE, FactorVAE
    from pyro_decomp.divergences.factory import divergence_from_dict
    from pyro_decomp.experiments.sweep import load_sweep

    spec = load_sweep("thesis-grids")
    by_family = {}
    for r in spec.runs:
        if r.seed == 0:
            by_family.setdefault(spec.rows[r.row], []).append(r.config)
    # thesis Table 5.4
    assert [c["model"]["beta"] for c in by_family["beta-VAE"]] == [1, 3, 10, 30]
    assert [c["model"]["alpha"] for c in by_family["FactorVAE"]] == [5, 10, 25, 50, 100]
    assert [c["divergence"]["tc_weight"] for c in by_family["beta-TCVAE"]] == [1, 3, 6, 10]
    dip = [c["divergence"] for c in by_family["DIP-VAE"]]
    assert all(d["lambda_od"] == d["lambda_d"] for d in dip) and [d["lambda_d"] for d in dip] == [1, 3, 10, 30]
    assert all(r.config["train"]["batch_size"] == 64 for r in spec.runs)
    built = {type(Spec("divergence", r.config["divergence"]).build(latent_dim=10)) for r in spec.runs}
    assert built == {type(None), FactorVAE, BetaTCVAE, DIPVAE}
    with pytest.raises(ValueError, match="divergence type must be one of"):
        divergence_from_dict({"type": "tcvae"})
    with pytest.raises(ValueError, match="invalid arguments for divergence 'dip_vae'"):
        divergence_from_dict({"type": "dip_vae", "lam": 3})
