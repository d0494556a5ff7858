"""ArviZ InferenceData of the encodings and NUTS ground truth, on a linear-Gaussian VAE with an analytic posterior.

Model: z ~ N(0, I_2), x | z ~ N(W z + b, σ² I_3) with W = Q diag(1.5, 0.8), Q orthonormal columns, σ = 0.5.
Then p(z | x) = N(Σ Wᵀ(x − b)/σ², Σ) with Σ = (I + WᵀW/σ²)⁻¹ = diag(1/(1 + 1.5²/σ²), 1/(1 + 0.8²/σ²))
= diag(0.1, 0.2809) - diagonal, so a diagonal-Gaussian encoder can be exact.
"""

from __future__ import annotations

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from _linear_gaussian import POST_COV, SIGMA, B, W, data, linear_vae, posterior_mean

from pyro_decomp.analysis import (
    load_inference_data,
    nuts_diagnostics,
    sample_posterior_nuts,
    save_inference_data,
    to_inference_data,
)
from pyro_decomp.models import AnisotropicGaussianPrior


@pytest.fixture(scope="module")
def nuts_run():
    # 3 datapoints x 2 latents, 2 chains x 250 draws: bulk ESS ~ 500 per coordinate, so the Monte Carlo
    # standard error of a mean is <= sd/sqrt(500) ~ 0.024 and of a variance ~ var*sqrt(2/500) <= 0.018
    x = data(3)
    vae = linear_vae()
    idata = sample_posterior_nuts(vae, x, num_samples=250, warmup_steps=150, num_chains=2, random_seed=0)
    return vae, x, idata


def test_inference_data_groups_dims_coords():
    x = data(4)
    idata = to_inference_data(linear_vae(), x, num_draws=30, num_chains=2, obs_index=[10, 11, 12, 13], random_seed=0)
    expected = {
        "posterior",
        "sample_stats",
        "prior",
        "prior_predictive",
        "posterior_predictive",
        "log_likelihood",
        "observed_data",
        "constant_data",
    }
    assert set(idata.groups()) == expected
    z = idata.posterior["z"]
    assert z.dims == ("chain", "draw", "obs", "latent") and z.shape == (2, 30, 4, 2)
    assert idata.posterior.coords["obs"].values.tolist() == [10, 11, 12, 13]
    assert idata.posterior.coords["latent"].values.tolist() == [0, 1]
    assert idata.prior["z"].dims == ("chain", "draw", "obs", "latent")
    assert idata.posterior_predictive["x"].dims == ("chain", "draw", "obs", "feature")
    assert idata.prior_predictive["x"].shape == (2, 30, 4, 3)
    assert idata.log_likelihood["x"].dims == ("chain", "draw", "obs")
    assert idata.sample_stats["log_q"].dims == ("chain", "draw", "obs")
    np.testing.assert_allclose(idata.observed_data["x"].values, x.numpy(), rtol=1e-6)
    assert idata.constant_data["prior_variance"].dims == ("latent",)
    assert idata.posterior.attrs["prior_class"] == "IsotropicGaussianPrior"


def test_inference_data_values_match_closed_forms():
    x = data(4)
    idata = to_inference_data(linear_vae(), x, num_draws=2000, random_seed=0)
    z = torch.as_tensor(idata.posterior["z"].values[0], dtype=torch.float32)  # [draw, obs, latent]
    # log p(x_i | z) = log N(x_i; W z + b, σ² I), computed independently of the model code
    log_lik = dist.Normal(z @ W.T + B, SIGMA).log_prob(x).sum(-1)
    np.testing.assert_allclose(idata.log_likelihood["x"].values[0], log_lik.numpy(), rtol=1e-5, atol=1e-4)
    log_q = dist.Normal(posterior_mean(x), POST_COV.diagonal().sqrt()).log_prob(z).sum(-1)
    np.testing.assert_allclose(idata.sample_stats["log_q"].values[0], log_q.numpy(), rtol=1e-5, atol=1e-4)
    # the exact encoder's draws have the analytic posterior moments: 2000 draws, SE <= 0.53/sqrt(2000) ~ 0.012
    np.testing.assert_allclose(z.mean(0).numpy(), posterior_mean(x).numpy(), atol=0.05)
    np.testing.assert_allclose(z.var(0).numpy(), POST_COV.diagonal().expand(4, 2).numpy(), rtol=0.15)
    # prior draws come from N(0, I): variance 1 within 15% for 2000 x 4 draws
    np.testing.assert_allclose(idata.prior["z"].values.var(axis=(0, 1, 2)), [1.0, 1.0], rtol=0.15)


