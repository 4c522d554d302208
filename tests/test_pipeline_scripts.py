"""The launchers in scripts/ run from any directory, whether executed or sourced, and chain the stages."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pipeline_helpers import NUM_LAYERS, read_json, write_tiny_config

from models import DeiTHighwayConfig, DeiTHighwayForImageClassification

ROOT = Path(__file__).resolve().parents[1]
SHORT_RUN = ["--max_train_samples", "32", "--max_eval_samples", "20", "--max_steps", "2"]


def run_script(command: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1",
                   "NUM_GPUS": "0", "REPORT_TO": "none", "DATASET": "digits", "BATCH_SIZE": "16",
                   "PYTHON": sys.executable, **env}
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=environment, capture_output=True, text=True,
                          timeout=300)


def test_stages_chain_through_the_scripts(tmp_path: Path) -> None:
    """Base from a tiny checkpoint, stage 1, stage 2 from the stage-1 default dir, evaluation of stage 2's."""
    scripts, args = ROOT / "scripts", " ".join(SHORT_RUN)
    tiny = tmp_path / "tiny"  # stands for the hub checkpoint
    config = DeiTHighwayConfig.from_pretrained(write_tiny_config(tmp_path), num_labels=10)
    DeiTHighwayForImageClassification(config).save_pretrained(tiny)
    saves = tmp_path / "saved"
    env = {"SAVE_ROOT": str(saves), "NUM_EARLY_EXITS": "3", "POSITION_EXITS": "[1,2,3]"}
    base = run_script(f"bash {scripts}/train_base_deit.sh {args}", tmp_path,
                      MODEL_NAME_OR_PATH=str(tiny), **env)
    assert base.returncode == 0, base.stderr[-3000:]
    stage1 = run_script(f"bash {scripts}/train_baseline_deit.sh {args}", tmp_path,
                        MODEL_NAME_OR_PATH=str(saves / "base"), **env)
    assert stage1.returncode == 0, stage1.stderr[-3000:]
    stage2 = run_script(f"bash {scripts}/train_distillation_deit.sh {args}", tmp_path, **env)
    assert stage2.returncode == 0, stage2.stderr[-3000:]
    evaluation = run_script(f"source {scripts}/eval_highway_deit.sh --max_eval_samples 20; echo still-here=$?",
                            tmp_path, OUTPUT_DIR=str(tmp_path / "eval"), **env)
    assert evaluation.returncode == 0 and "still-here=0" in evaluation.stdout, evaluation.stderr[-3000:]

    config = read_json(saves / "LGViT" / "stage2_distillation_LGViT" / "config.json")
    assert config["train_strategy"] == "distillation_LGViT" and config["position_exits"] == [1, 2, 3]
    assert read_json(saves / "LGViT" / "alternating_weighted" / "config.json")["highway_type"] == "LGViT"
    metrics = read_json(tmp_path / "eval" / "eval_results.json")
    assert sum(metrics[f"eval_counts_exit_layer_{n}"] for n in range(1, NUM_LAYERS + 1)) == 20


def test_a_failing_sourced_script_returns_without_closing_the_shell(tmp_path: Path) -> None:
    finished = run_script(
        f"source {ROOT}/scripts/eval_highway_deit.sh --no_such_flag 1; echo rc=$?; "
        "case $- in *e*) echo errexit-leaked;; esac; echo backbone=${BACKBONE:-unset}",
        tmp_path, MODEL_NAME_OR_PATH=str(tmp_path / "none"),
    )
    assert "rc=0" not in finished.stdout and "rc=" in finished.stdout
    assert "errexit-leaked" not in finished.stdout and "backbone=unset" in finished.stdout
