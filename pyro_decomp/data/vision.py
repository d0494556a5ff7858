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

import csv
import math
import os
from pathlib import Path

import torch
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
_REFETCH = "Replace it with an intact copy (or delete it and pass download=True to fetch it again)."


def _check_root(root: str | os.PathLike) -> Path:
    if not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"root must be a path (str or os.PathLike), got {type(root).__name__}")
    path = Path(root).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(f"root '{path}' is a file; pass the directory that holds the dataset's folder.")
    return path


def _check_idx(path: Path, dims: int, tail: tuple[int, ...], num_classes: int | None = None) -> int:
    """Check an IDX file (the MNIST format: ``0 0 0x08 ndim``, big-endian uint32 sizes, uint8 data).

    torchvision reads these with bare ``assert`` statements, so a truncated or foreign file would
    surface as an empty ``AssertionError``; this names the file and the defect instead.
    :returns: the number of items (the first size).
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        header = f.read(4 + 4 * dims)
        labels = f.read() if num_classes is not None else b""

    def bad(what: str) -> ValueError:
        return ValueError(f"'{path}' is not a valid MNIST-format (IDX) file: {what}. {_REFETCH}")

    if len(header) < 4 + 4 * dims:
        raise bad(f"it has only {size} bytes, fewer than the {4 + 4 * dims}-byte header")
    if header[:3] != b"\x00\x00\x08" or header[3] != dims:
        raise bad(f"its header {header[:4].hex()} is not 000008{dims:02x} (unsigned bytes, {dims} dimension(s))")
    shape = tuple(int.from_bytes(header[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    if shape[1:] != tail:
        raise bad(f"items have shape {list(shape[1:])}, expected {list(tail)}")
    expected = 4 + 4 * dims + math.prod(shape)
    if size != expected:
        raise bad(f"the header announces {shape[0]} items ({expected} bytes) but the file has {size} bytes")
    if num_classes is not None and labels and max(labels) >= num_classes:
        raise bad(f"it holds the label {max(labels)}, outside 0..{num_classes - 1}")
    return shape[0]


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
    transform = transforms.Compose(steps + [transforms.ToTensor()])
    if not download:  # check the files first: torchvision reads them with bare asserts
        _check_mnist_split(cls.__name__, raw, train)
    try:
        return cls(str(root), train=train, download=download, transform=transform)
    except (AssertionError, RuntimeError, ValueError, TypeError) as e:
        if not all((raw / name).is_file() for name in MNIST_RAW_FILES):
            raise  # a failed download: torchvision's own message says what went wrong
        _check_mnist_split(cls.__name__, raw, train)  # names the damaged file, if it is one of ours
        raise ValueError(  # e.g. a damaged legacy processed/*.pt, which torchvision prefers to raw/
            f"{cls.__name__} files under '{root / cls.__name__}' could not be read ({type(e).__name__}: {e}). "
            f"{_REFETCH}"
        ) from None


def _check_mnist_split(name: str, raw: Path, train: bool) -> None:
    prefix = "train" if train else "t10k"
    images, labels = raw / f"{prefix}-images-idx3-ubyte", raw / f"{prefix}-labels-idx1-ubyte"
    n_images = _check_idx(images, 3, (28, 28))
    n_labels = _check_idx(labels, 1, (), num_classes=10)
    if n_images != n_labels:
        raise ValueError(
            f"{name}: '{images}' holds {n_images} images but '{labels}' holds {n_labels} labels; "
            f"they come from different copies. {_REFETCH}"
        )


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

    def _load_csv(self, filename: str, header: int | None = None):
        """torchvision's parser, with each line checked: a damaged file names itself and the line.

        torchvision assumes every file lists the same images in the same order (it indexes all of them
        with one mask), so the rows are also checked against ``list_eval_partition.txt``.
        """
        from torchvision.datasets.celeba import CSV

        path = Path(self.root) / self.base_folder / filename
        columns, values = _CELEBA_LAYOUT[filename]

        def bad(what: str) -> ValueError:
            return ValueError(f"CelebA label file '{path}' is damaged: {what}. {_REFETCH}")

        try:
            with open(path, encoding="utf-8", newline="") as f:
                rows = [[c for c in row if c] for row in csv.reader(f, delimiter=" ", skipinitialspace=True)]
        except UnicodeDecodeError:
            raise bad("it is not a text file") from None
        except csv.Error as e:
            raise bad(str(e)) from None
        first = 0 if header is None else header + 1
        if len(rows) < first:
            raise bad(f"it has {len(rows)} line(s), fewer than its {first} header line(s)")
        headers = rows[header] if header is not None else []
        body = rows[first:]
        if header is not None and columns is None:
            columns = len(headers)  # the attribute file: one column per attribute name
        if not body:
            raise bad("it lists no images")
        data = []
        for n, row in enumerate(body, start=first + 1):
            if len(row) != columns + 1:
                raise bad(f"line {n} has {len(row) - 1} value(s) after the file name, expected {columns}")
            try:
                ints = [int(v) for v in row[1:]]
            except ValueError:
                raise bad(f"line {n} holds a value that is not an integer: {' '.join(row)[:80]!r}") from None
            if values is not None and not set(ints) <= values:
                raise bad(f"line {n} holds {sorted(set(ints) - values)}; the values must be in {sorted(values)}")
            data.append(ints)
        names = [row[0] for row in body]
        if filename == "list_eval_partition.txt":
            self._names = names
        elif names != self._names:
            raise bad(
                f"it lists {len(names)} image(s) that differ from the {len(self._names)} of list_eval_partition.txt "
                f"(first difference: {next(((a, b) for a, b in zip(names, self._names) if a != b), 'the count')})"
            )
        return CSV(headers, names, torch.tensor(data, dtype=torch.long))

    def __getitem__(self, index: int):
        try:
            return super().__getitem__(index)
        except FileNotFoundError:
            raise
        except OSError as e:  # PIL's UnidentifiedImageError, a truncated JPEG
            path = Path(self.root) / self.base_folder / "img_align_celeba" / self.filename[index]
            msg = f"CelebA image '{path}' is not a readable image ({type(e).__name__}). {_REFETCH}"
            raise ValueError(msg) from None


# values after the file name: (count, allowed values); count None = one per header name
_CELEBA_LAYOUT: dict[str, tuple[int | None, set[int] | None]] = {
    "list_eval_partition.txt": (1, {0, 1, 2}),
    "identity_CelebA.txt": (1, None),
    "list_bbox_celeba.txt": (4, None),
    "list_landmarks_align_celeba.txt": (10, None),
    "list_attr_celeba.txt": (None, {-1, 1}),
}


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
    types = [target_type] if isinstance(target_type, str) else target_type
    valid_types = ("attr", "identity", "bbox", "landmarks")
    if not isinstance(types, list | tuple) or any(t not in valid_types for t in types):
        # torchvision would only complain on the first item read
        raise ValueError(f"target_type must be one of {valid_types} or a list of them, got {target_type!r}")
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
        target_type=list(types),
        transform=transform,
        download=download,
    )
