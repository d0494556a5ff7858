"""Schedules for β, α, the capacity :math:`C` and regulariser weights (SPEC §2).

A schedule is a callable ``step -> float`` with ``state_dict()`` / ``load_state_dict()``.
:class:`~pyro_decomp.DecompositionELBO` accepts one for ``beta`` and ``alpha`` and saves its state in
checkpoints; the regularisers in :mod:`pyro_decomp.divergences` accept one for their own weights
(e.g. the capacity of :class:`~pyro_decomp.divergences.CapacityKL`).

Schedules are pure functions of the step, so their state is their configuration (plain floats and
ints, loadable with ``torch.load(weights_only=True)``); restoring it into a schedule of the same type
reproduces every value bit for bit.

>>> warm = LinearWarmup(0.0, 4.0, steps=100)
>>> [warm(0), warm(50), warm(100), warm(1000)]
[0.0, 2.0, 4.0, 4.0]
>>> schedule_from_dict({"type": "cyclical", "low": 0.0, "high": 1.0, "period": 10})(7)
1.0
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

__all__ = ["Constant", "Cyclical", "LinearWarmup", "Schedule", "as_schedule", "schedule_from_dict"]


def _number(name: str, value: Any, *, minimum: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}.")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}.")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}.")
    return value


def _integer(name: str, value: Any, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def _check_step(step: Any) -> int:
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        # accept integral tensors / numpy ints too
        try:
            as_int = int(step)
        except (TypeError, ValueError):
            raise TypeError(f"step must be a non-negative integer, got {step!r}.") from None
        if as_int != step or as_int < 0:
            raise ValueError(f"step must be a non-negative integer, got {step!r}.")
        return as_int
    return step


class Schedule:
    """Base class: a weight as a function of the optimisation step (``step = 0, 1, ...``)."""

    #: the ``type`` key used by :func:`schedule_from_dict`
    type_name: str = ""
    _fields: tuple[str, ...] = ()

    def __call__(self, step: int) -> float:
        return self._at(_check_step(step))

    def _at(self, step: int) -> float:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """The configuration as primitives (``type`` plus the constructor arguments)."""
        return {"type": self.type_name, **{k: getattr(self, k) for k in self._fields}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a configuration saved by :meth:`state_dict` of a schedule of the same type."""
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict from state_dict(), got {type(state).__name__}.")
        if state.get("type", self.type_name) != self.type_name:
            raise ValueError(
                f"cannot load a {state.get('type')!r} schedule's state into a {self.type_name!r} schedule."
            )
        fresh = type(self)(**{k: v for k, v in state.items() if k != "type"})
        for k in self._fields:
            setattr(self, k, getattr(fresh, k))

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.state_dict() == other.state_dict()  # type: ignore[union-attr]

    def __hash__(self) -> int:
        return hash((type(self).__name__, tuple(sorted(self.state_dict().items()))))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={getattr(self, k)!r}" for k in self._fields)
        return f"{type(self).__name__}({args})"


class Constant(Schedule):
    """The same value at every step."""

    type_name = "constant"
    _fields = ("value",)

    def __init__(self, value: float = 1.0) -> None:
        self.value = _number("value", value)

    def _at(self, step: int) -> float:
        return self.value

    def __repr__(self) -> str:
        return f"Constant({self.value!r})"


class LinearWarmup(Schedule):
    """``start`` for ``delay`` steps, then linear to ``end`` over ``steps`` steps, then ``end``.

    .. math:: w(t) = \\mathrm{start} + (\\mathrm{end} - \\mathrm{start})
        \\,\\mathrm{clip}\\big((t - \\mathrm{delay}) / \\mathrm{steps}, 0, 1\\big)

    Used for KL warm-up (β from 0 to 1) and for the capacity :math:`C(t)` of Burgess et al. (2018),
    which rises linearly from 0 to :math:`C_{\\max}`.

    :param start: value at step ``delay`` and before.
    :param end: value from step ``delay + steps`` on.
    :param steps: length of the ramp (``0`` jumps straight to ``end`` at ``delay``).
    :param delay: number of steps held at ``start`` before the ramp begins.
    """

    type_name = "linear_warmup"
    _fields = ("start", "end", "steps", "delay")

    def __init__(self, start: float = 0.0, end: float = 1.0, steps: int = 1000, delay: int = 0) -> None:
        self.start = _number("start", start)
        self.end = _number("end", end)
        self.steps = _integer("steps", steps, minimum=0)
        self.delay = _integer("delay", delay, minimum=0)

    def _at(self, step: int) -> float:
        t = step - self.delay
        if t <= 0:
            return self.start if self.steps > 0 or t < 0 else self.end
        if t >= self.steps:
            return self.end
        return self.start + (self.end - self.start) * (t / self.steps)


