"""Image-folder datasets (`--train_dir`/`--validation_dir`), with unreadable files dropped before training."""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor

from datasets import Dataset, DatasetDict, Image, load_dataset
from PIL import Image as PILImage

logger = logging.getLogger(__name__)


def is_readable_image(path: str) -> bool:
    """Whether PIL recognises the file as an image and its structure checks out (cheap: no full decode)."""
    try:
        with PILImage.open(path) as image:
            image.verify()
        return True
    except Exception:  # PIL raises many types (OSError, SyntaxError, ValueError...) for bad files
        return False


def drop_unreadable_images(dataset: Dataset, split: str) -> Dataset:
    """Remove rows whose image file cannot be opened, warning once per file, so a bad file never stops a run."""
    paths = [row["path"] for row in dataset.cast_column("image", Image(decode=False))["image"]]
    with ThreadPoolExecutor(max_workers=8) as pool:
        readable = list(pool.map(is_readable_image, paths))
    bad = [path for path, ok in zip(paths, readable) if not ok]
    for path in bad:
        logger.warning("Skipping %s (%s split): not a readable image file.", path, split)
    if not bad:
        return dataset
    return dataset.select([i for i, ok in enumerate(readable) if ok])


def load_image_folders(train_dir: str | None, validation_dir: str | None, cache_dir: str | None) -> DatasetDict:
    """Load class-per-sub-folder images with the `imagefolder` builder; columns `image` and `label`.

    Raises:
        ValueError: a folder is missing or holds no images.
    """
    data_files = {}
    for split, folder in (("train", train_dir), ("validation", validation_dir)):
        if folder is None:
            continue
        if not os.path.isdir(folder):
            raise ValueError(f"--{split}_dir {folder!r} is not a directory; give a folder with one sub-folder per "
                             "class.")
        data_files[split] = os.path.join(folder, "**")
    try:
        dataset = load_dataset("imagefolder", data_files=data_files, cache_dir=cache_dir)
    except (ValueError, FileNotFoundError) as error:
        raise ValueError(
            f"No images found in {sorted(data_files.values())}: expected <dir>/<class name>/<image files> "
            f"({error})."
        ) from error
    return DatasetDict({split: drop_unreadable_images(data, split) for split, data in dataset.items()})