def test_learned_prior_parameters_are_constant_data():
    prior = AnisotropicGaussianPrior(2, variance=torch.tensor([2.0, 0.5]), learn=True)
    idata = to_inference_data(linear_vae(prior=prior), data(3), num_draws=5)
    np.testing.assert_allclose(idata.constant_data["prior_variance"].values, [2.0, 0.5], rtol=1e-6)
    np.testing.assert_allclose(idata.constant_data["prior_log_variance"].values, np.log([2.0, 0.5]), rtol=1e-6)


def test_model_guide_pair_of_plain_programs():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("code", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ W.T + B, SIGMA).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("code", dist.Normal(posterior_mean(x), POST_COV.diagonal().sqrt()).to_event(1))

    idata = to_inference_data((model, guide), data(3), num_draws=7, latent_site="code")
    assert idata.posterior["code"].dims == ("chain", "draw", "obs", "latent")
    assert idata.posterior["code"].shape == (1, 7, 3, 2)
    assert "constant_data" not in idata.groups()


def test_netcdf_round_trip(tmp_path):
    idata = to_inference_data(linear_vae(), data(3), num_draws=10, num_chains=2, random_seed=0)
    path = save_inference_data(idata, tmp_path / "sub" / "posterior.nc")
    loaded = load_inference_data(path)
    assert set(loaded.groups()) == set(idata.groups())
    for group in idata.groups():
        for name, var in getattr(idata, group).data_vars.items():
            loaded_var = getattr(loaded, group)[name]
            assert loaded_var.dims == var.dims
            np.testing.assert_array_equal(loaded_var.values, var.values)
    assert loaded.posterior.coords["obs"].values.tolist() == [0, 1, 2]


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="no InferenceData file"):
        load_inference_data(tmp_path / "missing.nc")
    bad = tmp_path / "corrupt.nc"
    bad.write_bytes(b"this is not netCDF")
    with pytest.raises(ValueError, match="not a readable ArviZ netCDF"):
        load_inference_data(bad)
    with pytest.raises(ValueError, match="end in .nc"):
        save_inference_data(to_inference_data(linear_vae(), data(2), num_draws=2), tmp_path / "x.txt")


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(x=np.zeros((2, 3))), TypeError, "x must be a torch.Tensor"),
        (dict(num_draws=0), ValueError, "num_draws must be a positive integer"),
        (dict(obs_index=[0, 0]), ValueError, "obs_index must not repeat"),
        (dict(target="not a model"), TypeError, "expected a pyro_decomp VAE"),
    ],
    ids=["x-not-tensor", "num-draws", "obs-index", "target"],
)
def test_to_inference_data_validates(kwargs, error, match):
    args = dict(target=linear_vae(), x=data(2))
    args.update(kwargs)
    with pytest.raises(error, match=match):
        to_inference_data(args.pop("target"), args.pop("x"), **args)


def test_nuts_recovers_analytic_posterior(nuts_run):
    vae, x, idata = nuts_run
    z = idata.posterior["z"]
    assert z.dims == ("chain", "draw", "obs", "latent") and z.shape == (2, 250, 3, 2)
    draws = z.stack(sample=("chain", "draw")).transpose("obs", "sample", "latent").values
    # tolerance 0.1 on the means (~4 Monte Carlo standard errors, see the fixture), 0.06 on covariances
    np.testing.assert_allclose(draws.mean(1), posterior_mean(x).numpy(), atol=0.1)
    for i in range(x.shape[0]):
        np.testing.assert_allclose(np.cov(draws[i].T), POST_COV.numpy(), atol=0.06)


