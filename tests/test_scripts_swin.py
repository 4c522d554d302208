"""The four Swin launchers in scripts/ run from another directory, chained by their default paths.

A tiny Swin saved like a hub checkpoint (1000 classes) stands in for microsoft/swin-base-patch4-window7-224, and
the exit layout is set through the scripts' environment variables (the default one needs Swin-B's 18-block stage).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

from transformers import SwinConfig, SwinForImageClassification

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--max_train_samples", "64", "--max_eval_samples", "32", "--eval_strategy", "no", "--save_strategy", "no",
        "--load_best_model_at_end", "False", "--disable_tqdm", "True"]


def run_script(name: str, cwd: Path, env: dict[str, str], *args: str) -> None:
    result = subprocess.run(["bash", str(ROOT / "scripts" / name), *args], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


def test_swin_scripts_chain_base_stage1_stage2_and_evaluation(tmp_path):
    hub_like = tmp_path / "hub_like"
    SwinForImageClassification(SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[2, 3, 2],
                                           num_heads=[2, 2, 4], window_size=2, mlp_ratio=2.0,
                                           num_labels=1000)).save_pretrained(hub_like)
    saved = tmp_path / "saved"
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="disabled", DATASET="digits", REPORT_TO="none",
               NUM_GPUS="0", SAVE_ROOT=str(saved), EPOCHS="1", BATCH_SIZE="32", EVAL_BATCH_SIZE="16",
               PYTHON=sys.executable)
    env.pop("BACKBONE", None)
    run_script("train_base_swin.sh", tmp_path, dict(env, MODEL_NAME_OR_PATH=str(hub_like)), *FAST)
    run_script("train_baseline_swin.sh", tmp_path, dict(env, MODEL_NAME_OR_PATH=str(hub_like),
                                                        NUM_EARLY_EXITS="[1,2,1]",
                                                        POSITION_EXITS="[[2],[2,3],[1]]"), *FAST)
    run_script("train_distillation_swin.sh", tmp_path, env, *FAST)
    run_script("eval_highway_swin.sh", tmp_path, dict(env, OUTPUT_DIR=str(tmp_path / "eval"), THRESHOLD="0.0"),
               "--max_eval_samples", "32", "--disable_tqdm", "True")

    base = json.loads((saved / "base" / "config.json").read_text())
    assert base["model_type"] == "swin_highway" and base["num_early_exits"] == [0, 0, 0]
    stage1 = json.loads((saved / "LGViT" / "alternating_weighted" / "config.json").read_text())
    assert stage1["position_exits"] == [[2], [2, 3], [1]] and len(stage1["id2label"]) == 10
    stage2 = json.loads((saved / "LGViT" / "stage2_distillation_LGViT" / "config.json").read_text())
    assert stage2["train_strategy"] == "distillation_LGViT"
    results = json.loads((tmp_path / "eval" / "eval_results.json").read_text())
    # A confidence threshold of 0 lets every sample leave at the first exit: global layer 2 of 7.
    assert results["eval_counts_exit_layer_2"] == 32 and "eval_counts_exit_layer_7" in results
