"""Sweeps: many independent runs from one YAML grid, on local processes or on Ray, then a summary.

A sweep file::

    id: fig3-pinwheel-grid
    base: fig3-pinwheel          # an experiment id or a path to an experiment .yaml
    grid:                        # one block per figure row; each block is a product over `vary`
      - {title: "alpha = 0", fixed: {model.alpha: 0.0}, vary: {model.beta: [0.01, 0.3]}}
    seeds: [0]                   # train.seed values (each seed is a separate run)
    sizes: {smoke: {train.steps: 100}, paper: {}}   # a size may also set `seeds: [...]`

The base experiment is loaded at its default size; the sweep's size overrides are applied on top.

A ``vary`` (or ``fixed``) key may tie several keys to one value with ``+``:
``divergence.lambda_od+divergence.lambda_d: [1, 3]``. Which columns the tables have and which sweep figures
are drawn is the experiment family's choice (:class:`~pyro_decomp.experiments.ExperimentFamily`).

Outputs in the sweep directory: ``runs/<name>/`` (full run directories), the family's sweep figures
(``grid.png`` for the pinwheel: one density panel per run, first seed), ``summary.csv`` and ``summary.md`` (one row per setting:
n, mean, sd and a 95% Student-t interval of each metric over the seeds, see :func:`aggregate_over_seeds`),
``summary_runs.csv`` and ``summary_runs.md`` (one row per run), ``curves.png`` (each metric against the
swept hyperparameter with the interval over seeds as a band, SPEC §8) and ``sweep.json``.

Rerunning the same sweep command resumes it (there is no ``--resume`` flag): finished runs of the
same config are reused, runs with a damaged ``metrics.json`` or figure are re-evaluated from their
final checkpoint, unfinished runs continue from their latest readable checkpoint, and a run directory
holding another config is trained afresh. A failed run is one line in the log; its traceback is
saved as ``runs/<name>/sweep_error.txt``.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import os
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import (
    ConfigError,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    find_experiment,
    load_experiment,
    load_yaml,
)

__all__ = ["SweepRun", "SweepSpec", "aggregate_over_seeds", "load_sweep", "run_sweep"]

_SWEEP_KEYS = ("id", "description", "reproduces", "base", "grid", "seeds", "sizes", "default_size")
@dataclass
class SweepRun:
    """One run of a sweep: its name, figure position and resolved config (as a dict)."""

    name: str
    row: int
    col: int
    title: str
    seed: int
    config: dict[str, Any]
    #: the grid point's assignment of dotted keys (the block's ``fixed`` and ``vary`` values, no seed)
    assignment: dict[str, Any] = field(default_factory=dict)
    #: the grid point's name: the run name without its seed (the runs of one setting differ only in seed)
    setting: str = ""


@dataclass
class SweepSpec:
    id: str
    description: str
    rows: list[str]
    runs: list[SweepRun] = field(default_factory=list)
    #: per grid block, the dotted keys it varies (the x axis of ``curves.png``)
    vary: list[list[str]] = field(default_factory=list)


_SYMBOLS = {"model.alpha": "α", "model.beta": "β"}


def _symbol(key: str) -> str:
    first = key.split("+")[0]
    return _SYMBOLS.get(first, first.split(".")[-1])


def _label_part(key: str, value: Any) -> str:
    """One part of a run name: ``beta0.5`` for ``model.beta``; the bare part name for a spec's ``name`` or
    ``type`` (``student_t`` for ``prior.name``)."""
    last = key.split("+")[0].split(".")[-1]
    return _fmt(value) if last in ("name", "type") else f"{last}{_fmt(value)}"


def _untie(assignment: Mapping[str, Any]) -> dict[str, Any]:
    """``{"a.x+a.y": v}`` (keys tied to one value, e.g. DIP-VAE's λ_od = λ_d) → ``{"a.x": v, "a.y": v}``."""
    out: dict[str, Any] = {}
    for key, value in assignment.items():
        for part in str(key).split("+"):
            out[part.strip()] = value
    return out


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def load_sweep(name: str | Path, *, size: str | None = None, overrides: Mapping[str, Any] | None = None) -> SweepSpec:
    """Expand a sweep file into runs with validated configs.

    >>> spec = load_sweep("fig3-pinwheel-grid", size="smoke")
    >>> len(spec.runs), spec.runs[0].name
    (10, 'alpha0_beta0.01_seed0')
    """
    path = find_experiment(name)
    spec = load_yaml(path)
    if "grid" not in spec or "base" not in spec:
        raise ConfigError(f"{path.stem!r} is a single experiment, not a sweep; use `pyro-decomp run {name}`.")
    unknown = sorted(set(spec) - set(_SWEEP_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown sweep key {unknown[0]!r}; valid keys: {', '.join(_SWEEP_KEYS)}.")
    base_name = str(spec["base"])
    if base_name.endswith((".yaml", ".yml")) and not Path(base_name).is_absolute():
        base_name = str(path.parent / base_name)
    base = config_to_dict(load_experiment(base_name))
    sizes = spec.get("sizes") or {}
    size = size or spec.get("default_size") or ("paper" if "paper" in sizes else None)
    if size is not None and size not in sizes:
        raise ConfigError(f"{path}: unknown size {size!r}; choose one of {', '.join(sorted(sizes)) or '(none)'}.")
    size_over = dict(sizes.get(size) or {}) if size else {}
    seeds = size_over.pop("seeds", spec.get("seeds", [0]))
    base = apply_overrides(base, size_over)
    base["size"] = size or "default"
    base["id"] = str(spec.get("id", path.stem))
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds):
        raise ConfigError(f"{path}: seeds must be a non-empty list of non-negative integers, got {seeds!r}.")
    grid = spec["grid"]
    if not isinstance(grid, list) or not grid:
        raise ConfigError(f"{path}: grid must be a non-empty list of blocks with 'fixed' and 'vary'.")
    out = SweepSpec(id=base["id"], description=str(spec.get("description", "")), rows=[])
    names: set[str] = set()
    for r, block in enumerate(grid):
        if not isinstance(block, Mapping) or set(block) - {"title", "fixed", "vary"}:
            raise ConfigError(f"{path}: grid block {r} must be a mapping with keys title, fixed, vary.")
        fixed = dict(block.get("fixed") or {})
        vary = dict(block.get("vary") or {})
        for k, v in vary.items():
            if not isinstance(v, list) or not v:
                raise ConfigError(f"{path}: grid block {r}: vary.{k} must be a non-empty list, got {v!r}.")
        out.rows.append(str(block.get("title", f"row {r}")))
        keys = list(vary)
        out.vary.append(keys)
        for c, values in enumerate(itertools.product(*(vary[k] for k in keys)) if keys else [()]):
            assignment = {**fixed, **dict(zip(keys, values, strict=True))}
            for seed in seeds:
                over = {**_untie(assignment), "train.seed": seed, **dict(overrides or {})}
                cfg = config_to_dict(config_from_dict(apply_overrides(base, over)))
                label = "_".join(_label_part(k, v) for k, v in assignment.items())
                run_name = f"{label}_seed{seed}" if label else f"seed{seed}"
                if run_name in names:
                    raise ConfigError(f"{path}: two grid points give the same run {run_name!r}.")
                names.add(run_name)
                title = ", ".join(f"{_symbol(k)}={_fmt(v)}" for k, v in assignment.items())
                out.runs.append(SweepRun(run_name, r, c, title, seed, cfg, assignment, label or "default"))
    return out


def _saved_config(run_dir: Path) -> dict[str, Any] | None:
    """The run's resolved config as a dict, or ``None`` when ``config.yaml`` is absent or unreadable."""
    from ..runner import load_run_config

    try:
        return json.loads(json.dumps(config_to_dict(load_run_config(run_dir))))
    except (OSError, ValueError):  # missing, truncated or hand-edited into an invalid config
        return None


def _same_run(run_dir: Path, config: dict[str, Any]) -> bool:
    """Whether ``run_dir`` holds a run of ``config``: its ``config.yaml`` says so or, when that file is
    damaged, its latest checkpoint does (each checkpoint stores the config); ``config.yaml`` is then rewritten."""
    from ..config import save_config
    from ..train import load_checkpoint

    if not run_dir.is_dir():
        return False
    saved = _saved_config(run_dir)
    if saved is not None:
        return saved == config
    try:
        stored = load_checkpoint(run_dir).get("config")
        same = json.loads(json.dumps(stored)) == config
    except (OSError, ValueError, TypeError):  # no checkpoint, or an unreadable one
        return False
    if same:
        save_config(config_from_dict(config), run_dir / "config.yaml")
    return same


def _read_metrics(path: Path) -> dict[str, Any] | None:
    """``metrics.json`` as a dict, or ``None`` when it is absent, truncated or not a JSON object."""
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None
    return metrics if isinstance(metrics, dict) and isinstance(metrics.get("measures", {}), dict) else None


def _figures_ok(run_dir: Path, config: Mapping[str, Any]) -> bool:
    """Whether the run's figure files are present and readable (else the run is re-evaluated)."""
    from .base import get_family

    return get_family(config["family"]).figures_ok(run_dir, config)


# set in a pool worker process once Ctrl-C reached it: the runs it has already taken from the pool's
# queue (which shutdown(cancel_futures=True) cannot recall) then return at once instead of training
_INTERRUPTED = False


def _sweep_worker(config: dict[str, Any], run_dir: str, threads: int, pooled: bool = False) -> dict[str, Any]:
    """Run, continue or reuse one run; never raises, so one failure does not stop the sweep.

    A run directory left by an earlier call of the same sweep is picked up where it stopped:
    finished runs are reused; a run whose ``metrics.json`` or figures are missing or unreadable is
    re-evaluated from its final checkpoint; an unfinished run continues from its latest readable
    checkpoint (``checkpoint.pt`` or ``checkpoints/step_*.pt``); a run directory holding another
    config, or no usable checkpoint, is started afresh.
    """
    import torch

    global _INTERRUPTED
    torch.set_num_threads(max(1, threads))
    run_dir_p = Path(run_dir)
    t0 = time.perf_counter()
    if _INTERRUPTED:
        return {"status": "failed", "error": "interrupted before it started", "run_dir": str(run_dir_p)}
    try:
        result, note = _run_or_reuse(config, run_dir_p)
        result.setdefault("family", config["family"])
        (run_dir_p / "sweep_error.txt").unlink(missing_ok=True)  # from an earlier, failed attempt
        result["run_dir"] = str(run_dir_p)
        if note:
            result["note"] = note
        return result
    except KeyboardInterrupt:
        _INTERRUPTED = pooled
        raise
    except Exception as e:  # report and move on; the summary marks the run as failed
        trace = traceback.format_exc()
        # one line in the sweep's log (Pyro appends a shape table to errors raised inside a model);
        # the whole traceback goes next to the run
        error = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"
        try:
            run_dir_p.mkdir(parents=True, exist_ok=True)
            (run_dir_p / "sweep_error.txt").write_text(trace)
            error += f" (traceback: {run_dir_p / 'sweep_error.txt'})"
        except OSError:
            pass
        return {
            "status": "failed",
            "error": error,
            "traceback": trace,
            "run_dir": str(run_dir_p),
            "seconds": time.perf_counter() - t0,
        }


def _run_or_reuse(config: dict[str, Any], run_dir: Path) -> tuple[dict[str, Any], str | None]:
    from ..runner import run_experiment
    from ..train import CheckpointError, latest_checkpoint

    same = _same_run(run_dir, config)
    metrics_path = run_dir / "metrics.json"
    note = None
    if same and metrics_path.is_file():
        metrics = _read_metrics(metrics_path)
        if metrics is not None and _figures_ok(run_dir, config):
            return {**metrics, "status": "reused"}, None
        note = "metrics.json unreadable" if metrics is None else "figures missing or unreadable"
        note += "; re-evaluated from the checkpoint"

    def finish(result: dict[str, Any]) -> dict[str, Any]:
        result = {k: v for k, v in result.items() if k not in ("density", "prior_density", "extent")}
        return {**result, "status": "ok"}

    checkpoint = latest_checkpoint(run_dir) if run_dir.is_dir() else None
    if same and checkpoint is not None:
        # the newest checkpoint first; a damaged one (a crash mid-write on a filesystem without atomic
        # rename, a hand-edited file) falls back to the older step files, then to a fresh start
        candidates = [checkpoint, *sorted((run_dir / "checkpoints").glob("step_*.pt"), reverse=True)]
        errors = []
        for path in dict.fromkeys(candidates):
            try:
                result = run_experiment(config, run_dir, resume=path, progress=False)
            except CheckpointError as e:
                errors.append(f"{path.name}: {str(e).split('(')[0].strip()}")
                continue
            if note is None:
                note = f"continued from {path.relative_to(run_dir)}"
            return finish(result), note
        note = f"no usable checkpoint ({'; '.join(errors)}); started afresh"
        return finish(run_experiment(config, run_dir, overwrite=True, progress=False)), note
    if checkpoint is None:
        if run_dir.is_dir():
            # killed before its first checkpoint: drop the partial log so the fresh run's log starts clean
            (run_dir / "logs" / "train.jsonl").unlink(missing_ok=True)
            (run_dir / "metrics.json").unlink(missing_ok=True)
        if note is not None:
            note = note.replace("re-evaluated from the checkpoint", "no checkpoint to re-evaluate, trained afresh")
        return finish(run_experiment(config, run_dir, progress=False)), note
    note = "the run directory held another config; started afresh"
    return finish(run_experiment(config, run_dir, overwrite=True, progress=False)), note


def _run_local(jobs: list[tuple[dict, str]], workers: int, log) -> list[dict]:
    if workers == 1:
        threads = os.cpu_count() or 1
        return [_report(_sweep_worker(c, d, threads), log) for c, d in jobs]
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    threads = max(1, (os.cpu_count() or 1) // workers)
    results: list[dict | None] = [None] * len(jobs)
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"))
    try:
        futures = {pool.submit(_sweep_worker, c, d, threads, True): i for i, (c, d) in enumerate(jobs)}
        for fut in as_completed(futures):
            i = futures[fut]
            try:
                res = fut.result()
            except Exception as e:  # the worker process died (killed, out of memory): BrokenProcessPool
                res = {"status": "failed", "error": f"{type(e).__name__}: {e}", "run_dir": jobs[i][1]}
            results[i] = _report(res, log)
    except BaseException:
        # Ctrl-C: without cancel_futures the pool would start every queued run before shutting down
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return [r for r in results if r is not None]


def _run_ray(jobs: list[tuple[dict, str]], workers: int, address: str | None, log) -> list[dict]:
    try:
        import ray
    except ImportError:
        raise ValueError(
            "--executor ray needs Ray: pip install 'pyro-decomp[ray]' (or use --executor local)."
        ) from None
    started = False
    if not ray.is_initialized():
        try:
            if address:
                ray.init(address=address, log_to_driver=False)
            else:
                ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
        except Exception as e:  # Ray raises ConnectionError, RuntimeError, ... for an unreachable cluster
            where = f"the Ray cluster at {address!r}" if address else "a local Ray instance"
            raise ValueError(f"could not start or reach {where}: {type(e).__name__}: {e}") from None
        started = True
    try:
        remote = ray.remote(num_cpus=1)(_sweep_worker)
        refs = [remote.remote(c, d, 1) for c, d in jobs]
        index = {ref: i for i, ref in enumerate(refs)}
        results: list[dict | None] = [None] * len(refs)
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                results[index[ref]] = _report(ray.get(ref), log)
        return [r for r in results if r is not None]
    finally:
        if started:
            ray.shutdown()


def _report(result: dict, log) -> dict:
    from .base import get_family

    name = Path(result.get("run_dir", "?")).name
    if result.get("note"):
        log(f"[sweep] {name}: {result['note']}")
    if result.get("status") == "failed":
        log(f"[sweep] {name}: FAILED: {result.get('error')}")
    else:
        try:
            line = get_family(str(result["family"])).headline_line(result)
        except (KeyError, ValueError):
            line = ""
        log(f"[sweep] {name}: {result['status']}  {line}".rstrip())
    return result


def _row(run: SweepRun, result: Mapping[str, Any]) -> dict[str, Any]:
    """One run's row of the per-run table: the family's setting and metric columns."""
    from .base import get_family

    family = get_family(run.config["family"])
    row = {"name": run.name, "setting": run.setting, "row": run.row, "seed": run.seed,
           "status": result.get("status", "failed")}  # fmt: skip
    values = family.summary_row(run.config, result) if result.get("status") != "failed" else {}
    if result.get("status") == "failed":
        values = {k: run.config["model"].get(k) for k in ("alpha", "beta") if "model" in run.config}
    for k in family.summary_columns:
        row.setdefault(k, values.get(k))
    return row


def _split_columns(columns: Sequence[str]) -> tuple[list[str], list[str]]:
    """The per-run table's setting columns (before ``seed``, less ``name``) and metric columns (after ``status``)."""
    cols = list(columns)
    return [c for c in cols[: cols.index("seed")] if c != "name"], cols[cols.index("status") + 1 :]


def _number(v: Any) -> float:
    """A finite float, else NaN (``None``, a failed run's blank, a non-numeric or non-finite value)."""
    if isinstance(v, bool) or not isinstance(v, int | float | np.integer | np.floating):
        return float("nan")
    v = float(v)
    return v if math.isfinite(v) else float("nan")


def aggregate_over_seeds(
    rows: Sequence[Mapping[str, Any]],
    metrics: Sequence[str],
    *,
    by: Sequence[str] = ("setting",),
    keep: Sequence[str] = (),
    level: float = 0.95,
) -> list[dict[str, Any]]:
    """Mean, standard deviation and a confidence interval of each metric over the seeds of each setting.

    Rows with equal values of ``by`` (a setting: every hyperparameter except the seed) form one group,
    in order of first appearance; ``keep`` columns are copied from the group's first row. Failed runs
    (``status == "failed"``) and missing or non-finite values are left out. For each metric ``m``, over
    the ``n`` remaining values :math:`v_1..v_n`:

    * ``m_n`` = n; ``m_mean`` = :math:`\\bar v`;
    * ``m_sd`` = :math:`s = \\sqrt{\\sum_i (v_i - \\bar v)^2 / (n - 1)}` (``ddof=1``, as the thesis's
      "mean ± sd" over seeds);
    * ``m_ci_low``, ``m_ci_high`` = :math:`\\bar v \\mp t_{(1+\\text{level})/2,\\,n-1}\\, s / \\sqrt n`, the
      Student-t confidence interval for the mean over seeds (exact when the per-seed values are normal;
      with few seeds the t quantile, e.g. 12.71 for n = 2 and 2.26 for n = 10, makes it much wider than
      ±1.96 s/√n).

    With ``n = 1`` the sd and the interval are undefined and are NaN; with ``n = 0`` the mean is NaN too.
    Each group also gets ``runs`` (its row count) and ``ok`` (its rows that did not fail).

    >>> rows = [{"setting": "a", "seed": s, "status": "ok", "m": v} for s, v in enumerate([1.0, 2.0, 3.0])]
    >>> g = aggregate_over_seeds(rows, ["m"])[0]
    >>> g["m_n"], g["m_mean"], g["m_sd"], round(g["m_ci_high"], 4)
    (3, 2.0, 1.0, 4.4841)
    """
    import scipy.stats

    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}.")
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row.get(k) for k in by), []).append(row)
    out = []
    for key, members in groups.items():
        ok = [r for r in members if r.get("status") != "failed"]
        agg: dict[str, Any] = dict(zip(by, key, strict=True))
        agg.update({k: members[0].get(k) for k in keep if k not in agg})
        agg["runs"], agg["ok"] = len(members), len(ok)
        for m in metrics:
            values = np.array([_number(r.get(m)) for r in ok], dtype=float)
            values = values[np.isfinite(values)]
            n = int(values.size)
            mean = float(values.mean()) if n else float("nan")
            sd = float(values.std(ddof=1)) if n >= 2 else float("nan")
            half = float(scipy.stats.t.ppf((1 + level) / 2, n - 1) * sd / math.sqrt(n)) if n >= 2 else float("nan")
            agg.update({f"{m}_n": n, f"{m}_mean": mean, f"{m}_sd": sd, f"{m}_ci_low": mean - half,
                        f"{m}_ci_high": mean + half})  # fmt: skip
        out.append(agg)
    return out


