"""The blocked per-dimension MMD (004 Eq. 10) against a fully materialised reference, in float64.

The reference below is the direct formula: it builds the ``[..., n, m, D]`` squared differences, sums
``σ / (σ + t)`` over scales and dimensions, and forms the U-statistic from the three Gram matrices;
autograd differentiates it. The blocked code must give the same value and gradient (issue 13: to 1e-6;
in float64 the two agree to rounding, so the tolerance here is 1e-10).
"""

from __future__ import annotations

import pytest
import torch

from pyro_decomp.divergences import MMD, AggregateBatch, IMQKernel, PerDimensionIMQKernel, RBFKernel, mmd_u_statistic
from pyro_decomp.divergences import _utils
from pyro_decomp.divergences import mmd as mmd_module

SIGMAS = (0.2, 0.4, 1.0, 2.0, 4.0, 10.0)  # 004 Eq. 10


def _reference_gram(a, b, sigmas=SIGMAS):
    t = (a.unsqueeze(-2) - b.unsqueeze(-3)) ** 2  # [..., n, m, D]
    return sum(s / (s + t) for s in sigmas).sum(-1)


def _reference_mmd(x, y, sigmas=SIGMAS):
    n, m = x.shape[-2], y.shape[-2]
    kxx, kyy, kxy = _reference_gram(x, x, sigmas), _reference_gram(y, y, sigmas), _reference_gram(x, y, sigmas)
    off = lambda k: k.sum((-1, -2)) - k.diagonal(dim1=-2, dim2=-1).sum(-1)  # noqa: E731
    return off(kxx) / (n * (n - 1)) + off(kyy) / (m * (m - 1)) - 2 * kxy.mean((-1, -2))


def _inputs(x_shape, y_shape, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(x_shape, generator=g, dtype=torch.float64)
    y = 0.3 + 0.7 * torch.randn(y_shape, generator=g, dtype=torch.float64)
    return x.to(device).requires_grad_(), y.to(device).requires_grad_()


@pytest.fixture(params=["default", "tiny"])
def budget(request, monkeypatch):
    """The default block budget, and a tiny one that forces many row blocks and column chunks."""
    if request.param == "tiny":
        monkeypatch.setattr(mmd_module, "block_elements", lambda device: 7)
    return request.param


# (x shape, y shape): n = m = 2 (the smallest valid U-statistic), n != m, B not a multiple of any block,
# leading particle dimensions, and leading dimensions that broadcast
SHAPES = [
    ((2, 1), (2, 1)),
    ((1, 3, 2), (1, 5, 2)),
    ((2, 7, 3), (2, 4, 3)),
    ((1, 33, 5), (1, 40, 5)),
    ((3, 1, 9, 4), (1, 2, 6, 4)),
]


@pytest.mark.parametrize("x_shape, y_shape", SHAPES, ids=[str(s[0]) for s in SHAPES])
def test_fused_mmd_matches_reference_value_and_gradient(x_shape, y_shape, budget):
    x, y = _inputs(x_shape, y_shape)
    weights = torch.rand(torch.broadcast_shapes(x_shape[:-2], y_shape[:-2]), dtype=torch.float64) + 0.5
    ref = _reference_mmd(x, y)
    ref_gx, ref_gy = torch.autograd.grad((ref * weights).sum(), (x, y))
    out = mmd_u_statistic(x, y, PerDimensionIMQKernel())
    gx, gy = torch.autograd.grad((out * weights).sum(), (x, y))
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(gx, ref_gx, rtol=0, atol=1e-10)
    torch.testing.assert_close(gy, ref_gy, rtol=0, atol=1e-10)


@pytest.mark.parametrize("x_shape, y_shape", SHAPES, ids=[str(s[0]) for s in SHAPES])
def test_blocked_gram_matrix_matches_reference(x_shape, y_shape, budget):
    a, b = _inputs(x_shape, y_shape, seed=1)
    k = PerDimensionIMQKernel(sigmas=(0.3, 5.0))
    ref = _reference_gram(a, b, (0.3, 5.0))
    out = k(a, b)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-10)
    w = torch.randn_like(ref)
    for got, want in zip(torch.autograd.grad((out * w).sum(), (a, b)), torch.autograd.grad((ref * w).sum(), (a, b))):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


