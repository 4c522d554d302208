"""Threshold calibration meets its target on the held-out samples it was chosen on, and the config keeps it."""

import pytest
import torch
from analysis_helpers import images, synthetic_cache, synthetic_profile, tiny_model

from models import DeiTHighwayForImageClassification
from utils.analysis.calibration import calibrate, evaluation_report, write_exit_settings
from utils.analysis.flops import count_flops, profile_flops
from utils.analysis.sweep import collect_logits, evaluate_settings, sweep_criterion

CRITERIA = ["entropy", "confidence", "patience", "patient_and_confident"]


@pytest.fixture(scope="module")
def splits():
    """A calibration part and an evaluation part of synthetic logits (later exits more accurate)."""
    return synthetic_cache(num_samples=1200).split(0.5, seed=0)


@pytest.mark.parametrize("criterion", CRITERIA)
@pytest.mark.parametrize("kind", ["flops", "layer"])
@pytest.mark.parametrize("target", [1.5, 2.5])
def test_speedup_target_is_met_by_the_most_accurate_setting(splits, criterion, kind, target):
    held_out, _ = splits
    profile = synthetic_profile()
    result = calibrate(held_out, profile, criterion, target_speedup=target, speedup=kind, num_thresholds=41)
    assert result.met and result.point.speedup(kind) >= target
    again = evaluate_settings(held_out, result.settings, profile)  # re-evaluated from the chosen settings
    assert again == result.point
    candidates = sweep_criterion(held_out, profile, criterion, num_thresholds=41)
    assert result.point.accuracy == max(p.accuracy for p in candidates if p.speedup(kind) >= target)


@pytest.mark.parametrize("criterion", CRITERIA)
@pytest.mark.parametrize("drop", [0.5, 2.0, 10.0])
def test_accuracy_target_is_met_by_the_fastest_setting(splits, criterion, drop):
    held_out, evaluation = splits
    profile = synthetic_profile()
    result = calibrate(held_out, profile, criterion, max_accuracy_drop=drop, num_thresholds=41)
    assert result.met and result.final_accuracy == held_out.final_accuracy()
    assert 100 * (result.final_accuracy - result.point.accuracy) <= drop + 1e-9
    candidates = sweep_criterion(held_out, profile, criterion, num_thresholds=41)
    floor = held_out.final_accuracy() - drop / 100
    assert result.point.flops_speedup == max(p.flops_speedup for p in candidates if p.accuracy >= floor - 1e-9)
    report = evaluation_report(evaluation, profile, result.settings, result)
    assert report["samples"] == len(evaluation) and report["target_met_on_calibration"]
    assert report["accuracy_drop"] == pytest.approx(100 * (report["final_accuracy"] - report["accuracy"]))
    if criterion != "patience" and drop >= 2.0:
        assert report["flops_speedup"] > 1.0  # a looser budget buys real savings on unseen samples too


def test_unreachable_targets_give_the_closest_setting(splits):
    held_out, _ = splits
    profile = synthetic_profile()
    fastest = calibrate(held_out, profile, "confidence", target_speedup=100.0)
    assert not fastest.met and fastest.point.average_exit_layer == 1
    with pytest.raises(ValueError, match="exactly one"):
        calibrate(held_out, profile, "confidence")
    with pytest.raises(ValueError, match="exactly one"):
        calibrate(held_out, profile, "confidence", target_speedup=2.0, max_accuracy_drop=1.0)


@pytest.mark.parametrize("criterion", CRITERIA)
def test_calibrated_model_meets_the_target_online_and_saves_it(tmp_path, criterion):
    model = tiny_model()
    held_out = images(64, seed=5)
    labels = torch.randint(0, 5, (64,), generator=torch.Generator().manual_seed(6))
    cache = collect_logits(model, [(held_out, labels)])
    profile = profile_flops(model)
    result = calibrate(cache, profile, criterion, target_speedup=1.3)
    assert result.met
    write_exit_settings(model.config, result.settings)
    assert model.config.exit_strategy == criterion
    counted, online = count_flops(model, held_out)  # the model now exits with the calibrated settings
    assert profile.full_model * 64 / counted == pytest.approx(result.point.flops_speedup)
    assert profile.full_model * 64 / counted >= 1.3
    assert (online.logits.argmax(-1) == labels).double().mean().item() == pytest.approx(result.point.accuracy)
    model.save_pretrained(tmp_path)
    loaded = DeiTHighwayForImageClassification.from_pretrained(tmp_path).eval()
    assert loaded.config.exit_settings() == model.config.exit_settings()
    with torch.no_grad():
        assert loaded(held_out).exit_layer.tolist() == online.exit_layer.tolist()


def test_written_thresholds_are_compact_and_checked():
    config = tiny_model().config
    settings = calibrate(synthetic_cache(num_exits=6), synthetic_profile(), "confidence",
                         target_speedup=2.0).settings
    write_exit_settings(config, settings)
    assert isinstance(config.threshold, float)  # one shared value, stored as one float
    per_exit = settings.__class__("entropy", (0.1, 0.2, 0.3, 0.4, 0.5, 0.6), 1)
    write_exit_settings(config, per_exit)
    assert config.threshold == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6] and config.exit_strategy == "entropy"
    with pytest.raises(ValueError, match="between 0 and 1"):
        write_exit_settings(config, settings.__class__("confidence", (1.5,) * 6, 1))
    assert config.exit_strategy == "entropy" and config.threshold == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
