"""Datasets: the ground-truth protocol, dSprites, pinwheel, and torchvision-backed image datasets."""

from pyro_decomp.data.dsprites import (
    DSprites,
    LazyImages,
    PackedImages,
    flip_pixels,
    invert_colours,
    render_dsprites,
    save_image_grid,
)
from pyro_decomp.data.ground_truth import GroundTruthDataset, SyntheticGroundTruth
from pyro_decomp.data.pinwheel import PinwheelSplits, pinwheel, pinwheel_splits
from pyro_decomp.data.vision import celeba, fashion_mnist, mnist

__all__ = [
    "DSprites",
    "GroundTruthDataset",
    "LazyImages",
    "PackedImages",
    "PinwheelSplits",
    "SyntheticGroundTruth",
    "celeba",
    "fashion_mnist",
    "flip_pixels",
    "invert_colours",
    "mnist",
    "pinwheel",
    "pinwheel_splits",
    "render_dsprites",
    "save_image_grid",
]