def test_fused_mmd_gradcheck_and_one_sided_gradients(monkeypatch):
    monkeypatch.setattr(mmd_module, "block_elements", lambda device: 10)
    x, y = _inputs((1, 5, 3), (1, 4, 3), seed=2)
    k = PerDimensionIMQKernel()
    assert torch.autograd.gradcheck(lambda x, y: mmd_u_statistic(x, y, k), (x, y))
    # only the encoder side needs a gradient in training: the prior samples' is not computed
    (gx,) = torch.autograd.grad(mmd_u_statistic(x, y.detach(), k).sum(), (x,))
    torch.testing.assert_close(gx, torch.autograd.grad(_reference_mmd(x, y.detach()).sum(), (x,))[0])


EUCLIDEAN = {"imq": IMQKernel(), "imq-single": IMQKernel(c=2.0), "rbf": RBFKernel(bandwidths=(0.5, 3.0))}


@pytest.mark.parametrize("kernel", EUCLIDEAN.values(), ids=EUCLIDEAN.keys())
@pytest.mark.parametrize("x_shape, y_shape", SHAPES, ids=[str(s[0]) for s in SHAPES])
def test_fused_euclidean_mmd_matches_gram_matrices(kernel, x_shape, y_shape, budget):
    """IMQ and RBF: the fused row-block statistic equals the U-statistic of the kernel's Gram matrices."""
    x, y = _inputs(x_shape, y_shape, seed=6)
    ref = mmd_u_statistic(x, y, lambda a, b: kernel(a, b))  # a plain callable: the Gram-matrix path
    ref_g = torch.autograd.grad(ref.sum(), (x, y))
    out = mmd_u_statistic(x, y, kernel)
    out_g = torch.autograd.grad(out.sum(), (x, y))
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-10)
    for got, want in zip(out_g, ref_g):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


def test_fused_path_equals_generic_gram_path():
    """The MMD divergence with kernel "per_dim" (fused) equals the generic U-statistic on its Gram matrices."""
    x, y = _inputs((1, 20, 6), (1, 17, 6), seed=3)
    k = PerDimensionIMQKernel()
    fused = MMD("per_dim")(AggregateBatch(None, x, y))
    generic = mmd_u_statistic(x, y, lambda a, b: k(a, b))  # a plain callable has no fused path
    torch.testing.assert_close(fused, generic.mean(), rtol=0, atol=1e-10)


@pytest.mark.parametrize("n, D, budget_elems", [(50, 4, 256), (13, 40, 100), (9, 3, 5)])
def test_temporaries_stay_within_the_block_budget(n, D, budget_elems, monkeypatch):
    """No pairwise temporary is larger than the budget (or one row of D, when D alone exceeds it)."""
    monkeypatch.setattr(mmd_module, "block_elements", lambda device: budget_elems)
    sizes = []
    views = mmd_module._Scratch.views

    def recording_views(self, shape):
        sizes.append(shape[0] * shape[1] * shape[2])
        return views(self, shape)

    monkeypatch.setattr(mmd_module._Scratch, "views", recording_views)
    x, y = _inputs((n, D), (n + 3, D), seed=4)
    mmd_u_statistic(x, y, PerDimensionIMQKernel()).backward()
    # the fused statistic uses the symmetry of k: fewer element visits than the three full Gram matrices
    assert sum(sizes) < (n * n + (n + 3) ** 2 + n * (n + 3)) * D
    PerDimensionIMQKernel()(x, y).sum().backward()
    assert max(sizes) <= max(budget_elems, D)


