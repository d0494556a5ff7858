"""dSprites in bounded memory (issue 10, item 4): bit-packed training images converted per minibatch,
the .npz held bit-packed, and reloaded runs that render only what they evaluate."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pyro_decomp.config import load_experiment
from pyro_decomp.data.dsprites import DSprites, LazyImages, PackedImages, pack_bits, unpack_bits
from pyro_decomp.runner import build_experiment, evaluate_run, load_run, run_experiment
from pyro_decomp.train import Trainer

DATA = DSprites()
FLOAT_BYTES_PER_IMAGE = 64 * 64 * 4  # float32
PACKED_BYTES_PER_IMAGE = 64 * 64 // 8  # one bit a pixel


def test_pack_bits_is_numpys_packbits_and_unpack_inverts_it():
    rng = np.random.default_rng(0)
    images = rng.random((7, 1, 64, 64)) < 0.3
    packed = pack_bits(torch.from_numpy(images))
    assert packed.dtype == torch.uint8 and tuple(packed.shape) == (7, 512)
    np.testing.assert_array_equal(packed.numpy(), np.packbits(images.reshape(7, -1), axis=1))
    back = unpack_bits(packed, (1, 64, 64))
    assert back.dtype == torch.float32
    np.testing.assert_array_equal(back.numpy(), images.astype(np.float32))
    for dtype in (torch.float64, torch.uint8, torch.bool):  # the table path and the shift path
        np.testing.assert_array_equal(unpack_bits(packed, (1, 64, 64), dtype).numpy(), images.astype(np.float32))
    with pytest.raises(ValueError, match="multiple of 8 pixels"):
        pack_bits(torch.zeros(2, 3, 3))
    with pytest.raises(ValueError, match="binary images"):
        pack_bits(torch.full((1, 8), 0.5))


def test_packed_rows_are_compact_and_unpack_to_the_renderers_images():
    rows = np.random.default_rng(1).choice(len(DATA), size=1500, replace=False)
    packed = DATA.packed_rows(rows, chunk_size=700)  # three chunks, the last one short
    # 1,500 images: 768,000 bytes packed against 24,576,000 as float32 (32x smaller)
    assert packed.nbytes == 1500 * PACKED_BYTES_PER_IMAGE
    assert packed.nbytes * 32 == 1500 * FLOAT_BYTES_PER_IMAGE
    assert tuple(packed.shape) == (1500, 1, 64, 64) and len(packed) == 1500 and packed.dim() == 4
    rendered = DATA.render_factors(DSprites.index_to_factors(rows))
    assert torch.equal(packed[:], rendered)  # float32 0/1, exactly
    assert packed[:].dtype == torch.float32
    pick = torch.tensor([1499, 0, 700, 3])
    assert torch.equal(packed[pick], rendered[pick])
    assert torch.equal(packed[5], rendered[5])
    assert torch.equal(torch.cat(list(packed.split(600))), rendered)
    assert torch.equal(DATA.images_of_rows(rows[:10]), rendered[:10])
    np.testing.assert_array_equal(DATA.factors_of_rows(rows), DSprites.index_to_factors(rows))
    with pytest.raises(ValueError, match=r"rows must lie in \[0, 737280\)"):
        DATA.packed_rows([737280])


def test_npz_images_are_held_bit_packed(tmp_path):
    index = np.array([5, 700_000, 12_345, 99, 3])
    factors = DSprites.index_to_factors(index)
    imgs = DATA.render_factors(factors)[:, 0].numpy().astype(np.uint8)
    classes = np.concatenate([np.zeros((len(index), 1), dtype=np.int64), factors], axis=1)
    path = tmp_path / "small.npz"
    np.savez(path, imgs=imgs, latents_classes=classes)
    data = DSprites.from_npz(path)
    assert data._packed.nbytes == len(index) * PACKED_BYTES_PER_IMAGE  # not 4,096 bytes an image
    packed = data.packed_rows(np.arange(len(index)))
    np.testing.assert_array_equal(packed[:][:, 0].numpy(), imgs)
    np.testing.assert_array_equal(data.images_of_rows([2, 0])[:, 0].numpy(), imgs[[2, 0]])
    np.testing.assert_array_equal(data.sample_observations_from_factors(factors[[4]])[0, 0].numpy(), imgs[4])


def test_trainer_batches_from_packed_images_are_the_float_batches():
    """Same minibatches, in the same order, as the float tensor of the images gave: every image once an epoch."""
    rows = np.arange(0, 737280, 7919)[:93]  # 93 images: batches of 20 leave a short last batch
    packed = DATA.packed_rows(rows)
    floats = packed.unpack()
    module = torch.nn.Linear(1, 1)

    def trainer(data):
        return Trainer(module, lambda *a, **k: None, lambda *a, **k: None, None, data, run_dir="unused", steps=1,
                       batch_size=20, seed=3, device="cpu", progress=False, tensorboard=False)  # fmt: skip

    t_packed, t_float = trainer(packed), trainer(floats)
    assert isinstance(t_packed.data, PackedImages) and t_packed.num_data == 93
    per_epoch = 5
    for epoch in range(2):
        seen = []
        for step in range(epoch * per_epoch, (epoch + 1) * per_epoch):
            batch = t_packed._batch(step)
            assert batch.dtype == torch.float32
            assert torch.equal(batch, t_float._batch(step))
            # the permutation of the original loop, drawn afresh every step
            g = torch.Generator().manual_seed(3 * 1_000_003 + epoch)
            i = step - epoch * per_epoch
            idx = torch.randperm(93, generator=g)[i * 20 : (i + 1) * 20]
            assert torch.equal(batch, floats[idx])
            seen.extend(idx.tolist())
        assert sorted(seen) == list(range(93))
    # full batch: every image, as floats
    full = Trainer(module, lambda *a, **k: None, lambda *a, **k: None, None, packed, run_dir="unused", steps=1,
                   device="cpu", progress=False, tensorboard=False)  # fmt: skip
    assert torch.equal(full._batch(0), floats)


def _cfg(**overrides):
    base = {"data.num_images": 3000, "data.test_images": 40}
    return load_experiment("thesis-5.6", size="smoke", overrides={**base, **overrides})


def test_experiment_holds_training_images_bit_packed():
    data = _cfg().data.build(lazy=False)
    x_train, y_train, x_test, y_test = data.x_train, data.y_train, data.x_test, data.y_test
    assert isinstance(x_train, PackedImages)
    # 3,000 images bit-packed: 1.5 MB, where float32 took 49 MB
    assert x_train.nbytes == 3000 * PACKED_BYTES_PER_IMAGE < 3000 * FLOAT_BYTES_PER_IMAGE / 30
    factors = y_train.numpy()
    assert factors.shape == (3000, 5)
    assert torch.equal(x_train[:], DATA.render_factors(factors))
    assert torch.equal(x_test, DATA.render_factors(y_test.numpy()))
    # the lazy form (reloading a run) gives the same images, rendering only the rows asked for
    lazy_data = _cfg().data.build(lazy=True)
    lazy, lazy_y = lazy_data.x_train, lazy_data.y_train
    assert isinstance(lazy, LazyImages) and tuple(lazy.shape) == (3000, 1, 64, 64)
    assert torch.equal(lazy_y, y_train)
    pick = torch.randperm(3000, generator=torch.Generator().manual_seed(0))[:50]
    assert torch.equal(lazy[pick], x_train[pick])
    assert torch.equal(lazy[7], x_train[7])


def test_eval_and_analyse_loading_do_not_render_the_training_set(tmp_path, monkeypatch):
    cfg = _cfg(**{
        "data.num_images": 200, "train.steps": 2, "train.checkpoint_every": 2, "train.tensorboard": False,
        "train.threads": 1, "eval.metric_num_train": 4, "eval.metric_num_eval": 4, "eval.metric_group_size": 2,
        "eval.metric_num_variance": 16, "eval.metric_num_points": 16, "eval.loss_images": 16,
        "eval.figures": False,
    })  # fmt: skip
    first = run_experiment(cfg, tmp_path / "run", progress=False)
    rendered = []
    original = DSprites.render_factors

    def counting(self, factors, **kwargs):
        rendered.append(len(factors))
        return original(self, factors, **kwargs)

    def refuse(*args, **kwargs):
        raise AssertionError("a reloaded run must not render all its training images")

    monkeypatch.setattr(DSprites, "render_factors", counting)
    monkeypatch.setattr(DSprites, "packed_rows", refuse)
    again = evaluate_run(tmp_path / "run")
    assert again["measures"] == first["measures"] and again["train"] == first["train"]
    # evaluation renders the 40 test images, the 16 training images of the loss terms, and the metric points
    assert max(rendered) < 200
    rendered.clear()
    vae, x = load_run(tmp_path / "run")
    assert tuple(x.shape) == (40, 1, 64, 64) and sum(rendered) == 40
    exp = build_experiment(cfg, lazy_data=True)
    assert isinstance(exp.x_train, LazyImages)


def test_npz_images_are_read_chunk_by_chunk(tmp_path):
    """The .npz reader packs the file's images a chunk at a time: same bits as packing them whole, and a
    non-binary pixel in a later chunk is still found."""
    from pyro_decomp.data.dsprites import _read_packed_imgs

    rng = np.random.default_rng(2)
    imgs = (rng.random((5, 64, 64)) < 0.2).astype(np.uint8)
    path = tmp_path / "chunks.npz"
    np.savez_compressed(path, imgs=imgs, latents_classes=np.zeros((5, 6), np.int64))
    with np.load(path, allow_pickle=False) as archive:
        packed = _read_packed_imgs(archive, path, chunk_images=2)  # chunks of 2, 2 and 1 images
    np.testing.assert_array_equal(packed, np.packbits(imgs.reshape(5, -1), axis=1))
    imgs[4, 10, 10] = 255
    np.savez_compressed(path, imgs=imgs, latents_classes=np.zeros((5, 6), np.int64))
    with np.load(path, allow_pickle=False) as archive, pytest.raises(ValueError, match="found 255"):
        _read_packed_imgs(archive, path, chunk_images=2)
