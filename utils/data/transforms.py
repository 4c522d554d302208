"""Image transforms: the original's torchvision pipeline, with per-dataset augmentation defaults."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from torchvision import transforms as T
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
    mean: Sequence[float],
    std: Sequence[float],
    horizontal_flip: bool = True,
    min_crop_scale: float = 0.08,
) -> tuple[Callable, Callable]:
    """Train: RandomResizedCrop + optional horizontal flip; eval: Resize (shorter side) + CenterCrop; both then
    ToTensor + Normalize, as in the original run scripts."""
    size = as_pair(image_size)
    normalize = [T.ToTensor(), T.Normalize(mean=mean, std=std)]
    flip = [T.RandomHorizontalFlip()] if horizontal_flip else []
    train = T.Compose([T.RandomResizedCrop(size, scale=(min_crop_scale, 1.0)), *flip, *normalize])
    evaluation = T.Compose([T.Resize(min(size)), T.CenterCrop(size), *normalize])
    return train, evaluation


def image_processor(image_size: int | Sequence[int], mean: Sequence[float], std: Sequence[float]) -> ViTImageProcessor:
    """The processor saved with every checkpoint, so later stages and users normalise the same way."""
    size = as_pair(image_size)
    return ViTImageProcessor(size={"height": size[0], "width": size[1]}, image_mean=list(mean), image_std=list(std))
