"""Time per SVI step: ``pyro.infer.SVI`` with :class:`~pyro_decomp.DecompositionELBO` vs plain PyTorch.

Both sides train the same networks (the baseline holds a copy of the weights) on the same batch, in
one process, interleaved: each repeat runs every variant for ``--steps`` steps in turn, and a table
reports the minimum over ``--repeats`` repeats (after ``--warmup`` untimed steps) of the time per step.

Workloads (issue 2, item 7):

* ``pinwheel``: MLP networks (``build_networks("pinwheel")``), n = 400 full batch,
  ``GaussianMixturePrior`` (4 components), ``GaussianLikelihood(scale=None)``, ``InclusiveKL`` with
  M = 400 prior samples, β = 1, α = 3. The baseline is a hand-written loss with the same terms:
  reparameterised sample, Gaussian log-likelihood, Monte Carlo KL ``log q(z|x) - log p_mix(z)``,
  and the inclusive KL (logsumexp over the batch's encoders), plus one ``torch.optim.Adam``. The main
  row's baseline computes the inclusive KL with the same blocked kernel as ``InclusiveKL``
  (``divergences.kl._NormalMixtureLogDensity``), so its ratio is the cost of tracing and Pyro's
  semantics; a reference row times it against the naive hand-written ``[M, B, D]`` computation
  (as the authors' code does it).
  Before timing, the script checks that both losses agree at the same weights and RNG state.
* ``shapes``: 2D-shapes conv networks (``build_networks("shapes")``), batch 64 of random binary
  64×64 images, ``IsotropicGaussianPrior(10)``, ``BernoulliLikelihood(event_dim=3)``, β-VAE β = 4
  (analytic KL).

* ``fashion``: Fashion-MNIST DCGAN networks (``build_networks("fashion_mnist")``, 50 latents), batch 500
  of random 32×32 images in [0, 1], ``SparseMixturePrior(50)`` (γ = 0.8), ``LaplaceLikelihood`` (scale
  0.1), β = 1, α = 1000, ``MMD("per_dim")`` (004 Eq. 10) with M = 500 prior samples (004 §6, App. B).
  The baseline is hand-written PyTorch with the naive per-dimension kernel (one ``[B, B, D]``
  squared-difference tensor per scale and Gram matrix, as the authors' code computes it; the
  ``dd_mmd`` of ``benchmarks/mmd.py``); a reference row runs the same hand-written loss with
  ``pyro_decomp``'s blocked ``mmd_u_statistic`` instead. Target: ratio ≤ 0.4. The loss check compares
  against the hand-written loss with the naive kernel.

Reference rows (``--reference``, on by default) time Pyro's stock ``Trace_ELBO`` and
``TraceMeanField_ELBO`` and ``DecompositionELBO`` on the same model with no divergence, against the
baseline without the divergence term (stock ELBOs cannot add it). ``ratio = ours / baseline``.

Run from the repository root::

    .venv/bin/python benchmarks/step_overhead.py                      # 1 thread and all cores
    .venv/bin/python benchmarks/step_overhead.py --repeats 9 --steps 50 --threads 1
    .venv/bin/python benchmarks/step_overhead.py --workloads pinwheel --validation both
    .venv/bin/python benchmarks/step_overhead.py --device cuda         # synchronises before each clock read
    .venv/bin/python benchmarks/step_overhead.py --threads 1 --clock cpu  # steadier on a busy machine

On Linux with glibc, megabyte temporaries freed each step can be returned to the OS and faulted back
in at the next (2-4 ms of system time per step on the development machine). The inclusive-KL kernel
now keeps its block scratch buffers between calls on the CPU, so neither pinwheel side faults them in
(measured: ~0.1 minor faults per step on both sides, was 150 for the baseline and 440 for ours); the
naive reference baseline's ``[M, B, D]`` tensors still are. To time without any of it, raise glibc's
thresholds::

    MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=2147483647 MALLOC_TOP_PAD_=268435456 \\
        .venv/bin/python benchmarks/step_overhead.py

``--validation`` chooses Pyro's validation setting (``on`` is Pyro's default); ``--optim`` chooses SVI's
optimiser: ``fused`` (default) is :class:`pyro_decomp.optim.Adam`, the one the Trainer uses; ``pyro``
is stock ``pyro.optim.Adam`` (one torch optimiser per parameter tensor), also timed as a reference row. The machine may be shared: only ratios measured in one
process, interleaved, as minima over several repeats mean anything. Targets: pinwheel ≤ 1.1 (the JitDecompositionELBO main row,
1 thread, validation off; issue 13), shapes ≤ 1.1.

Pinwheel results (issue 13), ``--workloads pinwheel --threads 1 --validation off --repeats 9 --clock cpu``
on the shared 2-core development machine (load average 3-4 from other jobs, so absolute times vary by
±20 % between runs), runs of the code before and after alternated; each cell gives the range and the
median of the runs' ratios:

===========================  ================================  ===============================
row                          before (ec8eb3c)                  after
===========================  ================================  ===============================
main row (α=3, InclusiveKL)  1.18-1.45, median 1.38 (13 runs)  1.16-1.39, median 1.25 (6 runs)
ref: DecompositionELBO α=0   1.46-1.89, median 1.76 (6 runs)   1.47-1.54, median 1.51 (4 runs)
ref: Trace_ELBO (stock)      1.52-1.77, median 1.59 (6 runs)   1.37-1.68, median 1.58 (4 runs)
===========================  ================================  ===============================

What is left in the eager rows is the cost the α=0 rows measure, the same as stock ``Trace_ELBO``'s: Pyro's
messages (8 parameter statements, 2 plates, 3 sample sites, each through SVI's and the ELBO's trace
handlers), torch distribution objects and their log densities (≈0.6-0.7 ms per step here). It is removed,
not shrunk, by compiling: ``JitDecompositionELBO`` (issue 13) records the whole loss once with
``pyro.ops.jit.trace``, as ``JitTrace_ELBO`` does for ``Trace_ELBO``, and checks the compiled loss against
the eager one at each compilation. Three runs of the command above, with every other job on the machine
paused (SIGSTOP) for the duration:

===============================================  ==================
row                                              ratio (3 runs)
===============================================  ==================
main row, eager DecompositionELBO                1.20, 1.28, 1.27
main row, JitDecompositionELBO                   1.06, 1.10, 1.10
ref: DecompositionELBO α=0                       1.43, 1.44, 1.44
ref: JitDecompositionELBO α=0                    1.07, 1.08, 1.03
ref: Trace_ELBO (stock)                          1.44, 1.47, 1.38
ref: JitTrace_ELBO (stock)                       1.04, 1.05, 1.03
===============================================  ==================

With only the baseline, the eager step and the compiled step interleaved, the compiled step is 0.99-1.04x.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import time
import warnings
from collections.abc import Callable

import pyro
import torch
import torch.nn.functional as F

import pyro_decomp
from pyro_decomp import DecompositionELBO, JitDecompositionELBO
from pyro_decomp.divergences import MMD, InclusiveKL, PerDimensionIMQKernel, mmd_u_statistic
from pyro_decomp.divergences.kl import _NormalMixtureLogDensity
from pyro_decomp.models.likelihoods import BernoulliLikelihood, GaussianLikelihood, LaplaceLikelihood
from pyro_decomp.models.networks import build_networks
from pyro_decomp.models.priors import GaussianMixturePrior, IsotropicGaussianPrior, SparseMixturePrior
from pyro_decomp.models.vae import VAE

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


# ------------------------------------------------------------------------------------------ baselines
def _normal_log_prob(x: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return -((x - loc) ** 2) / (2 * scale**2) - scale.log() - _LOG_SQRT_2PI


class PinwheelBaseline:
    """Hand-written pinwheel loss: -log p(x|z) + β [log q(z|x) - log p(z)] + α n KL(p || q_batch)."""

    def __init__(self, encoder, decoder, prior: GaussianMixturePrior, beta, alpha, num_prior_samples, blocked=True):
        self.encoder, self.decoder = encoder, decoder
        # blocked: the inclusive KL's log q(z_p) through pyro_decomp's blocked kernel (the one InclusiveKL
        # uses), so that ours/baseline measures tracing overhead; False: the naive [M, B, D] tensor
        self.blocked = blocked
        self.means = prior.means.clone()
        self.sigma = math.sqrt(prior.variance)
        self.weights = prior.weights.clone()
        self.log_weights = self.weights.log()
        self.beta, self.alpha, self.M = beta, alpha, num_prior_samples

    def parameters(self):
        return [*self.encoder.parameters(), *self.decoder.parameters()]

    def _mixture_log_prob(self, z: torch.Tensor) -> torch.Tensor:  # z [..., D] -> [...]
        comp = _normal_log_prob(z.unsqueeze(-2), self.means, torch.tensor(self.sigma)).sum(-1)
        return torch.logsumexp(comp + self.log_weights, -1)

    def _prior_sample(self, M: int) -> torch.Tensor:
        # same draws, in the same order, as torch's MixtureSameFamily.sample
        with torch.no_grad():
            idx = torch.multinomial(self.weights.unsqueeze(0), M, True).T  # [M, 1]
            comp = torch.normal(self.means.expand(M, *self.means.shape), self.sigma)  # [M, C, D]
            return torch.gather(comp, 1, idx.unsqueeze(-1).expand(M, 1, comp.shape[-1])).squeeze(1)

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        loc, scale = self.encoder(x)
        z = loc + scale * torch.empty_like(loc).normal_()
        params = self.decoder(z)
        mu, s = params[..., 0, :], F.softplus(params[..., 1, :]) + 1e-4
        log_lik = _normal_log_prob(x, mu, s).sum()
        kl = (_normal_log_prob(z, loc, scale).sum(-1) - self._mixture_log_prob(z)).sum()
        loss = -log_lik + self.beta * kl
        if self.alpha:
            zp = self._prior_sample(self.M)  # [M, D]
            if self.blocked:
                log_q = _NormalMixtureLogDensity.apply(zp[None], loc[None], scale[None])[0]  # [M]
            else:
                log_q = _normal_log_prob(zp.unsqueeze(-2), loc, scale).sum(-1)  # [M, B]
                log_q = torch.logsumexp(log_q, -1) - math.log(x.shape[0])
            d = (self._mixture_log_prob(zp) - log_q).mean()
            loss = loss + self.alpha * x.shape[0] * d
        return loss


class ShapesBaseline:
    """Hand-written β-VAE loss: Bernoulli reconstruction + β analytic KL to N(0, I)."""

    def __init__(self, encoder, decoder, beta):
        self.encoder, self.decoder, self.beta = encoder, decoder, beta

    def parameters(self):
        return [*self.encoder.parameters(), *self.decoder.parameters()]

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        loc, scale = self.encoder(x)
        z = loc + scale * torch.empty_like(loc).normal_()
        rec = F.binary_cross_entropy_with_logits(self.decoder(z), x, reduction="sum")
        kl = 0.5 * (scale**2 + loc**2 - 1.0).sum() - scale.log().sum()
        return rec + self.beta * kl


_FASHION_SIGMAS = (0.2, 0.4, 1.0, 2.0, 4.0, 10.0)  # 004 Eq. 10


def naive_per_dim_mmd(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Unbiased MMD² with 004 Eq. 10, computed naively: for each scale, each of the three Gram matrices
    builds the ``[..., B, B, D]`` squared differences (how the authors' code does it)."""

    def gram(a, b):
        out = 0.0
        for s in _FASHION_SIGMAS:
            d2 = (a.unsqueeze(-2) - b.unsqueeze(-3)) ** 2
            out = out + (s / (s + d2)).sum(-1)
        return out

    n, m = x.shape[-2], y.shape[-2]
    kxx, kyy, kxy = gram(x, x), gram(y, y), gram(x, y)
    sxx = kxx.sum((-1, -2)) - kxx.diagonal(dim1=-2, dim2=-1).sum(-1)
    syy = kyy.sum((-1, -2)) - kyy.diagonal(dim1=-2, dim2=-1).sum(-1)
    return sxx / (n * (n - 1)) + syy / (m * (m - 1)) - 2.0 * kxy.mean((-1, -2))


