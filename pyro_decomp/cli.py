"""The ``pyro-decomp`` command line: ``run``, ``sweep``, ``eval`` and ``list``.

Examples::

    pyro-decomp list
    pyro-decomp run fig3-pinwheel --out runs/fig3-pinwheel
    pyro-decomp run fig3-pinwheel --smoke model.alpha=8 train.steps=200
    pyro-decomp run --resume runs/fig3-pinwheel
    pyro-decomp sweep fig3-pinwheel-grid --workers 2
    pyro-decomp sweep fig3-pinwheel-grid --executor ray --address auto
    pyro-decomp eval runs/fig3-pinwheel

Bad input (unknown experiment or key, invalid value, missing, corrupt or unsafe file, a full disk,
too little memory) prints one line ``pyro-decomp: error: ...`` and exits with status 2, having changed
nothing in the run directory; a diverged run exits with status 1 and names the checkpoint to resume
from. Ctrl-C finishes the current step, saves it and exits with status 130 (a second Ctrl-C stops
at once). ``pyro-decomp --version`` prints the version.
"""

from __future__ import annotations

import argparse
import errno
import json
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]

EXIT_USAGE = 2
EXIT_FAILED = 1


def _version() -> str:
    """The installed distribution's version (package metadata), else the source tree's ``__version__``."""
    from importlib import metadata

    try:
        return metadata.version("pyro-decomp")
    except metadata.PackageNotFoundError:
        from . import __version__

        return __version__


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyro-decomp",
        description="Decomposed VAE experiments (Mathieu et al. 2019) on Pyro: run, sweep, evaluate.",
    )
    parser.add_argument("--version", action="version", version=f"pyro-decomp {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="{run,sweep,eval,analyse,list}")
    sub.required = True

    def size_args(p: argparse.ArgumentParser) -> None:
        g = p.add_mutually_exclusive_group()
        g.add_argument("--smoke", action="store_true", help="the smoke size (seconds to minutes on a CPU)")
        g.add_argument("--size", help="a size named in the experiment file (e.g. smoke, paper, long)")

    run = sub.add_parser("run", help="train and evaluate one experiment")
    run.add_argument("experiment", nargs="?", help="experiment id (see `pyro-decomp list`) or a .yaml file")
    run.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. model.beta=0.5")
    size_args(run)
    run.add_argument("--out", help="run directory (default: runs/<experiment id>)")
    run.add_argument("--device", choices=("auto", "cpu", "cuda"), help="where to train (default: config, auto)")
    run.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR from its latest checkpoint (or a checkpoint file)",
    )
    run.add_argument("--overwrite", action="store_true", help="start afresh even if --out holds a run")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")

    sweep = sub.add_parser("sweep", help="run a grid of experiments and summarise it")
    sweep.add_argument("sweep", help="sweep id (e.g. fig3-pinwheel-grid) or a .yaml file")
    sweep.add_argument("overrides", nargs="*", metavar="key=value", help="overrides applied to every run")
    size_args(sweep)
    sweep.add_argument("--out", help="sweep directory (default: runs/<sweep id>)")
    sweep.add_argument("--executor", choices=("local", "ray"), default="local")
    sweep.add_argument("--address", help="Ray cluster address (with --executor ray), e.g. auto or ray://host:10001")
    sweep.add_argument("--workers", type=int, help="parallel runs (default: number of CPU cores)")

    ev = sub.add_parser("eval", help="re-evaluate a finished run directory")
    ev.add_argument("run_dir")
    ev.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu")

    an = sub.add_parser(
        "analyse", help="ArviZ posterior analysis of a run: NUTS ground truth, amortisation gap, PSIS k-hat"
    )
    an.add_argument("run_dir")
    an.add_argument("--nuts", type=int, default=4, metavar="N", help="test datapoints to sample with NUTS (default 4)")
    an.add_argument("--out", help="output directory (default: RUN_DIR/analysis)")

    sub.add_parser("list", help="list the shipped experiments and what each reproduces")
    return parser


def _cmd_list() -> int:
    from .config import _experiments_dir, experiment_ids, load_yaml

    ids = experiment_ids()
    width = max((len(i) for i in ids), default=10)
    for exp_id in ids:
        spec = load_yaml(_experiments_dir() / f"{exp_id}.yaml")
        kind = "sweep" if "grid" in spec else "run"
        sizes = ", ".join(spec.get("sizes") or {}) or "-"
        family = spec.get("family") or (spec.get("config") or {}).get("family") or ""
        family = f"{family}; " if family else ""
        print(f"{exp_id:<{width}}  [{kind}; {family}sizes: {sizes}]  {spec.get('reproduces', '')}")
        if spec.get("description"):
            print(f"{'':<{width}}  {spec['description']}")
    return 0


def _summary_line(metrics: dict, family) -> str:
    return family.headline_line(metrics)


def _figure_of(run_dir: Path, family) -> Path:
    """The run's main figure, as its experiment family names it."""
    if (run_dir / family.main_figure).exists():
        return run_dir / family.main_figure
    return run_dir / "figures"


