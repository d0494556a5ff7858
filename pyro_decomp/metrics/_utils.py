"""Shared pieces of the metrics: sampling codes from a ground-truth dataset, discretisation, MI."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from contextlib import contextmanager

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import mutual_info_score

from pyro_decomp.data.ground_truth import GroundTruthDataset, RandomState, as_generator

RepresentationFn = Callable[[torch.Tensor | np.ndarray], torch.Tensor | np.ndarray]

__all__ = [
    "RepresentationFn",
    "check_codes",
    "check_codes_factors",
    "check_dataset",
    "check_positive_int",
    "represent",
    "sample_codes_and_factors",
    "histogram_discretize",
    "discrete_mutual_info",
    "discrete_entropy",
    "quiet_convergence",
    "as_generator",
]


def check_positive_int(value: object, name: str) -> int:
    """Return ``value`` as an int, raising when it is not a positive integer."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be a positive int, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return int(value)


def check_dataset(dataset: object) -> GroundTruthDataset:
    """Check ``dataset`` follows the ground-truth protocol."""
    for attr in ("factor_sizes", "sample_factors", "sample_observations_from_factors"):
        if not hasattr(dataset, attr):
            raise TypeError(
                f"dataset must follow the ground-truth protocol (factor_sizes, sample_factors, "
                f"sample_observations_from_factors), e.g. pyro_decomp.data.DSprites(); "
                f"{type(dataset).__name__} lacks {attr!r}"
            )
    return dataset  # type: ignore[return-value]


def _to_numpy(array: object) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        return array.detach().cpu().to(torch.float64).numpy()
    return np.asarray(array, dtype=np.float64)


def check_codes(codes: object, name: str = "codes") -> np.ndarray:
    """``codes`` as a finite float64 array ``[num, latent]``."""
    codes = _to_numpy(codes)
    if codes.ndim != 2 or codes.shape[0] == 0 or codes.shape[1] == 0:
        raise ValueError(f"{name} must have shape [num_points, num_latents] with both > 0, got {codes.shape}")
    if not np.all(np.isfinite(codes)):
        raise ValueError(f"{name} contains NaN or inf; check the representation function")
    return codes


def check_codes_factors(codes: object, factors: object) -> tuple[np.ndarray, np.ndarray]:
    """Validate ``codes [num, latent]`` (float) and ``factors [num, F]`` (integer classes)."""
    codes = check_codes(codes)
    factors = np.asarray(factors.detach().cpu() if isinstance(factors, torch.Tensor) else factors)
    if factors.ndim != 2 or factors.shape[0] != codes.shape[0] or factors.shape[1] == 0:
        raise ValueError(
            f"factors must have shape [num_points, num_factors] with num_points = {codes.shape[0]} "
            f"(matching codes), got {factors.shape}"
        )
    if not np.issubdtype(factors.dtype, np.integer):
        if not np.all(np.mod(factors, 1) == 0):
            raise TypeError("factors must hold integer class indices (discrete ground-truth factors)")
        factors = factors.astype(np.int64)
    return codes, factors


def represent(
    observations: torch.Tensor | np.ndarray, representation_fn: RepresentationFn, batch_size: int
) -> np.ndarray:
    """Call ``representation_fn`` on ``observations [num, ...]`` in batches; returns ``[num, latent]``."""
    if not callable(representation_fn):
        raise TypeError(
            f"representation_fn must be callable (observations [batch, ...] -> codes [batch, latent]), "
            f"got {type(representation_fn).__name__}"
        )
    chunks = []
    for start in range(0, len(observations), batch_size):
        batch = observations[start : start + batch_size]
        with torch.no_grad():
            out = _to_numpy(representation_fn(batch))
        if out.ndim != 2 or out.shape[0] != len(batch):
            raise ValueError(
                f"representation_fn must return [batch, num_latents] = [{len(batch)}, L] for a batch of "
                f"{len(batch)} observations, got shape {out.shape}"
            )
        chunks.append(out)
    codes = np.concatenate(chunks, axis=0)
    if not np.all(np.isfinite(codes)):
        raise ValueError("representation_fn returned NaN or inf codes")
    return codes


