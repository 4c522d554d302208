"""The torch dataset the Trainer reads: decodes images to uint8 RGB tensors, applies the transform, skips unreadable
files. Batches stay uint8 until they reach the device, where `Normalization` turns them into model inputs: a quarter
of the bytes cross from the loader workers and to the GPU, and no worker spends time on float arithmetic."""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset, DatasetDict
from datasets import Image as ImageFeature
from torchcodec.decoders import decode_image
from torchvision.transforms.v2.functional import pil_to_tensor
from transformers import TrainerCallback

from utils.arguments import DataTrainingArguments, ModelArguments
from utils.data.transforms import Normalization, augmentation, build_transforms, image_normalization

logger = logging.getLogger(__name__)


def read_image_bytes(value: dict[str, Any]) -> bytes | None:
    """The encoded bytes of an undecoded `datasets` image, or None when they live somewhere only `datasets` reads
    (a remote path)."""
    if value.get("bytes") is not None:
        return value["bytes"]
    path = value.get("path")
    if path is not None and "::" not in path and Path(path).is_file():
        return Path(path).read_bytes()
    return None


def decode_with_pil(value: dict[str, Any]) -> torch.Tensor:
    """`datasets`' own decoding (PIL: every format, remote paths), as a uint8 (3, H, W) tensor."""
    return pil_to_tensor(ImageFeature().decode_example(value).convert("RGB"))


def decode_rgb(value: dict[str, Any]) -> torch.Tensor | None:
    """Decode an undecoded `datasets` image (path and/or bytes) into a uint8 (3, H, W) RGB tensor, with the EXIF
    orientation applied as `datasets` does (the first frame of an animation, as PIL); None, with a warning, if it
    cannot be decoded.

    TorchCodec's decoders (libjpeg-turbo, libpng, libwebp, ...) read JPEG, PNG, WebP and GIF straight into a tensor;
    other formats (BMP, TIFF, ...) go through PIL, which gives the same pixels more slowly.
    """
    data = read_image_bytes(value)
    try:
        if data is None:
            return decode_with_pil(value)
        try:
            image = decode_image(data)  # RGB, 8 bits per channel, EXIF orientation applied
        except (ValueError, RuntimeError):  # a format TorchCodec does not decode, or damaged data: PIL decides
            return decode_with_pil(value)
        return image[0] if image.ndim == 4 else image
    except Exception as error:  # truncated or corrupt data surfaces as many error types
        logger.warning("Skipping unreadable image %s: %s", value.get("path") or "<bytes>", error)
        return None


class ImageDataset(torch.utils.data.Dataset):
    """Rows `{"pixel_values": uint8 (3, H, W), "labels"}` from a dataset with an undecoded `image` column and a
    `labels` column; `normalization` turns a batch of them into model inputs (`Normalization`).

    With `seed`, the random transform of sample i in epoch e draws from its own generator seeded by
    (seed, e, i), so the augmentation depends on neither the worker count nor the batches seen before. That is
    what makes a run resumed mid-epoch identical to an uninterrupted one: transformers' Trainer restores the
    global RNG only after it has fetched the first batch of the resumed epoch. The epoch is set by
    `EpochCallback` through `set_epoch` and lives in shared memory, so persistent loader workers, which keep their
    copy of the dataset from one epoch to the next, read the new epoch too. A sample whose image cannot be decoded
    comes back with `pixel_values` None and is left out by `collate_fn`.
    """

    def __init__(self, data: Dataset, transform: Callable[[torch.Tensor], torch.Tensor],
                 normalization: Normalization, seed: int | None = None) -> None:
        self.data = data
        self.transform = transform
        self.normalization = normalization
        self.seed = seed
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(epoch)

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
        # torchvision's random transforms draw from torch's global generator. A loader worker's generator serves
        # that worker alone, so it is seeded directly; in the training process itself it is forked, so that the
        # run's own stream (dropout, shuffling) is untouched.
        in_worker = torch.utils.data.get_worker_info() is not None
        with contextlib.nullcontext() if in_worker else torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed)
            pixel_values = self.transform(image)
        return {"pixel_values": pixel_values, "labels": row["labels"]}


def split_image_datasets(dataset: DatasetDict, image_size: int | tuple[int, int], model_args: ModelArguments,
                         data_args: DataTrainingArguments, seed: int) -> tuple[dict[str, ImageDataset], Normalization]:
    """Every split as model inputs: `train` with its augmentation (seeded per sample), the others with the evaluation
    transforms, all normalised with the checkpoint's own mean and std (`image_normalization`)."""
    mean, std = image_normalization(model_args.image_processor_name or model_args.model_name_or_path,
                                    cache_dir=model_args.cache_dir, revision=model_args.model_revision,
                                    token=model_args.token)
    train_transform, eval_transform = build_transforms(image_size, **augmentation(data_args))
    normalization = Normalization(mean, std)
    return {split: ImageDataset(data, train_transform, normalization, seed=seed) if split == "train"
            else ImageDataset(data, eval_transform, normalization) for split, data in dataset.items()}, normalization


class EpochCallback(TrainerCallback):
    """Tells the training dataset which epoch starts (accelerate only forwards the epoch to the sampler). The Trainer
    calls `on_epoch_begin` before it starts iterating the epoch's loader, so workers fetch with the new epoch."""

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
