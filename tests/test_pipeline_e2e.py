"""The whole pipeline on the digits with a tiny DeiT: base -> stage 1 -> stage 2 -> evaluation, via main()."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pipeline_helpers import (
    NUM_LAYERS,
    median_first_exit_confidence,
    read_json,
    run_args,
    stage1_args,
    write_tiny_config,
)
from torchvision import transforms as T

import run_classification
from models import DeiTHighwayForImageClassification
from utils.analysis.flops import count_flops
from utils.analysis.timing import full_model_logits
from utils.arguments import DataTrainingArguments
from utils.data.image_dataset import decode_rgb
from utils.data.loading import load_datasets

EXIT_KEYS = [f"eval_counts_exit_layer_{n}" for n in range(1, NUM_LAYERS + 1)]


def check_eval_metrics(metrics: dict, samples: int) -> None:
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0
    assert sum(metrics[key] for key in EXIT_KEYS) == samples == metrics["eval_samples"]
    average = sum(n * metrics[key] for n, key in enumerate(EXIT_KEYS, start=1)) / samples
    assert metrics["eval_average_exit_layer"] == pytest.approx(average)
    assert metrics["eval_speed-up"] == pytest.approx(NUM_LAYERS / average)


@pytest.fixture(scope="module")
def stages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Run the four stages once; the tests below inspect what they wrote."""
    root = tmp_path_factory.mktemp("pipeline")
    dirs = {name: root / name for name in ("base", "stage1", "stage2", "eval")}
    run_classification.main(run_args(dirs["base"], config_name=write_tiny_config(root)))
    run_classification.main(stage1_args(dirs["stage1"], dirs["base"], loss_coefficient=0.4))
    run_classification.main(run_args(dirs["stage2"], model_name_or_path=str(dirs["stage1"]),
                                     train_strategy="distillation_LGViT", homo_coefficient=0.02))
    run_classification.main(run_args(dirs["eval"], model_name_or_path=str(dirs["stage2"]), do_train=False))
    return dirs


def test_every_stage_writes_its_files(stages: dict[str, Path]) -> None:
    for name in ("base", "stage1", "stage2"):
        for file in ("config.json", "model.safetensors", "preprocessor_config.json", "train_results.json",
                     "eval_results.json", "all_results.json", "trainer_state.json"):
            assert (stages[name] / file).is_file(), (name, file)
    assert (stages["eval"] / "eval_results.json").is_file()
    assert not (stages["eval"] / "model.safetensors").exists()
    for name in stages:
        check_eval_metrics(read_json(stages[name] / "eval_results.json"), samples=45)


