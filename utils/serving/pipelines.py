"""What the serving engine runs: a model cut into stages, each followed by an exit decision.

A `Pipeline` has `num_stages` stages. Stage 0 takes images, every later stage the hidden states the stage before
handed on. After a stage each row either leaves (with its logits and exit layer) or goes on to the next stage with
its hidden state and its criterion state; after the last stage every row leaves.

- `SegmentPipeline`: one stage per segment of the early-exit pass (`models.segments`), PyTorch (eager or compiled,
  any dtype, any device) or onnxruntime (`onnx_segment_runs`, the per-segment graphs of `utils.export`). Decisions
  are the criterion's own `step` with the model's saved exit settings, as in `models.exiting.run_early_exit`.
- `WholePipeline`: one stage that runs a whole batch through a function giving (logits, exit layer): the full
  model, or the model's batch-level early exit (every row answered when the batch's deepest row is done). The
  benchmark's references.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from models.criteria import State, get_criterion
from models.exit_settings import ExitSettings, resolve_exit_settings
from models.exiting import SegmentRun
from utils.analysis.timing import full_model_logits
from utils.export.onnx_export import MANIFEST
from utils.export.session import default_providers


@dataclass
class StageOutput:
    """Result of one stage on a batch of B rows.

    Attributes:
        leaving: (B,) bool on the CPU, the rows answered now.
        logits: (B, K) logits of this stage (read for the leaving rows).
        exit_layer: 1-based layer the leaving rows exit at.
        hidden: (B, ...) input of the next stage (None after the last stage).
        state: per-row criterion state for the next stage.
    """

    leaving: torch.Tensor
    logits: torch.Tensor
    exit_layer: torch.Tensor
    hidden: torch.Tensor | None
    state: State


class SegmentPipeline:
    """The early-exit pass as stages: segment k, then exit k's decision.

    Args:
        runs: one run per exit, then the final one (`model.segment_runs()`, or `onnx_segment_runs`).
        settings: criterion, thresholds and patience (the model's saved `config.exit_settings()`).
        exit_layers: 1-based layer of each exit.
        num_blocks: the exit layer of the final classifier.
        image_shape: (C, H, W) the first stage takes.
        device, dtype: where and in which precision images enter the first stage.
    """

    def __init__(self, runs: Sequence[SegmentRun], settings: ExitSettings, exit_layers: Sequence[int],
                 num_blocks: int, image_shape: tuple[int, int, int], device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32):
        if len(runs) != len(exit_layers) + 1:
            raise ValueError(f"{len(runs)} segment runs for {len(exit_layers)} exits: give one per exit and a final "
                             "one.")
        self.runs = list(runs)
        self.settings = settings
        self.criterion = get_criterion(settings.strategy)
        self.exit_layers = list(exit_layers)
        self.num_blocks = num_blocks
        self.image_shape = tuple(image_shape)
        self.device = torch.device(device)
        self.dtype = dtype

    @property
    def num_stages(self) -> int:
        return len(self.runs)

    def initial_state(self, batch_size: int) -> State:
        return self.criterion.initial_state(batch_size, self.device)

    def run(self, stage: int, inputs: torch.Tensor, state: State) -> StageOutput:
        """Run segment `stage` on `inputs` and decide which rows leave."""
        if stage == 0:
            inputs = inputs.to(self.device, self.dtype, non_blocking=True)
        hidden, logits = self.runs[stage](inputs)
        if stage == len(self.exit_layers):
            leaving = torch.ones(len(logits), dtype=torch.bool)
            return StageOutput(leaving, logits, torch.full_like(leaving, self.num_blocks, dtype=torch.long), None, {})
        leave, state = self.criterion.step(logits, self.settings.thresholds[stage], self.settings.patience, state)
        leaving = leave.cpu()
        exit_layer = torch.full_like(leaving, self.exit_layers[stage], dtype=torch.long)
        return StageOutput(leaving, logits, exit_layer, hidden, state)


class WholePipeline:
    """One stage: `function(images) -> (logits (B, K), exit_layer (B,))` on the whole batch, every row leaves.

    Args:
        function: the batch's classification, e.g. `full_model_function(model)` or `batch_exit_function(model)`.
        image_shape: (C, H, W) it takes.
        device, dtype: where and in which precision the images go.
    """

    num_stages = 1

    def __init__(self, function: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
                 image_shape: tuple[int, int, int], device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32):
        self.function = function
        self.image_shape = tuple(image_shape)
        self.device = torch.device(device)
        self.dtype = dtype

    def initial_state(self, batch_size: int) -> State:
        return {}

    def run(self, stage: int, inputs: torch.Tensor, state: State) -> StageOutput:
        logits, exit_layer = self.function(inputs.to(self.device, self.dtype, non_blocking=True))
        leaving = torch.ones(len(logits), dtype=torch.bool)
        return StageOutput(leaving, logits, exit_layer.cpu(), None, {})


def model_image_shape(model: torch.nn.Module) -> tuple[int, int, int]:
    """(C, H, W) of the images `model` takes."""
    config = model.config
    size = config.image_size if isinstance(config.image_size, (list, tuple)) else (config.image_size,) * 2
    return (config.num_channels, *size)


def model_place(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    parameter = next(model.parameters())
    return parameter.device, parameter.dtype


def segment_pipeline(model: torch.nn.Module) -> SegmentPipeline:
    """The engine's pipeline of a model with exits (eval mode; its device and dtype; compiled segments after
    `model.compile_exits()`), deciding with the model's saved exit settings."""
    model.eval()
    config = model.config
    return SegmentPipeline(model.segment_runs(), config.exit_settings(), config.exit_positions(), config.num_blocks,
                           model_image_shape(model), *model_place(model))


