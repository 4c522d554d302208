"""Compiled training (`COMPILE=1` in the launchers, the Trainer's `--torch_compile`): the training step of every
strategy compiles into whole graphs (no graph break) and trains to the weights of eager training.

Most runs compile with the `aot_eager` backend (dynamo's capture and AOT autograd's forward and backward graphs,
without generating kernels), which keeps them to seconds on a CPU; one run goes through the default backend
(inductor, generated C++ kernels), as a GPU run would with Triton kernels.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pipeline_helpers import run_args, write_tiny_config
from safetensors.torch import load_file
from test_launchers import planned_command, value
from test_training_step import STRATEGIES, tiny_model
from torch._dynamo.utils import counters
from training_step_helpers import train

import run_classification


@pytest.mark.parametrize("stage", ["base", "stage1", "stage2"])
def test_compile_in_the_launchers_compiles_the_training_step(stage: str) -> None:
    assert value(planned_command(stage, COMPILE="1"), "--torch_compile") == "1"
    assert "--torch_compile" not in planned_command(stage)


def trained_weights(backbone: str, strategy: str, output_dir: Path, **arguments) -> dict[str, torch.Tensor]:
    model = tiny_model(backbone, **STRATEGIES[strategy])
    train(model, output_dir, max_steps=2, gradient_accumulation_steps=2, **arguments)
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


CASES = [("deit", strategy) for strategy in STRATEGIES] + [("swin", "alternating_weighted")]


@pytest.mark.parametrize("backbone, strategy", CASES)
def test_compiled_training_equals_eager_training(tmp_path: Path, backbone: str, strategy: str) -> None:
    """Two optimizer steps of two micro-batches (the alternating strategies take both phases): no graph break, and
    the weights of eager training."""
    eager = trained_weights(backbone, strategy, tmp_path / "eager")
    torch._dynamo.reset()
    counters.clear()
    compiled = trained_weights(backbone, strategy, tmp_path / "compiled", torch_compile=True,
                               torch_compile_backend="aot_eager")
    assert counters["stats"]["unique_graphs"] >= 1
    assert dict(counters["graph_break"]) == {}
    for name, tensor in eager.items():
        torch.testing.assert_close(compiled[name], tensor, rtol=1e-5, atol=1e-6, msg=name)


def test_a_run_compiled_with_generated_kernels_trains_like_an_eager_run(tmp_path: Path) -> None:
    """Through run_classification's arguments, with the default backend, on a two-layer model with one exit (to
    keep kernel generation short): the weights of eager training within the rounding of reordered float32 sums."""
    config = write_tiny_config(tmp_path, num_hidden_layers=2)
    weights = {}
    for name, extra in (("eager", {}), ("compiled", {"torch_compile": True})):
        torch._dynamo.reset()
        run_classification.main(run_args(tmp_path / name, config_name=config, highway_type="linear",
                                         num_early_exits=1, train_strategy="weighted", max_steps=2,
                                         do_eval=False, **extra))
        weights[name] = load_file(tmp_path / name / "model.safetensors")
    for name, tensor in weights["eager"].items():
        torch.testing.assert_close(weights["compiled"][name], tensor, rtol=1e-4, atol=1e-4, msg=name)
