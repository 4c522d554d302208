"""Calibration only on images no training stage saw: every stage records its split in the saved config, and a
calibrating run refuses a split that a recorded stage did not hold out (and warns for a model without records)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value
from pipeline_helpers import read_json, run_args, stage1_args, write_tiny_config

import run_classification
from utils.analysis.provenance import check_calibration_data
from utils.arguments import DataTrainingArguments
from utils.data.loading import SPLIT_SEED, hold_out_calibration, load_datasets_with_record
from utils.data.provenance import split_record

DIGITS_SPLIT = "--dataset_name digits --train_val_split 0.15 --calibration_split 0.2"


def digits_record(**data_fields: Any) -> dict[str, Any]:
    """The split record of a digits run with `data_fields`."""
    return load_datasets_with_record(DataTrainingArguments(dataset_name="digits", **data_fields), seed=777)[1]


def digits_pool() -> Dataset:
    """The digits train split before any hold-out."""
    return load_datasets_with_record(DataTrainingArguments(dataset_name="digits"), seed=777)[0]["train"]


@pytest.fixture(scope="module")
def split() -> dict[str, Any]:
    return digits_record(calibration_split=0.2)


def stages(split: dict[str, Any], **second_stage_changes: Any) -> list[dict[str, Any]]:
    """A base stage and a stage 1 that held out `split`, the second changed by `second_stage_changes`."""
    base = {"train_strategy": "normal", "num_exits": 0, "output_dir": "out/base", "started_from": None, **split}
    stage1 = {**base, "train_strategy": "alternating_weighted", "num_exits": 3, "output_dir": "out/stage1",
              "started_from": "out/base", **second_stage_changes}
    return [base, stage1]


def test_the_hold_out_draws_the_rows_train_test_split_drew() -> None:
    """Checkpoints calibrated before the rows were recorded keep their calibration split."""
    features = Features({"row": Value("int64"), "labels": ClassLabel(names=["a", "b", "c"])})
    train = Dataset.from_dict({"row": list(range(90)), "labels": [i % 3 for i in range(90)]}, features=features)
    expected = train.train_test_split(test_size=0.2, seed=SPLIT_SEED, stratify_by_column="labels")
    dataset, held_out = hold_out_calibration(DatasetDict({"train": train}), 0.2)
    assert dataset["calibration"]["row"] == expected["test"]["row"] == held_out
    assert dataset["train"]["row"] == expected["train"]["row"]


def test_the_record_names_the_split(split: dict[str, Any]) -> None:
    assert split["dataset"] == "--dataset_name digits" and split["train_rows"] == 1527
    assert split["validation_split"] == 0.15 and split["calibration_split"] == 0.2 and split["split_seed"] == 777
    assert split["calibration_sha256"] == digits_record(calibration_split=0.2, max_train_samples=50)[
        "calibration_sha256"] != digits_record(calibration_split=0.1)["calibration_sha256"]
    assert digits_record()["calibration_sha256"] is None and digits_record()["calibration_split"] == 0.0


def test_the_fingerprint_names_the_held_out_rows_in_any_order() -> None:
    args, pool = DataTrainingArguments(dataset_name="digits", calibration_split=0.2), digits_pool()
    first, again, other = (split_record(args, pool, True, rows, SPLIT_SEED)["calibration_sha256"]
                           for rows in ([0, 1, 2], [2, 0, 1], [0, 1, 3]))
    assert first == again != other


def test_the_same_split_passes(split: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        check_calibration_data(stages(split), split)
    assert "WARNING" not in [record.levelname for record in caplog.records]


@pytest.mark.parametrize("changes, reason, fix", [
    ({"calibration_split": 0.1, "calibration_sha256": "0" * 64}, "--calibration_split differs: 0.1 there, 0.2",
     "Calibrate with the arguments that stage used (--dataset_name digits --train_val_split 0.15 "
     "--calibration_split 0.1), or retrain stage 2"),
    ({"split_seed": 1}, "split seed", f"To calibrate, retrain stage 2 and every stage after it with {DIGITS_SPLIT}."),
    ({"dataset": "--train_dir /data/digits"}, "training data differs", "(--train_dir /data/digits --train_val_split"),
    ({"labels_sha256": "0" * 64}, "another version or order of the dataset", "or retrain stage 2"),
    ({"validation_split": 0.3}, "--train_val_split", "--train_val_split 0.3 --calibration_split 0.2), or retrain"),
    ({"calibration_split": 0.0, "calibration_sha256": None}, "trained on the whole train split",
     f"To calibrate, retrain stage 2 and every stage after it with {DIGITS_SPLIT}."),
])
def test_a_stage_that_did_not_hold_out_this_split_is_refused(split: dict[str, Any], changes: dict[str, Any],
                                                             reason: str, fix: str) -> None:
    with pytest.raises(ValueError) as refused:
        check_calibration_data(stages(split, **changes), split)
    message = str(refused.value)
    assert "training stage 2 of 2 (train_strategy alternating_weighted, saved to out/stage1)" in message
    assert reason in message and fix in message


def test_a_model_without_records_calibrates_with_a_warning(split: dict[str, Any],
                                                           caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        check_calibration_data(None, split)
    assert "assume that none of the calibration images was ever trained on" in caplog.text
    assert DIGITS_SPLIT in caplog.text


def test_base_and_stage1_record_their_split_and_a_mismatch_stops_before_any_work(tmp_path: Path) -> None:
    """The base and stage 1 record their split (stage 1 after the base's); an evaluation that would calibrate on
    other rows stops at --check_only, one on the same rows passes it."""
    base, stage1 = tmp_path / "base", tmp_path / "stage1"
    run_classification.main(run_args(base, config_name=write_tiny_config(tmp_path), do_eval=False, max_steps=1,
                                     calibration_split=0.2))
    run_classification.main(stage1_args(stage1, base, do_eval=False, max_steps=1, calibration_split=0.2))
    records = read_json(stage1 / "config.json")["training_data"]
    assert [(r["output_dir"], r["started_from"], r["num_exits"]) for r in records] == [
        (str(base), None, 0), (str(stage1), str(base), 3)]
    assert records[0] == read_json(base / "config.json")["training_data"][0]
    assert records[0]["calibration_sha256"] == records[1]["calibration_sha256"] is not None
    evaluation = {"model_name_or_path": str(stage1), "do_train": False, "max_accuracy_drop": 5.0,
                  "check_only": True}
    assert run_classification.main(run_args(tmp_path / "same", calibration_split=0.2, **evaluation)) == {}
    with pytest.raises(ValueError, match=f"training stage 1 of 2 .*retrain stage 1 .*{DIGITS_SPLIT}"):
        run_classification.main(run_args(tmp_path / "other", calibration_split=0.25, **evaluation))
