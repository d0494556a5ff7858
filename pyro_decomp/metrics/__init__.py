"""Metrics: disentanglement (ground truth), sparsity, unsupervised, downstream, clustering, correlation.

Each ground-truth metric is ``compute_<name>(dataset, representation_fn, *, random_state, ...)``
returning ``dict[str, float]``, a thin sampling layer over a pure function of arrays.
"""

from pyro_decomp.metrics.beta_vae import compute_beta_vae
from pyro_decomp.metrics.clustering import compute_clustering
from pyro_decomp.metrics.correlation import plot_correlation_heatmap, spearman_correlation_table
from pyro_decomp.metrics.dci import compute_dci
from pyro_decomp.metrics.downstream import compute_downstream
from pyro_decomp.metrics.factor_vae import compute_factor_vae
from pyro_decomp.metrics.mig import compute_mig
from pyro_decomp.metrics.modularity import compute_modularity_explicitness
from pyro_decomp.metrics.sap import compute_sap
from pyro_decomp.metrics.sparsity import compute_hoyer, hoyer, mean_hoyer
from pyro_decomp.metrics.unsupervised import (
    active_units,
    compute_unsupervised,
    dimensionwise_kl,
    gaussian_total_correlation,
    gaussian_wasserstein_correlation,
    iwae_log_likelihood,
)

__all__ = [
    "active_units",
    "compute_beta_vae",
    "compute_clustering",
    "compute_dci",
    "compute_downstream",
    "compute_factor_vae",
    "compute_hoyer",
    "compute_mig",
    "compute_modularity_explicitness",
    "compute_sap",
    "compute_unsupervised",
    "dimensionwise_kl",
    "gaussian_total_correlation",
    "gaussian_wasserstein_correlation",
    "hoyer",
    "iwae_log_likelihood",
    "mean_hoyer",
    "plot_correlation_heatmap",
    "spearman_correlation_table",
]
