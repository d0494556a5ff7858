"""The ground-truth protocol that every supervised metric samples from.

A ground-truth dataset is a finite grid of discrete factors of variation
(``factor_sizes``) and a deterministic or stochastic map from factors to observations.
The metrics in :mod:`pyro_decomp.metrics` only use :meth:`GroundTruthDataset.sample_factors`
and :meth:`GroundTruthDataset.sample_observations_from_factors`, following the two-layer
design of disentanglement_lib (Locatello et al., 2019).

Factors are always integer class indices, ``factors: [num, num_factors]`` with
``0 <= factors[:, k] < factor_sizes[k]``.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["GroundTruthDataset", "SyntheticGroundTruth", "as_generator"]

RandomState = int | np.random.Generator | np.random.RandomState | None


def as_generator(random_state: RandomState, *, name: str = "random_state") -> np.random.Generator:
    """Turn ``random_state`` (an int seed, a :class:`numpy.random.Generator` or a legacy
    :class:`numpy.random.RandomState`) into a :class:`numpy.random.Generator`.

    A generator is returned as is (so callers share its stream); a ``RandomState`` is consumed
    once to seed a new generator, so results stay reproducible for a seeded ``RandomState``.
    """
    if isinstance(random_state, np.random.Generator):
        return random_state
    if isinstance(random_state, np.random.RandomState):
        return np.random.default_rng(random_state.randint(0, 2**31 - 1))
    if isinstance(random_state, (int, np.integer)) and not isinstance(random_state, bool):
        if random_state < 0:
            raise ValueError(f"{name} must be a non-negative seed, got {random_state}")
        return np.random.default_rng(int(random_state))
    raise TypeError(
        f"{name} must be an int seed or a numpy.random.Generator, got {type(random_state).__name__}; "
        "pass e.g. random_state=0 or random_state=np.random.default_rng(0)"
    )


def _check_positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return int(value)


class GroundTruthDataset(abc.ABC):
    """Abstract ground-truth dataset: a grid of discrete factors and an observation map.

    Subclasses define :attr:`factor_sizes`, :attr:`observation_shape` and
    :meth:`sample_observations_from_factors`. Factors are sampled independently and uniformly
    over each factor's values, as in the dSprites grid.
    """

    @property
    @abc.abstractmethod
    def factor_sizes(self) -> tuple[int, ...]:
        """Number of values of each factor, ``(K_1, ..., K_F)``."""

    @property
    @abc.abstractmethod
    def observation_shape(self) -> tuple[int, ...]:
        """Shape of one observation, e.g. ``(1, 64, 64)``."""

    @abc.abstractmethod
    def sample_observations_from_factors(
        self, factors: np.ndarray, random_state: RandomState
    ) -> torch.Tensor | np.ndarray:
        """Observations for ``factors: [num, num_factors]`` (ints), shape ``[num, *observation_shape]``."""

    @property
    def factor_names(self) -> tuple[str, ...]:
        """Human-readable factor names (``factor_0``... unless a subclass names them)."""
        return tuple(f"factor_{k}" for k in range(self.num_factors))

    @property
    def num_factors(self) -> int:
        """Number of factors ``F``."""
        return len(self.factor_sizes)

    def sample_factors(self, num: int, random_state: RandomState) -> np.ndarray:
        """Sample ``num`` factor vectors uniformly from the grid.

        :returns: ``np.ndarray`` of ``int64``, shape ``[num, num_factors]``.
        """
        num = _check_positive_int(num, "num")
        rng = as_generator(random_state)
        sizes = np.asarray(self.factor_sizes, dtype=np.int64)
        # One uniform draw per entry, floor-scaled per column: uniform over each factor's values.
        return np.floor(rng.random((num, sizes.size)) * sizes).astype(np.int64)

    def sample(self, num: int, random_state: RandomState) -> tuple[np.ndarray, torch.Tensor | np.ndarray]:
        """Sample ``(factors [num, F], observations [num, *observation_shape])``."""
        rng = as_generator(random_state)
        factors = self.sample_factors(num, rng)
        return factors, self.sample_observations_from_factors(factors, rng)

    def validate_factors(
        self, factors: np.ndarray | torch.Tensor, name: str = "factors", *, sizes: Sequence[int] | None = None
    ) -> np.ndarray:
        """Check ``factors`` is an integer ``[num, F]`` array inside the grid and return it as int64.

        :param sizes: the grid to check against (default :attr:`factor_sizes`).
        """
        if isinstance(factors, torch.Tensor):
            factors = factors.detach().cpu().numpy()
        factors = np.asarray(factors)
        sizes_arr = np.asarray(self.factor_sizes if sizes is None else sizes)
        if factors.ndim != 2 or factors.shape[1] != sizes_arr.size:
            names = f" (one column per factor {self.factor_names})" if sizes is None else ""
            raise ValueError(f"{name} must have shape [num, {sizes_arr.size}]{names}, got {factors.shape}")
        if factors.dtype == np.bool_ or not np.issubdtype(factors.dtype, np.number):
            raise TypeError(f"{name} must hold integer class indices, got dtype {factors.dtype}")
        if not np.issubdtype(factors.dtype, np.integer):
            with np.errstate(invalid="ignore"):
                integral = np.isfinite(factors).all() and np.all(np.equal(np.mod(factors, 1), 0))
            if not integral:
                raise TypeError(f"{name} must hold integer class indices, got dtype {factors.dtype}")
        factors = factors.astype(np.int64)
        if np.any(factors < 0) or np.any(factors >= sizes_arr):
            raise ValueError(f"{name} out of range: column k must lie in [0, sizes[k]) = {sizes_arr.tolist()}")
        return factors


class SyntheticGroundTruth(GroundTruthDataset):
    """A tiny ground-truth dataset for tests: factors pushed through a fixed random map.

    Each factor value ``c_k`` is mapped to ``v_k = c_k / (K_k - 1)`` in ``[0, 1]``; the observation is

    .. math:: x = \\tanh(A v + b) + \\sigma \\epsilon, \\qquad A \\in \\mathbb{R}^{D \\times F},

    with ``A``, ``b`` drawn once from ``seed`` and ``sigma = noise_std``. The map is injective for
    ``D >= F`` almost surely, so the factors are recoverable from ``x``.

    :param factor_sizes: values per factor, e.g. ``(3, 4, 5)``.
    :param observation_dim: ``D``, the observation length.
    :param noise_std: observation noise ``sigma`` (0 gives a deterministic map).
    :param seed: seed of the fixed map.

    >>> data = SyntheticGroundTruth((2, 3), observation_dim=4)
    >>> factors, x = data.sample(5, random_state=0)
    >>> factors.shape, tuple(x.shape)
    ((5, 2), (5, 4))
    """

    def __init__(
        self,
        factor_sizes: Sequence[int] = (3, 4, 5),
        *,
        observation_dim: int = 8,
        noise_std: float = 0.0,
        seed: int = 0,
    ) -> None:
        if not isinstance(factor_sizes, Sequence) or len(factor_sizes) == 0:
            raise ValueError(f"factor_sizes must be a non-empty sequence of ints, got {factor_sizes!r}")
        sizes = tuple(_check_positive_int(s, "factor_sizes[i]") for s in factor_sizes)
        if any(s < 2 for s in sizes):
            raise ValueError(f"every factor needs at least 2 values, got factor_sizes={sizes}")
        self._factor_sizes = sizes
        self._observation_dim = _check_positive_int(observation_dim, "observation_dim")
        if not noise_std >= 0:
            raise ValueError(f"noise_std must be >= 0, got {noise_std}")
        self.noise_std = float(noise_std)
        rng = np.random.default_rng(seed)
        self.weight = rng.normal(size=(self._observation_dim, len(sizes))) * 2.0
        self.bias = rng.normal(size=self._observation_dim) * 0.5

    @property
    def factor_sizes(self) -> tuple[int, ...]:
        return self._factor_sizes

    @property
    def observation_shape(self) -> tuple[int, ...]:
        return (self._observation_dim,)

    def sample_observations_from_factors(self, factors: np.ndarray, random_state: RandomState) -> torch.Tensor:
        factors = self.validate_factors(factors)
        values = factors / (np.asarray(self.factor_sizes, dtype=np.float64) - 1.0)
        x = np.tanh(values @ self.weight.T + self.bias)
        if self.noise_std > 0:
            x = x + self.noise_std * as_generator(random_state).normal(size=x.shape)
        return torch.as_tensor(x, dtype=torch.float32)
