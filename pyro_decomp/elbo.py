"""The decomposition objective :math:`\\mathcal L_{\\alpha,\\beta}` as a drop-in :class:`pyro.infer.ELBO`.

Design (it follows Pyro's ``Trace_ELBO`` family, and reuses its machinery):

* **Traces.** :func:`pyro.infer.enum.get_importance_trace` traces the guide, replays the model, runs
  Pyro's model/guide checks, prunes subsample sites and stores every site's ``log_prob_sum`` and
  ``score_parts`` (scaled and masked). Particles come from :class:`pyro.infer.ELBO` (vectorised or not).
* **One pure function per trace pair**, :meth:`DecompositionELBO._differentiable_loss_particle`, returns
  the loss and its terms:

  - ``reconstruction`` = :math:`-\\sum \\log p` over the model sites the guide does not sample (the
    observations, and any latent left to the model's prior, exactly as ``Trace_ELBO`` counts them);
  - ``kl`` = :math:`\\sum [\\log q - \\log p]` over the guide's sites, analytic where
    :func:`~torch.distributions.kl_divergence` knows the pair and the site is reparameterised
    (``TraceMeanField_ELBO``'s choice, with its mean-field ordering warning), plus :math:`\\log q` of
    guide-only (auxiliary) sites such as every autoguide's joint latent or a guide-side ``pyro.factor``;
  - ``loss`` = ``reconstruction + β kl + weighted_divergence`` (Eq. 7), or Eq. 5 for ``objective="entropy"``.

  Non-reparameterised guide sites get ``Trace_ELBO``'s score-function surrogate with plate-aware credit:
  each site's score is multiplied by the (β-weighted, detached) costs that share its plates
  (:class:`~pyro.infer.util.MultiFrameTensor`), and the batch-level divergence, which shares no plate,
  credits every site. The score is not scaled by subsampling (Pyro's ``ScoreParts``). The gradient is
  therefore unbiased for every ``num_particles``, and at β = 1, α = 0 it is ``Trace_ELBO``'s, seed by seed.
* **Enumeration.** When a model or guide site asks for ``infer={"enumerate": ...}``, traces come from
  :class:`~pyro.infer.TraceEnum_ELBO`, and :meth:`DecompositionELBO._enumerated_loss_particle` uses its
  contraction and Dice estimator twice: over all model factors (:math:`\\log p(x, z)`) and over the latent
  ones only (:math:`\\log p(z)`, the observations removed), which separates the Eq. 7 terms with every
  discrete site summed out. At β = 1, α = 0 the loss is ``TraceEnum_ELBO``'s.
* **The divergence's batch** is built outside the loss by
  :func:`~pyro_decomp.divergences.base.build_aggregate_batch`, with the *marginal* prior of the site
  (:mod:`pyro_decomp.models.marginal`): a :class:`~pyro_decomp.models.priors.Prior`'s closed form; for any
  other prior program (``model.prior``), enumerated sites summed exactly and other parents
  importance-sampled (``marginal_samples``); for a model without a prior program, the model's own density
  when the site has no latent parents, else a clear error.
* **Theorem 1 diagnostics** (:meth:`DecompositionELBO._theorem1_terms`) are computed only by
  :meth:`DecompositionELBO.loss_terms`. ``loss``, ``differentiable_loss`` and ``loss_terms`` change no
  state; ``loss_and_grads`` advances the schedules and lets the divergence update itself.
"""

from __future__ import annotations

import inspect
import math
import warnings
import weakref
from collections.abc import Callable
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.distributions.util import is_identically_zero
from pyro.infer.elbo import ELBO
from pyro.infer.enum import get_importance_trace
from pyro.infer.trace_mean_field_elbo import _check_mean_field_requirement
from pyro.infer.traceenum_elbo import TraceEnum_ELBO, _compute_dice_elbo
from pyro.infer.util import MultiFrameTensor, get_plate_stacks, is_validation_enabled, torch_item
from pyro.poutine.util import site_is_subsample
from pyro.util import check_model_guide_match, check_site_shape
from torch.distributions import kl_divergence

