"""dSprites / 2D Shapes (Matthey et al., 2017): a procedural renderer and a loader for the official file.

The factor grid is exactly the official one, ``3 x 6 x 40 x 32 x 32 = 737,280`` combinations:

==============  ======  =====================================================
factor          values  value of class ``c``
==============  ======  =====================================================
``shape``       3       square, ellipse, heart
``scale``       6       ``linspace(0.5, 1, 6)[c]``
``orientation`` 40      ``2 pi c / 40`` radians, in ``[0, 2 pi)``
``pos_x``       32      ``linspace(0, 1, 32)[c]``
``pos_y``       32      ``linspace(0, 1, 32)[c]``
==============  ======  =====================================================

The official file's constant ``color`` factor is not a factor here (it takes one value, so it
carries no information and the metrics would divide by its zero entropy). The flat index of a factor
vector is the C-order (row-major) index over the table above, which is the row order of the official
``imgs`` array. The official file lists orientations as ``linspace(0, 2 pi, 40)`` (both ends
included); we use 40 equal steps in ``[0, 2 pi)`` as the specification asks, so a rendered
orientation class differs from the file's by at most ``2 pi / 1560`` radians.

Geometry of the renderer (pixel units, image ``64 x 64``, pixel ``(row, col)`` has its centre at
``(col + 0.5, row + 0.5)``):

- the shape's centre is at ``x = 64 (0.2 + 0.6 pos_x)`` and ``y = 64 (0.2 + 0.6 pos_y)``, so a
  margin of ``0.2`` of the image keeps every shape, at every scale and orientation, inside the image
  as in the official data; ``pos_y`` grows downwards (image rows);
- a shape at scale ``s`` is its unit shape magnified by ``9 s`` pixels; the unit square is
  ``[-1, 1]^2``, the ellipse has semi-axes ``1.3`` and ``0.7``, and the heart is the classical
  implicit curve ``(x^2 + y^2 - 1)^3 - x^2 y^3 <= 0`` centred on its bounding box. At scale 1 the square
  covers 324 pixels; the mean pixel intensity over the grid is about 0.04, close to the official 0.042;
- ``orientation`` rotates the shape counter-clockwise as displayed;
- a pixel is on when its centre lies inside the shape (binary images, no anti-aliasing).

Rendering is vectorised over the batch: each image evaluates an inside test on a ``30 x 30`` pixel
window around its centre (which always contains the shape) and scatters it into the image.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from pyro_decomp.data.ground_truth import GroundTruthDataset, RandomState, as_generator

__all__ = [
    "DSPRITES_FACTOR_NAMES",
    "DSPRITES_FACTOR_SIZES",
    "DSPRITES_SHAPES",
    "DSPRITES_OOD_SHAPES",
    "DSprites",
    "LazyImages",
    "PackedImages",
    "pack_bits",
    "render_dsprites",
    "unpack_bits",
    "flip_pixels",
    "invert_colours",
    "save_image_grid",
]

DSPRITES_FACTOR_NAMES: tuple[str, ...] = ("shape", "scale", "orientation", "pos_x", "pos_y")
DSPRITES_FACTOR_SIZES: tuple[int, ...] = (3, 6, 40, 32, 32)
DSPRITES_SHAPES: tuple[str, ...] = ("square", "ellipse", "heart")
# Shapes outside the training grid, for the thesis' robustness study; their ids follow the grid's.
DSPRITES_OOD_SHAPES: tuple[str, ...] = ("triangle",)
_ALL_SHAPES = DSPRITES_SHAPES + DSPRITES_OOD_SHAPES

SCALE_VALUES = np.linspace(0.5, 1.0, 6)
ORIENTATION_VALUES = 2.0 * np.pi * np.arange(40) / 40.0
POSITION_VALUES = np.linspace(0.0, 1.0, 32)

IMAGE_SIZE = 64
_MARGIN = 0.2  # fraction of the image between the extreme shape centres and the border
_BASE_RADIUS_PX = 9.0  # pixels per unit-shape length at scale 1
_ELLIPSE_AXES = (1.3, 0.7)
_HEART_Y_SHIFT = 0.12  # centres the implicit heart's bounding box, y in [-0.995, 1.235] -> +-1.115
_TRIANGLE_CIRCUMRADIUS = 1.4
_WINDOW = 30  # the largest unit shape reaches sqrt(2) units = 12.7 px from its centre; 30 > 2 * 12.7 + 2

_NPZ_HELP = (
    "Get dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz from https://github.com/deepmind/dsprites-dataset "
    "and pass its path, or use the procedural DSprites() (in a config: data.npz=null), which needs no file."
)


def _inside_unit_shape(shape_id: int, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Boolean mask of points ``(u, v)`` inside the unit shape ``shape_id`` (v points up)."""
    if shape_id == 0:  # square
        return torch.maximum(u.abs(), v.abs()) <= 1.0
    if shape_id == 1:  # ellipse, long axis along u
        a, b = _ELLIPSE_AXES
        return (u / a) ** 2 + (v / b) ** 2 <= 1.0
    if shape_id == 2:  # heart, (x^2 + y^2 - 1)^3 <= x^2 y^3
        y = v + _HEART_Y_SHIFT
        x2 = u * u
        return (x2 + y * y - 1.0) ** 3 <= x2 * y**3
    if shape_id == 3:  # equilateral triangle, apex up, centroid at the origin
        inradius = _TRIANGLE_CIRCUMRADIUS / 2.0
        c, s = math.cos(math.pi / 6), math.sin(math.pi / 6)
        return (-v <= inradius) & (c * u + s * v <= inradius) & (-c * u + s * v <= inradius)
    raise ValueError(f"unknown shape id {shape_id}; valid ids are 0..{len(_ALL_SHAPES) - 1} for {_ALL_SHAPES}")


