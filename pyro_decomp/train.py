"""The training loop: :class:`pyro.infer.SVI` steps, device placement, logs, checkpoints, NaN guard.

A checkpoint is a ``torch.save`` of plain tensors and containers only, so it loads with
``torch.load(weights_only=True)``. It holds:

* ``module``: the model's ``state_dict()`` (networks, buffers, learned prior parameters);
* ``optimizer``: :meth:`pyro.optim.PyroOptim.get_state` (one Adam state per parameter, by name);
* ``elbo``: :meth:`pyro_decomp.DecompositionELBO.state_dict` (step counter, schedules, divergence);
* ``rng``: the torch, numpy, Python and CUDA generator states;
* ``step``, ``config``, ``format``.

Checkpoints are written to a temporary file, read back, and then moved into place with
:func:`os.replace`, so a crash or a full disk never leaves a half-written file where a good one was
(temporary files of killed processes are deleted when a run next starts). A fresh run checkpoints its
initial state (step 0), and no checkpoint is written whose parameters or Adam moments hold a NaN or an
infinity. Ctrl-C finishes the current step, checkpoints it and raises :class:`TrainingInterrupted`; a
second Ctrl-C stops at once. On the CPU a run interrupted and resumed ends with parameters
bit-identical to an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import pickle
import random
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch
from pyro.infer import SVI
from pyro.optim import PyroOptim

from .elbo import LOSS_TERMS
from .optim import Adam as FusedAdam

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "NonFiniteLossError",
    "Trainer",
    "TrainingInterrupted",
    "clean_stale_temp_files",
    "get_rng_state",
    "latest_checkpoint",
    "load_checkpoint",
    "load_module_state",
    "nonfinite_parameters",
    "resolve_device",
    "save_checkpoint",
    "seeded_torch_rng",
    "set_rng_state",
]

CHECKPOINT_FORMAT = 1
CHECKPOINT_NAME = "checkpoint.pt"


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupt or of the wrong format."""


class NonFiniteLossError(RuntimeError):
    """A loss term, a parameter or an optimiser moment became NaN or infinite during training.

    ``term`` names the loss term, or ``"parameters"`` when the guard before a checkpoint found a
    non-finite parameter or Adam moment (then no checkpoint was written).
    """

    def __init__(self, message: str, *, term: str, step: int) -> None:
        super().__init__(message)
        self.term = term
        self.step = step


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during :meth:`Trainer.fit`: the current step was finished and checkpointed (if possible).

    ``str()`` is a one-line message naming the step, the checkpoint and the command that continues.
    """

    def __init__(self, message: str, *, step: int, checkpoint: Path | None) -> None:
        super().__init__(message)
        self.step = step
        self.checkpoint = checkpoint


# ---------------------------------------------------------------------------------------------- device
def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; ``"cuda"`` without CUDA is an error."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if device == "cuda" or (isinstance(device, str) and device.startswith("cuda:")):
        if not torch.cuda.is_available():
            raise ValueError("device='cuda' was requested but CUDA is not available; use device='cpu' or 'auto'.")
        return torch.device(device)
    raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}.")


# ---------------------------------------------------------------------------------------------- RNG state
def get_rng_state() -> dict[str, Any]:
    """All global RNG states as tensors and plain containers (``weights_only``-loadable)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": int(py_state[0]), "state": list(py_state[1]), "gauss": py_state[2]},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore the states saved by :func:`get_rng_state`."""
    torch.set_rng_state(state["torch"].cpu())
    npst = state["numpy"]
    np.random.set_state(
        ("MT19937", npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"], npst["cached_gaussian"])
    )
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


@contextlib.contextmanager
def seeded_torch_rng(seed: int | None) -> Iterator[None]:
    """Run the block with torch's global RNG seeded by ``torch.manual_seed(seed)``; restore the caller's
    stream afterwards, so a seeded evaluation neither depends on nor disturbs the training stream.

    ``torch.manual_seed`` seeds the CPU generator and every CUDA device's, so all of them are saved and
    restored (the CUDA ones when CUDA is initialised; before that no CUDA draw has been made). With
    ``seed=None`` the block runs on the caller's stream unchanged. The one save/restore of the package:
    evaluation, the posterior netCDF and :func:`pyro_decomp.analysis.to_inference_data` use it.
    """
    if seed is None:
        yield
        return
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    with torch.random.fork_rng(devices=list(range(torch.cuda.device_count())) if cuda else []):
        torch.manual_seed(int(seed))
        yield


# ---------------------------------------------------------------------------------------------- files
def _to_cpu(obj: Any) -> Any:
    if torch.is_tensor(obj):
        return obj.detach().cpu()
    if isinstance(obj, Mapping):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def _load_raw(path: Path, map_location: Any = "cpu") -> dict[str, Any]:
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError as e:
        if "unsupported global" not in str(e).lower():
            raise CheckpointError(_corrupt_message(path, e)) from None
        # torch's weights_only unpickler refused a global (a class or function to call): the file asks to
        # run code on load. pyro-decomp writes tensors and plain containers only, so this file is not ours.
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f" (it asks to load {found.group(1)})" if found else ""
        raise CheckpointError(
            f"checkpoint {str(path)!r} was refused as unsafe: it holds objects other than tensors and plain "
            f"containers{what}, which pyro-decomp never writes, so it was not loaded. Do not load it by other "
            f"means; resume from an earlier checkpoint{_earlier_hint(path)}, or start the run afresh."
        ) from None
    except Exception as e:  # truncated zip, bad pickle: an unusable file
        raise CheckpointError(_corrupt_message(path, e)) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{str(path)!r} is not a pyro-decomp checkpoint of format {CHECKPOINT_FORMAT}. "
            f"Resume from an earlier checkpoint{_earlier_hint(path)}, or start the run afresh."
        )
    missing = {"module", "optimizer", "elbo", "rng", "step"} - set(state)
    if missing:
        raise CheckpointError(f"checkpoint {str(path)!r} lacks {sorted(missing)}; it is incomplete.")
    return state


