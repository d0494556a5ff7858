"""Registering a plain ``nn.Module`` child of a :class:`~pyro.nn.PyroModule` with Pyro, with less per-step work.

Reading a plain ``nn.Module`` attribute of a ``PyroModule`` inside its context runs ``pyro.module``, which
walks ``named_parameters()`` (nested generators) and issues one ``pyro.param`` statement per tensor, every
step. :func:`registered_child` issues exactly the same ``pyro.param`` statements (same names, same tensors,
same order), but keeps the walk's result per module and only re-checks, each call, that the module tree is
unchanged (the same children and parameter tensors, by identity). Anything else - a ``PyroModule`` child,
no active context, Pyro's ``module_local_params`` mode, or a frozen parameter (``pyro.module`` warns about
it) - goes through ``PyroModule``'s own attribute access.
"""

from __future__ import annotations

import weakref
from operator import is_

import pyro
import torch
from pyro.nn import PyroModule
from pyro.nn.module import _is_module_local_param_enabled
from pyro.params.param_store import param_with_module_name

__all__ = ["first_parameter", "registered_child"]

# module -> (tree snapshot, ((name, parameter), ...), {prefix: full parameter names})
_INDEX: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _snapshot(module: torch.nn.Module) -> tuple:
    return tuple((m, tuple(m._parameters.values()), tuple(m._modules.values())) for m in module.modules())


def _unchanged(snapshot: tuple) -> bool:
    """Every module of the tree still has the same parameter tensors and children (by identity, in order)."""
    for m, params, children in snapshot:
        own, kids = m._parameters, m._modules
        if not (
            len(own) == len(params)
            and len(kids) == len(children)
            and all(map(is_, own.values(), params))
            and all(map(is_, kids.values(), children))
        ):
            return False
    return True


def _index(module: torch.nn.Module) -> tuple:
    entry = _INDEX.get(module)
    if entry is None or not _unchanged(entry[0]):
        entry = (_snapshot(module), tuple(module.named_parameters()), {})
        _INDEX[module] = entry
    return entry


def first_parameter(module: torch.nn.Module) -> torch.Tensor | None:
    """``next(module.parameters(), None)``, from the cached walk."""
    named = _index(module)[1]
    return named[0][1] if named else None


def named_parameters(module: torch.nn.Module) -> tuple[tuple[str, torch.Tensor], ...]:
    """``tuple(module.named_parameters())``, from the cached walk."""
    return _index(module)[1]


def registered_child(owner: PyroModule, name: str) -> torch.nn.Module:
    """``getattr(owner, name)`` for a child module: the same ``pyro.param`` statements as ``pyro.module``."""
    module = owner._modules.get(name)
    if (
        module is None
        or isinstance(module, PyroModule)
        or not owner._pyro_context.active
        or _is_module_local_param_enabled()
    ):
        return getattr(owner, name)
    _, named, full_names = _index(module)
    for _, p in named:
        if not p.requires_grad:
            return getattr(owner, name)  # pyro.module warns about frozen parameters in training mode
    prefix = owner._pyro_get_fullname(name)
    names = full_names.get(prefix)
    if names is None:
        names = full_names[prefix] = tuple(param_with_module_name(prefix, n) for n, _ in named)
    for full, (_, p) in zip(names, named):
        pyro.param(full, p)
    return module
