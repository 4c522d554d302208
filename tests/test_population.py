"""A model's logits on its calibration and evaluation splits, stored for the statistical test
(`utils.analysis.population`)."""

from __future__ import annotations

import pytest
import torch
from analysis_helpers import tiny_model

from utils.analysis.flops import profile_flops
from utils.analysis.population import main
from utils.analysis.risk_simulation import read_population, read_profile
from utils.analysis.sweep import collect_logits
from utils.arguments import parse_arguments
from utils.data.image_dataset import ImageDataset, collate_fn
from utils.data.loading import load_datasets
from utils.data.transforms import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, Normalization, build_transforms


def split_logits(model, split: str):
    """The model's logits on one digits split (calibration split 0.2), computed here without the module."""
    _, data_args, _, training_args = parse_arguments(["--dataset_name", "digits", "--calibration_split", "0.2",
                                                       "--model_type", "deit"])
    dataset = load_datasets(data_args, training_args.seed)[split]
    images = ImageDataset(dataset, build_transforms(16)[1], Normalization(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD))
    batch = collate_fn([images[index] for index in range(len(images))])
    return collect_logits(model, [(images.normalization(batch["pixel_values"]), batch["labels"])])


def test_the_population_is_the_calibration_then_the_evaluation_split(tmp_path):
    model = tiny_model(num_labels=10)
    model.save_pretrained(tmp_path / "model")
    logits, flops = tmp_path / "logits.pt", tmp_path / "flops.json"
    main(["--logits", str(logits), "--flops", str(flops), "configs/digits/eval.yaml", "--model_name_or_path",
          str(tmp_path / "model"), "--calibration_split", "0.2", "--output_dir", str(tmp_path / "run")])
    population = read_population(logits)
    calibration, evaluation = split_logits(model, "calibration"), split_logits(model, "validation")
    assert (len(calibration), len(evaluation), len(population)) == (306, 270, 576)
    for name in ("exit_logits", "final_logits"):
        expected = torch.cat([getattr(calibration, name), getattr(evaluation, name)], dim=-2)
        torch.testing.assert_close(getattr(population, name), expected, rtol=0, atol=1e-5)
    assert torch.equal(population.labels, torch.cat([calibration.labels, evaluation.labels]))
    assert torch.load(logits, weights_only=True)["labels"].dtype == torch.uint8
    assert read_profile(flops) == profile_flops(model)


def test_a_run_without_a_calibration_split_is_refused(tmp_path):
    tiny_model(num_labels=10).save_pretrained(tmp_path / "model")
    with pytest.raises(ValueError, match="--calibration_split"):
        main(["--logits", str(tmp_path / "logits.pt"), "--flops", str(tmp_path / "flops.json"),
              "configs/digits/eval.yaml", "--model_name_or_path", str(tmp_path / "model")])
