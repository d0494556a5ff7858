"""The ground-truth protocol, the synthetic dataset and the torchvision-backed datasets on stand-in files."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch
from PIL import Image

from pyro_decomp.data import GroundTruthDataset, SyntheticGroundTruth, celeba, fashion_mnist, mnist
from pyro_decomp.data.ground_truth import as_generator
from pyro_decomp.data.vision import CELEBA_FILES, MNIST_RAW_FILES

# ---- ground-truth protocol ------------------------------------------------------------------


def test_protocol_is_abstract():
    with pytest.raises(TypeError, match="abstract"):
        GroundTruthDataset()


def test_sample_factors_uniform_and_in_range():
    data = SyntheticGroundTruth((2, 3, 5))
    factors = data.sample_factors(30_000, random_state=0)
    assert factors.shape == (30_000, 3) and factors.dtype == np.int64
    for k, size in enumerate(data.factor_sizes):
        counts = np.bincount(factors[:, k], minlength=size)
        assert counts.size == size
        # Uniform: each count is 30000 / size with sd sqrt(n p (1 - p)) < 87; allow 5 sd.
        np.testing.assert_allclose(counts, 30_000 / size, atol=5 * 87)


def test_synthetic_sample_is_deterministic_and_injective():
    data = SyntheticGroundTruth((3, 4), observation_dim=5)
    factors, x = data.sample(200, random_state=1)
    factors2, x2 = data.sample(200, random_state=1)
    np.testing.assert_array_equal(factors, factors2)
    torch.testing.assert_close(x, x2)
    assert x.shape == (200, 5) and data.observation_shape == (5,)
    # Same factors -> same observation (noise_std = 0), different factors -> different observations.
    keys = {tuple(f) for f in factors}
    assert len({tuple(np.round(v, 6)) for v in x.numpy()}) == len(keys)


def test_synthetic_noise():
    data = SyntheticGroundTruth((3, 4), observation_dim=5, noise_std=0.1)
    factors = np.zeros((5000, 2), dtype=np.int64)
    x = data.sample_observations_from_factors(factors, random_state=0)
    assert x.std(0).mean().item() == pytest.approx(0.1, abs=0.01)  # 5000 draws: sd of the std ~0.001


@pytest.mark.parametrize(
    "random_state, error, match",
    [("seed", TypeError, "random_state must be an int seed"), (-1, ValueError, "non-negative")],
    ids=["string", "negative"],
)
def test_as_generator_rejects(random_state, error, match):
    with pytest.raises(error, match=match):
        as_generator(random_state)


def test_as_generator_accepts_legacy_random_state():
    a = as_generator(np.random.RandomState(3)).random()
    b = as_generator(np.random.RandomState(3)).random()
    assert a == b


@pytest.mark.parametrize(
    "factors, match",
    [(np.array([[0, 4]]), "out of range"), (np.zeros((2, 3), dtype=int), r"shape \[num, 2\]")],
    ids=["out_of_range", "wrong_width"],
)
def test_synthetic_rejects_bad_factors(factors, match):
    with pytest.raises(ValueError, match=match):
        SyntheticGroundTruth((3, 4)).sample_observations_from_factors(factors, 0)


def test_synthetic_rejects_bad_sizes():
    with pytest.raises(ValueError, match="at least 2 values"):
        SyntheticGroundTruth((1, 3))


# ---- MNIST / Fashion-MNIST stand-ins ----------------------------------------------------------


def write_idx(path, array: np.ndarray) -> None:
    """Write ``array`` (uint8) in the IDX format torchvision reads: magic 0x08, ndim, big-endian dims."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def make_mnist_like(root, class_name: str, num_train: int = 6, num_test: int = 4) -> dict[str, np.ndarray]:
    raw = root / class_name / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (num_train, 28, 28)),
        "train-labels-idx1-ubyte": rng.integers(0, 10, num_train),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (num_test, 28, 28)),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, num_test),
    }
    for name, array in arrays.items():
        write_idx(raw / name, array)
    return arrays


def test_mnist_stand_in(tmp_path):
    arrays = make_mnist_like(tmp_path, "MNIST")
    train = mnist(tmp_path)
    assert len(train) == 6
    image, label = train[2]
    assert image.shape == (1, 28, 28)
    torch.testing.assert_close(
        image[0], torch.tensor(arrays["train-images-idx3-ubyte"][2] / 255.0, dtype=torch.float32)
    )
    assert label == arrays["train-labels-idx1-ubyte"][2]
    assert len(mnist(tmp_path, train=False)) == 4