def _corrupt_message(path: Path, e: Exception) -> str:
    # only the first line of torch's message, and never its advice to turn off weights_only
    detail = next((ln for ln in str(e).splitlines() if ln.strip()), "")[:200]
    if not detail:
        detail = "the file is empty" if path.is_file() and path.stat().st_size == 0 else "unexpected end of file"
    if "weights_only" in detail or "weights only" in detail.lower():
        detail = "not a readable torch checkpoint"
    return (
        f"checkpoint {str(path)!r} is corrupt or truncated ({type(e).__name__}: {detail}). "
        f"Resume from an earlier checkpoint{_earlier_hint(path)}, or start the run afresh."
    )


def _earlier_hint(path: Path) -> str:
    run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    others = sorted((run_dir / "checkpoints").glob("step_*.pt")) if (run_dir / "checkpoints").is_dir() else []
    others = [p for p in others if p.resolve() != path.resolve()]
    if not others:
        return ""
    return f" (e.g. --resume {others[-1]})"


_NO_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def save_checkpoint(state: Mapping[str, Any], path: str | Path, *, verify: bool = True) -> Path:
    """Atomically write ``state`` to ``path``: temporary file, fsync, read-back check, :func:`os.replace`.

    :raises OSError: with ``errno.ENOSPC`` and a one-line message naming ``path`` when the disk is full;
        the file already at ``path`` is then untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(_to_cpu(dict(state)), f)
            f.flush()
            os.fsync(f.fileno())
        if verify:
            _load_raw(tmp)
        os.replace(tmp, path)
    except OSError as e:
        if e.errno not in _NO_SPACE:
            raise
        kept = f"the previous {path.name} is untouched" if path.is_file() else "earlier checkpoints are untouched"
        raise OSError(
            e.errno,
            f"the disk is full (no space left on device): could not write checkpoint {str(path)!r}; {kept}. "
            "Free some space, then continue with --resume.",
        ) from None
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass  # keep the original error; a stale temp file is cleaned when the run next starts
    return path


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists but belongs to someone else (or we cannot tell): leave its files alone
    return True


_TEMP_RE = re.compile(r"^\..+\.pt\.(\d+)\.tmp$")


def clean_stale_temp_files(run_dir: str | Path) -> list[Path]:
    """Delete the ``.<name>.pt.<pid>.tmp`` files that a killed process left in ``run_dir`` (and its
    ``checkpoints/``), those of processes no longer alive; returns the deleted paths."""
    run_dir = Path(run_dir)
    removed = []
    for folder in (run_dir, run_dir / "checkpoints"):
        if not folder.is_dir():
            continue
        for f in folder.iterdir():
            m = _TEMP_RE.match(f.name)
            if m and f.is_file() and not _pid_alive(int(m.group(1))):
                try:
                    f.unlink()
                    removed.append(f)
                except OSError:
                    pass
    return removed


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``torch.load(weights_only=True)``.

    :param path: a checkpoint file, or a run directory (its latest checkpoint is used).
    :raises CheckpointError: for a truncated, corrupt or foreign file; the message names the file.
    :raises FileNotFoundError: when there is no checkpoint.
    """
    path = Path(path)
    if path.is_dir():
        found = latest_checkpoint(path)
        if found is None:
            raise FileNotFoundError(f"no checkpoint found in run directory {str(path)!r}.")
        path = found
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist.")
    return _load_raw(path, map_location)


