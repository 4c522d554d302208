"""Checkpoints users already have: the original LGViT code's directories load wherever a model path is accepted
(converted on load, never with fresh heads in silence), and timm's ViT, DeiT and Swin models map onto our classes."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import timm
import torch
from pipeline_helpers import run_args
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset
from transformers import AutoModelForImageClassification, DeiTConfig, DeiTForImageClassification
from transformers.models.deit.modeling_deit import DeiTForImageClassificationWithTeacher

import run_classification
from models import DeiTHighwayForImageClassification, SwinHighwayForImageClassification
from models.original_checkpoint import exit_fields_from_original
from utils.arguments import ModelArguments, TrainingArguments
from utils.convert_timm_checkpoint import main as convert_timm
from utils.training.model_setup import load_config, load_model
from utils.training.trainer import ExitTrainer

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "original"
INPUTS = load_file(FIXTURES / "inputs.safetensors")
CASES = {**json.loads((FIXTURES / "deit_cases.json").read_text()),
         **json.loads((FIXTURES / "swin_cases.json").read_text())}
TOLERANCE = {"atol": 1e-5, "rtol": 1e-4}
ARCHITECTURES = {"deit": "DeiTHighwayForImageClassification", "swin": "SwinHighwayForImageClassification"}


def write_original_checkpoint(directory: Path, case: str, weights_format: str, stage2: bool = False) -> Path:
    """A case's weights and configuration as the original code saved them: its model type, architecture name,
    field names and tensor names."""
    model_type = "swin" if case.startswith("swin") else "deit"
    directory.mkdir(parents=True)
    config = dict(CASES[case]["original_config"], model_type=model_type,
                  architectures=[ARCHITECTURES[model_type] + ("_distillation" if stage2 else "")])
    (directory / "config.json").write_text(json.dumps(config))
    weights = load_file(FIXTURES / f"{case}.weights.safetensors")
    if weights_format == "safetensors":
        save_file(weights, directory / "model.safetensors")
    else:
        torch.save(weights, directory / "pytorch_model.bin")
    return directory


def fixture_decisions(case: str):
    """(exit strategy, threshold, patience, exit layers, expected logits) of each decision the original recorded."""
    expected = load_file(FIXTURES / f"{case}.expected.safetensors")
    for index, decision in enumerate(CASES[case]["decisions"]):
        fields = exit_fields_from_original(decision["exit_strategy"], decision["thresholds"])
        layers = decision.get("exit_layer") or [layer + 1 if layer < 12 else layer
                                                for layer in decision["exit_layer_as_reported_by_original"]]
        yield decision["exit_strategy"], fields["threshold"], fields.get("patience"), layers, \
            expected[f"decision{index}_logits"]


@pytest.mark.parametrize("weights_format", ["safetensors", "bin"])
@pytest.mark.parametrize("case", ["vit_lgvit", "deit_linear", "swin_lgvit"])
def test_original_directories_load_through_from_pretrained_and_auto(tmp_path, case, weights_format, caplog):
    directory = write_original_checkpoint(tmp_path / "original", case, weights_format)
    model_class = SwinHighwayForImageClassification if case.startswith("swin") else DeiTHighwayForImageClassification
    with caplog.at_level(logging.INFO):
        model = model_class.from_pretrained(directory).eval()
    assert "checkpoint of the original LGViT code: converted on load" in caplog.text
    auto = AutoModelForImageClassification.from_pretrained(directory).eval()
    assert type(auto) is model_class
    expected = load_file(FIXTURES / f"{case}.expected.safetensors")
    with torch.no_grad():
        for loaded in (model, auto):
            torch.testing.assert_close(loaded(INPUTS["pixel_values"], early_exit=False).final_logits,
                                       expected["final_logits"], **TOLERANCE)


class FixtureImages(Dataset):
    """The fixtures' six inputs as rows of the pipeline's collate format."""

    def __len__(self) -> int:
        return len(INPUTS["labels"])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": INPUTS["pixel_values"][index], "labels": INPUTS["labels"][index]}


@pytest.mark.parametrize("case, weights_format", [("vit_lgvit", "bin"), ("swin_linear", "safetensors")])
def test_the_pipelines_evaluation_of_an_original_checkpoint_equals_the_original(tmp_path, case, weights_format):
    """The pipeline's own loading (`load_config`, `load_model`) and Trainer evaluation, at batch size 4: every
    decision the original recorded gives its exit layers and logits."""
    directory = write_original_checkpoint(tmp_path / "original", case, weights_format, stage2=True)
    model_args = ModelArguments(model_name_or_path=str(directory))
    labels = [str(index) for index in range(10)]
    config = load_config(model_args, labels)
    model = load_model(model_args, config)
    trainer = ExitTrainer(model=model, args=TrainingArguments(output_dir=str(tmp_path / "eval"), report_to="none",
                                                              per_device_eval_batch_size=4))
    for strategy, threshold, patience, layers, logits in fixture_decisions(case):
        model.config.exit_strategy, model.config.threshold, model.config.patience = strategy, threshold, patience
        predictions = trainer.predict(FixtureImages()).predictions
        assert predictions[1].tolist() == layers, strategy
        torch.testing.assert_close(torch.from_numpy(predictions[0]), logits, **TOLERANCE)


def test_an_original_checkpoint_runs_through_run_classification(tmp_path):
    directory = write_original_checkpoint(tmp_path / "original", "deit_lgvit", "safetensors")
    metrics = run_classification.main(run_args(tmp_path / "eval", model_name_or_path=str(directory), do_train=False,
                                               max_eval_samples=12))
    assert metrics["eval_samples"] == 12 and 1.0 <= metrics["eval_speed-up"] <= 12.0


def test_exit_heads_under_other_names_stop_with_the_converter_named(tmp_path):
    directory = write_original_checkpoint(tmp_path / "original", "vit_lgvit", "safetensors")
    # This project's configuration next to the original's tensor names: the heads cannot be mapped.
    config = DeiTHighwayForImageClassification.from_pretrained(directory).config
    config.save_pretrained(directory)
    with pytest.raises(ValueError, match="python -m utils.convert_original_checkpoint"):
        DeiTHighwayForImageClassification.from_pretrained(directory)


def test_plain_transformers_checkpoints_still_load_as_transformers_classes(tmp_path):
    """Registering the original's architecture names keeps transformers' own classes the default."""
    config = DeiTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                        image_size=32, patch_size=4)
    for model_class in (DeiTForImageClassification, DeiTForImageClassificationWithTeacher):
        model_class(config).save_pretrained(tmp_path / model_class.__name__)
        assert type(AutoModelForImageClassification.from_pretrained(tmp_path / model_class.__name__)) is model_class


def random_timm(name: str, seed: int = 0, num_classes: int = 7) -> torch.nn.Module:
    """A timm model with random weights everywhere (timm starts its classifier at zero)."""
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, num_classes=num_classes).eval()
    with torch.no_grad():
        for parameter_name, parameter in model.named_parameters():
            if "head" in parameter_name:
                parameter.normal_(0.0, 0.3)
    return model


@pytest.mark.parametrize("name, model_class, backbone", [
    ("vit_tiny_patch16_224", DeiTHighwayForImageClassification, "ViT"),
    ("deit_tiny_distilled_patch16_224", DeiTHighwayForImageClassification, "DeiT"),
    ("swin_tiny_patch4_window7_224", SwinHighwayForImageClassification, "Swin"),
])
def test_timm_models_map_onto_our_classes(name, model_class, backbone):
    timm_model = random_timm(name)
    model = model_class.from_timm(timm_model, highway_type="LGViT").eval()
    assert model.config.backbone == backbone and model.config.num_exits > 0
    pixel_values = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = timm_model(pixel_values)
        torch.testing.assert_close(model(pixel_values, early_exit=False).final_logits, expected, atol=1e-5, rtol=1e-4)
        assert expected.abs().max() > 1.0  # a comparison of real logits, not of zeros


def test_timm_models_refuse_what_does_not_map():
    with pytest.raises(ValueError, match="use SwinHighwayForImageClassification"):
        DeiTHighwayForImageClassification.from_timm(random_timm("swin_tiny_patch4_window7_224"))
    with pytest.raises(ValueError, match="does not pool its class token"):
        DeiTHighwayForImageClassification.from_timm(timm.create_model("vit_tiny_patch16_224", global_pool="avg"))


def test_the_timm_command_writes_a_loadable_directory(tmp_path):
    timm_model = random_timm("deit_tiny_distilled_patch16_224", seed=2, num_classes=1000)
    save_file(timm_model.state_dict(), tmp_path / "weights.safetensors")
    convert_timm(["deit_tiny_distilled_patch16_224", str(tmp_path / "ours"), "--weights",
                  str(tmp_path / "weights.safetensors")])
    model = AutoModelForImageClassification.from_pretrained(tmp_path / "ours").eval()
    pixel_values = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model(pixel_values).logits, timm_model(pixel_values), atol=1e-5, rtol=1e-4)