def test_fashion_mnist_stand_in_resized(tmp_path):
    arrays = make_mnist_like(tmp_path, "FashionMNIST")
    data = fashion_mnist(tmp_path)
    image, label = data[0]
    assert image.shape == (1, 32, 32)
    assert 0.0 <= image.min().item() and image.max().item() <= 1.0
    # Bilinear resizing keeps the mean intensity to within a few percent.
    assert image.mean().item() == pytest.approx(arrays["train-images-idx3-ubyte"][0].mean() / 255.0, abs=0.03)
    assert label == arrays["train-labels-idx1-ubyte"][0]


@pytest.mark.parametrize("loader, name", [(mnist, "MNIST"), (fashion_mnist, "FashionMNIST")], ids=["mnist", "fashion"])
def test_mnist_like_missing_names_path(tmp_path, loader, name):
    with pytest.raises(FileNotFoundError, match=rf"{name} files not found.*{name}/raw.*download=True"):
        loader(tmp_path)
    assert not (tmp_path / name).exists()  # nothing was created or fetched


def test_mnist_partial_files_listed(tmp_path):
    make_mnist_like(tmp_path, "MNIST")
    (tmp_path / "MNIST" / "raw" / MNIST_RAW_FILES[3]).unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        mnist(tmp_path)


# ---- CelebA stand-in --------------------------------------------------------------------------


def make_celeba(root, partitions=(0, 0, 0, 1, 1, 2, 2)) -> list[str]:
    # Two images per split at least: torchvision's CelebA cannot index a split holding one image.
    base = root / "celeba"
    (base / "img_align_celeba").mkdir(parents=True)
    names = [f"{i + 1:06d}.jpg" for i in range(len(partitions))]
    rng = np.random.default_rng(0)
    for name in names:
        Image.fromarray(rng.integers(0, 256, (218, 178, 3), dtype=np.uint8)).save(base / "img_align_celeba" / name)
    attrs = [f"Attr{i}" for i in range(40)]
    landmarks = ["lefteye_x", "lefteye_y", "righteye_x", "righteye_y", "nose_x", "nose_y"]
    landmarks += ["leftmouth_x", "leftmouth_y", "rightmouth_x", "rightmouth_y"]
    n = len(names)
    files = {
        "list_eval_partition.txt": [f"{m} {p}" for m, p in zip(names, partitions, strict=True)],
        "identity_CelebA.txt": [f"{m} {i + 1}" for i, m in enumerate(names)],
        "list_bbox_celeba.txt": [str(n), "image_id x_1 y_1 width height"] + [f"{m} 1 2 3 4" for m in names],
        "list_landmarks_align_celeba.txt": [str(n), " ".join(landmarks)]
        + [f"{m} " + " ".join(["50"] * 10) for m in names],
        "list_attr_celeba.txt": [str(n), " ".join(attrs)] + [f"{m} " + " ".join(["1", "-1"] * 20) for m in names],
    }
    assert set(files) == set(CELEBA_FILES)
    for name, lines in files.items():
        (base / name).write_text("\n".join(lines) + "\n")
    return names


def test_celeba_stand_in(tmp_path):
    make_celeba(tmp_path)
    train = celeba(tmp_path)
    assert len(train) == 3
    image, attr = train[0]
    assert image.shape == (3, 64, 64) and 0.0 <= image.min().item() <= image.max().item() <= 1.0
    assert attr.shape == (40,) and attr[:2].tolist() == [1, 0]  # {-1, 1} mapped to {0, 1}
    assert len(celeba(tmp_path, split="test")) == 2
    assert len(celeba(tmp_path, split="all")) == 7


def test_celeba_missing_names_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"CelebA files not found.*img_align_celeba/.*celeba'.*download=True"):
        celeba(tmp_path)


def test_celeba_rejects_bad_split(tmp_path):
    with pytest.raises(ValueError, match="split must be"):
        celeba(tmp_path, split="validation")


# ---- damaged files: one clear error naming the file (torchvision raises bare asserts) ----------


def _truncate(path, keep):
    path.write_bytes(path.read_bytes()[:keep])


