"""Tutorial: write your own structured prior as a Pyro program, train it, and check its posterior.

pyro-decomp asks two things of a decomposition (Mathieu et al. 2019, Eq. 7):

    L_{α,β}(x) = E_q(z|x)[log p(x|z)] − β·KL(q(z|x) ‖ p(z)) − α·D(q(z), p(z))

β controls how much the encodings overlap; α·D pulls the aggregate posterior q(z) onto the prior p(z).
The *prior* is where you put the structure you want, and in pyro-decomp a prior is nothing more than a
Pyro program that samples the latent site ``"z"`` inside the caller's data plate. This script writes
two such programs from scratch:

1. a **hierarchical prior**: each datapoint draws its own scale, then its code at that scale, so the
   marginal p(z) is a heavy-tailed scale mixture (two latent sites per datapoint: ``log_scale``, ``z``);
2. an **enumerated discrete-mixture prior**: a cluster label ``c`` that Pyro sums out exactly
   (``infer={"enumerate": "parallel"}``), then ``z`` around that cluster's centre.

Each is trained with :class:`pyro_decomp.DecompositionELBO` and a divergence on the pinwheel data, and
its posterior is checked with ArviZ: the amortised posterior as ``InferenceData``, NUTS on the exact
posterior p(z | x) with the decoder frozen, and the amortisation gap.

Run it as a script (``python docs/tutorials/structured_priors.py``, about a minute on a CPU), or call
:func:`main` with fewer steps; the test suite runs ``main(steps=...)`` at a tiny size. Copy the two
``*_prior`` functions and their models as a template for your own prior.
"""

from __future__ import annotations

import os
from typing import Any

import pyro
import pyro.distributions as dist
import torch

import pyro_decomp
from pyro_decomp.analysis import amortisation_report, nuts_diagnostics, sample_posterior_nuts, to_inference_data
from pyro_decomp.data import pinwheel
from pyro_decomp.divergences import MMD, InclusiveKL
from pyro_decomp.models import GaussianLikelihood
from pyro_decomp.models.networks import build_networks

LATENT_DIM = 2


# ----------------------------------------------------------------------------------------------------
# Step 1. The prior is a Pyro program.
#
# Rules a prior program follows (all the library needs):
#   * it takes no arguments and samples inside the caller's `with pyro.plate("data", n):`, so every site
#     has one value per datapoint (shape [n] or [n, D]); it never opens the data plate itself;
#   * the code is the site named "z" with event shape [D] (`.to_event(1)`), and the program returns it;
#   * give the function a `site` attribute naming that site; the ELBO and the divergences read it.
# ----------------------------------------------------------------------------------------------------
def scale_mixture_prior() -> torch.Tensor:
    """log s ~ N(0, 0.5²) per datapoint, then z | s ~ N(0, s² I): a scale mixture of Gaussians."""
    # `log_scale` has shape [n] inside the data plate: one scale per datapoint, shared by its D dimensions
    log_scale = pyro.sample("log_scale", dist.Normal(0.0, 0.5))
    scale = log_scale.exp().unsqueeze(-1).expand(log_scale.shape + (LATENT_DIM,))
    # sampling an unconstrained log-scale (not the scale itself) keeps every latent site on the real
    # line, which the guide's Gaussians, NUTS and the analysis all want
    return pyro.sample("z", dist.Normal(torch.zeros_like(scale), scale).to_event(1))


scale_mixture_prior.site = "z"  # type: ignore[attr-defined]

# the four pinwheel arms' centres; the discrete-mixture prior puts one cluster on each
CENTRES = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
WEIGHTS = torch.full((4,), 0.25)


def cluster_prior() -> torch.Tensor:
    """c ~ Categorical(π), z | c ~ N(μ_c, 0.2² I), with c summed out exactly by enumeration."""
    # infer={"enumerate": "parallel"} tells Pyro (and DecompositionELBO, which builds on TraceEnum_ELBO)
    # to sum over the 4 values of c instead of sampling it: no guide for c, no high-variance gradients.
    # The price: tensors get an extra enumeration dimension on the left, so index with c (CENTRES[c])
    # rather than reshaping, and tell the ELBO how many plates you nest (max_plate_nesting=1 below).
    c = pyro.sample("c", dist.Categorical(WEIGHTS), infer={"enumerate": "parallel"})
    return pyro.sample("z", dist.Normal(CENTRES[c], 0.2).to_event(1))