def load_module_state(module: torch.nn.Module, state: Mapping[str, Any], path: str | Path | None = None) -> None:
    """``module.load_state_dict(state)`` with a one-line :class:`CheckpointError` when they do not fit.

    The message names the first parameter whose shape differs (or that is missing or unexpected), which
    says which config key changed (e.g. ``networks.hidden_dim``).
    """
    own = module.state_dict()
    where = f"checkpoint {str(path)!r}" if path is not None else "the checkpoint"
    problem = None
    for name, value in state.items():
        if name not in own:
            problem = f"it has {name!r}, which this model lacks"
        elif torch.is_tensor(value) and tuple(value.shape) != tuple(own[name].shape):
            problem = f"{name!r} has shape {list(value.shape)} there and {list(own[name].shape)} here"
        if problem:
            break
    if problem is None:
        missing = [n for n in own if n not in state]
        if missing:
            problem = f"it lacks {missing[0]!r}" + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
    if problem is None:
        try:
            module.load_state_dict(state)
            return
        except RuntimeError as e:
            problem = next((ln.strip() for ln in str(e).splitlines()[1:] if ln.strip()), str(e).splitlines()[0])
    raise CheckpointError(
        f"{where} does not fit the model of this config: {problem}. It was written with different model or "
        "data settings; keep those as they were (only keys such as train.steps or train.lr may change)."
    )


def nonfinite_parameters(state: Mapping[str, Any]) -> list[str]:
    """Names of the floating-point tensors in a ``state_dict`` that hold a NaN or an infinity."""
    return [
        name
        for name, v in state.items()
        if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all())
    ]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """``run_dir/checkpoint.pt`` if present, else the newest ``run_dir/checkpoints/step_*.pt``."""
    run_dir = Path(run_dir)
    if (run_dir / CHECKPOINT_NAME).is_file():
        return run_dir / CHECKPOINT_NAME
    steps = sorted((run_dir / "checkpoints").glob("step_*.pt")) if (run_dir / "checkpoints").is_dir() else []
    return steps[-1] if steps else None


# ---------------------------------------------------------------------------------------------- trainer
StepCallback = Callable[["Trainer", int, dict[str, float]], None]


