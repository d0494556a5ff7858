"""GPU readiness: the conv, Fashion-MNIST and MMD workloads on CUDA, with steps/s and a projection.

Every clock read is preceded by ``torch.cuda.synchronize()``, so the times include the GPU work. Each
row is the minimum over ``--repeats`` interleaved repeats of ``--steps`` steps, after warm-up steps.

* ``conv``: the thesis-5.3 model (003 Table 5.2 Burgess networks, dSprites-sized binary 64×64 images,
  latent 10, batch from the experiment config, Bernoulli likelihood, β-VAE): SVI with
  ``DecompositionELBO`` and the fused Adam, next to the hand-written PyTorch step
  (``step_overhead.ShapesBaseline`` on the same networks). From its steps/s the script projects the
  training time of ``pyro-decomp sweep thesis-5.3`` at paper size (every run's ``train.steps`` from the
  shipped config: 4 β × 10 seeds × 345,600 steps); data loading, checkpoints and the disentanglement
  metrics are not included.
* ``fashion``: the Fashion-MNIST sparsity step of ``step_overhead.py`` (B = 500, 50 latents, sparse
  prior, per-dimension MMD with α = 1000, Laplace likelihood) against the hand-written step with the
  naive per-dimension kernel.
* ``mmd``: the per-dimension MMD forward + backward (``benchmarks/mmd.py``), ours and the naive one, at
  B = 500, 1000, 2000 and D = 50.

Without CUDA it prints one line and exits with code 2 (``--device cpu`` runs the same code on the CPU,
to check the script itself)::

    .venv/bin/python benchmarks/gpu.py
    .venv/bin/python benchmarks/gpu.py --workloads mmd --repeats 3
    .venv/bin/python benchmarks/gpu.py --device cpu --quick      # a dry run of the script on the CPU
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import pyro
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmark scripts

import mmd as mmd_bench  # noqa: E402
import step_overhead  # noqa: E402

from pyro_decomp import DecompositionELBO  # noqa: E402
from pyro_decomp.experiments.sweep import load_sweep  # noqa: E402
from pyro_decomp.models.likelihoods import BernoulliLikelihood  # noqa: E402
from pyro_decomp.models.networks import build_networks  # noqa: E402
from pyro_decomp.models.priors import IsotropicGaussianPrior  # noqa: E402
from pyro_decomp.models.vae import VAE  # noqa: E402


def _best(fns: dict, x, steps: int, warmup: int, repeats: int, sync) -> dict[str, float]:
    """Seconds per step of each ``fns[name](x)``: minimum over interleaved repeats."""
    for fn in fns.values():
        for _ in range(warmup):
            fn(x)
    sync()
    best = {k: math.inf for k in fns}
    keys = list(fns)
    for r in range(repeats):
        for k in keys[r % len(keys) :] + keys[: r % len(keys)]:
            sync()
            t0 = time.perf_counter()
            for _ in range(steps):
                fns[k](x)
            sync()
            best[k] = min(best[k], (time.perf_counter() - t0) / steps)
    return best


def thesis_53_plan(quick: bool) -> tuple[int, int, int, int]:
    """``(runs, total steps, batch size, latent dim)`` of ``thesis-5.3`` at paper size, from its config."""
    spec = load_sweep("thesis-5.3", size="smoke" if quick else "paper")
    cfgs = [run.config for run in spec.runs]
    batch = {c["train"]["batch_size"] for c in cfgs}
    latent = {c["model"]["latent_dim"] for c in cfgs}
    if len(batch) != 1 or len(latent) != 1 or {c["model"]["networks"] for c in cfgs} != {"burgess"}:
        raise SystemExit("gpu.py: thesis-5.3 no longer has one network, batch size and latent size; update the script")
    return len(cfgs), sum(c["train"]["steps"] for c in cfgs), batch.pop(), latent.pop()


def conv(args, device, sync) -> list[str]:
    runs, total_steps, batch, latent = thesis_53_plan(args.quick)
    pyro.clear_param_store()
    torch.manual_seed(0)
    encoder, decoder = build_networks("burgess", latent_dim=latent)
    base_nets = step_overhead._copy_nets(encoder, decoder, device)
    vae = VAE(IsotropicGaussianPrior(latent), decoder, BernoulliLikelihood(event_dim=3), encoder).to(device)
    x = (torch.rand(batch, 1, 64, 64, device=device) < 0.5).float()
    ours = step_overhead._svi_stepper(vae, DecompositionELBO(beta=4.0), "fused")
    theirs = step_overhead._torch_stepper(step_overhead.ShapesBaseline(*base_nets, 4.0))
    best = _best({"ours": ours, "torch": theirs}, x, args.steps, args.warmup, args.repeats, sync)
    sps = 1.0 / best["ours"]
    hours = total_steps / sps / 3600
    return [
        f"conv (thesis-5.3 model: Burgess nets, batch {batch}, latent {latent}, β-VAE)  ours {sps:8.1f} steps/s   "
        f"hand-written {1 / best['torch']:8.1f} steps/s   ratio {best['ours'] / best['torch']:.2f}",
        f"  projected training time of thesis-5.3 ({'smoke' if args.quick else 'paper'} size: {runs} runs, "
        f"{total_steps:,} steps): {hours:.1f} h on one device, one run at a time "
        "(without data loading, checkpoints, metrics)",
    ]


def fashion(args, device, sync) -> list[str]:
    pyro.clear_param_store()
    ns = argparse.Namespace(optim="fused", reference=False)
    x, variants = step_overhead.fashion(ns, device)
    theirs, ours = next(iter(variants.values()))
    best = _best({"ours": ours, "torch": theirs}, x, args.steps, args.warmup, args.repeats, sync)
    return [
        f"fashion (B=500, 50 latents, per-dim MMD α=1000)  ours {1 / best['ours']:8.2f} steps/s   "
        f"hand-written naive kernel {1 / best['torch']:8.2f} steps/s   ratio {best['ours'] / best['torch']:.2f}"
    ]


def mmd(args, device, sync) -> list[str]:
    lines = []
    sizes = [200, 400] if args.quick else [500, 1000, 2000]
    for B in sizes:
        x, y = mmd_bench.inputs(B, 50, device)
        fns = {k: (lambda _x, f=mmd_bench.VARIANTS[k]: mmd_bench.fwd_bwd(f, x, y)) for k in ("ours", "dd")}
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        best = _best(fns, None, args.steps, args.warmup, args.repeats, sync)
        mem = ""
        if device.type == "cuda":
            mem = f"   peak CUDA memory (both) {torch.cuda.max_memory_allocated() / 2**20:.0f} MB"
        lines.append(
            f"per-dim MMD fwd+bwd B={B:<5} D=50  ours {best['ours'] * 1e3:8.2f} ms   "
            f"naive {best['dd'] * 1e3:8.2f} ms   speed-up {best['dd'] / best['ours']:6.1f}{mem}"
        )
    return lines


WORKLOADS = {"conv": conv, "fashion": fashion, "mmd": mmd}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workloads", nargs="+", choices=sorted(WORKLOADS), default=["conv", "fashion", "mmd"])
    p.add_argument("--device", default="cuda", help="cuda (default) or cuda:N; cpu for a dry run")
    p.add_argument("--steps", type=int, default=5, help="steps per timed repeat")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per variant first")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats (min is reported)")
    p.add_argument("--quick", action="store_true", help="tiny settings (a dry run): smoke-size projection")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("benchmarks/gpu.py: CUDA is not available here (torch.cuda.is_available() is False); "
              "run it on a machine with a GPU, or pass --device cpu for a dry run.")  # fmt: skip
        return 2
    if args.quick:
        args.steps, args.warmup, args.repeats = 1, 1, 1
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device {name}, torch {torch.__version__}, pyro {pyro.__version__}; min of {args.repeats} repeats")
    pyro.enable_validation(False)  # the Trainer's default for speed (train.validate: false)
    for w in args.workloads:
        for line in WORKLOADS[w](args, device, sync):
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
