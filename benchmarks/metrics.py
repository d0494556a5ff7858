"""Seconds per metric at the default (SPEC §6) sizes on dSprites with a cheap representation.

Representation: image moments of the rendered sprite (centroid x and y, square root of the area,
and the two second-moment orientation features), a real function of the images that costs almost
nothing, so the timings show the metrics' own cost plus rendering.

Baselines, run in this process and interleaved with ours:

- BetaVAE and FactorVAE: the reference implementations' structure, one rendering and one
  representation call per vote (64 or 2 x 64 images), with the same classifier at the end;
- the other metrics: "render+encode only", sampling the same number of points and encoding them
  without any metric computation: the floor a metric cannot beat. Ratio = baseline / ours, so a ratio
  near 1 means the metric costs little beyond its data.

Each cell is the minimum of ``--repeats`` timings after a warm-up (the heavy tree-based metrics are
slow, so lower ``--repeats`` or use ``--scale`` to shrink every size), with 1 thread and all threads.

    python benchmarks/metrics.py [--repeats 5] [--scale 1.0] [--metrics mig,beta_vae,...]
"""

from __future__ import annotations

import argparse
import math
import os
import time

import numpy as np
import torch

from pyro_decomp.data.dsprites import DSprites
from pyro_decomp.metrics import (
    compute_beta_vae,
    compute_dci,
    compute_downstream,
    compute_factor_vae,
    compute_hoyer,
    compute_mig,
    compute_modularity_explicitness,
    compute_sap,
    compute_unsupervised,
)
from pyro_decomp.metrics._utils import represent
from pyro_decomp.metrics.beta_vae import _beta_vae_features, _compute_beta_vae
from pyro_decomp.metrics.factor_vae import _compute_factor_vae, _factor_vae_argmin

GRID = torch.arange(64, dtype=torch.float32) + 0.5


def moments(images: torch.Tensor) -> torch.Tensor:
    """``[B, 1, 64, 64] -> [B, 5]``: centroid x, y, sqrt(area), mu20 - mu02, 2 mu11 (normalised)."""
    img = images[:, 0].float()
    mass = img.sum((1, 2)).clamp_min(1.0)
    col_profile, row_profile = img.sum(1), img.sum(2)  # [B, 64] each
    cx = col_profile @ GRID / mass
    cy = row_profile @ GRID / mass
    mu20 = col_profile @ GRID**2 / mass - cx**2
    mu02 = row_profile @ GRID**2 / mass - cy**2
    mu11 = torch.einsum("i,bij,j->b", GRID, img, GRID) / mass - cx * cy
    return torch.stack([cx, cy, mass.sqrt(), (mu20 - mu02) / (mu20 + mu02), 2 * mu11 / (mu20 + mu02)], 1)


def naive_beta_vae(data, fn, random_state, group_size, num_train, num_eval):
    rng = np.random.default_rng(random_state)

    def votes(n):
        feats, labels = [], []
        for _ in range(n):
            k = rng.integers(data.num_factors)
            a, b = data.sample_factors(group_size, rng), data.sample_factors(group_size, rng)
            b[:, k] = a[:, k]
            za = represent(data.sample_observations_from_factors(a, rng), fn, group_size)
            zb = represent(data.sample_observations_from_factors(b, rng), fn, group_size)
            feats.append(_beta_vae_features(za[None], zb[None])[0])
            labels.append(k)
        return np.stack(feats), np.array(labels)

    return _compute_beta_vae(*votes(num_train), *votes(num_eval), random_state=rng)


def naive_factor_vae(data, fn, random_state, group_size, num_train, num_eval, num_variance_estimate):
    rng = np.random.default_rng(random_state)
    codes = represent(data.sample_observations_from_factors(data.sample_factors(num_variance_estimate, rng)), fn, 256)
    var = np.var(codes, axis=0, ddof=1)
    active = np.sqrt(var) >= 0.05

    def votes(n):
        dims, labels = [], []
        for _ in range(n):
            k = rng.integers(data.num_factors)
            f = data.sample_factors(group_size, rng)
            f[:, k] = f[0, k]
            z = represent(data.sample_observations_from_factors(f, rng), fn, group_size)
            dims.append(_factor_vae_argmin(z[None], var, active)[0])
            labels.append(k)
        return np.array(dims), np.array(labels)

    return _compute_factor_vae(*votes(num_train), *votes(num_eval), num_codes=codes.shape[1], num_factors=5)


