"""Classify a folder of images with an exported model and print each image's class and exit layer.

    python -m utils.export.predict OUT_DIR IMAGE_DIR [--batch_size 32] [--threshold 0.8]

Images are prepared as in evaluation (resize, centre crop, the model's normalisation from the manifest); files that
are not readable images are reported and skipped.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import torch

from utils.data.image_dataset import decode_rgb
from utils.data.transforms import Normalization, build_transforms

from .session import EarlyExitSession

logger = logging.getLogger(__name__)


def image_files(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.is_file())


def predict_folder(session: EarlyExitSession, folder: Path, batch_size: int = 32) -> list[dict]:
    """One row per readable image: path, predicted class id and label, its probability, exit layer."""
    manifest = session.manifest
    _, transform = build_transforms(manifest["image_size"])
    normalization = Normalization(manifest["image_mean"], manifest["image_std"])
    images, paths = [], []
    for path in image_files(folder):
        image = decode_rgb({"path": str(path), "bytes": None})  # None, with a warning, for an unreadable file
        if image is not None:
            images.append(normalization(transform(image)))
            paths.append(path)
    rows = []
    for start in range(0, len(images), batch_size):
        batch = torch.stack(images[start:start + batch_size]).numpy()
        logits, exit_layer = session(batch)
        probabilities = torch.softmax(torch.from_numpy(logits), dim=-1).numpy()
        for offset, path in enumerate(paths[start:start + batch_size]):
            label = int(np.argmax(logits[offset]))
            rows.append({"path": str(path), "label_id": label, "label": session.id2label.get(label, str(label)),
                         "probability": float(probabilities[offset, label]), "exit_layer": int(exit_layer[offset])})
    return rows


def build_parser() -> argparse.ArgumentParser:
    """The command line of this module."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("export_dir", type=Path)
    parser.add_argument("image_dir", type=Path)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--exit_strategy")
    parser.add_argument("--threshold", type=json.loads, help="a number, or a JSON list with one per exit")
    parser.add_argument("--patience", type=int)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    session = EarlyExitSession(args.export_dir)
    for name in ("exit_strategy", "threshold", "patience"):
        if getattr(args, name) is not None:
            setattr(session, name, getattr(args, name))
    rows = predict_folder(session, args.image_dir, args.batch_size)
    for row in rows:
        print(f"{row['path']}\t{row['label']}\t{row['probability']:.3f}\texit layer {row['exit_layer']}")
    if rows:
        average = sum(row["exit_layer"] for row in rows) / len(rows)
        print(f"{len(rows)} images, average exit layer {average:.2f} of {session.num_blocks}")


if __name__ == "__main__":
    main()
