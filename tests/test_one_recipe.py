"""One recipe on any number of processes: the paper's global batch, made of one process with gradient accumulation
or of several processes without, and a run resumed from a checkpoint, train to the same weights.

Stage 1 (LGViT heads with BatchNorm, `alternating_weighted`: one alternation per optimizer step) and stage 2
(`distillation_LGViT`, backbone frozen) each run three ways through the launchers, on the digits, 4 optimizer steps
of a global batch of 24:
- one process, 8 images x 3 accumulation steps (the way one GPU runs the paper's 64 x 3);
- three gloo processes of 8 images (the paper's 3 GPUs of 64), DDP without `find_unused_parameters` (the default);
- one process resumed from its checkpoint at step 3, an odd step, so a phase lost on resume would show.
The resumed run gives the weights of the uninterrupted one exactly. The three processes give every parameter
within 5e-5 (the sums are made in another order, and Adam divides small gradients by their own size), except two
kinds, left out of that comparison:
- BatchNorm's running statistics: under DDP they are the first process's, updated by its own micro-batches only,
  while accumulation updates them with every micro-batch; training itself normalises by each micro-batch's own
  statistics, the same in both;
- the biases whose effect a normalisation cancels (a convolution's bias right before a BatchNorm, the attention
  keys' bias under the softmax): their gradient is zero but for rounding, which Adam turns into full steps of
  random sign.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pipeline_helpers import read_json, run_args, write_tiny_config
from safetensors.torch import load_file

import run_classification
from models import DeiTHighwayForImageClassification

pytestmark = pytest.mark.launches

ROOT = Path(__file__).resolve().parents[1]
STEPS = ["--max_train_samples", "48", "--max_steps", "4", "--do_eval", "False", "--eval_strategy", "no",
         "--disable_tqdm", "True", "--logging_steps", "1", "--save_strategy", "steps", "--save_steps", "3",
         "--load_best_model_at_end", "False"]


def launch(script: str, processes: int, output_dir: Path, *args: str, **env: str) -> None:
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1",
                   "GPUS_PER_NODE": str(processes), "REPORT_TO": "none", "DATASET": "digits",
                   "PYTHON": sys.executable, "BACKBONE": "ViT", "LR": "1e-3", "GLOBAL_BATCH_SIZE": "24",
                   "BATCH_SIZE": "8", "OUTPUT_DIR": str(output_dir), **env}
    finished = subprocess.run(["bash", str(ROOT / "scripts" / script), *STEPS, *args], env=environment,
                              capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]


def parameters(run_dir: Path) -> dict[str, torch.Tensor]:
    weights = load_file(run_dir / "model.safetensors")
    return {name: tensor for name, tensor in weights.items()
            if "running_" not in name and "num_batches_tracked" not in name}


def three_ways(script: str, root: Path, **env: str) -> dict[str, dict[str, torch.Tensor]]:
    """The run as one process with accumulation, three processes, and one process resumed at step 3. The three
    processes also log every step's loss and loss terms as the one process does (each process's terms averaged)."""
    launch(script, 0, root / "accumulated", **env)
    launch(script, 3, root / "processes", **env)
    launch(script, 0, root / "resumed", "--resume_from_checkpoint", str(root / "accumulated" / "checkpoint-3"), **env)
    one, three = (training_logs(root / way) for way in ("accumulated", "processes"))
    assert len(one) == len(three) == 4
    for single, several in zip(one, three):
        terms = [key for key in single if key.startswith("loss")]
        assert {key: several[key] for key in terms} == pytest.approx({key: single[key] for key in terms}, rel=1e-5)
    return {way: parameters(root / way) for way in ("accumulated", "processes", "resumed")}


def training_logs(run_dir: Path) -> list[dict]:
    return [entry for entry in read_json(run_dir / "trainer_state.json")["log_history"] if "loss" in entry]


def gradient_free(run_dir: Path) -> set[str]:
    """The trainable parameters of a saved model whose gradient is zero but for rounding (on random images)."""
    model = DeiTHighwayForImageClassification.from_pretrained(run_dir).train()
    model.alternation_phase = 1  # the exits' loss
    images = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    model(images, labels=torch.arange(8)).loss.backward()
    gradients = {name: parameter.grad.abs().max() for name, parameter in model.named_parameters()
                 if parameter.grad is not None}
    largest = max(gradients.values())
    return {name for name, gradient in gradients.items() if gradient < 1e-6 * largest}


def assert_same_training(ways: dict[str, dict[str, torch.Tensor]], start: dict[str, torch.Tensor],
                         run_dir: Path) -> None:
    reference = ways["accumulated"]
    assert any(not torch.equal(tensor, start[name]) for name, tensor in reference.items() if name in start)
    assert ways["resumed"].keys() == reference.keys()
    for name, tensor in reference.items():
        assert torch.equal(ways["resumed"][name], tensor), name
    cancelled = gradient_free(run_dir)
    assert all(name.endswith("bias") for name in cancelled)
    assert ways["processes"].keys() == reference.keys()
    for name, tensor in reference.items():
        if name not in cancelled:
            torch.testing.assert_close(ways["processes"][name], tensor, rtol=1e-4, atol=5e-5, msg=name)


@pytest.fixture(scope="module")
def stage1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("one_recipe")
    run_classification.main(run_args(root / "base", config_name=write_tiny_config(root), do_eval=False))
    ways = three_ways("train_baseline_deit.sh", root / "stage1", MODEL_NAME_OR_PATH=str(root / "base"),
                      NUM_EARLY_EXITS="3", POSITION_EXITS="[1,2,3]", TRAIN_STRATEGY="alternating_weighted")
    assert_same_training(ways, parameters(root / "base"), root / "stage1" / "accumulated")
    return root / "stage1" / "accumulated"


def test_stage1_trains_alike_on_one_process_three_processes_and_after_a_resume(stage1: Path) -> None:
    """(The comparison runs in the fixture, which stage 2 starts from.)"""
    assert (stage1 / "model.safetensors").is_file()


def test_stage2_trains_alike_on_one_process_three_processes_and_after_a_resume(stage1: Path,
                                                                               tmp_path: Path) -> None:
    ways = three_ways("train_distillation_deit.sh", tmp_path, MODEL_NAME_OR_PATH=str(stage1))
    assert_same_training(ways, parameters(stage1), tmp_path / "accumulated")