def codes_of_factors(
    dataset: GroundTruthDataset,
    representation_fn: RepresentationFn,
    factors: np.ndarray,
    rng: np.random.Generator,
    batch_size: int,
) -> np.ndarray:
    """Codes ``[num, latent]`` of observations rendered from ``factors [num, F]``, in batches."""
    chunks = []
    for start in range(0, len(factors), batch_size):
        observations = dataset.sample_observations_from_factors(factors[start : start + batch_size], rng)
        chunks.append(represent(observations, representation_fn, batch_size))
    return np.concatenate(chunks, axis=0)


def sample_codes_and_factors(
    dataset: GroundTruthDataset,
    representation_fn: RepresentationFn,
    num_points: int,
    random_state: RandomState,
    batch_size: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Sample ``num_points`` factor vectors and their codes: ``(codes [num, latent], factors [num, F])``."""
    rng = as_generator(random_state)
    factors = dataset.sample_factors(num_points, rng)
    return codes_of_factors(dataset, representation_fn, factors, rng, batch_size), factors


def sample_train_test(
    dataset: GroundTruthDataset,
    representation_fn: RepresentationFn,
    num_train: int,
    num_test: int,
    random_state: RandomState,
    batch_size: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.random.Generator]:
    """Validate the sizes and draw a training then a test set from one generator.

    Returns ``(train_codes, train_factors, test_codes, test_factors, rng)``; ``rng`` continues the stream.
    """
    num_train = check_positive_int(num_train, "num_train")
    num_test = check_positive_int(num_test, "num_test")
    batch_size = check_positive_int(batch_size, "batch_size")
    rng = as_generator(random_state)
    train_codes, train_factors = sample_codes_and_factors(dataset, representation_fn, num_train, rng, batch_size)
    test_codes, test_factors = sample_codes_and_factors(dataset, representation_fn, num_test, rng, batch_size)
    return train_codes, train_factors, test_codes, test_factors, rng


def histogram_discretize(codes: np.ndarray, num_bins: int = 20) -> np.ndarray:
    """Bin each column of ``codes [num, latent]`` into ``num_bins`` equal-width bins over its range.

    Same rule as disentanglement_lib's ``_histogram_discretize``: ``np.digitize`` against the left bin
    edges of ``np.histogram``, giving labels ``1..num_bins``.
    """
    out = np.zeros(codes.shape, dtype=np.int64)
    for i in range(codes.shape[1]):
        edges = np.histogram(codes[:, i], bins=num_bins)[1][:-1]
        out[:, i] = np.digitize(codes[:, i], edges)
    return out


def discrete_mutual_info(discrete_codes: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """Mutual information (nats) ``[latent, F]`` between each discrete code column and factor column."""
    result = np.zeros((discrete_codes.shape[1], factors.shape[1]))
    for i in range(discrete_codes.shape[1]):
        for j in range(factors.shape[1]):
            result[i, j] = mutual_info_score(factors[:, j], discrete_codes[:, i])
    return result


def discrete_entropy(factors: np.ndarray) -> np.ndarray:
    """Empirical entropy (nats) ``[F]`` of each discrete factor column."""
    entropies = np.zeros(factors.shape[1])
    for j in range(factors.shape[1]):
        _, counts = np.unique(factors[:, j], return_counts=True)
        p = counts / counts.sum()
        entropies[j] = -np.sum(p * np.log(p))
    return entropies


@contextmanager
def quiet_convergence():
    """Silence sklearn's ConvergenceWarning: a metric is defined by the classifier as fitted, and the
    reference implementation (disentanglement_lib) ignores the warning as well."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        yield
