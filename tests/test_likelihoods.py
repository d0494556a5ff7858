"""Likelihoods: densities against scipy, the decoder-predicted scale, and errors on bad data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from pyro_decomp.models import BernoulliLikelihood, GaussianLikelihood, LaplaceLikelihood


def test_bernoulli_logits_match_scipy():
    logits = torch.randn(4, 1, 3, 3, dtype=torch.float64)
    x = (torch.rand(4, 1, 3, 3) < 0.5).double()
    ours = BernoulliLikelihood(3).distribution(logits).log_prob(x).numpy()
    ref = stats.bernoulli.logpmf(x.numpy(), torch.sigmoid(logits).numpy()).sum((1, 2, 3))
    np.testing.assert_allclose(ours, ref, rtol=1e-10)


@pytest.mark.parametrize(
    "lik, ref",
    [(LaplaceLikelihood(1, scale=0.1), stats.laplace), (GaussianLikelihood(1, scale=0.3), stats.norm)],
    ids=["laplace", "gaussian"],
)
def test_fixed_scale_matches_scipy(lik, ref):
    loc, x = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    expected = ref.logpdf(x.numpy(), loc.numpy(), lik.scale).sum(-1)
    np.testing.assert_allclose(lik.distribution(loc).log_prob(x).numpy(), expected, rtol=1e-10)


def test_decoder_predicted_scale_is_softplus_of_the_second_channel():
    params = torch.randn(6, 2, 3, dtype=torch.float64)  # [batch, (loc, raw scale), D]
    d = GaussianLikelihood(1).distribution(params)
    assert torch.allclose(d.base_dist.loc, params[:, 0])
    assert torch.allclose(d.base_dist.scale, F.softplus(params[:, 1]) + 1e-4)
    with pytest.raises(ValueError, match=r"with scale=None the decoder must output location and raw scale stacked"):
        GaussianLikelihood(1).distribution(torch.zeros(6, 3))


@pytest.mark.parametrize(
    "build, x, match",
    [
        (
            lambda: BernoulliLikelihood(1),
            torch.tensor([[0.0, 0.3]]),
            r"needs binary data in \{0, 1\}, found values such as \[0.3",
        ),
        (lambda: GaussianLikelihood(1), torch.tensor([[float("inf"), 0.0]]), "NaN or infinite values"),
        (lambda: LaplaceLikelihood(3), torch.zeros(4, 4), "at least event_dim=3 dimensions"),
    ],
    ids=["non-binary", "inf", "too-few-dims"],
)
def test_bad_data_is_named(build, x, match):
    with pytest.raises(ValueError, match=match):
        build().check_data(x)


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: LaplaceLikelihood(scale=0.0), "scale must be a positive number or None"),
        (lambda: GaussianLikelihood(scale=float("nan")), "scale must be a positive number or None"),
        (lambda: BernoulliLikelihood(0), "event_dim must be a positive integer"),
    ],
    ids=["laplace-scale", "gaussian-scale", "event-dim"],
)
def test_bad_settings(build, match):
    with pytest.raises(ValueError, match=match):
        build()
