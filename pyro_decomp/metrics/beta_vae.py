"""BetaVAE disentanglement score (Higgins et al., 2017).

One vote: draw a factor ``k`` uniformly; draw ``L`` pairs of factor vectors that agree on factor
``k`` and are otherwise independent; the feature is the mean absolute code difference over the
pairs,

.. math:: z_{\\mathrm{diff}} = \\frac{1}{L} \\sum_{l=1}^{L} \\big| z(x^{(l)}) - z(x'^{(l)}) \\big|,

and the label is ``k``. A linear classifier (scikit-learn ``LogisticRegression``, default ``C=1``)
is fitted on the training votes; the score is its accuracy on fresh evaluation votes.

Choices (SPEC §6, thesis §5.2): ``L = 64``, 10,000 training votes and 5,000 evaluation votes; the
representation is whatever ``representation_fn`` returns (use the posterior mean); all factors of
the dataset take part (dSprites' constant colour is not a factor). The classifier keeps
scikit-learn's defaults (lbfgs, ``max_iter=100``) on the raw features, as the reference
implementation (disentanglement_lib) does; its convergence warning is silenced likewise.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression

from pyro_decomp.data.ground_truth import GroundTruthDataset, RandomState, as_generator
from pyro_decomp.metrics._utils import (
    RepresentationFn,
    check_codes,
    check_dataset,
    check_positive_int,
    codes_of_factors,
    quiet_convergence,
)

__all__ = ["compute_beta_vae"]


def compute_beta_vae(
    dataset: GroundTruthDataset,
    representation_fn: RepresentationFn,
    *,
    random_state: RandomState,
    group_size: int = 64,
    num_train: int = 10_000,
    num_eval: int = 5_000,
    batch_size: int = 256,
) -> dict[str, float]:
    """BetaVAE score of ``representation_fn`` on ``dataset``.

    :param representation_fn: ``observations [batch, ...] -> codes [batch, latent]`` (posterior mean).
    :param random_state: int seed or :class:`numpy.random.Generator`.
    :param group_size: pairs ``L`` averaged into one vote (64).
    :param num_train: training votes (10,000).
    :param num_eval: evaluation votes (5,000).
    :param batch_size: observations per call of ``representation_fn``.
    :returns: ``{"train_accuracy", "eval_accuracy"}``; the score is ``eval_accuracy``.

    >>> from pyro_decomp.data import SyntheticGroundTruth
    >>> data = SyntheticGroundTruth((3, 4))
    >>> s = compute_beta_vae(data, lambda x: x, random_state=0, group_size=8, num_train=50, num_eval=20)
    >>> sorted(s)
    ['eval_accuracy', 'train_accuracy']
    """
    check_dataset(dataset)
    group_size = check_positive_int(group_size, "group_size")
    num_train = check_positive_int(num_train, "num_train")
    num_eval = check_positive_int(num_eval, "num_eval")
    batch_size = check_positive_int(batch_size, "batch_size")
    rng = as_generator(random_state)
    train_x, train_y = _beta_vae_votes(dataset, representation_fn, num_train, group_size, rng, batch_size)
    eval_x, eval_y = _beta_vae_votes(dataset, representation_fn, num_eval, group_size, rng, batch_size)
    return _compute_beta_vae(train_x, train_y, eval_x, eval_y, random_state=rng)


def _beta_vae_votes(
    dataset: GroundTruthDataset,
    representation_fn: RepresentationFn,
    num_votes: int,
    group_size: int,
    rng: np.random.Generator,
    batch_size: int,
    votes_per_chunk: int = 64,
) -> tuple[np.ndarray, np.ndarray]:
    """Features ``[num_votes, latent]`` and labels ``[num_votes]``, many votes per rendering call."""
    features, labels = [], []
    num_factors = len(dataset.factor_sizes)
    for start in range(0, num_votes, votes_per_chunk):
        n = min(votes_per_chunk, num_votes - start)
        fixed = rng.integers(num_factors, size=n)
        first = dataset.sample_factors(n * group_size, rng).reshape(n, group_size, num_factors)
        second = dataset.sample_factors(n * group_size, rng).reshape(n, group_size, num_factors)
        second[np.arange(n), :, fixed] = first[np.arange(n), :, fixed]
        both = np.concatenate([first.reshape(-1, num_factors), second.reshape(-1, num_factors)])
        codes = codes_of_factors(dataset, representation_fn, both, rng, batch_size)
        codes_a, codes_b = codes[: n * group_size], codes[n * group_size :]
        features.append(_beta_vae_features(codes_a.reshape(n, group_size, -1), codes_b.reshape(n, group_size, -1)))
        labels.append(fixed)
    return np.concatenate(features), np.concatenate(labels)


def _beta_vae_features(codes_a: np.ndarray, codes_b: np.ndarray) -> np.ndarray:
    """Mean absolute difference over the group: ``[votes, L, latent] x 2 -> [votes, latent]``."""
    return np.mean(np.abs(codes_a - codes_b), axis=1)


def _compute_beta_vae(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    eval_features: np.ndarray,
    eval_labels: np.ndarray,
    *,
    random_state: RandomState = 0,
) -> dict[str, float]:
    """Fit the linear classifier on ``train_features [n, latent]`` -> ``train_labels [n]``; score it."""
    train_features = check_codes(train_features, "train_features")
    eval_features = check_codes(eval_features, "eval_features")
    train_labels, eval_labels = np.asarray(train_labels), np.asarray(eval_labels)
    if train_labels.shape != (train_features.shape[0],) or eval_labels.shape != (eval_features.shape[0],):
        raise ValueError("labels must have one entry per feature row")
    if np.unique(train_labels).size < 2:
        # A single class: the classifier predicts it everywhere (LogisticRegression refuses to fit).
        only = train_labels[0]
        return {"train_accuracy": 1.0, "eval_accuracy": float(np.mean(eval_labels == only))}
    seed = int(as_generator(random_state).integers(2**31 - 1))
    model = LogisticRegression(random_state=seed)
    with quiet_convergence():
        model.fit(train_features, train_labels)
    return {
        "train_accuracy": float(model.score(train_features, train_labels)),
        "eval_accuracy": float(model.score(eval_features, eval_labels)),
    }
