"""What a data-set builder returns to an experiment (:class:`DataBundle`), and uint8 image storage."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["ByteImages", "DataBundle"]


@dataclass
class DataBundle:
    """Train and test splits plus what the evaluation needs to know about them.

    ``x_*`` are float tensors or image stores with the same indexing interface (:class:`ByteImages`,
    :class:`~pyro_decomp.data.dsprites.PackedImages`, :class:`~pyro_decomp.data.dsprites.LazyImages`);
    ``y_*`` are labels: cluster or class ids ``[n]``, or ground-truth factors ``[n, K]``.
    ``ground_truth`` is a :class:`~pyro_decomp.data.GroundTruthDataset` the disentanglement metrics
    sample from (``None`` when the data has no factors). ``class_names`` names class labels.
    """

    x_train: Any
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    event_dim: int
    ground_truth: Any = None
    class_names: Sequence[str] | None = None
    #: a short note shown with the results, e.g. that a data set stands in for another
    note: str = ""


class ByteImages:
    """Images in ``[0, 1]`` stored as ``uint8`` (1/4 of float32) and converted one minibatch at a time.

    Same interface as :class:`~pyro_decomp.data.dsprites.PackedImages`: ``shape``, ``len``, ``dim()``,
    ``to(device)``, ``split(size)``, ``unpack()`` and ``[index]`` (float32 in ``[0, 1]``).

    >>> images = ByteImages.from_float(torch.tensor([[[0.0, 1.0], [0.5, 0.25]]]))
    >>> images[0].tolist() == [[0.0, 1.0], [128 / 255, 64 / 255]]
    True
    """

    def __init__(self, data: torch.Tensor) -> None:
        if not isinstance(data, torch.Tensor) or data.dtype != torch.uint8 or data.dim() < 2:
            raise TypeError("data must be a uint8 tensor [n, ...] of pixel values 0..255.")
        self.data = data

    @classmethod
    def from_float(cls, images: torch.Tensor) -> ByteImages:
        """Quantise float images in ``[0, 1]`` to 8 bits."""
        images = torch.as_tensor(images)
        if images.is_floating_point() and (not torch.isfinite(images).all() or images.min() < 0 or images.max() > 1):
            raise ValueError("images must be finite and in [0, 1].")
        return cls((images * 255).round().to(torch.uint8))

    @property
    def shape(self) -> torch.Size:
        return self.data.shape

    @property
    def device(self) -> torch.device:
        return self.data.device

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    @property
    def nbytes(self) -> int:
        return self.data.numel()

    def __len__(self) -> int:
        return int(self.data.shape[0])

    def dim(self) -> int:
        return self.data.dim()

    def __getitem__(self, index: object) -> torch.Tensor:
        return self.data[index].to(torch.float32) / 255.0

    def unpack(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.data.to(dtype) / 255.0

    def to(self, device: torch.device | str | None = None) -> ByteImages:
        return ByteImages(self.data.to(device))

    def split(self, size: int):
        return (self[i : i + size] for i in range(0, len(self), size))

    def __repr__(self) -> str:
        return f"ByteImages(shape={tuple(self.shape)}, device={self.device})"
