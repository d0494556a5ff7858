"""DCI: disentanglement, completeness and informativeness (Eastwood & Williams, 2018).

For each factor ``k`` a gradient-boosted tree classifier (scikit-learn
``GradientBoostingClassifier`` with its defaults: 100 stages, depth 3, learning rate 0.1, no
subsampling) predicts the factor class from the codes; its impurity-based
``feature_importances_`` form column ``k`` of the importance matrix ``R [latent, F]``. With
``P_{dk} = R_{dk} / \\sum_k R_{dk}`` and ``Q_{dk} = R_{dk} / \\sum_d R_{dk}``,

.. math::

    D = \\sum_d \\rho_d \\big(1 - H_F(P_{d\\cdot})\\big), \\quad \\rho_d = \\frac{\\sum_k R_{dk}}{\\sum_{dk} R_{dk}},
    \\qquad
    C = \\sum_k \\tilde\\rho_k \\big(1 - H_{\\mathrm{latent}}(Q_{\\cdot k})\\big),

with entropies in base ``F`` and base ``latent``; informativeness is the classifiers' mean accuracy.

Choices, as in disentanglement_lib: 10,000 training and 5,000 test points; the representation is
whatever ``representation_fn`` returns (use the posterior mean); ``1e-11`` is added before the
entropies so that all-zero rows are defined; an all-zero importance matrix weighs codes and factors
uniformly. The trees' ``random_state`` is drawn from ``random_state`` for reproducibility. A factor
with a single class in the training sample gets zero importances and a constant prediction.
"""

from __future__ import annotations

import numpy as np
import scipy.stats
from sklearn.ensemble import GradientBoostingClassifier

from pyro_decomp.data.ground_truth import GroundTruthDataset, RandomState, as_generator
from pyro_decomp.metrics._utils import (
    RepresentationFn,
    check_codes_factors,
    check_dataset,
    sample_train_test,
)

__all__ = ["compute_dci"]


def compute_dci(
    dataset: GroundTruthDataset,
    representation_fn: RepresentationFn,
    *,
    random_state: RandomState,
    num_train: int = 10_000,
    num_test: int = 5_000,
    batch_size: int = 256,
) -> dict[str, float]:
    """DCI scores of ``representation_fn`` on ``dataset``.

    :returns: ``{"disentanglement", "completeness", "informativeness_train", "informativeness_test"}``.
    """
    check_dataset(dataset)
    train_codes, train_factors, test_codes, test_factors, rng = sample_train_test(
        dataset, representation_fn, num_train, num_test, random_state, batch_size
    )
    return _compute_dci(train_codes, train_factors, test_codes, test_factors, random_state=rng)


def _compute_dci(
    train_codes: np.ndarray,
    train_factors: np.ndarray,
    test_codes: np.ndarray,
    test_factors: np.ndarray,
    *,
    random_state: RandomState = 0,
) -> dict[str, float]:
    """DCI from train/test ``codes [num, latent]`` and integer ``factors [num, F]``."""
    train_codes, train_factors = check_codes_factors(train_codes, train_factors)
    test_codes, test_factors = check_codes_factors(test_codes, test_factors)
    importance, train_acc, test_acc = _importance_gbt(
        train_codes, train_factors, test_codes, test_factors, as_generator(random_state)
    )
    return {
        "disentanglement": _disentanglement(importance),
        "completeness": _completeness(importance),
        "informativeness_train": train_acc,
        "informativeness_test": test_acc,
    }


def _importance_gbt(
    train_codes: np.ndarray,
    train_factors: np.ndarray,
    test_codes: np.ndarray,
    test_factors: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, float, float]:
    """Importance matrix ``[latent, F]`` and mean train/test accuracies of per-factor GBT classifiers."""
    num_codes, num_factors = train_codes.shape[1], train_factors.shape[1]
    importance = np.zeros((num_codes, num_factors))
    train_acc, test_acc = [], []
    for k in range(num_factors):
        y_train, y_test = train_factors[:, k], test_factors[:, k]
        if np.unique(y_train).size < 2:
            train_acc.append(1.0)
            test_acc.append(float(np.mean(y_test == y_train[0])))
            continue
        model = GradientBoostingClassifier(random_state=int(rng.integers(2**31 - 1)))
        model.fit(train_codes, y_train)
        importance[:, k] = np.abs(model.feature_importances_)
        train_acc.append(float(np.mean(model.predict(train_codes) == y_train)))
        test_acc.append(float(np.mean(model.predict(test_codes) == y_test)))
    return importance, float(np.mean(train_acc)), float(np.mean(test_acc))


def _disentanglement(importance: np.ndarray) -> float:
    """``D`` of an importance matrix ``[latent, F]``."""
    if importance.shape[1] < 2:
        return 1.0  # one factor: every code is trivially about a single factor
    per_code = 1.0 - scipy.stats.entropy(importance.T + 1e-11, base=importance.shape[1])
    weights = importance if importance.sum() > 0 else np.ones_like(importance)
    code_importance = weights.sum(axis=1) / weights.sum()
    return float(np.sum(per_code * code_importance))


def _completeness(importance: np.ndarray) -> float:
    """``C`` of an importance matrix ``[latent, F]``."""
    if importance.shape[0] < 2:
        return 1.0  # one code: each factor is trivially captured by a single code
    per_factor = 1.0 - scipy.stats.entropy(importance + 1e-11, base=importance.shape[0])
    weights = importance if importance.sum() > 0 else np.ones_like(importance)
    factor_importance = weights.sum(axis=0) / weights.sum()
    return float(np.sum(per_factor * factor_importance))