from .divergences.base import AggregateBatch, Divergence, build_aggregate_batch
from .models.marginal import ModelSiteDensity, PriorModuleDensity, ProgramMarginal
from .models.priors import Prior, gaussian_log_normaliser, importance_log_normaliser

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
        ``beta=0`` is allowed. ``beta=1, alpha=0`` is Pyro's ELBO (see the module docstring).
    :param alpha: weight of the aggregate-posterior divergence.
    :param divergence: a :class:`~pyro_decomp.divergences.Divergence`, or ``None``.
    :param objective: ``"beta"`` for Eq. 2/7; ``"entropy"`` for the entropy-regularised Eq. 5,
        :math:`\\mathcal L + \\frac{\\beta-1}{2}\\log|S_\\phi(x)|` (the KL then has weight 1).
    :param latent_site: the site the divergence acts on; default: the prior's ``site`` or ``"z"``.
    :param num_particles: Monte Carlo particles, vectorised by default.
    :param marginal_samples: ``K``, importance samples per point for the marginal prior density of a
        multi-site prior program (:class:`~pyro_decomp.models.marginal.ProgramMarginal`).

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
        marginal_samples: int = 256,
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
        if isinstance(marginal_samples, bool) or not isinstance(marginal_samples, int) or marginal_samples < 1:
            raise ValueError(f"marginal_samples must be a positive integer, got {marginal_samples!r}.")
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
        self.marginal_samples = marginal_samples
        self.step = 0
        self.last_terms: dict[str, torch.Tensor] = {}
        # Pyro's own enumeration machinery: traces, contraction and Dice, used when a site asks for it
        self._enum_elbo = TraceEnum_ELBO(
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=vectorize_particles,
            **kwargs,
        )
        # memos of facts about the last model/guide seen (SVI passes the same ones every step)
        self._prior_cache: tuple[Callable, Callable | None] | None = None
        self._marginal_cache: tuple[Callable, str, ProgramMarginal] | None = None
        self._enum_cache: tuple[Callable, Callable, bool] | None = None

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
        """:func:`_find_prior`, remembered for the last model seen."""
        if self._prior_cache is None or self._prior_cache[0] is not model:
            self._prior_cache = (model, _find_prior(model))
        return self._prior_cache[1]

    # ------------------------------------------------------------------ traces
    def _get_trace(self, model, guide, args, kwargs):
        """One (model, guide) trace pair with Pyro's checks, pruned of subsample sites, with ``log_prob_sum``
        and ``score_parts`` computed (scaled and masked) by Pyro.

        The steps of :func:`pyro.infer.enum.get_importance_trace`, in its order, except that the subsample
        sites are removed from the two fresh traces in place rather than from copies."""
        if isinstance(poutine.unwrap(guide), poutine.messenger.Messenger):
            return get_importance_trace("flat", self.max_plate_nesting, model, guide, args, kwargs)
        guide_trace = poutine.trace(guide, graph_type="flat").get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace), graph_type="flat").get_trace(
            *args, **kwargs
        )
        validate = is_validation_enabled()
        if validate:
            check_model_guide_match(model_trace, guide_trace, self.max_plate_nesting)
        for trace in (guide_trace, model_trace):
            for name in [name for name, site in trace.nodes.items() if site_is_subsample(site)]:
                trace.remove_node(name)
        model_trace.compute_log_prob()
        guide_trace.compute_score_parts()
        if validate:
            for trace in (model_trace, guide_trace):
                for site in trace.nodes.values():
                    if site["type"] == "sample":
                        check_site_shape(site, self.max_plate_nesting)
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

    def _uses_enumeration(self, model, guide, args, kwargs) -> bool:
        """Whether a model or guide site asks for enumeration (``infer={"enumerate": ...}``), found by
        one blocked run with the RNG restored; remembered for the last (model, guide) pair."""
        cache = self._enum_cache
        if cache is not None and cache[0] == model and cache[1] == guide:
            return cache[2]
        state = pyro.util.get_rng_state()
        try:
            with poutine.block():
                guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
                model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
        finally:
            pyro.util.set_rng_state(state)
        found = any(
            site["type"] == "sample" and site["infer"].get("enumerate")
            for trace in (guide_trace, model_trace)
            for site in trace.nodes.values()
        )
        self._enum_cache = (model, guide, found)
        return found

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

    # ------------------------------------------------------------------ the divergence's batch
    def _prior_density(self, model, model_trace, site: str):
        """The marginal prior of ``site`` (:mod:`pyro_decomp.models.marginal`)."""
        prior = self._prior_of(model)
        if isinstance(prior, Prior) and prior.site == site:
            return PriorModuleDensity(prior)
        if prior is None:
            return ModelSiteDensity(model_trace, site)
        cache = self._marginal_cache
        if cache is None or cache[0] is not prior or cache[1] != site:
            cache = (prior, site, ProgramMarginal(prior, site, num_samples=self.marginal_samples))
            self._marginal_cache = cache
        return cache[2]

    def _aggregate_batch(self, model, model_trace, guide_trace) -> AggregateBatch | None:
        """The divergence's :class:`AggregateBatch` for one trace pair (``None`` without a divergence)."""
        if self.divergence is None:
            return None
        site = self._resolve_site(model, guide_trace)
        gsite = guide_trace.nodes[site]
        density = self._prior_density(model, model_trace, site)
        return build_aggregate_batch(self.divergence, gsite, density, dataset_size=_num_data(gsite))

    # ------------------------------------------------------------------ one trace pair
    def _divergence_terms(self, batch, alpha, particles: int, alpha_zero: bool | None = None) -> dict[str, torch.Tensor]:
        """``divergence`` (:math:`\\hat D`) and ``weighted_divergence`` (:math:`n\\alpha\\hat D`), each times the
        number of particles in the trace (the caller averages over particles). ``alpha`` may be a 0-dim tensor
        (the compiled path); ``alpha_zero`` then says whether it is 0."""
        if alpha_zero is None:
            alpha_zero = alpha == 0
        if alpha_zero:
            with torch.no_grad():
                d_hat = self.divergence(batch).detach()  # detach: a compiled graph does not record no_grad
        else:
            d_hat = self.divergence(batch)
        weighted = alpha * batch.num_data * d_hat
        return {"divergence": particles * d_hat, "weighted_divergence": particles * weighted}

    def _differentiable_loss_particle(self, model_trace, guide_trace, beta: float, div_terms: dict):
        """Loss and terms of one (possibly vectorised) trace pair, Trace_ELBO-style (see module docstring).

        Returns ``terms`` with ``loss`` (a surrogate whose value is the loss and whose gradient is
        unbiased), ``reconstruction`` and ``kl`` (values), plus ``div_terms``."""
        score_sites = [
            site
            for site in guide_trace.nodes.values()
            if site["type"] == "sample" and not is_identically_zero(site["score_parts"].score_function)
        ]
        if score_sites and self.objective == "entropy":
            raise ValueError(
                "objective='entropy' (paper Eq. 5) is defined for Gaussian, reparameterised guides; guide site "
                f"{score_sites[0]['name']!r} is not reparameterised. Use objective='beta'."
            )
        costs = MultiFrameTensor() if score_sites else None  # per-site costs for score-function credit
        stacks = get_plate_stacks(model_trace) if score_sites else None
        reconstruction = 0.0
        kl = 0.0
        # Σ of the guide terms whose gradient is right (Pyro's entropy_term); kept apart from ``kl`` only
        # once some site's differs from its value (a score-function site), to keep the graph small
        kl_surrogate = None
        analytic_kl_used = False
        for name, site in model_trace.nodes.items():
            if site["type"] != "sample":
                continue
            gsite = guide_trace.nodes.get(name)
            if gsite is None or gsite["type"] != "sample":
                # observed, or a latent the guide leaves to the model's prior: Trace_ELBO adds log p
                reconstruction = reconstruction - site["log_prob_sum"]
                if costs is not None:
                    costs.add((stacks[name], -site["log_prob"].detach()))
                continue
            log_q, score, entropy_term = gsite["score_parts"]
            kl_site = _analytic_kl(gsite, site) if is_identically_zero(score) else None
            if kl_site is not None:
                # reparameterised site with a closed-form KL (TraceMeanField_ELBO's choice)
                analytic_kl_used = True
                kl_sum = kl_site.sum()
                kl = kl + kl_sum
                kl_surrogate = kl_surrogate if kl_surrogate is None else kl_surrogate + kl_sum
                cost = kl_site
            else:
                kl_surrogate = _add_guide_term(kl, kl_surrogate, gsite, -site["log_prob_sum"])
                kl = kl + gsite["log_prob_sum"] - site["log_prob_sum"]
                cost = log_q - site["log_prob"]
            if costs is not None:
                costs.add((stacks[name], beta * cost.detach()))
        for name, gsite in guide_trace.nodes.items():
            if gsite["type"] == "sample" and name not in model_trace.nodes:
                # auxiliary guide site (every autoguide's joint latent, a guide-side factor): −log q counts
                kl_surrogate = _add_guide_term(kl, kl_surrogate, gsite, 0.0)
                kl = kl + gsite["log_prob_sum"]
                if costs is not None:
                    costs.add((get_plate_stacks(guide_trace)[name], beta * gsite["log_prob"].detach()))
        if analytic_kl_used and is_validation_enabled():
            _check_mean_field_requirement(model_trace, guide_trace)

        terms: dict[str, torch.Tensor] = {"reconstruction": reconstruction, "kl": kl, **div_terms}
        if self.objective == "entropy":
            entropy, const = _guide_entropy(model_trace, guide_trace)
            terms["entropy_regulariser"] = entropy - const
        loss = _weighted_loss(terms, beta, self.objective)
        if kl_surrogate is None and costs is None:
            terms["loss"] = torch.as_tensor(loss)
            return terms
        surrogate = _weighted_loss(dict(terms, kl=kl if kl_surrogate is None else kl_surrogate), beta, self.objective)
        if costs is not None:
            if "weighted_divergence" in div_terms:
                # the divergence is a batch-level cost: it shares no plate, so every site is credited with it
                costs.add(((), div_terms["weighted_divergence"].detach()))
            for gsite in score_sites:
                credit = costs.sum_to(gsite["cond_indep_stack"])
                surrogate = surrogate + (credit * gsite["score_parts"].score_function).sum()
        terms["loss"] = _with_gradient_of(loss, surrogate)
        return terms

    def _enumerated_loss_particle(self, model_trace, guide_trace, beta: float, div_terms: dict):
        """Loss and terms of one trace pair with enumerated sites, from TraceEnum_ELBO's contraction.

        ``log p(x, z)`` contracts every model factor, ``log p(z)`` only the latent ones (the observed
        sites are removed), so ``reconstruction = −(ELBO − ELBO_prior)`` and ``kl = −ELBO_prior`` are the
        Eq. 7 terms with every enumerated site summed out; Dice gives both unbiased gradients."""
        if self.objective == "entropy":
            raise ValueError("objective='entropy' (paper Eq. 5) needs a Gaussian guide and no enumerated sites.")
        elbo = _compute_dice_elbo(model_trace, guide_trace)
        prior_trace = model_trace.copy()
        # keep the packing metadata (plate symbols) that TraceEnum_ELBO's tracing attached
        prior_trace.__dict__.update({k: v for k, v in vars(model_trace).items() if k not in vars(prior_trace)})
        for name, site in list(prior_trace.nodes.items()):
            if site["type"] == "sample" and site["is_observed"]:
                prior_trace.remove_node(name)
        elbo_prior = _compute_dice_elbo(prior_trace, guide_trace)
        terms: dict[str, torch.Tensor] = {"reconstruction": elbo_prior - elbo, "kl": -elbo_prior, **div_terms}
        loss = _weighted_loss(terms, beta, self.objective)
        if "weighted_divergence" in div_terms:
            scores = [
                site["score_parts"].score_function
                for site in guide_trace.nodes.values()
                if site["type"] == "sample" and not is_identically_zero(site["score_parts"].score_function)
            ]
            if scores:
                cost = div_terms["weighted_divergence"].detach()
                loss = _with_gradient_of(loss, loss + cost * sum(s.sum() for s in scores))
        terms["loss"] = torch.as_tensor(loss)
        return terms

    # ------------------------------------------------------------------ Theorem 1 diagnostics
    def _theorem1_terms(self, model, model_trace, guide_trace, beta: float) -> dict[str, torch.Tensor]:
        """annealed_kl = Σ KL(q ‖ f_β), entropy = Σ H[q], log_F_beta = Σ log F_β (sums over the data plate)."""
        annealed_kl = 0.0
        log_F = 0.0
        entropy, _ = _guide_entropy(model_trace, guide_trace)
        for name, site in model_trace.nodes.items():
            if site["type"] != "sample" or site["is_observed"] or name not in guide_trace.nodes:
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
                    lf = prior.log_normaliser(beta, num_samples=self.log_F_beta_samples)  # closed form or quadrature if known
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
        return {"annealed_kl": annealed_kl, "entropy": entropy, "log_F_beta": log_F}

    def _log_F_importance(self, fn, beta: float) -> torch.Tensor:
        """:math:`\\log F_\\beta` per batch element by :func:`~pyro_decomp.models.priors.importance_log_normaliser`.

        ``log_F_beta_samples`` is the total budget, shared across batch elements (at least 256 each)."""
        S = max(256, self.log_F_beta_samples // max(1, fn.batch_shape.numel()))
        return importance_log_normaliser(fn, beta, num_samples=S)

    # ------------------------------------------------------------------ ELBO API
    def _terms(self, model, guide, args, kwargs, *, extras=False, weights=None) -> tuple[dict[str, torch.Tensor], Any]:
        """Every term averaged over particles, and the last trace pair's divergence batch.

        ``weights``: ``(beta, alpha, alpha_zero)`` with 0-dim tensor weights, for the compiled path
        (:class:`JitDecompositionELBO`); default: the current step's numbers."""
        if weights is None:
            w = self.current_weights()
            beta, alpha = w["beta"], w["alpha"]
            alpha_zero = alpha == 0
        else:
            beta, alpha, alpha_zero = weights
        enumerated = self._uses_enumeration(model, guide, args, kwargs)
        if enumerated:
            traces = self._enum_elbo._get_traces(model, guide, args, kwargs)
            particle_loss = self._enumerated_loss_particle
        else:
            traces = self._get_traces(model, guide, args, kwargs)
            particle_loss = self._differentiable_loss_particle
        particles = self.num_particles if self.vectorize_particles else 1
        total: dict[str, Any] = {}
        batch = None
        for model_trace, guide_trace in traces:
            batch = self._aggregate_batch(model, model_trace, guide_trace)
            div_terms = {} if batch is None else self._divergence_terms(batch, alpha, particles, alpha_zero)
            terms = particle_loss(model_trace, guide_trace, beta, div_terms)
            if extras:
                if enumerated:
                    nan = torch.tensor(math.nan)  # the annealed prior of a summed-out mixture is not implemented
                    terms.update(annealed_kl=nan, entropy=nan, log_F_beta=nan)
                else:
                    terms.update(self._theorem1_terms(model, model_trace, guide_trace, beta))
            for k, v in terms.items():
                total[k] = total[k] + v if k in total else v
        if self.num_particles > 1:
            total = {k: v / self.num_particles for k, v in total.items()}
        total = {k: torch.as_tensor(v) for k, v in total.items()}
        if "loss" not in total:  # a guide that enumerates nothing sequentially yields no trace only if empty
            total["loss"] = torch.tensor(0.0)
        return total, batch

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """The loss as a differentiable tensor (no gradient step, no state change)."""
        return self._terms(model, guide, args, kwargs)[0]["loss"]

    def loss(self, model, guide, *args, **kwargs) -> float:
        """The loss as a float, without gradients (no state change)."""
        with torch.no_grad():
            return torch_item(self._terms(model, guide, args, kwargs)[0]["loss"])

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """Loss and gradients for one SVI step. Advances the schedules' step counter and lets a
        divergence with its own parameters (FactorVAE's discriminator) take its update."""
        terms, batch = self._terms(model, guide, args, kwargs)
        loss = terms["loss"]
        if loss.requires_grad:
            loss.backward(retain_graph=self.retain_graph)
        if batch is not None:
            for k, v in self.divergence.update(batch).items():
                terms[f"divergence/{k}"] = torch.as_tensor(v)
        self.last_terms = {k: v.detach() for k, v in terms.items()}
        self.step += 1
        return torch_item(loss)

    def loss_terms(self, model, guide, *args, **kwargs) -> dict[str, float]:
        """Every term of the objective as floats, at the current step's β and α (no state change).

        Keys (sums over the data plate, scaled like the loss, unless stated):

        * ``reconstruction``: :math:`-\\mathbb E_q[\\log p(x \\mid z)]`, including the model's log density
          of latent sites the guide does not sample (as Trace_ELBO counts them);
        * ``kl``: :math:`\\mathrm{KL}(q(z \\mid x) \\| p(z))`, unweighted, including the guide's auxiliary sites;
        * ``divergence``: the estimate :math:`\\hat D(q(z), p(z))` itself (not summed), and
          ``weighted_divergence`` :math:`= n\\,\\alpha\\,\\hat D` (0 without a divergence);
        * ``annealed_kl``: :math:`\\mathrm{KL}(q \\| f_\\beta)`; ``entropy``: :math:`H[q(z \\mid x)]`;
          ``log_F_beta``: :math:`\\log F_\\beta` (both ``nan`` when β = 0, where :math:`f_0` is improper,
          and all three ``nan`` for models with enumerated sites);
        * ``beta``, ``alpha``; ``loss``.

        The terms add up: for ``objective="beta"``,
        ``loss = reconstruction + beta * kl + weighted_divergence``, and Theorem 1 reads
        ``reconstruction + beta * kl = reconstruction + annealed_kl - (beta - 1) * entropy - log_F_beta``.
        For ``objective="entropy"`` (Eq. 5) there is one more key, ``entropy_regulariser``
        :math:`= \\tfrac12 \\log|S_\\phi(x)|` summed over the data (for Gaussian guides), and
        ``loss = reconstruction + kl - (beta - 1) * entropy_regulariser + weighted_divergence``.
        """
        with torch.no_grad():
            terms, _ = self._terms(model, guide, args, kwargs, extras=True)
        out = {k: torch_item(v) for k, v in terms.items()}
        out.setdefault("divergence", 0.0)
        out.setdefault("weighted_divergence", 0.0)
        out.update(self.current_weights())
        return out


class JitDecompositionELBO(DecompositionELBO):
    """:class:`DecompositionELBO` compiled with :func:`pyro.ops.jit.trace`, as :class:`pyro.infer.JitTrace_ELBO`
    compiles :class:`~pyro.infer.Trace_ELBO`: the model, the guide, the traces and the divergence are run through
    Pyro once per compilation and recorded as a TorchScript graph; later steps run the graph, so Pyro's
    per-step message passing (a fixed ~0.5-1 ms) is paid only when compiling. Same loss, same gradients,
    same checkpoints and schedules (β and α enter the graph as inputs, so a schedule does not recompile).

    The restrictions are those of ``JitTrace_ELBO``: the model and guide must have static structure (no
    Python control flow on tensor values), take their tensors through ``*args`` and their other inputs
    through ``**kwargs`` (one compilation per distinct ``kwargs``), and create every ``pyro.param`` on
    the first call. A new input shape (the short last minibatch of an epoch) compiles once more. Not
    supported, with an error that says so: enumerated sites, and divergences with state between steps
    (:meth:`Divergence.update`: FactorVAE's discriminator, the scheduled weights of the TC, DIP, capacity and
    exclusive-KL regularisers). :class:`~pyro_decomp.divergences.InclusiveKL` and the MMDs compile.

    Each compilation is checked: the compiled graph and the eager :class:`DecompositionELBO` are run from
    the same random state and must give the same loss (relative 1e-4), or a :class:`RuntimeError` says
    that this model cannot be compiled. The check catches Python state frozen into the graph; it cannot catch
    a branch on data values that happens to go the same way for the checked batch, so keep such branches out
    of a compiled model. ``loss``, ``loss_terms`` and the Theorem 1 diagnostics run eagerly.

    >>> import pyro_decomp
    >>> elbo = pyro_decomp.JitDecompositionELBO(beta=1.0, alpha=3.0, divergence=pyro_decomp.divergences.InclusiveKL())
    """

    #: relative tolerance of the check that the compiled loss equals the eager loss
    check_rtol = 1e-4

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # the tracer's warnings (Python values recorded as constants) are what the compile check tests for
        kwargs.setdefault("ignore_jit_warnings", True)
        super().__init__(*args, **kwargs)
        if self.divergence is not None and type(self.divergence).update is not Divergence.update:
            raise ValueError(
                f"JitDecompositionELBO cannot compile {type(self.divergence).__name__}: it keeps Python-side state "
                "between steps (Divergence.update: weight schedules, a discriminator, logged terms), which a compiled "
                "graph would freeze. Use DecompositionELBO for it (config: train.jit=false); InclusiveKL and the MMDs "
                "compile."
            )
        self._compiled: dict[tuple, Any] = {}

    def _compiled_terms(self, model, guide, args, kwargs) -> dict[str, torch.Tensor]:
        if self._uses_enumeration(model, guide, args, kwargs):
            raise ValueError(
                "JitDecompositionELBO does not compile models or guides with enumerated sites; use DecompositionELBO "
                "(config: train.jit=false)."
            )
        bad = [k for k, v in kwargs.items() if torch.is_tensor(v)]
        if bad:
            raise ValueError(
                f"JitDecompositionELBO needs every tensor input in *args, but got tensor keyword argument(s) {bad}."
            )
        w = self.current_weights()
        alpha_zero = w["alpha"] == 0
        shapes = tuple(tuple(a.shape) if torch.is_tensor(a) else None for a in args)
        key = (_callable_id(model), _callable_id(guide), alpha_zero, shapes)
        beta = torch.tensor(float(w["beta"]))
        alpha = torch.tensor(float(w["alpha"]))
        fn = self._compiled.get(key)
        if fn is None:
            fn = self._compile(model, guide, alpha_zero)
            self._check_compiled(fn, model, guide, args, kwargs, (beta, alpha, alpha_zero))
            self._compiled[key] = fn  # only a graph that passed the check is reused
        values = fn(beta, alpha, *args, **kwargs)
        return dict(zip(fn.term_keys, values))

    def _compile(self, model, guide, alpha_zero: bool):
        weakself = weakref.ref(self)
        holder: dict[str, Any] = {}

        def terms_fn(beta, alpha, *args, **kwargs):
            terms, _ = weakself()._terms(model, guide, args, kwargs, weights=(beta, alpha, alpha_zero))
            keys = tuple(sorted(terms))
            holder["keys"] = keys
            return tuple(terms[k] for k in keys)

        compiled = pyro.ops.jit.trace(terms_fn, ignore_warnings=self.ignore_jit_warnings, jit_options=self.jit_options)

        class _Fn:
            def __call__(self, *args, **kwargs):
                return compiled(*args, **kwargs)

            @property
            def term_keys(self):
                return holder["keys"]

        return _Fn()

    def _check_compiled(self, fn, model, guide, args, kwargs, weights) -> None:
        """The first compiled evaluation must equal the eager one from the same random state."""
        state = pyro.util.get_rng_state()
        try:
            with warnings.catch_warnings():
                # torch 2.14 marks torch.jit.trace deprecated (still supported before Python 3.14); it is
                # what pyro.ops.jit (JitTrace_ELBO) compiles with
                warnings.filterwarnings("ignore", message=r".*torch\.jit\.trace.* is deprecated", category=FutureWarning)
                fn(weights[0], weights[1], *args, **kwargs)  # compiles (runs the Python once more)
            pyro.util.set_rng_state(state)
            with torch.no_grad():
                compiled = dict(zip(fn.term_keys, fn(weights[0], weights[1], *args, **kwargs)))["loss"]
            pyro.util.set_rng_state(state)
            with torch.no_grad(), poutine.block():
                eager = self._terms(model, guide, args, kwargs, weights=weights)[0]["loss"]
        finally:
            pyro.util.set_rng_state(state)
        c, e = float(compiled), float(eager)
        if not math.isclose(c, e, rel_tol=self.check_rtol, abs_tol=1e-6) and not (math.isnan(c) and math.isnan(e)):
            raise RuntimeError(
                f"JitDecompositionELBO: the compiled loss ({c:.6g}) differs from the eager loss ({e:.6g}) from the same "
                "random state, so this model, guide or divergence does not trace to a static graph (Python control "
                "flow on tensor values, or inputs that are not in *args). Use DecompositionELBO (config: train.jit=false)."
            )

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """The loss as a differentiable tensor, from the compiled graph (no state change)."""
        return self._compiled_terms(model, guide, args, kwargs)["loss"]

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """Loss and gradients for one SVI step from the compiled graph; advances the schedules' step counter."""
        terms = self._compiled_terms(model, guide, args, kwargs)
        loss = terms["loss"]
        if loss.requires_grad:
            loss.backward(retain_graph=self.retain_graph)
        self.last_terms = {k: v.detach() for k, v in terms.items()}
        self.step += 1
        return torch_item(loss)


def _callable_id(fn) -> tuple[int, int]:
    """Identity of a model or guide: a bound method (``vae.model``) is a new object at each attribute access,
    so it is identified by its instance and function. The compiled closure keeps both alive, so the ids
    cannot be reused while the cache entry exists."""
    return (id(fn.__self__), id(fn.__func__)) if inspect.ismethod(fn) else (id(fn), 0)


# ---------------------------------------------------------------------- per-site helpers
def _num_data(gsite) -> float:
    """Scaled number of datapoints in the latent site's plate: B × subsample scale."""
    batch = gsite["fn"].batch_shape
    count = int(batch[-1]) if len(batch) else 1  # int(): under torch.jit.trace a size is a traced tensor
    return float(torch_item(gsite["scale"])) * count


def _analytic_kl(gsite, msite) -> torch.Tensor | None:
    """Closed-form KL(q ‖ p) of one site, scaled and masked, batch-shaped; ``None`` when torch has none."""
    try:
        kl = kl_divergence(gsite["fn"], msite["fn"])
    except NotImplementedError:
        return None
    kl = scale_and_mask(kl, gsite["scale"], gsite["mask"])
    if not torch.is_tensor(kl):  # a fully masked site: kl_divergence returns the number 0
        kl = torch.full(gsite["fn"].batch_shape, float(kl))
    return kl


def _entropy_surrogate(gsite):
    """The guide term whose gradient is the pathwise part of ∇E_q[log q] (Pyro's ``entropy_term``): log q itself
    for a reparameterised site, 0 otherwise (the score-function term then carries the gradient)."""
    log_q, score, entropy_term = gsite["score_parts"]
    if entropy_term is log_q:
        return gsite["log_prob_sum"]  # same tensor: reuse Pyro's sum
    return entropy_term.sum() if torch.is_tensor(entropy_term) else entropy_term


def _add_guide_term(kl, kl_surrogate, gsite, other):
    """``kl_surrogate`` after adding the guide site's surrogate term plus ``other``: still ``None`` (= equal to
    ``kl``) while every site's surrogate is its value ``log_prob_sum``, else the separate sum."""
    surrogate = _entropy_surrogate(gsite)
    if kl_surrogate is None:
        if surrogate is gsite["log_prob_sum"]:
            return None
        kl_surrogate = kl  # the sum so far, where surrogate and value agreed
    return kl_surrogate + surrogate + other


def _guide_entropy(model_trace, guide_trace) -> tuple[Any, Any]:
    """(Σ H[q], Σ D/2 (1 + log 2π)) over the guide sites the model shares, scaled and masked."""
    entropy = 0.0
    const = 0.0
    for name, gsite in guide_trace.nodes.items():
        if gsite["type"] != "sample" or name not in model_trace.nodes:
            continue
        h = _site_entropy(gsite["fn"], gsite["value"])
        entropy = entropy + scale_and_mask(h, gsite["scale"], gsite["mask"]).sum()
        d = gsite["fn"].event_shape.numel()
        c = torch.full_like(h, 0.5 * d * (1 + math.log(2 * math.pi)))
        const = const + scale_and_mask(c, gsite["scale"], gsite["mask"]).sum()
    return entropy, const


def _weighted_loss(terms: dict, beta: float, objective: str):
    """Eq. 7 (``beta``) or Eq. 5 (``entropy``) from the terms."""
    if objective == "beta":
        unit = not torch.is_tensor(beta) and beta == 1  # a tensor β (compiled path) is always multiplied
        loss = terms["reconstruction"] + (terms["kl"] if unit else beta * terms["kl"])
    else:
        # Eq. 5: L + (β-1)/2 log|S| = L + (β-1)(H - D/2 (1 + log 2π)) for Gaussian guides
        loss = terms["reconstruction"] + terms["kl"] - (beta - 1.0) * terms["entropy_regulariser"]
    if "weighted_divergence" in terms:
        loss = loss + terms["weighted_divergence"]
    return loss


def _with_gradient_of(value, surrogate) -> torch.Tensor:
    """``value`` in the forward pass, ∇surrogate in the backward pass."""
    value = torch.as_tensor(value).detach()
    if not torch.is_tensor(surrogate) or not surrogate.requires_grad:
        return value
    return value + (surrogate - surrogate.detach())
