"""Checks before training starts (labels, output dir, arguments), the wandb fallback and the exit metrics."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from pipeline_helpers import TINY_CONFIG, run_args

import run_classification
from models import DeiTHighwayConfig, DeiTHighwayForImageClassification
from utils.analysis.metrics import exit_metrics
from utils.arguments import ModelArguments, parse_arguments
from utils.training.logging_setup import configure_wandb


@pytest.fixture
def five_class_checkpoint(tmp_path: Path) -> Path:
    config = DeiTHighwayConfig(**{k: v for k, v in TINY_CONFIG.items() if k != "model_type"}, num_labels=5)
    DeiTHighwayForImageClassification(config).save_pretrained(tmp_path / "five")
    return tmp_path / "five"


def test_label_count_mismatch_points_at_the_flag(five_class_checkpoint: Path, tmp_path: Path) -> None:
    args = run_args(tmp_path / "out", model_name_or_path=str(five_class_checkpoint), max_steps=1)
    with pytest.raises(ValueError, match="classifies 5 classes but the dataset has 10.*--ignore_mismatched_sizes"):
        run_classification.main(args)
    metrics = run_classification.main({**args, "ignore_mismatched_sizes": True})
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert len(saved["id2label"]) == 10 and metrics["eval_samples"] == 45


def test_non_empty_output_dir_needs_overwrite(five_class_checkpoint: Path, tmp_path: Path) -> None:
    output = tmp_path / "out"
    output.mkdir()
    (output / "notes.txt").write_text("earlier work")
    args = run_args(output, model_name_or_path=str(five_class_checkpoint), ignore_mismatched_sizes=True,
                    max_steps=1, do_eval=False)
    with pytest.raises(ValueError, match="already exists and is not empty.*--overwrite_output_dir"):
        run_classification.main(args)
    run_classification.main({**args, "overwrite_output_dir": True})
    assert (output / "model.safetensors").is_file() and (output / "notes.txt").is_file()
    # Evaluation alone may write into a non-empty directory.
    run_classification.main({**args, "model_name_or_path": str(output), "do_train": False, "do_eval": True})


def test_argument_file_rejects_unknown_names(tmp_path: Path) -> None:
    path = tmp_path / "args.json"
    path.write_text(json.dumps({"dataset_name": "digits", "config_name": "x.json", "treshold": 0.8}))
    with pytest.raises(ValueError, match="treshold"):
        parse_arguments([str(path)])


def test_model_fields_in_their_original_forms() -> None:
    model_args, *_ = parse_arguments([
        "--model_name_or_path", "m", "--dataset_name", "digits", "--position_exits", "[4,5,6,7,8,9,10,11]",
        "--threshold", "0.8", "--num_early_exits", "8", "--homo_coefficient", "0.01", "--freeze_backbone", "True",
    ])
    assert model_args.config_overrides() == {
        "num_early_exits": 8, "position_exits": [4, 5, 6, 7, 8, 9, 10, 11], "threshold": 0.8,
        "homo_coefficient": 0.01, "freeze_backbone": True,
    }
    assert ModelArguments(model_name_or_path="m", threshold="0.5,0.6", position_exits="3, 4").config_overrides() == {
        "threshold": [0.5, 0.6], "position_exits": [3, 4],
    }
    with pytest.raises(ValueError, match="position_exits"):
        ModelArguments(model_name_or_path="m", position_exits="[4,5")


def test_unknown_flag_is_an_error() -> None:
    """A flag nobody knows (here a misspelling) stops the parse; the original scripts' flags are known
    (test_original_arguments.py)."""
    with pytest.raises(ValueError, match="train_higway"):
        parse_arguments(["--model_name_or_path", "m", "--dataset_name", "digits", "--train_higway", "True"])


@pytest.fixture
def no_wandb_login(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    netrc = tmp_path / "netrc"
    netrc.write_text("machine example.org login me password secret\n")
    monkeypatch.setenv("NETRC", str(netrc))
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    return netrc


def test_wandb_without_a_key_goes_offline(no_wandb_login: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        configure_wandb(["wandb"])
    assert os.environ["WANDB_MODE"] == "offline"
    assert "wandb sync" in caplog.text


@pytest.mark.parametrize("setting", ["api_key", "netrc", "mode", "not_reported"])
def test_wandb_left_alone(no_wandb_login: Path, monkeypatch: pytest.MonkeyPatch, setting: str) -> None:
    report_to = ["none"] if setting == "not_reported" else ["wandb"]
    if setting == "api_key":
        monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    if setting == "netrc":
        no_wandb_login.write_text("machine api.wandb.ai login user password " + "x" * 40 + "\n")
    if setting == "mode":
        monkeypatch.setenv("WANDB_MODE", "disabled")
    configure_wandb(report_to)
    assert os.environ.get("WANDB_MODE") == ("disabled" if setting == "mode" else None)


def test_exit_metrics() -> None:
    logits = np.eye(4)[[0, 1, 2, 3, 0]]
    metrics = exit_metrics(logits, np.array([1, 1, 3, 4, 4]), np.array([0, 1, 2, 0, 0]), num_blocks=4)
    assert metrics["accuracy"] == pytest.approx(0.8)
    assert [metrics[f"counts_exit_layer_{n}"] for n in range(1, 5)] == [2, 0, 1, 2]
    assert metrics["average_exit_layer"] == pytest.approx(2.6)
    assert metrics["speed-up"] == pytest.approx(4 / 2.6)
    with pytest.raises(ValueError, match="1..4"):
        exit_metrics(logits, np.array([0, 1, 2, 3, 4]), np.zeros(5), num_blocks=4)
