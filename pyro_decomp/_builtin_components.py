"""The built-in parts a config can name (registered in :mod:`pyro_decomp.components`).

Data sets: ``pinwheel``, ``dsprites``, ``fashion_mnist``, ``mnist``, ``celeba``. Priors: ``isotropic``,
``anisotropic`` (fixed, PCA-initialised or learned variances), ``student_t``, ``mixture``,
``sparse_mixture``, ``hierarchical_scale``. Likelihoods: ``gaussian``, ``laplace``, ``bernoulli``.
Networks: every pair of :data:`pyro_decomp.models.networks.NETWORKS`. Divergences: every type of
:func:`pyro_decomp.divergences.factory.divergence_from_dict`.
"""

from __future__ import annotations

import inspect
import typing
from pathlib import Path

import numpy as np
import torch

from .components import register_data, register_divergence, register_likelihood, register_networks, register_prior
from .data.bundle import ByteImages, DataBundle

_NO_ROOT = (
    "data.root is not set: {name} cannot be downloaded at run time. Download it once, then pass the folder "
    "that holds it, e.g. data.root=~/data (see the README, 'Data sets')."
)


# ---------------------------------------------------------------------------------------------- data sets
@register_data("pinwheel", event_dim=1, binary=False, labels="clusters")
def pinwheel_data(
    *,
    lazy: bool = False,
    seed: int = 0,
    arms: int = 4,
    per_arm: int = 100,
    test_per_arm: int = 100,
    radial_std: float = 0.1,
    tangential_std: float = 0.3,
    rate: float = 0.25,
) -> DataBundle:
    """The pinwheel (paper App. B): ``arms * per_arm`` training points, an independent test draw."""
    from .data.pinwheel import pinwheel_splits

    if min(arms, per_arm, test_per_arm) < 1:
        raise ValueError("arms, per_arm and test_per_arm must be >= 1.")
    if min(radial_std, tangential_std, rate) < 0:
        raise ValueError("radial_std, tangential_std and rate must be >= 0.")
    s = pinwheel_splits(seed, per_arm=per_arm, test_per_arm=test_per_arm, radial_std=radial_std,
                        tangential_std=tangential_std, arms=arms, rate=rate)  # fmt: skip
    return DataBundle(s.x_train, s.y_train, s.x_test, s.y_test, event_dim=1)


@register_data("dsprites", event_dim=3, binary=True, labels="factors", ground_truth=True)
def dsprites_data(
    *, lazy: bool = False, seed: int = 0, num_images: int | None = None, test_images: int = 1000, npz: str | None = None
) -> DataBundle:
    """dSprites (2D Shapes): ``num_images`` training and ``test_images`` held-out images, disjoint uniform
    subsets of the 737,280-image grid drawn with ``seed`` (``num_images=null``: the whole grid, as the thesis
    trains, and the test images are then part of it). Rendered procedurally, or read from the official
    ``npz`` file. ``y`` are the ``[n, 5]`` integer factors.

    The training images are bit-packed (:class:`~pyro_decomp.data.dsprites.PackedImages`, 512 bytes an
    image) and turned into floats one minibatch at a time; with ``lazy`` (reloading a run to evaluate it)
    they are a :class:`~pyro_decomp.data.dsprites.LazyImages` that renders only the rows asked for.
    """
    from .data.dsprites import DSprites, LazyImages

    dataset = DSprites.from_npz(npz) if npz else DSprites()
    total = len(dataset)
    if num_images is not None and num_images < 2:
        raise ValueError(f"num_images must be >= 2 or null (the whole grid), got {num_images}.")
    if not 1 <= test_images < total:
        raise ValueError(f"test_images must be in [1, {total}) (the dataset's size), got {test_images}.")
    n_train = total if num_images is None else num_images
    if num_images is not None and n_train + test_images > total:
        raise ValueError(
            f"num_images + test_images = {n_train} + {test_images} exceed the {total} images of dSprites; "
            "lower data.num_images or data.test_images (or set data.num_images=null)."
        )
    perm = np.random.default_rng(seed).permutation(total)
    test_idx = np.sort(perm[:test_images])
    train_idx = np.arange(total) if num_images is None else np.sort(perm[test_images : test_images + n_train])
    y_train = torch.from_numpy(dataset.factors_of_rows(train_idx))
    if lazy:
        x_train = LazyImages(lambda rows: dataset.images_of_rows(train_idx[rows]), train_idx.size,
                             dataset.observation_shape)  # fmt: skip
    else:
        x_train = dataset.packed_rows(train_idx)
    x_test, y_test = dataset.images_of_rows(test_idx), torch.from_numpy(dataset.factors_of_rows(test_idx))
    return DataBundle(x_train, y_train, x_test, y_test, event_dim=3, ground_truth=dataset)


