"""Image-folder datasets (`--train_dir`/`--validation_dir`), with unreadable files dropped before training.

Opening every file of a large folder (ImageNet's 1.28M) at every launch and in every process is slow on a shared
filesystem, so the folders are checked once per state. The state is a fingerprint of the files `datasets` reads:
each one's path, size and modification time, from one `stat` per file (none is opened). The first process to see a
state builds the Arrow files with `datasets`' `imagefolder`, opens every image, and writes a record in the dataset
cache (`<cache_dir>/checked_image_folders/<fingerprint>.json`): the Arrow files and the unreadable images. Every
process then maps the Arrow files named by the record, which also skips `datasets`' own resolution of the folders
(a glob and a `stat` per file, and a hash of the list) at later loads, and drops the recorded files with a warning
naming each. A file lock on the record makes processes that start together (ranks, or nodes sharing the cache) wait
for the one that checks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import datasets
import pyarrow.compute as pc
from datasets import Dataset, DatasetDict, concatenate_datasets, load_dataset
from filelock import FileLock
from PIL import Image as PILImage

logger = logging.getLogger(__name__)

RECORD_FOLDER = "checked_image_folders"
IO_THREADS = 16  # opens and stats wait on the filesystem, not the CPU


def is_readable_image(path: str) -> bool:
    """Whether PIL recognises the file as an image and its structure checks out (cheap: no full decode)."""
    try:
        with PILImage.open(path) as image:
            image.verify()
        return True
    except Exception:  # PIL raises many types (OSError, SyntaxError, ValueError...) for bad files
        return False


def image_paths(dataset: Dataset) -> list[str]:
    """The file path of every row's image, read from the Arrow table without decoding anything."""
    return pc.struct_field(dataset.with_format("arrow")["image"], "path").to_pylist()


def find_unreadable(paths: list[str]) -> list[str]:
    """The paths among `paths` that are not readable images, in order."""
    with ThreadPoolExecutor(max_workers=IO_THREADS) as pool:
        readable = list(pool.map(is_readable_image, paths))
    return [path for path, ok in zip(paths, readable) if not ok]


def drop_unreadable(dataset: Dataset, unreadable: list[str], split: str) -> Dataset:
    """`dataset` without the rows of the `unreadable` files, warning once per file, so a bad file never stops a
    run."""
    for path in unreadable:
        logger.warning("Skipping %s (%s split): not a readable image file.", path, split)
    if not unreadable:
        return dataset
    bad = set(unreadable)
    return dataset.select([i for i, path in enumerate(image_paths(dataset)) if path not in bad])


def is_loaded_file(name: str) -> bool:
    """Whether `datasets` reads a file or folder of this name (it leaves out hidden ones, `.x` and `__x`)."""
    return not name.startswith((".", "__"))


def file_row(entry: os.DirEntry) -> tuple[str, int, int]:
    """(path, size, modification time in ns) of a file, symbolic links followed."""
    stat = entry.stat()
    return entry.path, stat.st_size, stat.st_mtime_ns


def list_files(directory: str) -> list[tuple[str, int, int]]:
    """`file_row` of every file `datasets` would read under `directory`."""
    files = []
    with os.scandir(directory) as entries:
        for entry in entries:
            if is_loaded_file(entry.name):
                files.extend(list_files(entry.path) if entry.is_dir() else [file_row(entry)])
    return files


def subtree_digest(directory: str) -> str:
    """A digest of the path, size and modification time of every file under `directory`."""
    digest = hashlib.sha256()
    for path, size, modified in sorted(list_files(directory)):
        digest.update(f"{path}\0{size}\0{modified}\n".encode())
    return digest.hexdigest()