def full_model_function(model: torch.nn.Module) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """The backbone and final classifier only (no exit head); every row reports the full depth."""
    model.eval()

    def classify(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = full_model_logits(model, images)
        return logits, torch.full((len(images),), model.config.num_blocks, dtype=torch.long)

    return classify


def batch_exit_function(model: torch.nn.Module) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """The model's own batched per-sample early exit: rows leave at their exits, the batch is answered at the end."""
    model.eval()

    def classify(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        output = model(images, early_exit=True)
        return output.logits, output.exit_layer

    return classify


def onnx_segment_runs(export_dir: str | Path, providers: Sequence[str] | None = None) -> list[SegmentRun]:
    """The per-segment graphs of an export (`python -m utils.export MODEL_DIR OUT_DIR`) as segment runs on
    onnxruntime: float32 CPU tensors in, (hidden states, logits) out."""
    manifest = json.loads((Path(export_dir) / MANIFEST).read_text())
    sessions = [ort.InferenceSession(str(Path(export_dir) / name), providers=list(providers or default_providers()))
                for name in manifest["segments"]]

    def bind(session: ort.InferenceSession) -> SegmentRun:
        input_name = session.get_inputs()[0].name

        def run(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            outputs = session.run(None, {input_name: np.ascontiguousarray(inputs.numpy(force=True))})
            hidden = torch.from_numpy(outputs[0]) if len(outputs) == 2 else None
            return hidden, torch.from_numpy(outputs[-1])

        return run

    return [bind(session) for session in sessions]


def onnx_pipeline(export_dir: str | Path, providers: Sequence[str] | None = None) -> SegmentPipeline:
    """The engine's pipeline of an exported model, deciding with the exit settings in its manifest."""
    manifest = json.loads((Path(export_dir) / MANIFEST).read_text())
    settings = resolve_exit_settings(manifest["exit_strategy"], manifest["threshold"], manifest["patience"],
                                     len(manifest["exit_layers"]))
    return SegmentPipeline(onnx_segment_runs(export_dir, providers), settings, manifest["exit_layers"],
                           manifest["num_blocks"], (manifest["num_channels"], *manifest["image_size"]))