def test_nuts_diagnostics_and_frozen_decoder_restored(nuts_run):
    vae, _, idata = nuts_run
    diag = nuts_diagnostics(idata)
    assert {"r_hat", "ess_bulk"} <= set(diag["summary"].columns)
    assert diag["max_r_hat"] < 1.05
    assert diag["min_ess_bulk"] > 150
    assert diag["divergences"] == 0
    assert idata.sample_stats["diverging"].dims == ("chain", "draw")
    assert idata.sample_stats["lp"].shape == (2, 250)
    # parameters were frozen during sampling and are trainable again afterwards
    assert all(p.requires_grad for p in vae.parameters())
    assert vae.training and vae.decoder.training


def test_nuts_validates():
    with pytest.raises(ValueError, match="init must be 'encoder' or 'prior'"):
        sample_posterior_nuts(linear_vae(), data(1), init="median")
    with pytest.raises(ValueError, match="num_chains must be a positive integer"):
        sample_posterior_nuts(linear_vae(), data(1), num_chains=0)


# ---------------------------------------------------------------------------------------------------------
# Several latent sites per datapoint: a conjugate hierarchical model whose joint posterior is Gaussian.
#   u ~ N(0, 1),  z | u ~ N(u·1, σz² I_2),  x | z ~ N(z, σx² I_2)
# Per datapoint the posterior of (u, z) is N(Λ⁻¹ b, Λ⁻¹) with precision
#   Λ = [[1 + 2/σz², -1ᵀ/σz²], [-1/σz², (1/σz² + 1/σx²) I]],  b = (0, x/σx²),
# and marginally x ~ N(0, 11ᵀ + (σz² + σx²) I).
SZ, SX = 0.5, 0.5


def _hier_model(x):
    with pyro.plate("data", x.shape[0]):
        u = pyro.sample("u", dist.Normal(0.0, 1.0))
        z = pyro.sample("z", dist.Normal(u.unsqueeze(-1).expand(u.shape + (2,)), SZ).to_event(1))
        pyro.sample("x", dist.Normal(z, SX).to_event(1), obs=x)


def _hier_posterior(x):
    prec = torch.zeros(3, 3, dtype=torch.float64)
    prec[0, 0] = 1 + 2 / SZ**2
    prec[0, 1:] = prec[1:, 0] = -1 / SZ**2
    prec[1:, 1:] = torch.eye(2) * (1 / SZ**2 + 1 / SX**2)
    cov = torch.linalg.inv(prec)
    b = torch.cat([torch.zeros(x.shape[0], 1), x / SX**2], -1).double()
    return b @ cov.T, cov, prec  # means [n, 3] in the order (u, z1, z2)


def _hier_guide(shift=0.0):
    """Mean-field guide: each coordinate at its exact posterior mean (+ shift) with sd 1/sqrt(Λ_ii)."""

    def guide(x):
        mean, _, prec = _hier_posterior(x)
        mean = mean.float() + shift
        sd = prec.diagonal().rsqrt().float()
        with pyro.plate("data", x.shape[0]):
            pyro.sample("u", dist.Normal(mean[:, 0], sd[0]))
            pyro.sample("z", dist.Normal(mean[:, 1:], sd[1:]).to_event(1))

    return guide


def _hier_data(n):
    gen = torch.Generator().manual_seed(3)
    u = torch.randn(n, 1, generator=gen)
    z = u + SZ * torch.randn(n, 2, generator=gen)
    return z + SX * torch.randn(n, 2, generator=gen)


