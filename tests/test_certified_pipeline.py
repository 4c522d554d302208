"""Certified thresholds through run_classification.py: temperatures fitted on one part of the calibration split,
thresholds certified on the rest for two budgets sharing the risk level, the first budget's saved with the model,
and every certificate in analysis_results.json."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pipeline_helpers import digits_split, read_json, run_args
from test_analysis_pipeline import write_config_with_exits

import run_classification
from utils.data.image_dataset import collate_fn


@pytest.fixture(scope="module")
def certified_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Train a tiny model with exits, scale its exits and certify a 5-point and a 10-point budget, sharing risk
    level 0.1; the model keeps the 5-point setting."""
    directory = tmp_path_factory.mktemp("certified")
    args = run_args(directory / "run", config_name=write_config_with_exits(directory), max_steps=80,
                    learning_rate=3e-3, per_device_train_batch_size=32, max_train_samples=None,
                    exit_strategy="confidence", calibration_split=0.2, max_accuracy_drop=5.0, risk_level=0.1,
                    temperature_split=0.3, extra_budgets=[10.0])
    run_classification.main(args)
    return directory / "run"


def test_certificate_and_temperatures_are_reported_and_saved(certified_run: Path) -> None:
    report = read_json(certified_run / "analysis_results.json")
    config = read_json(certified_run / "config.json")
    assert report["certified"] and report["target"] == ("certified accuracy drop <= 5 points at risk level 0.1 "
                                                        "shared by 2 budgets")
    assert config["threshold"] == report["threshold"] and config["exit_strategy"] == report["strategy"] == "confidence"
    assert report["exit_fit_samples"] == 92 and report["calibration_samples"] == 306 - 92
    assert report["calibration_errors"] <= report["critical_errors"] and report["certified_risk_bound"] <= 5.0
    made = read_json(certified_run / "certifications.json")  # the record a later certification here warns from
    assert len(made) == 1 and made[0]["max_accuracy_drop"] == 5.0 and made[0]["calibration_samples"] == 306 - 92
    assert made[0]["other_budgets"] == [10.0] and made[0]["budgets"] == 2
    (other,) = report["other_budgets"]  # the other budget, certified on the same images, reported beside it
    assert other["max_accuracy_drop"] == 10.0 and other["calibration_samples"] == 306 - 92
    assert other["critical_errors"] >= report["critical_errors"] and other["threshold"] <= report["threshold"]
    assert len(report["exit_temperatures"]) == len(report["exit_ece_before"]) == len(report["exit_ece_after"]) == 3
    assert all(temperature != 1.0 for temperature in report["exit_temperatures"])
    assert isinstance(report["accuracy_drop_within_budget"], bool) and report["max_accuracy_drop"] == 5.0


def test_the_saved_model_makes_the_certified_number_of_errors_online(certified_run: Path) -> None:
    """Independently: the saved model (temperatures folded in, certified thresholds in its config), run with online
    early exit on the images that certified, errs exactly as often as the certificate says."""
    report = read_json(certified_run / "analysis_results.json")
    model, calibration = digits_split(certified_run, "calibration", calibration_split=0.2)
    certifying = torch.randperm(len(calibration), generator=torch.Generator().manual_seed(0))[92:]
    batch = collate_fn([calibration[int(i)] for i in certifying])
    images = calibration.normalization(batch["pixel_values"])
    with torch.no_grad():
        early = model(images).logits.argmax(-1)
        final = model(images, early_exit=False).final_logits.argmax(-1)
    labels = batch["labels"]
    assert int(((early != labels) & (final == labels)).sum()) == report["calibration_errors"]


def test_check_only_refuses_a_split_too_small_to_certify_and_writes_nothing(tmp_path: Path) -> None:
    """`--check_only True` stops before any model is built: with an error for 77 calibration digits (one point at
    risk level 0.1 needs 230), with nothing for 306."""
    config = write_config_with_exits(tmp_path)
    budget = {"config_name": config, "max_accuracy_drop": 1.0, "risk_level": 0.1, "check_only": True}
    with pytest.raises(ValueError, match="The calibration split has 77 images, too few to certify"):
        run_classification.main(run_args(tmp_path / "small", calibration_split=0.05, **budget))
    assert run_classification.main(run_args(tmp_path / "large", calibration_split=0.2, **budget)) == {}
    assert not (tmp_path / "small").exists() and not (tmp_path / "large").exists()
