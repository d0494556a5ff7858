"""The Table 5.6 evaluation (pyro_decomp.analysis.disentanglement_report): numbers against closed forms,
quadrature, independent computations and metric sanity cases. Sizes are tiny; tolerances are stated."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.integrate
import scipy.stats
import torch
import torch.nn.functional as F

from pyro_decomp.analysis import (
    METRIC_NAMES,
    FlippedPixels,
    InvertedColours,
    OutOfDistributionShape,
    aggregate_posterior_samples,
    dimensionwise_kl_to_prior,
    encode_images,
    evaluate_disentanglement,
    format_metric_table,
    image_metric_suite,
    kl_order,
    latent_traversal,
    mean_representation,
    metric_table,
    perturbation_inputs,
    plot_aggregate_posterior_histograms,
    plot_mu_sigma_kdes,
    plot_robustness_traversals,
    plot_spearman_heatmap,
    plot_traversals,
    robustness_report,
    spearman_between_metrics,
)
from pyro_decomp.data.dsprites import DSprites, render_dsprites
from pyro_decomp.data.ground_truth import GroundTruthDataset
from pyro_decomp.metrics import dimensionwise_kl
from pyro_decomp.models import (
    VAE,
    AnisotropicGaussianPrior,
    BernoulliLikelihood,
    GaussianMixturePrior,
    IsotropicGaussianPrior,
    StudentTPrior,
)
from pyro_decomp.models.networks import build_networks


from test_metrics import FactorsAsObservations  # noqa: E402  (observations are the factors in [0, 1])


TOY = FactorsAsObservations()
TINY = dict(
    group_size=16,
    num_train=200,
    num_eval=200,
    num_variance_estimate=500,
    num_points=1000,
    num_test=150,
    downstream_train_sizes=(20, 200),
    efficiency_sizes=(20, 200),
)


def _random_codes_fn(seed=0):
    """Codes drawn independently of the input (a stateful seeded stream): they carry no information."""
    rng = np.random.default_rng(seed)
    return lambda x: torch.as_tensor(rng.normal(size=(len(x), 3)))


@pytest.fixture(scope="module")
def suites():
    perfect = image_metric_suite(TOY, lambda x: x, random_state=0, **TINY)
    random = image_metric_suite(TOY, _random_codes_fn(), random_state=0, **TINY)
    return perfect, random


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    encoder, decoder = build_networks("shapes", latent_dim=4)
    model = VAE(IsotropicGaussianPrior(4), decoder, BernoulliLikelihood(event_dim=3), encoder)
    return model.eval()


# ------------------------------------------------------------------------------------------------ metric suite
def test_suite_keys(suites):
    perfect, _ = suites
    expected = {
        "beta_vae", "factor_vae", "mig", "dci_disentanglement", "dci_completeness", "dci_informativeness", "sap",
        "downstream_accuracy_20", "downstream_accuracy_200", "sample_efficiency", "details", "sizes",
    }  # fmt: skip
    assert set(perfect) == expected
    assert set(perfect["details"]) == set(METRIC_NAMES)
    assert perfect["sizes"]["efficiency_sizes"] == [20, 200]


def test_suite_perfect_representation_scores_high_random_low(suites):
    perfect, random = suites
    # perfect codes: every score at (or near) its maximum with these sizes
    for key in ("beta_vae", "factor_vae", "mig", "dci_disentanglement", "dci_completeness", "dci_informativeness"):
        assert perfect[key] >= 0.9, key
    assert perfect["downstream_accuracy_200"] >= 0.95
    # random codes: chance-level classifiers; the mean chance accuracy over factors of 4, 5, 6 classes is 0.206
    assert random["dci_informativeness"] < 0.35
    assert random["downstream_accuracy_200"] < 0.35
    assert random["mig"] < 0.05 and random["dci_disentanglement"] < 0.2 and random["sap"] < 0.05
    assert random["factor_vae"] < 0.6 and random["beta_vae"] < 0.6  # chance 1/3; 200 eval votes
    for key in ("beta_vae", "factor_vae", "mig", "dci_disentanglement", "downstream_accuracy_200"):
        assert perfect[key] > random[key] + 0.5, key
    # discrete SAP scores single codes by a heavily regularised linear SVM (C = 0.01), which cannot carve a
    # 4-6 class factor out of one dimension, so even perfect codes score low (0.19 measured); still above random
    assert perfect["sap"] > random["sap"] + 0.1


def test_suite_sap_continuous_perfect_vs_random():
    # SAP by R^2 (continuous_factors): the perfect code explains each factor alone (measured 0.999)
    sizes = dict(metrics=["sap"], num_train=300, num_test=200, sap_continuous_factors=True)
    assert image_metric_suite(TOY, lambda x: x, random_state=0, **sizes)["sap"] >= 0.95
    assert image_metric_suite(TOY, _random_codes_fn(1), random_state=0, **sizes)["sap"] < 0.05


def test_sample_efficiency_is_the_accuracy_ratio(suites):
    for s in suites:
        assert s["sample_efficiency"] == pytest.approx(s["downstream_accuracy_20"] / s["downstream_accuracy_200"])


def test_suite_metric_seed_independent_of_selection(suites):
    alone = image_metric_suite(TOY, lambda x: x, random_state=0, metrics=["mig"], **TINY)
    assert set(alone) == {"mig", "details", "sizes"}
    assert alone["mig"] == suites[0]["mig"]


def test_suite_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown metrics"):
        image_metric_suite(TOY, lambda x: x, random_state=0, metrics=["mig", "foo"])
    with pytest.raises(TypeError, match="metrics must be a sequence"):
        image_metric_suite(TOY, lambda x: x, random_state=0, metrics="mig")
    with pytest.raises(ValueError, match="num_points must be positive"):
        image_metric_suite(TOY, lambda x: x, random_state=0, metrics=["mig"], num_points=0)
    with pytest.raises(TypeError, match="ground-truth protocol"):
        image_metric_suite(object(), lambda x: x, random_state=0)


# ------------------------------------------------------------------------------------------------ Table 5.6
def test_metric_table_best_param_mean_std():
    rows = []
    for model, offset in (("beta_vae", 0.0), ("factor_vae", 0.1)):
        for param, level in ((1, 0.5), (10, 0.7)):
            for seed, noise in enumerate((-0.02, 0.0, 0.02)):
                rows.append({"model": model, "param": param, "seed": seed, "measures": {"mig": level + offset + noise}})
    table = metric_table(rows, ["measures.mig"])
    cell = table["cells"]["factor_vae"]["measures.mig"]
    assert cell["best_param"] == 10 and cell["num_runs"] == 3
    assert cell["mean"] == pytest.approx(0.8)
    assert cell["std"] == pytest.approx(np.std([0.78, 0.8, 0.82], ddof=1))
    assert table["best_model"]["measures.mig"] == "factor_vae"
    text = format_metric_table(table, labels={"measures.mig": "MIG"})
    assert "| model | MIG |" in text and "**0.800 ± 0.020 (10)**" in text and "0.700 ± 0.020 (10)" in text
    with pytest.raises(ValueError, match="lacks metric"):
        metric_table(rows, ["sap"])


def test_metric_table_lower_is_better_and_single_runs():
    """A loss picks the strength (and the model) with the lowest mean; one run per strength gives no sd."""
    rows = [{"model": m, "param": p, "rec": rec, "mig": mig}
            for m, p, rec, mig in (("a", 1, 80.0, 0.1), ("a", 10, 120.0, 0.3), ("b", 1, 90.0, 0.2), ("b", 10, 70.0, 0.4))]  # fmt: skip
    table = metric_table(rows, ["mig", "rec"], lower_is_better=["rec"])
    assert table["cells"]["a"]["rec"]["best_param"] == 1 and table["cells"]["a"]["rec"]["mean"] == 80.0
    assert table["cells"]["a"]["mig"]["best_param"] == 10  # higher is better for the others
    assert table["best_model"] == {"mig": "b", "rec": "b"}
    assert np.isnan(table["cells"]["b"]["rec"]["std"])
    text = format_metric_table(table)
    assert "| a | 0.300 (10) | 80.000 (1) |" in text and "**70.000 (10)**" in text and "±" not in text
    with pytest.raises(ValueError, match="not among metrics"):
        metric_table(rows, ["mig"], lower_is_better=["rec"])


# ------------------------------------------------------------------------------------------------ Spearman
def test_spearman_identical_reversed_and_scipy():
    rng = np.random.default_rng(0)
    a, c = rng.normal(size=12), rng.normal(size=12)
    rows = [{"a": float(a[i]), "b": float(3 * a[i] + 1), "r": float(-a[i]), "c": float(c[i])} for i in range(12)]
    t = spearman_between_metrics(rows, ["a", "b", "r", "c"])
    assert t["correlation"][0, 1] == pytest.approx(1.0)  # identical ranks
    assert t["correlation"][0, 2] == pytest.approx(-1.0)
    assert t["correlation"][0, 3] == pytest.approx(scipy.stats.spearmanr(a, c).statistic)
    assert t["p_value"][0, 3] == pytest.approx(scipy.stats.spearmanr(a, c).pvalue)
    assert t["num_runs"] == 12
    # rectangular block (Fig. 5.16): rows against columns, the same numbers as the square matrix
    block = spearman_between_metrics(rows, ["a", "c"], against=["b", "r"])
    assert block["correlation"].shape == (2, 2) and block["columns"] == ["b", "r"]
    np.testing.assert_allclose(block["correlation"], t["correlation"][np.ix_([0, 3], [1, 2])])
    # nested rows through dotted keys
    nested = [{"measures": {"x": r["a"], "y": r["c"]}} for r in rows]
    t2 = spearman_between_metrics(nested, ["measures.x", "measures.y"])
    assert t2["correlation"][0, 1] == pytest.approx(t["correlation"][0, 3])
    ax = plot_spearman_heatmap(t)
    assert [tick.get_text() for tick in ax.get_yticklabels()] == ["a", "b", "r", "c"]
    ax = plot_spearman_heatmap(block)
    assert [tick.get_text() for tick in ax.get_xticklabels()] == ["b", "r"]
    with pytest.raises(ValueError, match="lacks metric"):
        spearman_between_metrics(rows, ["a", "zzz"])


# ------------------------------------------------------------------------------------------------ KL to own prior
def _encodings(n=50, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), 0.2 + torch.rand(n, d, generator=g, dtype=torch.float64)


def test_kl_isotropic_prior_is_the_analytic_normal_kl():
    loc, scale = _encodings()
    out = dimensionwise_kl_to_prior(loc, scale, IsotropicGaussianPrior(3))
    assert out["method"] == "closed_form" and out["num_samples"] == 0
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(loc, scale), torch.distributions.Normal(0.0, 1.0)
    ).mean(0)
    np.testing.assert_allclose(out["kl"], expected.numpy(), rtol=1e-12)
    np.testing.assert_allclose(out["kl"], dimensionwise_kl(loc.numpy(), scale.numpy()), rtol=1e-12)


def test_kl_anisotropic_prior_uses_its_own_variances():
    loc, scale = _encodings()
    variance = torch.tensor([0.25, 1.0, 4.0])
    out = dimensionwise_kl_to_prior(loc, scale, AnisotropicGaussianPrior(3, variance=variance))
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(loc, scale), torch.distributions.Normal(0.0, variance.double().sqrt())
    ).mean(0)
    np.testing.assert_allclose(out["kl"], expected.numpy(), rtol=1e-6)


def _quadrature_kl(loc: torch.Tensor, scale: torch.Tensor, log_p) -> np.ndarray:
    """Mean over rows of KL(N(mu, sd^2) || p) per column, by the trapezoid rule on mu +- 12 sd (20,001 nodes;
    the integrand is smooth and negligible at the ends, so the rule is accurate far beyond 1e-6)."""
    mu, sd = loc.numpy()[..., None], scale.numpy()[..., None]
    z = mu + sd * np.linspace(-12.0, 12.0, 20_001)  # [n, D, G]
    log_q = scipy.stats.norm.logpdf(z, mu, sd)
    return scipy.integrate.trapezoid(np.exp(log_q) * (log_q - log_p(z)), z, axis=-1).mean(0)


@pytest.mark.parametrize("df", [3.0, 10.0])
def test_kl_student_t_monte_carlo_matches_quadrature(df):
    loc, scale = _encodings(n=20, d=2, seed=1)
    out = dimensionwise_kl_to_prior(loc, scale, StudentTPrior(2, df=df), num_samples=4000, random_state=0)
    assert out["method"] == "monte_carlo" and out["num_samples"] == 4000
    expected = _quadrature_kl(loc, scale, scipy.stats.t(df).logpdf)
    # 4,000 antithetic draws with the control variate: SE measured 3e-4 to 8e-4; within 4 standard errors
    assert np.all(out["standard_error"] < 2e-3)
    np.testing.assert_array_less(np.abs(out["kl"] - expected), 4 * out["standard_error"] + 1e-6)
    # the prior matters: the KL against N(0, 1) is farther off than the estimator's error (by > 10 SE)
    normal_kl = dimensionwise_kl(loc.numpy(), scale.numpy())
    assert np.max(np.abs(normal_kl - expected)) > 10 * np.max(out["standard_error"])


def test_kl_mixture_prior_marginal_matches_quadrature():
    prior = GaussianMixturePrior(2, n_components=4)
    loc, scale = _encodings(n=10, d=2, seed=2)
    out = dimensionwise_kl_to_prior(loc, scale, prior, num_samples=4000, random_state=1)
    d = prior.distribution()
    means = d.component_distribution.base_dist.loc.double().numpy()  # [C, D]
    sds = d.component_distribution.base_dist.scale.double().numpy()
    w = d.mixture_distribution.probs.double().numpy()

    def log_p(z):  # z [n, D, G]; the marginal of dimension i is sum_c w_c N(m_ci, s_ci^2)
        comp = scipy.stats.norm.logpdf(z[..., None], means.T[None, :, None, :], sds.T[None, :, None, :])
        return scipy.special.logsumexp(np.log(w) + comp, axis=-1)

    expected = _quadrature_kl(loc, scale, log_p)
    np.testing.assert_array_less(np.abs(out["kl"] - expected), 4 * out["standard_error"] + 1e-6)


def test_kl_monte_carlo_is_seeded_and_validates():
    loc, scale = _encodings(n=5, d=2)
    a = dimensionwise_kl_to_prior(loc, scale, StudentTPrior(2), num_samples=100, random_state=3)
    b = dimensionwise_kl_to_prior(loc, scale, StudentTPrior(2), num_samples=100, random_state=3)
    np.testing.assert_array_equal(a["kl"], b["kl"])
    with pytest.raises(ValueError, match="even number"):
        dimensionwise_kl_to_prior(loc, scale, StudentTPrior(2), num_samples=101)
    with pytest.raises(ValueError, match="scale must be positive"):
        dimensionwise_kl_to_prior(loc, -scale, IsotropicGaussianPrior(2))
    with pytest.raises(ValueError, match="event_shape"):
        dimensionwise_kl_to_prior(loc, scale, IsotropicGaussianPrior(3))
    with pytest.raises(TypeError, match="prior must be"):
        dimensionwise_kl_to_prior(loc, scale, "normal")


# ------------------------------------------------------------------------------------------------ perturbed data
def test_perturbed_datasets():
    data = DSprites()
    factors = data.sample_factors(16, 0)
    clean = data.sample_observations_from_factors(factors)
    assert torch.equal(FlippedPixels(data, 0.0).sample_observations_from_factors(factors, 1), clean)
    assert torch.equal(FlippedPixels(data, 1.0).sample_observations_from_factors(factors, 1), 1 - clean)
    assert torch.equal(InvertedColours(data).sample_observations_from_factors(factors, 1), 1 - clean)
    ood = OutOfDistributionShape(data)
    assert ood.factor_sizes == (6, 40, 32, 32) and ood.factor_names[0] == "scale"
    values = DSprites.factor_values(factors)
    expected = render_dsprites(np.full(16, 3), values["scale"], values["orientation"], values["pos_x"], values["pos_y"])
    assert torch.equal(ood.sample_observations_from_factors(factors[:, 1:]), expected)
    assert not torch.equal(expected, clean)
    with pytest.raises(ValueError, match="probability"):
        FlippedPixels(data, 1.5)
    with pytest.raises(TypeError, match="dSprites"):
        OutOfDistributionShape(TOY)


def test_perturbation_inputs():
    data = DSprites()
    factors = data.sample_factors(200, 0)
    inputs = perturbation_inputs(data, factors, random_state=0, flip_probabilities=(0.0, 0.05))
    assert list(inputs) == ["clean", "flip_0", "flip_0.05", "triangle", "inverted"]
    clean = inputs["clean"]
    assert torch.equal(inputs["flip_0"], clean) and torch.equal(inputs["inverted"], 1 - clean)
    flipped = (inputs["flip_0.05"] != clean).double().mean().item()
    # 819,200 pixels at p = 0.05: sd 2.4e-4, so within 0.002
    assert abs(flipped - 0.05) < 2e-3


# ------------------------------------------------------------------------------------------------ robustness
def test_robustness_report(vae):
    data = DSprites()
    sizes = dict(num_points=100, batch_size=128)
    report = robustness_report(
        vae, data, random_state=0, num_images=32, flip_probabilities=(0.0, 0.05), metrics=["mig"], metric_sizes=sizes
    )
    assert report["conditions"] == ["clean", "flip_0", "flip_0.05", "triangle", "inverted"]
    per = report["per_condition"]
    clean, zero = per["clean"], per["flip_0"]
    # p = 0 leaves the representation unchanged: no code shift, the same KL, reconstructions and scores
    assert clean["code_shift"] == 0.0 and zero["code_shift"] == 0.0 and zero["reconstruction_change"] == 0.0
    assert zero["kl_to_prior"] == clean["kl_to_prior"]
    assert zero["metrics"]["mig"] == clean["metrics"]["mig"]
    for name in ("flip_0.05", "triangle", "inverted"):
        assert per[name]["code_shift"] > 0 and per[name]["relative_code_shift"] > 0
    # independent recomputation of the clean entries
    rng = np.random.default_rng(0)
    factors = data.sample_factors(32, rng)
    x = data.sample_observations_from_factors(factors)
    with torch.no_grad():
        loc, scale = vae.encode(x)
        nll = F.binary_cross_entropy_with_logits(vae.decoder(loc), x, reduction="none").sum((1, 2, 3)).mean()
    np.testing.assert_allclose(clean["kl_to_prior"], dimensionwise_kl(loc.double().numpy(), scale.double().numpy()), rtol=1e-5)
    assert clean["reconstruction_nll_input"] == pytest.approx(float(nll), rel=1e-5)
    assert clean["reconstruction_nll_clean"] == clean["reconstruction_nll_input"]
    assert clean["mean_encoder_std"] == pytest.approx(float(scale.mean()), rel=1e-5)
    # inverted images: the clean image's likelihood under the inverted input's reconstruction is not the input's
    assert per["inverted"]["reconstruction_nll_clean"] != pytest.approx(per["inverted"]["reconstruction_nll_input"])
    with pytest.raises(ValueError, match="metric_sizes must not hold"):
        robustness_report(vae, data, random_state=0, num_images=4, metric_sizes={"metrics": ["mig"]})


def test_robustness_report_student_t_prior_uses_monte_carlo():
    torch.manual_seed(1)
    encoder, decoder = build_networks("shapes", latent_dim=3)
    model = VAE(StudentTPrior(3, df=5.0), decoder, BernoulliLikelihood(event_dim=3), encoder).eval()
    report = robustness_report(
        model, DSprites(), random_state=0, num_images=8, flip_probabilities=(), triangle=False, inverted=False,
        metrics=(), kl_num_samples=200,
    )  # fmt: skip
    assert report["conditions"] == ["clean"] and "metrics" not in report["per_condition"]["clean"]
    assert report["per_condition"]["clean"]["kl_method"] == "monte_carlo"


# ------------------------------------------------------------------------------------------------ figures
def test_latent_traversal_matches_direct_decoding(vae):
    x = DSprites().sample(1, 0)[1]
    order = np.array([2, 0])
    values, rows = latent_traversal(vae, x, order)
    np.testing.assert_allclose(values, np.linspace(-3, 3, 10), atol=1e-6)
    assert rows.shape == (2, 10, 1, 64, 64)
    with torch.no_grad():
        loc, _ = vae.encode(x)
        z = loc.repeat(10, 1)
        z[:, 2] = torch.linspace(-3, 3, 10)
        expected = torch.sigmoid(vae.decoder(z)).numpy()
    np.testing.assert_allclose(rows[0], expected, atol=1e-6)
    fig = plot_traversals(vae, x[0], order, kl=np.array([0.5, 0.1, 2.0, 0.0]))
    assert len(fig.axes) == 3 * 10
    assert fig.axes[10].get_ylabel().startswith("z2")
    with pytest.raises(ValueError, match="order"):
        latent_traversal(vae, x, [7])


def test_robustness_traversal_figures(vae):
    data = DSprites()
    inputs = perturbation_inputs(data, data.sample_factors(2, 0), random_state=0, flip_probabilities=(0.01,))
    figures = plot_robustness_traversals(vae, inputs, kl_order([0.1, 0.4, 0.3, 0.2]), num_latents=2, steps=3)
    assert list(figures) == list(inputs) and len(figures["triangle"].axes) == 3 * 3
    assert figures["triangle"].axes[3].get_ylabel() == "z1"  # the most informative latent first


def test_aggregate_posterior_samples_moments():
    loc, scale = _encodings(n=40, d=2, seed=4)
    z = aggregate_posterior_samples(loc, scale, num_samples=40_000, random_state=0)
    # law of total variance: Var z = E[σ²] + Var μ; 40,000 draws, tolerance about 5 standard errors
    var = (scale**2).mean(0) + loc.var(0, unbiased=False)
    assert np.all(np.abs(z.mean(0) - loc.mean(0).numpy()) < 5 * np.sqrt(var.numpy() / 40_000))
    np.testing.assert_allclose(z.var(0), var.numpy(), rtol=0.05)


def test_histogram_figure_sorted_by_own_prior_kl(vae):
    loc, scale = _encodings(n=200, d=4, seed=5)
    loc[:, 1] *= 3.0  # the most informative latent
    fig = plot_aggregate_posterior_histograms(loc, scale, StudentTPrior(4, df=3.0), num_samples=2000)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    kl = dimensionwise_kl_to_prior(loc, scale, StudentTPrior(4, df=3.0), random_state=0)["kl"]
    assert [t.split()[0] for t in titles] == [f"z{d}" for d in kl_order(kl)]
    assert titles[0].startswith("z1")


def test_mu_sigma_kde_active_split():
    g = torch.Generator().manual_seed(0)
    loc = torch.zeros(300, 4, dtype=torch.float64)
    loc[:, 0] = torch.randn(300, generator=g)
    loc[:, 2] = 0.5 * torch.randn(300, generator=g)
    loc[:, 3] = 0.05 * torch.randn(300, generator=g)  # variance 0.0025 < 0.01: passive
    scale = torch.ones(300, 4, dtype=torch.float64)
    scale[:, [0, 2]] = 0.1 + 0.05 * torch.rand(300, 2, generator=g, dtype=torch.float64)
    fig, active = plot_mu_sigma_kdes(loc, scale)
    assert active.tolist() == [True, False, True, False]
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["μ, active (2)", "μ, passive (2)", "σ, active (2)", "σ, passive (2)"]


def test_mean_representation_and_encode_images(vae):
    x = DSprites().sample(5, 0)[1]
    rep = mean_representation(vae)(x)
    loc, scale = encode_images(vae, x, batch_size=2)
    # float32 convolutions of batches of 5 and of 2 round differently: 1e-6 absolute
    np.testing.assert_allclose(rep.numpy(), loc.numpy(), atol=1e-6)
    assert scale.shape == (5, 4) and bool((scale > 0).all())
    with pytest.raises(TypeError, match="VAE"):
        mean_representation(object())


def test_evaluate_disentanglement_one_call(vae, tmp_path):
    data = DSprites()
    images = data.sample(32, 0)[1]
    out = evaluate_disentanglement(
        vae, data, images, random_state=0, figures_dir=tmp_path,
        metric_sizes={"metrics": ["mig"], "num_points": 100},
        robustness={"num_images": 8, "flip_probabilities": (), "inverted": False, "metrics": ()},
        histogram_samples=500, traversal_steps=3,
    )  # fmt: skip
    loc, scale = encode_images(vae, images)
    np.testing.assert_allclose(out["dimensionwise_kl"], dimensionwise_kl(loc.numpy(), scale.numpy()), rtol=1e-10)
    assert out["kl_order"] == kl_order(out["dimensionwise_kl"]).tolist() and out["kl_method"] == "closed_form"
    assert out["active_units"] == int((loc.var(0, unbiased=False) > 0.01).sum())
    assert set(out["scores"]) == {"mig", "details", "sizes"}
    assert out["robustness"]["conditions"] == ["clean", "triangle"]
    names = sorted(p.split("/")[-1] for p in out["figures"])
    assert names == sorted(
        ["traversals.png", "aggregate_posterior.png", "mu_sigma_kde.png"]
        + [f"robustness_traversals_{c}.png" for c in ("clean", "triangle")]
    )
    assert all((tmp_path / n).stat().st_size > 1000 for n in names)


def test_kl_learned_anisotropic_prior_needs_no_detach():
    """A learned prior's variances are parameters that require grad (the fig2-anisotropic 'learned' runs);
    the dimension-wise KL uses their current values, in closed form."""
    loc, scale = _encodings()
    variance = torch.tensor([0.25, 1.0, 4.0])
    prior = AnisotropicGaussianPrior(3, variance=variance, learn=True)
    assert any(p.requires_grad for p in prior.parameters())
    out = dimensionwise_kl_to_prior(loc, scale, prior)
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(loc, scale), torch.distributions.Normal(0.0, variance.double().sqrt())
    ).mean(0)
    np.testing.assert_allclose(out["kl"], expected.numpy(), rtol=1e-6)