def _out_dir(value: str | None) -> Path | None:
    """``--out``: ``None`` when not given; an empty or blank value is an error, not the default."""
    if value is None:
        return None
    if not value.strip():
        raise ValueError(f"--out is empty ({value!r}); name a directory, or leave --out out for the default.")
    return Path(value)


def _cmd_run(args: argparse.Namespace) -> int:
    from .config import apply_overrides, config_from_dict, config_to_dict, load_experiment, parse_overrides
    from .runner import load_run_config, run_experiment

    if args.experiment and "=" in args.experiment and not Path(args.experiment).is_file():
        args.overrides = [args.experiment, *args.overrides]  # `run --resume DIR key=value`
        args.experiment = None
    overrides = parse_overrides(args.overrides)
    if args.device:
        overrides["train.device"] = args.device
    if args.no_progress:
        overrides["train.progress"] = False
    size = "smoke" if args.smoke else args.size
    out = _out_dir(args.out)
    if args.resume is not None:
        if not args.resume.strip():
            raise ValueError("--resume is empty; name a run directory (or one of its checkpoint .pt files).")
        if args.overwrite:
            raise ValueError("--resume continues a run and --overwrite discards it; pass only one of them.")
        run_dir, resume = Path(args.resume), True
        if run_dir.is_file():  # a specific checkpoint: RUN_DIR/checkpoint.pt or RUN_DIR/checkpoints/step_*.pt
            if run_dir.suffix != ".pt":
                raise ValueError(
                    f"--resume takes a run directory or a checkpoint .pt file, not {str(run_dir)!r}."
                )
            resume = run_dir
            run_dir = run_dir.parent.parent if run_dir.parent.name == "checkpoints" else run_dir.parent
        elif not run_dir.is_dir():
            raise FileNotFoundError(f"cannot resume: {str(run_dir)!r} does not exist.")
        if out is not None and out.resolve() != run_dir.resolve():
            raise ValueError("--resume continues RUN_DIR in place; do not also pass a different --out.")
        if size:
            raise ValueError("--smoke/--size cannot change a resumed run; override single keys instead.")
        saved = load_run_config(run_dir)
        if args.experiment and args.experiment not in (saved.id, str(run_dir)):
            raise ValueError(f"{str(run_dir)!r} holds a run of {saved.id!r}, not {args.experiment!r}.")
        cfg = config_from_dict(apply_overrides(config_to_dict(saved), overrides))
        metrics = run_experiment(cfg, run_dir, resume=resume)
    else:
        if not args.experiment:
            raise ValueError("name an experiment (see `pyro-decomp list`) or pass --resume RUN_DIR.")
        cfg = load_experiment(args.experiment, size=size, overrides=overrides)
        run_dir = out if out is not None else Path("runs") / cfg.id
        metrics = run_experiment(cfg, run_dir, overwrite=args.overwrite)
    print(f"run {cfg.id} [{cfg.size}] finished: {run_dir}")
    family = cfg.experiment_family()
    print(f"  {_summary_line(metrics, family)}")
    print(f"  figure: {_figure_of(run_dir, family)}")
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from .config import find_experiment, load_yaml, parse_overrides
    from .experiments.sweep import run_sweep

    overrides = parse_overrides(args.overrides)
    out = _out_dir(args.out)
    sweep_id = load_yaml(find_experiment(args.sweep)).get("id", Path(args.sweep).stem)
    out = out if out is not None else Path("runs") / str(sweep_id)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} is a file, not a directory; choose a directory for the sweep.")
    rows = run_sweep(
        args.sweep,
        out,
        size="smoke" if args.smoke else args.size,
        overrides=overrides,
        executor=args.executor,
        workers=args.workers,
        address=args.address,
        log=lambda msg: print(msg, flush=True),
    )
    print((out / "summary.md").read_text(), end="")
    return EXIT_FAILED if any(r["status"] == "failed" for r in rows) else 0


def _existing_run_dir(value: str) -> Path:
    """The RUN_DIR argument of eval/analyse: an existing directory (its contents are checked on loading)."""
    path = Path(value)
    if not value.strip():
        raise ValueError("the run directory is empty; name a run directory, e.g. runs/fig3-pinwheel.")
    if not path.exists():
        raise FileNotFoundError(f"{value!r} is not a run directory: it does not exist.")
    if not path.is_dir():
        raise ValueError(f"{value!r} is not a run directory: it is a file.")
    return path


def _cmd_eval(args: argparse.Namespace) -> int:
    from .runner import evaluate_run, load_run_config

    _existing_run_dir(args.run_dir)
    metrics = evaluate_run(args.run_dir, device=args.device)
    family = load_run_config(args.run_dir).experiment_family()
    print(json.dumps({k: metrics.get(k) for k in ("id", "alpha", "beta", "seed")}))
    print(f"  {_summary_line(metrics, family)}")
    print(f"  wrote {Path(args.run_dir) / 'metrics.json'} and {_figure_of(Path(args.run_dir), family)}")
    return 0


