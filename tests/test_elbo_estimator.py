"""DecompositionELBO as a Pyro estimator (issue 9): unbiased score-function gradients with plate-aware
credit, subsampling, guide-only sites, degenerate programs, marginal prior densities and enumeration.

References are numbers the estimator does not define: exact gradients by enumeration, Pyro's own
Trace_ELBO / TraceMeanField_ELBO / TraceEnum_ELBO at the same seed, and closed-form densities.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO, TraceMeanField_ELBO
from pyro.infer.autoguide import AutoDiagonalNormal, AutoNormal

from pyro_decomp import DecompositionELBO
from pyro_decomp.divergences import ExclusiveKL, InclusiveKL
from pyro_decomp.models.marginal import ProgramMarginal

# ----------------------------------------------------------------------------- a discrete latent
X3 = torch.tensor([0.3, 1.7, -0.8])
PRIOR_P = 0.35


def bernoulli_model(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Bernoulli(PRIOR_P))
        pyro.sample("x", dist.Normal(2.0 * z - 1.0, 1.0), obs=x)


def bernoulli_guide(theta):
    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Bernoulli(logits=theta[0] + theta[1] * x))

    return guide


def _exact_bernoulli_gradient(theta, beta=1.0):
    """∇θ of −Σ_i Σ_z q(z)[log p(x_i|z) − β(log q(z) − log p(z))], by enumerating z ∈ {0, 1}."""
    theta = theta.detach().clone().requires_grad_()
    loss = 0.0
    for value in (0.0, 1.0):
        q = dist.Bernoulli(logits=theta[0] + theta[1] * X3)
        z = torch.full_like(X3, value)
        log_q, log_p = q.log_prob(z), dist.Bernoulli(PRIOR_P).log_prob(z)
        log_lik = dist.Normal(2.0 * z - 1.0, 1.0).log_prob(X3)
        loss = loss + (q.probs if value else 1 - q.probs).mul(-log_lik + beta * (log_q - log_p)).sum()
    return torch.autograd.grad(loss, theta)[0]


def _gradients(elbo, repeats, theta, model=bernoulli_model, x=X3):
    guide = bernoulli_guide(theta)
    grads = []
    for seed in range(repeats):
        pyro.set_rng_seed(seed)
        grads.append(torch.autograd.grad(elbo.differentiable_loss(model, guide, x), theta)[0])
    return torch.stack(grads)


@pytest.mark.parametrize(
    "num_particles, vectorize, repeats, beta",
    [(1, True, 600, 1.0), (1, True, 600, 3.0), (10, True, 150, 3.0), (100, True, 40, 1.0), (10, False, 60, 3.0)],
    ids=["P1-beta1", "P1-beta3", "P10-beta3", "P100-beta1", "P10-sequential-beta3"],
)
def test_score_function_gradient_is_unbiased(num_particles, vectorize, repeats, beta):
    pyro.enable_validation(False)  # speed: the programs are checked by the other tests
    theta = torch.tensor([0.2, -0.5], requires_grad=True)
    exact = _exact_bernoulli_gradient(theta, beta)
    elbo = DecompositionELBO(beta=beta, num_particles=num_particles, vectorize_particles=vectorize, max_plate_nesting=1)
    g = _gradients(elbo, repeats, theta)
    # the mean of `repeats` independent gradients is within 4.5 standard errors of the exact gradient
    se = g.std(0) / math.sqrt(repeats)
    assert torch.all((g.mean(0) - exact).abs() < 4.5 * se + 1e-3), (g.mean(0), exact, se)


@pytest.mark.parametrize("num_particles", [1, 10], ids=["P1", "P10"])
def test_score_function_gradient_equals_trace_elbo_seed_by_seed(num_particles):
    # β = 1, α = 0: Pyro's plate-aware credit (each z_i is credited with the costs in its own plate
    # slice), so the estimator and its variance are Trace_ELBO's
    theta = torch.tensor([0.2, -0.5], requires_grad=True)
    kw = dict(num_particles=num_particles, vectorize_particles=True, max_plate_nesting=1)
    ours = _gradients(DecompositionELBO(**kw), 50, theta)
    ref = _gradients(Trace_ELBO(**kw), 50, theta)
    assert torch.allclose(ours, ref, rtol=1e-5, atol=1e-6)
    assert torch.all(ours.var(0) <= ref.var(0) * (1 + 1e-5))


def _subsampled_model(data):
    def model():
        with pyro.plate("data", data.shape[0], subsample_size=10) as idx:
            z = pyro.sample("z", dist.Bernoulli(PRIOR_P))
            pyro.sample("x", dist.Normal(2.0 * z - 1.0, 1.0), obs=data[idx])

    return model


@pytest.mark.parametrize("num_data", [100, 1000], ids=["N100", "N1000"])
def test_score_function_terms_are_not_scaled_by_subsampling(num_data):
    torch.manual_seed(1)
    data = torch.randn(num_data)
    theta = torch.tensor([0.2], requires_grad=True)

    def guide():
        with pyro.plate("data", num_data, subsample_size=10):
            pyro.sample("z", dist.Bernoulli(logits=theta[0]))

    def grads(elbo):
        out = []
        for seed in range(30):
            pyro.set_rng_seed(seed)
            out.append(torch.autograd.grad(elbo.differentiable_loss(_subsampled_model(data), guide), theta)[0])
        return torch.stack(out)

    ours, ref = grads(DecompositionELBO()), grads(Trace_ELBO())
    # Pyro scales the costs by N/B but not the score: the same gradient, seed by seed
    assert torch.allclose(ours, ref, rtol=1e-5, atol=1e-4)


# ----------------------------------------------------------------------------- guide-only sites
def _conjugate_model(x):
    z = pyro.sample("z", dist.Normal(0.0, 1.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


@pytest.mark.parametrize("autoguide", [AutoNormal, AutoDiagonalNormal], ids=["AutoNormal", "AutoDiagonalNormal"])
def test_autoguides_keep_their_entropy(autoguide):
    x = torch.randn(20) + 1.0
    guide = autoguide(_conjugate_model)
    pyro.set_rng_seed(3)
    ours = DecompositionELBO().loss(_conjugate_model, guide, x)
    pyro.set_rng_seed(3)
    assert ours == pytest.approx(Trace_ELBO().loss(_conjugate_model, guide, x), rel=1e-6)


def test_autonormal_fits_the_exact_posterior():
    x = torch.randn(20) + 1.0
    guide = AutoNormal(_conjugate_model)
    svi = SVI(_conjugate_model, guide, pyro.optim.Adam({"lr": 0.05}), loss=DecompositionELBO(num_particles=8))
    for _ in range(300):
        svi.step(x)
    # exact posterior: N(Σx/(n+1), 1/(n+1)), sd = 1/√21 = 0.218 (it was 0.016 without the entropy);
    # SGD noise with 8 particles: ±0.03
    median, quantiles = guide.median(x)["z"], guide.quantiles([0.1587, 0.8413], x)["z"]
    assert float((quantiles[1] - quantiles[0]) / 2) == pytest.approx(1 / math.sqrt(21), abs=0.03)
    assert float(median) == pytest.approx(float(x.sum() / 21), abs=0.05)


def test_guide_side_factor_counts():
    def guide(x):
        pyro.sample("z", dist.Normal(0.5, 0.7))
        pyro.factor("guide_penalty", torch.tensor(-1.25), has_rsample=True)

    x = torch.randn(5)
    def plain_guide(x):
        pyro.sample("z", dist.Normal(0.5, 0.7))

    losses = {}
    for name, elbo in (("ours", DecompositionELBO()), ("pyro", Trace_ELBO())):
        for g in (guide, plain_guide):
            pyro.set_rng_seed(0)
            losses[name, g] = elbo.loss(_conjugate_model, g, x)
    # the guide's factor enters as a guide log density, −log q: the loss changes by −1.25, as Trace_ELBO's does
    assert losses["ours", guide] - losses["ours", plain_guide] == pytest.approx(-1.25, abs=1e-5)
    assert losses["pyro", guide] - losses["pyro", plain_guide] == pytest.approx(-1.25, abs=1e-5)


@pytest.mark.parametrize("autoguide", [AutoNormal, AutoDiagonalNormal], ids=["AutoNormal", "AutoDiagonalNormal"])
def test_divergence_with_a_delta_guide_site_is_refused(autoguide):
    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)

    guide = autoguide(model)
    elbo = DecompositionELBO(alpha=1.0, divergence=InclusiveKL())  # the loss used to be inf, silently
    with pytest.raises(ValueError, match="samples it from a Delta"):
        elbo.loss(model, guide, torch.randn(4, 2))


# ----------------------------------------------------------------------------- degenerate programs
def _no_observation_model():
    pyro.sample("z", dist.Normal(0.0, 1.0))


def _no_observation_guide():
    pyro.sample("z", dist.Normal(pyro.param("m", torch.tensor(0.3)), 0.6))


def _masked_model(x):
    z = pyro.sample("z", dist.Normal(0.0, 1.0).mask(False))
    pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def _masked_guide(x):
    pyro.sample("z", dist.Normal(pyro.param("m", torch.tensor(0.3)), 0.6).mask(False))


@pytest.mark.parametrize(
    "model, guide, args, reference",
    [
        (_no_observation_model, _no_observation_guide, (), TraceMeanField_ELBO),
        (lambda: None, lambda: None, (), Trace_ELBO),
        (_masked_model, _masked_guide, (torch.tensor(0.4),), TraceMeanField_ELBO),
    ],
    ids=["no-observed-site", "empty", "masked-latent"],
)
def test_degenerate_programs_match_pyro(model, guide, args, reference):
    pyro.set_rng_seed(2)
    ref = reference().loss(model, guide, *args)
    pyro.set_rng_seed(2)
    assert DecompositionELBO().loss(model, guide, *args) == pytest.approx(ref, rel=1e-6, abs=1e-7)
    pyro.set_rng_seed(2)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.1}), loss=DecompositionELBO())
    assert math.isfinite(svi.step(*args))


def test_mean_field_warning_like_trace_mean_field_elbo():
    def model():
        a = pyro.sample("a", dist.Normal(0.0, 1.0))
        pyro.sample("b", dist.Normal(a, 1.0))

    def guide():  # b before a: the analytic KL of b is conditioned on a q-sample drawn after it
        pyro.sample("b", dist.Normal(0.0, 1.0))
        pyro.sample("a", dist.Normal(0.0, 1.0))

    for elbo in (TraceMeanField_ELBO(), DecompositionELBO()):
        with pytest.warns(UserWarning, match="Failed to verify mean field restriction"):
            elbo.loss(model, guide)


# ----------------------------------------------------------------------------- Pyro-suite-style programs
def _nested_plates():
    def model(x):
        with pyro.plate("groups", 3, dim=-2):
            g = pyro.sample("g", dist.Normal(0.0, 1.0))
            with pyro.plate("items", 4, dim=-1):
                pyro.sample("x", dist.Normal(g, 0.5), obs=x)

    def guide(x):
        loc = pyro.param("loc", torch.zeros(3, 1))
        with pyro.plate("groups", 3, dim=-2):
            pyro.sample("g", dist.Normal(loc, 0.8))

    return model, guide, (torch.randn(3, 4),)


def _discrete_guide():
    def model(x):
        with pyro.plate("data", 3):
            z = pyro.sample("z", dist.Bernoulli(0.3))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", 3):
            pyro.sample("z", dist.Bernoulli(logits=pyro.param("theta", torch.tensor(0.1)) + x))

    return model, guide, (X3,)


def _subsampled():
    data = torch.randn(50)

    def model():
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", 50, subsample_size=7) as idx:
            pyro.sample("x", dist.Normal(mu, 1.0), obs=data[idx])

    def guide():
        pyro.sample("mu", dist.Normal(pyro.param("m", torch.tensor(0.0)), 0.5))

    return model, guide, ()


def _mixture_enumerated():
    locs = torch.tensor([-1.0, 2.0])

    def model(x):
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Categorical(torch.tensor([0.3, 0.7])), infer={"enumerate": "parallel"})
            z = pyro.sample("z", dist.Normal(locs[c], 0.5))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(pyro.param("a", torch.tensor(0.5)) * x, 0.7))

    return model, guide, (torch.randn(6),)


def _enumerated_guide():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Bernoulli(0.4))
            pyro.sample("x", dist.Normal(2 * c - 1, 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("c", dist.Bernoulli(logits=pyro.param("t", torch.tensor(0.2)) * x),
                        infer={"enumerate": "parallel"})

    return model, guide, (X3,)


SUITE = {
    "nested-plates": (_nested_plates, TraceMeanField_ELBO, {}),
    "nested-plates-vectorised-particles": (
        _nested_plates, TraceMeanField_ELBO, dict(num_particles=5, vectorize_particles=True, max_plate_nesting=2)
    ),
    "discrete-guide-site": (_discrete_guide, Trace_ELBO, {}),
    "discrete-guide-site-particles": (
        _discrete_guide, Trace_ELBO, dict(num_particles=4, vectorize_particles=True, max_plate_nesting=1)
    ),
    "discrete-guide-site-sequential-particles": (_discrete_guide, Trace_ELBO, dict(num_particles=3)),
    "subsampling": (_subsampled, TraceMeanField_ELBO, {}),
    "enumerated-model-site": (_mixture_enumerated, TraceEnum_ELBO, dict(max_plate_nesting=1)),
    "enumerated-model-site-particles": (
        _mixture_enumerated, TraceEnum_ELBO, dict(max_plate_nesting=1, num_particles=3, vectorize_particles=True)
    ),
    "enumerated-guide-site": (_enumerated_guide, TraceEnum_ELBO, dict(max_plate_nesting=1)),
}


@pytest.mark.parametrize("make, reference, kw", SUITE.values(), ids=SUITE.keys())
def test_valid_programs_give_pyros_loss_and_gradients(make, reference, kw):
    model, guide, args = make()
    results = []
    for elbo in (reference(**kw), DecompositionELBO(**kw)):
        pyro.clear_param_store()
        pyro.set_rng_seed(7)
        with pyro.poutine.trace(param_only=True) as params:
            loss = elbo.differentiable_loss(model, guide, *args)
        values = [site["value"].unconstrained() for site in params.trace.nodes.values()]
        results.append((loss.item(), torch.autograd.grad(loss, values)))
    (ref_loss, ref_grads), (loss, grads) = results
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    for g, r in zip(grads, ref_grads, strict=True):
        assert torch.allclose(g, r, rtol=1e-4, atol=1e-5)


def _model_only_latent():
    def model(x):
        w = pyro.sample("w", dist.Normal(0.0, 1.0))
        z = pyro.sample("z", dist.StudentT(4.0, w, 1.0))  # no closed-form KL: Trace_ELBO's estimator throughout
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        pyro.sample("z", dist.Normal(pyro.param("m", torch.tensor(0.0)), 1.0))

    return model, guide, (torch.tensor(0.5),)


def test_model_only_latent_sites_are_treated_like_trace_elbo():
    model, guide, args = _model_only_latent()
    out = []
    for elbo in (Trace_ELBO(), DecompositionELBO()):
        pyro.set_rng_seed(4)
        with pytest.warns(UserWarning, match=r"Found vars in model but not guide: \{'w'\}"):
            out.append(elbo.loss(model, guide, *args))
    assert out[1] == pytest.approx(out[0], rel=1e-6)


def _event_dim_mismatch():
    def model():
        pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))

    def guide():
        pyro.sample("z", dist.Normal(torch.zeros(2), 1.0))

    return model, guide


def _batch_outside_plate():
    def model():
        with pyro.plate("data", 3):
            pyro.sample("x", dist.Normal(0.0, 1.0), obs=torch.zeros(3))
        pyro.sample("z", dist.Normal(torch.zeros(3), 1.0))

    def guide():
        pyro.sample("z", dist.Normal(torch.zeros(3), 1.0))

    return model, guide


def _sequential_model_enumeration():
    def model():
        pyro.sample("c", dist.Bernoulli(0.5), infer={"enumerate": "sequential"})

    def guide():
        pass

    return model, guide


INVALID = {
    "event-dims-disagree": (_event_dim_mismatch, Trace_ELBO, {}, ValueError, "event_dims disagree"),
    "batch-dims-outside-plates": (
        _batch_outside_plate, Trace_ELBO, dict(max_plate_nesting=1), ValueError, "enclose the batched tensor"
    ),
    "model-side-sequential-enumeration": (
        _sequential_model_enumeration, TraceEnum_ELBO, {}, NotImplementedError, "sequential enumeration"
    ),
}


@pytest.mark.parametrize("make, reference, kw, error, match", INVALID.values(), ids=INVALID.keys())
def test_invalid_programs_are_rejected_like_pyro(make, reference, kw, error, match):
    model, guide = make()
    for elbo in (reference(**kw), DecompositionELBO(**kw)):
        with pytest.raises(error, match=match):
            elbo.loss(model, guide)


# ----------------------------------------------------------------------------- marginal prior densities
def _gamma_normal_prior(df, latent_dim=1):
    """τ ~ Gamma(ν/2, ν/2), z | τ ~ N(0, I/τ): marginally z_d ~ StudentT(ν) (dependent across d)."""

    def prior():
        tau = pyro.sample("tau", dist.Gamma(df / 2, df / 2))
        scale = tau.rsqrt().unsqueeze(-1).expand(tau.shape + (latent_dim,))
        return pyro.sample("z", dist.Normal(0.0, scale).to_event(1))

    prior.site = "z"
    return prior


def test_program_marginal_of_a_gamma_normal_hierarchy_is_student_t():
    df = 3.0
    z = torch.linspace(-6, 6, 13).unsqueeze(-1)
    est = ProgramMarginal(_gamma_normal_prior(df), "z", num_samples=20_000).log_prob(z)
    exact = dist.StudentT(df).log_prob(z.squeeze(-1))
    # 20,000 importance samples from the prior of τ: the log-mean-exp's error is below 0.01 nats at
    # |z| <= 3 and grows in the tails, where few τ draws are small (0.05 nats at |z| = 6, seed 0)
    assert torch.allclose(est[3:-3], exact[3:-3], atol=0.01)
    assert torch.allclose(est, exact, atol=0.05)
    conditional = dist.Normal(0.0, 1.0).log_prob(z.squeeze(-1))  # log p(z | τ = 1), what was used before
    assert (conditional - exact).abs().max() > 1.0


def test_program_marginal_sums_an_enumerated_mixture_exactly():
    locs, w = torch.tensor([[-1.0, 0.5], [1.5, 1.0], [0.0, -2.0]]), torch.tensor([0.2, 0.5, 0.3])

    def prior():
        c = pyro.sample("c", dist.Categorical(w), infer={"enumerate": "parallel"})
        return pyro.sample("z", dist.Normal(locs[c], 0.4).to_event(1))

    z = torch.randn(5, 7, 2)
    mixture = dist.MixtureSameFamily(dist.Categorical(w), dist.Normal(locs, 0.4).to_event(1))
    assert torch.allclose(ProgramMarginal(prior, "z").log_prob(z), mixture.log_prob(z), atol=1e-5)


def _hierarchical_vs_student_t_models(df):
    torch.manual_seed(5)
    enc = torch.randn(2, 1) * 0.5

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("tau", dist.Gamma(df / 2, df / 2))
            pyro.sample("z", dist.Normal(x @ enc, 0.6).to_event(1))

    def guide_t(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x @ enc, 0.6).to_event(1))

    def make_model(prior):
        def model(x):
            with pyro.plate("data", x.shape[0]):
                z = prior()
                pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)

        model.prior = prior
        return model

    def student_t_prior():
        return pyro.sample("z", dist.StudentT(df, torch.zeros(1), 1.0).to_event(1))

    student_t_prior.site = "z"
    return make_model(_gamma_normal_prior(df)), guide, make_model(student_t_prior), guide_t


def test_exclusive_kl_of_a_hierarchical_prior_equals_the_closed_form_one():
    df = 3.0
    model_h, guide_h, model_t, guide_t = _hierarchical_vs_student_t_models(df)
    x = torch.randn(800, 2) * 1.5  # B = 800
    d = {}
    for name, model, guide in (("h", model_h, guide_h), ("t", model_t, guide_t)):
        pyro.set_rng_seed(1)  # the guide runs first: the same z_q in both
        elbo = DecompositionELBO(alpha=1.0, divergence=ExclusiveKL(), marginal_samples=2000)
        d[name] = elbo.loss_terms(model, guide, x)["divergence"]
    # the same estimate with the closed-form Student-t marginal, up to the importance-sampling error
    # (2000 samples per point: 0.012 nats at seed 1); the conditional density log p(z | τ) gave 0.26
    assert d["h"] == pytest.approx(d["t"], abs=0.03)


class _Recorder(InclusiveKL):
    """InclusiveKL that keeps the batch it was given."""

    needs_prior_log_prob = True

    def __call__(self, batch):
        self.batch = batch
        return super().__call__(batch)


def test_inclusive_kl_sees_marginal_densities_at_prior_draws():
    df = 5.0
    model_h, guide_h, _, _ = _hierarchical_vs_student_t_models(df)
    recorder = _Recorder()
    DecompositionELBO(alpha=1.0, divergence=recorder, marginal_samples=4000).loss(model_h, guide_h, torch.randn(200, 2))
    b = recorder.batch
    student_t = dist.StudentT(df).expand([1]).to_event(1)
    # z_p ~ p(z) marginally (a Student-t: compare the second moment, ν/(ν−2) = 5/3, 200 draws: ±0.6)
    assert float(b.z_p.square().mean()) == pytest.approx(df / (df - 2), abs=0.6)
    # log p at z_p and at z_q is the Student-t marginal (4000 importance samples: median error < 0.01 nats, 0.17 in the far tail)
    for z, log_p in ((b.z_p, b.log_p_zp), (b.z_q, b.log_p_zq)):
        err = (log_p - student_t.log_prob(z)).abs()
        assert float(err.median()) < 0.01 and float(err.max()) < 0.25


def test_divergence_of_a_hierarchical_model_without_a_prior_program_is_refused():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            s = pyro.sample("s", dist.LogNormal(0.0, 0.5))
            z = pyro.sample("z", dist.Normal(0.0, s.unsqueeze(-1).expand(-1, 2)).to_event(1))
            pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("s", dist.LogNormal(0.0, 0.5))
            pyro.sample("z", dist.Normal(x, 0.5).to_event(1))

    elbo = DecompositionELBO(alpha=1.0, divergence=InclusiveKL())
    with pytest.raises(ValueError, match=r"samples latent site\(s\) \['s'\] before it.*model.prior"):
        elbo.loss(model, guide, torch.randn(8, 2))


# ----------------------------------------------------------------------------- enumerated discrete priors
def _mixture_prior_vae(enumerated):
    locs, w = torch.tensor([[-1.0, 0.0], [1.0, 0.0], [0.0, 1.5]]), torch.tensor([0.3, 0.3, 0.4])
    torch.manual_seed(2)
    enc = torch.nn.Linear(2, 2)

    def prior():
        if enumerated:
            c = pyro.sample("c", dist.Categorical(w), infer={"enumerate": "parallel"})
            return pyro.sample("z", dist.Normal(locs[c], 0.3).to_event(1))
        mix = dist.MixtureSameFamily(dist.Categorical(w), dist.Normal(locs, 0.3).to_event(1))
        return pyro.sample("z", mix)

    prior.site = "z"

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = prior()
            pyro.sample("x", dist.Normal(z, 0.5).to_event(1), obs=x)

    def guide(x):
        pyro.module("enc", enc)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(enc(x), 0.4).to_event(1))

    model.prior = prior
    return model, guide, enc


@pytest.mark.parametrize("num_particles", [1, 4], ids=["P1", "P4"])
def test_enumerated_prior_at_beta_one_equals_trace_enum_elbo(num_particles):
    model, guide, _ = _mixture_prior_vae(True)
    x = torch.randn(10, 2)
    kw = dict(max_plate_nesting=1, num_particles=num_particles, vectorize_particles=True)
    pyro.set_rng_seed(3)
    ref = TraceEnum_ELBO(**kw).loss(model, guide, x)
    pyro.set_rng_seed(3)
    assert DecompositionELBO(**kw).loss(model, guide, x) == pytest.approx(ref, rel=1e-5)


def test_enumerated_prior_terms_equal_the_closed_form_mixture():
    # the same z (same seed, the guide runs first): summing c out must give log of the mixture density
    x = torch.randn(12, 2)
    terms = []
    for enumerated in (True, False):
        model, guide, _ = _mixture_prior_vae(enumerated)
        pyro.set_rng_seed(4)
        elbo = DecompositionELBO(beta=2.5, alpha=2.0, divergence=ExclusiveKL(), max_plate_nesting=1)
        terms.append(elbo.loss_terms(model, guide, x))
    enum, closed = terms
    for key in ("reconstruction", "kl", "divergence", "loss"):
        assert enum[key] == pytest.approx(closed[key], rel=1e-5, abs=1e-5), key


def test_enumerated_prior_trains_with_a_divergence():
    model, guide, enc = _mixture_prior_vae(True)
    x = torch.randn(32, 2)
    before = enc.weight.detach().clone()
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}),
              loss=DecompositionELBO(beta=2.0, alpha=1.0, divergence=InclusiveKL()))
    losses = [svi.step(x) for _ in range(3)]
    assert all(math.isfinite(v) for v in losses)
    assert not torch.equal(enc.weight.detach(), before)


def test_loss_and_differentiable_loss_change_no_state():
    from pyro_decomp.divergences import CapacityKL

    model, guide, _ = _mixture_prior_vae(False)
    x = torch.randn(8, 2)
    elbo = DecompositionELBO(beta=0.0, alpha=1.0, divergence=CapacityKL(gamma=2.0, capacity=1.0))
    before = elbo.state_dict()
    elbo.loss(model, guide, x)
    elbo.differentiable_loss(model, guide, x)
    elbo.loss_terms(model, guide, x)
    assert elbo.state_dict() == before and elbo.last_terms == {}
    elbo.loss_and_grads(model, guide, x)
    assert elbo.state_dict()["step"] == 1 and elbo.state_dict()["divergence"]["step"] == 1