def floor(data, fn, random_state, num_points):
    rng = np.random.default_rng(random_state)
    factors = data.sample_factors(num_points, rng)
    for start in range(0, num_points, 256):
        represent(data.sample_observations_from_factors(factors[start : start + 256], rng), fn, 256)


def workloads(scale: float):
    s = lambda n: max(int(n * scale), 20)  # noqa: E731
    bv = dict(group_size=64, num_train=s(10_000), num_eval=s(5_000))
    fv = dict(bv, num_variance_estimate=s(10_000))
    tt = dict(num_train=s(10_000), num_test=s(5_000))
    ds = dict(
        train_sizes=tuple(sorted({10, s(100), s(1_000), s(10_000)})),
        num_test=s(5_000),
        efficiency_sizes=(s(100), s(10_000)),
    )
    return {
        "beta_vae": (
            lambda d, f: compute_beta_vae(d, f, random_state=0, **bv),
            lambda d, f: naive_beta_vae(d, f, 0, **bv),
            "per-vote loop",
        ),
        "factor_vae": (
            lambda d, f: compute_factor_vae(d, f, random_state=0, **fv),
            lambda d, f: naive_factor_vae(d, f, 0, **fv),
            "per-vote loop",
        ),
        "mig": (
            lambda d, f: compute_mig(d, f, random_state=0, num_points=s(10_000)),
            lambda d, f: floor(d, f, 0, s(10_000)),
            "render+encode only",
        ),
        "hoyer": (
            lambda d, f: compute_hoyer(d, f, random_state=0, num_points=s(10_000)),
            lambda d, f: floor(d, f, 0, s(10_000)),
            "render+encode only",
        ),
        "unsupervised": (
            lambda d, f: compute_unsupervised(d, f, random_state=0, num_points=s(10_000)),
            lambda d, f: floor(d, f, 0, s(10_000)),
            "render+encode only",
        ),
        "sap": (
            lambda d, f: compute_sap(d, f, random_state=0, **tt),
            lambda d, f: floor(d, f, 0, s(15_000)),
            "render+encode only",
        ),
        "modularity": (
            lambda d, f: compute_modularity_explicitness(d, f, random_state=0, **tt),
            lambda d, f: floor(d, f, 0, s(15_000)),
            "render+encode only",
        ),
        "dci": (
            lambda d, f: compute_dci(d, f, random_state=0, **tt),
            lambda d, f: floor(d, f, 0, s(15_000)),
            "render+encode only",
        ),
        "downstream": (
            lambda d, f: compute_downstream(d, f, random_state=0, **ds),
            lambda d, f: floor(d, f, 0, s(15_000)),
            "render+encode only",
        ),
    }


def time_min(fn, repeats: int) -> float:
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every default size by this")
    parser.add_argument("--metrics", default="", help="comma-separated subset (default: all)")
    parser.add_argument("--threads", default="", help="comma-separated thread counts (default: 1 and all)")
    args = parser.parse_args()
    data = DSprites()
    table = workloads(args.scale)
    names = [m for m in args.metrics.split(",") if m] or list(table)
    threads = [int(t) for t in args.threads.split(",") if t] or sorted({1, os.cpu_count() or 1})
    print(f"sizes x{args.scale}, min of {args.repeats} after a warm-up; ratio = baseline / ours")
    print(f"{'workload':<32} {'baseline':<20} {'baseline s':>11} {'ours s':>9} {'ratio':>7}")
    for n_threads in threads:
        torch.set_num_threads(n_threads)
        for name in names:
            ours, baseline, label = table[name]
            ours(data, moments)  # warm-up (also checks it runs)
            t_ours = t_base = math.inf
            for _ in range(max(1, args.repeats)):  # interleaved, one timing each per round
                t_base = min(t_base, time_min(lambda b=baseline: b(data, moments), 1))
                t_ours = min(t_ours, time_min(lambda o=ours: o(data, moments), 1))
            workload = f"{name}, {n_threads} thread{'s' if n_threads > 1 else ''}"
            print(f"{workload:<32} {label:<20} {t_base:>11.2f} {t_ours:>9.2f} {t_base / t_ours:>7.2f}", flush=True)


if __name__ == "__main__":
    main()