def _subset(n: int, k: int | None, seed: int, what: str) -> np.ndarray:
    if k is None:
        return np.arange(n)
    if not 1 <= k <= n:
        raise ValueError(f"{what} must be in [1, {n}] or null (all of them), got {k}.")
    return np.sort(np.random.default_rng(seed).permutation(n)[:k])


def _mnist_like_data(loader, name: str, root, num_images, test_images, image_size, seed) -> DataBundle:
    if root is None:
        raise FileNotFoundError(_NO_ROOT.format(name=name))
    root = str(Path(root).expanduser())
    splits = []
    for train, k, what, child in ((True, num_images, "num_images", 0), (False, test_images, "test_images", 1)):
        ds = loader(root, train=train, image_size=image_size)
        idx = _subset(len(ds), k, seed + child, what)
        x = ds.data[torch.from_numpy(idx)].unsqueeze(1).to(torch.float32) / 255.0
        if image_size != x.shape[-1]:
            x = torch.nn.functional.interpolate(x, size=(image_size, image_size), mode="bilinear",
                                                antialias=True, align_corners=False).clamp_(0, 1)  # fmt: skip
        splits.append((ByteImages.from_float(x), torch.as_tensor(ds.targets)[torch.from_numpy(idx)]))
        names = list(getattr(ds, "classes", []) or [])
    (x_tr, y_tr), (x_te, y_te) = splits
    return DataBundle(x_tr, y_tr, x_te[:], y_te, event_dim=3, class_names=names or None)


@register_data("fashion_mnist", event_dim=3, binary=False, labels="classes")
def fashion_mnist_data(
    *, lazy: bool = False, root: str | None = None, num_images: int | None = None, test_images: int | None = None,
    image_size: int = 32, seed: int = 0,
) -> DataBundle:
    """Fashion-MNIST from a local ``root`` (``root/FashionMNIST/raw``; never downloaded at run time), resized
    to ``image_size`` (32 in 004). ``num_images`` / ``test_images``: seeded subsets of the official splits
    (``null``: all 60,000 / 10,000)."""
    from .data.vision import fashion_mnist

    return _mnist_like_data(fashion_mnist, "Fashion-MNIST", root, num_images, test_images, image_size, seed)


@register_data("mnist", event_dim=3, binary=False, labels="classes")
def mnist_data(
    *, lazy: bool = False, root: str | None = None, num_images: int | None = None, test_images: int | None = None,
    image_size: int = 28, seed: int = 0,
) -> DataBundle:
    """MNIST from a local ``root`` (``root/MNIST/raw``), as :func:`fashion_mnist_data`."""
    from .data.vision import mnist

    return _mnist_like_data(mnist, "MNIST", root, num_images, test_images, image_size, seed)


@register_data("celeba", event_dim=3, binary=False, labels="attributes")
def celeba_data(
    *, lazy: bool = False, root: str | None = None, num_images: int | None = 20000, test_images: int = 2000,
    image_size: int = 64, seed: int = 0,
) -> DataBundle:
    """CelebA from a local ``root`` (``root/celeba``, aligned and cropped as in 004), seeded subsets of the
    train and test splits, stored as uint8. ``y`` are the 40 binary attributes."""
    from .data.vision import celeba

    if root is None:
        raise FileNotFoundError(_NO_ROOT.format(name="CelebA"))
    root = str(Path(root).expanduser())
    out = []
    for split, k, what, child in (("train", num_images, "num_images", 0), ("test", test_images, "test_images", 1)):
        ds = celeba(root, split=split, image_size=image_size)
        idx = _subset(len(ds), k, seed + child, what)
        xs, ys = [], []
        for i in idx:
            img, attr = ds[int(i)]
            xs.append((img * 255).round().to(torch.uint8))
            ys.append(torch.as_tensor(attr))
        out.append((ByteImages(torch.stack(xs)), torch.stack(ys)))
    (x_tr, y_tr), (x_te, y_te) = out
    return DataBundle(x_tr, y_tr, x_te[:], y_te, event_dim=3)