_SUMMARY_NOTE = (
    "Cells: mean ± sd over the seeds of each setting (sd with ddof=1); `n`: runs that finished / runs. "
    "Per-run values: summary_runs.csv and summary_runs.md."
)


def _csv_text(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    w.writeheader()
    for r in rows:
        # None and NaN (a failed run, an undefined sd) are blank cells
        w.writerow({k: ("" if r.get(k) is None or (isinstance(r.get(k), float) and math.isnan(r[k])) else r[k])
                    for k in columns})  # fmt: skip
    return buf.getvalue()


def _md_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(b) + " |" for b in body]


def _cell(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _write_tables(
    rows: list[dict], out_dir: Path, columns: Sequence[str], *, title: str = "", level: float = 0.95
) -> list[dict[str, Any]]:
    """Write the per-run tables (``summary_runs.csv``/``.md``) and the per-setting aggregate over seeds
    (``summary.csv``/``.md``, see :func:`aggregate_over_seeds`); returns the aggregate rows."""
    _write_text_atomic(out_dir / "summary_runs.csv", _csv_text(rows, columns))
    runs_md = _md_table(columns, [[_cell(r.get(k)) for k in columns] for r in rows])
    _write_text_atomic(out_dir / "summary_runs.md", "\n".join(runs_md) + "\n")

    setting_cols, metrics = _split_columns(columns)
    agg = aggregate_over_seeds(rows, metrics, by=("setting",), keep=setting_cols, level=level)
    stats = ("n", "mean", "sd", "ci_low", "ci_high")
    csv_cols = ["setting", *setting_cols, "runs", "ok", *(f"{m}_{s}" for m in metrics for s in stats)]
    _write_text_atomic(out_dir / "summary.csv", _csv_text(agg, csv_cols))

    def mean_sd(a: Mapping[str, Any], m: str) -> str:
        n, mean, sd = a[f"{m}_n"], a[f"{m}_mean"], a[f"{m}_sd"]
        text = _cell(mean) if n < 2 else f"{mean:.4g} ± {sd:.2g}"
        return text if n in (0, a["ok"]) else f"{text} (n={n})"  # a metric missing from some runs

    def interval(a: Mapping[str, Any], m: str) -> str:
        return "-" if a[f"{m}_n"] < 2 else f"[{a[f'{m}_ci_low']:.4g}, {a[f'{m}_ci_high']:.4g}]"

    head = ["setting", *setting_cols, "n"]

    def first(a: Mapping[str, Any]) -> list[str]:
        return [str(a["setting"]), *(_cell(a.get(k)) for k in setting_cols), f"{a['ok']}/{a['runs']}"]

    seeds_per = sorted({a["runs"] for a in agg})
    lines = [f"# {title}: mean ± sd over seeds" if title else "# Mean ± sd over seeds", "", _SUMMARY_NOTE]
    if max((a["ok"] for a in agg), default=0) < 2:
        lines.append(
            "One seed per setting: the sd and the interval need two or more seeds, so cells hold the single "
            "run's value and summary.csv leaves the `_sd`/`_ci_*` columns blank."
        )
    lines += ["", *_md_table([*head, *metrics], [[*first(a), *(mean_sd(a, m) for m in metrics)] for a in agg])]
    if any(a[f"{m}_n"] >= 2 for a in agg for m in metrics):
        lines += [
            "",
            f"## {level:.0%} confidence interval of the mean over seeds",
            "",
            f"Student t with n - 1 degrees of freedom: mean ± t * sd / sqrt(n); '-' where n < 2. "
            f"Seeds per setting: {', '.join(map(str, seeds_per))}.",
            "",
            *_md_table([*head, *metrics], [[*first(a), *(interval(a, m) for m in metrics)] for a in agg]),
        ]
    _write_text_atomic(out_dir / "summary.md", "\n".join(lines) + "\n")
    return agg


def _x_scale(x: np.ndarray) -> tuple[str, dict[str, float]]:
    """Matplotlib x scale for swept values ``x``: logarithmic when the positive values span a factor of 10 or
    more, so that alpha in {1, 10, 100, 1000} is evenly spread; symmetric-log (linear below the smallest positive
    value) when 0 is among them as well (fig4's alpha = 0, 10, 100, 1000); linear otherwise."""
    x = np.asarray(x, dtype=float)
    positive = x[x > 0]
    if (x < 0).any() or positive.size == 0 or positive.max() < 10 * positive.min():
        return "linear", {}
    if (x == 0).any():
        return "symlog", {"linthresh": float(positive.min())}
    return "log", {}


def _curves_figure(
    spec: SweepSpec, agg: Sequence[Mapping[str, Any]], metrics: Sequence[str], path: Path, *, level: float = 0.95
) -> None:
    """``curves.png``: each metric against the swept hyperparameter, one panel per metric and one line per
    grid block; the line is the mean over seeds and the band the t-interval of :func:`aggregate_over_seeds`.

    A block that varies one numeric key is drawn against its values; any other block against its grid
    index. The x axis scale is :func:`_x_scale`'s.
    """
    from ..analysis.plots import _pyplot, save_figure

    plt = _pyplot()
    by_setting = {a["setting"]: a for a in agg}
    lines = []  # (label, x, setting names) per block
    for r, title in enumerate(spec.rows):
        settings = list(dict.fromkeys(run.setting for run in spec.runs if run.row == r))
        keys = spec.vary[r] if r < len(spec.vary) else []
        first_run = {run.setting: run for run in reversed(spec.runs) if run.row == r}
        values = [first_run[s].assignment.get(keys[0]) if len(keys) == 1 else None for s in settings]
        if len(keys) == 1 and all(_number(v) == _number(v) for v in values):
            x, label = [float(v) for v in values], f"{title} (x: {_SYMBOLS.get(keys[0], keys[0])})"
        else:
            x, label = [float(i) for i in range(len(settings))], f"{title} (x: grid index)"
        lines.append((label, np.array(x), settings))
    shown = [m for m in metrics if any(np.isfinite(by_setting[s][f"{m}_mean"]) for _, _, ss in lines for s in ss)]
    if not shown:
        raise ValueError("no metric has a finite value in any run")
    ncols = min(4, len(shown))
    nrows = -(-len(shown) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 2.8 * nrows), squeeze=False)
    scale = _x_scale(np.concatenate([x for _, x, _ in lines]))
    for ax, m in zip(axes.flat, shown, strict=False):
        for label, x, settings in lines:
            mean = np.array([by_setting[s][f"{m}_mean"] for s in settings])
            lo = np.array([by_setting[s][f"{m}_ci_low"] for s in settings])
            hi = np.array([by_setting[s][f"{m}_ci_high"] for s in settings])
            order = np.argsort(x, kind="stable")
            (line,) = ax.plot(x[order], mean[order], marker="o", ms=3, label=label)
            ax.fill_between(x[order], lo[order], hi[order], color=line.get_color(), alpha=0.2, linewidth=0)
            # error bars as well: a block with a single grid point has no band to fill
            err = np.stack([mean - lo, hi - mean])[:, order]
            ax.errorbar(x[order], mean[order], yerr=err, fmt="none", ecolor=line.get_color(), capsize=2, lw=0.8)
        ax.set_title(m, fontsize=8)
        ax.set_xlabel("swept value (see legend)", fontsize=7)
        ax.tick_params(labelsize=7)
        if scale[0] != "linear":
            ax.set_xscale(scale[0], **scale[1])
    for ax in list(axes.flat)[len(shown) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=7, frameon=False)
    seeds = sorted({a["runs"] for a in agg})
    fig.suptitle(
        f"{spec.id}: mean over seeds (n = {', '.join(map(str, seeds))}); band: {level:.0%} t-interval "
        "(none with one seed)",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    try:
        save_figure(fig, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def run_sweep(
    name: str | Path,
    out_dir: str | Path,
    *,
    size: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    executor: str = "local",
    workers: int | None = None,
    address: str | None = None,
    log=print,
) -> list[dict[str, Any]]:
    """Run every point of a sweep and write ``grid.png``, ``curves.png``, the per-setting ``summary.csv`` and
    ``summary.md`` (mean ± sd over seeds) and the per-run ``summary_runs.csv`` and ``summary_runs.md``.

    :param executor: ``"local"`` (a spawn-context process pool; ``workers=1`` runs in this process)
        or ``"ray"`` (``ray.init(address=address)`` when given, else a local ``ray.init(num_cpus=workers)``).
        On a multi-node cluster ``out_dir`` must be on a filesystem every node can write.
    :returns: the per-run summary rows.
    """
    if executor not in ("local", "ray"):
        raise ValueError(f"executor must be 'local' or 'ray', got {executor!r}.")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers must be a positive integer, got {workers!r}.")
    if address and executor != "ray":
        raise ValueError("--address only applies to --executor ray.")
    spec = load_sweep(name, size=size, overrides=overrides)
    out_dir = Path(out_dir)
    (out_dir / "runs").mkdir(parents=True, exist_ok=True)
    workers = workers or min(len(spec.runs), os.cpu_count() or 1)
    jobs = []
    for run in spec.runs:
        cfg = json.loads(json.dumps(run.config))
        cfg["train"]["progress"] = False
        run.config = cfg
        jobs.append((cfg, str(out_dir / "runs" / run.name)))
    log(f"[sweep] {spec.id}: {len(jobs)} runs on {executor} with {workers} worker(s) -> {out_dir}")
    _log_progress_so_far(jobs, log)
    t0 = time.perf_counter()
    try:
        if executor == "local":
            results = _run_local(jobs, workers, log)
        else:
            results = _run_ray(jobs, workers, address, log)
    except KeyboardInterrupt:
        log(
            "[sweep] interrupted: finished runs are kept and unfinished ones keep their latest checkpoint; "
            "run the same sweep command again to resume it."
        )
        raise
    from .base import get_family

    rows = [_row(run, res) for run, res in zip(spec.runs, results, strict=True)]
    family = get_family(spec.runs[0].config["family"])  # a sweep has at least one run (load_sweep checks)
    columns = family.summary_columns
    agg = _write_tables(rows, out_dir, columns, title=spec.id)
    _write_text_atomic(
        out_dir / "sweep.json",
        json.dumps(
            {
                "id": spec.id,
                "runs": [r.name for r in spec.runs],
                "settings": list(dict.fromkeys(r.setting for r in spec.runs)),
                "seeds": sorted({r.seed for r in spec.runs}),
                "seconds": time.perf_counter() - t0,
            },
            indent=2,
        ),
    )
    wrote = f"{out_dir / 'summary.md'}"
    try:
        _curves_figure(spec, agg, _split_columns(columns)[1], out_dir / "curves.png")
        wrote += f", {out_dir / 'curves.png'}"
    except Exception as e:  # the tables above hold the results; a figure failure must not hide them
        (out_dir / "curves.png").unlink(missing_ok=True)  # never leave stale curves behind
        log(f"[sweep] could not draw curves.png: {type(e).__name__}: {e}")
    try:
        for path in family.sweep_figures(spec, results, out_dir, log):
            wrote += f" and {path}"
    except Exception as e:  # the tables above hold the results; a figure failure must not hide them
        log(f"[sweep] could not draw the {family.name} sweep figures: {type(e).__name__}: {e}")
    failed = [r["name"] for r in rows if r["status"] == "failed"]
    log(f"[sweep] done in {time.perf_counter() - t0:.1f} s; wrote {wrote}")
    if failed:
        log(f"[sweep] {len(failed)} run(s) failed: {', '.join(failed)} (see the error lines above)")
    return rows


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _log_progress_so_far(jobs: Sequence[tuple[dict, str]], log) -> None:
    """On a rerun, say that the sweep resumes and how much of it is already done."""
    from ..train import latest_checkpoint

    done = started = other = 0
    for config, run_dir in jobs:
        d = Path(run_dir)
        if not d.is_dir() or latest_checkpoint(d) is None:
            continue
        saved = _saved_config(d)
        if saved is not None and saved != config:
            other += 1
        elif (d / "metrics.json").is_file():
            done += 1
        else:
            started += 1
    if done or started or other:
        log(
            f"[sweep] resuming: {done} of {len(jobs)} runs finished earlier, {started} continue from their "
            f"checkpoints" + (f", {other} hold another config and start afresh" if other else "")
        )
