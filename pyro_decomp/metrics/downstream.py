"""Downstream classification and sample efficiency (thesis §5.5; Locatello et al., 2019).

For each factor, a gradient-boosted tree classifier (scikit-learn ``GradientBoostingClassifier``
with its defaults) is trained on the codes of ``n`` points and tested on 5,000 other points; the
accuracy at ``n`` is the mean test accuracy over factors, for ``n`` in 10, 100, 1,000 and 10,000.

.. math:: \\text{sample efficiency} = \\text{accuracy}@100 \\;/\\; \\text{accuracy}@10{,}000.

Choices: the training sets are nested prefixes of one sample of ``max(train_sizes)`` points and all
sizes share one test set, so that the accuracies differ only through ``n`` (disentanglement_lib
draws fresh sets per size; the expectation is the same). The representation is whatever
``representation_fn`` returns (use the posterior mean); all factors of the dataset are predicted. A
training set holding a single class of a factor predicts that class everywhere (the classifier
cannot be fitted). The trees' ``random_state`` is drawn from ``random_state``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.ensemble import GradientBoostingClassifier

from pyro_decomp.data.ground_truth import GroundTruthDataset, RandomState, as_generator
from pyro_decomp.metrics._utils import (
    RepresentationFn,
    check_codes_factors,
    check_dataset,
    check_positive_int,
    sample_train_test,
)

__all__ = ["compute_downstream", "DEFAULT_TRAIN_SIZES"]

DEFAULT_TRAIN_SIZES: tuple[int, ...] = (10, 100, 1_000, 10_000)  # thesis §5.5


def _check_sizes(train_sizes: Sequence[int], efficiency_sizes: tuple[int, int]) -> tuple[list[int], tuple[int, int]]:
    if not isinstance(train_sizes, Sequence) or len(train_sizes) == 0:
        raise ValueError(f"train_sizes must be a non-empty sequence of ints, got {train_sizes!r}")
    sizes = sorted({check_positive_int(n, "train_sizes[i]") for n in train_sizes})
    if len(efficiency_sizes) != 2 or any(n not in sizes for n in efficiency_sizes):
        raise ValueError(
            f"efficiency_sizes {tuple(efficiency_sizes)} must be two of train_sizes {sizes}; "
            "pass e.g. efficiency_sizes=(100, 10000)"
        )
    return sizes, (int(efficiency_sizes[0]), int(efficiency_sizes[1]))


def compute_downstream(
    dataset: GroundTruthDataset,
    representation_fn: RepresentationFn,
    *,
    random_state: RandomState,
    train_sizes: Sequence[int] = DEFAULT_TRAIN_SIZES,
    num_test: int = 5_000,
    efficiency_sizes: tuple[int, int] = (100, 10_000),
    batch_size: int = 256,
) -> dict[str, float]:
    """Downstream accuracies and sample efficiency of ``representation_fn`` on ``dataset``.

    :param train_sizes: training-set sizes (10, 100, 1,000, 10,000).
    :param num_test: test points (5,000).
    :param efficiency_sizes: ``(small, large)``; sample efficiency is ``accuracy_small / accuracy_large``.
    :returns: ``{"accuracy_<n>" for each n, "train_accuracy_<n>" for each n, "sample_efficiency"}``.
    """
    check_dataset(dataset)
    sizes, efficiency_sizes = _check_sizes(train_sizes, efficiency_sizes)
    train_codes, train_factors, test_codes, test_factors, rng = sample_train_test(
        dataset, representation_fn, sizes[-1], num_test, random_state, batch_size
    )
    return _compute_downstream(
        train_codes,
        train_factors,
        test_codes,
        test_factors,
        train_sizes=sizes,
        efficiency_sizes=efficiency_sizes,
        random_state=rng,
    )


def _compute_downstream(
    train_codes: np.ndarray,
    train_factors: np.ndarray,
    test_codes: np.ndarray,
    test_factors: np.ndarray,
    *,
    train_sizes: Sequence[int] = DEFAULT_TRAIN_SIZES,
    efficiency_sizes: tuple[int, int] = (100, 10_000),
    random_state: RandomState = 0,
) -> dict[str, float]:
    """Accuracies for each prefix size of ``train_codes [N, latent]`` / ``train_factors [N, F]``."""
    train_codes, train_factors = check_codes_factors(train_codes, train_factors)
    test_codes, test_factors = check_codes_factors(test_codes, test_factors)
    sizes, efficiency_sizes = _check_sizes(train_sizes, efficiency_sizes)
    if sizes[-1] > train_codes.shape[0]:
        raise ValueError(f"train_sizes up to {sizes[-1]} need that many training points, got {train_codes.shape[0]}")
    rng = as_generator(random_state)
    scores: dict[str, float] = {}
    for n in sizes:
        train_acc, test_acc = [], []
        for k in range(train_factors.shape[1]):
            y = train_factors[:n, k]
            if np.unique(y).size < 2:
                train_acc.append(1.0)
                test_acc.append(float(np.mean(test_factors[:, k] == y[0])))
                continue
            model = GradientBoostingClassifier(random_state=int(rng.integers(2**31 - 1)))
            model.fit(train_codes[:n], y)
            train_acc.append(float(np.mean(model.predict(train_codes[:n]) == y)))
            test_acc.append(float(np.mean(model.predict(test_codes) == test_factors[:, k])))
        scores[f"train_accuracy_{n}"] = float(np.mean(train_acc))
        scores[f"accuracy_{n}"] = float(np.mean(test_acc))
    small, large = efficiency_sizes
    scores["sample_efficiency"] = scores[f"accuracy_{small}"] / scores[f"accuracy_{large}"]
    return scores
