"""Image transforms (the original's torchvision pipeline) and the batch collator that skips undecodable images."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from datasets import Image as ImageFeature
from PIL import Image as PILImage
from torchvision import transforms as T
from transformers import AutoImageProcessor
from transformers.utils.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from .arguments import DataTrainingArguments

logger = logging.getLogger(__name__)

# Augmentation defaults that differ from the original's (flip on, crops of 8-100% of the area). The digits are
# 8x8 pixels: an 8% crop keeps about 2x2 of them, and a mirrored digit is no digit.
DATASET_AUGMENTATION = {"digits": {"horizontal_flip": False, "min_crop_scale": 0.5}}
DEFAULT_AUGMENTATION = {"horizontal_flip": True, "min_crop_scale": 0.08}


def image_normalization(source: str | None, **hub_kwargs: Any) -> tuple[list[float], list[float]]:
    """Mean and std of the checkpoint's own image processor, else ImageNet's (the original's DeiT values)."""
    if source is not None:
        try:
            processor = AutoImageProcessor.from_pretrained(source, **hub_kwargs)
            return list(processor.image_mean), list(processor.image_std)
        except (OSError, ValueError, AttributeError, TypeError):
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
    size = tuple(image_size) if isinstance(image_size, (list, tuple)) else (image_size, image_size)
    normalize = [T.ToTensor(), T.Normalize(mean=mean, std=std)]
    flip = [T.RandomHorizontalFlip()] if horizontal_flip else []
    train = T.Compose([T.RandomResizedCrop(size, scale=(min_crop_scale, 1.0)), *flip, *normalize])
    evaluation = T.Compose([T.Resize(min(size)), T.CenterCrop(size), *normalize])
    return train, evaluation


def decode_rgb(value: dict[str, Any]) -> PILImage.Image | None:
    """Decode an undecoded `datasets` image (path and/or bytes) into RGB; None, with a warning, if it fails."""
    try:
        return ImageFeature().decode_example(value).convert("RGB")
    except Exception as error:  # truncated or corrupt data surfaces as many PIL error types
        logger.warning("Skipping unreadable image %s: %s", value.get("path") or "<bytes>", error)
        return None


class ImageTransform:
    """`set_transform` callable: decodes a batch of rows and applies `transform`; failures become None."""

    def __init__(self, transform: Callable) -> None:
        self.transform = transform

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        images = [decode_rgb(value) for value in batch["image"]]
        pixel_values = [None if image is None else self.transform(image) for image in images]
        return {"pixel_values": pixel_values, "labels": batch["labels"]}


def collate_fn(examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack a batch, leaving out the samples whose image could not be decoded."""
    examples = [example for example in examples if example["pixel_values"] is not None]
    if not examples:
        raise RuntimeError("Every image of a batch failed to decode; see the warnings above for the files.")
    return {
        "pixel_values": torch.stack([example["pixel_values"] for example in examples]),
        "labels": torch.tensor([example["labels"] for example in examples], dtype=torch.long),
    }
