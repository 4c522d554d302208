"""Loading the train and evaluation splits with uniform `image` and `labels` columns."""

from __future__ import annotations

import logging
from typing import Any

from datasets import ClassLabel, Dataset, DatasetDict, Image, load_dataset

from utils.arguments import DataTrainingArguments
from utils.data.digits import load_digits_dataset
from utils.data.image_folder import load_image_folders
from utils.data.provenance import held_out_rows, split_record

logger = logging.getLogger(__name__)

# The held-out split of datasets without one is drawn with this seed, whatever the training seed, so runs with
# different seeds are scored on the same samples.
SPLIT_SEED = 777
EVAL_SPLIT_NAMES = ("validation", "valid", "test")
IMAGE_COLUMN_NAMES = ("image", "img")
LABEL_COLUMN_NAMES = ("labels", "label", "fine_label")
BUILTIN_DATASETS = {"digits": load_digits_dataset}


def load_raw_dataset(data_args: DataTrainingArguments, cache_dir: str | None, token: str | None) -> DatasetDict:
    """The dataset as published: built-in, image folders, or the HuggingFace Hub."""
    if data_args.dataset_name in BUILTIN_DATASETS:
        return BUILTIN_DATASETS[data_args.dataset_name]()
    if data_args.dataset_name is None:
        return load_image_folders(data_args.train_dir, data_args.validation_dir, cache_dir)
    try:
        return load_dataset(data_args.dataset_name, data_args.dataset_config_name, cache_dir=cache_dir, token=token)
    except (ConnectionError, FileNotFoundError) as error:
        raise ValueError(
            f"Cannot load dataset {data_args.dataset_name!r}: {error}. Hub datasets need the network (or a cache "
            f"in --cache_dir); offline, use --dataset_name {' or '.join(BUILTIN_DATASETS)} or image folders with "
            f"--train_dir/--validation_dir."
        ) from error


def find_column(dataset_split: Dataset, wanted: str | None, names: tuple[str, ...], feature_type: type,
                role: str) -> str:
    """The column holding `role`: the one asked for, else a usual name, else the first of the right type."""
    columns = dataset_split.column_names
    if wanted is not None:
        if wanted not in columns:
            raise ValueError(f"--{role}_column_name {wanted!r} is not a column; columns: {columns}.")
        return wanted
    for name in names:
        if name in columns:
            return name
    for name, feature in dataset_split.features.items():
        if isinstance(feature, feature_type):
            return name
    raise ValueError(f"No {role} column among {columns}; name it with --{role}_column_name.")


def standardize_columns(dataset: DatasetDict, data_args: DataTrainingArguments) -> DatasetDict:
    """Rename the image and label columns to `image` and `labels`, drop the others, make labels a ClassLabel,
    and keep images undecoded (they are decoded, and bad ones skipped, by the transforms)."""
    first = next(iter(dataset.values()))
    image_column = find_column(first, data_args.image_column_name, IMAGE_COLUMN_NAMES, Image, "image")
    label_column = find_column(first, data_args.label_column_name, LABEL_COLUMN_NAMES, ClassLabel, "label")
    dataset = dataset.select_columns([image_column, label_column])
    renames = {old: new for old, new in ((image_column, "image"), (label_column, "labels")) if old != new}
    if renames:
        dataset = dataset.rename_columns(renames)
    if not isinstance(dataset[next(iter(dataset))].features["labels"], ClassLabel):
        dataset = encode_labels(dataset)
    return dataset.cast_column("image", Image(decode=False))


def encode_labels(dataset: DatasetDict) -> DatasetDict:
    """Turn plain label values into a ClassLabel shared by every split (sorted values become ids 0..K-1)."""
    values = sorted(set().union(*(split.unique("labels") for split in dataset.values())))
    index = {value: i for i, value in enumerate(values)}
    dataset = dataset.map(lambda batch: {"labels": [index[v] for v in batch["labels"]]}, batched=True)
    return dataset.cast_column("labels", ClassLabel(names=[str(value) for value in values]))


def split_train_eval(dataset: DatasetDict, train_val_split: float) -> DatasetDict:
    """Keep `train` and the first of validation/valid/test as `validation`; without one, hold out a stratified
    `train_val_split` fraction of train with a fixed seed."""
    splits = {}
    if "train" in dataset:
        splits["train"] = dataset["train"]
    eval_name = next((name for name in EVAL_SPLIT_NAMES if name in dataset), None)
    if eval_name is not None:
        splits["validation"] = dataset[eval_name]
    elif "train" in dataset:
        held_out = dataset["train"].train_test_split(
            test_size=train_val_split, seed=SPLIT_SEED, stratify_by_column="labels"
        )
        splits = {"train": held_out["train"], "validation": held_out["test"]}
    return DatasetDict(splits)


def hold_out_calibration(dataset: DatasetDict, fraction: float) -> tuple[DatasetDict, list[int] | None]:
    """Move a stratified `fraction` of train (fixed seed) into a `calibration` split that no stage trains on, for
    choosing exit thresholds (`utils.analysis`) on data the evaluation split never sees either; returns the dataset
    and the held-out row numbers of train (None when nothing is held out)."""
    if fraction <= 0.0 or "train" not in dataset:
        return dataset, None
    kept, held_out = held_out_rows(dataset["train"], fraction, SPLIT_SEED)
    dataset["train"], dataset["calibration"] = dataset["train"].select(kept), dataset["train"].select(held_out)
    return dataset, held_out


def cap_samples(dataset: DatasetDict, max_train: int | None, max_eval: int | None, seed: int) -> DatasetDict:
    """Keep at most `max_train`/`max_eval` samples, chosen by a seeded shuffle (as the original)."""
    for split, limit in (("train", max_train), ("validation", max_eval)):
        if limit is not None and split in dataset and limit < len(dataset[split]):
            dataset[split] = dataset[split].shuffle(seed=seed).select(range(limit))
    return dataset


def load_datasets(
    data_args: DataTrainingArguments, seed: int, cache_dir: str | None = None, token: str | None = None
) -> DatasetDict:
    """`train` and `validation` splits (and `calibration` with `--calibration_split`) with columns `image`
    (undecoded) and `labels` (ClassLabel)."""
    return load_datasets_with_record(data_args, seed, cache_dir, token)[0]


def load_datasets_with_record(
    data_args: DataTrainingArguments, seed: int, cache_dir: str | None = None, token: str | None = None
) -> tuple[DatasetDict, dict[str, Any] | None]:
    """As `load_datasets`, with the record of the train split and of its calibration rows
    (`utils.data.provenance.split_record`; None without a train split)."""
    dataset = standardize_columns(load_raw_dataset(data_args, cache_dir, token), data_args)
    validation_from_train = not any(name in dataset for name in EVAL_SPLIT_NAMES)
    dataset = split_train_eval(dataset, data_args.train_val_split)
    pool = dataset.get("train")
    dataset, held_out = hold_out_calibration(dataset, data_args.calibration_split)
    record = None if pool is None else split_record(data_args, pool, validation_from_train, held_out, SPLIT_SEED)
    dataset = cap_samples(dataset, data_args.max_train_samples, data_args.max_eval_samples, seed)
    logger.info("Dataset: %s", {split: len(data) for split, data in dataset.items()})
    return dataset, record


def label_names(dataset: DatasetDict) -> list[str]:
    """Class names in label-id order."""
    return next(iter(dataset.values())).features["labels"].names
