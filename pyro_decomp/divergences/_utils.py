"""Private helpers shared by the disentanglement regularisers (weights with schedules, per-dimension densities)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch.distributions import Distribution, Independent

from ..schedules import as_schedule
from .base import Divergence


def check_dataset_size(dataset_size: Any) -> int | None:
    """``None`` or a positive integer."""
    if dataset_size is None:
        return None
    if isinstance(dataset_size, bool) or not isinstance(dataset_size, int) or dataset_size < 1:
        raise ValueError(f"dataset_size must be a positive integer or None (use the ELBO's), got {dataset_size!r}.")
    return int(dataset_size)


class ScheduledDivergence(Divergence):
    """A divergence whose weights may be schedules ``step -> float``.

    The step is counted by :meth:`update`, which :class:`~pyro_decomp.DecompositionELBO` calls once per
    ``loss_and_grads``: it therefore equals ``elbo.step`` when both start together, and both are saved by
    ``elbo.state_dict()``.
    """

    _weight_names: tuple[str, ...] = ()

    def __init__(self, *, num_prior_samples: int | None = None) -> None:
        super().__init__(num_prior_samples=num_prior_samples)
        self.step = 0
        self._schedules: dict[str, Callable[[int], float]] = {}

    def _set_weight(self, name: str, weight: Any, *, allow_negative: bool = False) -> None:
        sched = as_schedule(name, weight)
        value = self._evaluate(name, sched, 0, allow_negative=allow_negative)
        del value
        self._schedules[name] = sched

    @staticmethod
    def _evaluate(name: str, sched: Callable[[int], float], step: int, *, allow_negative: bool = False) -> float:
        value = sched(step)
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise TypeError(f"{name} must be a number or a schedule returning one, got {value!r}.") from None
        if not math.isfinite(value) or (value < 0 and not allow_negative):
            raise ValueError(f"{name} must be finite and >= 0, got {value!r} at step {step}.")
        return value

    def weight(self, name: str) -> float:
        """The current value of weight ``name``."""
        return self._evaluate(name, self._schedules[name], self.step, allow_negative=True)

    def current_weights(self) -> dict[str, float]:
        return {name: self.weight(name) for name in self._schedules}

    def update(self, batch) -> dict[str, float]:
        self.step += 1
        return {}

    def state_dict(self) -> dict:
        state: dict[str, Any] = {"step": self.step}
        for name, sched in self._schedules.items():
            if hasattr(sched, "state_dict"):
                state[f"schedule/{name}"] = sched.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict) or "step" not in state:
            raise ValueError(f"{type(self).__name__}.load_state_dict expects a dict from state_dict() with a 'step'.")
        self.step = int(state["step"])
        for name, sched in self._schedules.items():
            key = f"schedule/{name}"
            if key in state and hasattr(sched, "load_state_dict"):
                sched.load_state_dict(state[key])

    def __repr__(self) -> str:
        fields = {k: v for k, v in vars(self).items() if not k.startswith("_")}
        fields.update(self._schedules)
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in fields.items())})"


def per_dimension_pairwise_log_prob(guide_dist: Distribution, z: torch.Tensor, owner: str) -> torch.Tensor:
    """:math:`\\log q(z_{j,d} \\mid x_i)` per dimension: ``guide_dist`` ``[P, B]``, ``z: [P, M, D]`` → ``[P, M, B, D]``.

    Needs a factorised guide, i.e. an :class:`~torch.distributions.Independent` over a distribution whose
    batch holds the latent dimensions (``Normal(loc, scale).to_event(1)``).
    """
    if not isinstance(guide_dist, Independent) or guide_dist.reinterpreted_batch_ndims != 1:
        raise ValueError(
            f"{owner} needs the per-dimension marginals of q(z|x), so the guide must be factorised over the "
            f"latent dimensions, e.g. dist.Normal(loc, scale).to_event(1); got {type(guide_dist).__name__}. "
            "Use a mean-field guide, or an estimator that only needs the joint density."
        )
    value = z.transpose(0, 1).unsqueeze(-2)  # [M, P, 1, D] against batch_shape [P, B, D]
    return guide_dist.base_dist.log_prob(value).transpose(0, 1)


def guide_moments(guide_dist: Distribution, owner: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (diagonal) variance of :math:`q(z \\mid x_b)`, each ``[P, B, D]``."""
    try:
        mean, var = guide_dist.mean, guide_dist.variance
    except NotImplementedError:
        raise ValueError(
            f"{owner} needs the guide's mean and variance; {type(guide_dist).__name__} does not provide them. "
            "Use a Gaussian guide, dist.Normal(loc, scale).to_event(1)."
        ) from None
    if mean.shape != var.shape or mean.dim() != 3:
        raise ValueError(
            f"{owner} needs a guide with batch_shape [P, B] and event_shape [D]; got mean shape "
            f"{tuple(mean.shape)} and variance shape {tuple(var.shape)}."
        )
    if not bool(torch.isfinite(var).all()):
        raise ValueError(
            f"{owner}: the guide's variance is not finite ({type(guide_dist).__name__}, e.g. a Student-t with "
            "df <= 2); DIP-VAE-II needs finite second moments. Use kind='i' or a Gaussian guide."
        )
    return mean, var


# Elements of one ``[rows, cols, D]`` temporary in the blocked pairwise computations (per-dimension MMD,
# IMQ/RBF MMD rows, inclusive KL). On a CPU, 2^19 float32 elements (2 MiB; four such buffers are live)
# stay in the L3 cache and are reused across blocks, so each element-wise pass runs from cache and no
# fresh pages are faulted in per call (the cost that dominated the fully materialised ``[B, B, D]``
# version); smaller blocks were slower on the development machine (2 MiB L2 in all, 32 MiB L3) because
# the per-operation overhead grows with the number of blocks. On a GPU, a large block amortises the
# launch overhead; 2^24 elements (64 MiB float32) is still far below device memory.
CPU_BLOCK_ELEMENTS = 1 << 19
GPU_BLOCK_ELEMENTS = 1 << 24


def block_elements(device: torch.device) -> int:
    """Element budget of one pairwise temporary on ``device`` (see :data:`CPU_BLOCK_ELEMENTS`)."""
    return CPU_BLOCK_ELEMENTS if device.type == "cpu" else GPU_BLOCK_ELEMENTS


def pair_blocks(rows: int, cols: int, width: int, budget: int):
    """Split a ``[rows, cols, width]`` pairwise computation into blocks of at most ``budget`` elements
    (or one row of ``width`` if that is larger): yields ``(r0, r1, c0, c1)``, rows outer, row-major."""
    if cols * width <= budget:
        step = max(1, budget // max(1, cols * width))
        for r0 in range(0, rows, step):
            yield r0, min(rows, r0 + step), 0, cols
    else:
        cstep = max(1, budget // max(1, width))
        for r0 in range(rows):
            for c0 in range(0, cols, cstep):
                yield r0, r0 + 1, c0, min(cols, c0 + cstep)