# ---------------------------------------------------------------------------------------------- priors
@register_prior("isotropic")
def isotropic_prior(latent_dim: int, *, scale: float = 1.0):
    """N(0, scale² I)."""
    from .models import IsotropicGaussianPrior

    return IsotropicGaussianPrior(latent_dim, scale=scale)


@register_prior("anisotropic", injected=("latent_dim", "x_train"))
def anisotropic_prior(
    latent_dim: int, x_train=None, *, init: str = "fixed", variance: list[float] | None = None, learn: bool = False,
    pca_images: int = 10000,
):
    """N(0, diag σ²) (001 §6, Fig. 2): ``init=fixed`` takes ``variance`` (default all ones), ``init=pca``
    the top-``latent_dim`` principal variances of up to ``pca_images`` training points, rescaled to mean
    1; ``learn=true`` makes σ² a learned parameter initialised so."""
    from .models.priors import AnisotropicGaussianPrior, pca_variances

    if init not in ("fixed", "pca"):
        raise ValueError(f"init must be 'fixed' or 'pca', got {init!r}.")
    if init == "pca":
        if variance is not None:
            raise ValueError("init=pca computes the variances from the data; remove prior.variance (or use init=fixed).")
        if x_train is None:
            raise ValueError("init=pca needs the training data.")
        n = len(x_train)
        rows = np.sort(np.random.default_rng(0).permutation(n)[: min(n, pca_images)])
        data = x_train[torch.from_numpy(rows)].reshape(len(rows), -1).to(torch.float64)
        var = pca_variances(data, latent_dim)
        variance = (var / var.mean()).tolist()
    return AnisotropicGaussianPrior(latent_dim, variance=variance, learn=learn)


@register_prior("student_t")
def student_t_prior(latent_dim: int, *, df: float = 5.0):
    """Product of Student-t with ``df`` degrees of freedom (001 Fig. 2, bottom)."""
    from .models import StudentTPrior

    return StudentTPrior(latent_dim, df=df)


@register_prior("mixture")
def mixture_prior(latent_dim: int, *, n_components: int = 4, variance: float = 0.03, means: str = "corners"):
    """Gaussian mixture with equal weights and ``variance`` per component (001 Eq. 9); ``means``:
    ``corners`` or ``axes``."""
    from .models import GaussianMixturePrior

    return GaussianMixturePrior(latent_dim, n_components=n_components, variance=variance, means=means)


@register_prior("sparse_mixture")
def sparse_mixture_prior(latent_dim: int, *, gamma: float = 0.8, sigma0: float = 0.05):
    """Spike-and-slab-like sparse prior (004 Eq. 8): per dimension (1-γ) N(0, 1) + γ N(0, σ0²)."""
    from .models import SparseMixturePrior

    return SparseMixturePrior(latent_dim, gamma=gamma, sigma0=sigma0)


@register_prior("hierarchical_scale")
def hierarchical_prior(latent_dim: int, *, log_scale_loc: float = 0.0, log_scale_scale: float = 0.5):
    """A structured prior program: log s ~ N(loc, scale²), z | s ~ N(0, s² I) (docs/tutorials); trained with
    its own guide, :class:`~pyro_decomp.models.structured.HierarchicalScaleGuide`."""
    from .models.structured import HierarchicalScaleGuide, hierarchical_scale_prior

    prior = hierarchical_scale_prior(latent_dim, log_scale_loc=log_scale_loc, log_scale_scale=log_scale_scale)
    # a prior program with latent sites besides z says how to build a guide that samples them too
    prior.make_guide = lambda encoder: HierarchicalScaleGuide(encoder, latent_dim)  # type: ignore[attr-defined]
    return prior


# ---------------------------------------------------------------------------------------------- likelihoods
def _scale_outputs(params) -> int:
    return 2 if params.get("scale") is None else 1


