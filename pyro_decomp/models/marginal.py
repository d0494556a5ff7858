"""The prior marginal :math:`p(z)` of one latent site, for the aggregate-posterior divergences (SPEC §2-3).

Every divergence :math:`D(q(z), p(z))` compares the aggregate posterior with the *marginal* prior of the
site it acts on. A prior program with one latent site gives it directly; a program with several sites
(a hierarchy, a discrete mixture) only gives :math:`p(z \\mid \\text{parents})`, and
:math:`\\log p(z) \\neq \\log p(z \\mid \\text{parents})` in general (they differ by the pointwise
mutual information with the parents). :class:`ProgramMarginal` computes the marginal from the program:

.. math::

    \\log \\hat p(z) = \\log \\frac1K \\sum_{k=1}^K \\sum_{c} p(c \\mid u_k)\\, p(z \\mid c, u_k),
    \\qquad u_k \\sim p(u)

* discrete sites marked ``infer={"enumerate": "parallel"}`` (``c``) are summed out exactly;
* the other parent sites (``u``) are importance-sampled from their prior, ``K = num_samples`` draws
  per point. The estimate of :math:`p(z)` is unbiased; its log is biased low by about
  :math:`\\mathrm{Var}[w]/(2K\\bar w^2)` (Jensen), which vanishes as :math:`K \\to \\infty`;
* a program whose only latent site is ``site`` is evaluated exactly (``K = 1``).

The program must sample one code per datapoint inside the caller's plates (as every prior does, SPEC §3);
it is run inside two plates of its own (dims -1 and -2), and enumeration uses dims from -3 leftwards.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pyro
import torch
from pyro import poutine

__all__ = ["ModelSiteDensity", "PriorModuleDensity", "ProgramMarginal"]


class ProgramMarginal:
    """Samples and marginal log density of latent ``site`` of the prior program ``program``.

    :param program: a Pyro program taking no arguments (e.g. ``vae.prior``).
    :param site: the latent site.
    :param num_samples: ``K``, importance samples of the non-enumerated parent sites per point.

    >>> import pyro.distributions as dist
    >>> def student_t_prior():            # z | τ ~ N(0, 1/τ), τ ~ Gamma(ν/2, ν/2): z ~ StudentT(ν)
    ...     tau = pyro.sample("tau", dist.Gamma(1.5, 1.5))
    ...     return pyro.sample("z", dist.Normal(0.0, tau.rsqrt().unsqueeze(-1)).to_event(1))
    >>> marginal = ProgramMarginal(student_t_prior, "z", num_samples=1024)
    >>> marginal.log_prob(torch.zeros(2, 1)).shape
    torch.Size([2])
    """

    def __init__(self, program: Callable[[], torch.Tensor], site: str, *, num_samples: int = 256) -> None:
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}.")
        self.program = program
        self.site = site
        self.num_samples = num_samples
        self._structure: tuple[bool, bool] | None = None

    def _inspect(self) -> tuple[bool, bool]:
        """(exact, has_enumeration): whether ``site`` is the program's only latent site, and whether any
        site asks for parallel enumeration."""
        if self._structure is None:
            state = pyro.util.get_rng_state()  # inspecting must not shift the caller's random stream
            try:
                with poutine.block(), pyro.plate("_marginal_points", 1, dim=-1):
                    trace = poutine.trace(self.program).get_trace()
            finally:
                pyro.util.set_rng_state(state)
            if self.site not in trace.nodes:
                raise ValueError(f"the prior program did not sample latent site {self.site!r}.")
            latent = [
                name
                for name, s in trace.nodes.items()
                if s["type"] == "sample" and not s["is_observed"] and name != self.site
                and not pyro.poutine.util.site_is_subsample(s)
            ]
            enumerated = any(trace.nodes[n]["infer"].get("enumerate") == "parallel" for n in latent)
            self._structure = (not latent, enumerated)
        return self._structure

    @property
    def exact(self) -> bool:
        """True when the program's density at ``site`` is already the marginal."""
        return self._inspect()[0]

    def sample(self, shape: tuple[int, ...]) -> torch.Tensor:
        """Draws :math:`z \\sim p(z)`, ``[*shape, D]`` (ancestral sampling: every parent is sampled)."""
        n = math.prod(shape)
        with poutine.block(), pyro.plate("_prior_samples", n, dim=-1):
            trace = poutine.trace(self.program).get_trace()
        if self.site not in trace.nodes:
            raise ValueError(f"the prior program did not sample latent site {self.site!r}.")
        z = trace.nodes[self.site]["value"]
        return z.reshape(*shape, z.shape[-1])

    def sample_with_log_prob(self, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """Draws ``[*shape, D]`` and their marginal log densities ``[*shape]``."""
        z = self.sample(shape)
        return z, self.log_prob(z)

    def log_prob_at(self, z: torch.Tensor) -> torch.Tensor:
        """:math:`\\log p(z)` at the guide's samples ``[P, B, D]`` → ``[P, B]``."""
        return self.log_prob(z)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """:math:`\\log p(z)` (exact or importance-sampled, see the module docstring), ``z: [..., D]`` → ``[...]``.

        Differentiable in ``z`` and in the program's parameters."""
        exact, enumerated = self._inspect()
        batch_shape = z.shape[:-1]
        points = z.reshape(-1, z.shape[-1])
        K = 1 if exact else self.num_samples
        program = poutine.condition(self.program, data={self.site: points})
        if enumerated:
            program = poutine.enum(program, first_available_dim=-3)
        with poutine.block(), pyro.plate("_marginal_samples", K, dim=-2):
            with pyro.plate("_marginal_points", points.shape[0], dim=-1):
                trace = poutine.trace(program).get_trace()
        # log p(z | c, u_k) plus log p(c | ...) of every enumerated site; sampled parents u_k cancel
        # against their proposal (their prior), so they contribute no factor
        total = 0.0
        for name, s in trace.nodes.items():
            if s["type"] != "sample" or not (name == self.site or s["infer"].get("_enumerate_dim") is not None):
                continue
            total = total + s["fn"].log_prob(s["value"])
        total = torch.as_tensor(total)
        while total.dim() > 2:  # enumeration dims, left of the two plates: sum them out exactly
            total = torch.logsumexp(total, 0)
        total = total.expand(K, points.shape[0])
        return (torch.logsumexp(total, 0) - math.log(K)).reshape(batch_shape)


class PriorModuleDensity:
    """The same interface for a :class:`~pyro_decomp.models.priors.Prior` (one site, closed-form density)."""

    exact = True

    def __init__(self, prior) -> None:
        self.prior = prior
        self.log_prob = prior.log_prob

    def sample_with_log_prob(self, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.prior.distribution()
        z = d.rsample(shape) if d.has_rsample else d.sample(shape)
        return z, d.log_prob(z)

    def log_prob_at(self, z: torch.Tensor) -> torch.Tensor:
        return self.log_prob(z)


class ModelSiteDensity:
    """The same interface from the model's own site, for a model that exposes no prior program.

    Only valid when the site has no latent parents: then the model's density there *is* the marginal.
    Draws come from the site's distribution (one per datapoint, repeated to reach ``M``)."""

    exact = True
    log_prob = None  # no density for arbitrary points: the site's parameters are per datapoint

    def __init__(self, model_trace, site: str) -> None:
        parents = []
        for name, s in model_trace.nodes.items():
            if name == site:
                break
            if s["type"] == "sample" and not s["is_observed"] and not pyro.poutine.util.site_is_subsample(s):
                parents.append(name)
        if parents:
            raise ValueError(
                f"the divergence needs the marginal prior log p(z) of site {site!r}, but the model samples "
                f"latent site(s) {parents} before it, so its density at {site!r} is conditional on them. Expose "
                "the prior as a program, model.prior (a callable sampling the latent sites, e.g. a VAE's prior), "
                "so that the ELBO can marginalise them."
            )
        self.fn = model_trace.nodes[site]["fn"]

    def sample_with_log_prob(self, shape: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        P, M = shape
        batch = self.fn.batch_shape
        B = batch[-1] if len(batch) else 1
        repeats = -(-M // B)
        with torch.no_grad():
            z = self.fn.sample((repeats,))  # [repeats, (P,) B, D]
        lp = self.fn.log_prob(z)
        z = z.reshape(repeats, -1, B, z.shape[-1]).expand(repeats, P, B, z.shape[-1])
        lp = lp.reshape(repeats, -1, B).expand(repeats, P, B)
        z = z.permute(1, 0, 2, 3).reshape(P, repeats * B, -1)[:, :M]
        lp = lp.permute(1, 0, 2).reshape(P, repeats * B)[:, :M]
        return z, lp

    def log_prob_at(self, z: torch.Tensor) -> torch.Tensor:
        lp = self.fn.log_prob(z)
        return lp if lp.shape == z.shape[:-1] else lp.expand(z.shape[:-1])
