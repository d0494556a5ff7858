"""Image datasets through torchvision's dataset classes, read from a local root.

Nothing is fetched unless ``download=True`` is passed: by default a missing file raises a
:class:`FileNotFoundError` that names the path torchvision expects.

==================  ============================  =======================================
dataset             expected files under ``root``  observation
==================  ============================  =======================================
MNIST               ``MNIST/raw/*-idx?-ubyte``     ``[1, 28, 28]`` in ``[0, 1]``
Fashion-MNIST       ``FashionMNIST/raw/...``       ``[1, 32, 32]`` (resized), paper Table 1c
CelebA              ``celeba/img_align_celeba/``   ``[3, 64, 64]``: centre crop 148, resize
                    and the five ``list_*.txt``
==================  ============================  =======================================
"""

from __future__ import annotations

import os
from pathlib import Path

import torchvision
from torchvision import transforms

__all__ = ["mnist", "fashion_mnist", "celeba", "MNIST_RAW_FILES", "CELEBA_FILES"]

# File names torchvision's MNIST and FashionMNIST look for in <root>/<ClassName>/raw/.
MNIST_RAW_FILES: tuple[str, ...] = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
# Files torchvision's CelebA reads from <root>/celeba/ (besides the img_align_celeba/ folder).
CELEBA_FILES: tuple[str, ...] = (
    "list_attr_celeba.txt",
    "identity_CelebA.txt",
    "list_bbox_celeba.txt",
    "list_landmarks_align_celeba.txt",
    "list_eval_partition.txt",
)
# The aligned CelebA faces are 178 x 218; a 148-pixel centre crop keeps the face, as in the
# common 64 x 64 CelebA pipelines of the VAE literature.
CELEBA_CROP = 148

_NO_DOWNLOAD = "Nothing is downloaded unless download=True is passed."


def _check_root(root: str | os.PathLike) -> Path:
    if not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"root must be a path (str or os.PathLike), got {type(root).__name__}")
    return Path(root).expanduser()


def _check_image_size(image_size: int) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size <= 0:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    return image_size


def _mnist_like(cls: type, root: str | os.PathLike, train: bool, download: bool, image_size: int):
    root = _check_root(root)
    image_size = _check_image_size(image_size)
    raw = root / cls.__name__ / "raw"
    if not download:
        missing = [name for name in MNIST_RAW_FILES if not (raw / name).is_file()]
        if missing:
            raise FileNotFoundError(f"{cls.__name__} files not found: expected {missing} in '{raw}'. {_NO_DOWNLOAD}")
    steps = [] if image_size == 28 else [transforms.Resize(image_size, antialias=True)]
    return cls(str(root), train=train, download=download, transform=transforms.Compose(steps + [transforms.ToTensor()]))


def mnist(
    root: str | os.PathLike, *, train: bool = True, download: bool = False, image_size: int = 28
) -> torchvision.datasets.MNIST:
    """MNIST from ``<root>/MNIST/raw/`` as ``(image [1, S, S] in [0, 1], label)`` items.

    :param image_size: side ``S`` of the returned images (28 keeps the originals).
    :raises FileNotFoundError: when the raw files are absent and ``download`` is false.

    >>> data = mnist("~/data")  # doctest: +SKIP
    """
    return _mnist_like(torchvision.datasets.MNIST, root, train, download, image_size)


def fashion_mnist(
    root: str | os.PathLike, *, train: bool = True, download: bool = False, image_size: int = 32
) -> torchvision.datasets.FashionMNIST:
    """Fashion-MNIST from ``<root>/FashionMNIST/raw/``, resized to ``32 x 32`` (paper Table 1c).

    Items are ``(image [1, 32, 32] in [0, 1], label)``; resizing is bilinear with antialiasing.

    :raises FileNotFoundError: when the raw files are absent and ``download`` is false.

    >>> data = fashion_mnist("~/data")  # doctest: +SKIP
    """
    return _mnist_like(torchvision.datasets.FashionMNIST, root, train, download, image_size)


class _LocalCelebA(torchvision.datasets.CelebA):
    """torchvision's CelebA with an existence check instead of md5 sums of the label files.

    Hashing the 26 MB attribute list on every construction is slow, and it rejects trimmed copies;
    pass ``verify_md5=True`` to :func:`celeba` to keep torchvision's check.
    """

    def __init__(self, root: str, *, verify_md5: bool = False, **kwargs) -> None:
        self.verify_md5 = verify_md5  # read by _check_integrity, which the parent's __init__ calls
        super().__init__(root, **kwargs)

    def _check_integrity(self) -> bool:
        if self.verify_md5:
            return super()._check_integrity()
        base = os.path.join(self.root, self.base_folder)
        return all(os.path.isfile(os.path.join(base, name)) for name in CELEBA_FILES) and os.path.isdir(
            os.path.join(base, "img_align_celeba")
        )


def celeba(
    root: str | os.PathLike,
    *,
    split: str = "train",
    download: bool = False,
    image_size: int = 64,
    crop_size: int = CELEBA_CROP,
    target_type: str | list[str] = "attr",
    verify_md5: bool = False,
) -> torchvision.datasets.CelebA:
    """Aligned CelebA from ``<root>/celeba/``: centre crop ``crop_size``, then resize to ``64 x 64``.

    Items are ``(image [3, 64, 64] in [0, 1], target)`` with torchvision's ``target_type``.

    :param split: ``"train"``, ``"valid"``, ``"test"`` or ``"all"``.
    :param verify_md5: also check the label files' md5 sums, as torchvision does.
    :raises FileNotFoundError: when a file is absent and ``download`` is false.

    >>> data = celeba("~/data")  # doctest: +SKIP
    """
    root = _check_root(root)
    image_size = _check_image_size(image_size)
    crop_size = _check_image_size(crop_size)
    if split not in ("train", "valid", "test", "all"):
        raise ValueError(f"split must be 'train', 'valid', 'test' or 'all', got {split!r}")
    base = root / "celeba"
    if not download:
        missing = [name for name in CELEBA_FILES if not (base / name).is_file()]
        if not (base / "img_align_celeba").is_dir():
            missing.append("img_align_celeba/")
        if missing:
            raise FileNotFoundError(f"CelebA files not found: expected {missing} in '{base}'. {_NO_DOWNLOAD}")
    transform = transforms.Compose(
        [
            transforms.CenterCrop(crop_size),
            transforms.Resize(image_size, antialias=True),
            transforms.ToTensor(),
        ]
    )
    return _LocalCelebA(
        str(root),
        verify_md5=bool(verify_md5),
        split=split,
        target_type=target_type,
        transform=transform,
        download=download,
    )
