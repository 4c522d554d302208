"""Parity with the original LGViT code on the Swin fixture cases (tests/fixtures/original/swin_*).

Tolerances are the fixtures' own: atol 1e-5 / rtol 1e-4 for logits and features, exact exit layers. Exit decisions
are computed with the six inputs as ONE batch and compared with the original's batch-size-1 runs, after fixing the
original's off-by-one: its reported exit layer + 1 for every early exit (values below the 12 blocks).
"""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from models import SwinHighwayForImageClassification
from utils.convert_original_checkpoint import convert

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "original"
CASES = json.loads((FIXTURES / "swin_cases.json").read_text())
INPUTS = load_file(FIXTURES / "inputs.safetensors")
TOLERANCE = {"atol": 1e-5, "rtol": 1e-4}
NUM_LAYERS = 12


def converted(case: str) -> SwinHighwayForImageClassification:
    return convert(CASES[case]["original_config"], load_file(FIXTURES / f"{case}.weights.safetensors"))


def corrected_exit_layers(reported: list[int]) -> list[int]:
    return [layer + 1 if layer < NUM_LAYERS else layer for layer in reported]


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_and_features(case):
    model = converted(case).eval()
    assert isinstance(model, SwinHighwayForImageClassification)
    expected = load_file(FIXTURES / f"{case}.expected.safetensors")
    with torch.no_grad():
        outputs = model(INPUTS["pixel_values"], early_exit=False)
    assert model.config.exit_positions() == [4, 5, 6, 7, 8, 9, 10, 11]
    torch.testing.assert_close(outputs.final_logits, expected["final_logits"], **TOLERANCE)
    assert len(outputs.exit_logits) == CASES[case]["num_exits"]
    for index, (logits, feature) in enumerate(zip(outputs.exit_logits, outputs.exit_features)):
        assert list(feature.shape) == CASES[case]["feature_shapes"][index]
        torch.testing.assert_close(logits, expected[f"exit{index}_logits"], **TOLERANCE)
        torch.testing.assert_close(feature, expected[f"exit{index}_feature"], **TOLERANCE)


def test_lgvit_case_uses_the_original_swin_layout():
    assert [spec.name for spec in converted("swin_lgvit").config.head_specs()] == [
        "conv1_1", "conv1_1", "conv2_1", "conv2_1", "attention_r1", "attention_r1", "attention_r2", "attention_r2"]


@pytest.mark.parametrize("case", sorted(CASES))
def test_exit_decisions_in_one_batch_with_1_based_layers(case):
    model = converted(case).eval()
    expected = load_file(FIXTURES / f"{case}.expected.safetensors")
    for index, decision in enumerate(CASES[case]["decisions"]):
        model.config.exit_strategy = decision["exit_strategy"]
        model.config.threshold = decision["thresholds"]
        with torch.no_grad():
            outputs = model(INPUTS["pixel_values"])
        assert outputs.exit_layer.tolist() == corrected_exit_layers(decision["exit_layer_as_reported_by_original"])
        torch.testing.assert_close(outputs.logits, expected[f"decision{index}_logits"], **TOLERANCE)


def test_weighted_loss_uses_the_real_global_exit_layers():
    model = converted("swin_linear").train()
    model.config.train_strategy = "weighted"
    outputs = model(INPUTS["pixel_values"], labels=INPUTS["labels"])
    layers = model.config.exit_positions() + [NUM_LAYERS]
    losses = [F.cross_entropy(logits, INPUTS["labels"]) for logits in (*outputs.exit_logits, outputs.final_logits)]
    expected = sum(layer * loss for layer, loss in zip(layers, losses)) / sum(layers)
    assert outputs.loss.item() == pytest.approx(expected.item(), rel=1e-5)