class Cyclical(Schedule):
    """Cyclical annealing (Fu et al., 2019): repeated linear ramps from ``low`` to ``high``.

    Each cycle has ``period`` steps; the first ``ramp_fraction`` of it rises linearly from ``low`` to
    ``high`` and the rest holds ``high``. After ``num_cycles`` cycles (if given) the value stays at ``high``.

    .. math:: w(t) = \\mathrm{low} + (\\mathrm{high} - \\mathrm{low})
        \\min\\Big(1, \\frac{t \\bmod \\mathrm{period}}{\\mathrm{ramp\\_fraction}\\cdot\\mathrm{period}}\\Big)

    :param low: value at the start of each cycle.
    :param high: plateau value.
    :param period: steps per cycle (>= 1).
    :param ramp_fraction: fraction of the cycle spent ramping, in (0, 1]; Fu et al. use 0.5.
    :param num_cycles: number of cycles before holding ``high``; ``None`` cycles forever.
    """

    type_name = "cyclical"
    _fields = ("low", "high", "period", "ramp_fraction", "num_cycles")

    def __init__(
        self,
        low: float = 0.0,
        high: float = 1.0,
        period: int = 1000,
        ramp_fraction: float = 0.5,
        num_cycles: int | None = None,
    ) -> None:
        self.low = _number("low", low)
        self.high = _number("high", high)
        self.period = _integer("period", period, minimum=1)
        self.ramp_fraction = _number("ramp_fraction", ramp_fraction)
        if not 0.0 < self.ramp_fraction <= 1.0:
            raise ValueError(f"ramp_fraction must be in (0, 1], got {ramp_fraction!r}.")
        self.num_cycles = None if num_cycles is None else _integer("num_cycles", num_cycles, minimum=1)

    def _at(self, step: int) -> float:
        if self.num_cycles is not None and step >= self.num_cycles * self.period:
            return self.high
        ramp = self.ramp_fraction * self.period
        frac = min(1.0, (step % self.period) / ramp)
        return self.low + (self.high - self.low) * frac


_TYPES: dict[str, type[Schedule]] = {cls.type_name: cls for cls in (Constant, LinearWarmup, Cyclical)}


def schedule_from_dict(spec: dict[str, Any] | float | int) -> Schedule:
    """Build a schedule from a config mapping such as ``{"type": "linear_warmup", "end": 25, "steps": 1e4}``.

    A bare number gives a :class:`Constant`. The ``type`` is one of ``constant``, ``linear_warmup``,
    ``cyclical``; the other keys are the constructor's arguments. Unknown types and keys are rejected.
    """
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        return Constant(float(spec))
    if not isinstance(spec, dict):
        raise TypeError(f"a schedule spec must be a number or a mapping with a 'type' key, got {spec!r}.")
    kind = spec.get("type")
    if kind not in _TYPES:
        raise ValueError(f"schedule type must be one of {sorted(_TYPES)}, got {kind!r}.")
    cls = _TYPES[kind]
    kwargs = {k: v for k, v in spec.items() if k != "type"}
    # YAML writes 1e4 as a float; integer fields take integral floats
    for k, v in list(kwargs.items()):
        if k in ("steps", "delay", "period", "num_cycles") and isinstance(v, float) and v.is_integer():
            kwargs[k] = int(v)
    allowed = set(cls._fields)
    unknown = set(kwargs) - allowed
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)} for a {kind!r} schedule; valid keys: {sorted(allowed)}.")
    return cls(**kwargs)


def as_schedule(name: str, weight: float | Callable[[int], float] | dict) -> Callable[[int], float]:
    """A number, a schedule, a ``step -> float`` callable or a schedule spec, as a callable (validated)."""
    if isinstance(weight, dict):
        return schedule_from_dict(weight)
    if callable(weight):
        return weight
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        raise TypeError(f"{name} must be a number or a schedule (callable step -> float), got {weight!r}.")
    return Constant(_number(name, weight))
