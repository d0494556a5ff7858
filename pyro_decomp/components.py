"""Registries of the parts a config can name: data sets, priors, likelihoods, network pairs, divergences.

A config names each part by a *spec*: a mapping with a ``name`` (``type`` for a divergence) and that part's
own parameters, e.g. ``prior: {name: student_t, df: 3}``. The parameters a part accepts are the keyword
parameters of its builder, read from its signature, so a spec can never drift from the code: an unknown or
misspelled parameter is an error that lists the valid ones ("did you mean"), and a missing one takes the
builder's default, which the resolved config then records.

Some arguments are supplied by the experiment rather than the user (``latent_dim`` for a prior, the
likelihood's ``event_dim``, the decoder's ``out_multiplier``); they are a component's ``injected``
arguments and are not config keys.

Register a new part with the decorators, e.g.::

    from pyro_decomp.components import register_prior

    @register_prior("laplace")
    def laplace_prior(latent_dim: int, *, scale: float = 1.0):
        return MyLaplacePrior(latent_dim, scale=scale)

after which ``prior.name=laplace prior.scale=0.5`` works in every experiment.
"""

from __future__ import annotations

import difflib
import inspect
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "COMPONENTS",
    "Component",
    "Spec",
    "component",
    "register_data",
    "register_divergence",
    "register_likelihood",
    "register_networks",
    "register_prior",
    "registered",
    "resolve_spec",
]


@dataclass
class Component:
    """One registered part: its builder, the arguments the experiment injects, and facts about it."""

    kind: str
    name: str
    builder: Callable[..., Any]
    injected: tuple[str, ...] = ()
    #: facts the experiment checks before loading anything (e.g. a data set's ``event_dim`` and ``binary``)
    meta: dict[str, Any] = field(default_factory=dict)
    doc: str = ""

    def parameters(self) -> dict[str, inspect.Parameter]:
        """The builder's keyword parameters a config may set (``*args``/``**kwargs`` and injected ones excluded)."""
        sig = inspect.signature(self.builder)
        skip = {"self", *self.injected}
        return {
            n: p
            for n, p in sig.parameters.items()
            if n not in skip and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        }

    def defaults(self) -> dict[str, Any]:
        out = {}
        for n, p in self.parameters().items():
            if p.default is not inspect.Parameter.empty and _plain(p.default):
                out[n] = list(p.default) if isinstance(p.default, tuple) else p.default
        return out

    def required(self) -> list[str]:
        return [n for n, p in self.parameters().items() if p.default is inspect.Parameter.empty]

    def hints(self) -> dict[str, Any]:
        try:
            return typing.get_type_hints(self.builder)
        except Exception:  # unresolvable forward references: no type checks, the builder validates
            return {}


def _plain(value: Any) -> bool:
    """YAML- and ``weights_only``-safe: None, bool, int, float, str, and lists/tuples/dicts of them."""
    if value is None or isinstance(value, bool | int | float | str):
        return True
    if isinstance(value, list | tuple):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


#: kind -> name -> Component. Kinds: data, prior, likelihood, networks, divergence.
COMPONENTS: dict[str, dict[str, Component]] = {k: {} for k in ("data", "prior", "likelihood", "networks", "divergence")}
#: the key that names the part in a spec, per kind
NAME_KEY = {"data": "name", "prior": "name", "likelihood": "name", "networks": "name", "divergence": "type"}


def _register(kind: str, name: str, injected: tuple[str, ...] = (), **meta: Any):
    def deco(builder: Callable[..., Any]) -> Callable[..., Any]:
        doc = inspect.getdoc(builder) or ""
        COMPONENTS[kind][name] = Component(kind, name, builder, tuple(injected), dict(meta), doc.split("\n")[0])
        return builder

    return deco


def register_data(name: str, *, injected: tuple[str, ...] = ("lazy",), **meta: Any):
    """Register a data-set builder ``f(*, lazy, **params) -> DataBundle``. ``meta``: ``event_dim`` (1 for
    vectors, 3 for images), ``binary`` (observations in {0, 1}), ``ground_truth`` (factors for the
    disentanglement metrics), ``labels`` (``"classes"``, ``"factors"`` or ``"clusters"``)."""
    return _register("data", name, injected, **meta)


def register_prior(name: str, *, injected: tuple[str, ...] = ("latent_dim",), **meta: Any):
    """Register a prior builder ``f(latent_dim, *, **params)``; add ``"x_train"`` to ``injected`` to receive
    the training data (e.g. a PCA-initialised prior)."""
    return _register("prior", name, injected, **meta)


def register_likelihood(name: str, *, injected: tuple[str, ...] = ("event_dim",), **meta: Any):
    """Register a likelihood builder ``f(event_dim, *, **params)``; ``meta['binary_only']`` marks one that
    needs binary data, ``meta['decoder_outputs']`` is a function of the params giving the decoder's
    ``out_multiplier``."""
    return _register("likelihood", name, injected, **meta)


def register_networks(name: str, *, injected: tuple[str, ...] = ("latent_dim", "out_multiplier"), **meta: Any):
    """Register an ``(encoder, decoder)`` builder; ``meta['event_dim']`` says what data it takes."""
    return _register("networks", name, injected, **meta)


