"""Accuracy and exit statistics of an evaluation (numpy only; `evaluate.load` would need the Hub)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from transformers import EvalPrediction

from .flops import FlopsProfile


def exit_metrics(logits: np.ndarray, exit_layers: np.ndarray, labels: np.ndarray, num_layers: int,
                 profile: FlopsProfile | None = None) -> dict[str, float]:
    """Accuracy and where the samples left the network.

    Args:
        logits: (N, K) the logits each sample left with.
        exit_layers: (N,) 1-based layer each sample left at; `num_layers` means the final classifier answered.
        labels: (N,) class ids.
        num_layers: depth of the backbone (12 for ViT/DeiT-B, 24 for Swin-B).
        profile: the model's FLOPs per part (`utils.flops.profile_flops`), for the speed-up that counts the heads.

    Returns:
        `accuracy`; `counts_exit_layer_n` for n = 1..num_layers (samples that left at layer n);
        `average_exit_layer`; `speed-up` = num_layers / average_exit_layer, a layer ratio that ignores the cost
        of the exit heads (as in the paper). With `profile` also `flops_speed-up` = full-model FLOPs / average
        per-sample FLOPs with the exit heads run, `average_gflops` and `exit_head_parameters`.
    """
    exit_layers = np.asarray(exit_layers).astype(np.int64).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    if exit_layers.min(initial=1) < 1 or exit_layers.max(initial=1) > num_layers:
        raise ValueError(f"Exit layers must lie in 1..{num_layers}; got {sorted(set(exit_layers.tolist()))}.")
    counts = np.bincount(exit_layers, minlength=num_layers + 1)
    average = float(exit_layers.mean()) if exit_layers.size else float(num_layers)
    metrics = {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}
    metrics.update({f"counts_exit_layer_{n}": int(counts[n]) for n in range(1, num_layers + 1)})
    metrics["average_exit_layer"] = average
    metrics["speed-up"] = num_layers / average
    if profile is not None and exit_layers.size:
        average_flops = profile.expected_flops(torch.from_numpy(exit_layers))
        metrics["flops_speed-up"] = profile.full_model / average_flops
        metrics["average_gflops"] = average_flops / 1e9
        metrics["exit_head_parameters"] = profile.head_parameters
    return metrics


def build_compute_metrics(num_layers: int,
                          profile: FlopsProfile | None = None) -> Callable[[EvalPrediction], dict[str, float]]:
    """A Trainer `compute_metrics` reading the `(logits, exit_layer)` predictions of `ExitTrainer`."""

    def compute_metrics(prediction: EvalPrediction) -> dict[str, float]:
        logits, exit_layers = prediction.predictions
        return exit_metrics(logits, exit_layers, prediction.label_ids, num_layers, profile)

    return compute_metrics
