"""Two CPU processes (torchrun, gloo), launched the way the scripts launch one process per GPU: NUM_GPUS=2 makes
scripts/common.sh start `python -m torch.distributed.run --standalone --nproc_per_node=2` (no --ddp_backend is
needed on CPU).

- Stage 1 on two processes of 8 images gives the weights of one process of 16 on the same global batch, and logs
  the same loss terms of every exit (each process's terms, averaged over the processes).
- Stage 2 trains only the exit heads.
- The evaluation at the end of each run, on two processes, gives exactly the metrics of a one-process evaluation
  of the model it saved, exit counts included.
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

ROOT = Path(__file__).resolve().parents[1]
EVAL_SAMPLES = 45  # odd, so the distributed sampler pads the last batch with repeated samples (see run_args)
COUNTS = [f"eval_counts_exit_layer_{n}" for n in range(1, NUM_LAYERS + 1)]
TRAIN_SAMPLES = 16  # stage 1: exactly one global batch, 2 x 8 per process or 16 in one process
SHORT = ["--max_train_samples", str(TRAIN_SAMPLES), "--max_steps", "3", "--max_eval_samples", str(EVAL_SAMPLES),
         "--eval_strategy", "no", "--save_strategy", "no", "--disable_tqdm", "True", "--logging_steps", "1"]
# The training runs evaluate with patience 2, which needs no threshold fitted to the model.
EXIT_ARGS = ["--exit_strategy", "patience", "--patience", "2"]


def launch(script: str, cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """Run a launcher of scripts/ as on a two-GPU machine (NUM_GPUS=2), here on two CPU processes.

    DDP runs without find_unused_parameters, so every trainable parameter must get a gradient at every step (the
    alternating strategies keep the exit heads in the graph with zero-weighted terms on their even steps)."""
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1",
                   "NUM_GPUS": "2", "REPORT_TO": "none", "DATASET": "digits", "PYTHON": sys.executable,
                   "BACKBONE": "ViT", "LR": "1e-3", "EVAL_BATCH_SIZE": "4", **env}
    command = ["bash", str(ROOT / "scripts" / script), *args, *EXIT_ARGS, "--ddp_find_unused_parameters", "False"]
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
    run_classification.main(run_args(root / "base", config_name=write_tiny_config(root), do_eval=False))
    return root / "base"


@pytest.fixture(scope="module")
def stage2_run(base_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Stage 1 (LGViT heads, which hold BatchNorm) in this process, then stage 2 on two processes (3 steps of 2 x 8
    images, evaluated at the end on both)."""
    root = tmp_path_factory.mktemp("distributed_stage2")
    run_classification.main(stage1_args(root / "stage1", base_model, do_eval=False))
    launch("train_distillation_deit.sh", root, *SHORT, "--max_train_samples", "32",
           MODEL_NAME_OR_PATH=str(root / "stage1"), OUTPUT_DIR=str(root / "stage2"), GLOBAL_BATCH_SIZE="16",
           BATCH_SIZE="8")
    return root


def test_two_process_stage1_equals_one_process_on_the_same_global_batch(base_model: Path, tmp_path: Path) -> None:
    """Linear heads (no batch statistics), alternating weighted loss (step counter, zero-weighted terms), 3 steps
    over one global batch, so every step sees every sample whatever the shuffling: two processes of 8 images give
    the weights of one process of 16."""
    double = tmp_path / "double"
    launch("train_baseline_deit.sh", tmp_path, *SHORT, MODEL_NAME_OR_PATH=str(base_model), OUTPUT_DIR=str(double),
           GLOBAL_BATCH_SIZE="16", BATCH_SIZE="8", HIGHWAY_TYPE="linear", NUM_EARLY_EXITS="3", POSITION_EXITS="[1,2,3]",
           TRAIN_STRATEGY="alternating_weighted")
    state = read_json(double / "trainer_state.json")
    # Two processes ran: 16 samples make one step of 2 x 8 per epoch (one process of 8 would need two).
    assert state["global_step"] == 3 and state["epoch"] == 3.0

    # The same run in this process with the whole batch: the launcher's arguments, batch 16, no evaluation.
    run_classification.main([
        str(ROOT / "configs" / "paper" / "stage1.yaml"), "--model_name_or_path", str(base_model), "--backbone", "ViT",
        "--dataset_name", "digits", "--output_dir", str(tmp_path / "single"), "--highway_type", "linear",
        "--num_early_exits", "3", "--position_exits", "[1,2,3]", "--train_strategy", "alternating_weighted",
        "--threshold", "0.8", "--learning_rate", "1e-3", "--global_batch_size", "16",
        "--per_device_train_batch_size", "16", "--per_device_eval_batch_size", "4", "--num_train_epochs", "50",
        "--seed", "777", "--report_to", "none",
        *SHORT, *EXIT_ARGS, "--do_eval", "False",
    ])
    single_weights = load_file(tmp_path / "single" / "model.safetensors")
    double_weights = load_file(double / "model.safetensors")
    initial = load_file(base_model / "model.safetensors")
    assert single_weights.keys() == double_weights.keys()
    for name, tensor in single_weights.items():
        torch.testing.assert_close(double_weights[name], tensor, atol=2e-6, rtol=1e-5, msg=name)
        if name in initial and name != "training_forwards":
            assert not torch.equal(tensor, initial[name]), f"{name} did not train"
    # Every step's loss, exit loss terms and weights, logged from two processes, are those of the one process.
    single_logs, double_logs = (
        [entry for entry in read_json(run / "trainer_state.json")["log_history"] if "loss" in entry]
        for run in (tmp_path / "single", double))
    terms = [key for key in single_logs[0] if key.startswith("loss_")]
    assert len(single_logs) == len(double_logs) == 3 and len(terms) == 8  # 3 heads and the final classifier
    for one, two in zip(single_logs, double_logs):
        assert {key: two[key] for key in ["loss", *terms]} == pytest.approx({key: one[key] for key in ["loss", *terms]},
                                                                          rel=1e-5)
    # Both counted the same 3 training forwards (on top of the count the base checkpoint was saved with).
    assert int(double_weights["training_forwards"]) == int(single_weights["training_forwards"])
    assert int(double_weights["training_forwards"]) == int(initial["training_forwards"]) + 3

    # Its evaluation on the two processes equals a one-process evaluation of the model it saved. (Three steps
    # leave the new linear heads nearly uniform, so here every sample leaves at the same exit.)
    assert_same_evaluation(read_json(double / "eval_results.json"),
                           evaluate_in_one_process(double, tmp_path / "eval_single", *EXIT_ARGS), spread=False)


def test_two_process_stage2_trains_only_the_heads(stage2_run: Path) -> None:
    stage1, stage2 = stage2_run / "stage1", stage2_run / "stage2"
    assert read_json(stage2 / "trainer_state.json")["epoch"] == 1.5  # 32 samples in steps of 2 x 8
    assert read_json(stage2 / "config.json")["train_strategy"] == "distillation_LGViT"
    before, after = load_file(stage1 / "model.safetensors"), load_file(stage2 / "model.safetensors")
    assert before.keys() == after.keys()
    frozen = [name for name in before if not name.startswith("exits.") and name != "training_forwards"]
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
