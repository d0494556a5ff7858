"""dSprites: the factor grid, index conversions, rendering semantics, the .npz loader and the extras."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pyro_decomp.data.dsprites import (
    DSPRITES_FACTOR_SIZES,
    DSprites,
    flip_pixels,
    invert_colours,
    render_dsprites,
    save_image_grid,
)

DATA = DSprites()
SHAPE_IDS = {"square": 0, "ellipse": 1, "heart": 2}


def grid_factors(**fixed: int) -> np.ndarray:
    """Factor rows that vary the one factor not in ``fixed`` over all its values."""
    names = ("shape", "scale", "orientation", "pos_x", "pos_y")
    (free,) = [i for i, n in enumerate(names) if n not in fixed]
    rows = np.zeros((DSPRITES_FACTOR_SIZES[free], 5), dtype=np.int64)
    for i, n in enumerate(names):
        rows[:, i] = np.arange(DSPRITES_FACTOR_SIZES[free]) if i == free else fixed[n]
    return rows


def centroid(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(column, row) centroids of ``[N, 1, H, W]`` images, in pixel-centre coordinates."""
    grid = torch.arange(images.shape[-1], dtype=torch.float64) + 0.5
    mass = images.double().sum((1, 2, 3))
    cols = (images.double().sum((1, 2)) * grid).sum(-1) / mass
    rows = (images.double().sum((1, 3)) * grid).sum(-1) / mass
    return cols, rows


def test_grid_has_737280_combinations():
    assert DATA.factor_sizes == (3, 6, 40, 32, 32)
    assert len(DATA) == 3 * 6 * 40 * 32 * 32 == 737_280
    assert DATA.num_factors == 5 and DATA.observation_shape == (1, 64, 64)


def test_index_factor_round_trip():
    rng = np.random.default_rng(0)
    index = rng.integers(0, len(DATA), 5000)
    np.testing.assert_array_equal(DATA.factors_to_index(DATA.index_to_factors(index)), index)
    # C order of the official file: pos_y varies fastest, shape slowest.
    np.testing.assert_array_equal(
        DATA.index_to_factors([0, 1, 32, 737_279]),
        [[0, 0, 0, 0, 0], [0, 0, 0, 0, 1], [0, 0, 0, 1, 0], [2, 5, 39, 31, 31]],
    )


@pytest.mark.parametrize("shape", list(SHAPE_IDS), ids=list(SHAPE_IDS))
def test_area_grows_with_scale(shape):
    images = DATA.render_factors(grid_factors(shape=SHAPE_IDS[shape], orientation=0, pos_x=16, pos_y=16))
    area = images.sum((1, 2, 3))
    assert torch.all(area[1:] > area[:-1])
    # Area scales like scale^2: from scale 0.5 to 1 it grows about 4x (pixelisation: +-15%).
    assert 3.4 < (area[-1] / area[0]).item() < 4.6


@pytest.mark.parametrize("shape", list(SHAPE_IDS), ids=list(SHAPE_IDS))
def test_centroid_follows_pos_x(shape):
    images = DATA.render_factors(grid_factors(shape=SHAPE_IDS[shape], scale=3, orientation=7, pos_y=10))
    cols, rows = centroid(images)
    # Centre at 64 * (0.2 + 0.6 * pos_x): 38.4 / 31 = 1.239 px per class; the shape's centroid is
    # offset from its centre by a constant, so the slope is exact up to pixelisation (0.05 px/class).
    slope = np.polyfit(np.arange(32), cols.numpy(), 1)[0]
    assert slope == pytest.approx(38.4 / 31, abs=0.05)
    assert torch.all(cols[1:] > cols[:-1] - 0.3)  # monotone up to sub-pixel jitter
    assert rows.std() < 0.3  # the row does not move with pos_x


@pytest.mark.parametrize("shape", list(SHAPE_IDS), ids=list(SHAPE_IDS))
def test_centroid_follows_pos_y(shape):
    images = DATA.render_factors(grid_factors(shape=SHAPE_IDS[shape], scale=3, orientation=7, pos_x=20))
    cols, rows = centroid(images)
    slope = np.polyfit(np.arange(32), rows.numpy(), 1)[0]
    assert slope == pytest.approx(38.4 / 31, abs=0.05)  # pos_y grows downwards (image rows)
    assert cols.std() < 0.3


def test_square_centre_closed_form():
    # Unit square magnified by 9 px at scale 1: side 18 px centred on a pixel corner at (32, 32) -> 324 pixels.
    image = render_dsprites([0], [1.0], [0.0], [0.5], [0.5])[0, 0]
    assert image.sum().item() == 324
    rows, cols = torch.nonzero(image, as_tuple=True)
    assert (rows.min().item(), rows.max().item(), cols.min().item(), cols.max().item()) == (23, 40, 23, 40)