class FashionBaseline:
    """Hand-written sparsity loss (004 Eq. 7): -log p(x|z) + β [log q(z|x) - log p(z)] + α B MMD²(q, p)."""

    def __init__(self, encoder, decoder, prior: SparseMixturePrior, beta, alpha, mmd, lik_scale=0.1):
        self.encoder, self.decoder = encoder, decoder
        self.prior_dist = prior.distribution()  # a torch MixtureSameFamily, as plain PyTorch would write
        self.beta, self.alpha, self.mmd, self.lik_scale = beta, alpha, mmd, lik_scale

    def parameters(self):
        return [*self.encoder.parameters(), *self.decoder.parameters()]

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        loc, scale = self.encoder(x)
        z = loc + scale * torch.empty_like(loc).normal_()
        mu = self.decoder(z)
        log_lik = (-(x - mu).abs() / self.lik_scale - math.log(2 * self.lik_scale)).sum()
        kl = (_normal_log_prob(z, loc, scale).sum(-1) - self.prior_dist.log_prob(z)).sum()
        loss = -log_lik + self.beta * kl
        if self.alpha:
            with torch.no_grad():
                zp = self.prior_dist.sample((1, x.shape[0]))  # [1, M, D], same draws as the ELBO's
            loss = loss + self.alpha * x.shape[0] * self.mmd(z.unsqueeze(0), zp).mean()
        return loss