def test_every_latent_site_in_the_inference_data():
    x = _hier_data(3)
    idata = to_inference_data((_hier_model, _hier_guide()), x, num_draws=500, random_seed=0)
    assert idata.posterior["u"].dims == ("chain", "draw", "obs") and idata.posterior["u"].shape == (1, 500, 3)
    assert idata.posterior["z"].dims == ("chain", "draw", "obs", "latent")
    assert idata.prior["u"].shape == (1, 500, 3) and idata.prior["z"].shape == (1, 500, 3, 2)
    assert idata.posterior.attrs["latent_sites"] == "u,z"
    u = torch.as_tensor(idata.posterior["u"].values[0])
    z = torch.as_tensor(idata.posterior["z"].values[0])
    # log p(u, z) = log N(u; 0, 1) + log N(z; u, σz²), computed here independently of the model code
    log_prior = dist.Normal(0.0, 1.0).log_prob(u) + dist.Normal(u.unsqueeze(-1), SZ).log_prob(z).sum(-1)
    log_lik = dist.Normal(z, SX).log_prob(x.double()).sum(-1)
    np.testing.assert_allclose(idata.sample_stats["log_joint"].values[0], (log_prior + log_lik).numpy(), rtol=1e-5)
    mean, _, prec = _hier_posterior(x)
    log_q = dist.Normal(mean[:, 0], prec[0, 0].rsqrt()).log_prob(u) + dist.Normal(
        mean[:, 1:], prec.diagonal()[1:].rsqrt()
    ).log_prob(z).sum(-1)
    np.testing.assert_allclose(idata.sample_stats["log_q"].values[0], log_q.numpy(), rtol=1e-5, atol=1e-5)
    # prior draws of u are N(0, 1): 1500 draws, the variance within 15%
    np.testing.assert_allclose(idata.prior["u"].values.var(), 1.0, rtol=0.15)


def test_nuts_samples_every_latent_site_of_a_conjugate_hierarchy():
    x = _hier_data(1)
    # 1 datapoint x 3 coordinates, 2 chains x 300 draws: posterior sds are 0.28-0.38, so the Monte Carlo
    # standard error of a mean is below 0.38/sqrt(300) ~ 0.02 even at ESS 300; tolerance 0.1 on means,
    # 0.05 on covariances
    idata = sample_posterior_nuts((_hier_model, _hier_guide()), x, num_samples=300, warmup_steps=100, random_seed=0)
    assert set(idata.posterior.data_vars) == {"u", "z"}
    u = idata.posterior["u"].stack(sample=("chain", "draw")).transpose("obs", "sample").values
    z = idata.posterior["z"].stack(sample=("chain", "draw")).transpose("obs", "sample", "latent").values
    draws = np.concatenate([u[..., None], z], -1)  # [obs, sample, (u, z1, z2)]
    mean, cov, _ = _hier_posterior(x)
    np.testing.assert_allclose(draws.mean(1), mean.numpy(), atol=0.1)
    np.testing.assert_allclose(np.cov(draws[0].T), cov.numpy(), atol=0.05)
    diag = nuts_diagnostics(idata)
    assert set(diag["summary"].index.str.split("[").str[0]) == {"u", "z"}
    assert diag["max_r_hat"] < 1.05 and diag["divergences"] == 0


def test_amortisation_report_over_every_latent_site():
    from pyro_decomp.analysis import amortisation_report

    x = _hier_data(3)
    mean, cov, prec = _hier_posterior(x)
    # log p(x) closed form, and the best mean-field Gaussian's ELBO: q* = N(mean, diag(1/Λ_ii)), whose
    # KL to the posterior is ½ (Σ log Λ_ii − log det Λ) (Gaussian KL with tr(Λ S) = 3)
    log_px = torch.distributions.MultivariateNormal(
        torch.zeros(2), torch.ones(2, 2) + (SZ**2 + SX**2) * torch.eye(2)
    ).log_prob(x)
    kl_mf = 0.5 * (prec.diagonal().log().sum() - torch.logdet(prec)).item()
    # a guide shifted by 0.5 on every coordinate: the local optimisation must walk back to q*
    report = amortisation_report(
        (_hier_model, _hier_guide(shift=0.5)), x, num_samples=2000, local_steps=300, local_lr=0.05
    )
    col = lambda key: np.array([row[key] for row in report["datapoints"]])  # noqa: E731
    # 2000 draws: the ELBO's Monte Carlo error is ~0.01; Adam's jitter around q* adds a few 1e-3
    np.testing.assert_allclose(col("local_elbo"), log_px.numpy() - kl_mf, atol=0.05)
    np.testing.assert_allclose(col("log_px"), log_px.numpy(), atol=0.05)
    # amortised ELBO of the shifted guide: log p(x) − KL(q_shift ‖ p) = log p(x) − KL_mf − ½ δᵀΛδ, δ = 0.5·1
    delta = torch.full((3,), 0.5, dtype=torch.float64)
    expected = log_px.numpy() - kl_mf - 0.5 * (delta @ prec @ delta).item()
    np.testing.assert_allclose(col("amortised_elbo"), expected, atol=0.05)
    assert not report["warnings"]


