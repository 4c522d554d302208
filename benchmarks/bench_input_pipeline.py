"""Images per second of one data-loader worker: the training pipeline against the original's, in the same run.

    python -m benchmarks.bench_input_pipeline [--rounds 5] [--json report.json]

Two kinds of images, stored as encoded bytes in a `datasets` table as hub datasets hold them:
- ImageNet-like JPEGs (500x375, quality 90) -> RandomResizedCrop 224 (8-100% of the area) + flip;
- CIFAR-like 32x32 PNGs -> the same crop, upscaled to 224, + flip.
The original's pipeline, as this project ran it before, decodes with PIL, crops and flips PIL images, converts to
float and normalises in the worker (`utils.data.transforms.reference_transforms`, a per-sample seed), and hands float
batches to the trainer. This project's
(`utils.data.image_dataset.ImageDataset`) decodes with TorchCodec, crops and flips uint8 tensors and hands uint8
batches over; normalisation happens on the device, where it costs next to nothing. Each way runs in one loader
worker process (batches of 64, as the paper's per-GPU batch) over the same images; rounds alternate the order, and
the reported ratio is the median of the per-round ratios (this machine's speed moves between runs).
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import ClassLabel, Dataset, Features, Image
from PIL import Image as PILImage

from utils.data.image_dataset import ImageDataset, collate_fn
from utils.data.transforms import Normalization, build_transforms, reference_transforms

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
KINDS = {  # name: (height, width, format, count)
    "imagenet_jpeg": (375, 500, "JPEG", 256),
    "cifar_png": (32, 32, "PNG", 1024),
}


def natural_image(height: int, width: int, seed: int) -> PILImage.Image:
    """Smooth colour gradients with sensor-like noise, which JPEG compresses about as much as a photograph."""
    rows, columns = np.mgrid[0:height, 0:width]
    noise = np.random.default_rng(seed).normal(0, 12, (height, width, 3))
    channels = [np.sin(columns / (17 + seed % 5) + c) * 60 + np.cos(rows / 23 * (c + 1)) * 60 + 128
                for c in range(3)]
    return PILImage.fromarray(np.clip(np.stack(channels, -1) + noise, 0, 255).astype(np.uint8))


def image_table(kind: str, count: int | None = None) -> Dataset:
    """`count` (default: the kind's own) encoded images of `kind` with two alternating labels."""
    height, width, image_format, default_count = KINDS[kind]
    count = count or default_count
    encoded = []
    for seed in range(count):
        buffer = io.BytesIO()
        natural_image(height, width, seed).save(buffer, image_format, **({"quality": 90} if image_format == "JPEG"
                                                                          else {}))
        encoded.append({"bytes": buffer.getvalue(), "path": None})
    features = Features({"image": Image(decode=False), "labels": ClassLabel(names=["a", "b"])})
    return Dataset.from_dict({"image": encoded, "labels": [seed % 2 for seed in range(count)]}, features=features)


class ReferenceDataset(torch.utils.data.Dataset):
    """The original's pipeline, as this project's `ImageDataset` ran it before: PIL decoding by `datasets`, PIL
    transforms with a per-sample seed, float normalisation in the worker."""

    def __init__(self, data: Dataset, transform: Callable, seed: int = 0) -> None:
        self.data, self.transform, self.seed = data, transform, seed

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.data[int(index)]
        image = Image().decode_example(row["image"]).convert("RGB")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(np.random.SeedSequence([self.seed, 0, int(index)]).generate_state(1)[0]))
            return {"pixel_values": self.transform(image), "labels": row["labels"]}


def pipelines(data: Dataset, size: int = 224) -> dict[str, torch.utils.data.Dataset]:
    reference_train, _ = reference_transforms(size, MEAN, STD)
    fast_train, _ = build_transforms(size)
    return {"original (PIL, float)": ReferenceDataset(data, reference_train),
            "this project (TorchCodec, uint8)": ImageDataset(data, fast_train, Normalization(MEAN, STD), seed=0)}


def images_per_second(dataset: torch.utils.data.Dataset, workers: int, batch_size: int = 64) -> float:
    """Images per second through a loader with `workers` worker processes (0: in this process): one pass to start
    the (persistent) workers and warm up, then one timed pass."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate_fn,
                                         persistent_workers=workers > 0)
    for _ in loader:
        pass
    start = time.perf_counter()
    count = sum(len(batch["labels"]) for batch in loader)
    return count / (time.perf_counter() - start)


def measure(kind: str, rounds: int, workers: int, count: int | None = None) -> dict[str, Any]:
    """Interleaved rounds of both pipelines on `count` images of `kind`; images/s per way and the median ratio."""
    ways = pipelines(image_table(kind, count))
    names = list(ways)
    rates: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(rounds):
        for name in (names if round_index % 2 == 0 else names[::-1]):
            rates[name].append(images_per_second(ways[name], workers))
    ratios = [new / old for old, new in zip(rates[names[0]], rates[names[1]])]
    return {"kind": kind, "workers": workers, "images_per_second": {name: statistics.median(values)
                                                                    for name, values in rates.items()},
            "ratio": statistics.median(ratios), "ratio_range": [min(ratios), max(ratios)]}


def build_parser() -> argparse.ArgumentParser:
    """The command line of this benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=1, help="loader workers per way (1: images/s per worker)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    torch.set_num_threads(1)
    results = [measure(kind, args.rounds, args.workers) for kind in KINDS]
    for result in results:
        rates = ", ".join(f"{name}: {rate:.0f}" for name, rate in result["images_per_second"].items())
        print(f"{result['kind']}: images/s with {result['workers']} worker(s): {rates}; this project / original = "
              f"{result['ratio']:.2f} (rounds {result['ratio_range'][0]:.2f}-{result['ratio_range'][1]:.2f})")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