def _torch_stepper(baseline) -> Callable[[torch.Tensor], float]:
    optim = torch.optim.Adam(baseline.parameters(), lr=1e-3)

    def step(x):
        optim.zero_grad(set_to_none=True)
        loss = baseline.loss(x)
        loss.backward()
        optim.step()
        return loss.item()  # SVI.step returns a float too

    return step


def _svi_stepper(vae, loss, optim: str) -> Callable[[torch.Tensor], float]:
    """``optim``: "fused" (pyro_decomp.optim.Adam, what the Trainer uses), "pyro" or "pyro-foreach"."""
    opts = {"lr": 1e-3}
    if optim == "fused":
        optimizer = pyro_decomp.optim.Adam(opts)
    else:
        optimizer = pyro.optim.Adam({**opts, "foreach": True} if optim == "pyro-foreach" else opts)
    svi = pyro.infer.SVI(vae.model, vae.guide, optimizer, loss=loss)
    return svi.step


# ------------------------------------------------------------------------------------------ workloads
def _check_agreement(name: str, elbo, vae, baseline, x: torch.Tensor) -> None:
    """Both losses agree at the same weights and RNG state, or the timing would compare different work."""
    elbo.loss(vae.model, vae.guide, x)  # a first call may guess max_plate_nesting
    pyro.set_rng_seed(123)
    ours = elbo.differentiable_loss(vae.model, vae.guide, x).item()
    pyro.set_rng_seed(123)
    theirs = baseline.loss(x).item()
    print(
        f"{name} loss check: DecompositionELBO {ours:.6f}  hand-written {theirs:.6f}  "
        f"rel.diff {abs(ours - theirs) / abs(theirs):.1e}"
    )
    if not math.isclose(ours, theirs, rel_tol=1e-4):
        raise SystemExit(f"{name}: the hand-written baseline and DecompositionELBO disagree")


