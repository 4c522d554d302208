"""Exit criteria are one registry: a criterion registered here, in the test alone, gets online early exit (also in
the exported onnxruntime graph), sweeps, calibration and reports; scores are stable for logits of any size and
precision."""

import math

import pytest
import torch
from analysis_helpers import images, synthetic_cache, synthetic_profile, tiny_model

from models.criteria import ExitCriterion, confidence, entropy, get_criterion, register_criterion, unregister_criterion
from models.exit_settings import ExitSettings
from models.exiting import decide_from_logits
from utils.analysis.calibration import calibrate, write_exit_settings
from utils.analysis.compare_methods import exit_rule
from utils.analysis.flops import count_flops, profile_flops
from utils.analysis.sweep import collect_logits, evaluate_settings, sweep, sweep_criterion
from utils.export import EarlyExitSession, export_onnx


def top_two_margin(logits: torch.Tensor) -> torch.Tensor:
    """Difference of the two largest softmax probabilities (a criterion this project does not ship)."""
    top = torch.softmax(logits.float(), dim=-1).topk(2, dim=-1).values
    return top[:, 0] - top[:, 1]


@pytest.fixture
def margin():
    criterion = register_criterion(ExitCriterion(name="margin", rule="threshold", score=top_two_margin,
                                                 score_name="margin", threshold_range=(0.0, 1.0),
                                                 default_threshold=0.5))
    yield criterion
    unregister_criterion("margin")


def expected_exits(exit_logits: list[torch.Tensor], final: torch.Tensor, thresholds: list[float],
                   layers: list[int], num_blocks: int) -> tuple[list[int], torch.Tensor]:
    """Per sample, the first exit whose margin exceeds its threshold, written out without the registry."""
    exit_layer, logits = [], final.clone()
    for row in range(final.shape[0]):
        layer = num_blocks
        for index, exit_logits_k in enumerate(exit_logits):
            probabilities = sorted(torch.softmax(exit_logits_k[row], -1).tolist(), reverse=True)
            if probabilities[0] - probabilities[1] > thresholds[index]:
                layer, logits[row] = layers[index], exit_logits_k[row]
                break
        exit_layer.append(layer)
    return exit_layer, logits


def test_a_registered_criterion_exits_online_in_a_batch(margin, tmp_path):
    model = tiny_model(exit_strategy="margin")
    pixel_values = images(24)
    with torch.no_grad():
        every = model(pixel_values, early_exit=False)
    margins = torch.stack([top_two_margin(logits) for logits in every.exit_logits])
    thresholds = margins.quantile(0.6, dim=1).tolist()
    model.config.threshold = thresholds
    assert model.config.exit_settings() == ExitSettings("margin", tuple(thresholds), 1)
    with torch.no_grad():
        online = model(pixel_values)
    layers, logits = expected_exits(list(every.exit_logits), every.final_logits, thresholds,
                                    model.config.exit_positions(), model.config.num_blocks)
    assert online.exit_layer.tolist() == layers and len(set(layers)) >= 3
    torch.testing.assert_close(online.logits, logits)
    export_onnx(model, tmp_path, exporter="torchscript")  # the exported runtime decides with the same criterion
    exported_logits, exported_layers = EarlyExitSession(tmp_path)(pixel_values.numpy())
    assert exported_layers.tolist() == layers
    torch.testing.assert_close(torch.from_numpy(exported_logits), logits, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="margin thresholds are between 0 and 1"):
        model.config.threshold = 1.5
        model.config.exit_settings()


def test_a_registered_criterion_is_swept_calibrated_and_described(margin):
    model = tiny_model(exit_strategy="margin")
    pixel_values = images(48, seed=3)
    labels = torch.randint(0, 5, (48,), generator=torch.Generator().manual_seed(4))
    cache, profile = collect_logits(model, [(pixel_values, labels)]), profile_flops(model)
    curves = sweep(cache, profile, num_thresholds=11)
    assert set(curves) == {"entropy", "confidence", "patience", "patient_and_confident", "margin"}
    grid = [point.thresholds[0] for point in curves["margin"]]
    assert min(grid) == 0.0 and max(grid) == 1.0  # every sample leaves / none does
    calibration = calibrate(cache, profile, "margin", target_speedup=1.5)
    assert calibration.met and calibration.point.flops_speedup >= 1.5
    write_exit_settings(model.config, calibration.settings)
    counted, _ = count_flops(model, pixel_values)  # the online run with the calibrated setting
    assert profile.full_model * 48 / counted == pytest.approx(calibration.point.flops_speedup)
    row = {"criterion": "margin", "threshold": 0.25, "patience": 1}
    assert exit_rule(row) == "margin > 0.25"


def test_unknown_criteria_name_the_registered_ones():
    with pytest.raises(ValueError, match="allowed values: entropy, confidence, patience, patient_and_confident"):
        get_criterion("margin")
    with pytest.raises(ValueError, match="exit_strategy"):
        tiny_model(exit_strategy="gumbel_lte")
    with pytest.raises(ValueError, match="rule"):
        ExitCriterion(name="broken", rule="vote")


@pytest.mark.parametrize("rule, patience, expected", [
    ("agreement", 3, "3 exits in a row agree"),
    ("streak", 2, "2 exits in a row with entropy < 0.5"),
])
def test_counting_rules_describe_themselves(rule, patience, expected):
    name = {"agreement": "patience", "streak": "patient_and_confident"}[rule]
    assert get_criterion(name).rule == rule
    assert get_criterion(name).describe(0.5, patience) == expected


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_scores_are_finite_and_exact_for_logits_of_any_size(dtype):
    """The original formula, log(sum e^x) - sum(x e^x)/sum(e^x), gives NaN once e^x overflows."""
    logits = torch.tensor([[200.0, 0.0, 0.0], [12.0, 11.0, -3.0], [0.0, 0.0, 0.0]]).to(dtype)
    values = entropy(logits)
    assert values.dtype == torch.float32 and torch.isfinite(values).all()
    probabilities = torch.softmax(logits.double(), -1)
    reference = -(probabilities * probabilities.clamp_min(1e-300).log()).sum(-1)
    torch.testing.assert_close(values.double(), reference, atol=1e-2 if dtype != torch.float32 else 1e-6, rtol=1e-2)
    assert values[2].item() == pytest.approx(math.log(3), rel=1e-6)
    assert confidence(logits)[0].item() == 1.0
    exits = get_criterion("entropy").passes(logits, 0.6)  # entropies 0, 0.58, log 3
    assert exits.tolist() == [True, True, False]


def test_decisions_on_cached_logits_follow_the_registry(margin):
    cache, profile = synthetic_cache(), synthetic_profile()
    settings = ExitSettings("margin", (0.3,) * cache.num_exits, 1)
    decisions = decide_from_logits(settings, list(cache.exit_logits), cache.final_logits, cache.exit_layers,
                                   cache.num_blocks)
    layers, _ = expected_exits(list(cache.exit_logits), cache.final_logits, list(settings.thresholds),
                               list(cache.exit_layers), cache.num_blocks)
    assert decisions.exit_layer.tolist() == layers
    point = evaluate_settings(cache, settings, profile)
    assert point.average_exit_layer == pytest.approx(sum(layers) / len(layers))
    assert len(sweep_criterion(cache, profile, "margin", num_thresholds=5)) >= 5
