"""Separated Attribute Predictability, SAP (Kumar et al., 2018).

A score matrix ``S [latent, F]`` says how well each single code dimension predicts each factor;
SAP is the mean over factors of the gap between the best and the second-best dimension,

.. math:: \\mathrm{SAP} = \\frac{1}{F} \\sum_k \\big( S_{(1)k} - S_{(2)k} \\big).

Choices, as in disentanglement_lib (``sap_score``): 10,000 training and 5,000 test points; the
representation is whatever ``representation_fn`` returns (use the posterior mean).

- ``continuous_factors=False`` (default, dSprites' factors are classes): ``S_{dk}`` is the test
  accuracy of a linear SVM (scikit-learn ``LinearSVC(C=0.01, class_weight="balanced")``) fitted on
  dimension ``d`` alone.
- ``continuous_factors=True``: ``S_{dk}`` is the squared correlation (``R^2`` of a linear fit)
  between ``z_d`` and the factor on the training points, and **0.0 for a dimension whose variance is
  at most 1e-12** (a constant dimension explains nothing; this avoids 0/0).

A single code dimension gives the best score minus 0.
"""

from __future__ import annotations

import numpy as np
from sklearn.svm import LinearSVC

from pyro_decomp.data.ground_truth import GroundTruthDataset, RandomState
from pyro_decomp.metrics._utils import (
    RepresentationFn,
    check_codes_factors,
    check_dataset,
    quiet_convergence,
    sample_train_test,
)

__all__ = ["compute_sap"]


def compute_sap(
    dataset: GroundTruthDataset,
    representation_fn: RepresentationFn,
    *,
    random_state: RandomState,
    num_train: int = 10_000,
    num_test: int = 5_000,
    continuous_factors: bool = False,
    batch_size: int = 256,
) -> dict[str, float]:
    """SAP score of ``representation_fn`` on ``dataset``.

    :param continuous_factors: score dimensions by ``R^2`` (True) or by linear-SVM accuracy (False).
    :returns: ``{"sap": ...}``.
    """
    check_dataset(dataset)
    train_codes, train_factors, test_codes, test_factors, rng = sample_train_test(
        dataset, representation_fn, num_train, num_test, random_state, batch_size
    )
    return _compute_sap(train_codes, train_factors, test_codes, test_factors, continuous_factors=continuous_factors)


def _compute_sap(
    train_codes: np.ndarray,
    train_factors: np.ndarray,
    test_codes: np.ndarray,
    test_factors: np.ndarray,
    *,
    continuous_factors: bool = False,
) -> dict[str, float]:
    """SAP from train/test ``codes [num, latent]`` and ``factors [num, F]``."""
    train_codes, train_factors = check_codes_factors(train_codes, train_factors)
    test_codes, test_factors = check_codes_factors(test_codes, test_factors)
    scores = _score_matrix(train_codes, train_factors, test_codes, test_factors, continuous_factors)
    ordered = np.sort(scores, axis=0)
    second = ordered[-2] if ordered.shape[0] > 1 else np.zeros(ordered.shape[1])
    return {"sap": float(np.mean(ordered[-1] - second))}


def _score_matrix(
    train_codes: np.ndarray,
    train_factors: np.ndarray,
    test_codes: np.ndarray,
    test_factors: np.ndarray,
    continuous_factors: bool,
) -> np.ndarray:
    """Predictability ``[latent, F]`` of each factor from each single code dimension."""
    num_codes, num_factors = train_codes.shape[1], train_factors.shape[1]
    scores = np.zeros((num_codes, num_factors))
    for d in range(num_codes):
        z, z_test = train_codes[:, d], test_codes[:, d]
        for k in range(num_factors):
            y, y_test = train_factors[:, k].astype(np.float64), test_factors[:, k]
            if continuous_factors:
                var_z, var_y = np.var(z, ddof=1), np.var(y, ddof=1)
                if var_z > 1e-12 and var_y > 0:
                    cov = np.cov(z, y, ddof=1)[0, 1]
                    scores[d, k] = cov**2 / (var_z * var_y)
            elif np.unique(y).size < 2:
                scores[d, k] = float(np.mean(y_test == y[0]))
            else:
                classifier = LinearSVC(C=0.01, class_weight="balanced")
                with quiet_convergence():
                    classifier.fit(z[:, None], train_factors[:, k])
                scores[d, k] = float(np.mean(classifier.predict(z_test[:, None]) == y_test))
    return scores
