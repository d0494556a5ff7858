"""The decomposition objective :math:`\\mathcal L_{\\alpha,\\beta}` as a drop-in :class:`pyro.infer.ELBO`."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.infer.elbo import ELBO
from pyro.infer.util import is_validation_enabled, torch_item
from pyro.poutine.util import site_is_subsample
from pyro.util import check_model_guide_match, check_site_shape
from torch.distributions import kl_divergence

from .divergences.base import AggregateBatch, Divergence
from .models.priors import Prior, gaussian_log_normaliser

__all__ = ["DecompositionELBO"]

_OBJECTIVES = ("beta", "entropy")
# terms whose sum (with weights) is the loss; a NaN anywhere here is a training failure
LOSS_TERMS = ("loss", "reconstruction", "kl", "divergence")


def _weight_value(name: str, weight: float | Callable[[int], float], step: int) -> float:
    value = weight(step) if callable(weight) else weight
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number or a schedule returning one, got {value!r}.") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be finite and >= 0, got {value!r} at step {step}.")
    return value


def _check_weight(name: str, weight: Any) -> Any:
    if callable(weight):
        return weight
    if isinstance(weight, bool):
        raise TypeError(f"{name} must be a number or a schedule, got a bool.")
    _weight_value(name, weight, 0)
    return float(weight)


def _find_prior(model: Callable) -> Callable | None:
    """The prior program a model exposes as ``.prior`` (on itself or, for a bound method, its owner)."""
    for owner in (model, getattr(model, "__self__", None)):
        prior = getattr(owner, "prior", None) if owner is not None else None
        if prior is not None and callable(prior):
            return prior
    return None


def _unwrap_normal(fn) -> tuple[torch.Tensor, torch.Tensor, int] | None:
    """(loc, scale, event_dims) if ``fn`` is a (possibly Independent/expanded) diagonal Normal."""
    event_dims = 0
    while isinstance(fn, torch.distributions.Independent):
        event_dims += fn.reinterpreted_batch_ndims
        fn = fn.base_dist
    if isinstance(fn, pyro.distributions.torch_distribution.ExpandedDistribution):
        base = _unwrap_normal(fn.base_dist)
        if base is None:
            return None
        loc, scale, inner = base
        shape = fn.batch_shape + fn.base_dist.event_shape
        return loc.expand(shape), scale.expand(shape), event_dims + inner
    if type(fn) in (torch.distributions.Normal, pyro.distributions.Normal):
        return fn.loc, fn.scale, event_dims
    return None


def _site_kl(q, p, value: torch.Tensor) -> torch.Tensor:
    """KL(q ‖ p) per batch element: analytic when torch knows the pair, else log q(z) − log p(z) at ``value``."""
    try:
        return kl_divergence(q, p)
    except NotImplementedError:
        return q.log_prob(value) - p.log_prob(value)


def _site_entropy(q, value: torch.Tensor) -> torch.Tensor:
    """H[q] per batch element: analytic when available, else the single-sample estimate −log q(z)."""
    try:
        return q.entropy()
    except NotImplementedError:
        return -q.log_prob(value)


class DecompositionELBO(ELBO):
    """The decomposition objective (paper Eq. 7) as a loss for :class:`pyro.infer.SVI`:

    .. math::

        \\mathcal L_{\\alpha,\\beta}(x) = \\mathbb E_{q(z|x)}[\\log p(x \\mid z)]
            - \\beta\\,\\mathrm{KL}(q(z \\mid x) \\,\\|\\, p(z)) - \\alpha\\, D(q(z), p(z))

    The loss is :math:`-\\sum_{x \\in \\text{batch}} \\mathcal L_{\\alpha,\\beta}(x)`, with Pyro's semantics: a sum
    over the data plate, scaled by plate subsampling. So the divergence enters as :math:`n\\,\\alpha\\,D`
    with :math:`n` the (scaled) number of datapoints (SPEC §2): the seeds' α values carry over.

    :param beta: weight of the KL of every latent site (a number or a schedule ``step -> float``).
        ``beta=0`` is allowed. ``beta=1, alpha=0`` equals :class:`~pyro.infer.TraceMeanField_ELBO`.
    :param alpha: weight of the aggregate-posterior divergence.
    :param divergence: a :class:`~pyro_decomp.divergences.Divergence`, or ``None``.
    :param objective: ``"beta"`` for Eq. 2/7; ``"entropy"`` for the entropy-regularised Eq. 5,
        :math:`\\mathcal L + \\frac{\\beta-1}{2}\\log|S_\\phi(x)|` (the KL then has weight 1).
    :param latent_site: the site the divergence acts on; default: the prior's ``site`` or ``"z"``.
    :param num_particles: Monte Carlo particles, vectorised by default.

    The KL of each latent site is analytic when :func:`torch.distributions.kl_divergence` knows the pair,
    and a reparameterised single-sample Monte Carlo estimate :math:`\\log q(z) - \\log p(z)` otherwise.

    >>> import pyro, pyro_decomp
    >>> elbo = pyro_decomp.DecompositionELBO(beta=4.0, alpha=100.0, divergence=pyro_decomp.divergences.InclusiveKL())
    >>> elbo.current_weights()
    {'beta': 4.0, 'alpha': 100.0}
    """

    def __init__(
        self,
        beta: float | Callable[[int], float] = 1.0,
        alpha: float | Callable[[int], float] = 0.0,
        divergence: Divergence | None = None,
        *,
        objective: str = "beta",
        latent_site: str | None = None,
        num_particles: int = 1,
        vectorize_particles: bool = True,
        max_plate_nesting: float = float("inf"),
        log_F_beta_samples: int = 4096,
        **kwargs: Any,
    ) -> None:
        unknown = set(kwargs) - {
            "retain_graph",
            "strict_enumeration_warning",
            "ignore_jit_warnings",
            "jit_options",
        }
        if unknown:
            raise TypeError(f"DecompositionELBO got unexpected keyword arguments {sorted(unknown)}.")
        if isinstance(num_particles, bool) or not isinstance(num_particles, int) or num_particles < 1:
            raise ValueError(f"num_particles must be a positive integer, got {num_particles!r}.")
        super().__init__(
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=vectorize_particles,
            **kwargs,
        )
        if objective not in _OBJECTIVES:
            raise ValueError(f"objective must be one of {_OBJECTIVES}, got {objective!r}.")
        if divergence is not None and not isinstance(divergence, Divergence):
            raise TypeError(
                "divergence must be a pyro_decomp.divergences.Divergence (e.g. InclusiveKL(), MMD('imq')) "
                f"or None, got {type(divergence).__name__}."
            )
        self.beta = _check_weight("beta", beta)
        self.alpha = _check_weight("alpha", alpha)
        if divergence is None and (callable(self.alpha) or self.alpha != 0):
            raise ValueError("alpha > 0 needs a divergence, e.g. divergence=pyro_decomp.divergences.InclusiveKL().")
        self.divergence = divergence
        self.objective = objective
        self.latent_site = latent_site
        self.log_F_beta_samples = int(log_F_beta_samples)
        self.step = 0
        self.last_terms: dict[str, torch.Tensor] = {}
        self._prior_cache: tuple[Callable, Callable | None] | None = None

    # ------------------------------------------------------------------ state
    def current_weights(self) -> dict[str, float]:
        """β and α at the current step."""
        return {
            "beta": _weight_value("beta", self.beta, self.step),
            "alpha": _weight_value("alpha", self.alpha, self.step),
        }

    def state_dict(self) -> dict:
        """Step counter, schedule states and the divergence's own state, for checkpoints."""
        state: dict[str, Any] = {"step": self.step}
        for name in ("beta", "alpha"):
            w = getattr(self, name)
            if hasattr(w, "state_dict"):
                state[name] = w.state_dict()
        if self.divergence is not None:
            state["divergence"] = self.divergence.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        for name in ("beta", "alpha"):
            w = getattr(self, name)
            if name in state and hasattr(w, "load_state_dict"):
                w.load_state_dict(state[name])
        if self.divergence is not None and "divergence" in state:
            self.divergence.load_state_dict(state["divergence"])

    def _prior_of(self, model: Callable) -> Callable | None:
        """:func:`_find_prior`, remembered for the last model seen (SVI passes the same one each step)."""
        if self._prior_cache is None or self._prior_cache[0] is not model:
            self._prior_cache = (model, _find_prior(model))
        return self._prior_cache[1]

    # ------------------------------------------------------------------ traces
    def _get_trace(self, model, guide, args, kwargs):
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
        if is_validation_enabled():
            check_model_guide_match(model_trace, guide_trace, self.max_plate_nesting)
            for trace in (model_trace, guide_trace):
                for site in trace.nodes.values():
                    if site["type"] == "sample" and hasattr(site["fn"], "batch_shape"):
                        # a meta tensor of the batch shape stands in for log_prob: no arithmetic needed
                        shape = site["fn"].batch_shape
                        check_site_shape(dict(site, log_prob=torch.empty(shape, device="meta")), self.max_plate_nesting)
        # subsample sites are skipped where the traces are read, which saves copying both traces per step
        return model_trace, guide_trace

    def _get_traces(self, model, guide, args, kwargs):
        if self.num_particles == 1:
            # no particle plate is needed, so max_plate_nesting need not be guessed
            yield self._get_trace(model, guide, args, kwargs)
            return
        if self.vectorize_particles and self.max_plate_nesting == float("inf"):
            # guessing runs model and guide once; restore the RNG so that it does not shift the random
            # stream (a resumed run must draw exactly what an uninterrupted one draws)
            state = pyro.util.get_rng_state()
            try:
                self._guess_max_plate_nesting(model, guide, args, kwargs)
            finally:
                pyro.util.set_rng_state(state)
        yield from super()._get_traces(model, guide, args, kwargs)

    def _resolve_site(self, model, guide_trace) -> str | None:
        if self.latent_site is not None:
            name = self.latent_site
        else:
            prior = self._prior_of(model)
            name = getattr(prior, "site", "z") if prior is not None else "z"
        if name not in guide_trace.nodes:
            if self.divergence is None:
                return None
            latent = [
                n
                for n, s in guide_trace.nodes.items()
                if s["type"] == "sample" and not s["is_observed"] and not site_is_subsample(s)
            ]
            raise ValueError(
                f"the divergence acts on latent site {name!r}, which the guide does not sample; "
                f"pass latent_site= one of {latent}."
            )
        return name

    # ------------------------------------------------------------------ one trace pair
    def _particle_terms(self, model, args, kwargs, model_trace, guide_trace, beta, alpha, *, extras=False):
        """All terms for one (possibly vectorised) trace pair, each already summed over particles."""
        P = self.num_particles if (self.vectorize_particles and self.num_particles > 1) else 1
        log_lik = 0.0
        kl = 0.0
        entropy = 0.0
        entropy_const = 0.0
        score = 0.0  # log q of non-reparameterised guide sites, for the score-function surrogate
        site_name = self._resolve_site(model, guide_trace)
        latent_model_site = None
        for name, site in model_trace.nodes.items():
            if site["type"] != "sample" or site_is_subsample(site):
                continue
            if site["is_observed"]:
                lp = scale_and_mask(site["fn"].log_prob(site["value"]), site["scale"], site["mask"])
                log_lik = log_lik + lp.sum()
                continue
            if name not in guide_trace.nodes:
                continue  # sampled from the prior by replay; contributes no KL
            gsite = guide_trace.nodes[name]
            if not gsite["fn"].has_rsample:
                score = (
                    score + scale_and_mask(gsite["fn"].log_prob(gsite["value"]), gsite["scale"], gsite["mask"]).sum()
                )
            if name == site_name:
                latent_model_site = site
            kl_site = _site_kl(gsite["fn"], site["fn"], gsite["value"])
            kl = kl + scale_and_mask(kl_site, gsite["scale"], gsite["mask"]).sum()
            if self.objective == "entropy" or extras:
                h = _site_entropy(gsite["fn"], gsite["value"])
                entropy = entropy + scale_and_mask(h, gsite["scale"], gsite["mask"]).sum()
                d = gsite["fn"].event_shape.numel()
                entropy_const = (
                    entropy_const
                    + scale_and_mask(
                        torch.full_like(h, 0.5 * d * (1 + math.log(2 * math.pi))),
                        gsite["scale"],
                        gsite["mask"],
                    ).sum()
                )

        terms: dict[str, torch.Tensor] = {}
        # P == 1 and β == 1 skip a no-op division/multiplication (one fewer autograd node each)
        terms["reconstruction"] = -log_lik / P if P > 1 else -log_lik
        terms["kl"] = kl / P if P > 1 else kl
        loss = terms["reconstruction"]
        if self.objective == "beta":
            loss = loss + (terms["kl"] if beta == 1 else beta * terms["kl"])
        else:
            # Eq. 5: L + (β-1)/2 log|S| = L + (β-1)(H - D/2 (1 + log 2π)) for Gaussian guides
            terms["entropy_regulariser"] = (entropy - entropy_const) / P
            loss = loss + terms["kl"] - (beta - 1.0) * terms["entropy_regulariser"]

        if self.divergence is not None and latent_model_site is not None:
            batch = self._aggregate_batch(model, args, kwargs, guide_trace.nodes[site_name], latent_model_site, P)
            n_eff = self._num_data(guide_trace.nodes[site_name])
            if alpha == 0:
                with torch.no_grad():
                    d_hat = self.divergence(batch)
            else:
                d_hat = self.divergence(batch)
            terms["divergence"] = d_hat
            terms["weighted_divergence"] = alpha * n_eff * d_hat
            loss = loss + terms["weighted_divergence"]
            self._last_batch = batch
        if torch.is_tensor(score) and score.requires_grad:
            # REINFORCE: ∇E_q[f] = E_q[∇f + f ∇log q]; the added term has value 0
            surrogate = score * loss.detach()
            loss = loss + (surrogate - surrogate.detach()) / P
        terms["loss"] = loss
        if extras:
            terms.update(self._theorem1_terms(model, model_trace, guide_trace, beta, P, entropy))
        return terms

    def _num_data(self, gsite) -> float:
        """Scaled number of datapoints in the latent site's plate: B × subsample scale."""
        batch = gsite["fn"].batch_shape
        count = batch[-1] if len(batch) else 1
        scale = gsite["scale"]
        return float(torch_item(scale)) * count

    def _aggregate_batch(self, model, args, kwargs, gsite, msite, P) -> AggregateBatch:
        fn, z_q = gsite["fn"], gsite["value"]
        if fn.batch_shape and len(fn.batch_shape) == 1:
            fn = fn.expand(torch.Size([1]) + fn.batch_shape)
            z_q = z_q.unsqueeze(0)
        if len(fn.batch_shape) != 2:
            raise ValueError(
                f"the divergence needs latent site {gsite['name']!r} inside exactly one data plate "
                f"(batch_shape [particles, batch]); got batch_shape {tuple(fn.batch_shape)}."
            )
        if len(fn.event_shape) != 1:
            raise ValueError(
                f"the divergence needs a vector latent (event_shape [D]); site {gsite['name']!r} has "
                f"event_shape {tuple(fn.event_shape)}. Use .to_event(1) on a flat latent."
            )
        B = z_q.shape[-2]
        batch = AggregateBatch(guide_dist=fn, z_q=z_q, dataset_size=int(round(self._num_data(gsite))))
        div = self.divergence
        if div.needs_prior_log_prob:
            m_fn = msite["fn"]
            lp = m_fn.log_prob(msite["value"])
            batch.log_p_zq = lp if lp.dim() == 2 else lp.reshape(z_q.shape[:-1])
        prior = self._prior_of(model)
        if isinstance(prior, Prior):
            batch.prior_log_prob = prior.log_prob
        if div.needs_prior_samples:
            M = div.num_prior_samples or B
            batch.z_p, batch.log_p_zp = self._prior_samples(model, prior, args, kwargs, gsite["name"], P, M)
        return batch

    def _prior_samples(self, model, prior, args, kwargs, site_name, P, M):
        if isinstance(prior, Prior):
            d = prior.distribution()
            z = d.rsample((P, M)) if d.has_rsample else d.sample((P, M))
            return z, d.log_prob(z)
        if prior is not None:
            # a hand-written prior program exposed as model.prior: sample it inside its own plate
            with poutine.block(), pyro.plate("_prior_samples", P * M):
                tr = poutine.trace(prior).get_trace()
        else:
            # no prior program exposed: run the whole model and read the latent site's prior draws
            with poutine.block():
                tr = poutine.trace(poutine.uncondition(model)).get_trace(*args, **kwargs)
        if site_name not in tr.nodes:
            raise ValueError(f"the prior program did not sample latent site {site_name!r}.")
        site = tr.nodes[site_name]
        z, lp = site["value"], site["fn"].log_prob(site["value"])
        D = z.shape[-1]
        z = z.reshape(-1, D)
        lp = lp.reshape(-1)
        if z.shape[0] != P * M:
            z, lp = z.unsqueeze(0).expand(P, -1, -1), lp.unsqueeze(0).expand(P, -1)
            return z, lp
        return z.reshape(P, M, D), lp.reshape(P, M)

    # ------------------------------------------------------------------ Theorem 1 terms
    def _theorem1_terms(self, model, model_trace, guide_trace, beta, P, entropy) -> dict[str, torch.Tensor]:
        """annealed_kl = Σ KL(q ‖ f_β), entropy = Σ H[q], log_F_beta = Σ log F_β (sums over the data plate)."""
        annealed_kl = 0.0
        log_F = 0.0
        for name, site in model_trace.nodes.items():
            if (
                site["type"] != "sample"
                or site["is_observed"]
                or site_is_subsample(site)
                or name not in guide_trace.nodes
            ):
                continue
            gsite = guide_trace.nodes[name]
            normal = _unwrap_normal(site["fn"])
            if normal is not None and beta > 0:
                loc, scale, _ = normal
                event_dims = len(site["fn"].event_shape)
                f_beta = pyro.distributions.Normal(loc, scale / math.sqrt(beta)).to_event(event_dims)
                akl = _site_kl(gsite["fn"], f_beta, gsite["value"])
                var = scale.square()
                lf = gaussian_log_normaliser(var.reshape(var.shape[: var.dim() - event_dims] + (-1,)), beta)
            elif beta > 0:
                prior = self._prior_of(model)
                if isinstance(prior, Prior) and prior.site == name:
                    lf = prior.log_normaliser(beta)  # closed form or quadrature where the prior knows one
                else:
                    lf = self._log_F_importance(site["fn"], beta)
                # KL(q ‖ f_β) = β KL(q ‖ p) + (β - 1) H[q] + log F_β   (Theorem 1 rearranged)
                kl_site = _site_kl(gsite["fn"], site["fn"], gsite["value"])
                h = _site_entropy(gsite["fn"], gsite["value"])
                akl = beta * kl_site + (beta - 1.0) * h + lf
            else:
                nan = torch.full(gsite["fn"].batch_shape, math.nan)
                akl, lf = nan, nan
            annealed_kl = annealed_kl + scale_and_mask(akl, gsite["scale"], gsite["mask"]).sum()
            log_F = (
                log_F
                + scale_and_mask(
                    torch.as_tensor(lf).expand(gsite["fn"].batch_shape), gsite["scale"], gsite["mask"]
                ).sum()
            )
        return {"annealed_kl": annealed_kl / P, "entropy": entropy / P, "log_F_beta": log_F / P}

    def _log_F_importance(self, fn, beta: float) -> torch.Tensor:
        """Importance-sampling :math:`\\log F_\\beta = \\log \\mathbb E_p[p(z)^{\\beta-1}]`, per batch element.

        ``log_F_beta_samples`` is the total budget, shared across batch elements (at least 256 each)."""
        S = max(256, self.log_F_beta_samples // max(1, fn.batch_shape.numel()))
        with torch.no_grad():
            z = fn.sample((S,))
            return torch.logsumexp((beta - 1.0) * fn.log_prob(z), 0) - math.log(S)

    # ------------------------------------------------------------------ ELBO API
    def _terms(self, model, guide, args, kwargs, *, extras=False) -> dict[str, torch.Tensor]:
        w = self.current_weights()
        beta, alpha = w["beta"], w["alpha"]
        total: dict[str, torch.Tensor] = {}
        n_traces = 0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            n_traces += 1
            terms = self._particle_terms(model, args, kwargs, model_trace, guide_trace, beta, alpha, extras=extras)
            for k, v in terms.items():
                total[k] = total[k] + v if k in total else v
        if n_traces > 1:
            total = {k: v / n_traces for k, v in total.items()}
        return total

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """The loss as a differentiable tensor (no gradient step, no state change)."""
        return self._terms(model, guide, args, kwargs)["loss"]

    def loss(self, model, guide, *args, **kwargs) -> float:
        """The loss as a float, without gradients."""
        with torch.no_grad():
            return torch_item(self._terms(model, guide, args, kwargs)["loss"])

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """Loss and gradients for one SVI step. Advances the schedules' step counter and lets a
        divergence with its own parameters (FactorVAE's discriminator) take its update."""
        terms = self._terms(model, guide, args, kwargs)
        loss = terms["loss"]
        if loss.requires_grad:
            loss.backward(retain_graph=self.retain_graph)
        else:
            warnings.warn("DecompositionELBO: the loss does not depend on any parameter.", stacklevel=2)
        if self.divergence is not None and getattr(self, "_last_batch", None) is not None:
            aux = self.divergence.update(self._last_batch)
            for k, v in aux.items():
                terms[f"divergence/{k}"] = torch.as_tensor(v)
            self._last_batch = None
        self.last_terms = {k: v.detach() for k, v in terms.items()}
        self.step += 1
        return torch_item(loss)

    def loss_terms(self, model, guide, *args, **kwargs) -> dict[str, float]:
        """Every term of the objective as floats, at the current step's β and α.

        Keys (sums over the data plate, scaled like the loss, unless stated):

        * ``reconstruction``: :math:`-\\mathbb E_q[\\log p(x \\mid z)]`;
        * ``kl``: :math:`\\mathrm{KL}(q(z \\mid x) \\| p(z))`, unweighted;
        * ``divergence``: the estimate :math:`\\hat D(q(z), p(z))` itself (not summed), and
          ``weighted_divergence`` :math:`= n\\,\\alpha\\,\\hat D` (0 without a divergence);
        * ``annealed_kl``: :math:`\\mathrm{KL}(q \\| f_\\beta)`; ``entropy``: :math:`H[q(z \\mid x)]`;
          ``log_F_beta``: :math:`\\log F_\\beta` (both ``nan`` when β = 0, where :math:`f_0` is improper);
        * ``beta``, ``alpha``; ``loss``.

        The terms add up: for ``objective="beta"``,
        ``loss = reconstruction + beta * kl + weighted_divergence``, and Theorem 1 reads
        ``reconstruction + beta * kl = reconstruction + annealed_kl - (beta - 1) * entropy - log_F_beta``.
        For ``objective="entropy"`` (Eq. 5) there is one more key, ``entropy_regulariser``
        :math:`= \\tfrac12 \\log|S_\\phi(x)|` summed over the data (for Gaussian guides), and
        ``loss = reconstruction + kl - (beta - 1) * entropy_regulariser + weighted_divergence``.
        """
        with torch.no_grad():
            terms = self._terms(model, guide, args, kwargs, extras=True)
        out = {k: torch_item(v) for k, v in terms.items()}
        out.setdefault("divergence", 0.0)
        out.setdefault("weighted_divergence", 0.0)
        out.update(self.current_weights())
        return out
