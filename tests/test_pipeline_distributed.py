"""Evaluation on two CPU processes (torchrun, gloo) gives exactly the single-process metrics, exit counts included."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pipeline_helpers import (
    NUM_LAYERS,
    median_first_exit_confidence,
    read_json,
    run_args,
    stage1_args,
    write_tiny_config,
)

import run_classification

ROOT = Path(__file__).resolve().parents[1]
EVAL_SAMPLES = 45  # odd, so the distributed sampler pads the last batch with repeated samples (see run_args)


def test_two_process_evaluation_equals_one_process(tmp_path: Path) -> None:
    base, stage1 = tmp_path / "base", tmp_path / "stage1"
    run_classification.main(run_args(base, config_name=write_tiny_config(tmp_path), do_eval=False))
    run_classification.main(stage1_args(stage1, base, do_eval=False))
    threshold = f"{median_first_exit_confidence(stage1, EVAL_SAMPLES):.6f}"
    eval_args = [
        "--model_name_or_path", str(stage1), "--dataset_name", "digits", "--do_train", "False", "--do_eval",
        "--max_eval_samples", str(EVAL_SAMPLES), "--threshold", threshold, "--report_to", "none",
        "--disable_tqdm", "True",
    ]
    single = run_classification.main(
        [*eval_args, "--output_dir", str(tmp_path / "single"), "--per_device_eval_batch_size", "5"]
    )

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(ROOT / "run_classification.py"), *eval_args, "--output_dir", str(tmp_path / "double"),
        "--per_device_eval_batch_size", "4", "--ddp_backend", "gloo",
    ]
    finished = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    double = read_json(tmp_path / "double" / "eval_results.json")

    counts = [f"eval_counts_exit_layer_{n}" for n in range(1, NUM_LAYERS + 1)]
    assert sum(single[key] for key in counts) == EVAL_SAMPLES
    assert sum(1 for key in counts if single[key]) >= 2, "the exits should spread over several layers"
    for key in [*counts, "eval_accuracy", "eval_average_exit_layer", "eval_speed-up", "eval_samples"]:
        assert double[key] == single[key], key
