"""Parity with the original LGViT code on every DeiT/ViT fixture case (tests/fixtures/original).

Tolerances are the fixtures' own: atol 1e-5 / rtol 1e-4 for logits and features, rtol 1e-4 for losses, exact
exit layers. Exit decisions are computed with the six inputs as ONE batch and compared with the original's
batch-size-1 runs.
"""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from utils.convert_original_checkpoint import convert

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "original"
CASES = json.loads((FIXTURES / "deit_cases.json").read_text())
STAGE2 = json.loads((FIXTURES / "stage2_fixed.json").read_text())
INPUTS = load_file(FIXTURES / "inputs.safetensors")
TOLERANCE = {"atol": 1e-5, "rtol": 1e-4}


def converted(case: str):
    return convert(CASES[case]["original_config"], load_file(FIXTURES / f"{case}.weights.safetensors"))


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_and_features(case):
    model = converted(case).eval()
    expected = load_file(FIXTURES / f"{case}.expected.safetensors")
    with torch.no_grad():
        outputs = model(INPUTS["pixel_values"], early_exit=False)
    assert model.config.exit_positions() == CASES[case]["exit_layers_1based"]
    torch.testing.assert_close(outputs.final_logits, expected["final_logits"], **TOLERANCE)
    assert len(outputs.exit_logits) == CASES[case]["num_exits"]
    for index, (logits, feature) in enumerate(zip(outputs.exit_logits, outputs.exit_features)):
        torch.testing.assert_close(logits, expected[f"exit{index}_logits"], **TOLERANCE)
        torch.testing.assert_close(feature, expected[f"exit{index}_feature"], **TOLERANCE)


def apply_original_thresholds(config, strategy: str, thresholds: list[float]) -> None:
    """The original packs the patience count into its threshold list; this project keeps it apart."""
    config.exit_strategy = strategy
    if strategy == "patience":
        config.threshold, config.patience = None, int(thresholds[0])
    elif strategy == "patient_and_confident":
        config.threshold, config.patience = thresholds[:-1], int(thresholds[-1])
    else:
        config.threshold = thresholds


@pytest.mark.parametrize("case", sorted(CASES))
def test_exit_decisions_in_one_batch(case):
    model = converted(case).eval()
    expected = load_file(FIXTURES / f"{case}.expected.safetensors")
    for index, decision in enumerate(CASES[case]["decisions"]):
        apply_original_thresholds(model.config, decision["exit_strategy"], decision["thresholds"])
        with torch.no_grad():
            outputs = model(INPUTS["pixel_values"])
        assert outputs.exit_layer.tolist() == decision["exit_layer"], decision
        torch.testing.assert_close(outputs.logits, expected[f"decision{index}_logits"], **TOLERANCE)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("strategy", ["normal", "weighted", "alternating", "alternating_weighted", "distillation"])
def test_stage1_losses_on_two_successive_calls(case, strategy):
    model = converted(case)
    model.config.train_strategy = strategy
    model.train()
    losses = [model(INPUTS["pixel_values"], labels=INPUTS["labels"]).loss.item() for _ in range(2)]
    expected = CASES[case]["train_losses_two_successive_calls"][strategy]
    assert losses == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("case,run", [(case, run) for case in sorted(STAGE2) for run in range(len(STAGE2[case]))])
def test_stage2_losses(case, run):
    spec = STAGE2[case][run]
    model = converted(case)
    for field in ("train_strategy", "loss_coefficient", "homo_coefficient", "hete_coefficient"):
        setattr(model.config, field, spec[field])
    model.config.freeze_backbone = True
    model.train()
    loss = model(INPUTS["pixel_values"], labels=INPUTS["labels"]).loss
    assert loss.item() == pytest.approx(spec["loss"], rel=1e-4)


def test_command_line_conversion_writes_a_loadable_directory(tmp_path):
    from safetensors.torch import save_file
    from transformers import AutoModelForImageClassification

    from utils.convert_original_checkpoint import main

    original = tmp_path / "original"
    original.mkdir()
    (original / "config.json").write_text(json.dumps(CASES["vit_lgvit"]["original_config"]))
    save_file(load_file(FIXTURES / "vit_lgvit.weights.safetensors"), original / "model.safetensors")
    main([str(original), str(tmp_path / "converted")])
    model = AutoModelForImageClassification.from_pretrained(tmp_path / "converted").eval()
    expected = load_file(FIXTURES / "vit_lgvit.expected.safetensors")
    with torch.no_grad():
        outputs = model(INPUTS["pixel_values"], early_exit=False)
    torch.testing.assert_close(outputs.exit_logits[7], expected["exit7_logits"], **TOLERANCE)
