"""Peak memory and training speed of dSprites runs (issue 10, item 4: dSprites in bounded memory).

Each measurement is a child process (``python -m pyro_decomp ...``) whose peak resident set size comes
from ``os.wait4`` (the kernel's ``ru_maxrss`` of that child alone). Cases:

``run``
    ``pyro-decomp run thesis-5.6`` at the paper data size (``data.num_images=null``: all 737,280 images)
    for ``--steps`` steps (default 1,000, then it stops), with the evaluation shrunk to the smoke sizes
    (the paper-size metrics encode ~10^6 images, hours on a CPU; evaluation is not what this measures)
    and ``train.threads=1``. Reports the peak RSS and the training steps/s (``train_seconds`` of
    ``metrics.json``, which includes the checkpoint writes).
``sweep``
    two such runs at once (a 2-worker sweep: each worker is one process running one run), ``--sweep-steps``
    steps each; reports the sum of the two peaks (an upper bound of the concurrent total).
``eval``
    ``pyro-decomp eval`` of the run written by ``run``: its peak RSS (it reloads the model and renders only
    the images it evaluates).
``analyse``
    ``pyro-decomp analyse --nuts 0`` of that run (off by default: memory is now bounded, ~1.5 GB, but
    ``posterior.nc`` of the 1,000 test images takes many CPU minutes). Before issue 10's fix the analysis
    grew ~42-47 MB per test image (pixel-level predictive groups of 200 draws, and the decoder run on
    256 draws x all images at once); see the measurements below.
``speed``
    in this process, interleaved: SVI steps of the thesis-5.6 model (batch 64, one thread) fed by the old
    data path (a float32 tensor of all the images and a fresh ``randperm`` every step) and by the new one
    (:class:`~pyro_decomp.data.dsprites.PackedImages` unpacked per batch, one permutation per epoch), at
    ``--speed-images`` images (the old path needs them all as float32, so not the paper size); and the
    batch fetch alone at the paper size. Min over ``--repeats`` of ``--speed-steps`` steps each.
``build``
    only the data build of ``build_experiment`` at ``--build-images`` training images (for the code before
    this change, whose paper-size build, 12 GB of float32 and ~24 GB at the peak of ``torch.cat``, does
    not fit this machine: its peak is measured at a smaller size and grows linearly in the image count).

    PYTHONPATH=. python benchmarks/dsprites_memory.py [--cases run,sweep,eval] [--steps 1000]
    PYTHONPATH=. python benchmarks/dsprites_memory.py --cases build --build-images 100000

Timings are noisy on a shared machine; compare steps/s only between runs made close together.

Measured on the shared 2-core, 23 GB development machine (CPU, one thread per run):

* before (float32 images): the data build at 100,000 images peaks at 3,862 MB (842 MB at 100 images, the
  imports and the model), i.e. ~30.4 KB an image (the float32 images and their ``torch.cat`` copy); linear
  in the image count, the paper size would peak at ~23 GB before training, beyond this machine.
* after: ``run`` at the paper size, 1,000 steps: peak 1,471 MB (1,439 MB in an earlier run); the data build
  alone peaks at 1,221 MB (819 MB at 100 images). ``sweep``, two at once, 300 steps: 1,478 + 1,494 =
  2,972 MB. ``eval`` of the 1,000-step run: 1,066-1,122 MB.
* ``analyse --nuts 0`` (peak RSS of ``python -m pyro_decomp analyse`` under ``/usr/bin/time -v``, a smoke
  ``thesis-5.6`` run with ``data.test_images`` edited in its ``config.yaml``): before 2,722 MB at 8 test
  images and 3,866 MB at 32 (~47 MB an image: ~47 GB at the paper's 1,000); after 1,446 MB at 8, 1,508 MB
  at 32, 1,512 MB at the smoke default of 256 (5.3 min wall on the shared machine), 1,447 MB at the
  paper's 1,000 (8.3 min). ``--nuts 1`` at 8
  images: 1,669 MB before, 1,304 MB after (NUTS itself dominates the time, 6-10 min).
* ``speed`` at 100,000 images (40 steps x 3 repeats): old 4.69, new 4.79 steps/s (new/old 1.021); the
  batch fetch alone 0.99 ms old, 0.26 ms new; at 737,280 images 6.28 ms old (a randperm every step) against
  0.27 ms new.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# the smoke evaluation sizes of thesis-5.6, so the evaluation after training takes seconds
SMALL_EVAL = [
    "eval.metric_group_size=16", "eval.metric_num_train=60", "eval.metric_num_eval=30",
    "eval.metric_num_variance=500", "eval.metric_num_points=500", "eval.loss_images=256",
]  # fmt: skip

BUILD_SNIPPET = """
import sys, time, resource
from pyro_decomp.config import load_experiment
from pyro_decomp.runner import build_experiment
n = sys.argv[1]
cfg = load_experiment("thesis-5.6", overrides={} if n == "null" else {"data.num_images": int(n)})
t0 = time.perf_counter()
exp = build_experiment(cfg)
print("BUILD_SECONDS", time.perf_counter() - t0)
"""


def _child(cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait(proc: subprocess.Popen) -> tuple[int, float, str]:
    """``(exit status, peak RSS in MB, output)`` of a child."""
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss / 1024.0, out  # ru_maxrss is in KiB on Linux


def _run_cmd(out_dir: Path, steps: int, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "pyro_decomp", "run", "thesis-5.6", "--out", str(out_dir), "--no-progress",
            "--device", "cpu", f"train.steps={steps}", f"train.checkpoint_every={steps}", "train.log_every=100",
            "train.threads=1", "train.tensorboard=false", "eval.figures=false", *SMALL_EVAL, *extra]  # fmt: skip


def _steps_per_s(out_dir: Path, steps: int) -> float:
    metrics = json.loads((out_dir / "metrics.json").read_text())
    return steps / metrics["train_seconds"]


def _check(code: int, out: str, what: str) -> None:
    if code != 0:
        raise SystemExit(f"{what} failed (exit {code}):\n{out[-3000:]}")


def speed(num_images: int, steps: int, repeats: int) -> None:
    """Steps/s of the old and the new dSprites data path, same process, interleaved (see the module doc)."""
    import math

    import torch

    from pyro_decomp.config import load_experiment
    from pyro_decomp.runner import _make_trainer, build_experiment

    torch.set_num_threads(1)
    cfg = load_experiment("thesis-5.6", size="smoke", overrides={"data.num_images": num_images})
    exp = build_experiment(cfg)
    floats = exp.x_train.unpack()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = _make_trainer(exp, Path(tmp), progress=False)
    n, b, seed = trainer.num_data, trainer.batch_size, trainer.seed

    def old_batch(step: int):  # the Trainer's batch before this change
        per_epoch = math.ceil(n / b)
        epoch, i = divmod(step, per_epoch)
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        perm = torch.randperm(n, generator=g)
        return floats[perm[i * b : (i + 1) * b]]

    def timed(fetch, train: bool) -> float:
        start = time.perf_counter()
        for step in range(steps):
            batch = fetch(step)
            if train:
                trainer.svi.step(batch, dataset_size=n)
        return (time.perf_counter() - start) / steps

    best = {k: math.inf for k in ("old step", "new step", "old fetch", "new fetch")}
    for _ in range(repeats):
        best["old step"] = min(best["old step"], timed(old_batch, True))
        best["new step"] = min(best["new step"], timed(trainer._batch, True))
        best["old fetch"] = min(best["old fetch"], timed(old_batch, False))
        best["new fetch"] = min(best["new fetch"], timed(trainer._batch, False))
    print(f"speed  {num_images} images: old {1 / best['old step']:.2f} steps/s, new {1 / best['new step']:.2f} "
          f"steps/s (ratio new/old {best['old step'] / best['new step']:.3f}); batch fetch alone: old "
          f"{best['old fetch'] * 1e3:.3f} ms, new {best['new fetch'] * 1e3:.3f} ms")
    # the fetch at the paper size: the old randperm of 737,280 every step against the new cached one
    full = 737_280
    packed = type(exp.x_train)(exp.x_train.packed[torch.randint(num_images, (full,))], exp.x_train.image_shape)
    cache: dict[int, torch.Tensor] = {}

    def old_full(step: int):
        g = torch.Generator().manual_seed(seed * 1_000_003)
        return floats[torch.randperm(full, generator=g)[step * b : (step + 1) * b] % num_images]

    def new_full(step: int):
        if 0 not in cache:
            cache[0] = torch.randperm(full, generator=torch.Generator().manual_seed(seed * 1_000_003))
        return packed[cache[0][step * b : (step + 1) * b]]

    old_t = min(timed(old_full, False) for _ in range(repeats))
    new_t = min(timed(new_full, False) for _ in range(repeats))
    print(f"speed  batch fetch at 737,280 images: old {old_t * 1e3:.3f} ms, new {new_t * 1e3:.3f} ms a step")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", default="run,sweep,eval", help="comma-separated: run, sweep, eval, analyse, build, speed")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--sweep-steps", type=int, default=300)
    p.add_argument("--build-images", default="100000", help="training images for the build case, or null")
    p.add_argument("--speed-images", type=int, default=100_000)
    p.add_argument("--speed-steps", type=int, default=100)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--extra", nargs="*", default=[], help="more config overrides for every run")
    args = p.parse_args()
    cases = set(args.cases.split(","))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.environ.get("PYTHONPATH", os.getcwd())}
    if "speed" in cases:
        speed(args.speed_images, args.speed_steps, args.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if "build" in cases:
            code, peak, out = _wait(_child([sys.executable, "-c", BUILD_SNIPPET, args.build_images], env))
            _check(code, out, "build")
            secs = float(out.split("BUILD_SECONDS")[1].split()[0])
            print(f"build  num_images={args.build_images}: peak RSS {peak:,.0f} MB, {secs:.1f} s")
        if cases & {"run", "eval", "analyse"}:
            run_dir = tmp / "run"
            t0 = time.perf_counter()
            code, peak, out = _wait(_child(_run_cmd(run_dir, args.steps, args.extra), env))
            _check(code, out, "run")
            print(f"run    {' '.join(args.extra) or 'paper data'}, {args.steps} steps: peak RSS {peak:,.0f} MB, "
                  f"{_steps_per_s(run_dir, args.steps):.2f} steps/s, {time.perf_counter() - t0:.0f} s in all")
            for cmd in ("eval", "analyse"):
                if cmd in cases:
                    extra = ["--nuts", "0"] if cmd == "analyse" else []
                    t0 = time.perf_counter()
                    code, peak, out = _wait(_child([sys.executable, "-m", "pyro_decomp", cmd, str(run_dir), *extra],
                                                   env))
                    _check(code, out, cmd)
                    print(f"{cmd:7s}of that run: peak RSS {peak:,.0f} MB, {time.perf_counter() - t0:.0f} s")
        if "sweep" in cases:
            procs = [_child(_run_cmd(tmp / f"sweep{i}", args.sweep_steps, [f"train.seed={i}", *args.extra]), env)
                     for i in range(2)]
            results = [_wait(proc) for proc in procs]
            for i, (code, _, out) in enumerate(results):
                _check(code, out, f"sweep worker {i}")
            peaks = [r[1] for r in results]
            rates = [_steps_per_s(tmp / f"sweep{i}", args.sweep_steps) for i in range(2)]
            print(f"sweep  2 concurrent paper-data runs, {args.sweep_steps} steps: peaks "
                  f"{' + '.join(f'{x:,.0f}' for x in peaks)} = {sum(peaks):,.0f} MB; "
                  f"steps/s {', '.join(f'{r:.2f}' for r in rates)}")


if __name__ == "__main__":
    main()