def register_divergence(name: str, *, injected: tuple[str, ...] = ("latent_dim",), **meta: Any):
    """Register a divergence builder ``f(*, **params) -> Divergence | None``."""
    return _register("divergence", name, injected, **meta)


def registered(kind: str) -> dict[str, Component]:
    """The registered parts of ``kind`` by name (built-ins included)."""
    _load_builtins()
    if kind not in COMPONENTS:
        raise ValueError(f"unknown component kind {kind!r}; choose one of {', '.join(COMPONENTS)}.")
    return dict(COMPONENTS[kind])


def component(kind: str, name: str) -> Component:
    """The registered part ``name`` of ``kind``; a ``ValueError`` lists the choices (with "did you mean")."""
    _load_builtins()
    table = COMPONENTS.get(kind)
    if table is None:
        raise ValueError(f"unknown component kind {kind!r}; choose one of {', '.join(COMPONENTS)}.")
    if name not in table:
        near = difflib.get_close_matches(str(name), list(table), n=3, cutoff=0.5)
        hint = f" Did you mean {' or '.join(map(repr, near))}?" if near else ""
        raise ValueError(f"{kind}.{NAME_KEY[kind]}: unknown {kind} {name!r}.{hint} Choose one of: "
                         f"{', '.join(sorted(table))}.")  # fmt: skip
    return table[name]


class Spec(Mapping):
    """A resolved spec: ``name`` (or ``type``) plus parameters, read as a mapping or by attribute.

    >>> s = Spec("prior", {"name": "student_t", "df": 3.0})
    >>> s.name, s.df, dict(s)
    ('student_t', 3.0, {'name': 'student_t', 'df': 3.0})
    """

    def __init__(self, kind: str, values: Mapping[str, Any]) -> None:
        object.__setattr__(self, "_kind", kind)
        object.__setattr__(self, "_values", dict(values))

    @property
    def name(self) -> str:
        return self._values[NAME_KEY[self._kind]]

    @property
    def params(self) -> dict[str, Any]:
        """The parameters, without the name."""
        return {k: v for k, v in self._values.items() if k != NAME_KEY[self._kind]}

    def __getattr__(self, key: str) -> Any:
        try:
            return self._values[key]
        except KeyError:
            raise AttributeError(f"{self._kind} {self.name!r} has no parameter {key!r}") from None

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError("a Spec is read-only; change the config with overrides instead.")

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Spec({self._kind!r}, {self._values!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and dict(self) == dict(other)

    __hash__ = None  # type: ignore[assignment]

    def component(self) -> Component:
        return component(self._kind, self.name)

    def build(self, **injected: Any) -> Any:
        """Call the builder with the parameters and the injected arguments it accepts."""
        comp = self.component()
        accepted = inspect.signature(comp.builder).parameters
        extra = {k: v for k, v in injected.items() if k in accepted}
        try:
            return comp.builder(**extra, **self.params)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{self._kind} {self.name!r}: {e}") from None


def resolve_spec(kind: str, raw: Any, *, coerce: Callable[[str, Any, Any], Any] | None = None) -> Spec:
    """Validate a spec mapping against the registered builder and fill in its defaults.

    :param coerce: ``coerce(key, value, type)`` checks a value against its annotation (the config's checker);
        parameters without a usable annotation are passed through for the builder to check.
    """
    key = NAME_KEY[kind]
    if isinstance(raw, str):  # shorthand: prior: isotropic
        raw = {key: raw}
    if not isinstance(raw, Mapping):
        raise ValueError(f"{kind}: expected a mapping with a {key!r} key (e.g. {{{key}: ...}}), got {raw!r}.")
    if key not in raw:
        _load_builtins()
        names = ", ".join(sorted(COMPONENTS[kind]))
        raise ValueError(f"{kind}: the spec needs a {key!r} key naming the {kind}; choose one of: {names}.")
    comp = component(kind, raw[key])
    params = comp.parameters()
    hints = comp.hints()
    out: dict[str, Any] = {key: comp.name}
    for name, value in raw.items():
        if name == key:
            continue
        if name not in params:
            valid = sorted(params)
            near = difflib.get_close_matches(str(name), valid, n=3, cutoff=0.5)
            hint = f" Did you mean {' or '.join(repr(f'{kind}.{n}') for n in near)}?" if near else ""
            if name in comp.injected:
                raise ValueError(f"{kind}.{name}: is set by the experiment, not the config, for {kind} {comp.name!r}.")
            raise ValueError(
                f"unknown config key '{kind}.{name}' for {kind} {comp.name!r}.{hint} "
                f"Valid keys: {', '.join(f'{kind}.{n}' for n in valid) or '(none)'}."
            )
        if coerce is not None and name in hints and value is not None:
            value = coerce(f"{kind}.{name}", value, hints[name])
        out[name] = value
    for name, default in comp.defaults().items():
        out.setdefault(name, default)
    missing = [n for n in comp.required() if n not in out]
    if missing:
        raise ValueError(f"{kind} {comp.name!r} needs {', '.join(f'{kind}.{n}' for n in missing)}.")
    return Spec(kind, out)


_LOADED = False


def _load_builtins() -> None:
    """Import the modules that register the built-in parts (once)."""
    global _LOADED
    if not _LOADED:
        _LOADED = True
        from . import _builtin_components  # noqa: F401
