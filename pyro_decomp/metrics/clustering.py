"""Clustering quality under a mixture prior (SPEC §6; quantifies paper Fig. 3).

Each encoding is assigned to its most probable prior component; the assignment is compared with the
true labels (the pinwheel arm) by normalised mutual information (arithmetic-mean normalisation,
scikit-learn's default) and the adjusted Rand index. Both are invariant to relabelling the clusters:
1 for a perfect clustering, about 0 (NMI >= 0, ARI can be slightly negative) for a random one.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

__all__ = ["compute_clustering"]


def compute_clustering(predicted: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor) -> dict[str, float]:
    """NMI and ARI between predicted clusters and true labels.

    :param predicted: cluster ids ``[num]``, or component probabilities / log-probabilities
        ``[num, K]`` (then the argmax over ``K`` is the cluster).
    :param labels: true labels ``[num]``.
    :returns: ``{"nmi", "ari"}``.

    >>> compute_clustering(np.array([1, 1, 0, 0]), np.array([0, 0, 1, 1]))
    {'nmi': 1.0, 'ari': 1.0}
    """
    predicted = np.asarray(predicted.detach().cpu() if isinstance(predicted, torch.Tensor) else predicted)
    labels = np.asarray(labels.detach().cpu() if isinstance(labels, torch.Tensor) else labels)
    if predicted.ndim == 2:
        predicted = predicted.argmax(axis=1)
    if predicted.ndim != 1 or labels.ndim != 1 or predicted.shape != labels.shape or predicted.size == 0:
        raise ValueError(
            f"predicted must be [num] cluster ids or [num, K] component scores and labels [num]; "
            f"got {predicted.shape} and {labels.shape}"
        )
    return _compute_clustering(predicted, labels)


def _compute_clustering(predicted: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """NMI and ARI of cluster ids ``[num]`` against labels ``[num]``."""
    return {
        "nmi": float(normalized_mutual_info_score(labels, predicted)),
        "ari": float(adjusted_rand_score(labels, predicted)),
    }