def folder_fingerprint(folders: dict[str, str]) -> str:
    """A digest of each split's folder and of every file in it (path, size, modification time); it changes when
    a file is added, removed, renamed or rewritten. Sub-folders (the classes) are listed in parallel."""
    digest = hashlib.sha256()
    for split, folder in sorted(folders.items()):
        with os.scandir(folder) as entries:
            children = sorted((entry for entry in entries if is_loaded_file(entry.name)), key=lambda e: e.name)
        directories = [entry.path for entry in children if entry.is_dir()]
        with ThreadPoolExecutor(max_workers=IO_THREADS) as pool:
            subtrees = dict(zip(directories, pool.map(subtree_digest, directories)))
        digest.update(f"{split}\0{folder}\n".encode())
        for entry in children:
            detail = subtrees.get(entry.path) or "\0".join(map(str, file_row(entry)[1:]))
            digest.update(f"{entry.path}\0{detail}\n".encode())
    return digest.hexdigest()[:32]


def read_record(path: Path) -> dict | None:
    """A folder-check record, or None when there is none, it cannot be read, or an Arrow file it names is gone."""
    try:
        record = json.loads(path.read_text())
        complete = set(record["arrow_files"]) == set(record["unreadable"])
        arrow_files = [name for names in record["arrow_files"].values() for name in names]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return record if complete and all(os.path.isfile(name) for name in arrow_files) else None


def check_folders(folders: dict[str, str], cache_dir: str | None) -> dict:
    """Build the folders' Arrow files with `imagefolder` and open every image; a record of the Arrow files and the
    unreadable files.

    Raises:
        ValueError: a folder holds no images.
    """
    data_files = {split: os.path.join(folder, "**") for split, folder in folders.items()}
    try:
        dataset = load_dataset("imagefolder", data_files=data_files, cache_dir=cache_dir)
    except (ValueError, FileNotFoundError) as error:
        raise ValueError(
            f"No images found in {sorted(data_files.values())}: expected <dir>/<class name>/<image files> "
            f"({error})."
        ) from error
    return {
        "arrow_files": {split: [cache["filename"] for cache in data.cache_files] for split, data in dataset.items()},
        "unreadable": {split: find_unreadable(image_paths(data)) for split, data in dataset.items()},
    }


def load_recorded(record: dict) -> DatasetDict:
    """The splits from the Arrow files of a record, memory-mapped as `load_dataset` maps them."""
    return DatasetDict({
        split: concatenate_datasets([Dataset.from_file(name, split=split) for name in names])
        for split, names in record["arrow_files"].items()
    })


def write_record(path: Path, record: dict) -> None:
    """Write a record whole or not at all (a reader never sees half of it)."""
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    partial.write_text(json.dumps(record, indent=1))
    os.replace(partial, path)


def checked_splits(folders: dict[str, str], cache_dir: str | None) -> DatasetDict:
    """The splits with their unreadable images dropped, checked once per folder state (see the module doc)."""
    records = Path(cache_dir or datasets.config.HF_DATASETS_CACHE) / RECORD_FOLDER
    records.mkdir(parents=True, exist_ok=True)
    path = records / f"{folder_fingerprint(folders)}.json"
    with FileLock(str(path.with_suffix(".lock"))):
        record = read_record(path)
        if record is None:
            record = check_folders(folders, cache_dir)
            write_record(path, record)
            logger.info("Opened every image of %s once; the result is kept in %s while the files are unchanged.",
                        sorted(folders.values()), path)
        else:
            logger.info("Image folders unchanged since their check (%s): reusing it.", path)
    return DatasetDict({split: drop_unreadable(data, record["unreadable"][split], split)
                        for split, data in load_recorded(record).items()})


def load_image_folders(train_dir: str | None, validation_dir: str | None, cache_dir: str | None) -> DatasetDict:
    """Load class-per-sub-folder images with the `imagefolder` builder; columns `image` and `label`.

    Raises:
        ValueError: a folder is missing or holds no images.
    """
    folders = {}
    for split, folder in (("train", train_dir), ("validation", validation_dir)):
        if folder is None:
            continue
        if not os.path.isdir(folder):
            raise ValueError(f"--{split}_dir {folder!r} is not a directory; give a folder with one sub-folder per "
                             "class.")
        folders[split] = os.path.abspath(folder)
    return checked_splits(folders, cache_dir)