@pytest.mark.parametrize(
    "damage, match",
    [
        (lambda raw: _truncate(raw / "train-images-idx3-ubyte", 100), r"announces 6 items \(4720 bytes\) but the file has 100"),
        (lambda raw: _truncate(raw / "train-labels-idx1-ubyte", 3), "only 3 bytes, fewer than the 8-byte header"),
        (lambda raw: (raw / "train-labels-idx1-ubyte").write_bytes(b"\x12\x34" * 50), "header 12341234 is not 00000801"),
        (lambda raw: write_idx(raw / "train-images-idx3-ubyte", np.zeros((6, 32, 32))), r"shape \[32, 32\], expected \[28, 28\]"),
        (lambda raw: write_idx(raw / "train-labels-idx1-ubyte", np.full(6, 12)), r"label 12, outside 0..9"),
    ],
    ids=["truncated-images", "truncated-header", "random-bytes", "wrong-image-size", "bad-label"],
)  # fmt: skip
@pytest.mark.parametrize("loader, name", [(mnist, "MNIST"), (fashion_mnist, "FashionMNIST")], ids=["mnist", "fashion"])
def test_mnist_like_damaged_file_is_named(tmp_path, loader, name, damage, match):
    make_mnist_like(tmp_path, name)
    damage(tmp_path / name / "raw")
    where = rf"'.*{name}/raw/train-.*' is not a valid MNIST-format \(IDX\) file: "
    with pytest.raises(ValueError, match=where + ".*" + match):
        loader(tmp_path)


def test_mnist_image_and_label_counts_must_agree(tmp_path):
    make_mnist_like(tmp_path, "MNIST")
    write_idx(tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte", np.zeros(3))
    with pytest.raises(ValueError, match="holds 4 images but .*t10k-labels-idx1-ubyte' holds 3 labels"):
        mnist(tmp_path, train=False)


def test_root_that_is_a_file(tmp_path):
    (tmp_path / "data").write_text("not a directory")
    for loader in (mnist, fashion_mnist, celeba):
        with pytest.raises(ValueError, match=r"root '.*data' is a file; pass the directory"):
            loader(tmp_path / "data")


@pytest.mark.parametrize(
    "name, text, match",
    [
        ("list_attr_celeba.txt", "garbage\nmore garbage\n", "it lists no images"),
        ("identity_CelebA.txt", "", "it lists no images"),
        ("list_eval_partition.txt", "xx yy zz\n", "line 1 has 2 value.s. after the file name, expected 1"),
        ("list_eval_partition.txt", "000001.jpg 7\n", r"line 1 holds \[7\]; the values must be in \[0, 1, 2\]"),
        ("list_attr_celeba.txt", "7\nA B\n000001.jpg 1\n", "line 3 has 1 value.s. after the file name, expected 2"),
        ("list_bbox_celeba.txt", "7\nh\n000001.jpg 1 2 3 x\n", "line 3 holds a value that is not an integer"),
        ("list_landmarks_align_celeba.txt", "1\nh\n000009.jpg" + " 1" * 10 + "\n", "it lists 1 image.s. that differ from the 7"),
    ],
    ids=["attr-garbage", "identity-empty", "partition-columns", "partition-value", "attr-columns", "bbox-text", "names"],
)
def test_celeba_damaged_label_file_is_named(tmp_path, name, text, match):
    make_celeba(tmp_path)
    (tmp_path / "celeba" / name).write_text(text)
    with pytest.raises(ValueError, match=rf"CelebA label file '.*celeba/{name}' is damaged: {match}"):
        celeba(tmp_path)


def test_celeba_binary_label_file_and_image(tmp_path):
    names = make_celeba(tmp_path)
    (tmp_path / "celeba" / "list_bbox_celeba.txt").write_bytes(bytes(range(128, 256)))
    with pytest.raises(ValueError, match="list_bbox_celeba.txt' is damaged: it is not a text file"):
        celeba(tmp_path)
    make_celeba(tmp_path / "b")
    (tmp_path / "b" / "celeba" / "img_align_celeba" / names[0]).write_bytes(b"junk")
    data = celeba(tmp_path / "b")
    with pytest.raises(ValueError, match=rf"CelebA image '.*{names[0]}' is not a readable image"):
        data[0]


def test_celeba_rejects_bad_target_type_up_front(tmp_path):
    make_celeba(tmp_path)
    with pytest.raises(ValueError, match=r"target_type must be one of \('attr', 'identity', 'bbox', 'landmarks'\)"):
        celeba(tmp_path, target_type="attributes")
    data = celeba(tmp_path, target_type=["identity", "bbox"])
    assert [t.tolist() for t in data[0][1]] == [1, [1, 2, 3, 4]]