def test_images_are_binary_and_stay_inside():
    # Largest scale at the four corners and many orientations: no pixel of the shape falls off the
    # image, i.e. the count equals an unclipped render on a canvas padded by 16 pixels on every side.
    rows = [(s, 5, o, x, y) for s in range(3) for o in range(0, 40, 5) for x in (0, 31) for y in (0, 31)]
    images = DATA.render_factors(np.array(rows))
    assert set(images.unique().tolist()) <= {0.0, 1.0}
    values = DSprites.factor_values(np.array(rows))
    unclipped = [
        full_grid_reference(*args, pad=16).sum()
        for args in zip(*(values[k] for k in ("shape", "scale", "orientation", "pos_x", "pos_y")), strict=True)
    ]
    np.testing.assert_allclose(images.sum((1, 2, 3)).numpy(), unclipped, atol=2)


def test_mean_intensity_close_to_official():
    # The official dSprites mean pixel value is about 0.042; ours is designed to be close (+-0.01).
    _, images = DATA.sample(3000, random_state=0)
    assert images.mean().item() == pytest.approx(0.042, abs=0.01)


def full_grid_reference(shape_id, scale, theta, pos_x, pos_y, pad=0):
    """Independent per-image render on the whole 64 x 64 grid (no window), for the vectorised path;
    ``pad`` extends the canvas on every side."""
    centre_x, centre_y = 64 * (0.2 + 0.6 * pos_x), 64 * (0.2 + 0.6 * pos_y)
    px = np.arange(-pad, 64 + pad) + 0.5
    dx = (px[None, :] - centre_x) / (9 * scale)
    dy = (centre_y - px[:, None]) / (9 * scale)
    u = math.cos(theta) * dx + math.sin(theta) * dy
    v = -math.sin(theta) * dx + math.cos(theta) * dy
    if shape_id == 0:
        return np.maximum(abs(u), abs(v)) <= 1
    if shape_id == 1:
        return (u / 1.3) ** 2 + (v / 0.7) ** 2 <= 1
    if shape_id == 2:
        y = v + 0.12
        return (u**2 + y**2 - 1) ** 3 <= u**2 * y**3
    c, s = math.cos(math.pi / 6), math.sin(math.pi / 6)
    return (-v <= 0.7) & (c * u + s * v <= 0.7) & (-c * u + s * v <= 0.7)


def test_windowed_render_matches_full_grid_reference():
    rng = np.random.default_rng(1)
    n = 64
    shape = rng.integers(0, 4, n)
    scale, theta = rng.uniform(0.5, 1.0, n), rng.uniform(0, 2 * np.pi, n)
    pos_x, pos_y = rng.uniform(0, 1, n), rng.uniform(0, 1, n)
    images = render_dsprites(shape, scale, theta, pos_x, pos_y, chunk_size=16).numpy()[:, 0]
    expected = np.stack([full_grid_reference(*args) for args in zip(shape, scale, theta, pos_x, pos_y, strict=True)])
    # float32 vs float64 can flip a pixel whose centre lies on the boundary: allow 2 per image.
    assert np.abs(images - expected).sum(axis=(1, 2)).max() <= 2


def test_heart_is_mirror_symmetric_and_not_an_ellipse():
    heart = render_dsprites([2], [1.0], [0.0], [0.5], [0.5])[0, 0]
    torch.testing.assert_close(heart, heart.flip(-1))  # centre on a pixel corner: left-right mirror
    ellipse = render_dsprites([1], [1.0], [math.pi / 2], [0.5], [0.5])[0, 0]
    assert (heart != ellipse).sum() > 40
    # Two lobes on top: the top row of the heart has a gap in the middle.
    top = torch.nonzero(heart.any(1))[0].item()
    assert heart[top, 31:33].sum() == 0


def test_dataset_item_matches_render():
    image, factors = DATA[123_456]
    assert image.shape == (1, 64, 64) and image.dtype == torch.float32
    torch.testing.assert_close(image, DATA.render_factors(factors[None].numpy())[0])
    np.testing.assert_array_equal(factors.numpy(), DATA.index_to_factors(123_456)[0])
    last, _ = DATA[-1]
    torch.testing.assert_close(last, DATA[len(DATA) - 1][0])
    with pytest.raises(IndexError, match="out of range"):
        DATA[len(DATA)]


def test_dataloader_batches():
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(DATA, range(10)), batch_size=5)
    images, factors = next(iter(loader))
    assert images.shape == (5, 1, 64, 64) and factors.shape == (5, 5)


def test_rotation_is_a_rotation():
    # A quarter turn of the square is the same square; an eighth turn is a diamond of equal area (pixelisation +-5%).
    base = render_dsprites([0], [1.0], [0.0], [0.5], [0.5])
    torch.testing.assert_close(render_dsprites([0], [1.0], [math.pi / 2], [0.5], [0.5]), base)
    diamond = render_dsprites([0], [1.0], [math.pi / 4], [0.5], [0.5])
    assert abs(diamond.sum() / base.sum() - 1) < 0.05


