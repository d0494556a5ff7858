"""dSprites rendering throughput: the vectorised renderer against a naive per-image loop.

Baseline: one image at a time with NumPy on the full 64 x 64 grid (the same geometry, the usual way a
renderer is first written). Ours: :func:`pyro_decomp.data.dsprites.render_dsprites`, vectorised over the
batch with windowed inside tests. Both run in this process, interleaved; each cell is the minimum of
``--repeats`` timings after one warm-up, with 1 thread and with all threads.

    python benchmarks/dsprites_render.py [--num 2000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import math
import os
import time

import numpy as np
import torch

from pyro_decomp.data.dsprites import DSprites, render_dsprites


def naive_render(shape, scale, theta, pos_x, pos_y) -> np.ndarray:
    """One image, full grid, NumPy: the baseline."""
    cx, cy = 64 * (0.2 + 0.6 * pos_x), 64 * (0.2 + 0.6 * pos_y)
    px = np.arange(64) + 0.5
    dx = (px[None, :] - cx) / (9 * scale)
    dy = (cy - px[:, None]) / (9 * scale)
    u = math.cos(theta) * dx + math.sin(theta) * dy
    v = -math.sin(theta) * dx + math.cos(theta) * dy
    if shape == 0:
        inside = np.maximum(abs(u), abs(v)) <= 1
    elif shape == 1:
        inside = (u / 1.3) ** 2 + (v / 0.7) ** 2 <= 1
    else:
        y = v + 0.12
        inside = (u**2 + y**2 - 1) ** 3 <= u**2 * y**3
    return inside.astype(np.float32)


def time_min(fn, repeats: int) -> float:
    fn()  # warm-up
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=2000, help="images per timing")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    data = DSprites()
    factors = data.sample_factors(args.num, random_state=0)
    values = data.factor_values(factors)
    columns = [values[k] for k in ("shape", "scale", "orientation", "pos_x", "pos_y")]

    def baseline():
        return np.stack([naive_render(*row) for row in zip(*columns, strict=True)])

    def ours():
        return render_dsprites(*columns)

    # Same pixels from both (up to float32 boundary ties): the comparison is like for like.
    mismatch = np.abs(baseline() - ours()[:, 0].numpy()).sum(axis=(1, 2)).max()
    print(f"max differing pixels per image, baseline vs ours: {mismatch:.0f}")
    print(f"{'workload':<34} {'baseline img/s':>15} {'ours img/s':>12} {'ratio':>8}")
    for threads in sorted({1, os.cpu_count() or 1}):
        torch.set_num_threads(threads)
        t_base, t_ours = math.inf, math.inf
        for _ in range(2):  # interleave baseline and ours
            t_base = min(t_base, time_min(baseline, args.repeats))
            t_ours = min(t_ours, time_min(ours, args.repeats))
        name = f"render {args.num} images, {threads} thread{'s' if threads > 1 else ''}"
        print(f"{name:<34} {args.num / t_base:>15,.0f} {args.num / t_ours:>12,.0f} {t_base / t_ours:>7.1f}x")


if __name__ == "__main__":
    main()
