"""Numbers for the metrics suite: sanity cases, closed forms and brute-force references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch
import torch.distributions as dist

from pyro_decomp.data.ground_truth import GroundTruthDataset, SyntheticGroundTruth
from pyro_decomp.metrics import (
    active_units,
    compute_beta_vae,
    compute_clustering,
    compute_dci,
    compute_downstream,
    compute_factor_vae,
    compute_hoyer,
    compute_mig,
    compute_modularity_explicitness,
    compute_sap,
    compute_unsupervised,
    dimensionwise_kl,
    gaussian_total_correlation,
    hoyer,
    iwae_log_likelihood,
    mean_hoyer,
    plot_correlation_heatmap,
    spearman_correlation_table,
)
from pyro_decomp.metrics.mig import _compute_mig


class FactorsAsObservations(GroundTruthDataset):
    """Observations are the factors scaled to [0, 1], so ``lambda x: x`` is the identity representation."""

    def __init__(self, factor_sizes=(4, 5, 6)):
        self._sizes = tuple(factor_sizes)

    @property
    def factor_sizes(self):
        return self._sizes

    @property
    def observation_shape(self):
        return (len(self._sizes),)

    def sample_observations_from_factors(self, factors, random_state):
        return torch.as_tensor(factors / (np.asarray(self._sizes) - 1.0), dtype=torch.float32)


DATA = FactorsAsObservations()
_ANGLE = math.pi / 4
_ROTATION = torch.tensor(
    [[math.cos(_ANGLE), -math.sin(_ANGLE), 0.0], [math.sin(_ANGLE), math.cos(_ANGLE), 0.0], [0.0, 0.0, 1.0]]
)


def identity(x):
    return x


def rotated(x):  # mixes the first two factors: entangled, equally informative
    return x @ _ROTATION


def constant(x):
    return torch.zeros(len(x), 3)


def duplicated(x):  # every factor is encoded twice
    return x[:, [0, 0, 1, 1, 2, 2]]


REPRESENTATIONS = {"identity": identity, "rotated": rotated, "constant": constant, "duplicated": duplicated}

# Small sizes keep the suite fast; each metric's score and the tolerances are listed per case.
SMALL = {
    "beta_vae": dict(group_size=16, num_train=300, num_eval=200),
    "factor_vae": dict(group_size=16, num_train=300, num_eval=200, num_variance_estimate=1000),
    "mig": dict(num_points=2000),
    "dci": dict(num_train=400, num_test=200),
    "sap": dict(num_train=500, num_test=300, continuous_factors=True),
    "modularity": dict(num_train=1000, num_test=500),
}
METRICS = {
    "beta_vae": (compute_beta_vae, "eval_accuracy"),
    "factor_vae": (compute_factor_vae, "eval_accuracy"),
    "mig": (compute_mig, "mig"),
    "dci": (compute_dci, "disentanglement"),
    "sap": (compute_sap, "sap"),
    "modularity": (compute_modularity_explicitness, "modularity"),
}


def score(metric: str, representation: str, key: str | None = None) -> float:
    fn, default_key = METRICS[metric]
    return fn(DATA, REPRESENTATIONS[representation], random_state=0, **SMALL[metric])[key or default_key]


@pytest.mark.parametrize("metric", list(METRICS), ids=list(METRICS))
def test_identity_scores_near_max(metric):
    assert score(metric, "identity") >= 0.9


@pytest.mark.parametrize("metric", list(METRICS), ids=list(METRICS))
def test_rotated_scores_lower(metric):
    assert score(metric, "rotated") < score(metric, "identity") - 0.1


# Constant codes carry no information. MIG, DCI, SAP and modularity are 0 by construction; FactorVAE
# prunes every (collapsed) dimension and scores 0; the BetaVAE classifier sees all-zero features and
# can only guess one class, so it scores chance, 1/F = 1/3 (+- 0.1 for 200 eval votes).
@pytest.mark.parametrize(
    "metric, expected, tol",
    [
        ("beta_vae", 1 / 3, 0.1),
        ("factor_vae", 0.0, 0.0),
        ("mig", 0.0, 1e-12),
        ("dci", 0.0, 1e-6),
        ("sap", 0.0, 0.0),
        ("modularity", 0.0, 0.0),
    ],
    ids=["beta_vae", "factor_vae", "mig", "dci", "sap", "modularity"],
)
def test_constant_scores_floor(metric, expected, tol):
    assert abs(score(metric, "constant") - expected) <= tol


@pytest.mark.parametrize(
    "metric, key",
    [("mig", "mig"), ("sap", "sap"), ("dci", "completeness")],
    ids=["mig", "sap", "dci_completeness"],
)
def test_duplicated_latents_penalised(metric, key):
    # Two equally informative codes per factor: the gap between them is 0 for MIG and SAP; DCI's
    # completeness spreads each factor over 2 of 6 codes, 1 - log_6(2) = 0.613.
    value = score(metric, "duplicated", key)
    limit = 0.1 if metric != "dci" else 0.7
    assert value < limit


@pytest.mark.parametrize(
    "metric, key",
    [
        ("modularity", "modularity"),
        ("dci", "disentanglement"),
        ("beta_vae", "eval_accuracy"),
        ("factor_vae", "eval_accuracy"),
    ],
    ids=["modularity", "dci_disentanglement", "beta_vae", "factor_vae"],
)
def test_duplicated_latents_not_penalised_where_metric_ignores_it(metric, key):
    # Each code is still about one factor, which is all these scores ask.
    assert score(metric, "duplicated", key) >= 0.9


def test_dci_informativeness_and_explicitness_identity():
    dci = compute_dci(DATA, identity, random_state=1, **SMALL["dci"])
    assert dci["completeness"] >= 0.9 and dci["informativeness_test"] >= 0.95
    mod = compute_modularity_explicitness(DATA, identity, random_state=1, **SMALL["modularity"])
    assert mod["explicitness_test"] >= 0.95
    mod_constant = compute_modularity_explicitness(DATA, constant, random_state=1, **SMALL["modularity"])
    assert mod_constant["explicitness_test"] == pytest.approx(0.5)  # constant scores rank nothing: AUC 1/2


def test_sap_discrete_binary_factors():
    # Binary factors: a threshold on the right dimension classifies perfectly (accuracy 1); the other,
    # independent dimension is at chance (1/2), so the discrete SAP's maximum is 1 - 1/2. Tolerance 0.05
    # for 200 test points.
    data = FactorsAsObservations((2, 2))
    sap = compute_sap(data, identity, random_state=0, num_train=300, num_test=200)["sap"]
    assert sap == pytest.approx(0.5, abs=0.05)
    assert compute_sap(data, constant, random_state=0, num_train=300, num_test=200)["sap"] == 0.0


def test_factor_vae_prunes_collapsed_dims():
    def with_collapsed(x):
        return torch.cat([x, torch.full((len(x), 1), 3.0), 0.01 * x[:, :1]], dim=1)

    out = compute_factor_vae(DATA, with_collapsed, random_state=0, **SMALL["factor_vae"])
    assert out["num_active_dims"] == 3.0  # std 0 and std 0.01 * 0.37 < 0.05 are pruned
    assert out["eval_accuracy"] >= 0.9


def test_metrics_reproducible_with_seed():
    a = compute_mig(DATA, lambda x: x + 0.1 * torch.randn_like(x), random_state=3, num_points=500)
    torch.manual_seed(0)
    b = compute_beta_vae(DATA, identity, random_state=3, **SMALL["beta_vae"])
    c = compute_beta_vae(DATA, identity, random_state=3, **SMALL["beta_vae"])
    assert b == c and 0.0 <= a["mig"] <= 1.0


# ---- MIG against a brute-force reference --------------------------------------------------


def brute_force_mig(codes: np.ndarray, factors: np.ndarray) -> float:
    """MIG on already-discrete codes by explicit counting (codes with <= 20 equally spaced values
    land in distinct histogram bins, so binning changes nothing)."""
    n = codes.shape[0]

    def entropy(a):
        counts = {}
        for value in a:
            counts[value] = counts.get(value, 0) + 1
        return -sum(c / n * math.log(c / n) for c in counts.values())

    def mutual_info(a, b):
        joint, pa, pb = {}, {}, {}
        for x, y in zip(a, b, strict=True):
            joint[(x, y)] = joint.get((x, y), 0) + 1
            pa[x] = pa.get(x, 0) + 1
            pb[y] = pb.get(y, 0) + 1
        return sum(c / n * math.log(c * n / (pa[x] * pb[y])) for (x, y), c in joint.items())

    gaps = []
    for k in range(factors.shape[1]):
        mi = sorted(
            (mutual_info(codes[:, d].tolist(), factors[:, k].tolist()) for d in range(codes.shape[1])), reverse=True
        )
        gaps.append((mi[0] - mi[1]) / entropy(factors[:, k].tolist()))
    return sum(gaps) / len(gaps)


@pytest.mark.parametrize("seed", [0, 1, 2], ids=["seed0", "seed1", "seed2"])
def test_mig_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    factors = rng.integers(0, [3, 4], size=(300, 2))
    noise = rng.integers(0, 5, size=300)
    codes = np.stack([factors[:, 0] + (noise == 0), factors[:, 1] * 2 + (noise < 2), rng.integers(0, 6, 300)], 1)
    expected = brute_force_mig(codes.astype(float), factors)
    assert _compute_mig(codes.astype(float), factors)["mig"] == pytest.approx(expected, abs=1e-10)


# ---- Hoyer sparsity -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "z, expected",
    [
        ([0.0, 0.0, -5.0, 0.0], 1.0),  # one-hot: ||z||_1 = ||z||_2
        ([2.0, 2.0, 2.0, 2.0], 0.0),  # constant: ||z||_1 / ||z||_2 = sqrt(d)
        ([1.0, -2.0, 0.0, 0.0], 2.0 - 3.0 / math.sqrt(5.0)),  # (sqrt(4) - 3/sqrt(5)) / (sqrt(4) - 1)
        ([1.0, 1.0, 0.0], (math.sqrt(3) - math.sqrt(2)) / (math.sqrt(3) - 1)),
    ],
    ids=["one_hot", "constant", "hand_d4", "hand_d3"],
)
def test_hoyer_closed_forms(z, expected):
    assert hoyer(np.array([z]))[0] == pytest.approx(expected, abs=1e-12)


def test_mean_hoyer_normalisation():
    rng = np.random.default_rng(0)
    codes = rng.normal(size=(200, 5)) * (rng.random((200, 5)) < 0.3)
    scaled = codes * np.array([1.0, 10.0, 0.1, 3.0, 1.0])
    # Normalising by the per-dimension std makes the score blind to per-dimension scales.
    assert mean_hoyer(scaled) == pytest.approx(mean_hoyer(codes), abs=1e-12)
    assert mean_hoyer(scaled, normalise=False) != pytest.approx(mean_hoyer(codes, normalise=False), abs=1e-3)
    # Hand case: [[1, 0], [0, 2]] -> stds (0.5, 1) -> [[2, 0], [0, 2]], both one-hot.
    assert mean_hoyer(np.array([[1.0, 0.0], [0.0, 2.0]])) == pytest.approx(1.0)
    # The mean over rows of the unnormalised per-row values.
    assert mean_hoyer(codes[codes.any(1)], normalise=False) == pytest.approx(np.mean(hoyer(codes[codes.any(1)])))


def test_compute_hoyer_one_hot_representation():
    def one_hot(x):  # the factor-0 class as a one-hot vector
        return torch.nn.functional.one_hot((x[:, 0] * 3).round().long(), 4).float()

    assert compute_hoyer(DATA, one_hot, random_state=0, num_points=400)["hoyer"] == pytest.approx(1.0)


# ---- unsupervised -------------------------------------------------------------------------


def test_active_units_threshold():
    rng = np.random.default_rng(0)
    means = rng.normal(size=(5000, 3)) * np.array([1.0, 0.05, 0.5])  # variances 1, 0.0025, 0.25
    assert active_units(means) == {"active_units": 2.0, "active_fraction": 2 / 3}


def test_gaussian_total_correlation():
    rng = np.random.default_rng(0)
    rho = 0.6
    codes = rng.multivariate_normal([0, 0], [[1, rho], [rho, 1]], size=20000)
    # Empirical covariance in closed form: TC = -1/2 log(1 - r^2) for two dimensions.
    r = np.corrcoef(codes, rowvar=False)[0, 1]
    assert gaussian_total_correlation(codes) == pytest.approx(-0.5 * math.log(1 - r**2), abs=1e-10)
    # Population value, sampling error of r at n = 20000 is ~0.005 -> TC within 0.01.
    assert gaussian_total_correlation(codes) == pytest.approx(-0.5 * math.log(1 - rho**2), abs=0.01)
    assert gaussian_total_correlation(rng.normal(size=(20000, 3))) == pytest.approx(0.0, abs=1e-3)


def test_dimensionwise_kl_matches_torch():
    rng = np.random.default_rng(0)
    mean, std = rng.normal(size=(50, 3)), rng.uniform(0.2, 2.0, size=(50, 3))
    expected = (
        dist.kl_divergence(dist.Normal(torch.tensor(mean), torch.tensor(std)), dist.Normal(0.0, 2.0)).mean(0).numpy()
    )
    np.testing.assert_allclose(dimensionwise_kl(mean, std, prior_std=2.0), expected, rtol=1e-12)
    assert dimensionwise_kl(np.ones((2, 1)), np.ones((2, 1)))[0] == pytest.approx(0.5)  # mu^2 / 2


def _conjugate_model():
    prior, noise = dist.Normal(0.0, 1.0), 1.0

    def log_joint(x, z):
        return prior.log_prob(z) + dist.Normal(z, noise).log_prob(x)

    return log_joint


def test_iwae_exact_with_true_posterior():
    # z ~ N(0, 1), x | z ~ N(z, 1): p(z | x) = N(x/2, 1/2), p(x) = N(0, 2); every weight equals p(x).
    x = torch.tensor([-1.0, 0.0, 2.5], dtype=torch.float64)

    def posterior_sampler(x, s):
        q = dist.Normal(x / 2, math.sqrt(0.5))
        z = q.sample((s,))
        return z, q.log_prob(z)

    out = iwae_log_likelihood(_conjugate_model(), posterior_sampler, x, 7, chunk_size=3)
    torch.testing.assert_close(out, dist.Normal(0.0, math.sqrt(2.0)).log_prob(x))


def test_iwae_prior_proposal_converges():
    torch.manual_seed(0)
    x = torch.tensor([0.5, 1.5], dtype=torch.float64)

    def prior_sampler(x, s):
        z = torch.randn(s, x.shape[0], dtype=torch.float64)
        return z, dist.Normal(0.0, 1.0).log_prob(z)

    truth = dist.Normal(0.0, math.sqrt(2.0)).log_prob(x)
    # num_samples = 20000 prior samples: relative sd of the mean weight ~ 1e-2 -> tolerance 0.03.
    estimate = iwae_log_likelihood(_conjugate_model(), prior_sampler, x, 20000, chunk_size=5000)
    torch.testing.assert_close(estimate, truth, atol=0.03, rtol=0)


def test_iwae_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"must both return shape \[S, B\]"):
        iwae_log_likelihood(
            lambda x, z: z, lambda x, s: (torch.zeros(s, 2, 3), torch.zeros(s, 2)), torch.zeros(2, 3), 4
        )


def test_compute_unsupervised_keys_and_values():
    out = compute_unsupervised(DATA, duplicated, random_state=0, num_points=1000)
    assert out["active_units"] == 6.0
    assert out["gaussian_total_correlation"] == float("inf")  # exact duplicates: singular covariance
    independent = compute_unsupervised(DATA, identity, random_state=0, num_points=3000)
    assert independent["gaussian_total_correlation"] < 0.01  # independent factors


# ---- downstream, clustering, correlation --------------------------------------------------


def test_downstream_identity_and_constant():
    sizes = dict(train_sizes=(10, 50, 200), num_test=200, efficiency_sizes=(50, 200))
    good = compute_downstream(DATA, identity, random_state=0, **sizes)
    assert good["accuracy_200"] >= 0.95
    assert good["sample_efficiency"] == pytest.approx(good["accuracy_50"] / good["accuracy_200"])
    bad = compute_downstream(DATA, constant, random_state=0, **sizes)
    # Constant codes: the trees predict the majority training class; chance is mean(1/4, 1/5, 1/6) = 0.206.
    assert bad["accuracy_200"] < 0.35


def test_downstream_rejects_unknown_efficiency_size():
    with pytest.raises(ValueError, match="efficiency_sizes"):
        compute_downstream(DATA, identity, random_state=0, train_sizes=(10, 20), num_test=10)


@pytest.mark.parametrize(
    "predicted, expected",
    [([2, 2, 0, 0, 1, 1], {"nmi": 1.0, "ari": 1.0}), ([0, 0, 0, 0, 0, 0], {"nmi": 0.0, "ari": 0.0})],
    ids=["relabelled", "one_cluster"],
)
def test_clustering_closed_cases(predicted, expected):
    assert compute_clustering(np.array(predicted), np.array([0, 0, 1, 1, 2, 2])) == pytest.approx(expected)


def test_clustering_from_probabilities_and_random():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 4000)
    probs = np.eye(4)[(labels + 1) % 4]
    assert compute_clustering(probs, labels) == pytest.approx({"nmi": 1.0, "ari": 1.0})
    random = compute_clustering(rng.integers(0, 4, 4000), labels)
    assert random["nmi"] < 0.01 and abs(random["ari"]) < 0.01


def test_spearman_table_matches_scipy_and_handles_constant():
    rng = np.random.default_rng(0)
    runs = [
        {"mig": m, "sap": m**3, "noise": n, "flat": 1.0} for m, n in zip(rng.random(10), rng.random(10), strict=True)
    ]
    table = spearman_correlation_table(runs)
    assert table["names"] == ["flat", "mig", "noise", "sap"]
    corr = table["correlation"]
    assert corr[1, 3] == pytest.approx(1.0)  # monotone transform: rank correlation 1
    expected = scipy.stats.spearmanr([r["mig"] for r in runs], [r["noise"] for r in runs]).statistic
    assert corr[1, 2] == pytest.approx(expected)
    assert np.isnan(corr[0, 1]) and corr[0, 0] == 1.0
    ax = plot_correlation_heatmap(table)
    assert len(ax.images) == 1


def test_spearman_table_rejects_missing_metric():
    with pytest.raises(ValueError, match="not in every run"):
        spearman_correlation_table([{"a": 1.0, "b": 2.0}] * 3, metrics=["a", "c"])


# ---- input validation ---------------------------------------------------------------------


def test_metric_rejects_non_callable_representation():
    with pytest.raises(TypeError, match="representation_fn must be callable"):
        compute_mig(DATA, "encoder", random_state=0, num_points=10)


def test_metric_rejects_bad_representation_shape():
    with pytest.raises(ValueError, match=r"representation_fn must return \[batch, num_latents\]"):
        compute_mig(DATA, lambda x: x[:, 0], random_state=0, num_points=10)


def test_metric_rejects_non_dataset():
    with pytest.raises(TypeError, match="ground-truth protocol"):
        compute_mig(object(), identity, random_state=0)


def test_metric_rejects_bad_random_state():
    with pytest.raises(TypeError, match="random_state must be an int seed"):
        compute_mig(DATA, identity, random_state="zero", num_points=10)


def test_metric_rejects_bad_size():
    with pytest.raises(ValueError, match="num_points must be positive"):
        compute_mig(DATA, identity, random_state=0, num_points=0)


def test_metrics_accept_synthetic_observations():
    data = SyntheticGroundTruth((3, 4), observation_dim=6, noise_std=0.01)
    out = compute_dci(data, lambda x: x, random_state=0, num_train=300, num_test=100)
    assert out["informativeness_test"] > 0.9  # the map is injective, so the factors are recoverable


def test_gaussian_wasserstein_correlation_closed_form():
    from pyro_decomp.metrics import gaussian_wasserstein_correlation

    rng = np.random.default_rng(0)
    codes = rng.normal(size=(500, 3)) @ rng.normal(size=(3, 3))
    cov = np.cov(codes, rowvar=False)
    # Reference: 2 tr(Sigma) - 2 tr(sqrtm(Sigma diag(Sigma))) with scipy's general matrix square root.
    import scipy.linalg

    expected = 2 * np.trace(cov) - 2 * np.real(np.trace(scipy.linalg.sqrtm(cov * np.diag(cov)[:, None])))
    assert gaussian_wasserstein_correlation(codes) == pytest.approx(expected, rel=1e-8)
    assert gaussian_wasserstein_correlation(rng.normal(size=(20000, 2))) == pytest.approx(0.0, abs=0.01)