def render_dsprites(
    shape: torch.Tensor | np.ndarray | Sequence[int],
    scale: torch.Tensor | np.ndarray | Sequence[float],
    orientation: torch.Tensor | np.ndarray | Sequence[float],
    pos_x: torch.Tensor | np.ndarray | Sequence[float],
    pos_y: torch.Tensor | np.ndarray | Sequence[float],
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    chunk_size: int = 512,
) -> torch.Tensor:
    """Render binary dSprites images from continuous factor values, vectorised over the batch.

    :param shape: ``[B]`` shape ids: 0 square, 1 ellipse, 2 heart, 3 triangle (out of distribution).
    :param scale: ``[B]`` scales (the grid uses 0.5..1).
    :param orientation: ``[B]`` angles in radians, counter-clockwise.
    :param pos_x: ``[B]`` horizontal positions in ``[0, 1]``.
    :param pos_y: ``[B]`` vertical positions in ``[0, 1]`` (downwards).
    :param chunk_size: images rendered per vectorised step (bounds memory).
    :returns: ``[B, 1, 64, 64]`` tensor of 0/1 values.

    >>> img = render_dsprites([0], [1.0], [0.0], [0.5], [0.5])
    >>> tuple(img.shape), int(img.sum())
    ((1, 1, 64, 64), 324)
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    device = torch.device(device) if device is not None else torch.device("cpu")
    shape_t = torch.as_tensor(np.asarray(shape) if not isinstance(shape, torch.Tensor) else shape)
    if shape_t.dtype.is_floating_point or shape_t.dtype == torch.bool:
        raise TypeError(f"shape must hold integer shape ids, got dtype {shape_t.dtype}")
    shape_t = shape_t.to(device=device, dtype=torch.long).reshape(-1)
    values = []
    for name, value in (("scale", scale), ("orientation", orientation), ("pos_x", pos_x), ("pos_y", pos_y)):
        t = torch.as_tensor(value, dtype=torch.float32, device=device).reshape(-1)
        if t.numel() != shape_t.numel():
            raise ValueError(f"{name} has {t.numel()} entries but shape has {shape_t.numel()}; pass one per image")
        if not torch.isfinite(t).all():
            raise ValueError(f"{name} must be finite")
        values.append(t)
    scale_t, orient_t, px_t, py_t = values
    if shape_t.numel() and (shape_t.min() < 0 or shape_t.max() >= len(_ALL_SHAPES)):
        raise ValueError(f"shape ids must lie in 0..{len(_ALL_SHAPES) - 1} ({_ALL_SHAPES})")
    if (scale_t <= 0).any() or (scale_t > 1.0).any():
        raise ValueError("scale must lie in (0, 1] so the shape stays inside its render window")
    if (px_t < 0).any() or (px_t > 1).any() or (py_t < 0).any() or (py_t > 1).any():
        raise ValueError("pos_x and pos_y must lie in [0, 1]")
    out = torch.zeros(shape_t.numel(), 1, IMAGE_SIZE, IMAGE_SIZE, device=device, dtype=dtype)
    for start in range(0, shape_t.numel(), chunk_size):
        sl = slice(start, start + chunk_size)
        out[sl] = _render_chunk(shape_t[sl], scale_t[sl], orient_t[sl], px_t[sl], py_t[sl]).to(dtype)
    return out


def _render_chunk(
    shape: torch.Tensor, scale: torch.Tensor, orientation: torch.Tensor, pos_x: torch.Tensor, pos_y: torch.Tensor
) -> torch.Tensor:
    """Render one chunk, ``[B] -> [B, 1, 64, 64]`` bool, by windowed inside tests."""
    batch, device = shape.numel(), shape.device
    span = IMAGE_SIZE * (1.0 - 2.0 * _MARGIN)
    cx = IMAGE_SIZE * _MARGIN + span * pos_x
    cy = IMAGE_SIZE * _MARGIN + span * pos_y
    offsets = torch.arange(_WINDOW, device=device)
    col0 = (cx.floor().long() - _WINDOW // 2).clamp(0, IMAGE_SIZE - _WINDOW)
    row0 = (cy.floor().long() - _WINDOW // 2).clamp(0, IMAGE_SIZE - _WINDOW)
    cols = col0[:, None] + offsets  # [B, W]
    rows = row0[:, None] + offsets  # [B, W]
    radius = _BASE_RADIUS_PX * scale
    dx = (cols + 0.5 - cx[:, None]) / radius[:, None]  # [B, W], rightwards
    dy = (cy[:, None] - rows - 0.5) / radius[:, None]  # [B, W], upwards as displayed
    cos, sin = orientation.cos()[:, None, None], orientation.sin()[:, None, None]
    # Rotating the shape by +theta is rotating the pixel grid by -theta into the shape's frame.
    u = cos * dx[:, None, :] + sin * dy[:, :, None]  # [B, W(row), W(col)]
    v = -sin * dx[:, None, :] + cos * dy[:, :, None]
    inside = torch.zeros(batch, _WINDOW, _WINDOW, dtype=torch.bool, device=device)
    for shape_id in range(len(_ALL_SHAPES)):
        idx = (shape == shape_id).nonzero(as_tuple=True)[0]
        if idx.numel() == batch:
            inside = _inside_unit_shape(shape_id, u, v)
        elif idx.numel():
            inside[idx] = _inside_unit_shape(shape_id, u[idx], v[idx])
    flat = (rows[:, :, None] * IMAGE_SIZE + cols[:, None, :]).reshape(batch, -1)
    image = torch.zeros(batch, IMAGE_SIZE * IMAGE_SIZE, dtype=torch.bool, device=device)
    image.scatter_(1, flat, inside.reshape(batch, -1))
    return image.reshape(batch, 1, IMAGE_SIZE, IMAGE_SIZE)


# ---------------------------------------------------------------------------------------------- compact storage
_BIT_WEIGHTS = (128, 64, 32, 16, 8, 4, 2, 1)  # np.packbits' default (big) bit order: first pixel in the top bit


def pack_bits(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Bit-pack binary ``images [n, ...]`` to ``[n, P / 8]`` ``uint8``, 8 pixels a byte, where ``P`` is the
    number of pixels per image (a multiple of 8). Same layout as ``np.packbits(images.reshape(n, -1), axis=1)``,
    computed with torch on the images' device.

    >>> pack_bits(torch.tensor([[1, 0, 0, 0, 0, 0, 0, 1]])).tolist()
    [[129]]
    """
    images = torch.as_tensor(images)
    if images.dim() < 2:
        raise ValueError(f"images must have shape [n, ...] (one row per image), got {tuple(images.shape)}")
    n = images.shape[0]
    flat = images.reshape(n, -1)
    if flat.shape[1] % 8:
        raise ValueError(f"each image needs a multiple of 8 pixels to be bit-packed, got {flat.shape[1]}")
    if flat.dtype != torch.bool:
        if not bool(((flat == 0) | (flat == 1)).all()):
            raise ValueError("pack_bits needs binary images (every pixel 0 or 1)")
        flat = flat != 0
    weights = torch.tensor(_BIT_WEIGHTS, dtype=torch.uint8, device=flat.device)
    return (flat.reshape(n, -1, 8).to(torch.uint8) * weights).sum(-1, dtype=torch.uint8)


