"""The exit distribution of every evaluation as one chart: where the samples left the network, layer by layer.

The evaluation metrics hold it as one scalar per layer (`<prefix>_counts_exit_layer_<n>`, the original's names,
which stay); `ExitDistributionCallback` also logs them as one histogram per evaluation, `<prefix>/exit_distribution`
(one bin per layer, the last layer holding the final classifier's samples), to wandb and to TensorBoard, at the
training step the scalars are logged at.
"""

from __future__ import annotations

import re

import numpy as np
from transformers import TrainerCallback
from transformers.integrations import TensorBoardCallback

EXIT_COUNT = re.compile(r"^(?P<prefix>.+)_counts_exit_layer_(?P<layer>\d+)$")


def exit_counts(metrics: dict[str, float]) -> dict[str, np.ndarray]:
    """{metric prefix: samples that left at layers 1..L} from evaluation metrics with `counts_exit_layer_<n>`."""
    found: dict[str, dict[int, float]] = {}
    for key, value in metrics.items():
        match = EXIT_COUNT.match(key)
        if match:
            found.setdefault(match["prefix"], {})[int(match["layer"])] = value
    return {prefix: np.array([counts.get(layer, 0) for layer in range(1, max(counts) + 1)], dtype=np.int64)
            for prefix, counts in found.items()}


class ExitDistributionCallback(TrainerCallback):
    """Logs the exit distribution of every evaluation as a histogram, to wandb (when the run reports to it and a
    wandb run is active) and through `tensorboard` (the Trainer's `TensorBoardCallback`, when it has one)."""

    def __init__(self, tensorboard: TensorBoardCallback | None = None) -> None:
        self.tensorboard = tensorboard

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not state.is_world_process_zero or not metrics:
            return
        for prefix, counts in exit_counts(metrics).items():
            self._to_wandb(args, f"{prefix}/exit_distribution", counts, state.global_step)
            self._to_tensorboard(f"{prefix}/exit_distribution", counts, state.global_step)

    @staticmethod
    def _to_wandb(args, tag: str, counts: np.ndarray, step: int) -> None:
        if not {"wandb", "all"} & set(args.report_to or []):
            return
        import wandb

        if wandb.run is not None:
            edges = np.arange(len(counts) + 1) + 0.5  # bin n spans layer n
            wandb.log({tag: wandb.Histogram(np_histogram=(counts, edges)), "train/global_step": step})

    def _to_tensorboard(self, tag: str, counts: np.ndarray, step: int) -> None:
        writer = self.tensorboard.tb_writer if self.tensorboard is not None else None
        if writer is None:
            return
        layers = np.arange(1, len(counts) + 1)
        seen = layers[counts > 0] if counts.any() else np.zeros(1)
        writer.add_histogram_raw(
            tag, min=float(seen.min()), max=float(seen.max()), num=int(counts.sum()),
            sum=float((layers * counts).sum()), sum_squares=float((layers**2 * counts).sum()),
            bucket_limits=(layers + 0.5).tolist(), bucket_counts=counts.tolist(), global_step=step)
        writer.flush()