def evaluation_batch(model_dir: Path, samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The run's evaluation samples, transformed as docs/training.md says: resize, centre crop, the saved mean/std."""
    processor = read_json(model_dir / "preprocessor_config.json")
    transform = T.Compose([T.ToPILImage(), T.Resize(16), T.CenterCrop(16), T.ToTensor(),
                           T.Normalize(processor["image_mean"], processor["image_std"])])
    arguments = DataTrainingArguments(dataset_name="digits", max_eval_samples=samples)
    split = load_datasets(arguments, seed=777)["validation"]
    images = torch.stack([transform(decode_rgb(row["image"])) for row in split])
    return images, torch.tensor(split["labels"])


@pytest.mark.parametrize("stage", ["base", "stage1", "stage2", "eval", "spread_exits"])
def test_reported_metrics_are_the_saved_models_predictions(stages: dict[str, Path], stage: str,
                                                           tmp_path: Path) -> None:
    """Accuracy, exit counts and FLOPs in eval_results.json, recomputed from the saved model on the same samples.

    The short runs leave the exits unsure (every sample reaches the final classifier at the threshold of 0.5), so
    "spread_exits" evaluates the stage-2 model again at a threshold that sends the samples to several layers.
    """
    model_dir = stages["stage2" if stage in ("eval", "spread_exits") else stage]
    model = DeiTHighwayForImageClassification.from_pretrained(model_dir).eval()
    results = stages[stage] if stage in stages else tmp_path
    if stage == "spread_exits":
        threshold = f"{median_first_exit_confidence(model_dir, 45):.6f}"
        run_classification.main(run_args(tmp_path, model_name_or_path=str(model_dir), do_train=False,
                                         threshold=threshold))
        model.config.threshold = float(threshold)
    images, labels = evaluation_batch(model_dir, 45)
    flops, outputs = count_flops(model, images)
    full_flops, _ = count_flops(full_model_logits, model, images)
    metrics = read_json(results / "eval_results.json")
    if stage == "spread_exits":
        assert len(set(outputs.exit_layer.tolist())) >= 2
    assert metrics["eval_accuracy"] == pytest.approx((outputs.logits.argmax(-1) == labels).double().mean().item(),
                                                     abs=1e-12)
    assert [metrics[key] for key in EXIT_KEYS] == [outputs.exit_layer.tolist().count(n)
                                                   for n in range(1, NUM_LAYERS + 1)]
    assert metrics["eval_average_gflops"] == pytest.approx(flops / 45 / 1e9, rel=1e-9)
    assert metrics["eval_flops_speedup"] == pytest.approx(full_flops / flops, rel=1e-9)
    assert metrics["eval_flops_speed-up"] == metrics["eval_flops_speedup"]  # the earlier releases' name


def test_arguments_reach_the_saved_configs(stages: dict[str, Path]) -> None:
    base = read_json(stages["base"] / "config.json")
    assert base["num_early_exits"] == 0 and base["hidden_size"] == 32
    assert base["id2label"] == {str(d): str(d) for d in range(10)}
    stage1 = read_json(stages["stage1"] / "config.json")
    assert stage1["highway_type"] == "LGViT" and stage1["num_early_exits"] == 3
    assert stage1["train_strategy"] == "alternating_weighted" and stage1["exit_strategy"] == "confidence"
    assert stage1["threshold"] == 0.5 and stage1["loss_coefficient"] == 0.4
    # Stage 2 keeps the stage-1 layout and settings it was not told to change.
    stage2 = read_json(stages["stage2"] / "config.json")
    assert stage2["train_strategy"] == "distillation_LGViT" and stage2["homo_coefficient"] == 0.02
    assert stage2["highway_type"] == "LGViT" and stage2["num_early_exits"] == 3 and stage2["loss_coefficient"] == 0.4


def test_evaluation_only_reproduces_the_final_evaluation(stages: dict[str, Path]) -> None:
    trained = read_json(stages["stage2"] / "eval_results.json")
    evaluated = read_json(stages["eval"] / "eval_results.json")
    for key in [*EXIT_KEYS, "eval_accuracy", "eval_average_exit_layer", "eval_speed-up"]:
        assert evaluated[key] == trained[key], key


@pytest.mark.parametrize("batch_size", [1, 7])
def test_exits_do_not_depend_on_the_eval_batch_size(stages: dict[str, Path], tmp_path: Path, batch_size: int) -> None:
    threshold = f"{median_first_exit_confidence(stages['stage2'], 45):.6f}"
    metrics = run_classification.main(run_args(
        tmp_path, model_name_or_path=str(stages["stage2"]), do_train=False, threshold=threshold,
        per_device_eval_batch_size=batch_size,
    ))
    reference = run_classification.main(run_args(
        tmp_path / "reference", model_name_or_path=str(stages["stage2"]), do_train=False, threshold=threshold,
        per_device_eval_batch_size=45,
    ))
    check_eval_metrics(metrics, samples=45)
    assert sum(1 for key in EXIT_KEYS if metrics[key]) >= 2, "the exits should spread over several layers"
    for key in [*EXIT_KEYS, "eval_accuracy"]:
        assert metrics[key] == reference[key], key


def test_a_file_of_arguments_with_command_line_overrides(stages: dict[str, Path], tmp_path: Path) -> None:
    config = tmp_path / "eval.yaml"
    config.write_text(
        "# evaluation preset\n"
        f"model_name_or_path: {stages['stage2']}\n"
        "dataset_name: digits\ndo_train: false\ndo_eval: true\nmax_eval_samples: 45\n"
        f"output_dir: {tmp_path / 'ignored'}\nreport_to: none\nexit_strategy: entropy\n"
    )
    output = tmp_path / "from_file"
    metrics = run_classification.main([str(config), "--output_dir", str(output), "--max_eval_samples", "20"])
    assert metrics["eval_samples"] == 20 and (output / "eval_results.json").is_file()
    assert not (tmp_path / "ignored").exists()
