"""Run an exported model with per-sample early exit on onnxruntime (`utils.export.onnx_export` writes it)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from models.exit_settings import ExitSettings, resolve_exit_settings
from models.exiting import SegmentRun, run_early_exit

from .onnx_export import FORMAT_VERSION, MANIFEST


def default_providers() -> list[str]:
    """CUDA when onnxruntime has it, then the CPU."""
    available = ort.get_available_providers()
    return [name for name in ("CUDAExecutionProvider", "CPUExecutionProvider") if name in available]


class OnnxSegment:
    """One exported segment as a run of the early-exit loop: torch tensors in and out, onnxruntime inside."""

    def __init__(self, path: Path, providers: Sequence[str], options: ort.SessionOptions | None = None):
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=list(providers))
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [output.name for output in self.session.get_outputs()]

    def __call__(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outputs = self.session.run(None, {self.input_name: inputs.numpy()})
        hidden = torch.from_numpy(outputs[0]) if len(outputs) == 2 else inputs
        return hidden, torch.from_numpy(outputs[-1]).float()


class EarlyExitSession:
    """An exported model on onnxruntime, called with preprocessed images; every sample leaves at its own exit.

    `session(pixel_values)` takes a float32 array (B, 3, H, W) and returns (logits (B, K) float32, 1-based exit
    layers (B,) int64). The early-exit loop and the decisions are the PyTorch model's own code
    (`models.exiting.run_early_exit`, `models.criteria`), so the batch shrinks as samples leave and the decisions
    match the PyTorch model's. `exit_strategy`, `threshold` and `patience` can be changed after loading; they take
    effect at the next call.

    Args:
        directory: an export directory (`python -m utils.export MODEL_DIR OUT_DIR`).
        providers: onnxruntime execution providers (default: CUDA when present, then CPU).
        options: onnxruntime session options (e.g. thread counts).
    """

    def __init__(self, directory: str | Path, providers: Sequence[str] | None = None,
                 options: ort.SessionOptions | None = None):
        self.directory = Path(directory)
        manifest_path = self.directory / MANIFEST
        if not manifest_path.is_file():
            raise FileNotFoundError(f"{manifest_path} is missing: export a model first with "
                                    "`python -m utils.export MODEL_DIR OUT_DIR`.")
        self.manifest = json.loads(manifest_path.read_text())
        if self.manifest.get("format") != FORMAT_VERSION:
            raise ValueError(f"{manifest_path} has format {self.manifest.get('format')}, this code reads format "
                             f"{FORMAT_VERSION}; export the model again.")
        providers = list(providers or default_providers())
        self.segments: list[SegmentRun] = [OnnxSegment(self.directory / name, providers, options)
                                           for name in self.manifest["segments"]]
        self.exit_layers: list[int] = list(self.manifest["exit_layers"])
        self.num_blocks: int = self.manifest["num_blocks"]
        self.id2label: dict[int, str] = {int(index): label for index, label in self.manifest["id2label"].items()}
        self.exit_strategy: str = self.manifest["exit_strategy"]
        self.threshold: float | list[float] = self.manifest["threshold"]
        self.patience: int = self.manifest["patience"]

    def exit_settings(self) -> ExitSettings:
        """The current criterion, thresholds and patience, checked."""
        return resolve_exit_settings(self.exit_strategy, self.threshold, self.patience, len(self.exit_layers))

    def __call__(self, pixel_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        images = np.ascontiguousarray(pixel_values, dtype=np.float32)
        if images.ndim != 4:
            raise ValueError(f"pixel_values must be (B, 3, H, W); got shape {images.shape}.")
        with torch.inference_mode():
            decisions = run_early_exit(self.segments, torch.from_numpy(images), self.exit_settings(),
                                       self.exit_layers, self.num_blocks)
        return decisions.logits.float().numpy(), decisions.exit_layer.numpy()