cluster_prior.site = "z"  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------------------------------
# Step 2. The model wraps the prior: open the data plate, run the prior, decode, observe x.
# ----------------------------------------------------------------------------------------------------
def make_model(prior, decoder: torch.nn.Module):
    likelihood = GaussianLikelihood()  # the pinwheel decoder outputs a location and a scale per pixel

    def model(x: torch.Tensor) -> torch.Tensor:
        pyro.module("decoder", decoder)  # registers the decoder's weights with SVI
        with pyro.plate("data", x.shape[0]):
            z = prior()
            return likelihood(decoder(z), obs=x)

    # `model.prior` lets DecompositionELBO draw from p(z) (and evaluate it) for the divergence D
    # without running the decoder; always set it for a hand-written model
    model.prior = prior  # type: ignore[attr-defined]
    return model


# ----------------------------------------------------------------------------------------------------
# Step 3. The guide q(· | x) must sample every latent site the model does not enumerate.
# ----------------------------------------------------------------------------------------------------
class ScaleMixtureGuide(torch.nn.Module):
    """q(z | x) from the encoder, and q(log s | x) from a small head on the encoder's output."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = torch.nn.Linear(2 * LATENT_DIM, 2)  # -> (mean, pre-softplus sd) of log s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pyro.module("scale_guide", self)  # registers the encoder's and the head's weights with SVI
        loc, scale = self.encoder(x)
        h = self.head(torch.cat([loc, scale.log()], -1))
        with pyro.plate("data", x.shape[0]):  # the same plate name as the model's
            pyro.sample("log_scale", dist.Normal(h[..., 0], torch.nn.functional.softplus(h[..., 1]) + 1e-3))
            return pyro.sample("z", dist.Normal(loc, scale).to_event(1))


class CodeGuide(torch.nn.Module):
    """q(z | x) only: the cluster label is enumerated in the model, so the guide never sees it."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pyro.module("code_guide", self)
        loc, scale = self.encoder(x)
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("z", dist.Normal(loc, scale).to_event(1))


# ----------------------------------------------------------------------------------------------------
# Step 4. Train with DecompositionELBO: β·KL per datapoint and α·D(q(z), p(z)) on the batch.
# ----------------------------------------------------------------------------------------------------
def train(model, guide, x: torch.Tensor, elbo: pyro_decomp.DecompositionELBO, steps: int) -> list[float]:
    """Full-batch SVI; returns the loss per step (a sum over the data plate, Pyro's convention)."""
    svi = pyro.infer.SVI(model, guide, pyro_decomp.optim.Adam({"lr": 3e-3}), loss=elbo)
    return [svi.step(x) for _ in range(steps)]


def hierarchical_example(x: torch.Tensor, steps: int) -> dict[str, Any]:
    encoder, decoder = build_networks("pinwheel", latent_dim=LATENT_DIM)
    model, guide = make_model(scale_mixture_prior, decoder), ScaleMixtureGuide(encoder)
    # MMD compares samples only, so it needs nothing from the prior but draws: a good default for a
    # prior whose marginal density p(z) has no closed form (this one is an integral over s)
    elbo = pyro_decomp.DecompositionELBO(beta=1.0, alpha=10.0, divergence=MMD("imq"))
    losses = train(model, guide, x, elbo, steps)
    return {"model": model, "guide": guide, "losses": losses, "terms": elbo.loss_terms(model, guide, x)}


def mixture_example(x: torch.Tensor, steps: int) -> dict[str, Any]:
    encoder, decoder = build_networks("pinwheel", latent_dim=LATENT_DIM)
    model, guide = make_model(cluster_prior, decoder), CodeGuide(encoder)
    # InclusiveKL needs log p(z); for an enumerated prior the ELBO sums c out to get the mixture density.
    # β < 1 lets the encodings overlap less than the prior asks; α pulls q(z) onto the 4 clusters.
    elbo = pyro_decomp.DecompositionELBO(beta=0.5, alpha=3.0, divergence=InclusiveKL(), max_plate_nesting=1)
    losses = train(model, guide, x, elbo, steps)
    return {"model": model, "guide": guide, "losses": losses, "terms": elbo.loss_terms(model, guide, x)}


