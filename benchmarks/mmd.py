"""Per-dimension MMD (004 Eq. 10): time and memory of forward + backward, ours against a naive baseline.

The baseline ("DD", as the authors' code computes it) is written here: for each scale σ_l it builds the
``[B, B, D]`` squared differences and sums ``σ_l / (σ_l + δ²)`` over the dimensions, for each of the
three Gram matrices, and forms the same unbiased U-statistic; autograd differentiates it. Ours is
``mmd_u_statistic(x, y, PerDimensionIMQKernel())``, which works in cache-sized blocks.

Both run in one process, interleaved (each repeat times every variant and size in turn, in a rotating
order), for each thread count;
the table reports the minimum over ``--repeats`` of one forward + backward pass (``x`` [1, B, D] needs a
gradient, as the encoder samples do; the prior samples ``y`` do not). ``speed-up = DD / ours``.

Peak extra memory is measured in a fresh subprocess per (variant, B): the process's peak resident set
(``VmHWM``, which counts what torch's CPU allocator takes from the OS) is reset to the current one after
building the inputs (``/proc/self/clear_refs``, Linux), and read again after one forward + backward; the
table reports the difference. Without ``/proc`` it falls back to ``ru_maxrss``, which cannot be reset
and so can hide a peak lower than that of ``import torch``. (``tracemalloc`` does not see torch's
allocations.) On CUDA it also reports ``torch.cuda.max_memory_allocated`` above the inputs.

Run from the repository root::

    .venv/bin/python benchmarks/mmd.py                       # 1 and 2 threads, B = 500, 1000, 2000
    .venv/bin/python benchmarks/mmd.py --dd-sizes 500 1000   # also time DD at B = 1000 (~15 s a pass)
    .venv/bin/python benchmarks/mmd.py --device cuda         # synchronises before each clock read

Targets (issue 13): speed-up ≥ 10 at B = 500, D = 50; ours(B = 1000) / ours(B = 500) ≤ 4.5; peak extra
memory of ours at B = 2000 ≤ 200 MB.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time

import torch

from pyro_decomp.divergences import IMQKernel, PerDimensionIMQKernel, RBFKernel, mmd_u_statistic

SIGMAS = (0.2, 0.4, 1.0, 2.0, 4.0, 10.0)  # 004 Eq. 10


def dd_gram(a: torch.Tensor, b: torch.Tensor, sigmas=SIGMAS) -> torch.Tensor:
    """Naive per-dimension kernel: one ``[..., n, m, D]`` squared-difference tensor per scale."""
    out = 0.0
    for s in sigmas:
        d2 = (a.unsqueeze(-2) - b.unsqueeze(-3)) ** 2
        out = out + (s / (s + d2)).sum(-1)
    return out


def dd_mmd(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The unbiased U-statistic from the three naive Gram matrices."""
    n, m = x.shape[-2], y.shape[-2]
    kxx, kyy, kxy = dd_gram(x, x), dd_gram(y, y), dd_gram(x, y)
    sxx = kxx.sum((-1, -2)) - kxx.diagonal(dim1=-2, dim2=-1).sum(-1)
    syy = kyy.sum((-1, -2)) - kyy.diagonal(dim1=-2, dim2=-1).sum(-1)
    return sxx / (n * (n - 1)) + syy / (m * (m - 1)) - 2.0 * kxy.mean((-1, -2))


VARIANTS = {
    "dd": dd_mmd,
    "ours": lambda x, y: mmd_u_statistic(x, y, PerDimensionIMQKernel()),
    # the Euclidean kernels go through [B, B] distance matrices (never B x B x D); memory rows only
    "imq": lambda x, y: mmd_u_statistic(x, y, IMQKernel()),
    "rbf": lambda x, y: mmd_u_statistic(x, y, RBFKernel()),
}


def inputs(B: int, D: int, device, dtype=torch.float32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, B, D, generator=g, dtype=dtype).to(device).requires_grad_()
    y = (0.2 * torch.randn(1, B, D, generator=g, dtype=dtype)).to(device)  # a narrower "prior"
    return x, y


def fwd_bwd(fn, x, y) -> torch.Tensor:
    x.grad = None
    v = fn(x, y).sum()
    v.backward()
    return v.detach()


def check_agreement(device) -> None:
    """Ours and DD agree in value and gradient (float64, B = 120, D = 7), else the timing is meaningless."""
    x, y = inputs(120, 7, device, torch.float64, seed=1)
    v_dd = fwd_bwd(dd_mmd, x, y)
    g_dd = x.grad.clone()
    v_ours = fwd_bwd(VARIANTS["ours"], x, y)
    dv, dg = abs(float(v_dd - v_ours)), float((g_dd - x.grad).abs().max())
    print(f"agreement (float64, B=120, D=7): |value diff| {dv:.1e}  max |grad diff| {dg:.1e}")
    if dv > 1e-6 or dg > 1e-6:
        raise SystemExit("ours and the naive baseline disagree")


