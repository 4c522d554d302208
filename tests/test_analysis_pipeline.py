"""The evaluation's analysis through run_classification.py: calibration on the held-out split, saved thresholds,
one-pass sweep equal to the online evaluation, FLOPs metrics, measured speed-up, figures; and its input checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import wandb
from pipeline_helpers import TINY_CONFIG, read_json, run_args

import run_classification
from models import DeiTHighwayForImageClassification
from utils.analysis.report import check_analysis_request
from utils.arguments import AnalysisArguments, DataTrainingArguments, parse_arguments
from utils.data.image_dataset import ImageDataset, collate_fn
from utils.data.loading import load_datasets
from utils.data.transforms import Normalization, build_transforms, image_normalization

FIGURES = ("tradeoff.png", "tradeoff_layers.png", "exit_accuracy.png", "exit_histogram.png")


def write_config_with_exits(directory: Path) -> str:
    path = directory / "tiny_exits.json"
    path.write_text(json.dumps({**TINY_CONFIG, "highway_type": "LGViT", "num_early_exits": 3,
                                "position_exits": [1, 2, 3], "train_strategy": "weighted"}))
    return str(path)


@pytest.fixture(scope="module")
def calibrated_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """Train a tiny model with exits, calibrate for a layer speed-up of 1.6, evaluate, sweep, time."""
    directory = tmp_path_factory.mktemp("analysis")
    args = run_args(directory / "run", config_name=write_config_with_exits(directory), max_steps=12,
                    max_train_samples=None, calibration_split=0.2, target_speedup=1.6, calibration_speedup="layer",
                    sweep=True, measure_speedup=True, speed_samples=16, speed_repeats=1)
    metrics = run_classification.main(args)
    return directory / "run", metrics


def test_calibrated_thresholds_are_saved_and_meet_the_target_on_the_held_out_split(calibrated_run) -> None:
    output, _ = calibrated_run
    report = read_json(output / "analysis_results.json")
    config = read_json(output / "config.json")
    assert config["threshold"] == report["threshold"] and config["exit_strategy"] == report["strategy"]
    assert report["target"] == "layer speed-up >= 1.6" and report["target_met_on_calibration"]

    # Independently: the saved model, run with online early exit on the calibration split, reaches the target.
    model = DeiTHighwayForImageClassification.from_pretrained(output).eval()
    data = load_datasets(DataTrainingArguments(dataset_name="digits", calibration_split=0.2), seed=777)
    _, eval_transform = build_transforms(model.config.image_size)
    normalization = Normalization(*image_normalization(str(output)))
    calibration = ImageDataset(data["calibration"], eval_transform, normalization)
    batch = collate_fn([calibration[i] for i in range(len(calibration))])
    with torch.no_grad():
        exit_layer = model(normalization(batch["pixel_values"])).exit_layer
    assert TINY_CONFIG["num_hidden_layers"] / exit_layer.double().mean().item() >= 1.6 - 1e-9
    # The held-out part is out of the training split, and training used the rest.
    assert read_json(output / "train_results.json")["train_samples"] == len(data["train"])
    full = load_datasets(DataTrainingArguments(dataset_name="digits"), seed=777)
    assert len(data["train"]) + len(data["calibration"]) == len(full["train"])


def test_sweep_report_equals_the_online_evaluation(calibrated_run) -> None:
    output, metrics = calibrated_run
    report = read_json(output / "analysis_results.json")
    assert report["accuracy"] == pytest.approx(metrics["eval_accuracy"], abs=1e-9)
    assert report["average_exit_layer"] == pytest.approx(metrics["eval_average_exit_layer"], abs=1e-9)
    assert report["layer_speedup"] == pytest.approx(metrics["eval_speed-up"], abs=1e-9)
    assert report["flops_speedup"] == pytest.approx(metrics["eval_flops_speedup"], rel=1e-9)
    assert metrics["eval_exit_head_parameters"] == report["flops"]["head_parameters"] > 0
    # FLOPs speed-up counts the heads: below the layer ratio whenever samples leave early.
    assert report["flops_speedup"] < report["layer_speedup"]
    assert report["measured_speedup"] > 0 and report["timed_images"] == 16
    sweep = read_json(output / "sweep.json")
    assert set(sweep["curves"]) == {"entropy", "confidence", "patience", "patient_and_confident"}
    assert sweep["samples"] == metrics["eval_samples"] and sweep["exit_layers"] == [1, 2, 3]
    for name in FIGURES:
        assert (output / name).stat().st_size > 5000, name


def test_analysis_requests_are_checked_before_training() -> None:
    with pytest.raises(ValueError, match="need a model with exits"):
        check_analysis_request(AnalysisArguments(sweep=True), num_exits=0, calibration_split=0.1)
    with pytest.raises(ValueError, match="--calibration_split"):
        check_analysis_request(AnalysisArguments(max_accuracy_drop=1.0), num_exits=3, calibration_split=0.0)
    with pytest.raises(ValueError, match="not both"):
        AnalysisArguments(target_speedup=2.0, max_accuracy_drop=1.0)
    with pytest.raises(ValueError, match="calibration_strategy"):
        AnalysisArguments(target_speedup=2.0, calibration_strategy="margin")
    with pytest.raises(ValueError, match="calibration_split"):
        DataTrainingArguments(dataset_name="digits", calibration_split=1.5)


def test_a_run_without_a_calibration_split_fails_before_training(tmp_path: Path) -> None:
    args = run_args(tmp_path / "run", config_name=write_config_with_exits(tmp_path), target_speedup=2.0)
    with pytest.raises(ValueError, match="--calibration_split"):
        run_classification.main(args)
    assert not (tmp_path / "run").exists()


def test_later_argument_files_override_earlier_ones(tmp_path: Path) -> None:
    first, second = tmp_path / "dataset.yaml", tmp_path / "method.json"
    first.write_text("dataset_name: digits\nexit_strategy: confidence\nthreshold: 0.8\nsweep: true\n")
    second.write_text(json.dumps({"exit_strategy": "patience", "patience": 4}))
    model_args, data_args, analysis_args, _ = parse_arguments(
        [str(first), str(second), "--config_name", "c.json", "--patience", "5", "--output_dir", str(tmp_path)])
    assert model_args.config_overrides() == {"exit_strategy": "patience", "threshold": 0.8, "patience": 5}
    assert data_args.dataset_name == "digits" and analysis_args.sweep


def test_figures_reach_an_offline_wandb_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With --report_to wandb and no account, the run logs offline; the analysis figures are part of it."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    args = run_args(tmp_path / "run", config_name=write_config_with_exits(tmp_path), report_to="wandb", sweep=True,
                    run_name="analysis-test")
    try:
        run_classification.main(args)
    finally:
        wandb.finish()
    media = tmp_path.glob("wandb/offline-run-*/files/media/images/analysis/*.png")
    logged = {path.name.rsplit("_", 2)[0] for path in media}  # wandb names them <key>_<step>_<hash>.png
    assert logged == {Path(name).stem for name in FIGURES}