def test_shipped_hierarchical_scale_prior_is_analysed_end_to_end():
    # pyro_decomp.models.structured: z_log_scale and z per datapoint, with its HierarchicalScaleGuide
    from pyro_decomp.analysis import amortisation_report
    from pyro_decomp.models.networks import PinwheelEncoder
    from pyro_decomp.models.structured import HierarchicalScaleGuide, hierarchical_scale_prior

    pyro.set_rng_seed(0)
    prior, decoder = hierarchical_scale_prior(2), torch.nn.Linear(2, 2)
    guide = HierarchicalScaleGuide(PinwheelEncoder(), 2)

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = prior()
            pyro.sample("x", dist.Normal(decoder(z), 0.1).to_event(1), obs=x)

    x = torch.randn(2, 2)
    idata = to_inference_data((model, guide), x, num_draws=4, random_seed=0)
    assert idata.posterior["z_log_scale"].shape == (1, 4, 2) and idata.posterior["z"].shape == (1, 4, 2, 2)
    nuts = sample_posterior_nuts((model, guide), x, num_samples=10, warmup_steps=10, max_tree_depth=4, random_seed=0)
    assert idata.posterior["z_log_scale"].dims == nuts.posterior["z_log_scale"].dims == ("chain", "draw", "obs")
    report = amortisation_report((model, guide), x, nuts=nuts, num_samples=50, local_steps=2)
    assert len(report["datapoints"]) == 2 and np.isfinite(report["mean"]["log_px"])


def test_a_latent_site_the_guide_does_not_sample_is_a_clear_error():
    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 2), 1.0).to_event(1))

    with pytest.raises(ValueError, match="guide does not sample the model's latent site 'u'"):
        to_inference_data((_hier_model, guide), _hier_data(2), num_draws=2)


def test_enumerated_discrete_sites_are_summed_out():
    # z | c ~ N(μ_c, 0.3²) with c ~ Categorical(w) enumerated; x | z ~ N(z, 0.5²). The analysis sums c out:
    # log p(z) must be the mixture density, computed here with MixtureSameFamily
    locs, w = torch.tensor([[-1.0, 0.0], [1.0, 0.0], [0.0, 1.5]]), torch.tensor([0.3, 0.3, 0.4])

    def model(x):
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Categorical(w), infer={"enumerate": "parallel"})
            z = pyro.sample("z", dist.Normal(locs[c], 0.3).to_event(1))
            pyro.sample("x", dist.Normal(z, 0.5).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(0.8 * x, 0.4).to_event(1))

    x = torch.tensor([[-1.0, 0.2], [0.1, 1.4], [0.9, -0.1]])
    idata = to_inference_data((model, guide), x, num_draws=50, random_seed=0)
    assert set(idata.posterior.data_vars) == {"z"}  # c is summed out, not a posterior variable
    z = torch.as_tensor(idata.posterior["z"].values[0], dtype=torch.float32)
    mixture = dist.MixtureSameFamily(dist.Categorical(w), dist.Normal(locs, 0.3).to_event(1))
    expected = mixture.log_prob(z) + dist.Normal(z, 0.5).log_prob(x).sum(-1)
    np.testing.assert_allclose(idata.sample_stats["log_joint"].values[0], expected.numpy(), rtol=1e-5, atol=1e-5)
    nuts = sample_posterior_nuts((model, guide), x[:1], num_samples=30, warmup_steps=20, random_seed=0)
    assert nuts.posterior["z"].shape == (2, 30, 1, 2)