@register_likelihood("gaussian", decoder_outputs=_scale_outputs)
def gaussian_likelihood(event_dim: int, *, scale: float | None = None):
    """Gaussian; ``scale=null``: the decoder predicts the scale (001 Table 1b)."""
    from .models import GaussianLikelihood

    if scale is not None and not scale > 0:
        raise ValueError(f"scale must be > 0 or null, got {scale}.")
    return GaussianLikelihood(event_dim, scale=scale)


@register_likelihood("laplace", decoder_outputs=_scale_outputs)
def laplace_likelihood(event_dim: int, *, scale: float | None = 0.1):
    """Laplace (004 App. B: scale 0.1); ``scale=null``: the decoder predicts the scale."""
    from .models import LaplaceLikelihood

    if scale is not None and not scale > 0:
        raise ValueError(f"scale must be > 0 or null, got {scale}.")
    return LaplaceLikelihood(event_dim, scale=scale)


@register_likelihood("bernoulli", binary_only=True, decoder_outputs=lambda params: 1)
def bernoulli_likelihood(event_dim: int):
    """Bernoulli on binary data (decoder outputs are logits)."""
    from .models import BernoulliLikelihood

    return BernoulliLikelihood(event_dim)


# ---------------------------------------------------------------------------------------------- networks
def _register_network_pairs() -> None:
    from .models import networks as nets

    for name, (enc_cls, dec_cls) in nets.NETWORKS.items():
        params: dict[str, inspect.Parameter] = {}
        hints: dict[str, typing.Any] = {}
        for cls in (enc_cls, dec_cls):
            sig = inspect.signature(cls.__init__)
            try:
                cls_hints = typing.get_type_hints(cls.__init__)
            except Exception:
                cls_hints = {}
            for n, p in sig.parameters.items():
                if n in ("self", "latent_dim", "out_multiplier") or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                    continue
                params.setdefault(n, p.replace(kind=inspect.Parameter.KEYWORD_ONLY))
                if n in cls_hints:
                    hints[n] = cls_hints[n]

        def build(latent_dim, out_multiplier=1, _name=name, **kw):
            return nets.build_networks(_name, latent_dim, out_multiplier=out_multiplier, **kw)

        head = [inspect.Parameter("latent_dim", inspect.Parameter.POSITIONAL_OR_KEYWORD),
                inspect.Parameter("out_multiplier", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=1)]  # fmt: skip
        build.__signature__ = inspect.Signature(head + list(params.values()))  # type: ignore[attr-defined]
        build.__annotations__ = dict(hints)
        build.__doc__ = f"{enc_cls.__name__} / {dec_cls.__name__}: {(inspect.getdoc(enc_cls) or '').splitlines()[0]}"
        obs_shape = getattr(dec_cls, "OBS_SHAPE", None)
        register_networks(name, event_dim=1 if name == "pinwheel" else 3, obs_shape=obs_shape)(build)


_register_network_pairs()


# ---------------------------------------------------------------------------------------------- divergences
def _register_divergences() -> None:
    from .divergences.factory import _types, divergence_from_dict

    for kind, cls in _types().items():
        if cls is None:

            def build():
                return None

            build.__doc__ = "no aggregate-posterior divergence (alpha must be 0)"
            register_divergence(kind, injected=())(build)
            continue
        sig = inspect.signature(cls)
        accepts_latent = "latent_dim" in sig.parameters
        params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for n, p in sig.parameters.items()
                  if n != "latent_dim" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]  # fmt: skip
        head = [inspect.Parameter("latent_dim", inspect.Parameter.KEYWORD_ONLY)] if accepts_latent else []

        def build(_kind=kind, _latent=accepts_latent, **kw):
            spec = {"type": _kind, **kw}
            if not _latent:
                spec.pop("latent_dim", None)
            return divergence_from_dict(spec)

        build.__signature__ = inspect.Signature(head + params)  # type: ignore[attr-defined]
        try:
            build.__annotations__ = {k: v for k, v in typing.get_type_hints(cls.__init__).items() if k != "return"}
        except Exception:
            build.__annotations__ = {}
        build.__doc__ = (inspect.getdoc(cls) or kind).splitlines()[0]
        register_divergence(kind, injected=("latent_dim",) if accepts_latent else ())(build)


_register_divergences()