def _time(fn, x, y, sync, clock) -> float:
    sync()
    t0 = clock()
    fwd_bwd(fn, x, y)
    sync()
    return clock() - t0


def time_table(args, device) -> list[tuple]:
    """Per thread count, every (variant, B) pair is timed once per repeat, in a rotating order, so that
    a busy spell on a shared machine cannot favour one size or variant; minima over repeats."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        data = {B: inputs(B, args.dim, device) for B in args.sizes}
        jobs = [(name, B) for B in args.sizes for name in ["ours"] + (["dd"] if B in args.dd_sizes else [])]
        for name, B in jobs:  # warm-up
            _time(VARIANTS[name], *data[B], sync, clock)
        best = {job: math.inf for job in jobs}
        for r in range(args.repeats):
            for name, B in jobs[r % len(jobs) :] + jobs[: r % len(jobs)]:
                best[name, B] = min(best[name, B], _time(VARIANTS[name], *data[B], sync, clock))
        rows += [(threads, B, best.get(("dd", B)), best["ours", B]) for B in args.sizes]
    return rows


def _peak_rss_kib() -> int:
    """The process's peak resident set (KiB): ``VmHWM`` on Linux, else ``ru_maxrss``."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS


def _reset_peak_rss() -> bool:
    """Reset the peak resident set to the current one (Linux >= 4.0), so that the peak of ``import
    torch`` does not hide the peak of the measured call."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def child_peak(variant: str, B: int, D: int, device: str) -> None:
    """In a fresh process: peak RSS growth (MB) of one forward + backward, printed as JSON."""
    torch.set_num_threads(1)
    x, y = inputs(B, D, torch.device(device))
    reset = _reset_peak_rss()
    before = _peak_rss_kib()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    fwd_bwd(VARIANTS[variant], x, y)
    out = {"rss_mb": (_peak_rss_kib() - before) / 1024}
    if not reset:
        out["note"] = "peak not reset: a lower bound"
    if device == "cuda":
        out["cuda_mb"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    print(json.dumps(out))


def peak_mb(variant: str, B: int, D: int, device: str) -> dict:
    cmd = [sys.executable, __file__, "--child", variant, str(B), str(D), device]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if res.returncode != 0:
        return {"error": res.stderr.strip().splitlines()[-1] if res.stderr.strip() else f"exit {res.returncode}"}
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[500, 1000, 2000], help="batch sizes B (ours)")
    p.add_argument("--dd-sizes", type=int, nargs="*", default=[500], help="batch sizes at which DD is timed too")
    p.add_argument("--dim", type=int, default=50, help="latent dimension D (Fashion-MNIST: 50)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats (min is reported)")
    p.add_argument("--threads", type=int, nargs="+", default=None, help="torch thread counts (default 1 and 2)")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--memory",
        nargs="*",
        default=["ours:2000", "imq:2000", "rbf:2000", "dd:500", "ours:500"],
        help="VARIANT:B pairs whose peak extra memory is measured in a fresh subprocess (variants: dd, ours, imq, rbf)",
    )
    p.add_argument("--child", nargs=4, metavar=("VARIANT", "B", "D", "DEVICE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        variant, B, D, device = args.child
        child_peak(variant, int(B), int(D), device)
        return
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("benchmarks/mmd.py: --device cuda, but CUDA is not available here; run on a machine with a GPU.")
        raise SystemExit(2)
    if args.threads is None:
        args.threads = [1, 2] if device.type == "cpu" else [1]
    check_agreement(device)
    rows = time_table(args, device)
    print(
        f"\nper-dimension MMD, D = {args.dim}, forward + backward, ms, min of {args.repeats} interleaved repeats "
        f"({args.clock} clock, {device.type}, torch {torch.__version__})"
    )
    print("threads      B      DD ms    ours ms  speed-up  ours(B)/ours(B/2)")
    for threads, B, dd, ours in rows:
        prev = next((o for t, b, _, o in rows if t == threads and 2 * b == B), None)
        growth = f"{ours / prev:17.2f}" if prev else f"{'':>17}"
        dd_s, sp = (f"{dd * 1e3:10.1f}", f"{dd / ours:9.1f}") if dd is not None else (f"{'-':>10}", f"{'-':>9}")
        print(f"{threads:>7}  {B:>5}  {dd_s}  {ours * 1e3:9.1f}  {sp}  {growth}")
    if args.memory:
        print(f"\npeak extra memory of one forward + backward, MB (fresh subprocess, VmHWM), D = {args.dim}")
        for spec in args.memory:
            variant, B = spec.split(":")
            res = peak_mb(variant, int(B), args.dim, args.device)
            shown = "  ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in res.items())
            print(f"  {variant:<5} B = {int(B):>5}: {shown}")


if __name__ == "__main__":
    main()
