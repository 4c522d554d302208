"""Which rows a run holds out for calibration, as a record that a trained model keeps (`training_data` in its
config) and that a calibrating run compares with its own, so that no threshold is chosen on images a stage trained
on (`utils.analysis.provenance`)."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import numpy as np
from datasets import Dataset, Features, Value

from utils.arguments import DataTrainingArguments


def label_array(dataset: Dataset) -> np.ndarray:
    """The `labels` column as integers, read from the Arrow table (no image is decoded)."""
    return np.asarray(dataset.select_columns(["labels"]).with_format("arrow")[:]["labels"], dtype=np.int64)


def held_out_rows(train: Dataset, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """The rows of `train` kept for training and those held out: exactly `train.train_test_split(test_size=fraction,
    seed=seed, stratify_by_column="labels")`, drawn on the row numbers so that they can be fingerprinted."""
    features = Features({"row": Value("int64"), "labels": train.features["labels"]})
    rows = Dataset.from_dict({"row": np.arange(len(train)), "labels": label_array(train)}, features=features)
    parts = rows.train_test_split(test_size=fraction, seed=seed, stratify_by_column="labels")
    return list(parts["train"]["row"]), list(parts["test"]["row"])


def digest(values: Any) -> str:
    """sha256 of a sequence of integers."""
    return hashlib.sha256(np.asarray(values, dtype=np.int64).tobytes()).hexdigest()


def dataset_arguments(data_args: DataTrainingArguments) -> str:
    """The arguments that name the training data: the dataset (and its configuration), or the train folder."""
    if data_args.dataset_name is not None:
        config = f" --dataset_config_name {data_args.dataset_config_name}" if data_args.dataset_config_name else ""
        return f"--dataset_name {data_args.dataset_name}{config}"
    return f"--train_dir {os.path.realpath(data_args.train_dir)}"


def split_record(data_args: DataTrainingArguments, pool: Dataset, validation_from_train: bool,
                 held_out: list[int] | None, seed: int) -> dict[str, Any]:
    """What a run's train split is and which of its rows are held out for calibration: `pool` is the train split
    before the hold-out, `held_out` the held-out row numbers (None without `--calibration_split`)."""
    return {
        "dataset": dataset_arguments(data_args),
        "train_rows": len(pool),
        "labels_sha256": digest(label_array(pool)),
        "validation_split": data_args.train_val_split if validation_from_train else None,
        "calibration_split": data_args.calibration_split if held_out is not None else 0.0,
        "split_seed": seed,
        "calibration_sha256": digest(sorted(held_out)) if held_out is not None else None,
    }