@functools.lru_cache(maxsize=8)
def _byte_bits(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``[256, 8]``: the bits of each byte value, most significant first (np.packbits' order)."""
    values = torch.arange(256, device=device)[:, None]
    return ((values >> torch.arange(7, -1, -1, device=device)) & 1).to(dtype)


def unpack_bits(
    packed: torch.Tensor, image_shape: Sequence[int], dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: ``[n, P / 8]`` ``uint8`` to ``[n, *image_shape]`` of 0/1 in ``dtype``."""
    if dtype.is_floating_point:
        # one gather from a 256 x 8 table of each byte's bits: about twice as fast as shifting and masking
        table = _byte_bits(packed.device, dtype)
        return torch.nn.functional.embedding(packed.long(), table).reshape(packed.shape[0], *image_shape)
    shifts = torch.arange(7, -1, -1, dtype=torch.uint8, device=packed.device)
    bits = (packed.unsqueeze(-1) >> shifts) & 1
    return bits.reshape(packed.shape[0], *image_shape).to(dtype)


class PackedImages:
    """Binary images ``[n, *image_shape]`` held bit-packed (8 pixels a byte, :func:`pack_bits`) and turned into
    ``float32`` only for the rows asked for: indexing returns a float tensor, as indexing the float tensor
    of all the images would, at 1/32 of its memory (the 737,280 dSprites images: 377 MB instead of 12 GB).

    It offers the part of the tensor interface the :class:`~pyro_decomp.train.Trainer` and the evaluation
    use: ``shape``, ``len``, ``dim()``, ``to(device)``, ``split(size)`` and ``[index]``.

    :param packed: ``[n, prod(image_shape) / 8]`` ``uint8`` tensor from :func:`pack_bits`.
    :param image_shape: the shape of one image, e.g. ``(1, 64, 64)``.

    >>> images = torch.tensor([[[[0.0, 1.0] * 4] * 8]])  # [1, 1, 8, 8]
    >>> packed = PackedImages(pack_bits(images), (1, 8, 8))
    >>> packed.nbytes, torch.equal(packed[0:1], images)
    (8, True)
    """

    def __init__(self, packed: torch.Tensor, image_shape: Sequence[int]) -> None:
        if not isinstance(packed, torch.Tensor) or packed.dtype != torch.uint8 or packed.dim() != 2:
            raise TypeError("packed must be a 2-D uint8 tensor from pack_bits")
        self.image_shape = tuple(int(s) for s in image_shape)
        if packed.shape[1] * 8 != math.prod(self.image_shape):
            raise ValueError(
                f"packed rows hold {packed.shape[1] * 8} pixels but image_shape {self.image_shape} has "
                f"{math.prod(self.image_shape)}"
            )
        self.packed = packed

    @classmethod
    def from_images(cls, images: torch.Tensor | np.ndarray) -> PackedImages:
        """Pack binary ``images [n, ...]``."""
        images = torch.as_tensor(images)
        return cls(pack_bits(images), tuple(images.shape[1:]))

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.packed.shape[0], *self.image_shape))

    @property
    def device(self) -> torch.device:
        return self.packed.device

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32  # what indexing returns

    @property
    def nbytes(self) -> int:
        """Bytes held (the packed array)."""
        return self.packed.numel() * self.packed.element_size()

    def __len__(self) -> int:
        return int(self.packed.shape[0])

    def dim(self) -> int:
        return 1 + len(self.image_shape)

    def __getitem__(self, index: object) -> torch.Tensor:
        rows = self.packed[index]
        if rows.dim() == 1:  # a single image
            return unpack_bits(rows[None], self.image_shape)[0]
        return unpack_bits(rows, self.image_shape)

    def unpack(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """All the images as one ``dtype`` tensor (``32 x nbytes`` for float32)."""
        return unpack_bits(self.packed, self.image_shape, dtype)

    def to(self, device: torch.device | str | None = None) -> PackedImages:
        """The same images on ``device`` (still packed)."""
        return PackedImages(self.packed.to(device), self.image_shape)

    def split(self, size: int):
        """Float chunks of ``size`` images, like :meth:`torch.Tensor.split`."""
        return (self[i : i + size] for i in range(0, len(self), size))

    def __repr__(self) -> str:
        return f"PackedImages(shape={tuple(self.shape)}, nbytes={self.nbytes}, device={self.device})"


class LazyImages:
    """Images ``[n, *image_shape]`` made only when asked for: ``loader(rows)`` returns the float images of
    ``rows`` (``int64 [k]``, positions ``0..n-1``). A reloaded run's training images are this, so evaluating
    it renders only the images it evaluates. Same interface as :class:`PackedImages`."""

    def __init__(self, loader, num: int, image_shape: Sequence[int]) -> None:
        self._loader = loader
        self._num = int(num)
        self.image_shape = tuple(int(s) for s in image_shape)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self._num, *self.image_shape))

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def __len__(self) -> int:
        return self._num

    def dim(self) -> int:
        return 1 + len(self.image_shape)

    def __getitem__(self, index: object) -> torch.Tensor:
        if isinstance(index, torch.Tensor):
            index = index.cpu().numpy()
        rows = np.arange(self._num)[index]
        if np.ndim(rows) == 0:
            return self._loader(np.asarray([rows]))[0]
        return self._loader(np.asarray(rows, dtype=np.int64))

    def split(self, size: int):
        return (self[i : i + size] for i in range(0, len(self), size))

    def __repr__(self) -> str:
        return f"LazyImages(shape={tuple(self.shape)})"


def flip_pixels(images: torch.Tensor, probability: float, random_state: RandomState | torch.Generator) -> torch.Tensor:
    """Pixel-flip noise: each pixel of binary ``images`` is flipped (0 <-> 1) with ``probability``.

    :param images: binary images, any shape, values in {0, 1}.
    :param probability: flip probability in ``[0, 1]``.
    :param random_state: int seed, :class:`numpy.random.Generator` or :class:`torch.Generator`.
    :returns: a new tensor of the same shape and dtype.
    """
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if not 0.0 <= float(probability) <= 1.0:
        raise ValueError(f"probability must lie in [0, 1], got {probability}")
    if isinstance(random_state, torch.Generator):
        generator = random_state
    else:
        generator = torch.Generator(device=images.device)
        generator.manual_seed(int(as_generator(random_state).integers(0, 2**62)))
    noise = torch.rand(images.shape, generator=generator, device=images.device) < probability
    return torch.where(noise, 1 - images, images)


def invert_colours(images: torch.Tensor) -> torch.Tensor:
    """Colour inversion of images in ``[0, 1]``: ``1 - images`` (white background, black shape)."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    return 1 - images


def save_image_grid(
    images: torch.Tensor | np.ndarray,
    path: str | os.PathLike,
    *,
    ncols: int = 8,
    titles: Sequence[str] | None = None,
    dpi: int = 100,
) -> Path:
    """Save a grid of images ``[N, 1, H, W]`` (or ``[N, H, W]``, or ``[N, 3, H, W]``) as a PNG.

    Uses matplotlib's Agg canvas directly, so it never opens a window.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    arr = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if arr.ndim == 4 and arr.shape[1] in (1, 3):
        arr = arr[:, 0] if arr.shape[1] == 1 else arr.transpose(0, 2, 3, 1)
    if arr.ndim not in (3, 4) or arr.shape[0] == 0:
        raise ValueError(f"images must have shape [N, 1, H, W], [N, 3, H, W] or [N, H, W], got {arr.shape}")
    if titles is not None and len(titles) != arr.shape[0]:
        raise ValueError(f"titles needs one entry per image ({arr.shape[0]}), got {len(titles)}")
    n = arr.shape[0]
    ncols = max(1, min(int(ncols), n))
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(1.2 * ncols, 1.3 * nrows))
    FigureCanvasAgg(fig)
    for i in range(nrows * ncols):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        ax.set_axis_off()
        if i < n:
            ax.imshow(arr[i], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
            if titles is not None:
                ax.set_title(titles[i], fontsize=6)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


def _check_image_shape(shape: tuple[int, ...], path: Path) -> None:
    if len(shape) != 3 or tuple(shape[1:]) != (IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(f"'imgs' in {path} must have shape [N, 64, 64] (64 x 64 binary images), got {list(shape)}")


def _read_packed_imgs(archive: np.lib.npyio.NpzFile, path: Path, chunk_images: int = 16384) -> np.ndarray | None:
    """``imgs`` of the archive bit-packed, ``[N, 512]`` ``uint8``, read ``chunk_images`` images at a time so the
    file's images never exist whole in memory (3 GB as uint8 for the full grid, which is stored compressed).
    ``None`` when the member is not a plain C-order ``.npy`` (then it is read whole, as before)."""
    fmt = np.lib.format
    with archive.zip.open("imgs.npy") as f:
        version = fmt.read_magic(f)
        if version == (1, 0):
            shape, fortran_order, dtype = fmt.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran_order, dtype = fmt.read_array_header_2_0(f)
        else:
            return None
        if dtype.hasobject or fortran_order:
            return None  # the whole-array path names object arrays; Fortran order is rare
        _check_image_shape(shape, path)
        pixels = IMAGE_SIZE * IMAGE_SIZE
        packed = np.empty((shape[0], pixels // 8), dtype=np.uint8)
        for start in range(0, shape[0], chunk_images):
            count = min(chunk_images, shape[0] - start)
            data = f.read(count * pixels * dtype.itemsize)
            if len(data) != count * pixels * dtype.itemsize:
                raise EOFError("the images end early")
            chunk = np.frombuffer(data, dtype=dtype).reshape(count, pixels)
            packed[start : start + count] = np.packbits(_binary_images(chunk, path), axis=1)
        f.read()  # to the end of the member, so zipfile checks its CRC
    return packed


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``imgs`` (bit-packed, ``[N, 512]`` ``uint8``; see :func:`_read_packed_imgs`) and ``latents_classes`` of
    ``path``; any unreadable file is a ``ValueError`` naming it."""
    import zipfile
    import zlib

    if not zipfile.is_zipfile(path):  # np.load would try it as a pickle and suggest allow_pickle=True
        raise ValueError(
            f"{str(path)!r} is not an .npz archive (a truncated download or another file type); "
            f"download it again. {_NPZ_HELP}"
        )
    arrays = {}
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = {"imgs", "latents_classes"} - set(archive.files)
            if missing:
                raise ValueError(
                    f"{path} lacks the key(s) {sorted(missing)} (it has {sorted(archive.files)}); expected the "
                    f"official dSprites layout with 'imgs' and 'latents_classes'. {_NPZ_HELP}"
                )
            for key in ("imgs", "latents_classes"):
                try:
                    if key == "imgs":
                        packed = _read_packed_imgs(archive, path)
                        if packed is not None:
                            arrays[key] = packed
                            continue
                    arrays[key] = np.asarray(archive[key])
                    if key == "imgs":
                        _check_image_shape(arrays[key].shape, path)
                        images = _binary_images(arrays[key], path)
                        arrays[key] = np.packbits(images.reshape(images.shape[0], -1), axis=1)
                except ValueError as e:
                    if "allow_pickle" not in str(e):
                        raise
                    raise ValueError(
                        f"{key!r} in {path} is an object (pickled) array, which is never loaded "
                        f"(allow_pickle=False, for safety); save it as a numeric array, e.g. "
                        f"np.savez(path, imgs=imgs.astype(np.uint8), "
                        f"latents_classes=classes.astype(np.int64))."
                    ) from None
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
        raise ValueError(
            f"{str(path)!r} is damaged ({type(e).__name__}: {e}); download it again. {_NPZ_HELP}"
        ) from None
    except ValueError as e:
        if str(path) in str(e):
            raise
        raise ValueError(f"{str(path)!r} is damaged ({e}); download it again. {_NPZ_HELP}") from None
    return arrays["imgs"], arrays["latents_classes"]


def _binary_images(images: np.ndarray, path: Path) -> np.ndarray:
    """``images`` as ``uint8`` in {0, 1}; other values (e.g. 0/255 images) are an error naming the fix."""
    if images.dtype == np.uint8:
        top = int(images.max())
        if top <= 1:
            return images
        bad = top
    elif images.dtype == np.bool_ or images.dtype.kind in "iuf":  # bool, integers, floats
        binary = (images == 0) | (images == 1)
        if binary.all():
            return images.astype(np.uint8)
        bad = images[~binary].flat[0]
    else:
        raise ValueError(f"'imgs' in {path} has dtype {images.dtype}; expected uint8 images in {{0, 1}}.")
    hint = " (0/255 images: save imgs // 255)" if bad == 255 else ""
    raise ValueError(
        f"'imgs' in {path} must hold binary pixels 0 or 1 (the official dSprites format), found {bad}{hint}."
    )


class DSprites(GroundTruthDataset, torch.utils.data.Dataset):
    """dSprites as a ground-truth dataset and a torch ``Dataset``, rendered on demand.

    ``DSprites()`` renders procedurally (see the module docstring for the geometry);
    :meth:`from_npz` serves the official file's images instead. Items are
    ``(image [1, 64, 64] float in {0, 1}, factors [5] long)``.

    Memory: ``DSprites()`` holds no images; :meth:`from_npz` holds the file's images bit-packed (512 bytes
    an image, 377 MB for the full grid). :meth:`packed_rows` renders a training set once into a
    :class:`PackedImages`, which gives float32 images one minibatch at a time.

    :param device: device the rendered images are created on.

    >>> data = DSprites()
    >>> len(data), data.factor_sizes
    (737280, (3, 6, 40, 32, 32))
    >>> image, factors = data[0]
    >>> tuple(image.shape), factors.tolist()
    ((1, 64, 64), [0, 0, 0, 0, 0])
    """

    def __init__(self, *, device: torch.device | str | None = None) -> None:
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        # [N, 512] uint8, 8 pixels a byte (np.packbits of the flattened 64 x 64 image), when backed by the file
        self._packed: np.ndarray | None = None
        self._classes: np.ndarray | None = None  # [N, 5] factor classes of the file's rows
        self._row_of_index: np.ndarray | None = None  # [737280] row of each flat index, -1 when absent

    # ---- ground-truth protocol -------------------------------------------------------------
    @property
    def factor_sizes(self) -> tuple[int, ...]:
        return DSPRITES_FACTOR_SIZES

    @property
    def factor_names(self) -> tuple[str, ...]:
        return DSPRITES_FACTOR_NAMES

    @property
    def observation_shape(self) -> tuple[int, ...]:
        return (1, IMAGE_SIZE, IMAGE_SIZE)

    @property
    def factor_value_names(self) -> dict[str, tuple[str, ...]]:
        """Names of the categorical factors' values (for labelling figures)."""
        return {"shape": ("square", "ellipse", "heart")}

    def sample_observations_from_factors(self, factors: np.ndarray, random_state: RandomState = None) -> torch.Tensor:
        """Images ``[num, 1, 64, 64]`` for integer ``factors [num, 5]`` (rendering is deterministic,
        so ``random_state`` is unused)."""
        factors = self.validate_factors(factors)
        if self._packed is not None:
            rows = self._row_of_index[self.factors_to_index(factors)]
            if np.any(rows < 0):
                missing = factors[rows < 0][0].tolist()
                raise ValueError(f"the .npz file holds no image for factors {missing}; it is not the full grid")
            return self._file_images(rows)
        return self.render_factors(factors)

    def _file_images(self, rows: np.ndarray) -> torch.Tensor:
        """Float images ``[k, 1, 64, 64]`` of the file's ``rows``, unpacked from the bit-packed store."""
        packed = torch.from_numpy(self._packed[np.asarray(rows, dtype=np.int64)])
        return unpack_bits(packed, self.observation_shape).to(self.device)

    # ---- rows (file rows for the official file, flat grid indices for the renderer) ---------
    def _check_rows(self, rows: np.ndarray | Sequence[int]) -> np.ndarray:
        rows = np.atleast_1d(np.asarray(rows))
        if rows.ndim != 1 or not (rows.size == 0 or np.issubdtype(rows.dtype, np.integer)):
            raise TypeError(f"rows must be a 1-D array of integers, got shape {rows.shape} dtype {rows.dtype}")
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise ValueError(f"rows must lie in [0, {len(self)})")
        return rows.astype(np.int64)

    def factors_of_rows(self, rows: np.ndarray | Sequence[int]) -> np.ndarray:
        """Integer factors ``[k, 5]`` of dataset rows (``__getitem__`` order)."""
        rows = self._check_rows(rows)
        return self._classes[rows].copy() if self._packed is not None else self.index_to_factors(rows)

    def images_of_rows(self, rows: np.ndarray | Sequence[int]) -> torch.Tensor:
        """Float images ``[k, 1, 64, 64]`` of dataset rows: rendered, or unpacked from the file's images."""
        rows = self._check_rows(rows)
        if self._packed is not None:
            return self._file_images(rows)
        return self.render_factors(self.index_to_factors(rows) if rows.size else np.zeros((0, 5), np.int64))

    def packed_rows(self, rows: np.ndarray | Sequence[int], *, chunk_size: int = 8192) -> PackedImages:
        """The images of dataset rows, bit-packed (:class:`PackedImages`, 512 bytes an image): rendered
        ``chunk_size`` at a time and packed, so the float images of only one chunk exist at once."""
        rows = self._check_rows(rows)
        if self._packed is not None:
            packed = torch.from_numpy(self._packed[rows])
        else:
            packed = torch.empty(rows.size, IMAGE_SIZE * IMAGE_SIZE // 8, dtype=torch.uint8)
            for start in range(0, rows.size, chunk_size):
                factors = self.index_to_factors(rows[start : start + chunk_size])
                values = self.factor_values(factors)
                chunk = render_dsprites(
                    values["shape"], values["scale"], values["orientation"], values["pos_x"], values["pos_y"],
                    device=self.device, dtype=torch.bool,
                )  # fmt: skip
                packed[start : start + chunk_size] = pack_bits(chunk).cpu()
        return PackedImages(packed.to(self.device), self.observation_shape)

    # ---- conversions -----------------------------------------------------------------------
    @staticmethod
    def factors_to_index(factors: np.ndarray) -> np.ndarray:
        """Flat C-order index ``[num]`` of integer ``factors [num, 5]`` (the official row order)."""
        factors = np.asarray(factors)
        if factors.ndim != 2 or factors.shape[1] != len(DSPRITES_FACTOR_SIZES):
            raise ValueError(f"factors must have shape [num, 5], got {factors.shape}")
        return np.ravel_multi_index(tuple(factors.T.astype(np.int64)), DSPRITES_FACTOR_SIZES)

    @staticmethod
    def index_to_factors(index: np.ndarray | int) -> np.ndarray:
        """Integer factors ``[num, 5]`` of flat indices ``[num]`` (inverse of :meth:`factors_to_index`)."""
        index = np.atleast_1d(np.asarray(index))
        if not np.issubdtype(index.dtype, np.integer):
            raise TypeError(f"index must hold integers, got dtype {index.dtype}")
        total = int(np.prod(DSPRITES_FACTOR_SIZES))
        if np.any(index < 0) or np.any(index >= total):
            raise ValueError(f"index must lie in [0, {total})")
        return np.stack(np.unravel_index(index, DSPRITES_FACTOR_SIZES), axis=-1).astype(np.int64)

    @staticmethod
    def factor_values(factors: np.ndarray) -> dict[str, np.ndarray]:
        """Continuous values of integer ``factors [num, 5]``: shape id, scale, orientation (rad), x, y."""
        factors = np.asarray(factors, dtype=np.int64)
        return {
            "shape": factors[:, 0],
            "scale": SCALE_VALUES[factors[:, 1]],
            "orientation": ORIENTATION_VALUES[factors[:, 2]],
            "pos_x": POSITION_VALUES[factors[:, 3]],
            "pos_y": POSITION_VALUES[factors[:, 4]],
        }

    def render_factors(self, factors: np.ndarray, *, shape_override: str | None = None) -> torch.Tensor:
        """Render integer ``factors [num, 5]`` to ``[num, 1, 64, 64]``.

        :param shape_override: render every image with this shape instead (e.g. ``"triangle"``,
            the out-of-distribution shape), keeping the other factors.
        """
        factors = self.validate_factors(factors)
        values = self.factor_values(factors)
        shape = values["shape"]
        if shape_override is not None:
            if shape_override not in _ALL_SHAPES:
                raise ValueError(f"shape_override must be one of {_ALL_SHAPES}, got {shape_override!r}")
            shape = np.full_like(shape, _ALL_SHAPES.index(shape_override))
        return render_dsprites(
            shape, values["scale"], values["orientation"], values["pos_x"], values["pos_y"], device=self.device
        )

    def images_from_indices(self, indices: np.ndarray | Sequence[int]) -> torch.Tensor:
        """Images ``[num, 1, 64, 64]`` of flat indices ``[num]``."""
        return self.sample_observations_from_factors(self.index_to_factors(np.asarray(indices)))

    # ---- torch Dataset ---------------------------------------------------------------------
    def __len__(self) -> int:
        return int(np.prod(DSPRITES_FACTOR_SIZES)) if self._packed is None else int(self._packed.shape[0])

    def __getitem__(self, item: int) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(item, torch.Tensor):
            item = int(item)
        if isinstance(item, bool) or not isinstance(item, (int, np.integer)):
            raise TypeError(f"index must be an int, got {type(item).__name__}")
        n = len(self)
        if not -n <= item < n:
            raise IndexError(f"index {item} out of range for {n} images")
        item = int(item) % n
        if self._packed is not None:
            factors = self._classes[item : item + 1]
            image = self._file_images(np.array([item]))[0]
        else:
            factors = self.index_to_factors(item)
            image = self.render_factors(factors)[0]
        return image, torch.from_numpy(factors[0].copy())

    # ---- official file ---------------------------------------------------------------------
    @classmethod
    def from_npz(cls, path: str | os.PathLike, *, device: torch.device | str | None = None) -> DSprites:
        """Load the official ``dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz``.

        Reads only the ``imgs [N, 64, 64]`` and ``latents_classes [N, 6]`` arrays (``np.load`` with
        ``allow_pickle=False``; the pickled ``metadata`` entry is never read). The first (colour)
        column of ``latents_classes`` must be constant and is dropped. A file with a subset of the
        grid is accepted; asking it for an absent combination raises ``ValueError``.

        :raises FileNotFoundError: when ``path`` does not exist, with where to get the file.
        """
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a path to the dSprites .npz (str or os.PathLike), got {type(path).__name__}")
        path = Path(path).expanduser()
        if path.is_dir():
            raise ValueError(f"{str(path)!r} is a directory; pass the dSprites .npz file itself. {_NPZ_HELP}")
        if not path.is_file():
            raise FileNotFoundError(f"dSprites file not found at {str(path)!r}. {_NPZ_HELP}")
        packed, classes = _read_npz(path)  # images bit-packed, 512 bytes each (377 MB for the full grid)
        if packed.shape[0] == 0:
            raise ValueError(f"'imgs' in {path} holds no images. {_NPZ_HELP}")
        if classes.shape != (packed.shape[0], 6):
            raise ValueError(
                f"'latents_classes' in {path} must have shape [N, 6] = {[packed.shape[0], 6]} (colour, shape, scale, "
                f"orientation, pos_x, pos_y per image), got {list(classes.shape)}"
            )
        dataset = cls(device=device)
        # column 0 is the constant colour factor: its only class is 0
        classes = dataset.validate_factors(
            classes, name=f"'latents_classes' in {path}", sizes=(1, *DSPRITES_FACTOR_SIZES)
        )
        factors = classes[:, 1:]
        flat = dataset.factors_to_index(factors)
        if np.unique(flat).size != flat.size:
            raise ValueError(f"'latents_classes' in {path} lists a factor combination twice")
        row_of_index = np.full(int(np.prod(DSPRITES_FACTOR_SIZES)), -1, dtype=np.int64)
        row_of_index[flat] = np.arange(flat.size)
        dataset._packed = packed
        dataset._classes = factors
        dataset._row_of_index = row_of_index
        return dataset

    def save_samples(
        self, path: str | os.PathLike, *, num: int = 32, random_state: RandomState = 0, ncols: int = 8
    ) -> Path:
        """Save a PNG grid of ``num`` random images titled with their factors, for checking by eye."""
        factors, images = self.sample(num, as_generator(random_state))
        titles = [f"{DSPRITES_SHAPES[f[0]]} s{f[1]} o{f[2]}\nx{f[3]} y{f[4]}" for f in factors.tolist()]
        return save_image_grid(images, path, ncols=ncols, titles=titles)