class Trainer:
    """Runs :class:`pyro.infer.SVI` for a fixed number of steps and owns nothing else (DESIGN: Trainer).

    :param module: the :class:`torch.nn.Module` holding every trained parameter (e.g. a
        :class:`~pyro_decomp.models.VAE`); it is moved to ``device`` and saved in checkpoints.
    :param model: the Pyro model, called as ``model(batch, dataset_size=n)``.
    :param guide: the Pyro guide, same signature.
    :param elbo: the loss, normally a :class:`~pyro_decomp.DecompositionELBO`; its ``last_terms`` are
        logged after each step and checked for non-finite values.
    :param data: the training data ``[n, ...]``, a tensor or a
        :class:`~pyro_decomp.data.dsprites.PackedImages` (bit-packed binary images, turned into float32 one
        minibatch at a time); moved to ``device``.
    :param run_dir: where ``checkpoint.pt``, ``checkpoints/``, ``logs/train.jsonl`` and TensorBoard
        events go.
    :param steps: total number of SVI steps (a resumed run continues up to this number).
    :param lr, adam_betas: Adam settings (:class:`pyro.optim.Adam`).
    :param batch_size: ``None`` for full batch; otherwise minibatches from a per-epoch permutation that
        depends only on ``seed`` and the epoch, so resuming needs no sampler state.
    :param checkpoint_every: save every this many steps, and always at the end.
    :param callbacks: ``fn(trainer, step, terms)`` after each step (``step`` counts completed steps).

    >>> import tempfile, torch, pyro_decomp
    >>> from pyro_decomp.models.networks import build_networks
    >>> enc, dec = build_networks("pinwheel")
    >>> vae = pyro_decomp.VAE(pyro_decomp.GaussianMixturePrior(), dec, pyro_decomp.GaussianLikelihood(), enc)
    >>> trainer = Trainer(vae, vae.model, vae.guide, pyro_decomp.DecompositionELBO(), torch.randn(8, 2),
    ...                   run_dir=tempfile.mkdtemp(), steps=3, progress=False, tensorboard=False)
    >>> trainer.fit()["step"]
    3
    """

    def __init__(
        self,
        module: torch.nn.Module,
        model: Callable,
        guide: Callable,
        elbo: Any,
        data: torch.Tensor,
        *,
        run_dir: str | Path,
        steps: int,
        lr: float = 1e-3,
        adam_betas: Sequence[float] = (0.9, 0.999),
        batch_size: int | None = None,
        seed: int = 0,
        device: str | torch.device = "auto",
        checkpoint_every: int = 100,
        keep_checkpoints: int = 3,
        log_every: int = 1,
        progress: bool | None = None,
        tensorboard: bool = True,
        validate: bool = False,
        config: Mapping[str, Any] | None = None,
        callbacks: Sequence[StepCallback] = (),
    ) -> None:
        if not isinstance(module, torch.nn.Module):
            raise TypeError(f"module must be a torch.nn.Module holding the parameters, got {type(module).__name__}.")
        if not callable(model) or not callable(guide):
            raise TypeError("model and guide must be callables (Pyro programs).")
        from .data.bundle import ByteImages
        from .data.dsprites import PackedImages

        stores = (PackedImages, ByteImages)
        if not (torch.is_tensor(data) or isinstance(data, stores)) or data.dim() < 1 or data.shape[0] < 1:
            raise ValueError("data must be a tensor (or PackedImages/ByteImages) with at least one row, shape [n, ...].")
        for name, value, low in (("steps", steps, 0), ("checkpoint_every", checkpoint_every, 1),
                                 ("keep_checkpoints", keep_checkpoints, 1), ("log_every", log_every, 1)):  # fmt: skip
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}.")
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"batch_size must be a positive integer or None (full batch), got {batch_size!r}.")
        self.device = resolve_device(device)
        self.module = module.to(self.device)
        self.model, self.guide, self.elbo = model, guide, elbo
        self.data = data.to(self.device)
        self.num_data = int(self.data.shape[0])
        self.batch_size = None if batch_size is None or batch_size >= self.num_data else int(batch_size)
        if self.batch_size is None and isinstance(self.data, stores):
            self.data = self.data.unpack()  # full batch: every step uses every image
        self._perm: tuple[int, torch.Tensor] | None = None  # (epoch, its permutation), drawn once per epoch
        self.run_dir = Path(run_dir)
        self.steps = steps
        self.seed = int(seed)
        self.checkpoint_every = checkpoint_every
        self.keep_checkpoints = keep_checkpoints
        self.log_every = log_every
        self.progress = sys.stderr.isatty() if progress is None else bool(progress)
        self.tensorboard = bool(tensorboard)
        self.validate = bool(validate)
        self.config = dict(config or {})
        self.callbacks = list(callbacks)
        # one fused Adam over all parameters; same semantics and checkpoint format as pyro.optim.Adam
        self.lr = float(lr)
        self.optim: PyroOptim = FusedAdam({"lr": self.lr, "betas": tuple(float(b) for b in adam_betas)})
        self.svi = SVI(model, guide, self.optim, loss=elbo)
        self.step = 0
        self.last_terms: dict[str, float] = {}
        self._params_checked = False
        # the last checkpoint written or loaded here, (path, step): where to continue after a divergence
        self._saved: tuple[Path, int] | None = None
        self._stop_requested = False  # set by the SIGINT handler: finish the step, checkpoint, stop
        # training time of earlier segments of this run (from the checkpoint resumed), and the start of this one
        self._seconds_before = 0.0
        self._fit_t0: float | None = None

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: module, optimiser, ELBO, RNG, step, config."""
        elbo_state = self.elbo.state_dict() if hasattr(self.elbo, "state_dict") else {}
        return {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            "module": self.module.state_dict(),
            "optimizer": self.optim.get_state(),
            "elbo": elbo_state,
            "rng": get_rng_state(),
            "config": self.config,
            "train_seconds": self.train_seconds(),
        }

    def train_seconds(self) -> float:
        """Training time so far over every segment of the run (a resumed run adds its earlier segments)."""
        running = time.perf_counter() - self._fit_t0 if self._fit_t0 is not None else 0.0
        return self._seconds_before + running

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict`. Clears Pyro's param store so the module's values are used."""
        pyro.clear_param_store()
        load_module_state(self.module, state["module"])
        self.module.to(self.device)
        part = "optimizer"
        try:
            # torch's Optimizer.load_state_dict moves the moments to each parameter's device itself
            if not isinstance(state["optimizer"], Mapping):
                raise TypeError("not a mapping")
            self.optim.set_state(state["optimizer"])
            part = "elbo"
            if hasattr(self.elbo, "load_state_dict"):
                self.elbo.load_state_dict(state["elbo"])
            part = "rng"
            set_rng_state(state["rng"])
            part = "step"
            step = int(state["step"])
            if step < 0:
                raise ValueError(f"negative step {step}")
            part = "train_seconds"
            seconds = float(state.get("train_seconds", 0.0))  # absent in checkpoints of older versions
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as e:
            # a well-formed file whose contents were not written by this Trainer (edited or foreign)
            raise CheckpointError(
                f"the checkpoint's {part!r} entry cannot be restored ({type(e).__name__}: "
                f"{(str(e).splitlines() or [''])[0][:200]}); the file is damaged or not from a pyro-decomp run. "
                "Resume from an earlier checkpoint, or start the run afresh."
            ) from None
        self.step = step
        self._seconds_before = seconds if math.isfinite(seconds) and seconds >= 0 else 0.0

    def save(self) -> Path:
        """Write ``checkpoints/step_<step>.pt`` and ``checkpoint.pt`` (latest), pruning old step files.

        :raises NonFiniteLossError: (``term="parameters"``) when a parameter or an Adam moment is NaN or
            infinite; nothing is written, so the latest checkpoint stays a good one.
        """
        state = self.state_dict()
        self._check_state_finite(state)
        ckpt_dir = self.run_dir / "checkpoints"
        save_checkpoint(state, ckpt_dir / f"step_{self.step:08d}.pt")
        path = save_checkpoint(state, self.run_dir / CHECKPOINT_NAME, verify=False)
        self._saved = (path, self.step)
        for old in sorted(ckpt_dir.glob("step_*.pt"))[: -self.keep_checkpoints]:
            old.unlink()
        return path

    def _check_state_finite(self, state: Mapping[str, Any]) -> None:
        """The loss guard sees the parameters *before* an update; this sees them after it.

        A step whose loss was finite can still write NaN into the parameters (a huge learning rate), and
        the next step's loss would only reveal it after that state had been checkpointed.
        """
        bad = [f"parameter {name!r}" for name in nonfinite_parameters(state["module"])]
        for name, entry in state["optimizer"].items():
            for per in (entry.get("state") or {}).values() if isinstance(entry, Mapping) else ():
                for k, v in per.items():
                    finite = not (torch.is_tensor(v) and v.is_floating_point()) or bool(torch.isfinite(v).all())
                    if k != "step" and not finite:
                        bad.append(f"the Adam {k} of {name!r}")
        if bad:
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            raise NonFiniteLossError(
                f"training diverged: {bad[0]}{more} became non-finite in the update of step {self.step}, so that "
                f"step's checkpoint was not written; {self._last_good(self.step)}",
                term="parameters",
                step=self.step,
            )

    def _last_good(self, bad_step: int) -> str:
        """Where to continue from after step ``bad_step`` diverged (one sentence).

        The state that step started from (``bad_step - 1``) gave a non-finite loss or gradient, and
        restoring it restores the same random draws, so it would diverge again at any learning rate.
        The newest checkpoint *before* it (``<= bad_step - 2``) holds a state whose step was finite,
        and a lower learning rate then changes the update that went wrong.
        """
        lower = f"train.lr={self.lr / 10:g}"
        limit = bad_step - 2
        found: list[tuple[int, Path]] = []
        if self._saved is not None and self._saved[0].is_file():
            found.append((self._saved[1], self._saved[0]))
        ckpt_dir = self.run_dir / "checkpoints"
        for f in sorted(ckpt_dir.glob("step_*.pt")) if ckpt_dir.is_dir() else []:
            m = re.fullmatch(r"step_(\d+)\.pt", f.name)
            if m:
                found.append((int(m.group(1)), f))
        good = [(st, f) for st, f in found if st <= limit]
        if not good:
            if found:
                newest = max(found, key=lambda t: t[0])
                return (
                    f"no checkpoint from before step {max(limit, 0)} is left (the newest, {str(newest[1])!r} at "
                    f"step {newest[0]}, is where the diverging step started, so it would diverge again). Start "
                    f"the run again with a lower learning rate (e.g. {lower}), or raise train.keep_checkpoints."
                )
            return f"no checkpoint was written yet. Start the run again with a lower learning rate (e.g. {lower})."
        # prefer the name --resume uses by default when it is the same state
        step, path = max(good, key=lambda t: (t[0], t[1].name == CHECKPOINT_NAME))
        return (
            f"the last good checkpoint is {str(path)!r} (step {step}). Continue from it with a lower learning "
            f"rate: pyro-decomp run --resume {path} {lower} (or check the data and the model for NaNs)."
        )

    def resume(self, path: str | Path | None = None, *, state: Mapping[str, Any] | None = None) -> int:
        """Load ``path`` (a checkpoint or run dir; default: this run dir). Returns the step reached.

        :param state: the checkpoint already loaded from ``path`` (saves reading it twice).
        """
        path = Path(self.run_dir if path is None else path)
        if path.is_dir():
            path = latest_checkpoint(path) or path  # load_checkpoint names the missing checkpoint
        if state is None:
            state = load_checkpoint(path, map_location="cpu")
        self.load_state_dict(state)
        self._saved = (path, self.step)
        self._truncate_log(self.step)
        return self.step

    # ------------------------------------------------------------------ logs
    def _truncate_log(self, step: int) -> None:
        """Drop log lines past ``step`` (written after the checkpoint a resume starts from)."""
        path = self.run_dir / "logs" / "train.jsonl"
        if not path.is_file():
            return
        kept = []
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a half-written last line from a killed run
            if isinstance(rec, dict) and rec.get("step", 0) <= step:
                kept.append(line)
        path.write_text("".join(k + "\n" for k in kept))

    def _open_writers(self, start: int):
        log_dir = self.run_dir / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        jsonl = open(log_dir / "train.jsonl", "a")
        tb = None
        if self.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            tb = SummaryWriter(log_dir=str(log_dir / "tensorboard"), purge_step=start + 1 if start else None)
        return jsonl, tb

    # ------------------------------------------------------------------ loop
    def _batch(self, step: int) -> torch.Tensor:
        if self.batch_size is None:
            return self.data
        per_epoch = math.ceil(self.num_data / self.batch_size)
        epoch, i = divmod(step, per_epoch)
        if self._perm is None or self._perm[0] != epoch:
            # the same permutation as before (it depends only on the seed and the epoch), drawn once per epoch
            # rather than every step: a randperm of the 737,280 dSprites images costs milliseconds
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = (epoch, torch.randperm(self.num_data, generator=g).to(self.device))
        idx = self._perm[1][i * self.batch_size : (i + 1) * self.batch_size]
        return self.data[idx]

    def _check_params(self) -> None:
        """Every parameter of ``module`` must reach the optimiser; a silent gap would freeze it."""
        store = {id(p) for _, p in pyro.get_param_store().named_parameters()}
        missing = [n for n, p in self.module.named_parameters() if p.requires_grad and id(p) not in store]
        if missing:
            raise RuntimeError(
                f"parameters {missing[:4]}{'...' if len(missing) > 4 else ''} of the module are not seen by SVI "
                "(not registered in Pyro's param store), so they would never be trained. Make the model/guide "
                "PyroModule methods (@pyro_method) or call pyro.module(name, net) inside them."
            )
        self._params_checked = True

    def _check_finite(self, step: int, terms: Mapping[str, float]) -> None:
        bad = [k for k in (*LOSS_TERMS[1:], LOSS_TERMS[0]) if k in terms and not math.isfinite(terms[k])]
        if bad:
            raise NonFiniteLossError(
                f"training diverged: the {bad[0]} term is {terms[bad[0]]} at step {step}"
                + (f" (also non-finite: {', '.join(bad[1:])})" if len(bad) > 1 else "")
                + f"; {self._last_good(step)}",
                term=bad[0],
                step=step,
            )

    # ------------------------------------------------------------------ Ctrl-C
    def _install_sigint(self) -> Any:
        """First Ctrl-C: finish the current step, checkpoint, stop. Second Ctrl-C: stop at once.

        Only from the main thread and over Python's default handler (not over an application's own).
        """
        if threading.current_thread() is not threading.main_thread():
            return None
        previous = signal.getsignal(signal.SIGINT)
        if previous is not signal.default_int_handler:
            return None

        def handler(signum: int, frame: Any) -> None:
            if self._stop_requested:
                raise KeyboardInterrupt
            self._stop_requested = True  # no printing here: the signal may land inside a write to stderr

        signal.signal(signal.SIGINT, handler)
        return previous

    @staticmethod
    def _restore_sigint(previous: Any) -> None:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)

    def _interrupted(self, saved: Path | None, in_step: bool) -> TrainingInterrupted:
        resume = f"pyro-decomp run --resume {self.run_dir}"
        if saved is not None:
            msg = f"interrupted after step {self.step}; saved {str(saved)!r}. Continue with: {resume}"
        else:
            last = self._saved or (None, None)
            where = (
                f"the latest checkpoint is {str(last[0])!r} (step {last[1]})"
                if last[0] is not None
                else "no checkpoint was written yet"
            )
            why = "inside a step (second Ctrl-C)" if in_step else f"at step {self.step}"
            msg = f"interrupted {why}; nothing new was saved and {where}."
            if last[0] is not None:
                msg += f" Continue with: {resume}"
        return TrainingInterrupted(msg, step=self.step, checkpoint=saved or (self._saved[0] if self._saved else None))

    def fit(self, *, resume: bool | str | Path = False) -> dict[str, Any]:
        """Train up to ``steps``; return ``{"step", "terms", "seconds"}`` (``seconds``: training time over every
        segment of the run, a resumed run's earlier ones included).

        :param resume: ``True`` to continue from this run dir's latest checkpoint, or a checkpoint path.

        Pyro's global param store is cleared first (training owns it), so the module's own tensors are
        the ones optimised.
        """
        clean_stale_temp_files(self.run_dir)
        if resume:
            self.resume(None if resume is True else resume)
        elif self.step == 0:
            # a stale entry under the same name (an earlier model in this process) would shadow the
            # module's parameters: pyro.module hands SVI the stored tensor instead of the module's
            pyro.clear_param_store()
            self._truncate_log(0)  # lines of an earlier attempt that stopped before its first checkpoint
        start = self.step
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if start == 0:
            # the initial state: a run killed or diverging before its first periodic checkpoint can still
            # be resumed (at a lower learning rate) instead of being lost
            self.save()
        jsonl, tb = self._open_writers(start)
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=self.steps, initial=start, desc="train", dynamic_ncols=True, leave=True)
        t0 = time.perf_counter()
        self._fit_t0 = t0
        in_step = False
        self._stop_requested = False
        previous_handler = self._install_sigint()
        try:
            with pyro.validation_enabled(self.validate):
                while self.step < self.steps:
                    batch = self._batch(self.step)
                    in_step = True
                    loss = self.svi.step(batch, dataset_size=self.num_data)
                    self.step += 1
                    in_step = False
                    if not self._params_checked:
                        self._check_params()
                    raw = getattr(self.elbo, "last_terms", None) or {"loss": torch.tensor(loss)}
                    terms = {k: float(v) for k, v in raw.items() if torch.is_tensor(v) and v.numel() == 1}
                    self.last_terms = terms
                    self._check_finite(self.step, terms)
                    if self.step % self.log_every == 0 or self.step == self.steps:
                        jsonl.write(json.dumps({"step": self.step, **_finite_or_none(terms)}) + "\n")
                        if tb is not None:
                            for k, v in terms.items():
                                tb.add_scalar(f"train/{k}", v, self.step)
                    if bar is not None:
                        bar.update(1)
                        if self.step % 10 == 0 or self.step == self.steps:
                            bar.set_postfix({k: f"{v:.4g}" for k, v in terms.items() if "/" not in k}, refresh=False)
                    if self.step % self.checkpoint_every == 0 and self.step < self.steps:
                        jsonl.flush()
                        self.save()
                    for cb in self.callbacks:
                        cb(self, self.step, terms)
                    if self._stop_requested and self.step < self.steps:
                        raise KeyboardInterrupt
            if self.step > start:
                self.save()
            if self._stop_requested:  # Ctrl-C during the last step: training is complete and saved
                raise TrainingInterrupted(
                    f"interrupted after the last step ({self.step}), which was saved; evaluate the run with: "
                    f"pyro-decomp eval {self.run_dir}",
                    step=self.step,
                    checkpoint=self._saved[0] if self._saved else None,
                )
        except KeyboardInterrupt as e:
            if isinstance(e, TrainingInterrupted):
                raise
            # a clean stop: keep the work done so far (the state after `self.step` complete steps);
            # not when a second Ctrl-C landed inside svi.step, where parameters may be half-updated
            saved = None
            if not in_step and self.step > start and self._saved is not None and self._saved[1] == self.step:
                saved = self._saved[0]  # this step was just checkpointed
            elif not in_step and self.step > start and math.isfinite(self.last_terms.get("loss", math.nan)):
                jsonl.flush()
                saved = self.save()
            raise self._interrupted(saved, in_step) from None
        finally:
            self._restore_sigint(previous_handler)
            for closer in (jsonl.close, *((tb.close,) if tb is not None else ()), *((bar.close,) if bar else ())):
                try:
                    closer()
                except OSError:
                    pass  # e.g. a full disk on the final flush: the error being raised already says so
        seconds = self.train_seconds()  # every segment of the run, not only this call's
        self._seconds_before, self._fit_t0 = seconds, None
        return {"step": self.step, "terms": dict(self.last_terms), "seconds": seconds}


def _finite_or_none(terms: Mapping[str, float]) -> dict[str, float | None]:
    return {k: (v if math.isfinite(v) else None) for k, v in terms.items()}