def _copy_nets(encoder, decoder, device):
    return copy.deepcopy(encoder).to(device), copy.deepcopy(decoder).to(device)


def pinwheel(args, device):
    torch.manual_seed(0)
    encoder, decoder = build_networks("pinwheel")
    prior = GaussianMixturePrior(2, n_components=4)
    base_nets = _copy_nets(encoder, decoder, device)
    ref_nets = _copy_nets(encoder, decoder, device)
    vae = VAE(prior, decoder, GaussianLikelihood(scale=None), encoder).to(device)
    x = torch.randn(400, 2, device=device)
    beta, alpha, M = 1.0, 3.0, 400
    elbo = DecompositionELBO(beta=beta, alpha=alpha, divergence=InclusiveKL(num_prior_samples=M))
    baseline = PinwheelBaseline(*base_nets, vae.prior, beta, alpha, M)

    naive = PinwheelBaseline(*_copy_nets(encoder, decoder, device), vae.prior, beta, alpha, M, blocked=False)

    _check_agreement("pinwheel", elbo, vae, baseline, x)
    _check_agreement("pinwheel (naive baseline)", elbo, vae, naive, x)

    ours = _svi_stepper(vae, elbo, args.optim)
    jit_elbo = JitDecompositionELBO(beta=beta, alpha=alpha, divergence=InclusiveKL(num_prior_samples=M))
    _check_agreement("pinwheel (compiled)", jit_elbo, vae, baseline, x)
    base_step = _torch_stepper(baseline)
    variants = {
        "pinwheel (α=3, InclusiveKL)": (base_step, ours),
        "pinwheel (α=3, InclusiveKL) JitDecompositionELBO": (base_step, _svi_stepper(vae, jit_elbo, args.optim)),
    }
    if args.reference:
        variants["pinwheel ref: same, naive [M,B,D] baseline"] = (_torch_stepper(naive), ours)
        variants["pinwheel ref: same, stock pyro.optim.Adam"] = (
            _torch_stepper(PinwheelBaseline(*_copy_nets(encoder, decoder, device), vae.prior, beta, alpha, M)),
            _svi_stepper(vae, elbo, "pyro"),
        )
        plain = _torch_stepper(PinwheelBaseline(*ref_nets, vae.prior, beta, 0.0, M))
        for name, loss in [
            ("ref: DecompositionELBO α=0", DecompositionELBO(beta=beta)),
            ("ref: JitDecompositionELBO α=0", JitDecompositionELBO(beta=beta)),
            ("ref: Trace_ELBO", pyro.infer.Trace_ELBO()),
            ("ref: JitTrace_ELBO", pyro.infer.JitTrace_ELBO(ignore_jit_warnings=True)),
            ("ref: TraceMeanField_ELBO", pyro.infer.TraceMeanField_ELBO()),
        ]:
            variants["pinwheel " + name] = (plain, _svi_stepper(vae, loss, args.optim))
    return x, variants