# --- image data: bounded memory (issue 10) ---------------------------------------------------------------------------
# A Bernoulli "decoder" on 64x64 images, logits = z @ W_IMG: 4096 values per datapoint, like dSprites.
W_IMG = torch.randn(2, 64 * 64, generator=torch.Generator().manual_seed(3)) * 0.3


def _image_pair(seen: list[int]):
    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            logits = (z @ W_IMG).reshape(z.shape[:-1] + (64, 64))
            seen.append(logits.numel())  # observed values this model call evaluates
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(2), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(_image_loc(x), 0.7).to_event(1))

    return model, guide


def _image_loc(x):
    return x.reshape(x.shape[0], -1)[:, :2] - 0.5


def test_image_data_is_analysed_in_bounded_chunks_and_predictive_groups():
    from pyro_decomp.analysis.arviz import CHUNK_VALUES, MAX_PREDICTIVE_VALUES

    n, chains, draws = 8, 2, 100
    x = torch.bernoulli(torch.full((n, 64, 64), 0.3), generator=torch.Generator().manual_seed(0))
    seen: list[int] = []
    idata = to_inference_data(_image_pair(seen), x, num_draws=draws, num_chains=chains, random_seed=0)
    # one model call at a time sees at most CHUNK_VALUES observed values (all 200 draws x 8 images at once
    # would be 6.6M; a 256-draw chunk of all 8 images 8.4M > 4.2M)
    assert max(seen) <= CHUNK_VALUES
    # the pixel-level predictive groups keep k draws per chain with chains * k * n * 4096 <= 2^22: k = 64
    kept = MAX_PREDICTIVE_VALUES // (chains * n * 4096)
    assert kept == 64
    for group in ("posterior_predictive", "prior_predictive"):
        values = getattr(idata, group)["x"].values
        assert values.shape == (chains, kept, n, 64, 64)
        assert values.size <= MAX_PREDICTIVE_VALUES and set(np.unique(values)) <= {0.0, 1.0}
    assert idata.posterior.attrs["predictive_draws"] == kept
    # every draw of the per-datapoint log likelihood (what PSIS-LOO needs) and of log q, and each matches an
    # independent computation at the stored z: the datapoint blocks are joined in the right order
    z = torch.as_tensor(idata.posterior["z"].values).float()  # [chain, draw, obs, 2]
    assert z.shape == (chains, draws, n, 2)
    log_lik = dist.Bernoulli(logits=(z @ W_IMG).reshape(chains, draws, n, 64, 64)).log_prob(x).sum((-1, -2))
    np.testing.assert_allclose(idata.log_likelihood["x"].values, log_lik.numpy(), rtol=1e-5, atol=1e-3)
    log_prior = dist.Normal(0.0, 1.0).log_prob(z).sum(-1)
    np.testing.assert_allclose(
        idata.sample_stats["log_joint"].values, (log_prior + log_lik).numpy(), rtol=1e-5, atol=1e-3
    )
    log_q = dist.Normal(_image_loc(x), 0.7).log_prob(z).sum(-1)
    np.testing.assert_allclose(idata.sample_stats["log_q"].values, log_q.numpy(), rtol=1e-5, atol=1e-4)
    # too many datapoints for even one predictive draw per chain: the groups are left out, nothing else
    small = to_inference_data(_image_pair([]), x, num_draws=3, max_predictive_values=4096, random_seed=0)
    assert "posterior_predictive" not in small.groups() and "prior_predictive" not in small.groups()
    assert small.log_likelihood["x"].shape == (1, 3, n) and small.posterior.attrs["predictive_draws"] == 0