def test_block_schedules_cover_every_pair_once():
    for n, width, budget in [(10, 3, 7), (10, 3, 1000), (25, 2, 30), (1, 4, 2)]:
        # a row block's leading square holds both orders of its pairs and is counted half: every ordered
        # pair (i, j), diagonal included, then has total weight one
        seen = torch.zeros(n, n)
        for r0, r1, c0, c1 in mmd_module._sym_blocks(n, width, budget):
            assert (r1 - r0) * (c1 - c0) * width <= max(budget, width)
            seen[r0:r1, c0:c1] += 1.0
            if c0 == r0:
                seen[r0:r1, r0:r1] -= 0.5
        assert torch.equal(seen + seen.T, torch.ones(n, n))
        seen = torch.zeros(n, n + 2, dtype=torch.long)
        for r0, r1, c0, c1 in _utils.pair_blocks(n, n + 2, width, budget):
            seen[r0:r1, c0:c1] += 1
        assert torch.equal(seen, torch.ones_like(seen))


def test_mismatched_dimensions_are_a_clear_error():
    k = PerDimensionIMQKernel()
    with pytest.raises(ValueError, match=r"same dimension D, got shapes \(4, 3\) and \(5, 2\)"):
        mmd_u_statistic(torch.zeros(4, 3), torch.zeros(5, 2), k)
    with pytest.raises(ValueError, match="do not broadcast"):
        k(torch.zeros(2, 4, 3), torch.zeros(3, 5, 3))


@pytest.mark.cuda
@pytest.mark.parametrize("kernel", [PerDimensionIMQKernel(), IMQKernel(), RBFKernel()], ids=["per-dim", "imq", "rbf"])
def test_blocked_mmd_on_cuda_matches_cpu(kernel):
    x, y = _inputs((2, 300, 20), (2, 257, 20), seed=5)
    cpu = mmd_u_statistic(x, y, kernel)
    cgx, cgy = torch.autograd.grad(cpu.sum(), (x, y))
    xc, yc = x.detach().cuda().requires_grad_(), y.detach().cuda().requires_grad_()
    gpu = mmd_u_statistic(xc, yc, kernel)
    ggx, ggy = torch.autograd.grad(gpu.sum(), (xc, yc))
    assert gpu.device.type == "cuda" and ggx.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=1e-10)
    torch.testing.assert_close(ggx.cpu(), cgx, rtol=0, atol=1e-10)
    torch.testing.assert_close(ggy.cpu(), cgy, rtol=0, atol=1e-10)
    # float32 on the GPU (the training dtype) against float64 on the CPU: sums of ~10^6 float32 terms
    g32 = mmd_u_statistic(xc.detach().float(), yc.detach().float(), kernel)
    torch.testing.assert_close(g32.double().cpu(), cpu.detach(), rtol=1e-4, atol=1e-3)


@pytest.mark.cuda
def test_blocked_inclusive_kl_on_cuda_matches_cpu():
    import pyro.distributions as dist

    from pyro_decomp.divergences import InclusiveKL

    g = torch.Generator().manual_seed(8)
    loc, scale = torch.randn(1, 200, 6, generator=g, dtype=torch.float64), 0.2 + torch.rand(1, 200, 6, generator=g)
    z_p, log_p = torch.randn(1, 150, 6, generator=g, dtype=torch.float64), torch.zeros(1, 150, dtype=torch.float64)
    out = {}
    for device in ("cpu", "cuda"):
        lc = loc.to(device).requires_grad_()
        q = dist.Normal(lc, scale.double().to(device)).to_event(1)
        value = InclusiveKL()(AggregateBatch(q, q.sample(), z_p.to(device), log_p.to(device)))
        out[device] = (value.cpu(), torch.autograd.grad(value, lc)[0].cpu())
    torch.testing.assert_close(out["cuda"], out["cpu"], rtol=0, atol=1e-10)


def test_a_subclass_that_redefines_the_kernel_is_not_fused():
    class Doubled(IMQKernel):
        def __call__(self, a, b):
            return 2.0 * super().__call__(a, b)

    x, y = _inputs((1, 8, 2), (1, 6, 2), seed=7)
    torch.testing.assert_close(mmd_u_statistic(x, y, Doubled()), 2.0 * mmd_u_statistic(x, y, IMQKernel()))
