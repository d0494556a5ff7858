"""KL-based aggregate-posterior divergences."""

from __future__ import annotations

import math
import threading

import torch
from torch.autograd.function import once_differentiable
from torch.distributions import Distribution, Independent, Normal

from ._utils import block_elements
from .base import AggregateBatch, Divergence, log_mean_exp, pairwise_log_prob

__all__ = ["InclusiveKL"]


def _diag_normal_parts(guide_dist: Distribution, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(loc, scale)``, each ``[P, B, D]``, of a diagonal-Normal guide whose particles match ``z: [P, M, D]``;
    ``None`` for any other guide (which then goes through :func:`pairwise_log_prob`)."""
    if not (
        isinstance(guide_dist, Independent)
        and guide_dist.reinterpreted_batch_ndims == 1
        and isinstance(guide_dist.base_dist, Normal)
        and guide_dist.base_dist.loc.dim() == 3
        and z.dim() == 3
    ):
        return None
    loc, scale = guide_dist.base_dist.loc, guide_dist.base_dist.scale
    if scale.shape != loc.shape:
        scale = scale.expand(loc.shape)
    if loc.shape[0] != z.shape[0] or loc.shape[-1] != z.shape[-1] or not (loc.dtype == scale.dtype == z.dtype):
        return None  # broadcasting or type promotion: the generic path handles them
    return loc, scale


_SCRATCH = threading.local()


def _scratch(numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A 1-D scratch buffer of ``numel`` elements for :class:`_NormalMixtureLogDensity`'s blocks.

    On a CPU the buffer is kept (one per thread and dtype, at most the block budget, a few MiB) and
    reused by every call, forward and backward: freeing and reallocating megabytes each step lets glibc
    return the pages to the system and fault them in again (thousands of page faults per step, measured
    as system time). Only the calling thread uses it, and only within one forward or one backward call
    (neither re-enters the other), so the reuse is safe. Other devices have caching allocators: a fresh
    ``torch.empty`` there.
    """
    if device.type != "cpu":
        return torch.empty(numel, dtype=dtype, device=device)
    cache = getattr(_SCRATCH, "buffers", None)
    if cache is None:
        cache = _SCRATCH.buffers = {}
    buf = cache.get(dtype)
    if buf is None or buf.numel() < numel:
        buf = cache[dtype] = torch.empty(numel, dtype=dtype)
    return buf[:numel]


class _NormalMixtureLogDensity(torch.autograd.Function):
    """:math:`\\log \\frac1B \\sum_i \\mathcal N(z_j; \\mu_i, \\operatorname{diag} s_i^2)` for ``z: [P, M, D]`` and
    ``loc, scale: [P, B, D]`` → ``[P, M]``, in blocks of rows ``j``.

    The standardised differences ``[rows, B, D]`` live in one reused buffer of at most
    :func:`~._utils.block_elements` elements; the forward pass keeps only the mixture weights
    ``[P, M, B]`` (the responsibilities of each encoder for each prior sample), and the backward pass
    recomputes the differences block by block. With :math:`y = (z - \\mu) / s` and weights :math:`w`:
    :math:`\\partial/\\partial \\mu_i = \\sum_j w_{ji} y_{ji} / s_i`,
    :math:`\\partial/\\partial s_i = \\sum_j w_{ji} (y_{ji}^2 - 1) / s_i`,
    :math:`\\partial/\\partial z_j = -\\sum_i w_{ji} y_{ji} / s_i`.
    """

    @staticmethod
    def forward(ctx, z, loc, scale):  # noqa: D401
        P, M, D = z.shape
        B = loc.shape[1]
        inv = scale.reciprocal()
        log_norm = scale.log().sum(-1) + 0.5 * D * math.log(2 * math.pi)  # [P, B]
        rows = max(1, block_elements(z.device) // max(1, B * D))
        buf = _scratch(min(rows, M) * B * D, z.dtype, z.device)
        out = torch.empty(P, M, dtype=z.dtype, device=z.device)
        weights = torch.empty(P, M, B, dtype=z.dtype, device=z.device)
        for p in range(P):
            for j0 in range(0, M, rows):
                j1 = min(M, j0 + rows)
                y = buf[: (j1 - j0) * B * D].view(j1 - j0, B, D)
                torch.sub(z[p, j0:j1].unsqueeze(1), loc[p].unsqueeze(0), out=y).mul_(inv[p])
                logq = y.square_().sum(-1).mul_(-0.5).sub_(log_norm[p])  # [rows, B]
                lse = torch.logsumexp(logq, -1, keepdim=True)
                torch.exp(logq.sub_(lse), out=weights[p, j0:j1])
                out[p, j0:j1] = lse.squeeze(-1) - math.log(B)
        ctx.save_for_backward(z, loc, scale, weights)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        z, loc, scale, weights = ctx.saved_tensors
        need_z, need_loc, need_scale = ctx.needs_input_grad
        P, M, D = z.shape
        B = loc.shape[1]
        inv = scale.reciprocal()
        g = weights * grad_out.unsqueeze(-1)  # [P, M, B]
        grad_z = torch.zeros_like(z) if need_z else None
        sum_gy = torch.zeros_like(loc)  # Σ_j g_ji y_jid
        sum_gyy = torch.zeros_like(loc) if need_scale else None  # Σ_j g_ji y_jid²
        rows = max(1, block_elements(z.device) // max(1, B * D))
        bufs = _scratch(2 * min(rows, M) * B * D, z.dtype, z.device).view(2, -1)
        for p in range(P):
            for j0 in range(0, M, rows):
                j1 = min(M, j0 + rows)
                shape = (j1 - j0, B, D)
                y = bufs[0, : (j1 - j0) * B * D].view(shape)
                gy = bufs[1, : (j1 - j0) * B * D].view(shape)
                torch.sub(z[p, j0:j1].unsqueeze(1), loc[p].unsqueeze(0), out=y).mul_(inv[p])
                torch.mul(y, g[p, j0:j1].unsqueeze(-1), out=gy)
                sum_gy[p] += gy.sum(0)
                if need_scale:
                    sum_gyy[p] += gy.mul_(y).sum(0)
                    if need_z:  # gy is spent: recompute g y / s
                        torch.mul(y, g[p, j0:j1].unsqueeze(-1), out=gy)
                if need_z:
                    grad_z[p, j0:j1] = -gy.mul_(inv[p]).sum(1)
        grad_loc = sum_gy * inv if need_loc else None
        grad_scale = (sum_gyy - g.sum(1).unsqueeze(-1)) * inv if need_scale else None
        return grad_z, grad_loc, grad_scale


class InclusiveKL(Divergence):
    """Inclusive KL :math:`\\mathrm{KL}(p(z) \\,\\|\\, q(z))` with the batch's aggregate posterior (paper §B, pinwheel).

    .. math::

        \\hat D = \\frac1M \\sum_{j=1}^M \\Big[\\log p(z_j) - \\log \\frac1B \\sum_{i=1}^B q(z_j \\mid x_i)\\Big],
        \\qquad z_j \\sim p(z)

    The inner mean is a logsumexp over the batch's encoders, so it is stable for tight encoders. The
    paper uses the full dataset as batch (``B = n = 400``). The estimator is unbiased for
    :math:`\\mathrm{KL}(p \\| \\hat q_B)` where :math:`\\hat q_B` is the batch mixture; with ``B < n`` it is
    a biased estimate of the KL to the full aggregate posterior (004 App. C).

    :param num_prior_samples: ``M``; ``None`` uses ``M = B``.

    >>> import torch, pyro.distributions as dist
    >>> q = dist.Normal(torch.zeros(1, 4, 2), 1.0).to_event(1)
    >>> p = dist.Normal(torch.zeros(2), 1.0).to_event(1)
    >>> zp = p.sample((1, 1000))
    >>> d = InclusiveKL()(AggregateBatch(q, q.sample(), zp, p.log_prob(zp)))
    >>> abs(d.item()) < 1e-5     # identical distributions
    True
    """

    needs_prior_samples = True

    def __call__(self, batch: AggregateBatch) -> torch.Tensor:
        if batch.z_p is None or batch.log_p_zp is None:
            raise ValueError("InclusiveKL needs prior samples z_p and their log densities log_p_zp.")
        parts = _diag_normal_parts(batch.guide_dist, batch.z_p)
        if parts is not None:  # blocked, never builds [P, M, B, D]
            log_q = _NormalMixtureLogDensity.apply(batch.z_p, *parts)  # [P, M]
        else:
            log_q = log_mean_exp(pairwise_log_prob(batch.guide_dist, batch.z_p), dim=-1)  # [P, M]
        return (batch.log_p_zp - log_q).mean()
