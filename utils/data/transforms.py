"""Image transforms on uint8 tensors (the original's augmentation), the normalisation that follows them on the device,
the original's PIL pipeline as the reference, and per-dataset augmentation defaults."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torchvision import transforms as T
from torchvision.transforms import v2
from transformers import AutoImageProcessor, ViTImageProcessor
from transformers.utils.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from models.early_exit_config import as_pair
from utils.arguments import DataTrainingArguments

logger = logging.getLogger(__name__)

# Augmentation defaults that differ from the original's (flip on, crops of 8-100% of the area). The digits are
# 8x8 pixels: an 8% crop keeps about 2x2 of them, and a mirrored digit is no digit. Measured on the quickstart
# model (20 epochs, lr 2e-3): crops of 50-100% of the area reach ~87% accuracy, 80-100% ~93%, no crop ~96% but
# with a training loss near 0 (little left for the exits to learn in stage 2); 8-100% gave ~52% (30 epochs,
# lr 1e-3).
DATASET_AUGMENTATION = {"digits": {"horizontal_flip": False, "min_crop_scale": 0.8}}
DEFAULT_AUGMENTATION = {"horizontal_flip": True, "min_crop_scale": 0.08}


def image_normalization(source: str | None, **hub_kwargs: Any) -> tuple[list[float], list[float]]:
    """Mean and std of the checkpoint's own image processor, else ImageNet's (the original's DeiT values)."""
    if source is not None:
        try:
            processor = AutoImageProcessor.from_pretrained(source, **hub_kwargs)
            return list(processor.image_mean), list(processor.image_std)
        except (OSError, ValueError, KeyError, AttributeError, TypeError):
            logger.info("No image processor found at %s; normalising with ImageNet mean/std.", source)
    return list(IMAGENET_DEFAULT_MEAN), list(IMAGENET_DEFAULT_STD)


def augmentation(data_args: DataTrainingArguments) -> dict[str, Any]:
    """`horizontal_flip` and `min_crop_scale`: the ones given, else the dataset's defaults."""
    settings = dict(DATASET_AUGMENTATION.get(data_args.dataset_name, DEFAULT_AUGMENTATION))
    for name in settings:
        if getattr(data_args, name) is not None:
            settings[name] = getattr(data_args, name)
    return settings


def build_transforms(
    image_size: int | Sequence[int],
    horizontal_flip: bool = True,
    min_crop_scale: float = 0.08,
) -> tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]:
    """Transforms of uint8 (3, H, W) image tensors, as the original run scripts' but without the conversion to
    normalised floats, which `Normalization` does on the device. Train: RandomResizedCrop + optional horizontal flip;
    eval: Resize (shorter side) + CenterCrop; both with antialiasing, as PIL resizes.

    torchvision's v2 transforms draw their random crop and flip from torch's generator exactly as the v1 transforms
    of `reference_transforms` do, so a seed gives the same crops and flips; pixel values differ from PIL's by
    rounding only (tests/test_data.py states the tolerance).
    """
    size = as_pair(image_size)
    flip = [v2.RandomHorizontalFlip()] if horizontal_flip else []
    train = v2.Compose([v2.RandomResizedCrop(size, scale=(min_crop_scale, 1.0), antialias=True), *flip])
    evaluation = v2.Compose([v2.Resize(min(size), antialias=True), v2.CenterCrop(size)])
    return train, evaluation


def reference_transforms(
    image_size: int | Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    horizontal_flip: bool = True,
    min_crop_scale: float = 0.08,
) -> tuple[Callable, Callable]:
    """The original run scripts' PIL pipeline (PIL image -> normalised float tensor): the reference that
    `build_transforms` + `Normalization` are checked and measured against (tests, `benchmarks/bench_input_pipeline`)."""
    size = as_pair(image_size)
    normalize = [T.ToTensor(), T.Normalize(mean=mean, std=std)]
    flip = [T.RandomHorizontalFlip()] if horizontal_flip else []
    train = T.Compose([T.RandomResizedCrop(size, scale=(min_crop_scale, 1.0)), *flip, *normalize])
    evaluation = T.Compose([T.Resize(min(size)), T.CenterCrop(size), *normalize])
    return train, evaluation


class Normalization:
    """uint8 images (..., 3, H, W) -> float32 (x / 255 - mean) / std, on the images' own device. Floating-point
    input is taken to be normalised already and passes unchanged, so model-ready tensors can share the path.

    The mean and std go to a device once and are kept there, so a batch costs no copy from the host."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = [float(value) for value in mean]
        self.std = [float(value) for value in std]
        self.on_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        if pixels.is_floating_point():
            return pixels
        if pixels.dtype != torch.uint8:
            raise TypeError(f"Images must be uint8 (raw pixels) or floating point (normalised), not {pixels.dtype}.")
        if pixels.device not in self.on_device:
            self.on_device[pixels.device] = tuple(torch.tensor(values).view(-1, 1, 1).to(pixels.device)
                                                  for values in (self.mean, self.std))
        mean, std = self.on_device[pixels.device]
        return (pixels.float() / 255.0 - mean) / std

    def __getstate__(self) -> dict:
        """Loader workers get the values, not the tensors kept on an accelerator."""
        return {**self.__dict__, "on_device": {}}

    def __repr__(self) -> str:
        return f"Normalization(mean={self.mean}, std={self.std})"


def image_processor(image_size: int | Sequence[int], mean: Sequence[float], std: Sequence[float]) -> ViTImageProcessor:
    """The processor saved with every checkpoint, so later stages and users normalise the same way."""
    size = as_pair(image_size)
    return ViTImageProcessor(size={"height": size[0], "width": size[1]}, image_mean=list(mean), image_std=list(std))