@pytest.mark.parametrize(
    "factors, match",
    [
        (np.array([[3, 0, 0, 0, 0]]), "out of range"),
        (np.array([[0, 0, 0, 0]]), r"shape \[num, 5\]"),
        (np.array([[0.5, 0, 0, 0, 0]]), "integer class indices"),
    ],
    ids=["out_of_range", "wrong_width", "non_integer"],
)
def test_bad_factors_rejected(factors, match):
    with pytest.raises((ValueError, TypeError), match=match):
        DATA.sample_observations_from_factors(factors)


def test_render_rejects_bad_values():
    with pytest.raises(ValueError, match="pos_x and pos_y must lie in"):
        render_dsprites([0], [1.0], [0.0], [1.5], [0.5])
    with pytest.raises(ValueError, match="pass one per image"):
        render_dsprites([0, 1], [1.0], [0.0, 0.0], [0.5, 0.5], [0.5, 0.5])


# ---- official file --------------------------------------------------------------------------


def write_official_layout(path, index):
    """A small .npz in the official key layout (imgs uint8, latents_classes with the colour column)."""
    factors = DSprites.index_to_factors(index)
    imgs = DATA.render_factors(factors)[:, 0].numpy().astype(np.uint8)
    classes = np.concatenate([np.zeros((len(index), 1), dtype=np.int64), factors], axis=1)
    values = classes.astype(np.float64)
    np.savez(path, imgs=imgs, latents_classes=classes, latents_values=values)
    return imgs, factors


def test_from_npz_round_trip(tmp_path):
    path = tmp_path / "dsprites_small.npz"
    index = np.array([5, 700_000, 12_345, 99])
    imgs, factors = write_official_layout(path, index)
    data = DSprites.from_npz(path)
    assert len(data) == 4
    image, f = data[1]
    np.testing.assert_array_equal(image[0].numpy(), imgs[1])
    np.testing.assert_array_equal(f.numpy(), factors[1])
    out = data.sample_observations_from_factors(factors[::-1].copy())
    np.testing.assert_array_equal(out[:, 0].numpy(), imgs[::-1])
    with pytest.raises(ValueError, match="holds no image for factors"):
        data.sample_observations_from_factors(DSprites.index_to_factors([6]))


def test_from_npz_missing_file_names_path(tmp_path):
    path = tmp_path / "nowhere" / "dsprites.npz"
    with pytest.raises(FileNotFoundError, match=r"dSprites file not found at .*nowhere.*dsprites-dataset"):
        DSprites.from_npz(path)