def _cmd_analyse(args: argparse.Namespace) -> int:
    from .analysis import analyse_run
    from .runner import load_run

    if args.nuts < 0:
        raise ValueError(f"--nuts must be >= 0, got {args.nuts}.")
    out = _out_dir(args.out)
    run_dir = _existing_run_dir(args.run_dir)
    out = out if out is not None else run_dir / "analysis"
    # analyse writes posterior.nc and figures/*.png, which would replace a run's own results
    holds_run = (out / "config.yaml").is_file() or (out / "checkpoint.pt").is_file()
    if (out.exists() and run_dir.exists() and out.resolve() == run_dir.resolve()) or holds_run:
        raise ValueError(
            f"--out {str(out)!r} is a run directory; analyse would replace its posterior.nc and figures. "
            f"Leave --out out (the default is {str(run_dir / 'analysis')!r}) or choose another directory."
        )
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} is a file, not a directory.")
    written = analyse_run(args.run_dir, nuts_datapoints=args.nuts, out_dir=out, load=load_run)
    for path in written.values() if isinstance(written, dict) else written:
        print(f"  wrote {path}")
    report_path = written.get("amortisation") if isinstance(written, dict) else None
    if report_path is not None:
        # e.g. a local optimisation that ended worse than the encoder: measured, reported, not hidden
        for line in json.loads(Path(report_path).read_text()).get("warnings", []):
            print(f"warning: {line}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pyro-decomp`` console script; returns the exit status."""
    parser = _build_parser()
    # overrides may come after options (`run x --smoke a=1`), which plain argparse rejects
    args, extra = parser.parse_known_args(argv)
    stray = [e for e in extra if e.startswith("-") or "=" not in e or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    from .train import NonFiniteLossError, TrainingInterrupted

    try:
        if args.command == "list":
            return _cmd_list()
        if args.command == "run":
            return _cmd_run(args)
        if args.command == "sweep":
            return _cmd_sweep(args)
        if args.command == "analyse":
            return _cmd_analyse(args)
        return _cmd_eval(args)
    except NonFiniteLossError as e:
        print(f"pyro-decomp: error: {_one_line(str(e))}", file=sys.stderr)
        return EXIT_FAILED
    except (ValueError, TypeError, OSError) as e:  # OSError: missing/existing files, permissions, full disk
        msg = _os_error_message(e) if isinstance(e, OSError) else str(e)
        print(f"pyro-decomp: error: {_one_line(msg)}", file=sys.stderr)
        return EXIT_USAGE
    except OverflowError as e:
        msg = f"a number in the config is too large ({_one_line(str(e))}); lower it."
        print(f"pyro-decomp: error: {msg}", file=sys.stderr)
        return EXIT_USAGE
    except MemoryError:
        print(f"pyro-decomp: error: {_OUT_OF_MEMORY}", file=sys.stderr)
        return EXIT_USAGE
    except RuntimeError as e:
        if not _is_out_of_memory(e):
            raise  # a bug: keep the traceback
        print(f"pyro-decomp: error: {_OUT_OF_MEMORY}", file=sys.stderr)
        return EXIT_USAGE
    except TrainingInterrupted as e:
        print(f"pyro-decomp: {_one_line(str(e))}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        # a sweep has no --resume flag: rerunning the same command reuses and continues its runs
        hint = "run the same command again to resume it" if args.command == "sweep" else "continue with --resume"
        print(f"pyro-decomp: interrupted (the latest checkpoint was kept; {hint})", file=sys.stderr)
        return 130


_OUT_OF_MEMORY = (
    "out of memory: the config asks for more memory than this machine has; lower the sizes "
    "(networks.hidden_dim, model.latent_dim, data.*, train.batch_size, model.num_particles)."
)


def _is_out_of_memory(e: RuntimeError) -> bool:
    text = str(e).lower()
    return type(e).__name__ == "OutOfMemoryError" or "can't allocate memory" in text or "out of memory" in text


def _one_line(message: str, limit: int = 2000) -> str:
    """The first non-empty line of ``message`` (the CLI promises one line), at most ``limit`` characters."""
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    first = lines[0] if lines else "unknown error"
    if len(first) > limit:
        first = first[:limit] + " ..."
    return first


def _os_error_message(e: OSError) -> str:
    """A one-line reason for a failed file operation, naming the path and what to do."""
    full = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
    if e.errno in full:
        if e.strerror and "disk is full" in e.strerror:
            return e.strerror  # already names the file (a checkpoint write)
        where = f" while writing {str(e.filename)!r}" if e.filename else ""
        return f"the disk is full (no space left on device){where}. Free some space, then continue with --resume."
    if e.filename is not None and e.strerror:
        hints = {
            errno.EEXIST: "; a file is in the way where a directory is needed",
            errno.ENOTDIR: "; a part of that path is a file, not a directory",
            errno.EISDIR: "; it is a directory, a file was expected",
            errno.EACCES: "; check the permissions or choose another directory",
            errno.EROFS: "; the file system is read-only, choose another directory",
        }
        return f"{e.strerror}: {str(e.filename)!r}{hints.get(e.errno, '')}."
    if e.errno is not None and e.strerror:
        return e.strerror  # OSError(errno, message) raised with our own message
    return str(e)


if __name__ == "__main__":
    sys.exit(main())
