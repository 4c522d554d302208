"""The original LGViT scripts' arguments parse: renamed ones are used under their new names and meaningless ones are
dropped, each with a one-line warning; --model_type, --image_processor_name and --config_name work as they did."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from pipeline_helpers import TINY_CONFIG, run_args
from transformers import ViTImageProcessor

import run_classification
from models import DeiTHighwayConfig, DeiTHighwayForImageClassification, SwinHighwayConfig
from utils.arguments import parse_arguments
from utils.data import image_dataset
from utils.data.transforms import Normalization
from utils.training.model_setup import load_config

ROOT = Path(__file__).resolve().parents[1]
DEIT = "facebook/deit-base-distilled-patch16-224"
SWIN = "microsoft/swin-base-patch4-window7-224"
STAGE1, CHECKPOINT = "saved_models/stage1_checkpoint", "saved_models/checkpoint"
COMMON = ["--remove_unused_columns", "False", "--do_train", "--do_eval", "--per_device_eval_batch_size", "1",
          "--logging_strategy", "steps", "--evaluation_strategy", "epoch", "--save_strategy", "epoch",
          "--save_total_limit", "3", "--seed", "777", "--report_to", "wandb"]
# The argument lists of the original scripts/*.sh, with their shell variables expanded as the scripts set them
# (the undefined ones, such as DATANAME and threshold, expand to nothing); their placeholder checkpoint and output
# paths, which users replace with their own, are written as the relative paths STAGE1 and CHECKPOINT here.
ORIGINAL_SCRIPTS = {
    "train_base_deit.sh": [
        "--run_name", "DeiT-base", "--dataset_name", "cifar100", "--backbone", "DeiT", "--model_name_or_path", DEIT,
        "--output_dir", "saved_models/DeiT-base/cifar100/base", "--overwrite_output_dir", "True",
        "--learning_rate", "5e-5", "--num_train_epochs", "10", "--per_device_train_batch_size", "64",
        "--logging_steps", "50", "--load_best_model_at_end", "True", "--ignore_mismatched_sizes=True", *COMMON],
    "train_base_swin.sh": [
        "--run_name", "swin_base_", "--image_processor_name", SWIN, "--config_name", SWIN,
        "--model_name_or_path", SWIN, "--dataset_name", "cifar100", "--output_dir",
        "saved_models/Swin-base/cifar100/Swin_base", "--overwrite_output_dir", "True", "--learning_rate", "5e-5",
        "--output_hidden_states", "False", "--num_train_epochs", "50", "--per_device_train_batch_size", "64",
        "--logging_steps", "50", "--load_best_model_at_end", "True", "--ignore_mismatched_sizes", "True",
        "--use_auth_token", "False", *COMMON],
    "train_baseline_deit.sh": [
        "--threshold", "0.8", "--run_name", "LGViT_alternating_weighted_LGViT_threshold", "--image_processor_name",
        DEIT, "--config_name", DEIT, "--model_name_or_path", DEIT, "--dataset_name", "cifar100", "--output_dir",
        "saved_models/ViT-base/cifar100/LGViT/alternating_weighted", "--overwrite_output_dir", "False",
        "--backbone", "ViT", "--train_highway", "True", "--exit_strategy", "confidence", "--train_strategy",
        "alternating_weighted", "--num_early_exits", "8", "--position_exits", "[4,5,6,7,8,9,10,11]",
        "--highway_type", "LGViT", "--learning_rate", "5e-5", "--output_hidden_states", "False",
        "--num_train_epochs", "50", "--per_device_train_batch_size", "64", "--logging_steps", "500",
        "--load_best_model_at_end", "False", "--ignore_mismatched_sizes", "True", *COMMON],
    "train_baseline_swin.sh": [
        "--threshold", "0.8", "--run_name", "linear_alternating_", "--image_processor_name", SWIN,
        "--config_name", SWIN, "--model_name_or_path", SWIN, "--dataset_name", "imagenet-1k", "--output_dir",
        "saved_models/Swin-base/imagenet-1k/BERxiT", "--overwrite_output_dir", "True", "--exit_strategy",
        "confidence", "--train_strategy", "alternating", "--num_early_exits", "[0,1,6,1]", "--position_exits",
        "[[],[2],[3,6,9,12,15,18],[1]]", "--highway_type", "linear", "--learning_rate", "5e-5",
        "--output_hidden_states", "False", "--num_train_epochs", "100", "--per_device_train_batch_size", "64",
        "--logging_steps", "100", "--load_best_model_at_end", "False", "--ignore_mismatched_sizes", "True", *COMMON],
    "train_distillation_deit.sh": [
        "--threshold", "0.8", "--run_name", "LGViT_distillation_LGViT", "--image_processor_name", DEIT,
        "--config_name", DEIT, "--model_name_or_path", STAGE1,
        "--dataset_name", "cifar100", "--output_dir", "saved_models/ViT-base//LGViT/stage2_distillation_LGViT/",
        "--overwrite_output_dir", "True", "--backbone", "ViT", "--train_highway", "True", "--exit_strategy",
        "confidence", "--train_strategy", "distillation_LGViT", "--loss_coefficient", "0.3", "--homo_coefficient",
        "0.01", "--hete_coefficient", "0.01", "--learning_rate", "5e-5", "--output_hidden_states", "False",
        "--num_train_epochs", "50", "--per_device_train_batch_size", "64", "--logging_steps", "100",
        "--load_best_model_at_end", "False", *COMMON],
    "train_distillation_swin.sh": [
        "--run_name", "LGViT_distillation_LGViT", "--image_processor_name", SWIN, "--config_name", SWIN,
        "--model_name_or_path", STAGE1, "--dataset_name",
        "Maysee/tiny-imagenet", "--output_dir", "saved_models/Swin-base/Maysee/tiny-imagenet/LGViT/"
        "stage2_distillation_LGViT/", "--overwrite_output_dir", "True", "--exit_strategy", "confidence",
        "--train_strategy", "distillation_LGViT", "--loss_coefficient", "0.3", "--homo_coefficient", "0.01",
        "--hete_coefficient", "0.01", "--learning_rate", "5e-5", "--num_train_epochs", "50",
        "--per_device_train_batch_size", "64", "--logging_steps", "100", "--load_best_model_at_end", "False",
        *COMMON],
    "eval_highway_deit.sh": [
        "--run_name", "ViT_confidence_LGViT__LGViT", "--image_processor_name", DEIT, "--config_name", DEIT,
        "--model_name_or_path", CHECKPOINT, "--dataset_name", "cifar100",
        "--output_dir", "outputs/ViT-base/cifar100/LGViT/confidence/", "--remove_unused_columns", "False",
        "--backbone", "ViT", "--exit_strategy", "confidence", "--do_train", "False", "--do_eval",
        "--per_device_eval_batch_size", "1", "--seed", "777", "--report_to", "wandb", "--use_auth_token", "False"],
    "eval_highway_swin.sh": [
        "--run_name", "Swin_LGViT", "--image_processor_name", SWIN, "--config_name", SWIN, "--model_name_or_path",
        CHECKPOINT, "--dataset_name", "cifar100", "--output_dir",
        "outputs/Swin-base/cifar100/LGViT/", "--remove_unused_columns", "False",
        "--exit_strategy", "confidence", "--num_early_exits", "[0,1,6,1]", "--do_train", "False", "--do_eval",
        "--per_device_eval_batch_size", "1", "--seed", "777", "--report_to", "wandb", "--use_auth_token", "False"],
}


@pytest.mark.parametrize("script", sorted(ORIGINAL_SCRIPTS))
def test_the_original_scripts_arguments_parse(script: str, caplog: pytest.LogCaptureFixture) -> None:
    arguments = ORIGINAL_SCRIPTS[script]
    with caplog.at_level(logging.WARNING):
        model_args, data_args, _, training_args = parse_arguments(arguments)
    assert model_args.model_name_or_path == arguments[arguments.index("--model_name_or_path") + 1]
    assert data_args.dataset_name == arguments[arguments.index("--dataset_name") + 1]
    if "--evaluation_strategy" in arguments:
        assert training_args.eval_strategy == "epoch"
        assert "--evaluation_strategy is the original's name of --eval_strategy" in caplog.text
    for flag in ("--train_highway", "--output_hidden_states", "--use_auth_token"):
        assert (f"{flag} is ignored" in caplog.text) == (flag in arguments), flag
    if "--threshold" in arguments:
        assert model_args.threshold == 0.8
    if "--position_exits" in arguments:
        assert model_args.position_exits in ([4, 5, 6, 7, 8, 9, 10, 11], [[], [2], [3, 6, 9, 12, 15, 18], [1]])


def test_renamed_and_retired_names_also_work_in_argument_files(tmp_path: Path, caplog) -> None:
    path = tmp_path / "original.yaml"
    path.write_text("homo_loss_coefficient: 0.02\nhete_loss_coefficient: 0.03\nencoder_ensemble: false\n"
                    "feature_loss_coefficient: 0.04\nmodel_name_or_path: m\ndataset_name: digits\n")
    with caplog.at_level(logging.WARNING):
        model_args, *_ = parse_arguments([str(path), "--output_dir", str(tmp_path)])
    assert model_args.config_overrides() == {"homo_coefficient": 0.02, "hete_coefficient": 0.03}
    assert "--encoder_ensemble is ignored" in caplog.text and "--feature_loss_coefficient is ignored" in caplog.text
    model_args, *_ = parse_arguments({"model_name_or_path": "m", "dataset_name": "digits", "output_dir": str(tmp_path),
                                      "hete_loss_coefficient": 0.05, "train_highway": True})
    assert model_args.config_overrides() == {"hete_coefficient": 0.05}


@pytest.mark.parametrize("model_type, backbone, layers",
                         [("vit", "ViT", 12), ("deit", "DeiT", 12), ("swin", "Swin", 24)])
def test_model_type_builds_the_papers_architecture_without_the_hub(model_type, backbone, layers) -> None:
    model_args, *_ = parse_arguments(["--model_type", model_type, "--dataset_name", "digits", "--output_dir", "x"])
    config = load_config(model_args, [str(digit) for digit in range(10)])
    assert config.backbone == backbone and config.num_blocks == layers and config.image_size == 224
    assert config.num_labels == 10


def test_a_model_type_that_contradicts_the_checkpoint_is_refused(tmp_path: Path) -> None:
    DeiTHighwayForImageClassification(DeiTHighwayConfig(**{k: v for k, v in TINY_CONFIG.items()
                                                           if k != "model_type"})).save_pretrained(tmp_path)
    model_args, *_ = parse_arguments(["--model_name_or_path", str(tmp_path), "--model_type", "swin",
                                      "--dataset_name", "digits", "--output_dir", "x"])
    with pytest.raises(ValueError, match="--model_type swin does not match"):
        load_config(model_args, ["a", "b"])


@pytest.mark.parametrize("model_type, backbone", [("vit", "DeiT"), ("deit", "ViT"), ("deit", "Swin")])
def test_a_model_type_of_another_architecture_than_the_checkpoint_is_refused(
        tmp_path: Path, model_type: str, backbone: str) -> None:
    """vit and deit share one class, so the check reads the architecture itself (the config's backbone)."""
    if backbone == "Swin":
        SwinHighwayConfig(image_size=32, patch_size=4, embed_dim=16, depths=[2, 2], num_heads=[2, 2], window_size=2,
                          num_early_exits=0).save_pretrained(tmp_path)
    else:
        DeiTHighwayConfig(**{k: v for k, v in TINY_CONFIG.items() if k != "model_type"},
                          backbone=backbone).save_pretrained(tmp_path)
    arguments = ["--model_name_or_path", str(tmp_path), "--dataset_name", "digits", "--output_dir", "x"]
    model_args, *_ = parse_arguments([*arguments, "--model_type", model_type])
    with pytest.raises(ValueError, match=f"--model_type {model_type} does not match .*, a {backbone.lower()} model"):
        load_config(model_args, ["a", "b"])
    model_args, *_ = parse_arguments([*arguments, "--model_type", backbone.lower()])
    assert load_config(model_args, ["a", "b"]).num_labels == 2


def test_image_processor_name_brings_another_normalisation_and_config_name_defers_to_the_checkpoint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    fields = {**{k: v for k, v in TINY_CONFIG.items() if k != "model_type"}, "num_early_exits": 2}
    config = DeiTHighwayConfig(**fields, num_labels=10, highway_type="LGViT", position_exits=[2, 3])
    DeiTHighwayForImageClassification(config).save_pretrained(tmp_path / "model")
    ViTImageProcessor(image_mean=[0.1, 0.2, 0.3], image_std=[0.4, 0.5, 0.6]).save_pretrained(tmp_path / "processor")
    (tmp_path / "plain.json").write_text(json.dumps({**TINY_CONFIG, "num_early_exits": 0}))
    seen = []

    def recording_normalization(mean, std):
        seen.append((mean, std))
        return Normalization(mean, std)

    monkeypatch.setattr(image_dataset, "Normalization", recording_normalization)
    with caplog.at_level(logging.WARNING):
        metrics = run_classification.main(run_args(
            tmp_path / "eval", model_name_or_path=str(tmp_path / "model"), do_train=False,
            image_processor_name=str(tmp_path / "processor"), config_name=str(tmp_path / "plain.json")))
    assert seen == [([0.1, 0.2, 0.3], [0.4, 0.5, 0.6])]
    assert "--config_name" in caplog.text and "brings its own configuration" in caplog.text
    assert metrics["eval_counts_exit_layer_2"] + metrics["eval_counts_exit_layer_3"] + \
        metrics["eval_counts_exit_layer_4"] == metrics["eval_samples"]  # the checkpoint's two exits were used
