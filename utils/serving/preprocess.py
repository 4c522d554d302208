"""Uploaded image files -> model inputs, as evaluation prepares images: decode to RGB, resize the shorter side, centre
crop, normalise with the checkpoint's mean and std."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from utils.data.image_dataset import decode_rgb
from utils.data.transforms import Normalization, build_transforms


class NotAnImage(ValueError):
    """The bytes are no image any decoder here reads."""


class ImagePreprocessor:
    """`preprocessor(data: bytes) -> float32 (C, H, W)`; raises `NotAnImage` for data that does not decode.

    Args:
        image_size: the model's input size (an int or (H, W)).
        mean, std: the normalisation (`utils.data.transforms.image_normalization(model_dir)`).
    """

    def __init__(self, image_size: int | Sequence[int], mean: Sequence[float], std: Sequence[float]):
        _, self.transform = build_transforms(image_size)
        self.normalization = Normalization(mean, std)

    def __call__(self, data: bytes) -> torch.Tensor:
        image = decode_rgb({"bytes": data, "path": None}) if data else None
        if image is None:
            raise NotAnImage("not a readable image (send JPEG, PNG, WebP, GIF, BMP or TIFF files)")
        return self.normalization(self.transform(image))
