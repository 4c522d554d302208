"""A tiny Swin through the whole pipeline on the offline digits: stage 1, stage 2 (frozen backbone), evaluation."""

import json

import pytest
import torch
from safetensors.torch import load_file

from models import SwinHighwayForImageClassification
from run_classification import main

# Three stages of 2, 3 and 2 blocks: 7 layers; exits per stage [1, 2, 1] sit at layers 2, 4, 5 and 6.
TINY_SWIN = {"model_type": "swin", "image_size": 32, "patch_size": 4, "embed_dim": 16, "depths": [2, 3, 2],
             "num_heads": [2, 2, 4], "window_size": 2, "mlp_ratio": 2.0, "drop_path_rate": 0.0}
COMMON = {"dataset_name": "digits", "max_train_samples": 64, "max_eval_samples": 32, "per_device_train_batch_size": 32,
          "per_device_eval_batch_size": 16, "num_train_epochs": 1, "learning_rate": 1e-3, "report_to": "none",
          "save_strategy": "no", "seed": 777}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("swin_pipeline")
    (root / "tiny_swin.json").write_text(json.dumps(TINY_SWIN))
    stage1 = main(dict(COMMON, config_name=str(root / "tiny_swin.json"), output_dir=str(root / "stage1"),
                       do_train=True, do_eval=True, highway_type="LGViT", num_early_exits="[1,2,1]",
                       train_strategy="alternating_weighted", exit_strategy="confidence", threshold="0.8"))
    stage2 = main(dict(COMMON, model_name_or_path=str(root / "stage1"), output_dir=str(root / "stage2"),
                       do_train=True, do_eval=True, train_strategy="distillation_LGViT"))
    evaluation = main(dict(COMMON, model_name_or_path=str(root / "stage2"), output_dir=str(root / "eval"),
                           do_train=False, do_eval=True, exit_strategy="entropy", threshold="10.0"))
    return root, stage1, stage2, evaluation


def test_stage1_trains_and_reports_exits_over_all_swin_blocks(runs):
    root, stage1, _, _ = runs
    model = SwinHighwayForImageClassification.from_pretrained(root / "stage1")
    assert model.config.exit_positions() == [2, 4, 5, 6] and model.config.highway_type == "LGViT"
    assert [f"eval_counts_exit_layer_{n}" in stage1 for n in range(1, 8)] == [True] * 7
    assert "eval_counts_exit_layer_8" not in stage1
    assert sum(stage1[f"eval_counts_exit_layer_{n}"] for n in range(1, 8)) == 32


def test_stage2_changes_only_the_exit_heads(runs):
    root, _, stage2, _ = runs
    before, after = load_file(root / "stage1" / "model.safetensors"), load_file(root / "stage2" / "model.safetensors")
    assert before.keys() == after.keys()
    frozen = [name for name in before if name.startswith(("swin.", "classifier."))]
    trainable = [name for name in before if name.startswith("exits.") and "num_batches_tracked" not in name]
    assert frozen and all(torch.equal(before[name], after[name]) for name in frozen)
    assert not all(torch.equal(before[name], after[name]) for name in trainable)
    assert json.loads((root / "stage2" / "config.json").read_text())["train_strategy"] == "distillation_LGViT"
    assert stage2["eval_samples"] == 32


def test_evaluation_with_a_loose_threshold_leaves_at_the_first_exit(runs):
    _, _, _, evaluation = runs
    assert evaluation["eval_counts_exit_layer_2"] == 32
    assert evaluation["eval_average_exit_layer"] == 2.0 and evaluation["eval_speed-up"] == pytest.approx(3.5)
