"""FactorVAE disentanglement score (Kim & Mnih, 2018), the metric of paper Figs. 1-2.

1. Estimate each code dimension's global standard deviation ``s_d`` from 10,000 random points and
   prune *collapsed* dimensions with ``s_d < 0.05`` (Kim & Mnih §4; disentanglement_lib's
   ``prune_dims`` threshold).
2. One vote: draw a factor ``k`` uniformly, draw ``L = 64`` factor vectors sharing the value of
   factor ``k``, and compute

   .. math:: d^* = \\arg\\min_{d \\text{ active}} \\operatorname{Var}_l\\big[z_d^{(l)}\\big] / s_d^2,

   the label being ``k``.
3. The classifier maps each dimension ``d`` to the factor that won the most training votes with
   ``d* = d`` (majority vote; ties go to the lower factor index). The score is its accuracy on
   5,000 evaluation votes; 10,000 votes train it.

Choices (SPEC §6): variances use ``ddof=1``; the representation is whatever ``representation_fn``
returns (use the posterior mean); all factors of the dataset take part. When every dimension
collapses, both accuracies are 0 and ``num_active_dims`` is 0.
"""

from __future__ import annotations

import numpy as np

from pyro_decomp.data.ground_truth import GroundTruthDataset, RandomState, as_generator
from pyro_decomp.metrics._utils import (
    RepresentationFn,
    check_dataset,
    check_positive_int,
    codes_of_factors,
)

__all__ = ["compute_factor_vae"]

PRUNE_THRESHOLD = 0.05  # Kim & Mnih (2018): dimensions whose global std is below this have collapsed


def compute_factor_vae(
    dataset: GroundTruthDataset,
    representation_fn: RepresentationFn,
    *,
    random_state: RandomState,
    group_size: int = 64,
    num_train: int = 10_000,
    num_eval: int = 5_000,
    num_variance_estimate: int = 10_000,
    prune_threshold: float = PRUNE_THRESHOLD,
    batch_size: int = 256,
) -> dict[str, float]:
    """FactorVAE (Kim & Mnih) score of ``representation_fn`` on ``dataset``.

    :param representation_fn: ``observations [batch, ...] -> codes [batch, latent]`` (posterior mean).
    :param random_state: int seed or :class:`numpy.random.Generator`.
    :param group_size: ``L``, points sharing the fixed factor in one vote (64).
    :param num_train: training votes (10,000).
    :param num_eval: evaluation votes (5,000).
    :param num_variance_estimate: points for the global standard deviations (10,000).
    :param prune_threshold: global std below which a dimension counts as collapsed (0.05).
    :param batch_size: observations per call of ``representation_fn``.
    :returns: ``{"train_accuracy", "eval_accuracy", "num_active_dims"}``; the score is ``eval_accuracy``.
    """
    check_dataset(dataset)
    group_size = check_positive_int(group_size, "group_size")
    if group_size < 2:
        raise ValueError("group_size must be at least 2 to estimate a within-group variance")
    num_train = check_positive_int(num_train, "num_train")
    num_eval = check_positive_int(num_eval, "num_eval")
    num_variance_estimate = check_positive_int(num_variance_estimate, "num_variance_estimate")
    batch_size = check_positive_int(batch_size, "batch_size")
    rng = as_generator(random_state)
    global_factors = dataset.sample_factors(num_variance_estimate, rng)
    global_codes = codes_of_factors(dataset, representation_fn, global_factors, rng, batch_size)
    global_var = np.var(global_codes, axis=0, ddof=1)
    active = np.sqrt(global_var) >= prune_threshold
    num_factors = len(dataset.factor_sizes)
    if not np.any(active):
        return {"train_accuracy": 0.0, "eval_accuracy": 0.0, "num_active_dims": 0.0}
    train = _factor_vae_votes(dataset, representation_fn, num_train, group_size, global_var, active, rng, batch_size)
    evals = _factor_vae_votes(dataset, representation_fn, num_eval, group_size, global_var, active, rng, batch_size)
    return _compute_factor_vae(*train, *evals, num_codes=global_codes.shape[1], num_factors=num_factors) | {
        "num_active_dims": float(active.sum())
    }


def _factor_vae_votes(
    dataset: GroundTruthDataset,
    representation_fn: RepresentationFn,
    num_votes: int,
    group_size: int,
    global_var: np.ndarray,
    active: np.ndarray,
    rng: np.random.Generator,
    batch_size: int,
    votes_per_chunk: int = 128,
) -> tuple[np.ndarray, np.ndarray]:
    """``(argmin dimension [num_votes], fixed factor [num_votes])`` for ``num_votes`` votes."""
    num_factors = len(dataset.factor_sizes)
    dims, labels = [], []
    for start in range(0, num_votes, votes_per_chunk):
        n = min(votes_per_chunk, num_votes - start)
        fixed = rng.integers(num_factors, size=n)
        factors = dataset.sample_factors(n * group_size, rng).reshape(n, group_size, num_factors)
        factors[np.arange(n), :, fixed] = factors[np.arange(n), 0, fixed][:, None]
        codes = codes_of_factors(dataset, representation_fn, factors.reshape(-1, num_factors), rng, batch_size)
        dims.append(_factor_vae_argmin(codes.reshape(n, group_size, -1), global_var, active))
        labels.append(fixed)
    return np.concatenate(dims), np.concatenate(labels)


def _factor_vae_argmin(group_codes: np.ndarray, global_var: np.ndarray, active: np.ndarray) -> np.ndarray:
    """Active dimension of least normalised within-group variance: ``[votes, L, latent] -> [votes]``."""
    local_var = np.var(group_codes, axis=1, ddof=1)  # [votes, latent]
    active_idx = np.flatnonzero(active)
    ratio = local_var[:, active_idx] / global_var[active_idx]
    return active_idx[np.argmin(ratio, axis=1)]


def _compute_factor_vae(
    train_dims: np.ndarray,
    train_labels: np.ndarray,
    eval_dims: np.ndarray,
    eval_labels: np.ndarray,
    *,
    num_codes: int,
    num_factors: int,
) -> dict[str, float]:
    """Majority-vote classifier accuracies from votes ``(d* [n], k [n])``."""
    train_votes = _vote_matrix(train_dims, train_labels, num_codes, num_factors)
    eval_votes = _vote_matrix(eval_dims, eval_labels, num_codes, num_factors)
    classifier = np.argmax(train_votes, axis=1)  # [num_codes], the factor each dimension votes for
    return {
        "train_accuracy": float(train_votes.max(axis=1).sum() / train_votes.sum()),
        "eval_accuracy": float(eval_votes[np.arange(num_codes), classifier].sum() / eval_votes.sum()),
    }


def _vote_matrix(dims: np.ndarray, labels: np.ndarray, num_codes: int, num_factors: int) -> np.ndarray:
    """Counts ``[num_codes, num_factors]`` of votes ``(d*, k)``."""
    dims, labels = np.asarray(dims, dtype=np.int64), np.asarray(labels, dtype=np.int64)
    if dims.shape != labels.shape or dims.ndim != 1 or dims.size == 0:
        raise ValueError("dims and labels must be non-empty 1-D arrays of the same length (one per vote)")
    votes = np.zeros((num_codes, num_factors), dtype=np.int64)
    np.add.at(votes, (dims, labels), 1)
    return votes
