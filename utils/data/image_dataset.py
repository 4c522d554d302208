"""The torch dataset the Trainer reads: decodes images to RGB, applies the transform, skips unreadable files."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from datasets import Image as ImageFeature
from PIL import Image as PILImage
from transformers import TrainerCallback

logger = logging.getLogger(__name__)


def decode_rgb(value: dict[str, Any]) -> PILImage.Image | None:
    """Decode an undecoded `datasets` image (path and/or bytes) into RGB; None, with a warning, if it fails."""
    try:
        return ImageFeature().decode_example(value).convert("RGB")
    except Exception as error:  # truncated or corrupt data surfaces as many PIL error types
        logger.warning("Skipping unreadable image %s: %s", value.get("path") or "<bytes>", error)
        return None


class ImageDataset(torch.utils.data.Dataset):
    """Rows `{"pixel_values", "labels"}` from a dataset with an undecoded `image` column and a `labels` column.

    With `seed`, the random transform of sample i in epoch e draws from its own generator seeded by
    (seed, e, i), so the augmentation depends on neither the worker count nor the batches seen before. That is
    what makes a run resumed mid-epoch identical to an uninterrupted one: transformers' Trainer restores the
    global RNG only after it has fetched the first batch of the resumed epoch. The epoch is set by
    `EpochCallback` through `set_epoch`. A sample whose image cannot be decoded comes back with
    `pixel_values` None and is left out by `collate_fn`.
    """

    def __init__(self, data: Dataset, transform: Callable, seed: int | None = None) -> None:
        self.data = data
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.data[int(index)]
        image = decode_rgb(row["image"])
        if image is None:
            return {"pixel_values": None, "labels": row["labels"]}
        if self.seed is None:
            return {"pixel_values": self.transform(image), "labels": row["labels"]}
        sample_seed = int(np.random.SeedSequence([self.seed, self.epoch, int(index)]).generate_state(1)[0])
        # torchvision's random transforms draw from torch's global generator; fork it so the run's own RNG
        # stream (dropout, shuffling) is untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed)
            pixel_values = self.transform(image)
        return {"pixel_values": pixel_values, "labels": row["labels"]}


class EpochCallback(TrainerCallback):
    """Tells the training dataset which epoch starts (accelerate only forwards the epoch to the sampler)."""

    def __init__(self, dataset: ImageDataset) -> None:
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        # state.epoch is fractional (e.g. 0.75 when resuming mid-epoch); its integer part is the epoch index.
        self.dataset.set_epoch(math.floor(state.epoch + 1e-9))


def collate_fn(examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack a batch, leaving out the samples whose image could not be decoded."""
    examples = [example for example in examples if example["pixel_values"] is not None]
    if not examples:
        raise RuntimeError("Every image of a batch failed to decode; see the warnings above for the files.")
    return {
        "pixel_values": torch.stack([example["pixel_values"] for example in examples]),
        "labels": torch.tensor([example["labels"] for example in examples], dtype=torch.long),
    }