def test_from_npz_missing_key(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, imgs=np.zeros((1, 64, 64), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"lacks the key\(s\) \['latents_classes'\]"):
        DSprites.from_npz(path)


def test_from_npz_refuses_pickles(tmp_path):
    path = tmp_path / "pickled.npz"
    np.savez(path, imgs=np.array([{"a": 1}], dtype=object), latents_classes=np.zeros((1, 6), dtype=np.int64))
    with pytest.raises(ValueError, match="allow_pickle"):
        DSprites.from_npz(path)


# ---- out-of-distribution extras and figures --------------------------------------------------


def test_triangle_shape_override():
    factors = np.array([[0, 5, 0, 16, 16]])
    square, triangle = DATA.render_factors(factors), DATA.render_factors(factors, shape_override="triangle")
    # Equilateral triangle of circumradius 1.4 units = 12.6 px: area 3 sqrt(3) / 4 * 12.6^2 = 206 px (+-5%).
    assert triangle.sum().item() == pytest.approx(3 * math.sqrt(3) / 4 * 12.6**2, rel=0.05)
    assert (square != triangle).any()
    with pytest.raises(ValueError, match="shape_override must be one of"):
        DATA.render_factors(factors, shape_override="star")


@pytest.mark.parametrize("probability", [0.0, 0.1, 1.0], ids=["p0", "p0.1", "p1"])
def test_flip_pixels(probability):
    images = DATA.render_factors(DATA.sample_factors(50, 0))
    noisy = flip_pixels(images, probability, random_state=0)
    flipped = (noisy != images).double().mean().item()
    # 204,800 pixels: the flipped fraction is within 0.005 of p (sd 0.0007 at p = 0.1).
    assert flipped == pytest.approx(probability, abs=0.005)
    assert set(noisy.unique().tolist()) <= {0.0, 1.0}


def test_invert_colours():
    images = DATA.render_factors(DATA.sample_factors(4, 0))
    inverted = invert_colours(images)
    torch.testing.assert_close(inverted + images, torch.ones_like(images))


def test_save_figures(tmp_path):
    path = DATA.save_samples(tmp_path / "figs" / "samples.png", num=8, random_state=0)
    assert path.is_file() and path.stat().st_size > 1000
    grid = save_image_grid(torch.rand(3, 3, 8, 8), tmp_path / "rgb.png", ncols=2)
    assert grid.is_file()
    with pytest.raises(ValueError, match="titles needs one entry per image"):
        save_image_grid(torch.rand(3, 1, 8, 8), tmp_path / "x.png", titles=["a"])


def test_from_npz_object_array_names_file_and_fix(tmp_path):
    path = tmp_path / "pickled.npz"
    np.savez(path, imgs=np.array([{"a": 1}], dtype=object), latents_classes=np.zeros((1, 6), dtype=np.int64))
    with pytest.raises(ValueError, match=r"'imgs' in .*pickled.npz is an object \(pickled\) array.*imgs.astype\(np.uint8\)"):
        DSprites.from_npz(path)


def _damaged(tmp_path, kind):
    good = tmp_path / "good.npz"
    write_official_layout(good, np.array([5, 99]))
    path = tmp_path / f"{kind}.npz"
    data = good.read_bytes()
    if kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "random":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    elif kind == "npy":
        with open(path, "wb") as f:  # a plain .npy under an .npz name
            np.save(f, np.zeros(3))
    elif kind == "corrupt-member":  # intact zip directory, damaged array bytes: a CRC mismatch
        start = data.index(b"\x93NUMPY") + 200
        path.write_bytes(data[:start] + bytes(b ^ 0xFF for b in data[start : start + 50]) + data[start + 50 :])
    return path


@pytest.mark.parametrize(
    "kind, match",
    [
        ("truncated", r"is not an .npz archive \(a truncated download or another file type\); download it again"),
        ("random", r"is not an .npz archive"),
        ("npy", r"is not an .npz archive"),
        ("corrupt-member", r"is damaged \(BadZipFile: .*\); download it again"),
    ],
    ids=["truncated", "random", "npy", "corrupt-member"],
)
def test_from_npz_damaged_file_is_named(tmp_path, kind, match):
    path = _damaged(tmp_path, kind)
    with pytest.raises(ValueError, match=rf"'{path}' {match}.*dsprites-dataset"):
        DSprites.from_npz(path)


@pytest.mark.parametrize(
    "arrays, error, match",
    [
        ({"imgs": np.zeros((2, 32, 32), np.uint8)}, ValueError, r"'imgs' in .* must have shape \[N, 64, 64\].*\[2, 32, 32\]"),
        ({"imgs": np.zeros((0, 64, 64), np.uint8), "latents_classes": np.zeros((0, 6), np.int64)}, ValueError, "holds no images"),
        ({"imgs": np.full((2, 64, 64), 255, np.uint8)}, ValueError, r"binary pixels 0 or 1 .*found 255 \(0/255 images: save imgs // 255\)"),
        ({"imgs": np.full((2, 64, 64), np.nan)}, ValueError, "binary pixels 0 or 1 .*found nan"),
        ({"latents_classes": np.full((2, 6), 0.5)}, TypeError, "'latents_classes' in .* must hold integer class indices"),
        ({"latents_classes": np.ones((2, 6), np.int64)}, ValueError, r"'latents_classes' in .* out of range.*\[1, 3, 6, 40, 32, 32\]"),
        ({"latents_classes": np.zeros((2, 5), np.int64)}, ValueError, r"'latents_classes' in .* must have shape \[N, 6\]"),
    ],
    ids=["image-size", "empty", "0-255", "nan", "float-classes", "colour", "five-columns"],
)  # fmt: skip
def test_from_npz_bad_arrays(tmp_path, arrays, error, match):
    path = tmp_path / "bad.npz"
    base = {"imgs": np.zeros((2, 64, 64), np.uint8), "latents_classes": np.zeros((2, 6), np.int64)}
    base["latents_classes"][1, -1] = 1
    np.savez(path, **{**base, **arrays})
    with pytest.raises(error, match=match):
        DSprites.from_npz(path)


def test_from_npz_accepts_binary_float_and_bool_images(tmp_path):
    path = tmp_path / "float.npz"
    imgs, factors = write_official_layout(path, np.array([5, 99]))
    for dtype in (np.float32, np.bool_):
        np.savez(path, imgs=imgs.astype(dtype), latents_classes=np.load(path)["latents_classes"])
        data = DSprites.from_npz(path)
        np.testing.assert_array_equal(data[1][0][0].numpy(), imgs[1])
        assert data._packed.dtype == np.uint8 and data._packed.shape == (2, 512)  # bit-packed, 8 pixels a byte


def test_from_npz_directory_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"is a directory; pass the dSprites .npz file itself"):
        DSprites.from_npz(tmp_path)
