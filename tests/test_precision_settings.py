"""What each precision name means, on CPU: `fp32` is IEEE float32 (the paper's setting, TF32 off), `tf32` float32
with TF32 products; a `--tf32` beside `--precision` must agree with it; `--global_batch_size 0` turns the global batch
off; and a dry run plans a GPU node's precision and workers from `PLAN_GPU`/`PLAN_CPUS` on a machine without one.
Checked on the arguments a launcher produces, the TrainingArguments they parse to, and the printed plan."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

import utils.arguments.training as training_module
from utils.arguments import parse_arguments
from utils.arguments.precision import CudaDevice, choose_precision
from utils.arguments.training import TrainingArguments

ROOT = Path(__file__).resolve().parents[1]
H100 = CudaDevice("NVIDIA H100 80GB HBM3", (9, 0))
V100 = CudaDevice("Tesla V100-SXM2-16GB", (7, 0))
RUN = ["--dataset_name", "digits", "--model_type", "vit", "--output_dir", "unused"]
PLANNED = ("PLAN_GPU", "PLAN_CPUS", "PRECISION", "GLOBAL_BATCH_SIZE", "GPUS_PER_NODE", "NUM_GPUS", "DRY_RUN",
           "BACKBONE", "METHOD", "OUTPUT_DIR")


def dry_run(script: str = "train_baseline_deit.sh", **variables: str) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key not in PLANNED}
    env.update(HF_HUB_OFFLINE="1", REPORT_TO="none", PYTHON=sys.executable, DATASET="digits", **variables)
    return subprocess.run(["bash", str(ROOT / "scripts" / script)], env=env, capture_output=True, text=True,
                          timeout=120, cwd=ROOT)


def planned_training_arguments(finished: subprocess.CompletedProcess) -> TrainingArguments:
    """The TrainingArguments of the command a dry run printed."""
    assert finished.returncode == 0, finished.stderr
    words = shlex.split(finished.stdout.splitlines()[-1])
    run = next(index for index, word in enumerate(words) if word.endswith("run_classification.py"))
    return parse_arguments(words[run + 1:])[-1]


def test_fp32_is_ieee_float32_and_tf32_is_its_own_name() -> None:
    assert not choose_precision("fp32", H100).tf32 and "TF32 off" in choose_precision("fp32", H100).reason
    tf32 = choose_precision("tf32", H100)
    assert (tf32.name, tf32.mixed, tf32.tf32) == ("tf32", None, True)
    assert choose_precision("bf16", H100).tf32 and choose_precision("auto", H100).tf32  # float32 work of mixed runs
    with pytest.raises(ValueError, match="compute capability 8.0 or newer.*PRECISION=fp32"):
        choose_precision("tf32", V100)
    with pytest.raises(ValueError, match="without a CUDA GPU.*PRECISION=fp32"):
        choose_precision("tf32", None)


def test_precision_fp32_through_a_launcher_trains_with_tf32_off() -> None:
    finished = dry_run(PRECISION="fp32", DRY_RUN="1", NUM_GPUS="0")
    assert "--precision fp32" in finished.stdout.splitlines()[-1]
    arguments = planned_training_arguments(finished)
    assert (arguments.precision_choice.name, arguments.tf32, arguments.bf16, arguments.fp16) == (
        "fp32", False, False, False)


def test_precision_tf32_needs_a_gpu_with_tf32() -> None:
    refused = dry_run(PRECISION="tf32", DRY_RUN="1", NUM_GPUS="0")
    assert refused.returncode == 2 and "--precision tf32 needs a CUDA GPU" in refused.stderr
    planned = dry_run(PRECISION="tf32", DRY_RUN="1", GPUS_PER_NODE="8", PLAN_GPU=f"{H100.name}:9.0")
    assert planned.returncode == 0, planned.stderr
    assert "precision: tf32 (tf32 as asked, on NVIDIA H100 80GB HBM3 (compute capability 9.0)" in planned.stderr


@pytest.mark.parametrize("flags, message", [
    (["--precision", "fp32", "--tf32", "True"], "contradicts --tf32 True: use --precision tf32"),
    (["--precision", "auto", "--tf32", "True"], "contradicts --tf32 True"),  # auto on CPU: fp32, no TF32
    (["--precision", "auto", "--bf16", "True"], "contradicts --bf16/--fp16"),
    (["--precision", "tf32"], "--precision tf32 needs a CUDA GPU"),
])
def test_flags_that_contradict_the_precision_are_refused(flags: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_arguments([*RUN, *flags])


def gpu_choice(precision: str, tf32: bool | None, monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """apply_precision as on an H100 (this machine has no GPU): the values it leaves on the arguments."""
    monkeypatch.setattr(training_module, "local_cuda_device", lambda: H100)
    arguments = SimpleNamespace(precision=precision, bf16=False, fp16=False, tf32=tf32, use_cpu=False)
    TrainingArguments.apply_precision(arguments)
    return arguments


def test_tf32_beside_the_precision_on_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    assert gpu_choice("fp32", None, monkeypatch).tf32 is False
    assert gpu_choice("tf32", None, monkeypatch).tf32 is True
    mixed = gpu_choice("bf16", False, monkeypatch)  # IEEE float32 in the work autocast leaves in float32
    assert (mixed.bf16, mixed.tf32) == (True, False)
    with pytest.raises(ValueError, match="contradicts --tf32 True"):
        gpu_choice("fp32", True, monkeypatch)
    with pytest.raises(ValueError, match="tf32.*contradicts --tf32 False: use --precision fp32"):
        gpu_choice("tf32", False, monkeypatch)


def test_global_batch_size_zero_turns_the_rule_off() -> None:
    preset = str(ROOT / "configs" / "paper" / "base.yaml")
    training = parse_arguments([preset, *RUN, "--global_batch_size", "0", "--per_device_train_batch_size", "16",
                                "--gradient_accumulation_steps", "2"])[-1]
    assert training.batch_split is None
    assert (training.per_device_train_batch_size, training.gradient_accumulation_steps) == (16, 2)
    kept = parse_arguments([preset, *RUN])[-1]
    assert kept.batch_split is not None and kept.batch_split.global_batch == 192
    planned = dry_run("train_base_deit.sh", GLOBAL_BATCH_SIZE="0", DRY_RUN="1", NUM_GPUS="0")
    assert planned.returncode == 0 and "global batch" not in planned.stderr


def test_a_dry_run_plans_the_gpu_node_it_is_told_of() -> None:
    here = dry_run(DRY_RUN="1", GPUS_PER_NODE="8")
    assert "precision: fp32 (auto without a CUDA GPU" in here.stderr and "note: 8 process(es)" in here.stderr
    node = dry_run(DRY_RUN="1", GPUS_PER_NODE="8", PLAN_GPU=f"{H100.name}:9.0", PLAN_CPUS="72")
    assert node.returncode == 0, node.stderr
    assert "planned for: a node of 8 x NVIDIA H100 80GB HBM3 (PLAN_GPU) and 72 CPU cores (PLAN_CPUS)" in node.stderr
    assert "precision: bf16 (auto on NVIDIA H100" in node.stderr
    assert "data loading: 8 worker process(es)" in node.stderr and "note:" not in node.stderr
    older = dry_run(DRY_RUN="1", GPUS_PER_NODE="4", PLAN_GPU=f"{V100.name}:7.0", PLAN_CPUS="16")
    assert "precision: fp16" in older.stderr and "data loading: 3 worker process(es)" in older.stderr
    for variables, message in [({"PLAN_GPU": f"{H100.name}:9.0", "GPUS_PER_NODE": "8"}, "dry run only"),
                               ({"PLAN_GPU": "H100", "GPUS_PER_NODE": "8", "DRY_RUN": "1"}, "compute capability"),
                               ({"PLAN_GPU": f"{H100.name}:9.0", "DRY_RUN": "1"}, "needs GPUS_PER_NODE")]:
        refused = dry_run(**variables)
        assert refused.returncode == 2 and message in refused.stderr, (variables, refused.stderr)
