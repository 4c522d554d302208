"""Run an exported model with per-sample early exit on onnxruntime (`utils.export.onnx_export` writes it)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from models.criteria import get_criterion
from models.exit_settings import ExitSettings, resolve_exit_settings

from .early_exit_graph import early_exit_graph
from .onnx_export import FORMAT_VERSION, MANIFEST


def default_providers() -> list[str]:
    """CUDA when onnxruntime has it, then the CPU."""
    available = ort.get_available_providers()
    return [name for name in ("CUDAExecutionProvider", "CPUExecutionProvider") if name in available]


class EarlyExitSession:
    """An exported model on onnxruntime, called with preprocessed images; every sample leaves at its own exit.

    `session(pixel_values)` takes a float32 array (B, 3, H, W) and returns (logits (B, K) float32, 1-based exit
    layers (B,) int64). The segments and the criterion's decisions run as one graph
    (`utils.export.early_exit_graph`): the batch shrinks as samples leave, and the decisions are the criterion's own
    code (`models.criteria`), exported. Batches of one image run a graph of their own that only branches. Each graph
    is built at its first use and kept. `exit_strategy`, `threshold` and `patience` can be changed after loading;
    they take effect at the next call (another criterion builds its graphs then, once).

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
        self.providers = list(providers or default_providers())
        self.options = options
        self.graphs: dict[tuple[str, bool], ort.InferenceSession] = {}
        self.exit_layers: list[int] = list(self.manifest["exit_layers"])
        self.num_blocks: int = self.manifest["num_blocks"]
        self.id2label: dict[int, str] = {int(index): label for index, label in self.manifest["id2label"].items()}
        self.exit_strategy: str = self.manifest["exit_strategy"]
        self.threshold: float | list[float] = self.manifest["threshold"]
        self.patience: int = self.manifest["patience"]

    def exit_settings(self) -> ExitSettings:
        """The current criterion, thresholds and patience, checked."""
        return resolve_exit_settings(self.exit_strategy, self.threshold, self.patience, len(self.exit_layers))

    def graph(self, strategy: str, single_row: bool = False) -> ort.InferenceSession:
        """The onnxruntime session of the whole early exit with criterion `strategy`, for batches of one image if
        `single_row` (built at its first use)."""
        key = (strategy, single_row)
        if key not in self.graphs:
            segments = [onnx.load(self.directory / name) for name in self.manifest["segments"]]
            model = early_exit_graph(segments, strategy, self.exit_layers, self.num_blocks, single_row)
            self.graphs[key] = ort.InferenceSession(model.SerializeToString(), sess_options=self.options,
                                                    providers=self.providers)
        return self.graphs[key]

    def __call__(self, pixel_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        images = np.ascontiguousarray(pixel_values, dtype=np.float32)
        if images.ndim != 4:
            raise ValueError(f"pixel_values must be (B, 3, H, W); got shape {images.shape}.")
        settings = self.exit_settings()
        state = get_criterion(settings.strategy).initial_state(len(images), "cpu")
        inputs = {"pixel_values": images, "thresholds": np.asarray(settings.thresholds, dtype=np.float32),
                  "patience": np.asarray(settings.patience, dtype=np.int64),
                  **{name: value.numpy() for name, value in state.items()}}
        logits, exit_layer = self.graph(settings.strategy, single_row=len(images) == 1).run(None, inputs)
        return logits, exit_layer
