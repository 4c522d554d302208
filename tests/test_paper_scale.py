"""The paper's models at full size (ViT-B/16, DeiT-B, Swin-B at 224 pixels, random weights from the shipped
configs) through the four launchers, with their paper presets, on a tiny image folder: one optimizer step at batch 2
per training stage, chained through the default output paths, run from another directory (the evaluation sourced)."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

pytestmark = pytest.mark.launches

ROOT = Path(__file__).resolve().parents[1]
# backbone: (launcher family, shipped config, exit layers, million parameters without / with the 8 LGViT heads for
# these 2 classes; with CIFAR-100's 100 classes: ViT-B 85.9 / 100.7, the paper's 86M and 101M, DeiT-B 86.0 / 101.4,
# Swin-B 86.9 / 96.4).
BACKBONES = {
    "ViT": ("deit", "vit-base-patch16-224.json", [4, 5, 6, 7, 8, 9, 10, 11], (85.80, 100.01)),
    "DeiT": ("deit", "deit-base-distilled-patch16-224.json", [4, 5, 6, 7, 8, 9, 10, 11], (85.80, 100.02)),
    "Swin": ("swin", "swin-base-patch4-window7-224.json", [4, 7, 10, 13, 16, 19, 22, 23], (86.75, 95.83)),
}
LGVIT_HEADS = {"deit": ["conv1_1", "conv1_1", "conv2_1", "conv2_1", "attention_r2", "attention_r2", "attention_r3",
                        "attention_r3"],
               "swin": ["conv1_1", "conv1_1", "conv2_1", "conv2_1", "attention_r1", "attention_r1", "attention_r2",
                        "attention_r2"]}
ONE_STEP = ["--max_steps", "1", "--eval_strategy", "no", "--save_strategy", "no", "--load_best_model_at_end", "False",
            "--disable_tqdm", "True", "--dataloader_num_workers", "0"]


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two classes of 224x224 images: two per class to train on, one per class to evaluate."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for split, count in (("train", 2), ("val", 1)):
        for label in ("cat", "dog"):
            (root / split / label).mkdir(parents=True)
            for index in range(count):
                pixels = rng.integers(0, 255, (224, 224, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / label / f"{index}.png")
    return root


def launch(script: str, env: dict[str, str], *args: str, sourced: bool = False) -> None:
    """Run a launcher from another directory, executed or (`sourced`) sourced by a shell that goes on."""
    command = f"source {ROOT / 'scripts' / script} {' '.join(args)}; echo status=$?" if sourced else \
        f"bash {ROOT / 'scripts' / script} {' '.join(args)}"
    finished = subprocess.run(["bash", "-c", command], cwd=env["SAVE_ROOT"], env=env, capture_output=True, text=True,
                              timeout=900)
    assert finished.returncode == 0 and (not sourced or "status=0" in finished.stdout), finished.stderr[-4000:]


def parameters(state: dict[str, torch.Tensor], exits: bool) -> float:
    """Millions of parameters (buffers such as BatchNorm statistics left out)."""
    return sum(tensor.numel() for name, tensor in state.items()
               if (exits or not name.startswith("exits.")) and "running_" not in name
               and "num_batches_tracked" not in name) / 1e6


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_paper_models_through_every_launcher(tmp_path: Path, image_folder: Path, backbone: str) -> None:
    family, config, exit_layers, (plain_size, lgvit_size) = BACKBONES[backbone]
    saved = tmp_path / "saved"
    saved.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "REPORT_TO": "none", "NUM_GPUS": "0",
           "PYTHON": sys.executable, "SAVE_ROOT": str(saved), "BACKBONE": backbone,
           "CONFIG_NAME": str(ROOT / "configs" / "paper" / "models" / config),
           "TRAIN_DIR": str(image_folder / "train"), "VALIDATION_DIR": str(image_folder / "val"),
           "GLOBAL_BATCH_SIZE": "2", "BATCH_SIZE": "2", "EVAL_BATCH_SIZE": "2"}
    launch(f"train_base_{family}.sh", env, *ONE_STEP)
    launch(f"train_baseline_{family}.sh", env, *ONE_STEP)
    whole_chain = backbone != "DeiT"
    if whole_chain:
        launch(f"train_distillation_{family}.sh", env, *ONE_STEP)
        launch(f"eval_highway_{family}.sh", {**env, "OUTPUT_DIR": str(tmp_path / "eval")}, "--disable_tqdm", "True",
               sourced=True)

    base = json.loads((saved / "base" / "config.json").read_text())
    assert base["num_early_exits"] in (0, [0, 0, 0, 0]) and base.get("backbone", "Swin") == backbone
    stage1_dir, stage2_dir = saved / "LGViT" / "alternating_weighted", saved / "LGViT" / "stage2_distillation_LGViT"
    stage1 = json.loads((stage1_dir / "config.json").read_text())
    model_class = "SwinHighwayConfig" if family == "swin" else "DeiTHighwayConfig"
    config = getattr(__import__("models"), model_class).from_dict(stage1)
    assert config.exit_positions() == exit_layers and config.highway_type == "LGViT"
    assert [spec.name for spec in config.head_specs()] == LGVIT_HEADS[family]
    assert config.train_strategy == "alternating_weighted" and config.exit_strategy == "confidence"

    before = load_file(stage1_dir / "model.safetensors")
    base_weights = load_file(saved / "base" / "model.safetensors")
    assert parameters(base_weights, exits=False) == pytest.approx(plain_size, abs=0.01)
    assert parameters(before, exits=True) == pytest.approx(lgvit_size, abs=0.01)
    if not whole_chain:
        return
    after = load_file(stage2_dir / "model.safetensors")
    backbone_names = [name for name in before if not name.startswith("exits.")]
    assert backbone_names and all(torch.equal(before[name], after[name]) for name in backbone_names)
    assert any(not torch.equal(before[name], after[name]) for name in before if name.startswith("exits."))

    metrics = json.loads((tmp_path / "eval" / "eval_results.json").read_text())
    assert metrics["eval_samples"] == 2 and metrics["eval_exit_head_parameters"] > 0
    for name in ("analysis_results.json", "sweep.json", "tradeoff.png", "exit_histogram.png", "exit_accuracy.png"):
        assert (tmp_path / "eval" / name).is_file(), name
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"{backbone}: {parameters(before, exits=False):.1f}M without exits, {parameters(before, exits=True):.1f}M "
          f"with the 8 LGViT heads; peak memory of a launcher {peak:.0f} MB")
