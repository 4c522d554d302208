"""Two CPU processes (torchrun, gloo), launched the way the scripts launch one process per GPU: NUM_GPUS=2 makes
scripts/common.sh start `python -m torch.distributed.run --standalone --nproc_per_node=2` (no --ddp_backend is
needed on CPU).

- Stage 2 trains only the exit heads (tests/test_one_recipe.py compares several processes with one process for
  both stages).
- The evaluation at the end of each run, on two processes, gives exactly the metrics of a one-process evaluation
  of the model it saved, exit counts included.
- A calibrating evaluation on two processes calibrates once, on the main process, and gives the thresholds and
  metrics of the same run in one process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pipeline_helpers import (
    NUM_LAYERS,
    read_json,
    run_args,
    stage1_args,
    write_tiny_config,
)
from safetensors.torch import load_file

import run_classification

pytestmark = pytest.mark.launches

ROOT = Path(__file__).resolve().parents[1]
EVAL_SAMPLES = 45  # odd, so the distributed sampler pads the last batch with repeated samples (see run_args)
COUNTS = [f"eval_counts_exit_layer_{n}" for n in range(1, NUM_LAYERS + 1)]
SHORT = ["--max_train_samples", "16", "--max_steps", "3", "--max_eval_samples", str(EVAL_SAMPLES),
         "--eval_strategy", "no", "--save_strategy", "no", "--disable_tqdm", "True", "--logging_steps", "1"]
# The training runs evaluate with patience 2, which needs no threshold fitted to the model.
EXIT_ARGS = ["--exit_strategy", "patience", "--patience", "2"]


def launch(script: str, cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """Run a launcher of scripts/ as on a two-GPU machine (NUM_GPUS=2), here on two CPU processes (DDP without
    find_unused_parameters, the default)."""
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1",
                   "NUM_GPUS": "2", "REPORT_TO": "none", "DATASET": "digits", "PYTHON": sys.executable,
                   "BACKBONE": "ViT", "LR": "1e-3", "EVAL_BATCH_SIZE": "4", **env}
    command = ["bash", str(ROOT / "scripts" / script), *args, *EXIT_ARGS]
    finished = subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]
    return finished


def evaluate_in_one_process(model_dir: Path, output_dir: Path, *args: str) -> dict:
    """Evaluation alone, in this process. The seed is the training runs' (777): it picks the evaluation samples."""
    return run_classification.main([
        "--model_name_or_path", str(model_dir), "--dataset_name", "digits", "--do_train", "False", "--do_eval",
        "--max_eval_samples", str(EVAL_SAMPLES), "--per_device_eval_batch_size", "5", "--output_dir",
        str(output_dir), "--report_to", "none", "--disable_tqdm", "True", "--seed", "777", *args,
    ])


def assert_same_evaluation(two_processes: dict, one_process: dict, spread: bool = True) -> None:
    assert sum(one_process[key] for key in COUNTS) == EVAL_SAMPLES
    if spread:
        assert sum(1 for key in COUNTS if one_process[key]) >= 2, "the exits should spread over several layers"
    for key in [*COUNTS, "eval_accuracy", "eval_average_exit_layer", "eval_speed-up", "eval_samples"]:
        assert two_processes[key] == one_process[key], key


@pytest.fixture(scope="module")
def base_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("distributed_base")
    run_classification.main(run_args(root / "base", config_name=write_tiny_config(root), do_eval=False,
                                     calibration_split=0.2))
    return root / "base"


@pytest.fixture(scope="module")
def stage2_run(base_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Stage 1 (LGViT heads, which hold BatchNorm) in this process, then stage 2 on two processes (3 steps of 2 x 8
    images, evaluated at the end on both); every stage holds out the calibration split the last test calibrates on."""
    root = tmp_path_factory.mktemp("distributed_stage2")
    run_classification.main(stage1_args(root / "stage1", base_model, do_eval=False, calibration_split=0.2))
    launch("train_distillation_deit.sh", root, *SHORT, "--max_train_samples", "32", "--calibration_split", "0.2",
           MODEL_NAME_OR_PATH=str(root / "stage1"), OUTPUT_DIR=str(root / "stage2"), GLOBAL_BATCH_SIZE="16",
           BATCH_SIZE="8")
    return root


def test_two_process_stage2_trains_only_the_heads(stage2_run: Path) -> None:
    stage1, stage2 = stage2_run / "stage1", stage2_run / "stage2"
    assert read_json(stage2 / "trainer_state.json")["epoch"] == 1.5  # 32 samples in steps of 2 x 8
    assert read_json(stage2 / "config.json")["train_strategy"] == "distillation_LGViT"
    records = read_json(stage2 / "config.json")["training_data"]  # every stage, base first, same held-out rows
    assert [record["train_strategy"] for record in records] == ["normal", "alternating_weighted",
                                                                "distillation_LGViT"]
    assert len({record["calibration_sha256"] for record in records}) == 1
    before, after = load_file(stage1 / "model.safetensors"), load_file(stage2 / "model.safetensors")
    assert before.keys() == after.keys()
    frozen = [name for name in before if not name.startswith("exits.")]
    assert frozen and all(torch.equal(before[name], after[name]) for name in frozen)
    changed = {name.split(".")[1] for name in before if name.startswith("exits.")
               and "num_batches_tracked" not in name and not torch.equal(before[name], after[name])}
    assert changed == {"0", "1", "2"}


def test_two_process_evaluation_equals_one_process(stage2_run: Path, tmp_path: Path) -> None:
    """The stage-2 run's own evaluation on two processes (45 samples in batches of 4 per process: the sampler pads
    the last batch with repeated samples; LGViT heads hold BatchNorm statistics, which every rank must share)
    equals a one-process evaluation of the model it saved, exit counts included."""
    assert_same_evaluation(read_json(stage2_run / "stage2" / "eval_results.json"),
                           evaluate_in_one_process(stage2_run / "stage2", tmp_path / "single", *EXIT_ARGS))


def test_two_process_calibration_runs_once_and_every_process_uses_it(stage2_run: Path, tmp_path: Path) -> None:
    """An evaluation-only run that scales the exits and calibrates thresholds, on two processes that both log at
    INFO: the main process calibrates once, the other receives the temperatures and thresholds, and the saved
    thresholds and the metrics are those of the same run in one process."""
    model = stage2_run / "stage2"
    calibrating = ["--calibration_split", "0.2", "--calibration_strategy", "confidence", "--max_accuracy_drop", "0.2",
                   "--calibration_speedup", "layer", "--temperature_split", "0.3", "--per_device_eval_batch_size", "4"]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(ROOT / "run_classification.py"), "--model_name_or_path", str(model), "--dataset_name", "digits",
               "--do_train", "False", "--do_eval", "--max_eval_samples", str(EVAL_SAMPLES), "--output_dir",
               str(tmp_path / "double"), "--report_to", "none", "--disable_tqdm", "True", "--seed", "777",
               "--log_level_replica", "info", *calibrating]
    finished = subprocess.run(command, cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert finished.stdout.count("Calibrated confidence on") == 1, finished.stdout[-3000:]
    assert finished.stdout.count("Calibrated thresholds received from the main process") == 1
    single = evaluate_in_one_process(model, tmp_path / "single", *calibrating)
    double_config, single_config = (read_json(tmp_path / run / "config.json") for run in ("double", "single"))
    assert double_config["exit_strategy"] == single_config["exit_strategy"] == "confidence"
    assert double_config["threshold"] == pytest.approx(single_config["threshold"], rel=1e-6)
    assert_same_evaluation(read_json(tmp_path / "double" / "eval_results.json"), single)
