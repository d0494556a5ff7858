"""Modularity and explicitness (Ridgeway & Mozer, 2018).

**Modularity.** With the mutual information ``m_{dk}`` between discretised code ``d`` (20 bins)
and factor ``k``, ``theta_d = max_k m_{dk}`` and template ``t_{dk} = theta_d [k = argmax]``,

.. math:: \\mathrm{modularity} = \\frac{1}{D} \\sum_d \\Big(1 - \\frac{\\sum_k (m_{dk} - t_{dk})^2}{\\theta_d^2 (F - 1)}\\Big),

where a dimension carrying no information (``theta_d = 0``) scores 0. Modularity asks each code to
talk about one factor; it does *not* penalise several codes talking about the same factor, so a
duplicated latent keeps a high modularity.

**Explicitness.** For each factor a one-vs-rest logistic regression (scikit-learn
``LogisticRegression``) on the standardised codes predicts the class probabilities; explicitness is
the mean over classes of the one-vs-rest ROC AUC, averaged over factors.

Choices, as in disentanglement_lib: 10,000 training and 5,000 test points, 20 bins; the codes are
standardised with the training mean and std (a constant dimension is left unscaled); the
representation is whatever ``representation_fn`` returns (use the posterior mean). Classes absent
from the test sample are skipped in the AUC average, and a factor with one training class is skipped.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from pyro_decomp.data.ground_truth import GroundTruthDataset, RandomState
from pyro_decomp.metrics._utils import (
    RepresentationFn,
    check_codes_factors,
    check_dataset,
    check_positive_int,
    discrete_mutual_info,
    histogram_discretize,
    quiet_convergence,
    sample_train_test,
)

__all__ = ["compute_modularity_explicitness"]


def compute_modularity_explicitness(
    dataset: GroundTruthDataset,
    representation_fn: RepresentationFn,
    *,
    random_state: RandomState,
    num_train: int = 10_000,
    num_test: int = 5_000,
    num_bins: int = 20,
    batch_size: int = 256,
) -> dict[str, float]:
    """Modularity and explicitness of ``representation_fn`` on ``dataset``.

    :returns: ``{"modularity", "explicitness_train", "explicitness_test"}``.
    """
    check_dataset(dataset)
    train_codes, train_factors, test_codes, test_factors, rng = sample_train_test(
        dataset, representation_fn, num_train, num_test, random_state, batch_size
    )
    return _compute_modularity_explicitness(train_codes, train_factors, test_codes, test_factors, num_bins=num_bins)


def _compute_modularity_explicitness(
    train_codes: np.ndarray,
    train_factors: np.ndarray,
    test_codes: np.ndarray,
    test_factors: np.ndarray,
    *,
    num_bins: int = 20,
) -> dict[str, float]:
    """Modularity (on the training points) and explicitness from train/test codes and factors."""
    train_codes, train_factors = check_codes_factors(train_codes, train_factors)
    test_codes, test_factors = check_codes_factors(test_codes, test_factors)
    num_bins = check_positive_int(num_bins, "num_bins")
    mutual_info = discrete_mutual_info(histogram_discretize(train_codes, num_bins), train_factors)
    mean = train_codes.mean(axis=0)
    std = train_codes.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    train_norm, test_norm = (train_codes - mean) / std, (test_codes - mean) / std
    auc_train, auc_test = [], []
    for k in range(train_factors.shape[1]):
        if np.unique(train_factors[:, k]).size < 2:
            continue
        a_train, a_test = _explicitness_per_factor(train_norm, train_factors[:, k], test_norm, test_factors[:, k])
        auc_train.append(a_train)
        auc_test.append(a_test)
    return {
        "modularity": _modularity(mutual_info),
        "explicitness_train": float(np.mean(auc_train)) if auc_train else float("nan"),
        "explicitness_test": float(np.mean(auc_test)) if auc_test else float("nan"),
    }


def _modularity(mutual_info: np.ndarray) -> float:
    """Modularity of a mutual-information matrix ``[latent, F]``."""
    if mutual_info.shape[1] < 2:
        return 1.0  # one factor: every informative code is modular
    squared = np.square(mutual_info)
    max_squared = squared.max(axis=1)
    numerator = squared.sum(axis=1) - max_squared
    denominator = max_squared * (squared.shape[1] - 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        score = 1.0 - numerator / denominator
    score[max_squared == 0.0] = 0.0
    return float(np.mean(score))


def _explicitness_per_factor(
    train_codes: np.ndarray, y_train: np.ndarray, test_codes: np.ndarray, y_test: np.ndarray
) -> tuple[float, float]:
    """Mean one-vs-rest ROC AUC of a logistic regression, on the training and the test points."""
    model = LogisticRegression()
    with quiet_convergence():
        model.fit(train_codes, y_train)
    return _mean_ovr_auc(model, train_codes, y_train), _mean_ovr_auc(model, test_codes, y_test)


def _mean_ovr_auc(model: LogisticRegression, codes: np.ndarray, y: np.ndarray) -> float:
    """Macro one-vs-rest AUC over the classes with both positives and negatives in ``y``."""
    proba = model.predict_proba(codes)
    aucs = []
    for column, label in enumerate(model.classes_):
        positive = y == label
        if 0 < positive.sum() < y.size:
            aucs.append(roc_auc_score(positive, proba[:, column]))
    return float(np.mean(aucs)) if aucs else float("nan")