# ----------------------------------------------------------------------------------------------------
# Step 5. Analyse the posterior with ArviZ.
# ----------------------------------------------------------------------------------------------------
def analyse(model, guide, x: torch.Tensor, *, nuts_points: int, nuts_samples: int, seed: int = 0) -> dict[str, Any]:
    """The amortised posterior, NUTS on the exact posterior of a few points, and the amortisation gap."""
    import arviz as az

    pair = (model, guide)  # any (model, guide) pair of Pyro programs works, not only pyro_decomp.VAE
    # (a) q(z | x) as InferenceData: every latent site on (chain, draw, obs, ...), prior draws,
    #     posterior predictive and log-likelihood; enumerated sites are summed out of the densities
    idata = to_inference_data(pair, x, num_draws=50, random_seed=seed)
    # (b) the exact posterior p(z | x) ∝ p(z) p(x | z) by NUTS with the decoder frozen: the ground truth
    #     for the encoder on a handful of points (NUTS samples all their coordinates jointly)
    x_few = x[:nuts_points]
    nuts = sample_posterior_nuts(
        pair, x_few, num_samples=nuts_samples, warmup_steps=nuts_samples, num_chains=2, random_seed=seed
    )
    # R-hat, bulk ESS, divergences: check these before trusting NUTS. An R-hat well above 1.01 means the
    # chains disagree; with the cluster prior a datapoint between two clusters has a multimodal posterior
    # and each chain may sit in a different mode (at 1500 steps one run gave R-hat 1.8): run more and
    # longer chains, and look at az.summary per datapoint before reading the W2 distance below
    diagnostics = nuts_diagnostics(nuts)
    # (c) how far the encoder is from the best per-datapoint Gaussian (amortisation gap) and from the true
    #     posterior (W2 to the NUTS draws, credible-interval coverage); read report["warnings"] too
    report = amortisation_report(pair, x_few, nuts=nuts, num_samples=500, local_steps=100, random_seed=seed)
    return {
        "idata": idata,
        "nuts": nuts,
        "summary": az.summary(nuts),  # mean, sd, HDI, ESS and R-hat of every latent site
        "diagnostics": diagnostics,
        "report": report,
    }


def main(steps: int | None = None, *, nuts_points: int = 2, nuts_samples: int = 200, seed: int = 0) -> dict[str, Any]:
    """Run both examples end to end and print what to look at. ``steps`` defaults to 1500 (or the
    ``STRUCTURED_PRIORS_STEPS`` environment variable)."""
    steps = int(os.environ.get("STRUCTURED_PRIORS_STEPS", 1500)) if steps is None else int(steps)
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    x = torch.as_tensor(pinwheel(seed=seed)[0], dtype=torch.float32)  # 400 points on 4 arms

    results = {}
    for name, example in (("hierarchical", hierarchical_example), ("mixture", mixture_example)):
        trained = example(x, steps)
        analysis = analyse(trained["model"], trained["guide"], x, nuts_points=nuts_points, nuts_samples=nuts_samples)
        results[name] = {**trained, **analysis}
        terms, report = trained["terms"], analysis["report"]["mean"]
        print(f"== {name} prior, {steps} steps")
        print(f"   loss {trained['losses'][0]:.1f} -> {trained['losses'][-1]:.1f}")
        print(f"   reconstruction {terms['reconstruction']:.1f}, kl {terms['kl']:.1f}, "
              f"divergence {terms['divergence']:.3f}")
        print(f"   NUTS: max R-hat {analysis['diagnostics']['max_r_hat']:.3f}, "
              f"{analysis['diagnostics']['divergences']} divergences")
        print(f"   amortisation gap {report['amortisation_gap']:.3f} nats, "
              f"W2(encoder, NUTS) {report['w2_encoder_nuts']:.3f}, PSIS k-hat {report['psis_khat']}")
        for line in analysis["report"]["warnings"]:
            print(f"   warning: {line}")
    return results


if __name__ == "__main__":
    main()
