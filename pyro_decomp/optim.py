"""Optimisers for :class:`pyro.infer.SVI` with less per-step overhead than :mod:`pyro.optim`.

:class:`pyro.optim.PyroOptim` builds one ``torch.optim`` object per parameter tensor and steps each in
a Python loop: for the small networks of the pinwheel experiment that loop is a large share of an SVI
step. :class:`Adam` here is a drop-in replacement that keeps **one** ``torch.optim.Adam`` (``foreach``
kernels) over every parameter SVI hands it, with the same semantics:

* parameters are added the first time SVI passes them, and only the parameters of the current step
  move (a parameter absent from a step is not touched, even by momentum);
* :meth:`Adam.get_state` / :meth:`Adam.set_state` use Pyro's format, ``{param_name: optimizer
  state_dict of that one parameter}``, so checkpoints interoperate with ``pyro.optim.Adam`` both ways
  and load with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

import pyro
import torch
from pyro.optim import PyroOptim

__all__ = ["Adam"]

_ALLOWED = {"lr", "betas", "eps", "weight_decay", "amsgrad", "maximize", "foreach", "capturable", "differentiable"}


class Adam(PyroOptim):
    """Pyro-compatible Adam with a single fused ``torch.optim.Adam`` over all parameters.

    :param optim_args: keyword arguments of :class:`torch.optim.Adam` (``lr``, ``betas``, ``eps``,
        ``weight_decay``, ``amsgrad``), or a callable ``param_name -> dict`` as in :mod:`pyro.optim`
        (parameters with equal settings share one group).

    >>> import pyro_decomp
    >>> optim = pyro_decomp.optim.Adam({"lr": 1e-3})
    >>> svi = pyro.infer.SVI(lambda: None, lambda: None, optim, loss=pyro.infer.Trace_ELBO())
    """

    def __init__(self, optim_args: dict[str, Any] | Callable[[str], dict[str, Any]]) -> None:
        if not (callable(optim_args) or isinstance(optim_args, dict)):
            raise TypeError(
                f"optim_args must be a dict of Adam settings or a callable, got {type(optim_args).__name__}."
            )
        if isinstance(optim_args, dict):
            self._check_args(optim_args)
        super().__init__(torch.optim.Adam, optim_args)
        self._optimizer: torch.optim.Adam | None = None
        self._params: dict[torch.Tensor, str] = {}

    @staticmethod
    def _check_args(args: dict[str, Any]) -> dict[str, Any]:
        unknown = set(args) - _ALLOWED
        if unknown:
            raise ValueError(f"unknown Adam settings {sorted(unknown)}; valid ones are {sorted(_ALLOWED)}.")
        lr = args.get("lr", 1e-3)
        if not isinstance(lr, (int, float)) or lr <= 0:
            raise ValueError(f"lr must be a positive number, got {lr!r}.")
        return args

    def _args_for(self, name: str) -> dict[str, Any]:
        args = self.pt_optim_args(name) if callable(self.pt_optim_args) else self.pt_optim_args
        args = dict(self._check_args(dict(args)))
        args.setdefault("foreach", True)
        return args

    def _add(self, new: Iterable[torch.Tensor]) -> None:
        store = pyro.get_param_store()
        # a deterministic order (by name) keeps the optimizer's internal layout reproducible across runs
        named = sorted(((store.param_name(p) or f"<unnamed {id(p)}>", p) for p in new), key=lambda t: t[0])
        for name, p in named:
            args = self._args_for(name)
            if self._optimizer is None:
                self._optimizer = torch.optim.Adam([p], **args)
            else:
                for group in self._optimizer.param_groups:
                    if all(group.get(k) == v for k, v in args.items()):
                        group["params"].append(p)
                        break
                else:
                    self._optimizer.add_param_group({"params": [p], **args})
            self._params[p] = name
            self.optim_objs[p] = self._optimizer  # keeps PyroOptim's bookkeeping meaningful
            waiting = self._state_waiting_to_be_consumed.pop(name, None)
            if waiting is not None:
                self._load_param_state(p, waiting)

    def _load_param_state(self, p: torch.Tensor, state: dict[str, Any]) -> None:
        per = state.get("state", {})
        if per:
            (entry,) = per.values()
            self._optimizer.state[p] = {
                k: (v.detach().clone().to(p.device) if torch.is_tensor(v) and k != "step" else copy.deepcopy(v))
                for k, v in entry.items()
            }

    def __call__(self, params: Iterable[torch.Tensor], *args: Any, **kwargs: Any) -> None:
        params = list(params)
        new = [p for p in params if p not in self._params]
        if new:
            self._add(new)
        if self._optimizer is None:
            return
        if len(params) != len(self._params):
            # Pyro steps only the given parameters: hide the others' (zeroed) gradients from Adam
            active = set(params)
            for p in self._params:
                if p not in active:
                    p.grad = None
        self._optimizer.step(*args, **kwargs)
        # SVI then zeroes the gradients with a fresh zeros_like per tensor; None is the same to the next
        # backward pass (it accumulates into nothing) and skips those allocations
        for p in params:
            p.grad = None

    def get_state(self) -> dict[str, Any]:
        """``{param_name: {"state": {0: ...}, "param_groups": [...]}}``, Pyro's per-parameter format."""
        out: dict[str, Any] = dict(self._state_waiting_to_be_consumed)
        if self._optimizer is None:
            return out
        for group in self._optimizer.param_groups:
            settings = {k: v for k, v in group.items() if k != "params"}
            for p in group["params"]:
                entry = self._optimizer.state.get(p)
                out[self._params[p]] = {
                    "state": {0: {k: (v.detach().clone() if torch.is_tensor(v) else v) for k, v in entry.items()}}
                    if entry
                    else {},
                    "param_groups": [{**copy.deepcopy(settings), "params": [0]}],
                }
        return out

    def set_state(self, state_dict: dict[str, Any]) -> None:
        """Load :meth:`get_state` output (or ``pyro.optim.Adam``'s); applied as parameters appear."""
        for name, state in state_dict.items():
            p = next((q for q, n in self._params.items() if n == name), None)
            if p is None:
                self._state_waiting_to_be_consumed[name] = state
            else:
                self._load_param_state(p, state)

    def load(self, filename: str, map_location: Any = None) -> None:
        """Load optimizer state saved by :meth:`save` (``weights_only=True``)."""
        with open(filename, "rb") as f:
            self.set_state(torch.load(f, map_location=map_location, weights_only=True))