def shapes(args, device):
    torch.manual_seed(0)
    encoder, decoder = build_networks("shapes")
    base_nets = _copy_nets(encoder, decoder, device)
    vae = VAE(IsotropicGaussianPrior(10), decoder, BernoulliLikelihood(event_dim=3), encoder).to(device)
    x = (torch.rand(64, 1, 64, 64, device=device) < 0.5).float()
    beta = 4.0
    elbo = DecompositionELBO(beta=beta)
    baseline = ShapesBaseline(*base_nets, beta)
    _check_agreement("shapes", elbo, vae, baseline, x)
    variants = {"shapes (β-VAE β=4)": (_torch_stepper(baseline), _svi_stepper(vae, elbo, args.optim))}
    if args.reference:
        ref_base = _torch_stepper(ShapesBaseline(*_copy_nets(encoder, decoder, device), 1.0))
        variants["shapes ref: TraceMeanField_ELBO (β=1)"] = (
            ref_base,
            _svi_stepper(vae, pyro.infer.TraceMeanField_ELBO(), args.optim),
        )
    return x, variants


def fashion(args, device):
    torch.manual_seed(0)
    D, B, beta, alpha = 50, 500, 1.0, 1000.0
    encoder, decoder = build_networks("fashion_mnist", latent_dim=D)
    prior = SparseMixturePrior(D, gamma=0.8)
    vae = VAE(prior, decoder, LaplaceLikelihood(event_dim=3, scale=0.1), encoder).to(device)
    x = torch.rand(B, 1, 32, 32, device=device)
    elbo = DecompositionELBO(beta=beta, alpha=alpha, divergence=MMD("per_dim", num_prior_samples=B))
    naive = FashionBaseline(*_copy_nets(encoder, decoder, device), vae.prior, beta, alpha, naive_per_dim_mmd)
    _check_agreement("fashion", elbo, vae, naive, x)
    naive_step = _torch_stepper(naive)
    variants = {"fashion (α=1000, per-dim MMD) vs naive kernel": (naive_step, _svi_stepper(vae, elbo, args.optim))}
    if args.reference:
        kernel = PerDimensionIMQKernel()
        nets = _copy_nets(encoder, decoder, device)
        blocked = FashionBaseline(*nets, vae.prior, beta, alpha, lambda a, b: mmd_u_statistic(a, b, kernel))
        variants["fashion ref: hand-written with the blocked MMD"] = (naive_step, _torch_stepper(blocked))
        plain = FashionBaseline(*_copy_nets(encoder, decoder, device), vae.prior, beta, 0.0, None)
        variants["fashion ref: DecompositionELBO α=0 vs hand-written α=0"] = (
            _torch_stepper(plain),
            _svi_stepper(vae, DecompositionELBO(beta=beta), args.optim),
        )
    return x, variants


