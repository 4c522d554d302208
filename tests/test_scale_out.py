"""Scale-out settings decided before anything runs: the paper's global batch on any number of processes, the loader
workers a process starts, and what the launchers print and refuse (`utils.training.launch_plan`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from utils.arguments.batch_split import split_global_batch
from utils.arguments.precision import CudaDevice
from utils.arguments.workers import MAX_WORKERS, default_workers
from utils.training.launch_plan import plan_launch, run_settings

ROOT = Path(__file__).resolve().parents[1]
PAPER = [str(ROOT / "configs" / "paper" / name) for name in ("stage1.yaml", "../methods/LGViT.yaml")]


@pytest.mark.parametrize("processes, per_device, accumulation", [
    (1, 64, 3), (2, 48, 2), (3, 64, 1), (4, 48, 1), (8, 24, 1), (16, 12, 1)])
def test_the_papers_global_batch_on_any_number_of_processes(processes, per_device, accumulation) -> None:
    split = split_global_batch(192, processes, max_per_device=64)
    assert (split.per_device, split.accumulation) == (per_device, accumulation)
    assert split.per_device * split.accumulation * processes == 192
    assert "192 = " in split.describe()
    # Batch statistics see the paper's 64 images where the split allows it; otherwise the plan says how many.
    note = split.statistics_note()
    assert (note is None) == (per_device == 64)
    assert note is None or f"see {per_device} images per device; the paper's run: 64" in note


@pytest.mark.parametrize("processes", [5, 7, 10])
def test_no_split_stops_with_the_nearest_global_batches(processes) -> None:
    with pytest.raises(ValueError, match=f"cannot be split over {processes} processes.*GLOBAL_BATCH_SIZE"):
        split_global_batch(192, processes, max_per_device=64)


def test_a_smaller_largest_per_device_batch_takes_more_accumulation_steps() -> None:
    assert split_global_batch(192, 2, max_per_device=32).accumulation == 3
    assert split_global_batch(192, 1, max_per_device=7).per_device == 6  # the largest divisor of 192 up to 7


def test_workers_follow_the_cpus_shared_by_the_nodes_processes() -> None:
    assert default_workers(1, on_accelerator=True, cpus=16) == MAX_WORKERS
    assert default_workers(4, on_accelerator=True, cpus=16) == 3  # 4 cores per process, one kept for itself
    assert default_workers(8, on_accelerator=True, cpus=8) == 0
    assert default_workers(1, on_accelerator=False, cpus=64) == 0  # the model computes on these cores


def test_run_settings_read_presets_then_flags_in_both_spellings() -> None:
    settings = run_settings([*PAPER, "--precision=bf16", "--per_device_train_batch_size", "32", "--do_train"])
    assert settings["global_batch_size"] == 192 and settings["precision"] == "bf16"
    assert settings["per_device_train_batch_size"] == "32" and settings["do_train"] == "True"


def test_a_plan_on_eight_gpus_of_two_nodes() -> None:
    plan = plan_launch(run_settings([*PAPER, "--precision", "auto"]), nodes=2, processes_per_node=8,
                       device=CudaDevice("NVIDIA A100-SXM4-80GB", (8, 0)))
    assert plan.processes == 16 and plan.precision.name == "bf16" and plan.precision.tf32
    assert (plan.batch.per_device, plan.batch.accumulation) == (12, 1)
    text = "\n".join(plan.lines())
    assert "2 node(s) x 8 process(es) (torchrun)" in text and "global batch 192 = 16 process(es) x 12" in text


def launcher_environment(**variables: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items()
           if key not in ("BACKBONE", "METHOD", "OUTPUT_DIR", "NNODES", "NODE_RANK", "GPUS_PER_NODE", "NUM_GPUS")}
    return {**env, "HF_HUB_OFFLINE": "1", "REPORT_TO": "none", "DATASET": "digits", "PYTHON": sys.executable,
            "DRY_RUN": "1", **variables}


def dry_run(script: str, **variables: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "scripts" / script)], env=launcher_environment(**variables),
                          capture_output=True, text=True, timeout=120)


def test_a_launcher_prints_its_plan_and_the_torchrun_flags_of_several_nodes() -> None:
    """With restarts, the c10d rendezvous (the SLURM test checks the static flags of a run without them)."""
    finished = dry_run("train_baseline_deit.sh", NNODES="2", NODE_RANK="1", GPUS_PER_NODE="4",
                       MASTER_ADDR="10.1.2.3", MASTER_PORT="29999", MAX_RESTARTS="2", PRECISION="fp32",
                       NUM_WORKERS="3")
    assert finished.returncode == 0, finished.stderr
    assert "=== batch: global batch 192 = 8 process(es) x 24 per device x 1 accumulation step(s) ===" in finished.stderr
    assert "see 24 images per device; the paper's run: 64 ===" in finished.stderr
    assert "=== precision: fp32" in finished.stderr and "3 worker process(es)" in finished.stderr
    command = finished.stdout.splitlines()[-1].split()
    for flag in ("--nnodes=2", "--rdzv_backend=c10d", "--rdzv_endpoint=10.1.2.3:29999", "--nproc_per_node=4",
                 "--max_restarts=2"):
        assert flag in command
    assert command[command.index("--precision") + 1] == "fp32"
    assert command[command.index("--dataloader_num_workers") + 1] == "3"


def test_a_launcher_with_no_split_stops_before_anything_runs(tmp_path: Path) -> None:
    finished = dry_run("train_base_deit.sh", GPUS_PER_NODE="5", OUTPUT_DIR=str(tmp_path / "out"))
    assert finished.returncode == 2
    assert "cannot be split over 5 processes" in finished.stderr and "=== base" not in finished.stdout
    assert not (tmp_path / "out").exists()
