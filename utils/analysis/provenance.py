"""The precondition of calibrated and certified thresholds: the calibration images were never trained on.

A model trained by run_classification.py keeps in its config (`training_data`) one record per training stage: the
train split and the calibration rows that stage held out (`utils.data.provenance.split_record`). A calibrating run
compares its own split with every stage's and refuses, before any work, a calibration split that some stage may
have trained on; a model without records calibrates with a warning.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

# Fields of a split record that must agree, in the order they are explained, with what a difference means.
AGREEING_FIELDS = (
    ("dataset", "training data"),
    ("train_rows", "number of train images (before the hold-out)"),
    ("labels_sha256", "train images: their labels in order differ (another version or order of the dataset)"),
    ("validation_split", "--train_val_split (the evaluation split held out of train)"),
    ("calibration_split", "--calibration_split"),
    ("split_seed", "split seed (fixed in utils/data/loading.py, SPLIT_SEED; --seed does not change it)"),
    ("calibration_sha256", "held-out rows (same arguments, but another rule drew them)"),
)


def split_arguments(record: dict[str, Any]) -> str:
    """The arguments that give a run the split of `record`."""
    parts = [record["dataset"]]
    if record.get("validation_split") is not None:
        parts.append(f"--train_val_split {record['validation_split']:g}")
    parts.append(f"--calibration_split {record['calibration_split']:g}")
    return " ".join(parts)


def stage_difference(stage: dict[str, Any], split: dict[str, Any]) -> str | None:
    """How a stage's split differs from this run's, in words; None when this run's calibration rows are the ones
    the stage held out."""
    if stage.get("calibration_sha256") is None:
        return "it trained on the whole train split (no --calibration_split)"
    for key, meaning in AGREEING_FIELDS:
        if stage.get(key) != split[key]:
            return f"its {meaning} differs: {stage.get(key)!r} there, {split[key]!r} in this run"
    return None


def refusal(number: int, training_data: list[dict[str, Any]], split: dict[str, Any], difference: str) -> str:
    """Why a calibration is refused and how to fix it."""
    stage = training_data[number - 1]
    name = (f"training stage {number} of {len(training_data)} (train_strategy {stage.get('train_strategy')}, "
            f"saved to {stage.get('output_dir')})")
    retrain = f"retrain stage {number} and every stage after it with {split_arguments(split)}"
    if stage.get("calibration_sha256") is None or stage.get("split_seed") != split["split_seed"]:
        fix = f"To calibrate, {retrain}."
    else:
        fix = f"Calibrate with the arguments that stage used ({split_arguments(stage)}), or {retrain}."
    return (f"This run would calibrate exit thresholds on images the model may have trained on: {name} did not "
            f"hold out this run's calibration images; {difference}. {fix}")


def check_calibration_data(training_data: list[dict[str, Any]] | None, split: dict[str, Any] | None) -> None:
    """Refuse a calibration split that a recorded training stage did not hold out; warn when the model records
    none. `split` is this run's record (None without a train split: nothing to compare)."""
    if split is None:
        return
    if not training_data:
        logger.warning("The model records no training data (weights trained elsewhere or by an older version): the "
                       "calibrated thresholds, and any certificate, assume that none of the calibration images was "
                       "ever trained on, which you must ensure (retrain every stage with %s to have it checked).",
                       split_arguments(split))
        return
    for number, stage in enumerate(training_data, 1):
        difference = stage_difference(stage, split)
        if difference is not None:
            raise ValueError(refusal(number, training_data, split, difference))
    if training_data[0].get("started_from"):
        logger.info("Training stage 1 started from %s, which records no training data of its own: the guarantee "
                    "assumes it never trained on these calibration images (pretraining on another dataset is fine).",
                    training_data[0]["started_from"])