WORKLOADS = {"pinwheel": pinwheel, "shapes": shapes, "fashion": fashion}


# ------------------------------------------------------------------------------------------ timing
def _time(step, x, n: int, sync: Callable[[], None], clock: Callable[[], float] = time.perf_counter) -> float:
    sync()
    t0 = clock()
    for _ in range(n):
        step(x)
    sync()
    return (clock() - t0) / n


def run(args) -> list[tuple]:
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for validation in args.validation:
            pyro.enable_validation(validation)
            for wname in args.workloads:
                pyro.clear_param_store()  # workloads reuse parameter names
                x, variants = WORKLOADS[wname](args, device)
                # one timer per distinct callable (reference rows may share a baseline)
                steppers = {}
                for base, ours in variants.values():
                    steppers.setdefault(id(base), base)
                    steppers.setdefault(id(ours), ours)
                steps = {"shapes": args.conv_steps, "fashion": args.fashion_steps}.get(wname, args.steps)
                warmup = {"shapes": max(2, args.warmup // 5), "fashion": 1}.get(wname, args.warmup)
                for step in steppers.values():
                    _time(step, x, warmup, sync)
                best = {k: math.inf for k in steppers}
                keys = list(steppers)
                for r in range(args.repeats):
                    order = keys[r % len(keys) :] + keys[: r % len(keys)]  # rotate who goes first
                    for k in order:
                        best[k] = min(best[k], _time(steppers[k], x, steps, sync, clock))
                for label, (base, ours) in variants.items():
                    b, o = best[id(base)] * 1e3, best[id(ours)] * 1e3
                    rows.append((label, threads, "on" if validation else "off", b, o, o / b))
    return rows


def main(argv=None) -> None:
    # torch 2.14 marks torch.jit.trace deprecated; the JIT rows (ours and stock JitTrace_ELBO) compile with it
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.trace.* is deprecated", category=FutureWarning)
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=7, help="timed repeats per variant (min is reported)")
    p.add_argument("--steps", type=int, default=20, help="SVI steps per timed repeat (pinwheel)")
    p.add_argument("--conv-steps", type=int, default=3, help="SVI steps per timed repeat (shapes)")
    p.add_argument("--fashion-steps", type=int, default=1, help="SVI steps per timed repeat (fashion)")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps per variant first")
    p.add_argument(
        "--threads", type=int, nargs="+", default=None, help="torch thread counts (default: 1 and all cores)"
    )
    p.add_argument("--workloads", nargs="+", choices=sorted(WORKLOADS), default=["pinwheel", "shapes", "fashion"])
    p.add_argument(
        "--validation",
        choices=["on", "off", "both"],
        default="on",
        help="pyro.enable_validation (Pyro's default is on)",
    )
    p.add_argument(
        "--optim",
        choices=("fused", "pyro", "pyro-foreach"),
        default="fused",
        help="SVI's optimiser: pyro_decomp.optim.Adam (fused, the Trainer's) or pyro.optim.Adam",
    )
    p.add_argument(
        "--no-reference",
        dest="reference",
        action="store_false",
        help="skip the stock Trace_ELBO / TraceMeanField_ELBO reference rows",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="wall: perf_counter; cpu: process CPU time (steadier on a loaded machine, "
        "but with several threads it sums their CPU time)",
    )
    args = p.parse_args(argv)
    if args.threads is None:
        args.threads = sorted({1, os.cpu_count() or 1})
    args.validation = {"on": [True], "off": [False], "both": [True, False]}[args.validation]
    rows = run(args)
    w = max(len(r[0]) for r in rows)
    print(
        f"\nms per step, min of {args.repeats} interleaved repeats ({args.clock} clock, "
        f"torch {torch.__version__}, pyro {pyro.__version__})"
    )
    print(f"{'workload':<{w}}  threads  valid.  baseline ms  ours ms  ratio")
    for label, threads, val, b, o, ratio in rows:
        print(f"{label:<{w}}  {threads:>7}  {val:>6}  {b:>11.3f}  {o:>7.3f}  {ratio:>5.2f}")


if __name__ == "__main__":
    main()
